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

/// Pipelining Redis connections (`RedisConnection`), one per event loop of a group.
///
/// A call made on one of the group's event loops (the gateway's requests run there) goes to that
/// loop's connection: no thread hop. Other callers take the connections round-robin, preferring a
/// connected one, so one broken socket does not fail every n-th call.
///
/// Every call is bounded in time by `RedisClientOptions` (connect and command timeouts); while a
/// connection is down and backing off, calls on it fail at once with `.notConnected`.
///
/// Creating a client starts its connections, which connect immediately; call `shutdown()` when done
/// (also done on deinit). For a `rediss://` address (`config.tls` set) the client reads its TLS
/// files and builds the one TLS context its connections share first.
public final class RedisClient: Sendable {
    private let connections: [RedisConnection]
    private let connectionOfLoop: [ObjectIdentifier: RedisConnection]
    /// The group the client made for itself (none given), shut down with the client.
    private let ownGroup: MultiThreadedEventLoopGroup?
    private let isShutDown = Atomic<Bool>(false)
    private let nextConnection = Atomic<Int>(0)
    /// Set once the server answered `FCALL` with "unknown command" (Redis < 7).
    private let functionsUnsupported = Atomic<Bool>(false)
    private let logger: Logger
    /// Timeouts, backoff and connection count the client was made with.
    public let options: RedisClientOptions

    /// - Parameter eventLoopGroup: the loops to put one connection each on (the gateway passes its
    ///   own); without one, the client runs `options.connectionCount` loops of its own.
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
        var connections: [RedisConnection] = []
        for (index, loop) in group.makeIterator().enumerated() {
            connections.append(RedisConnection(config: config, tls: tls, options: options, logger: logger, name: "sluice-redis-\(index)", eventLoop: loop))
        }
        self.connections = connections
        connectionOfLoop = Dictionary(connections.map { (ObjectIdentifier($0.eventLoop), $0) }, uniquingKeysWith: { first, _ in first })
        for connection in connections { connection.start() }
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

    /// Whether at least one connection is open.
    public var isConnected: Bool {
        !isShutDown.load(ordering: .relaxed) && connections.contains { $0.isConnected }
    }

    /// Number of open connections (one per event loop).
    public var connectedCount: Int {
        if isShutDown.load(ordering: .relaxed) { return 0 }
        return connections.reduce(0) { $0 + ($1.isConnected ? 1 : 0) }
    }

    /// The last connection error of the first connection that had one, for health reports; `nil`
    /// if none ever failed. Kept after a successful reconnect (check `isConnected` for the present).
    public var lastError: RedisError? {
        connections.lazy.compactMap(\.lastError).first
    }

    /// Closes every connection; later calls fail with `.shutDown`.
    public func shutdown() {
        guard !isShutDown.exchange(true, ordering: .acquiringAndReleasing) else { return }
        for connection in connections { connection.shutdown() }
        ownGroup?.shutdownGracefully { _ in }
    }

    /// Sends one command and returns its reply. Not cancellable: once queued it completes within
    /// the connect and command timeouts.
    /// - Throws: `RedisError.server` for an error reply; connection errors as described by
    ///   `RedisError` (check `outcomeUnknown` before retrying a non-idempotent command).
    public func send(_ command: RedisArguments) async throws(RedisError) -> RedisReply {
        guard command.count > 0 else { throw .invalidCommand("no arguments") }
        guard !isShutDown.load(ordering: .relaxed) else { throw .shutDown }
        let reply = try await pickConnection().send(command).get()
        if case .error(let message) = reply { throw .server(message) }
        return reply
    }

    /// Sends one command given as binary-safe arguments.
    public func send(_ arguments: [[UInt8]]) async throws(RedisError) -> RedisReply {
        try await send(RedisArguments(arguments))
    }

    /// Sends one command given as text arguments.
    public func send(_ arguments: [String]) async throws(RedisError) -> RedisReply {
        try await send(RedisArguments(arguments))
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
            return try await send(call.command("EVALSHA", name: script.sha1.utf8))
        } catch {
            guard case .server(let message) = error, message.hasPrefix("NOSCRIPT") else { throw error }
            logger.debug("redis script not cached; sending it with EVAL", metadata: ["script": "\(script.name)"])
            return try await send(call.command("EVAL", name: script.source))
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
                return try await send(command)
            } catch {
                guard case .server(let message) = error else { throw error }
                if message.hasPrefix("ERR Function not found") {
                    logger.debug("redis function not loaded; loading its library", metadata: ["function": "\(function.name)"])
                    _ = try await send([Array("FUNCTION".utf8), Array("LOAD".utf8), Array("REPLACE".utf8), function.librarySource])
                    return try await send(command)
                }
                guard message.lowercased().contains("unknown command") else { throw error }
                functionsUnsupported.store(true, ordering: .relaxed)
                logger.notice("redis has no functions (Redis < 7): using EVALSHA scripts")
            }
        }
        return try await evalScript(function.script, call)
    }

    private func pickConnection() -> RedisConnection {
        if let loop = MultiThreadedEventLoopGroup.currentEventLoop,
            let own = connectionOfLoop[ObjectIdentifier(loop)], own.isConnected
        {
            return own
        }
        let start = UInt(bitPattern: nextConnection.wrappingAdd(1, ordering: .relaxed).oldValue)
        let count = UInt(connections.count)
        for offset in 0..<count {
            let candidate = connections[Int((start &+ offset) % count)]
            if candidate.isConnected { return candidate }
        }
        return connections[Int(start % count)]
    }
}

/// The keys and arguments of a script or function call (`EVALSHA`, `EVAL`, `FCALL` all take
/// `<name> <number of keys> <keys…> <arguments…>`): append the keys first, then the arguments.
public struct RedisScriptCall: Sendable {
    /// How many of the arguments, from the first, are keys.
    public var keyCount: Int
    public var arguments: RedisArguments

    public init(keyCount: Int, arguments: RedisArguments) {
        self.keyCount = keyCount
        self.arguments = arguments
    }

    public init(keys: [String], arguments: [String]) {
        var encoded = RedisArguments()
        for key in keys { encoded.append(key) }
        for argument in arguments { encoded.append(argument) }
        self.init(keyCount: keys.count, arguments: encoded)
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
