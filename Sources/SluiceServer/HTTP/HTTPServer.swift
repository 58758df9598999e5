import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// The SwiftNIO HTTP/1.1 front door: accepts connections, decodes requests (bounded), and hands each
/// complete request to a `RequestHandling` value, one request at a time per connection (keep-alive).
///
/// Threading: NIO event loops own the sockets. Each connection's `HTTPConnectionHandler` assembles a
/// request on its event loop and runs the gateway for it in a Swift task whose executor is that same
/// event loop (`EventLoopExecutor`), so the request's walk reads and writes its socket without a
/// thread hop; only the upstream's answer crosses threads. Streamed writes wait while the client's
/// socket is not writable: that wait is the backpressure that pauses an upstream transfer for a slow
/// client.
public final class HTTPServer: Sendable {
    public struct Configuration: Sendable {
        public var host: String
        public var port: Int
        public var maxBodyBytes: Int
        /// Largest request head (all header names and values) accepted; larger ones get 431 and a close.
        public var maxHeaderBytes: Int
        public var idleTimeoutMs: Int
        public var bodyTimeoutMs: Int
        public var shutdownGraceSeconds: Int

        public init(host: String, port: Int, maxBodyBytes: Int, maxHeaderBytes: Int = 64 * 1024, idleTimeoutMs: Int, bodyTimeoutMs: Int, shutdownGraceSeconds: Int) {
            self.host = host
            self.port = port
            self.maxBodyBytes = maxBodyBytes
            self.maxHeaderBytes = maxHeaderBytes
            self.idleTimeoutMs = idleTimeoutMs
            self.bodyTimeoutMs = bodyTimeoutMs
            self.shutdownGraceSeconds = shutdownGraceSeconds
        }
    }

    private let configuration: Configuration
    private let group: any EventLoopGroup
    private let handler: any RequestHandling
    private let logger: Logger
    private let connections = ConnectionRegistry()
    private let boundAddress = Mutex<SocketAddress?>(nil)
    /// The listening channel once bound, and whether shutdown was asked for (possibly before it was).
    private let listener = Mutex<(channel: (any Channel)?, shutdownRequested: Bool)>((nil, false))

    public init(configuration: Configuration, group: any EventLoopGroup, handler: any RequestHandling, logger: Logger) {
        self.configuration = configuration
        self.group = group
        self.handler = handler
        self.logger = logger
    }

    /// The address the listener is bound to, once `run` has bound it (port 0 picks a free port).
    public var localAddress: SocketAddress? { boundAddress.withLock { $0 } }

    /// Number of client connections open now.
    public var openConnections: Int { connections.count }

    /// Request tasks still running (some after their response ended: they settle after it).
    public var runningTasks: Int { connections.tasks.running }

    /// A decoder of the type every connection's pipeline gets, built once per process before any
    /// listener accepts (`run` reads it first).
    ///
    /// Swift's runtime can crash when two threads are the first to instantiate the same generic type
    /// from its mangled name at the same moment: a conformance check during the instantiation meets a
    /// null metadata pointer (SIGSEGV in `swift_checkMetadataState`). A fresh node's first connections
    /// reach several event loops together, each building `ByteToMessageHandler<HTTPRequestDecoder>` in
    /// `childChannelInitializer` — a CI run lost a node that way (here: 1 start in ~300 with two event
    /// loops, 3 in 100 with eight, under a burst of first connections). A `static let` is initialised
    /// by one thread while any other waits (the public and admin listeners start together: built in
    /// each `run` instead, the two raced the same way). Once the type is complete, the loops' own
    /// lookups only read it.
    private static let pipelineTypesInstantiated: Bool = {
        let decoder = ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .dropBytes))
        return withExtendedLifetime(decoder) { true }
    }()

    /// Binds, then serves until `shutdownGracefully()` closes the listener and every connection has
    /// finished (or the grace period ran out and they were closed).
    public func run(onBound: @Sendable (SocketAddress) -> Void = { _ in }) async throws {
        let configuration = self.configuration
        var decoderLimits = NIOHTTPDecoderLimitConfiguration()
        decoderLimits.maxHeaderFieldSize = configuration.maxHeaderBytes
        decoderLimits.maxHeaderListSize = configuration.maxHeaderBytes
        decoderLimits.maxHeaderFieldCount = Self.maxHeaderFields
        let limits = decoderLimits
        let connectionLimits = HTTPConnectionHandler.Limits(
            maxBodyBytes: configuration.maxBodyBytes, maxHeaderBytes: configuration.maxHeaderBytes, maxHeaderFields: Self.maxHeaderFields,
            idleTimeout: .milliseconds(Int64(configuration.idleTimeoutMs)), bodyTimeout: .milliseconds(Int64(configuration.bodyTimeoutMs))
        )
        let connections = self.connections
        let handler = self.handler
        let logger = self.logger
        precondition(Self.pipelineTypesInstantiated)  // before any event loop can build one (see the property)
        // The listener accepts on a thread of its own. On an event loop that also carries thousands of
        // streams, NIO came back to the listening socket so rarely that connections waited seconds in the
        // accept queue (scripts/bench streams: 200 of 1,000 new ones for over a second, their requests
        // unread: that wait is time to first token). The acceptor only accepts and hands each connection
        // to the next event loop of `group`; it sleeps otherwise.
        let acceptor = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let serverChannel: any Channel
        do {
            serverChannel = try await ServerBootstrap(group: acceptor, childGroup: group)
            // Thousands of clients may connect at once (a burst of streams): a deep accept queue, drained
            // many connections per wake-up (NIO's default is 4). With 1024 and 4, scripts/bench streams saw
            // sluice-mock's queue overflow at 1,000 new connections/s, and a dropped handshake costs the
            // client a 1 s retransmit.
            .serverChannelOption(.backlog, value: 4096)
            .serverChannelOption(.maxMessagesPerRead, value: 64)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.maxMessagesPerRead, value: 4)
            .childChannelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    guard let connection = connections.register(channel) else {
                        // Draining: no new connections.
                        channel.close(promise: nil)
                        return
                    }
                    channel.closeFuture.whenComplete { _ in connections.unregister(connection) }
                    // The decoder (NIO's, on llhttp), then one handler for everything else: requests,
                    // deadlines, malformed requests, responses written as bytes (no encoder; see
                    // HTTPConnectionHandler for why). Requests a client pipelines are held by that
                    // handler; NIO's pipelining assistance would stop and restart reading around every
                    // response (two epoll_ctl per request).
                    try channel.pipeline.syncOperations.addHandler(
                        ByteToMessageHandler(HTTPRequestDecoder(leftOverBytesStrategy: .dropBytes, limitConfiguration: limits))
                    )
                    try channel.pipeline.syncOperations.addHandler(
                        HTTPConnectionHandler(
                            connection: connection, handler: handler, limits: connectionLimits,
                            executor: EventLoopExecutor(channel.eventLoop), logger: logger
                        )
                    )
                }
            }
            .bind(host: configuration.host, port: configuration.port).get()
        } catch {
            logger.critical("cannot listen", metadata: ["address": "\(configuration.host):\(configuration.port)", "error": "\(error)"])
            try? await acceptor.shutdownGracefully()
            throw error
        }
        // A shutdown asked for while the bind was under way (another service of the node failed at
        // start) must still close the listener: without this the node kept serving, half stopped.
        let closeAtOnce = listener.withLock { listener in
            listener.channel = serverChannel
            return listener.shutdownRequested
        }
        if closeAtOnce || Task.isCancelled { shutdownGracefully() }
        if let address = serverChannel.localAddress {
            boundAddress.withLock { $0 = address }
            onBound(address)
        }
        logger.info("listening", metadata: ["address": "\(serverChannel.localAddress.map { "\($0)" } ?? "?")"])
        // A cancelled task (the node's service group cancels every service when one fails) stops
        // serving as a graceful shutdown would: waiting on the close future alone ignores cancellation.
        // The acceptor's loop goes away with the listener: a later shutdownGracefully() (a second
        // stop, a cancellation) must not ask that loop to close the channel again. NIO prints "Cannot
        // schedule tasks on an EventLoop that has already shut down" for that today, and will crash.
        func releaseAcceptor() async {
            listener.withLock { $0.channel = nil }
            try? await acceptor.shutdownGracefully()
        }
        do {
            try await withTaskCancellationHandler {
                try await serverChannel.closeFuture.get()
            } onCancel: {
                self.shutdownGracefully()
            }
        } catch {
            await releaseAcceptor()
            throw error
        }
        await releaseAcceptor()
        // The listener is closed (normally by shutdownGracefully, which drained already): the open
        // connections finish their requests and close; wait for them.
        connections.drain()
        await connections.waitUntilAllClosed()
        // A request's task can outlive its response and its connection (it settles its reservation
        // after the response ended): they finish before the limiter behind them is shut down. Their
        // own work is bounded (Redis calls time out), the wait is bounded too: a stuck task must not
        // keep a node from stopping.
        let tasks = connections.tasks
        if !(await tasks.waitUntilNoneRunning(atMost: Self.taskDrainTimeout)) {
            logger.warning("shutdown: request tasks still running after the connections closed; not waiting longer",
                           metadata: ["tasks": "\(tasks.running)", "waited_seconds": "\(Self.taskDrainTimeout.components.seconds)"])
        }
    }

    /// Most header fields a request may have; more get 431 and a close.
    static let maxHeaderFields = 1000

    /// How long `run` waits, once every connection is closed, for request tasks still settling.
    static let taskDrainTimeout = Duration.seconds(10)

    /// Stops accepting new connections and asks every open one to finish its current request and
    /// close; idle keep-alive connections close at once. After the grace period, the rest are closed.
    public func shutdownGracefully() {
        let channel = listener.withLock { listener in
            listener.shutdownRequested = true
            return listener.channel
        }
        channel?.close(promise: nil)
        connections.drain()
        let grace = TimeAmount.seconds(Int64(configuration.shutdownGraceSeconds))
        let connections = self.connections
        let logger = self.logger
        group.next().scheduleTask(in: grace) {
            let left = connections.count
            if left > 0 {
                logger.warning("shutdown grace period over; closing connections", metadata: ["open": "\(left)"])
                connections.closeAll()
            }
        }
    }
}

/// A complete request: its head and its (bounded) body.
public struct HTTPRequest: Sendable {
    public var head: HTTPRequestHead
    public var body: ByteBuffer
    /// The peer's IP address (the load balancer's, behind one), for the access log; nil if unknown.
    public var clientAddress: String? = nil

    public init(head: HTTPRequestHead, body: ByteBuffer, clientAddress: String? = nil) {
        self.head = head
        self.body = body
        self.clientAddress = clientAddress
    }
}

/// What serves a request once it has been fully read. Implementations write exactly one response.
public protocol RequestHandling: Sendable {
    func handle(_ request: HTTPRequest, writer: ResponseWriter) async
}

// MARK: - Connection bookkeeping for graceful shutdown

final class ConnectionState: Sendable {
    let channel: any Channel
    /// The server's request tasks, which this connection's requests join.
    let tasks: RequestTasks
    private let flags = Mutex<(inRequest: Bool, draining: Bool)>((false, false))

    init(channel: any Channel, tasks: RequestTasks) {
        self.channel = channel
        self.tasks = tasks
    }

    var isDraining: Bool { flags.withLock { $0.draining } }

    func beginRequest() { flags.withLock { $0.inRequest = true } }

    /// The request's response has ended. Returns whether the connection is draining: then its
    /// handler closes it once the response has been written out.
    func endRequest() -> Bool {
        flags.withLock { state -> Bool in
            state.inRequest = false
            return state.draining
        }
    }

    /// Marks the connection as draining; an idle one is closed now, a busy one after its response.
    func drain() {
        let idle = flags.withLock { state -> Bool in
            state.draining = true
            return !state.inRequest
        }
        if idle { channel.close(promise: nil) }
    }
}

/// The request tasks still running. A task runs on after its response ended (settling its reservation,
/// the access log), so open connections alone do not say when the server is done.
final class RequestTasks: Sendable {
    private let count = Mutex(0)

    var running: Int { count.withLock { $0 } }

    func begin() { count.withLock { $0 += 1 } }

    func end() { count.withLock { $0 -= 1 } }

    /// Returns true once no task is running, false if some still run after `limit`. Shutdown only:
    /// it polls.
    func waitUntilNoneRunning(atMost limit: Duration) async -> Bool {
        let deadline = ContinuousClock.now + limit
        while running > 0 {
            guard ContinuousClock.now < deadline else { return false }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return true
    }
}

final class ConnectionRegistry: Sendable {
    private struct State {
        var open: [ObjectIdentifier: ConnectionState] = [:]
        var draining = false
        var closedWaiters: [CheckedContinuation<Void, Never>] = []
    }

    private let state = Mutex(State())
    let tasks = RequestTasks()

    var count: Int { state.withLock { $0.open.count } }

    /// Returns once the registry is draining and no connection is open any more.
    func waitUntilAllClosed() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let done = state.withLock { state -> Bool in
                if state.draining && state.open.isEmpty { return true }
                state.closedWaiters.append(continuation)
                return false
            }
            if done { continuation.resume() }
        }
    }

    func register(_ channel: any Channel) -> ConnectionState? {
        let connection = ConnectionState(channel: channel, tasks: tasks)
        let accepted = state.withLock { (state: inout State) -> Bool in
            guard !state.draining else { return false }
            state.open[ObjectIdentifier(connection)] = connection
            return true
        }
        return accepted ? connection : nil
    }

    func unregister(_ connection: ConnectionState) {
        let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.open.removeValue(forKey: ObjectIdentifier(connection))
            return takeWaitersIfDone(&state)
        }
        waiters.forEach { $0.resume() }
    }

    func drain() {
        let (open, waiters) = state.withLock { state -> ([ConnectionState], [CheckedContinuation<Void, Never>]) in
            state.draining = true
            return (Array(state.open.values), takeWaitersIfDone(&state))
        }
        waiters.forEach { $0.resume() }
        for connection in open { connection.drain() }
    }

    private func takeWaitersIfDone(_ state: inout State) -> [CheckedContinuation<Void, Never>] {
        guard state.draining, state.open.isEmpty else { return [] }
        defer { state.closedWaiters = [] }
        return state.closedWaiters
    }

    func closeAll() {
        let open = state.withLock { Array($0.open.values) }
        for connection in open { connection.channel.close(promise: nil) }
    }
}
