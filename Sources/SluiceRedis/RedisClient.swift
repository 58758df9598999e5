#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Logging
import NIOCore
import NIOPosix
import SluiceCore
import Synchronization

/// Sluice's Redis client: pipelining connections (`RedisConnection`), one per event loop of a
/// group, to one Redis server, or to each primary of a Redis Cluster (`RedisClusterRouter`; with
/// `redis.cluster_nodes`), where a command goes to the primary of its key's slot.
///
/// A call made on one of the group's event loops (the gateway's requests run there) goes to that
/// loop's connection: no thread hop. Every call is bounded in time by `RedisClientOptions` (connect
/// and command timeouts); while a connection is down and backing off, calls on it fail at once with
/// `.notConnected`.
///
/// Creating a client starts its connections, which connect immediately; call `shutdown()` when done
/// (also done on deinit). For a `rediss://` address (`config.tls` set) the client reads its TLS
/// files and builds the one TLS context its connections share first.
public final class RedisClient: Sendable {
    private enum Servers {
        case single(RedisServerPool)
        case cluster(RedisClusterRouter)
    }

    private let servers: Servers
    /// The group the client made for itself (none given), shut down with the client.
    private let ownGroup: MultiThreadedEventLoopGroup?
    private let isShutDown = Atomic<Bool>(false)
    /// Set once the server answered `FCALL` with "unknown command" (Redis < 7).
    private let functionsUnsupported = Atomic<Bool>(false)
    private let logger: Logger
    /// Timeouts, backoff and connection count the client was made with.
    public let options: RedisClientOptions

    /// - Parameter eventLoopGroup: the loops to put one connection each on (per server); without
    ///   one, the client runs `options.connectionCount` loops of its own.
    /// - Throws: `RedisError.tlsSetupFailed` when the TLS files of `config.tls` cannot be used
    ///   (the message names the file, never shows its content). Nothing else: a server that cannot
    ///   be reached fails the calls, not the client's creation.
    public init(config: RedisConfig, options: RedisClientOptions = RedisClientOptions(), eventLoopGroup: (any EventLoopGroup)? = nil, logger: Logger = Logger(label: "sluice.redis")) throws(RedisError) {
        self.logger = logger
        self.options = options
        var tls: RedisTLS?
        if let tlsConfig = config.tls {
            tls = try RedisTLS(config: tlsConfig, server: config, closeTimeoutMillis: options.connectTimeoutMillis)
            RedisTLS.warnAboutVerification(tlsConfig, server: config, logger: logger)
        }
        let group: any EventLoopGroup
        if let eventLoopGroup {
            group = eventLoopGroup
            ownGroup = nil
        } else {
            let own = MultiThreadedEventLoopGroup(numberOfThreads: options.connectionCount)
            group = own
            ownGroup = own
        }
        if config.clusterNodes.isEmpty {
            servers = .single(RedisServerPool(config: config, tls: tls, options: options, group: group, logger: logger, name: "sluice-redis"))
        } else {
            servers = .cluster(RedisClusterRouter(seeds: config.clusterNodes, tls: tls, options: options, group: group, logger: logger))
        }
    }

    deinit {
        shutdown()
    }

    /// Reads and parses the TLS files of `config` (a `rediss://` address) as a client does when it
    /// starts, without connecting: for `check-config`. Nothing to check without TLS.
    /// - Throws: `RedisError.tlsSetupFailed`, naming the file that cannot be used.
    public static func checkTLSSetup(_ config: RedisConfig) throws(RedisError) {
        guard let tlsConfig = config.tls else { return }
        _ = try RedisTLS(config: tlsConfig, server: config, closeTimeoutMillis: RedisClientOptions.defaultConnectTimeoutMillis)
    }

    /// Whether it talks to a Redis Cluster.
    public var isCluster: Bool {
        if case .cluster = servers { return true }
        return false
    }

    /// Whether a connection is open to the server (to every primary of a cluster).
    public var isConnected: Bool {
        guard !isShutDown.load(ordering: .relaxed) else { return false }
        switch servers {
        case .single(let pool): return pool.isConnected
        case .cluster(let router):
            let primaries = router.primaries
            return !primaries.isEmpty && primaries.allSatisfy(\.isConnected)
        }
    }

    /// Number of open connections (one per event loop and server).
    public var connectedCount: Int {
        if isShutDown.load(ordering: .relaxed) { return 0 }
        switch servers {
        case .single(let pool): return pool.connectedCount
        case .cluster(let router): return router.primaries.reduce(0) { $0 + $1.connectedCount }
        }
    }

    /// The last connection error of the first connection that had one, for health reports; `nil`
    /// if none ever failed. Kept after a successful reconnect (check `isConnected` for the present).
    public var lastError: RedisError? {
        switch servers {
        case .single(let pool): return pool.lastError
        case .cluster(let router): return router.primaries.lazy.compactMap(\.lastError).first
        }
    }

    /// Which part of Redis holds `key` and fails on its own: its slot in a cluster, else 0 (one
    /// server fails as one).
    public func failureDomain(ofKey key: String) -> Int {
        switch servers {
        case .single: return 0
        case .cluster: return RedisClusterSlot.of(key)
        }
    }

    /// The slot map of a cluster (`nil` for a single server or before it was read), for tests and
    /// diagnostics.
    var clusterTopology: RedisClusterTopology? {
        if case .cluster(let router) = servers { return router.topology }
        return nil
    }

    /// A cluster's pools for servers that left the slot map and are not shut down yet (tests).
    var retiringClusterPools: Int {
        if case .cluster(let router) = servers { return router.retiringPools }
        return 0
    }

    /// Closes every connection; later calls fail with `.shutDown`.
    public func shutdown() {
        guard !isShutDown.exchange(true, ordering: .acquiringAndReleasing) else { return }
        switch servers {
        case .single(let pool): pool.shutdown()
        case .cluster(let router): router.shutdown()
        }
        ownGroup?.shutdownGracefully { _ in }
    }

    /// Sends one command and returns its reply. Not cancellable: once queued it completes within
    /// the connect and command timeouts.
    /// - Throws: `RedisError.server` for an error reply; connection errors as described by
    ///   `RedisError` (check `outcomeUnknown` before retrying a non-idempotent command).
    /// - Parameter key: the key the command works on: in a cluster it goes to the primary of the
    ///   key's slot (without one, to any primary). Ignored with a single server.
    public func send(_ command: RedisArguments, routedBy key: String? = nil) async throws(RedisError) -> RedisReply {
        guard command.count > 0 else { throw .invalidCommand("no arguments") }
        guard !isShutDown.load(ordering: .relaxed) else { throw .shutDown }
        let reply: RedisReply
        switch servers {
        case .single(let pool): reply = try await pool.send(command).get()
        case .cluster(let router): reply = try await router.send(command, key: key).get()
        }
        if case .error(let message) = reply { throw .server(message) }
        return reply
    }

    /// Sends one command given as binary-safe arguments.
    public func send(_ arguments: [[UInt8]], routedBy key: String? = nil) async throws(RedisError) -> RedisReply {
        try await send(RedisArguments(arguments), routedBy: key)
    }

    /// Sends one command given as text arguments.
    public func send(_ arguments: [String], routedBy key: String? = nil) async throws(RedisError) -> RedisReply {
        try await send(RedisArguments(arguments), routedBy: key)
    }

    /// Runs a script by `EVALSHA`; if the server does not know it (`NOSCRIPT`: restarted,
    /// flushed, failed over) sends it once more as `EVAL`, which also caches it again. Works the
    /// same inside a pipelined round, since each command falls back on its own.
    public func evalScript(_ script: RedisScript, keys: [String], arguments: [String]) async throws(RedisError) -> RedisReply {
        try await evalScript(script, RedisScriptCall(keys: keys, arguments: arguments))
    }

    /// `evalScript(_:keys:arguments:)` with keys and arguments already encoded.
    public func evalScript(_ script: RedisScript, _ call: RedisScriptCall) async throws(RedisError) -> RedisReply {
        do throws(RedisError) {
            return try await send(call.command("EVALSHA", name: script.sha1.utf8), routedBy: call.routingKey)
        } catch {
            guard case .server(let message) = error, message.hasPrefix("NOSCRIPT") else { throw error }
            logger.debug("redis script not cached; sending it with EVAL", metadata: ["script": "\(script.name)"])
            return try await send(call.command("EVAL", name: script.source), routedBy: call.routingKey)
        }
    }

    /// Calls a library function by `FCALL`. If the server does not know it (restarted, flushed, or
    /// another version loaded first), loads its library with `FUNCTION LOAD REPLACE` and calls again.
    /// A server without functions (Redis < 7) is remembered, and the function's script runs by
    /// `EVALSHA` from then on.
    public func call(_ function: RedisFunction, keys: [String], arguments: [String]) async throws(RedisError) -> RedisReply {
        try await call(function, RedisScriptCall(keys: keys, arguments: arguments))
    }

    /// `call(_:keys:arguments:)` with keys and arguments already encoded.
    public func call(_ function: RedisFunction, _ call: RedisScriptCall) async throws(RedisError) -> RedisReply {
        if !functionsUnsupported.load(ordering: .relaxed) {
            let command = call.command("FCALL", name: function.name.utf8)
            do throws(RedisError) {
                return try await send(command, routedBy: call.routingKey)
            } catch {
                guard case .server(let message) = error else { throw error }
                if message.hasPrefix("ERR Function not found") {
                    logger.debug("redis function not loaded; loading its library", metadata: ["function": "\(function.name)"])
                    // Loaded where the call went: in a cluster, on that primary (each has its own).
                    _ = try await send([Array("FUNCTION".utf8), Array("LOAD".utf8), Array("REPLACE".utf8), function.librarySource], routedBy: call.routingKey)
                    return try await send(command, routedBy: call.routingKey)
                }
                guard message.lowercased().contains("unknown command") else { throw error }
                functionsUnsupported.store(true, ordering: .relaxed)
                logger.notice("redis has no functions (Redis < 7): using EVALSHA scripts")
            }
        }
        return try await evalScript(function.script, call)
    }
}

/// The keys and arguments of a script or function call (`EVALSHA`, `EVAL`, `FCALL` all take
/// `<name> <number of keys> <keys…> <arguments…>`): append the keys first, then the arguments.
public struct RedisScriptCall: Sendable {
    /// How many of the arguments, from the first, are keys.
    public var keyCount: Int
    public var arguments: RedisArguments
    /// The key that decides where the call goes in a cluster (all its keys share one slot).
    public var routingKey: String?

    public init(keyCount: Int, arguments: RedisArguments, routingKey: String?) {
        self.keyCount = keyCount
        self.arguments = arguments
        self.routingKey = routingKey
    }

    public init(keys: [String], arguments: [String]) {
        var encoded = RedisArguments()
        for key in keys { encoded.append(key) }
        for argument in arguments { encoded.append(argument) }
        self.init(keyCount: keys.count, arguments: encoded, routingKey: keys.first)
    }

    /// `<verb> <name> <number of keys> <keys…> <arguments…>`; the name is a function's, a script's
    /// SHA-1, or (for `EVAL`) the script itself.
    func command(_ verb: String, name: some Collection<UInt8>) -> RedisArguments {
        var command = RedisArguments(capacity: arguments.encodedSize + name.count + 64)
        command.append(verb)
        command.append(bytes: name)
        command.append(keyCount)
        command.append(contentsOf: arguments)
        return command
    }
}
