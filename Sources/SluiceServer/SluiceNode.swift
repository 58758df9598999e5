import Foundation
import Logging
import NIOCore
import NIOPosix
import ServiceLifecycle
import SluiceCore
import SluiceRedis
import SluiceTokenizer
import SluiceUpstream

/// One running Sluice node: loads the config and the tokenizer, starts the curl engine, then the HTTP
/// server; on SIGTERM/SIGINT stops in reverse order (the server drains first, the engine stops last).
public struct SluiceNode: Sendable {
    public let config: SluiceConfig
    public let gateway: Gateway
    public let server: HTTPServer
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`); nil when `server.admin_port` is 0.
    public let adminServer: HTTPServer?
    let engine: CurlEngine
    let group: MultiThreadedEventLoopGroup
    /// Present when the config has a `redis` section: the shared store and this node's heartbeat.
    let redis: RedisLimiting?
    /// Present when `telemetry.otlp_endpoint` is set: the tracer and the span exporter's service.
    let telemetry: Telemetry?

    /// Where the config came from, for reloads on SIGHUP and when the file changes (nil: no reloads).
    let configPath: String?
    /// The hash of the file's bytes the config was parsed from, and when (nil: not from a file).
    let configStatus: ConfigStatus?

    /// Builds a node from a validated config. Loading the tokenizer files is the slow part (~100 ms).
    /// - Parameter configFile: the bytes `config` was parsed from, whose hash `/readyz` and the
    ///   metrics report; needed for reloads (with `configPath`).
    /// - Parameter version: reported as `sluice_build_info{version}`.
    public init(config: SluiceConfig, configPath: String? = nil, configFile: ConfigFileContents? = nil, version: String = "unknown", logger: Logger) throws {
        self.config = config
        self.configPath = configPath
        self.configStatus = configFile.map { ConfigStatus(sha256: $0.sha256) }
        let directory = ProcessInfo.processInfo.environment["SLUICE_TOKENIZER_DIR"] ?? config.tokenizer.directory
        var overrides: [String: EncodingName] = [:]
        for (model, name) in config.tokenizer.modelEncodings {
            if let encoding = EncodingName(rawValue: name) { overrides[model] = encoding }
        }
        let tokenizers = try Tokenizers.load(directory: directory, modelEncodings: ModelEncodings(overrides: overrides))
        let threads = config.server.eventLoopThreads > 0 ? config.server.eventLoopThreads : System.coreCount
        group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        var engineConfiguration = CurlEngine.Configuration()
        if config.server.upstreamThreads > 0 { engineConfiguration.threads = config.server.upstreamThreads }
        // The upstreams' pools (`Gateway.pools`, node-wide, shared by the threads) are the limit;
        // curl's per-thread, per-host cap sits above any pool so curl never queues behind them
        // silently (several upstreams may share a host; a reload may raise a pool).
        engineConfiguration.maxConnectionsPerHost = CurlEngine.Configuration.uncappedConnectionsPerHost
        // Keep as many idle connections per thread as the thread's share of the pools (at least the
        // default, at most 4,096): under a steady load of thousands of streams a finished stream's
        // connection is reused by the next one instead of being closed and reopened.
        let pooled = config.upstreams.reduce(0) { $0 + $1.maxConnections }
        let share = (pooled + engineConfiguration.threads - 1) / engineConfiguration.threads
        engineConfiguration.maxIdleConnections = min(max(CurlEngine.Configuration.defaultMaxIdleConnections, share), 4096)
        // The engine's own bound on transfers in flight must not cut below the pools the operator
        // configured (it would answer 503 before any pool is full): at least their sum at start.
        engineConfiguration.maxInFlightTransfers = max(engineConfiguration.maxInFlightTransfers, pooled)
        engine = CurlEngine(configuration: engineConfiguration, logger: logger)
        let settings = GatewaySettings(config: config)
        // The metrics read the connection count from the server, which needs the gateway: break the
        // cycle with a box filled right after.
        let serverBox = ServerBox()
        let metrics = GatewayMetrics(
            openConnections: { serverBox.server?.openConnections ?? 0 },
            runningTasks: { serverBox.server?.runningTasks ?? 0 },
            pendingSettlements: { serverBox.redis.map { $0.failover.pendingSettlements + $0.store.owedSettlements } ?? 0 },
            limiterStatistics: { serverBox.redis?.store.statistics },
            version: version
        )
        let limiter: any LimiterStore
        let limiterMode: @Sendable () -> String
        if let redisConfig = config.redis {
            let redis = try RedisLimiting(config: redisConfig, metrics: metrics, eventLoopGroup: group, logger: logger)
            self.redis = redis
            serverBox.redis = redis
            limiter = redis.failover
            limiterMode = { redis.modeName }
        } else {
            redis = nil
            limiter = InMemoryLimiterStore()
            limiterMode = { "embedded" }
            let withQuotas = settings.keys.keys.filter { $0.limits.tokensPerDay != nil || $0.limits.tokensPerMonth != nil }.map(\.id)
            if !withQuotas.isEmpty {
                logger.warning(
                    "daily/monthly token quotas are configured but not enforced: quotas need a redis section",
                    metadata: ["keys": "\(withQuotas.joined(separator: ","))"]
                )
            }
        }
        metrics.limiterMode(limiterMode())
        telemetry = try Telemetry.make(config.telemetry, logger: logger)
        gateway = Gateway(
            settings: settings, tokenizers: tokenizers, limiter: limiter, engine: engine, metrics: metrics,
            limiterMode: limiterMode, tracer: telemetry?.tracer, logger: logger
        )
        if let configStatus {
            gateway.recordConfigStatus(configStatus)
            metrics.configInForce(sha256: configStatus.sha256)
        }
        server = HTTPServer(
            configuration: .init(
                host: config.server.host, port: config.server.port, maxBodyBytes: config.server.maxBodyBytes,
                maxHeaderBytes: config.server.maxHeaderBytes,
                idleTimeoutMs: config.server.idleTimeoutMs, bodyTimeoutMs: config.server.bodyTimeoutMs,
                shutdownGraceSeconds: config.server.shutdownGraceSeconds
            ),
            group: group, handler: gateway, logger: logger
        )
        serverBox.server = server
        adminServer = config.server.adminPort == 0 ? nil : HTTPServer(
            configuration: .init(
                host: config.server.adminHost, port: config.server.adminPort, maxBodyBytes: 64 * 1024,
                idleTimeoutMs: config.server.idleTimeoutMs, bodyTimeoutMs: config.server.bodyTimeoutMs,
                shutdownGraceSeconds: config.server.shutdownGraceSeconds
            ),
            group: group, handler: AdminHandler(gateway: gateway), logger: logger
        )
    }

    /// Runs until SIGTERM or SIGINT, then shuts down gracefully.
    public func run(logger: Logger) async throws {
        // The span exporter starts first and stops last: it exports the spans of requests the server
        // drained, then flushes what is buffered.
        var services: [any Service] = []
        if let telemetry { services.append(telemetry.service) }
        services.append(CurlEngineService(engine: engine))
        if let redis { services.append(redis) }
        // Before the public listener: services stop in reverse order, so the admin listener keeps
        // answering (its /readyz says draining, /metrics shows the drain) until the public one has drained.
        if let adminServer { services.append(AdminServerService(server: adminServer)) }
        services.append(HTTPServerService(server: server, gateway: gateway))
        if let configPath, let configStatus {
            services.append(
                ConfigReloadService(
                    path: configPath, initial: config, initialStatus: configStatus, gateway: gateway,
                    watch: config.server.watchConfig, logger: logger
                )
            )
        }
        let group = ServiceGroup(
            configuration: .init(services: services.map { .init(service: $0) }, gracefulShutdownSignals: [.sigterm, .sigint], logger: logger)
        )
        try await group.run()
        try await self.group.shutdownGracefully()
    }
}

private final class ServerBox: @unchecked Sendable {
    // Written once during init, before any request can read them.
    var server: HTTPServer?
    var redis: RedisLimiting?
}

/// Starts the curl engine before the server and stops it after the server has drained.
struct CurlEngineService: Service {
    let engine: CurlEngine

    func run() async throws {
        try engine.start()
        try? await gracefulShutdown()
        await engine.shutdown()
    }
}

/// Serves HTTP until graceful shutdown: then `/readyz` turns 503, the listener closes, in-flight
/// requests and streams finish (up to the grace period).
struct HTTPServerService: Service {
    let server: HTTPServer
    let gateway: Gateway

    func run() async throws {
        try await withGracefulShutdownHandler {
            try await server.run()
        } onGracefulShutdown: {
            gateway.beginDraining()
            server.shutdownGracefully()
        }
    }
}

/// The admin listener: serves until graceful shutdown reaches it (after the public listener drained).
struct AdminServerService: Service {
    let server: HTTPServer

    func run() async throws {
        try await withGracefulShutdownHandler {
            try await server.run()
        } onGracefulShutdown: {
            server.shutdownGracefully()
        }
    }
}
