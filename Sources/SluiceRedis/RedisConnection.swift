import CHiredis
import Dispatch
import Logging
import NIOCore
import NIOPosix
import NIOSSL
import NIOTLS
import SluiceCore
import Synchronization

/// One Redis connection, owned by one NIO event loop.
///
/// Why on an event loop: the gateway's requests run on the event loops too, so a limiter call from a
/// request reaches the connection of its own loop and costs no thread hop either way (a dedicated
/// connection thread cost a wake-up per command and one per reply). Commands written during one turn
/// of the loop go out in one flush: automatic pipelining whose batch size follows the load. Replies
/// are parsed by hiredis' reader (`redisReader`), so the protocol parser is hiredis' own.
///
/// TLS (`rediss://`): a `NIOSSLClientHandler` first in the pipeline, from the client's one
/// `NIOSSLContext`; AUTH/SELECT wait for the TLS handshake, and the connect timeout bounds TCP and
/// the handshake together, so a server that accepts TCP but never finishes TLS is a failed connect
/// (with the backoff) after that time, as is a handshake that fails (bad certificate, wrong name).
///
/// Failures: a command in flight when the connection breaks (reset, EOF, command timeout) fails with
/// an error whose `outcomeUnknown` is true; the connection reconnects at once, then with exponential
/// backoff. While backing off, new commands fail immediately with `.notConnected` instead of
/// waiting, so a dead Redis costs callers nothing but the check. A connection closed by the other
/// side before it answered anything (a proxy or load balancer with no Redis behind it accepts, then
/// closes) counts as a failed connect, with the backoff: reconnecting at once would spin.
///
/// Failover: the address may lead to another server after a failover (a managed endpoint, a DNS
/// name, a proxy in front of a Sentinel-managed pair), while an open connection still reaches the
/// old primary, now a replica that refuses writes with `READONLY`. Such a reply makes the connection
/// stop writing, wait for the replies in flight, and reconnect; the commands meanwhile wait for the
/// new connection.
///
/// Threading: every `var` below is touched on `eventLoop` only; other threads call `start`, `send`
/// and `shutdown`, which hop onto it. `isConnected` and `lastError` are mirrored behind a lock for
/// health checks from anywhere.
final class RedisConnection: @unchecked Sendable {
    typealias Completion = CheckedContinuation<Result<RedisReply, RedisError>, Never>
    typealias ReplyHandler = (Result<RedisReply, RedisError>) -> Void

    private enum Phase {
        case notStarted
        /// Opening a connection (TCP, then AUTH/SELECT); commands queue and wait for the outcome.
        case connecting
        /// TCP is open; the TLS handshake runs until it completes or `timeout` fires (commands
        /// still queue).
        case securing(any Channel, timeout: Scheduled<Void>)
        /// Connected; AUTH/SELECT under way (commands still queue).
        case handshaking(any Channel)
        case connected(any Channel)
        /// The last connect failed; no attempt before `until`.
        case backingOff(until: NIODeadline, error: RedisError)
        case shutDown
    }

    private struct Mirror {
        var connected = false
        var lastError: RedisError?
        /// `shutdown()` was called: its event loop may be gone soon (the client shuts its own loops
        /// down right after), and a command handed to a loop that is gone would never be answered.
        var shutDown = false
        /// `start()` was called: only then has the loop anything of this connection to close.
        var started = false
    }

    let eventLoop: any EventLoop
    private let config: RedisConfig
    /// Set for a `rediss://` address (shared by all connections of the client).
    private let tls: RedisTLS?
    private let options: RedisClientOptions
    private let logger: Logger
    private let name: String
    private let mirror = Mutex(Mirror())
    private let lookUpHost: HostLookup

    // MARK: Event loop only

    private var phase = Phase.notStarted
    /// Commands waiting for the connection to open.
    private var queued: [(RedisArguments, ReplyHandler)] = []
    /// Commands written, oldest first, each with the time its reply is due.
    private var inFlight = CircularBuffer<(handler: ReplyHandler, due: NIODeadline)>()
    private var timeoutCheck: Scheduled<Void>?
    private var flushScheduled = false
    private var backoffMillis: Int
    private var failuresInARow = 0
    /// Whether a command has been answered on the current connection (the backoff and the failure
    /// count are reset then, not when the socket opens).
    private var answered = false
    /// The server of the current connection answered `READONLY` (it is a replica now): nothing more
    /// is written on it; it is closed once the commands in flight are answered, then opened again.
    private var leavingReplica = false

    /// - Parameter lookUpHost: the addresses of a host name (blocking; run off the event loop).
    init(config: RedisConfig, tls: RedisTLS?, options: RedisClientOptions, logger: Logger, name: String, eventLoop: any EventLoop,
         lookUpHost: @escaping HostLookup = RedisConnection.lookUpHost) {
        self.config = config
        self.tls = tls
        self.options = options
        self.logger = logger
        self.name = name
        self.eventLoop = eventLoop
        self.lookUpHost = lookUpHost
        self.backoffMillis = options.initialBackoffMillis
    }

    /// Connects (at once, on the connection's event loop).
    func start() {
        let startsNow = mirror.withLock { mirror -> Bool in
            guard !mirror.shutDown, !mirror.started else { return false }
            mirror.started = true
            return true
        }
        guard startsNow else { return }
        onLoop {
            guard case .notStarted = self.phase else { return }
            self.connect()
        }
    }

    /// Whether the connection is currently open.
    var isConnected: Bool { mirror.withLock { $0.connected } }

    /// The last connect or connection error (kept after a reconnect, for diagnostics).
    var lastError: RedisError? { mirror.withLock { $0.lastError } }

    /// Sends one command and waits for its reply (bounded by the connect and command timeouts).
    /// - Parameter prefix: a command written right before it on the same connection, with nothing
    ///   between them (Redis Cluster's `ASKING`); its reply is dropped, but an error in it is returned
    ///   instead of the command's.
    func send(_ command: RedisArguments, precededBy prefix: RedisArguments? = nil) async -> Result<RedisReply, RedisError> {
        // After shutdown a command fails here, without a hop: NIO drops a task for a loop that has
        // shut down (and prints "Cannot schedule tasks…"), which left this call waiting for ever — a
        // background topology refresh of a cluster client that was just shut down did.
        if mirror.withLock({ $0.shutDown }) { return .failure(.shutDown) }
        return await withCheckedContinuation { (completion: Completion) in
            onLoop {
                guard let prefix else {
                    self.submit(command) { completion.resume(returning: $0) }
                    return
                }
                // Both submitted in one turn of the loop, so they are queued or written together.
                var prefixFailure: Result<RedisReply, RedisError>?
                self.submit(prefix) { result in
                    switch result {
                    case .success(.error), .failure: prefixFailure = result
                    case .success: break
                    }
                }
                self.submit(command) { completion.resume(returning: prefixFailure ?? $0) }
            }
        }
    }

    /// Stops: queued and in-flight commands fail with `.shutDown`, the socket is closed. Later
    /// commands fail with `.shutDown` too.
    func shutdown() {
        // Once: a second call may come after the loop is gone.
        // A connection never started has nothing on its loop (which may be gone already).
        let needsLoop = mirror.withLock { mirror -> Bool in
            defer { mirror.shutDown = true }
            return !mirror.shutDown && mirror.started
        }
        guard needsLoop else { return }
        onLoop {
            if case .shutDown = self.phase { return }
            if case .securing(_, let timeout) = self.phase { timeout.cancel() }
            let channel = self.openChannel
            self.phase = .shutDown
            self.failEverything(.shutDown)
            self.mirror.withLock { $0.connected = false }
            channel?.close(promise: nil)
        }
    }

    /// The channel of the current connection (securing, handshaking or open), if any.
    private var openChannel: (any Channel)? {
        switch phase {
        case .securing(let channel, _), .handshaking(let channel), .connected(let channel): return channel
        case .notStarted, .connecting, .backingOff, .shutDown: return nil
        }
    }

    private func onLoop(_ body: @escaping @Sendable () -> Void) {
        if eventLoop.inEventLoop {
            body()
        } else {
            eventLoop.execute(body)
        }
    }

    /// Hands `body` to the loop unless the connection is shut down. The check and the hand-off
    /// happen under the lock `shutdown()` takes, so a shutdown comes either before (nothing is handed
    /// over) or after (the task is queued while the loop still runs: whoever shuts the loops down
    /// does so after `shutdown()` returned).
    private func onLoopUnlessShutDown(_ body: @escaping @Sendable () -> Void) {
        mirror.withLock { mirror in
            guard !mirror.shutDown else { return }
            eventLoop.execute(body)
        }
    }

    // MARK: Commands

    private func submit(_ command: RedisArguments, _ handler: @escaping ReplyHandler) {
        switch phase {
        case .shutDown:
            handler(.failure(.shutDown))
        case .backingOff(let until, let error):
            if eventLoop.now < until {
                handler(.failure(.notConnected(error.description)))
            } else {
                queued.append((command, handler))
                connect()
            }
        case .notStarted:
            queued.append((command, handler))
            connect()
        case .connecting, .securing, .handshaking:
            queued.append((command, handler))
        case .connected(let channel):
            if leavingReplica {
                queued.append((command, handler))  // for the next connection
            } else {
                write(command, handler, on: channel)
            }
        }
    }

    private func write(_ command: RedisArguments, _ handler: @escaping ReplyHandler, on channel: any Channel) {
        var buffer = channel.allocator.buffer(capacity: command.encodedSize)
        command.write(into: &buffer)
        inFlight.append((handler, eventLoop.now + .milliseconds(Int64(options.commandTimeoutMillis))))
        channel.write(buffer, promise: nil)
        // One flush for everything written in this turn of the loop.
        if !flushScheduled {
            flushScheduled = true
            eventLoop.execute {
                self.flushScheduled = false
                channel.flush()
            }
        }
        if timeoutCheck == nil { scheduleTimeoutCheck() }
    }

    /// A reply arrived on `channel`: it answers the oldest command in flight.
    fileprivate func received(_ reply: RedisReply, on channel: any Channel) {
        guard let current = openChannel, current === channel else { return }
        guard let (handler, _) = inFlight.popFirst() else {
            logger.warning("redis sent a reply nobody asked for; reconnecting", metadata: ["connection": "\(name)"])
            channel.close(promise: nil)
            return
        }
        if !answered {
            answered = true
            if failuresInARow > 0 {
                logger.info("redis reconnected", metadata: ["connection": "\(name)", "failed_attempts": "\(failuresInARow)"])
            }
            failuresInARow = 0
            backoffMillis = options.initialBackoffMillis
        }
        handler(.success(reply))
        if case .error(let message) = reply, message.hasPrefix("READONLY"), !leavingReplica {
            leavingReplica = true
            logger.warning("redis answered READONLY: this address reaches a replica now (a failover); reconnecting", metadata: ["connection": "\(name)", "in_flight": "\(inFlight.count)"])
        }
        if leavingReplica, inFlight.isEmpty, case .connected(let current) = phase, current === channel {
            channel.close(promise: nil)  // closed(_:reason:) reconnects; the queued commands go there
        }
    }

    /// The connection broke or closed: commands in flight have an unknown outcome.
    fileprivate func closed(_ channel: any Channel, reason: String) {
        if case .securing(let current, let timeout) = phase, current === channel {
            timeout.cancel()
            phase = .connecting
            connectFailed(.connectFailed("TLS handshake with \(tls?.serverDescription ?? "the server") failed: \(reason)"))
            return
        }
        if case .handshaking(let current) = phase, current === channel {
            phase = .connecting
            while let (handler, _) = inFlight.popFirst() { handler(.failure(.connectionLost(reason))) }
            connectFailed(.connectFailed("closed during \(tls == nil ? "AUTH/SELECT" : "the handshake after TLS (AUTH/SELECT or PING)"): \(reason)"))
            return
        }
        guard case .connected(let current) = phase, current === channel else { return }
        let error = RedisError.connectionLost(reason)
        if !answered {
            // Accepted, then closed before answering anything: nothing behind the address (a proxy
            // without a backend), or a server refusing clients. A failed connect, with the backoff.
            while let (handler, _) = inFlight.popFirst() { handler(.failure(error)) }
            phase = .connecting
            connectFailed(.connectFailed("closed before answering anything: \(reason)"))
            return
        }
        if !inFlight.isEmpty {
            logger.warning("redis connection lost; reconnecting", metadata: ["connection": "\(name)", "error": "\(error)", "in_flight": "\(inFlight.count)"])
        } else {
            logger.info("redis connection closed; reconnecting", metadata: ["connection": "\(name)", "reason": "\(reason)"])
        }
        while let (handler, _) = inFlight.popFirst() { handler(.failure(error)) }
        mirror.withLock {
            $0.connected = false
            $0.lastError = error
        }
        connect()
    }

    // MARK: Command timeout

    private func scheduleTimeoutCheck() {
        guard let oldest = inFlight.first else { return }
        timeoutCheck = eventLoop.scheduleTask(deadline: oldest.due) { self.checkTimeouts() }
    }

    private func checkTimeouts() {
        timeoutCheck = nil
        guard let oldest = inFlight.first else { return }
        guard eventLoop.now >= oldest.due else {
            scheduleTimeoutCheck()
            return
        }
        // The oldest reply is overdue: the connection can no longer be trusted to answer in order.
        logger.warning("redis command timed out; reconnecting", metadata: ["connection": "\(name)", "in_flight": "\(inFlight.count)"])
        while let (handler, _) = inFlight.popFirst() { handler(.failure(.timedOut)) }
        if case .connected(let channel) = phase {
            mirror.withLock {
                $0.connected = false
                $0.lastError = .timedOut
            }
            phase = .connecting
            channel.close(promise: nil)
            connect()
        }
    }

    // MARK: Connecting

    private func connect() {
        phase = .connecting
        if let address = try? SocketAddress(ipAddress: config.host, port: config.port) {
            connect(to: [address])
            return
        }
        // A host name: looked up off the loop (getaddrinfo blocks), the answer handed back only while
        // the connection is not shut down. NIO's own resolver posts its answer to the loop whatever
        // happened meanwhile, and a client shut down mid-lookup (its loops shut down right after) had
        // it post to a loop already gone: a crash under SWIFTNIO_STRICT (a CI run lost its test
        // process so), and a crash in NIO versions to come.
        let host = config.host, port = config.port, lookUpHost = self.lookUpHost
        DispatchQueue.global().async {
            let addresses = Result { try lookUpHost(host, port) }
            self.onLoopUnlessShutDown {
                guard case .connecting = self.phase else { return }
                switch addresses {
                case .success(let addresses) where !addresses.isEmpty:
                    self.connect(to: addresses[...])
                case .success:
                    self.connectFailed(.connectFailed("\(host) has no address"))
                case .failure(let error):
                    self.connectFailed(.connectFailed("cannot look up \(host): \(error)"))
                }
            }
        }
    }

    /// Opens TCP to the first of `addresses` that accepts, in order (a name may have an IPv6 and an
    /// IPv4 address, and the server listen on one of them only).
    private func connect(to addresses: ArraySlice<SocketAddress>) {
        let connectTimeout = TimeAmount.milliseconds(Int64(options.connectTimeoutMillis))
        // TCP and the TLS handshake share one connect timeout.
        let deadline = eventLoop.now + connectTimeout
        let reader = RedisReplyReader(connection: self)
        let tls = self.tls
        ClientBootstrap(group: eventLoop)
            .connectTimeout(connectTimeout)
            .channelOption(.socketOption(.tcp_nodelay), value: 1)
            .channelOption(.socketOption(.so_keepalive), value: 1)
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    if let tls { try channel.pipeline.syncOperations.addHandler(tls.makeHandler()) }
                    try channel.pipeline.syncOperations.addHandler(reader)
                }
            }
            .connect(to: addresses.first!)
            .whenComplete { result in
                switch result {
                case .success(let channel) where tls != nil:
                    self.secure(channel, deadline: deadline)
                case .success(let channel):
                    self.handshake(on: channel)
                case .failure where addresses.count > 1:
                    guard case .connecting = self.phase else { return }
                    self.connect(to: addresses.dropFirst())
                case .failure(let error):
                    self.connectFailed(.connectFailed("\(error)"))
                }
            }
    }

    typealias HostLookup = @Sendable (_ host: String, _ port: Int) throws -> [SocketAddress]

    /// The addresses `getaddrinfo` gives for `host`, in its order (blocks: DNS).
    static func lookUpHost(_ host: String, port: Int) throws -> [SocketAddress] {
        var hints = addrinfo()
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, String(port), &hints, &list)
        guard status == 0 else { throw HostLookupError(message: String(cString: gai_strerror(status))) }
        defer { freeaddrinfo(list) }
        var addresses: [SocketAddress] = []
        var entry = list
        while let current = entry?.pointee {
            if let address = current.ai_addr {
                switch current.ai_family {
                case AF_INET: addresses.append(SocketAddress(UnsafeRawPointer(address).load(as: sockaddr_in.self), host: host))
                case AF_INET6: addresses.append(SocketAddress(UnsafeRawPointer(address).load(as: sockaddr_in6.self), host: host))
                default: break
                }
            }
            entry = current.ai_next
        }
        return addresses
    }

    struct HostLookupError: Error, CustomStringConvertible {
        var message: String
        var description: String { message }
    }

    /// TCP is open and the TLS handler is handshaking: wait for `secured(_:)` (or a failure, in
    /// `closed(_:reason:)`) until `deadline`.
    private func secure(_ channel: any Channel, deadline: NIODeadline) {
        guard case .connecting = phase else {
            channel.close(promise: nil)  // shut down meanwhile
            return
        }
        guard channel.isActive else {
            // Closed before this callback ran (its `closed` found the phase still `.connecting`).
            connectFailed(.connectFailed("TLS handshake with \(tls?.serverDescription ?? "the server") failed: closed by the server or the network"))
            return
        }
        let timeout = eventLoop.scheduleTask(deadline: deadline) {
            guard case .securing(let current, _) = self.phase, current === channel else { return }
            self.phase = .connecting
            channel.close(promise: nil)
            self.connectFailed(.connectFailed("TLS handshake with \(self.tls?.serverDescription ?? "the server") not finished within the connect timeout (\(self.options.connectTimeoutMillis) ms)"))
        }
        phase = .securing(channel, timeout: timeout)
    }

    /// The TLS handshake on `channel` completed (the server's certificate was accepted).
    fileprivate func secured(_ channel: any Channel) {
        guard case .securing(let current, let timeout) = phase, current === channel else { return }
        timeout.cancel()
        phase = .connecting
        handshake(on: channel)
    }

    /// AUTH and SELECT, then the connection is open.
    private func handshake(on channel: any Channel) {
        guard case .connecting = phase else {
            channel.close(promise: nil)  // shut down meanwhile
            return
        }
        var commands: [RedisArguments] = []
        if let password = config.password {
            var auth = RedisArguments(["AUTH"])
            if let username = config.username, !username.isEmpty { auth.append(username) }
            auth.append(password.revealed)
            commands.append(auth)
        }
        if config.database != 0 {
            var select = RedisArguments(["SELECT"])
            select.append(config.database)
            commands.append(select)
        }
        // Over TLS the handshake always waits for one reply: a server that refuses this client's
        // certificate does so after the client's side of the TLS handshake is done (TLS 1.3), and
        // that must fail the connect, not the first command. Any reply to the PING will do
        // (NOAUTH too: commands then get it, as without TLS).
        let probe = commands.isEmpty && tls != nil
        if probe { commands.append(RedisArguments(["PING"])) }
        // Commands keep queueing until the handshake is over.
        phase = .handshaking(channel)
        answered = false
        leavingReplica = false
        runHandshake(commands[...], acceptingErrorReplies: probe, on: channel)
    }

    private func runHandshake(_ commands: ArraySlice<RedisArguments>, acceptingErrorReplies: Bool, on channel: any Channel) {
        guard let command = commands.first else {
            opened(channel)
            return
        }
        write(command, { result in
            switch result {
            case .success(.error(let message)) where !acceptingErrorReplies:
                // Never echo the command: it may hold the password.
                self.abandonHandshake(channel, .handshakeFailed(message))
            case .success:
                self.runHandshake(commands.dropFirst(), acceptingErrorReplies: acceptingErrorReplies, on: channel)
            case .failure(let error):
                self.abandonHandshake(channel, .connectFailed("during AUTH/SELECT: \(error)"))
            }
        }, on: channel)
    }

    private func abandonHandshake(_ channel: any Channel, _ error: RedisError) {
        guard case .handshaking(let current) = phase, current === channel else { return }
        phase = .connecting
        channel.close(promise: nil)
        connectFailed(error)
    }

    private func opened(_ channel: any Channel) {
        guard case .handshaking(let current) = phase, current === channel else { return }
        phase = .connected(channel)
        // The backoff and the failure count are reset by the first reply (`received`): a socket
        // that opens and closes again without an answer is no reconnection.
        mirror.withLock { $0.connected = true }
        let waiting = queued
        queued = []
        for (arguments, handler) in waiting { write(arguments, handler, on: channel) }
    }

    private func connectFailed(_ error: RedisError) {
        guard case .connecting = phase else { return }
        failuresInARow += 1
        if failuresInARow == 1 {
            logger.warning("redis connect failed; retrying with backoff", metadata: ["connection": "\(name)", "error": "\(error)"])
        }
        mirror.withLock {
            $0.connected = false
            $0.lastError = error
        }
        let delay = TimeAmount.milliseconds(Int64(backoffMillis))
        phase = .backingOff(until: eventLoop.now + delay, error: error)
        backoffMillis = min(backoffMillis * 2, options.maximumBackoffMillis)
        let waiting = queued
        queued = []
        for (_, handler) in waiting { handler(.failure(error)) }
        eventLoop.scheduleTask(in: delay) {
            if case .backingOff = self.phase { self.connect() }
        }
    }

    private func failEverything(_ error: RedisError) {
        timeoutCheck?.cancel()
        timeoutCheck = nil
        let waiting = queued
        queued = []
        for (_, handler) in waiting { handler(.failure(error)) }
        while let (handler, _) = inFlight.popFirst() { handler(.failure(error)) }
    }
}

/// Feeds the bytes a Redis connection receives to hiredis' reply parser and hands every complete
/// reply to the connection, copied into Swift values.
private final class RedisReplyReader: ChannelInboundHandler, @unchecked Sendable {
    typealias InboundIn = ByteBuffer

    // Strong: the channel's pipeline (and with it this handler) is released when the channel closes.
    private let connection: RedisConnection
    private let reader: UnsafeMutablePointer<redisReader>

    init(connection: RedisConnection) {
        self.connection = connection
        reader = redisReaderCreate()
    }

    deinit {
        redisReaderFree(reader)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let bytes = unwrapInboundIn(data)
        let fed = bytes.withUnsafeReadableBytes { raw in
            redisReaderFeed(reader, raw.baseAddress?.assumingMemoryBound(to: CChar.self), raw.count)
        }
        guard fed == REDIS_OK else { return protocolError(context) }
        while true {
            var raw: UnsafeMutableRawPointer?
            guard redisReaderGetReply(reader, &raw) == REDIS_OK else { return protocolError(context) }
            guard let raw else { return }  // needs more bytes
            let reply = RedisReplyCopy.copy(raw.assumingMemoryBound(to: redisReply.self))
            freeReplyObject(raw)
            connection.received(reply, on: context.channel)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        connection.closed(context.channel, reason: "closed by the server or the network")
        context.fireChannelInactive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        if case .handshakeCompleted? = event as? TLSUserEvent {
            connection.secured(context.channel)
        }
        context.fireUserInboundEventTriggered(event)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        connection.closed(context.channel, reason: "\(error)")
        context.close(promise: nil)
    }

    private func protocolError(_ context: ChannelHandlerContext) {
        let message = withUnsafeBytes(of: reader.pointee.errstr) { raw in
            String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
        }
        connection.closed(context.channel, reason: "protocol error: \(message)")
        context.close(promise: nil)
    }
}

/// Copies a hiredis reply tree into Swift values (hiredis frees it right after).
enum RedisReplyCopy {
    static func copy(_ reply: UnsafePointer<redisReply>) -> RedisReply {
        let value = reply.pointee
        switch value.type {
        case REDIS_REPLY_STRING:
            return .bulkString(bytes(value.str, value.len))
        case REDIS_REPLY_STATUS:
            return .status(String(decoding: bytes(value.str, value.len), as: UTF8.self))
        case REDIS_REPLY_ERROR:
            return .error(String(decoding: bytes(value.str, value.len), as: UTF8.self))
        case REDIS_REPLY_INTEGER:
            return .integer(Int64(value.integer))
        case REDIS_REPLY_NIL:
            return .null
        case REDIS_REPLY_ARRAY:
            guard let elements = value.element else { return .array([]) }
            return .array((0..<value.elements).map { index in
                elements[index].map { copy($0) } ?? .null
            })
        default:
            return .error("unknown hiredis reply type \(value.type)")
        }
    }

    private static func bytes(_ pointer: UnsafeMutablePointer<CChar>?, _ count: Int) -> [UInt8] {
        guard let pointer, count > 0 else { return [] }
        return Array(UnsafeRawBufferPointer(start: pointer, count: count))
    }
}
