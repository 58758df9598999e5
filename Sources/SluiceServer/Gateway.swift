import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import SluiceCore
import SluiceTokenizer
import SluiceUpstream
import Synchronization
import Tracing

/// The gateway: owns what every request needs and routes each one to its handler.
///
/// The proxy routes walk the pipeline in `Gateway+Pipeline.swift`; everything else (models, health,
/// metrics, 404s) is answered here.
public final class Gateway: RequestHandling {
    /// The key table and routing now in force; replaced whole by a config reload (SIGHUP), which
    /// also bumps the generation.
    private let settingsBox: Mutex<(settings: GatewaySettings, generation: Int)>
    private let settingsGeneration = Atomic<Int>(0)
    /// Each thread's copy of the settings and their generation: every request reads the settings,
    /// and a reload is rare, so the read is an atomic load instead of a lock all loops share.
    private let settingsPerThread = ThreadSpecificVariable<SettingsCopy>()

    var settings: GatewaySettings {
        let generation = settingsGeneration.load(ordering: .acquiring)
        if let copy = settingsPerThread.currentValue, copy.generation == generation { return copy.settings }
        let current = settingsBox.withLock { $0 }
        settingsPerThread.currentValue = SettingsCopy(settings: current.settings, generation: current.generation)
        return current.settings
    }
    let tokenizers: Tokenizers
    let limiter: any LimiterStore
    let engine: any UpstreamClient
    let metrics: GatewayMetrics
    let logger: Logger
    /// Set when telemetry is on: each proxied request gets spans. Nil: no span, no trace header read.
    let tracer: (any Tracer)?
    let promptCounter: PromptTokenCounter
    /// How this node enforces limits now (`embedded`, `redis`, or a failure policy: `local`, `open`,
    /// `closed`), for `/readyz`.
    let limiterMode: @Sendable () -> String
    let requestIDs = RequestIDGenerator()
    /// One circuit breaker per upstream name; kept across config reloads.
    let breakers = UpstreamBreakers()
    /// One connection pool (budget and queue) per upstream name; kept across config reloads.
    let pools = UpstreamPools()
    /// Deployments skipped until their provider's `retry-after` passed.
    let cooldowns = DeploymentCooldowns()
    private let readiness = Mutex<Readiness>(.ready)
    /// The config in force and the last reload, for `/readyz`; nil until the node records it.
    private let configStatus = Mutex<ConfigStatus?>(nil)

    enum Readiness: Sendable { case ready, draining }

    public init(
        settings: GatewaySettings,
        tokenizers: Tokenizers,
        limiter: any LimiterStore,
        engine: any UpstreamClient,
        metrics: GatewayMetrics,
        limiterMode: @escaping @Sendable () -> String = { "embedded" },
        tracer: (any Tracer)? = nil,
        logger: Logger
    ) {
        self.tracer = tracer
        self.limiterMode = limiterMode
        self.settingsBox = Mutex((settings, 0))
        self.tokenizers = tokenizers
        self.promptCounter = PromptTokenCounter(tokenizers: tokenizers, maxPromptBytes: settings.maxPromptBytes)
        self.limiter = limiter
        self.engine = engine
        self.metrics = metrics
        self.logger = logger
    }

    /// Swaps in the key table and routing of a newly validated config. Requests already past
    /// authentication finish with what they started with.
    public func replaceSettings(_ settings: GatewaySettings) {
        settingsBox.withLock { box in
            box = (settings, box.generation + 1)
            settingsGeneration.store(box.generation, ordering: .releasing)
        }
    }

    /// Records which config is in force and how the last reload went (shown by `/readyz`).
    public func recordConfigStatus(_ status: ConfigStatus) {
        configStatus.withLock { $0 = status }
    }

    /// Marks the node as draining: `/readyz` answers 503 so load balancers stop sending traffic.
    public func beginDraining() {
        readiness.withLock { $0 = .draining }
    }

    public func handle(_ request: HTTPRequest, writer: ResponseWriter) async {
        let started = ContinuousClock.now
        // Two ids: `reservationID` is Sluice's own, unique, and names the limiter's reservation;
        // `requestID` is the one the client meets (response header, upstream header, log lines): its
        // own `x-request-id` when well-formed, else the same as `reservationID`.
        let reservationID = requestIDs.next()
        let requestID = ClientRequestID.accepted(from: request.head.headers) ?? reservationID
        let uri = request.head.uri
        let path = uri.utf8.firstIndex(of: UInt8(ascii: "?")).map { String(uri[..<$0]) } ?? uri
        let route = Route(method: request.head.method, path: path)
        let logger = RequestLogger(base: self.logger, requestID: requestID, reservationID: reservationID)

        let outcome: RequestOutcome
        switch route {
        case .proxy(let endpoint):
            // Telemetry off: this one check is all the tracing costs.
            if let tracer {
                let trace = RequestTrace.start(tracer: tracer, head: request.head, endpoint: endpoint, path: path, requestID: requestID)
                outcome = await proxy(endpoint, request: request, requestID: requestID, reservationID: reservationID, writer: writer, logger: logger, trace: trace)
                trace.finish(status: outcome.status)
            } else {
                outcome = await proxy(endpoint, request: request, requestID: requestID, reservationID: reservationID, writer: writer, logger: logger, trace: nil)
            }
        case .listModels:
            outcome = await listModels(request, requestID: requestID, writer: writer, modelID: nil)
        case .keyState:
            outcome = await keyState(request, requestID: requestID, writer: writer)
        case .retrieveModel(let id):
            outcome = await listModels(request, requestID: requestID, writer: writer, modelID: id)
        case .responseResource(let pathBelowVersion):
            outcome = await passThroughResponseResource(request, pathBelowVersion: pathBelowVersion, requestID: requestID, writer: writer, logger: logger)
        case .health:
            outcome = await health(writer, requestID: requestID)
        case .ready:
            outcome = await ready(writer, requestID: requestID)
        case .methodNotAllowed(let allowed):
            let error = GatewayError.methodNotAllowed(method: request.head.method.rawValue, path: path, allowed: allowed)
            outcome = await refuseUnroutable(error, path: path, request: request, requestID: requestID, writer: writer)
        case .notFound:
            let error = GatewayError.routeNotFound(method: request.head.method.rawValue, path: path)
            outcome = await refuseUnroutable(error, path: path, request: request, requestID: requestID, writer: writer)
        }

        // The model label comes from the config, never from the client (see `metricLabel(forModel:)`).
        let modelLabel = outcome.model.map { settings.metricLabel(forModel: $0) }
        metrics.requestFinished(
            route: route.metricLabel, status: outcome.status, model: modelLabel, duration: ContinuousClock.now - started,
            proxied: route.isProxy, upstreamTime: outcome.upstreamTime
        )
        // The access line's metadata is built only when it is logged: at `warning` (a busy node's
        // usual level) a dozen interpolated strings per request were a visible part of its cost.
        if route.isProxy, logger.base.logLevel <= .info {
            var metadata: Logger.Metadata = [
                    "route": "\(route.metricLabel)", "status": "\(outcome.status)",
                    "key": "\(outcome.keyID ?? "-")", "model": "\(RequestLogger.bounded(outcome.model ?? "-"))",
                    "prompt_tokens": "\(outcome.promptTokens)", "completion_tokens": "\(outcome.completionTokens)",
                    "duration_ms": "\(Self.milliseconds(ContinuousClock.now - started))",
                    "upstream": "\(outcome.upstream ?? "-")", "attempts": "\(outcome.attempts)",
                    "upstream_http": "\(outcome.upstreamHTTPVersion?.rawValue ?? "-")",
                    "streamed": "\(outcome.streamed)",
                    "ttfb_ms": "\(outcome.timeToFirstByte.map(Self.milliseconds) ?? "-")",
                    "client": "\(request.clientAddress ?? "-")",
            ]
            // The upstream's cached-input and reasoning details, when reported.
            if let cached = outcome.cachedInputTokens { metadata["cached_input_tokens"] = "\(cached)" }
            if let reasoning = outcome.reasoningTokens { metadata["reasoning_tokens"] = "\(reasoning)" }
            // A configured model name (fallbacks are exact names from the config).
            if let fallback = outcome.fallbackModel { metadata["fallback_model"] = "\(fallback)" }
            // With a pricing section: what the request cost in USD, or "unknown".
            if let cost = outcome.cost { metadata["cost_usd"] = "\(cost)" }
            logger.info("request", metadata: metadata)
        }
    }

    // MARK: - Small routes

    /// `/healthz`: the process serves.
    func health(_ writer: ResponseWriter, requestID: String) async -> RequestOutcome {
        await writePlain(writer, status: .ok, json: #"{"status":"ok"}"#, requestID: requestID)
    }

    /// `/readyz`: 200 with the limiter mode and the config in force, 503 while draining.
    func ready(_ writer: ResponseWriter, requestID: String) async -> RequestOutcome {
        isReady
            ? await writePlain(writer, status: .ok, json: readyJSON(), requestID: requestID)
            : await writePlain(writer, status: .serviceUnavailable, json: #"{"status":"draining"}"#, requestID: requestID)
    }

    /// Whether `/readyz` says ready (false once draining).
    var isReady: Bool { readiness.withLock { $0 == .ready } }

    /// `/metrics` (the admin listener's): everything recorded, with what is read at scrape time
    /// (readiness, the upstreams' circuits, the process).
    func metricsExposition() -> [UInt8] {
        let circuits = settings.upstreams.map { (upstream: $0.name, open: breakers.breaker(for: $0.name, configuration: $0.config.circuitBreaker).isOpen) }
        let queued = settings.upstreams.map { (upstream: $0.name, queued: pools.pool(for: $0.name, capacity: $0.config.maxConnections).queued) }
        return metrics.exposition(GatewayMetrics.ScrapeState(ready: isReady, circuits: circuits, queued: queued))
    }

    /// `GET /v1/models` (and `/v1/models/{id}`): the models this key may use, in OpenAI's list shape.
    private func listModels(_ request: HTTPRequest, requestID: String, writer: ResponseWriter, modelID: String?) async -> RequestOutcome {
        let settings = self.settings
        let key: APIKey
        switch authenticate(request.head, keys: settings.keys) {
        case .success(let found): key = found
        case .failure(let error): return await writeError(writer, error, requestID: requestID)
        }
        let models = settings.listedModels(for: key)
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: "application/json")
        headers.add(name: "x-request-id", value: requestID)
        if let snapshot = await snapshotWithBudgets(key) {
            for (name, value) in RateLimitHeaders.render(snapshot) { headers.add(name: name, value: value) }
        }
        let body: String
        if let modelID {
            guard settings.route(model: modelID, for: key) != nil else {
                return await writeError(writer, .modelNotFound(modelID), requestID: requestID, keyID: key.id)
            }
            body = Self.modelObject(modelID)
        } else {
            body = #"{"object":"list","data":["# + models.map(Self.modelObject).joined(separator: ",") + "]}"
        }
        let buffer = ByteBuffer(string: body)
        return await write(writer, requestID: requestID, keyID: key.id) {
            try await writer.writeResponse(status: .ok, headers: headers, body: buffer)
        }
    }

    /// A request no route takes (404), or not with its method (405). On the API's paths the key is
    /// checked first (see `Route.isAPIPath`): without a valid one the answer is its 401.
    private func refuseUnroutable(_ error: GatewayError, path: String, request: HTTPRequest, requestID: String, writer: ResponseWriter) async -> RequestOutcome {
        var keyID: String?
        if Route.isAPIPath(path) {
            switch authenticate(request.head, keys: settings.keys) {
            case .success(let key): keyID = key.id
            case .failure(let keyError): return await writeError(writer, keyError, requestID: requestID)
            }
        }
        return await writeError(writer, error, requestID: requestID, keyID: keyID)
    }

    /// `/readyz` when ready: `status` and `limiter` first (scripts and probes read them), then the
    /// config in force when the node has recorded it.
    private func readyJSON() -> String {
        let config = configStatus.withLock { $0 }.map { #","config":"# + $0.json } ?? ""
        return #"{"status":"ready","limiter":"\#(limiterMode())""# + config + "}"
    }

    private static func modelObject(_ id: String) -> String {
        #"{"id":"# + String(decoding: JSONWriter.stringLiteral(id), as: UTF8.self) + #","object":"model","created":0,"owned_by":"sluice"}"#
    }

    // MARK: - Writing helpers that never throw (a client that left is not an error of ours)

    func writeError(_ writer: ResponseWriter, _ error: GatewayError, requestID: String, keyID: String? = nil, model: String? = nil, extraHeaders: [(String, String)] = []) async -> RequestOutcome {
        do {
            try await writer.writeError(error, requestID: requestID, extraHeaders: extraHeaders)
        } catch {
            logger.debug("client went away before the error response", metadata: ["request_id": "\(requestID)"])
        }
        return RequestOutcome(status: error.status, keyID: keyID, model: model)
    }

    private func writePlain(_ writer: ResponseWriter, status: HTTPResponseStatus, json: String, requestID: String) async -> RequestOutcome {
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: "application/json")
        headers.add(name: "x-request-id", value: requestID)
        let body = ByteBuffer(string: json)
        return await write(writer, requestID: requestID) {
            try await writer.writeResponse(status: status, headers: headers, body: body)
        }
    }

    func write(_ writer: ResponseWriter, requestID: String, keyID: String? = nil, _ body: () async throws -> Void) async -> RequestOutcome {
        do { try await body() } catch {
            logger.debug("client went away before the response", metadata: ["request_id": "\(requestID)"])
        }
        return RequestOutcome(status: writer.status, keyID: keyID, model: nil)
    }

    /// `duration` in milliseconds with two decimals ("12.34"), without Foundation's `String(format:)`
    /// (this runs for every access-log line).
    static func milliseconds(_ duration: Duration) -> String {
        let (seconds, attoseconds) = duration.components
        let hundredths = max(0, seconds * 100_000 + attoseconds / 10_000_000_000_000)
        let fraction = hundredths % 100
        return "\(hundredths / 100)." + (fraction < 10 ? "0" : "") + "\(fraction)"
    }
}

/// What a finished request leaves behind for metrics and the access log.
struct RequestOutcome: Sendable {
    var status: Int
    var keyID: String?
    var model: String?
    var promptTokens = 0
    var completionTokens = 0
    /// The exchange with the upstream, when the request had one (for the added-latency metric).
    var upstreamTime: Duration?
    /// For the access log: the upstream the request went to, the requests sent to it, whether the
    /// answer was streamed, and the time from sending to the response's head.
    var upstream: String?
    /// The fallback model that answered instead of the requested one, if one did.
    var fallbackModel: String?
    var attempts = 0
    /// The HTTP version of the upstream's response (`upstream_http`: `1.1`, `2`).
    var upstreamHTTPVersion: UpstreamConnectionInfo.HTTPVersion?
    var streamed = false
    var timeToFirstByte: Duration?
    /// The reported cached input tokens and reasoning tokens (for the access log).
    var cachedInputTokens: Int?
    var reasoningTokens: Int?
    /// What the request cost (`nil`: no pricing section).
    var cost: RequestCost?
}

/// One thread's copy of the gateway's settings. `@unchecked Sendable`: only reached through its own
/// thread's slot.
private final class SettingsCopy: @unchecked Sendable {
    let settings: GatewaySettings
    let generation: Int

    init(settings: GatewaySettings, generation: Int) {
        self.settings = settings
        self.generation = generation
    }
}
