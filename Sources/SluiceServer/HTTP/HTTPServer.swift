import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// The SwiftNIO HTTP/1.1 front door: accepts connections, decodes requests (bounded), and hands each
/// complete request to a `RequestHandling` value, one request at a time per connection (keep-alive).
///
/// Threading: NIO event loops own the sockets; each connection is served by one Swift task that reads
/// its requests in order and writes the responses through the channel's async writer, whose
/// backpressure (channel writability) is what slows an upstream transfer down for a slow client.
public final class HTTPServer: Sendable {
    public struct Configuration: Sendable {
        public var host: String
        public var port: Int
        public var maxBodyBytes: Int
        /// Largest request head (all header names and values) accepted; larger ones get 400 and a close.
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

    typealias ConnectionChannel = NIOAsyncChannel<HTTPServerRequestPart, HTTPServerResponsePart>

    private let configuration: Configuration
    private let group: any EventLoopGroup
    private let handler: any RequestHandling
    private let logger: Logger
    private let connections = ConnectionRegistry()
    private let boundAddress = Mutex<SocketAddress?>(nil)
    private let serverChannelBox = Mutex<(any Channel)?>(nil)

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

    /// Binds, then serves until `stopAccepting()` closes the listener and every connection has
    /// finished (or the grace period ran out and they were closed).
    public func run(onBound: @Sendable (SocketAddress) -> Void = { _ in }) async throws {
        let configuration = self.configuration
        var decoderLimits = NIOHTTPDecoderLimitConfiguration()
        decoderLimits.maxHeaderFieldSize = configuration.maxHeaderBytes
        decoderLimits.maxHeaderListSize = configuration.maxHeaderBytes
        decoderLimits.maxHeaderFieldCount = 1000
        let serverChannel = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 1024)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.maxMessagesPerRead, value: 4)
            .bind(host: configuration.host, port: configuration.port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(
                        withPipeliningAssistance: false,
                        withServerUpgrade: nil,
                        withErrorHandling: true,
                        withOutboundHeaderValidation: false,
                        withEncoderConfiguration: .init(),
                        withDecoderLimitConfiguration: decoderLimits
                    )
                    try channel.pipeline.syncOperations.addHandler(
                        ConnectionDeadlineHandler(
                            idleTimeout: .milliseconds(Int64(configuration.idleTimeoutMs)),
                            bodyTimeout: .milliseconds(Int64(configuration.bodyTimeoutMs))
                        )
                    )
                    return try ConnectionChannel(
                        wrappingChannelSynchronously: channel,
                        configuration: .init(backPressureStrategy: .init(lowWatermark: 2, highWatermark: 16))
                    )
                }
            }
        serverChannelBox.withLock { $0 = serverChannel.channel }
        if let address = serverChannel.channel.localAddress {
            boundAddress.withLock { $0 = address }
            onBound(address)
        }
        logger.info("listening", metadata: ["address": "\(serverChannel.channel.localAddress.map { "\($0)" } ?? "?")"])

        try await withThrowingDiscardingTaskGroup { group in
            try await serverChannel.executeThenClose { inbound in
                for try await connection in inbound {
                    // The connection's task (and its children) run on the channel's own event loop.
                    let executor = EventLoopExecutor(connection.channel.eventLoop)
                    group.addTask(executorPreference: executor) {
                        await self.serve(connection)
                    }
                }
            }
        }
    }

    /// Stops accepting new connections and asks every open one to finish its current request and
    /// close; idle keep-alive connections close at once. After the grace period, the rest are closed.
    public func shutdownGracefully() {
        let channel = serverChannelBox.withLock { $0 }
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

    // MARK: - One connection

    private func serve(_ connection: ConnectionChannel) async {
        let channel = connection.channel
        guard let state = connections.register(channel) else {
            try? await channel.close()
            return
        }
        defer { connections.unregister(state) }
        do {
            try await connection.executeThenClose { inbound, outbound in
                // Closing the socket under a running request (client went away) cancels the request's
                // task, which cancels its upstream transfer.
                await withTaskGroup(of: Void.self) { group in
                    group.addTask {
                        do {
                            try await self.serveRequests(inbound: inbound, outbound: outbound, state: state)
                        } catch {
                            // A protocol error (the codec already answered 400) or a reset connection.
                            self.logger.debug("connection error", metadata: ["error": "\(error)"])
                        }
                        // Wakes the watcher below, so the group can finish.
                        channel.close(promise: nil)
                    }
                    group.addTask {
                        try? await channel.closeFuture.get()
                    }
                    await group.next()
                    group.cancelAll()
                }
            }
        } catch {
            logger.debug("connection ended", metadata: ["error": "\(error)"])
        }
    }

    private func serveRequests(
        inbound: NIOAsyncChannelInboundStream<HTTPServerRequestPart>,
        outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>,
        state: ConnectionState
    ) async throws {
        var parts = inbound.makeAsyncIterator()
        let maxBody = configuration.maxBodyBytes
        while let part = try await parts.next() {
            guard case .head(let head) = part else {
                // A body or end part without a head: the decoder never produces this; be safe.
                return
            }
            state.beginRequest()
            defer { state.endRequest() }
            let writer = ResponseWriter(outbound: outbound, keepAlive: head.isKeepAlive && !state.isDraining)

            // 1. Body, bounded. A declared length over the cap is refused before reading it.
            if let declared = head.headers.first(name: "content-length").flatMap(Int.init), declared > maxBody {
                try await writer.writeError(.bodyTooLarge(limitBytes: maxBody), requestID: nil, forceClose: true)
                return
            }
            var body = ByteBuffer()
            var tooLarge = false
            readBody: while let next = try await parts.next() {
                switch next {
                case .body(var chunk):
                    if body.readableBytes + chunk.readableBytes > maxBody {
                        tooLarge = true
                    } else if !tooLarge {
                        body.writeBuffer(&chunk)
                    }
                case .end:
                    break readBody
                case .head:
                    return  // protocol violation; the decoder does not produce this
                }
            }
            if tooLarge {
                try await writer.writeError(.bodyTooLarge(limitBytes: maxBody), requestID: nil, forceClose: true)
                return
            }

            await handler.handle(HTTPRequest(head: head, body: body), writer: writer)
            if !writer.keepAlive || writer.closeAfterResponse {
                return
            }
        }
    }
}

/// A complete request: its head and its (bounded) body.
public struct HTTPRequest: Sendable {
    public var head: HTTPRequestHead
    public var body: ByteBuffer
}

/// What serves a request once it has been fully read. Implementations write exactly one response.
public protocol RequestHandling: Sendable {
    func handle(_ request: HTTPRequest, writer: ResponseWriter) async
}

// MARK: - Connection bookkeeping for graceful shutdown

final class ConnectionState: Sendable {
    let channel: any Channel
    private let flags = Mutex<(inRequest: Bool, draining: Bool)>((false, false))

    init(channel: any Channel) { self.channel = channel }

    var isDraining: Bool { flags.withLock { $0.draining } }

    func beginRequest() { flags.withLock { $0.inRequest = true } }

    func endRequest() {
        let close = flags.withLock { state -> Bool in
            state.inRequest = false
            return state.draining
        }
        if close { channel.close(promise: nil) }
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

final class ConnectionRegistry: Sendable {
    private let state = Mutex<(open: [ObjectIdentifier: ConnectionState], draining: Bool)>(([:], false))

    var count: Int { state.withLock { $0.open.count } }

    func register(_ channel: any Channel) -> ConnectionState? {
        let connection = ConnectionState(channel: channel)
        let accepted = state.withLock { state -> Bool in
            guard !state.draining else { return false }
            state.open[ObjectIdentifier(connection)] = connection
            return true
        }
        return accepted ? connection : nil
    }

    func unregister(_ connection: ConnectionState) {
        _ = state.withLock { $0.open.removeValue(forKey: ObjectIdentifier(connection)) }
    }

    func drain() {
        let open = state.withLock { state -> [ConnectionState] in
            state.draining = true
            return Array(state.open.values)
        }
        for connection in open { connection.drain() }
    }

    func closeAll() {
        let open = state.withLock { Array($0.open.values) }
        for connection in open { connection.channel.close(promise: nil) }
    }
}
