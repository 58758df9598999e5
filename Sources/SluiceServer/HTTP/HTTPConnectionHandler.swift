import Logging
import NIOCore
import NIOHTTP1
import SluiceCore

/// One client connection, after NIO's HTTP/1 request decoder: assembles each request (head and
/// bounded body), runs the `RequestHandling` for it in a task on this connection's event loop, and
/// serves the requests of a keep-alive connection one after the other: the next one as soon as the
/// previous response has ended, while that request's task may still be finishing its own work
/// (settling its reservation in Redis is a round trip the client should not wait for before its next
/// request is read). It also keeps the connection's deadlines (`ConnectionDeadlines`: idle close,
/// 408 for a stalled body) and answers what the decoder could not parse (`MalformedRequest`).
///
/// Why one handler and no response encoder: this handler is the whole pipeline after the decoder,
/// and responses leave as bytes (`ResponseWriter`, `HTTP1ResponseBytes`). With NIO's encoder and
/// a handler each for deadlines and malformed requests, every request and response part crossed
/// three more handlers, boxed in `NIOAny` (about 4 % of a profile's samples; in throughput the
/// change was within the noise: the README's "Sluice's own cost per request"), and the rules of a
/// connection's life were spread over three handlers that each tracked the others' state.
///
/// Why a handler and not `NIOAsyncChannel`: bridging every request part and response part through
/// async sequences and writers cost more CPU per request than the rest of the server; here a request
/// costs one task, and its writes are plain channel writes on the loop the task runs on.
///
/// Event loop only, like every channel handler. Requests a client pipelines while one is being
/// answered are held (bounded) and served in order after it.
final class HTTPConnectionHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = ByteBuffer

    private enum State {
        /// Waiting for a request head.
        case idle
        /// Between a head and its end; `tooLarge` once the body passed the cap (the rest is discarded).
        case reading(head: HTTPRequestHead, body: ByteBuffer, tooLarge: Bool)
        /// The request's task is producing the response.
        case responding(task: Task<Void, Never>, writer: ResponseWriter)
        /// The connection is closing; nothing more is read or served.
        case closing
        /// A request was refused (too large, `CONNECT`, malformed) and the output shut once the answer
        /// was out: what the client still sends is read and discarded (after a malformed request the
        /// decoder reports each read as an error, ignored), until the client closes or
        /// ``lingerTimeout`` passes.
        case lingering
    }

    private let connection: ConnectionState
    private let handler: any RequestHandling
    private let limits: Limits
    private let executor: EventLoopExecutor
    private let logger: Logger
    private var state = State.idle
    private var deadlines: ConnectionDeadlines?
    private var maxBodyBytes: Int { limits.maxBodyBytes }
    /// Parts of pipelined requests that arrived during a response, and their body bytes.
    private var held = CircularBuffer<HTTPServerRequestPart>()
    private var heldBytes = 0
    private var context: ChannelHandlerContext?
    /// The peer's address, read once per connection (not per request).
    private var clientAddress: String?

    /// The bounds of a connection's requests and its deadlines.
    struct Limits {
        var maxBodyBytes: Int
        /// Reported in the 431 for a head over the decoder's limits (which enforces them).
        var maxHeaderBytes: Int
        var maxHeaderFields: Int
        var idleTimeout: TimeAmount
        var bodyTimeout: TimeAmount
    }

    init(connection: ConnectionState, handler: any RequestHandling, limits: Limits, executor: EventLoopExecutor, logger: Logger) {
        self.connection = connection
        self.handler = handler
        self.limits = limits
        self.executor = executor
        self.logger = logger
    }

    func handlerAdded(context: ChannelHandlerContext) {
        self.context = context
        clientAddress = context.channel.remoteAddress?.ipAddress
        deadlines = ConnectionDeadlines(idleTimeout: limits.idleTimeout, bodyTimeout: limits.bodyTimeout, eventLoop: context.eventLoop) { [weak self] expiry in
            self?.deadlinePassed(expiry)
        }
        if context.channel.isActive { deadlines?.connectionOpened() }
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        deadlines?.stop()
        self.context = nil
    }

    func channelActive(context: ChannelHandlerContext) {
        deadlines?.connectionOpened()
        context.fireChannelActive()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        let part = unwrapInboundIn(data)
        switch state {
        case .responding:
            hold(part, context: context)
        case .closing, .lingering:
            break
        case .idle, .reading:
            process(part, context: context)
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if case .responding(_, let writer) = state, context.channel.isWritable {
            writer.channelBecameWritable()
        }
        context.fireChannelWritabilityChanged()
    }

    func channelInactive(context: ChannelHandlerContext) {
        connectionEnded()
        deadlines?.stop()
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        switch state {
        case .lingering:
            // After the answer the decoder reports every read as an error: expected.
            return
        case .idle, .reading:
            // No response is owed or under way: a request the decoder could not parse is answered.
            if let answer = MalformedRequest.answer(to: error, maxHeaderBytes: limits.maxHeaderBytes, maxHeaderFields: limits.maxHeaderFields) {
                logger.debug("malformed request answered", metadata: ["status": "\(answer.status)", "error": "\(error)"])
                refuse(answer, context: context)
                return
            }
        case .responding, .closing:
            // A second response would corrupt the one under way; a closing connection is done.
            break
        }
        // A protocol error not answered, or a reset connection. A client that resets its connection
        // (closing it with our answer unread, as a client that stopped reading a stream does) arrives
        // here before `channelInactive`: the running request must be told now, or it waits for ever
        // for a socket that will never be writable again.
        logger.debug("connection error", metadata: ["error": "\(error)"])
        connectionEnded()
        context.close(promise: nil)
    }

    /// A deadline of `ConnectionDeadlines` passed: an idle connection closes; a client that started a
    /// request and did not finish it in time is told why (408), then the connection closes.
    private func deadlinePassed(_ expiry: ConnectionDeadlines.Expiry) {
        guard let context else { return }
        switch expiry {
        case .idle:
            state = .closing
            context.close(promise: nil)
        case .requestBody:
            guard case .reading = state else { return }
            state = .closing
            let writer = ResponseWriter(channel: context.channel, keepAlive: false)
            writer.writeErrorNow(GatewayError.requestTimeout(), requestID: nil)
            let channel = context.channel
            writer.endWritten.whenComplete { _ in channel.close(promise: nil) }
        }
    }

    /// The client went away (reset, closed, or the server closed the connection): a running request
    /// is cancelled, which cancels its upstream transfer, and its writer fails any write still
    /// waiting. Nothing more is read or served.
    private func connectionEnded() {
        if case .responding(let task, let writer) = state {
            task.cancel()
            writer.channelClosed()
        }
        state = .closing
        held.removeAll()
    }

    // MARK: Requests

    private func process(_ part: HTTPServerRequestPart, context: ChannelHandlerContext) {
        switch part {
        case .head(let head):
            guard case .idle = state else { return outOfOrder(context) }
            // CONNECT turns the rest of the connection into a tunnel for the decoder: nothing the
            // client sends after it would be parsed, so a request pipelined behind it would wait for
            // ever. Sluice tunnels nothing: refuse, and close.
            if head.method == .CONNECT {
                refuse(.methodNotAllowed(method: "CONNECT", path: String(head.uri.prefix(256)), allowed: ["GET", "POST"]), context: context)
                return
            }
            // A declared length over the cap is refused before reading the body.
            if let declared = head.headers.first(name: "content-length").flatMap(Int.init), declared > maxBodyBytes {
                refuse(.bodyTooLarge(limitBytes: maxBodyBytes), context: context)
                return
            }
            // A client that asked to be told before it sends its body (`Expect: 100-continue`, curl
            // does for bodies over 1 MiB) would otherwise wait a second for an answer that never comes.
            if head.headers[canonicalForm: "expect"].contains(where: { $0.lowercased() == "100-continue" }) {
                context.writeAndFlush(wrapOutboundOut(HTTP1ResponseBytes.continueHead), promise: nil)
            }
            deadlines?.requestStarted()
            state = .reading(head: head, body: context.channel.allocator.buffer(capacity: 0), tooLarge: false)
        case .body(var chunk):
            guard case .reading(let head, var body, var tooLarge) = state else { return outOfOrder(context) }
            state = .idle  // drop the state's reference while appending, so the buffer is not copied
            if tooLarge || body.readableBytes + chunk.readableBytes > maxBodyBytes {
                tooLarge = true
            } else {
                body.writeBuffer(&chunk)
            }
            state = .reading(head: head, body: body, tooLarge: tooLarge)
        case .end:
            guard case .reading(let head, let body, let tooLarge) = state else { return outOfOrder(context) }
            deadlines?.requestRead()
            if tooLarge {
                refuse(.bodyTooLarge(limitBytes: maxBodyBytes), context: context)
            } else {
                start(HTTPRequest(head: head, body: body, clientAddress: clientAddress), context: context)
            }
        }
    }

    /// Parts out of order: the decoder never produces them; be safe.
    private func outOfOrder(_ context: ChannelHandlerContext) {
        state = .closing
        context.close(promise: nil)
    }

    /// Refuses the request being read (too large, `CONNECT`) or one the decoder could not parse with
    /// `error`, then closes with a lingering close.
    ///
    /// Why not close at once: closing a socket with unread request bytes makes the kernel answer
    /// with a reset, and a client still sending its (too large) body or the rest of a 70 KiB header
    /// may then lose the answer and see "connection reset" instead. So the output is shut once the
    /// answer is written (the client reads it, then end of stream), what the client still sends is
    /// read and discarded, and the connection closes when the client closes it or after
    /// ``lingerTimeout`` at most.
    private func refuse(_ error: GatewayError, context: ChannelHandlerContext) {
        state = .lingering
        held.removeAll()
        deadlines?.stop()
        let writer = ResponseWriter(channel: context.channel, keepAlive: false)
        writer.writeErrorNow(error, requestID: nil)
        let channel = context.channel
        writer.endWritten.whenComplete { _ in
            channel.close(mode: .output).whenFailure { _ in channel.close(promise: nil) }
        }
        context.eventLoop.scheduleTask(in: Self.lingerTimeout) { channel.close(promise: nil) }
    }

    /// The longest a refused connection is read (and discarded) before it is closed.
    static let lingerTimeout = TimeAmount.seconds(2)

    private func start(_ request: HTTPRequest, context: ChannelHandlerContext) {
        connection.beginRequest()
        let handler = self.handler
        let loop = context.eventLoop
        let this = NIOLoopBound(self, eventLoop: loop)
        // The task runs on this loop (its executor preference), so both calls back are plain calls.
        let writer = ResponseWriter(
            channel: context.channel, keepAlive: request.head.isKeepAlive && !connection.isDraining,
            bodyless: request.head.method == .HEAD,
            onEnd: { writer in
                if loop.inEventLoop {
                    this.value.responseEnded(writer)
                } else {
                    loop.execute { this.value.responseEnded(writer) }
                }
            }
        )
        let tasks = connection.tasks
        tasks.begin()
        let task = Task(executorPreference: executor) {
            await handler.handle(request, writer: writer)
            if loop.inEventLoop {
                this.value.responseEnded(writer)
            } else {
                loop.execute { this.value.responseEnded(writer) }
            }
            tasks.end()
        }
        state = .responding(task: task, writer: writer)
    }

    /// The response of `writer` has ended, or its handler returned without ending it (cancelled, or
    /// it aborted the connection): the connection serves its next request, or closes. Called for both,
    /// acts once.
    private func responseEnded(_ writer: ResponseWriter) {
        guard case .responding(_, let current) = state, current === writer, let context else { return }
        let draining = connection.endRequest()
        if !writer.keepAlive || writer.closeAfterResponse || draining {
            state = .closing
            closeAfterWriting(writer, context: context)
            return
        }
        state = .idle
        deadlines?.responseEnded()
        // Serve what the client pipelined meanwhile, until a part starts another response.
        while acceptsParts, let part = held.popFirst() {
            heldBytes -= part.bodyBytes
            process(part, context: context)
        }
    }

    /// Closes the connection once `writer`'s response has been written out, so that a client that
    /// reads slowly still gets all of it (a close discards what the socket has not taken yet). A
    /// client that takes nothing for ``closeFlushTimeout`` is closed on regardless.
    private func closeAfterWriting(_ writer: ResponseWriter, context: ChannelHandlerContext) {
        let channel = context.channel
        let deadline = context.eventLoop.scheduleTask(in: Self.closeFlushTimeout) { channel.close(promise: nil) }
        writer.endWritten.whenComplete { _ in
            deadline.cancel()
            channel.close(promise: nil)
        }
    }

    /// How long a connection closing after its response waits for the client to take the rest.
    static let closeFlushTimeout = TimeAmount.seconds(30)

    private var acceptsParts: Bool {
        switch state {
        case .idle, .reading: return true
        case .responding, .closing, .lingering: return false
        }
    }

    private func hold(_ part: HTTPServerRequestPart, context: ChannelHandlerContext) {
        heldBytes += part.bodyBytes
        // A client that pipelines more than one maximal request ahead is cut off: memory stays bounded.
        guard heldBytes <= maxBodyBytes + 64 * 1024, held.count < 1024 else {
            logger.debug("pipelined too far ahead; closing the connection")
            held.removeAll()
            state = .closing
            context.close(promise: nil)
            return
        }
        held.append(part)
    }
}

private extension HTTPServerRequestPart {
    var bodyBytes: Int {
        if case .body(let chunk) = self { return chunk.readableBytes }
        return 0
    }
}
