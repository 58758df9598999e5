import Foundation
import NIOCore
import NIOHTTP1

/// What every connection shares: the command-line defaults, the request log, and (with
/// `--store-responses`) the Responses it created.
struct MockServerContext: Sendable {
    let behaviour: MockBehaviour
    let log: RequestLog?
    var storedResponses: StoredResponses? = nil
}

/// Serves the OpenAI-shaped mock API on one HTTP/1.1 connection.
///
/// Sits after NIO's HTTP server pipeline (with pipelining assistance, so requests reach it one at a time).
/// Everything runs on the channel's event loop: bodies are built straight into a reused buffer, stream
/// chunks are written as they are produced, delays are scheduled tasks, and a client that goes away
/// cancels whatever is scheduled.
final class MockConnectionHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    /// Bytes of stream events gathered into one write when tokens are not delayed.
    private static let streamBatchBytes = 16 * 1024

    private enum State {
        /// Between requests.
        case idle
        /// Head received, collecting the body.
        case receiving(ReceivedRequest)
        /// Answering; the exchange says how far it has got.
        case responding(MockExchange)
        /// The connection is being closed by us or the peer; nothing more is read or written.
        case closing
    }

    private struct ReceivedRequest {
        let head: HTTPRequestHead
        let path: Substring
        var record: RequestLogRecord
    }

    private let server: MockServerContext
    private let connectionID: Int
    private var state = State.idle
    private var requestsOnConnection = 0
    /// The request body being collected; its storage is reused from request to request.
    private var body = ByteBuffer()
    /// Response bytes are written here first; its storage is reused once NIO has sent the previous write.
    private var scratch = ByteBuffer()

    init(server: MockServerContext, connectionID: Int) {
        self.server = server
        self.connectionID = connectionID
    }

    // MARK: - Inbound events

    func handlerAdded(context: ChannelHandlerContext) {
        body = context.channel.allocator.buffer(capacity: 4096)
        scratch = context.channel.allocator.buffer(capacity: Self.streamBatchBytes)
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            receiveHead(head, context: context)
        case .body(var part):
            guard case .receiving(let request) = state else { return }  // rest of a refused body
            if body.readableBytes + part.readableBytes > server.behaviour.maxBodyBytes {
                refuseOversizeBody(request, receivedBytes: body.readableBytes + part.readableBytes, context: context)
            } else {
                body.writeBuffer(&part)
            }
        case .end:
            guard case .receiving(let request) = state else { return }
            respond(to: request, context: context)
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        defer { context.fireChannelWritabilityChanged() }
        guard context.channel.isWritable, case .responding(let exchange) = state, exchange.awaitingWritability
        else { return }
        exchange.awaitingWritability = false
        // Not from inside this callback: it can fire in the middle of our own flush.
        context.eventLoop.assumeIsolated().execute {
            guard case .responding(let current) = self.state, current === exchange else { return }
            self.produceStream(exchange, context: context)
        }
    }

    func channelInactive(context: ChannelHandlerContext) {
        switch state {
        case .receiving(var request):
            request.record.outcome = .clientClosed
            request.record.bodyBytes = body.readableBytes
            server.log?.append(request.record)
        case .responding(let exchange):
            exchange.scheduled?.cancel()
            exchange.scheduled = nil
            exchange.record.outcome = exchange.isStalled ? .stalled : .clientClosed
            exchange.record.completionTokens = exchange.stream?.tokensSent ?? 0
            server.log?.append(exchange.record)
        case .idle, .closing:
            break
        }
        state = .closing
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // Resets and protocol errors end the connection; channelInactive logs what was in flight.
        context.close(promise: nil)
    }

    // MARK: - Reading the request

    private func receiveHead(_ head: HTTPRequestHead, context: ChannelHandlerContext) {
        guard case .idle = state else { return }
        requestsOnConnection += 1
        let uri = Substring(head.uri)
        let path = uri.firstIndex(of: "?").map { uri[..<$0] } ?? uri
        let record = RequestLogRecord(
            receivedAt: Self.unixTime(),
            connectionID: connectionID,
            method: head.method.rawValue,
            path: String(path),
            hasAuthorization: head.headers.contains(name: "authorization"),
            hasAPIKeyHeader: head.headers.contains(name: "api-key"),
            query: uri.firstIndex(of: "?").map { String(uri[uri.index(after: $0)...].prefix(256)) },
            requestID: head.headers.first(name: "x-request-id"),
            traceparent: head.headers.first(name: "traceparent").map { String($0.prefix(256)) })
        let request = ReceivedRequest(head: head, path: path, record: record)
        body.clear()
        state = .receiving(request)
        if let declared = head.headers.first(name: "content-length").flatMap({ Int($0) }),
            declared > server.behaviour.maxBodyBytes
        {
            refuseOversizeBody(request, receivedBytes: 0, context: context)
        }
    }

    private func refuseOversizeBody(_ request: ReceivedRequest, receivedBytes: Int, context: ChannelHandlerContext) {
        var record = request.record
        record.bodyBytes = receivedBytes
        body.clear()
        scratch.clear()
        MockResponseBodies.error(
            message: "Request body too large: the limit is \(server.behaviour.maxBodyBytes) bytes.",
            type: "invalid_request_error", param: nil, code: "request_too_large", into: &scratch)
        // The rest of the body is not read: answer and close.
        let exchange = MockExchange(
            record: record, version: request.head.version, status: 413, keepAlive: false, fixedBody: scratch)
        start(exchange, context: context)
    }

    // MARK: - Deciding the answer

    private func respond(to request: ReceivedRequest, context: ChannelHandlerContext) {
        var record = request.record
        record.bodyBytes = body.readableBytes
        let head = request.head
        scratch.clear()

        let knobs: RequestKnobs
        do {
            knobs = try RequestKnobs(headers: head.headers, defaults: server.behaviour)
        } catch {
            MockResponseBodies.error(
                message: error.message, type: "invalid_request_error", param: error.header, code: nil, into: &scratch)
            start(MockExchange(record: record, version: head.version, status: 400, keepAlive: head.isKeepAlive,
                               fixedBody: scratch), context: context)
            return
        }

        guard let endpoint = MockEndpoint(method: head.method, path: request.path) else {
            MockResponseBodies.error(
                message: "Invalid URL (\(head.method.rawValue) \(request.path))", type: "invalid_request_error",
                param: nil, code: nil, into: &scratch)
            start(MockExchange(record: record, version: head.version, status: 404, keepAlive: head.isKeepAlive,
                               fixedBody: scratch, knobs: knobs), context: context)
            return
        }

        let fields: MockRequestFields
        var bodyError: MockRequestError?
        do {
            fields = try MockRequestFields(endpoint: endpoint, body: body)
        } catch {
            fields = MockRequestFields()
            bodyError = error
        }
        record.model = fields.model
        record.stream = fields.stream
        record.includeUsage = fields.includeUsage
        record.maxTokens = fields.maxTokens
        record.choiceCount = fields.choiceCount

        // An injected status wins over everything the body could say.
        guard (200...299).contains(knobs.status) else {
            MockResponseBodies.injectedError(status: knobs.status, into: &scratch)
            start(MockExchange(record: record, version: head.version, status: knobs.status,
                               keepAlive: head.isKeepAlive, fixedBody: scratch, knobs: knobs), context: context)
            return
        }
        if let window = server.behaviour.contextWindowTokens, body.readableBytes > window * 4 {
            MockResponseBodies.error(
                message: "This model's maximum context length is \(window) tokens. However, your messages resulted in \(body.readableBytes / 4) tokens. Please reduce the length of the messages.",
                type: "invalid_request_error", param: "messages", code: "context_length_exceeded", into: &scratch)
            start(MockExchange(record: record, version: head.version, status: 400, keepAlive: head.isKeepAlive,
                               fixedBody: scratch, knobs: knobs), context: context)
            return
        }
        if let bodyError {
            MockResponseBodies.error(
                message: bodyError.message, type: "invalid_request_error", param: bodyError.param, code: nil,
                into: &scratch)
            start(MockExchange(record: record, version: head.version, status: 400, keepAlive: head.isKeepAlive,
                               fixedBody: scratch, knobs: knobs), context: context)
            return
        }

        let exchange: MockExchange
        switch endpoint {
        case .chatCompletions, .completions:
            exchange = completionExchange(
                endpoint: endpoint, fields: fields, knobs: knobs, record: record, head: head,
                allocator: context.channel.allocator)
        case .embeddings:
            MockResponseBodies.embeddings(
                model: fields.model ?? "", inputs: fields.embeddingInputCount, base64: fields.base64Embeddings,
                promptTokens: fields.estimatedPromptTokens, into: &scratch)
            exchange = MockExchange(record: record, version: head.version, status: knobs.status,
                                    keepAlive: head.isKeepAlive, fixedBody: scratch, knobs: knobs)
        case .responses:
            exchange = responsesExchange(fields: fields, knobs: knobs, record: record, head: head,
                                         allocator: context.channel.allocator)
        case .retrieveResponse(let id) where !(server.storedResponses?.contains(id) ?? true),
             .deleteResponse(let id) where !(server.storedResponses?.remove(id) ?? true):
            // With --store-responses, as OpenAI answers an id it does not hold.
            MockResponseBodies.error(
                message: "Response with id '\(id)' not found.", type: "invalid_request_error", param: nil, code: nil,
                into: &scratch)
            exchange = MockExchange(record: record, version: head.version, status: 404,
                                    keepAlive: head.isKeepAlive, fixedBody: scratch, knobs: knobs)
        case .retrieveResponse(let id):
            // Without --store-responses nothing is stored: any id is a completed response with an empty
            // message and zero usage.
            let identity = ResponseIdentity(id: id, created: Int(Self.unixTime()), model: "gpt-4o-mini")
            MockResponsesBodies.response(
                identity: identity, status: "completed", incompleteBecauseOfLength: false, maxOutputTokens: nil,
                textTokens: 0, usage: MockResponsesUsage(inputTokens: 0, outputTokens: 0), into: &scratch)
            exchange = MockExchange(record: record, version: head.version, status: knobs.status,
                                    keepAlive: head.isKeepAlive, fixedBody: scratch, knobs: knobs)
        case .deleteResponse(let id):
            MockResponsesBodies.deleted(id: id, into: &scratch)
            exchange = MockExchange(record: record, version: head.version, status: knobs.status,
                                    keepAlive: head.isKeepAlive, fixedBody: scratch, knobs: knobs)
        case .models:
            scratch.writeBytes(MockResponseBodies.modelList)
            exchange = MockExchange(record: record, version: head.version, status: knobs.status,
                                    keepAlive: head.isKeepAlive, fixedBody: scratch, knobs: knobs)
        }
        start(exchange, context: context)
    }

    private func completionExchange(
        endpoint: MockEndpoint, fields: MockRequestFields, knobs: RequestKnobs, record: RequestLogRecord,
        head: HTTPRequestHead, allocator: ByteBufferAllocator
    ) -> MockExchange {
        var tokensPerChoice = knobs.completionTokens
        var finishReason = FinishReason.stop
        if let maxTokens = fields.maxTokens, maxTokens < tokensPerChoice {
            tokensPerChoice = maxTokens
            finishReason = .length
        }
        tokensPerChoice = min(tokensPerChoice, MockLimits.maximumTotalCompletionTokens / fields.choiceCount)
        let usage = MockUsage(
            promptTokens: fields.estimatedPromptTokens,
            completionTokens: knobs.reportedCompletionTokens ?? tokensPerChoice * fields.choiceCount)
        let isChat = endpoint == .chatCompletions
        let identity = ResponseIdentity(
            id: (isChat ? "chatcmpl-mock-" : "cmpl-mock-") + "\(connectionID)-\(requestsOnConnection)",
            created: Int(Self.unixTime()),
            model: fields.model ?? "")

        if fields.stream {
            let stream = CompletionStream(
                kind: isChat ? .chat : .text, identity: identity, choices: fields.choiceCount,
                tokensPerChoice: tokensPerChoice, finishReason: finishReason, includeUsage: fields.includeUsage,
                usage: usage, allocator: allocator)
            // HTTP/1.0 has no chunked encoding: the end of the connection ends the body.
            let keepAlive = head.isKeepAlive && head.version.minor >= 1
            return MockExchange(record: record, version: head.version, status: knobs.status, keepAlive: keepAlive,
                                stream: stream, knobs: knobs)
        }
        if isChat {
            MockResponseBodies.chatCompletion(
                identity: identity, choices: fields.choiceCount, tokensPerChoice: tokensPerChoice,
                finishReason: finishReason, usage: usage, into: &scratch)
        } else {
            MockResponseBodies.textCompletion(
                identity: identity, choices: fields.choiceCount, tokensPerChoice: tokensPerChoice,
                finishReason: finishReason, usage: usage, into: &scratch)
        }
        let exchange = MockExchange(record: record, version: head.version, status: knobs.status,
                                    keepAlive: head.isKeepAlive, fixedBody: scratch, knobs: knobs)
        exchange.completionTokensInBody = usage.completionTokens
        return exchange
    }

    /// `POST /v1/responses`: one assistant message of `x-mock-completion-tokens` words (capped by
    /// `max_output_tokens`, then `incomplete`), streamed as `response.*` events or as one `response` object.
    private func responsesExchange(
        fields: MockRequestFields, knobs: RequestKnobs, record: RequestLogRecord, head: HTTPRequestHead,
        allocator: ByteBufferAllocator
    ) -> MockExchange {
        var textTokens = min(knobs.completionTokens, MockLimits.maximumTotalCompletionTokens)
        var incomplete = false
        if let maxTokens = fields.maxTokens, maxTokens < textTokens {
            textTokens = maxTokens
            incomplete = true
        }
        let usage = MockResponsesUsage(
            inputTokens: fields.estimatedPromptTokens, outputTokens: knobs.reportedCompletionTokens ?? textTokens)
        var id = "resp_mock\(connectionID)x\(requestsOnConnection)"
        if let stored = server.storedResponses {
            // Unique across mocks (a gateway in front of several must find the one that holds it).
            id = "resp_mock\(stored.prefix)x\(connectionID)x\(requestsOnConnection)"
            if (200...299).contains(knobs.status) { stored.insert(id) }
        }
        let identity = ResponseIdentity(id: id, created: Int(Self.unixTime()), model: fields.model ?? "")
        if fields.stream {
            let writer = ResponsesEventWriter(
                identity: identity, textTokens: textTokens, incompleteBecauseOfLength: incomplete,
                maxOutputTokens: fields.maxTokens, usage: usage)
            let keepAlive = head.isKeepAlive && head.version.minor >= 1
            return MockExchange(record: record, version: head.version, status: knobs.status, keepAlive: keepAlive,
                                stream: CompletionStream(responses: writer, allocator: allocator), knobs: knobs)
        }
        MockResponsesBodies.response(
            identity: identity, status: incomplete ? "incomplete" : "completed", incompleteBecauseOfLength: incomplete,
            maxOutputTokens: fields.maxTokens, textTokens: textTokens, usage: usage, into: &scratch)
        let exchange = MockExchange(record: record, version: head.version, status: knobs.status,
                                    keepAlive: head.isKeepAlive, fixedBody: scratch, knobs: knobs)
        exchange.completionTokensInBody = usage.outputTokens
        return exchange
    }

    // MARK: - Sending the answer

    private func start(_ exchange: MockExchange, context: ChannelHandlerContext) {
        state = .responding(exchange)
        guard exchange.firstByteDelay > .zero else {
            sendHead(exchange, context: context)
            return
        }
        exchange.scheduled = context.eventLoop.assumeIsolated().scheduleTask(in: exchange.firstByteDelay) {
            exchange.scheduled = nil
            guard case .responding(let current) = self.state, current === exchange else { return }
            self.sendHead(exchange, context: context)
        }
    }

    private func sendHead(_ exchange: MockExchange, context: ChannelHandlerContext) {
        var headers: HTTPHeaders
        if let fixedBody = exchange.fixedBody {
            headers = Self.jsonHeaders
            headers.add(name: "content-length", value: String(fixedBody.readableBytes))
        } else if exchange.version.minor >= 1 {
            headers = Self.chunkedEventStreamHeaders
        } else {
            headers = Self.eventStreamHeaders
        }
        if !exchange.keepAlive {
            headers.add(name: "connection", value: "close")
        }
        if let retryAfter = server.behaviour.retryAfterSeconds, !(200...299).contains(exchange.status) {
            headers.add(name: "retry-after", value: String(retryAfter))
        }
        exchange.record.status = exchange.status
        let head = HTTPResponseHead(
            version: exchange.version, status: HTTPResponseStatus(statusCode: exchange.status), headers: headers)
        write(.head(head), exchange: exchange, context: context)

        guard var fixedBody = exchange.fixedBody else {
            produceStream(exchange, context: context)
            return
        }
        exchange.fixedBody = nil
        if let fault = exchange.fault {
            // A non-streamed answer has no token chunks to count: the fault strikes halfway through the
            // body (content-length announced the whole of it).
            let firstHalf = fixedBody.readSlice(length: fixedBody.readableBytes / 2)!
            write(.body(.byteBuffer(firstHalf)), exchange: exchange, context: context)
            strike(fault, exchange: exchange, context: context)
        } else {
            write(.body(.byteBuffer(fixedBody)), exchange: exchange, context: context)
            exchange.record.completionTokens = exchange.completionTokensInBody
            finish(exchange, context: context)
        }
    }

    /// Writes stream events until the stream ends, a token delay is due, the fault strikes, or the channel
    /// stops being writable; then arranges to be called again where needed.
    private func produceStream(_ exchange: MockExchange, context: ChannelHandlerContext) {
        guard var stream = exchange.stream else { return }
        let delayTokens = exchange.tokenDelay > .zero
        var tokensThisStep = 0

        enum Pause {
            case finished
            case fault(InjectedFault)
            case tokenDelay
            case backpressure
        }
        let pause: Pause
        scratch.clear()
        while true {
            if stream.isFinished {
                pause = .finished
                break
            }
            if let fault = exchange.fault, stream.isPastRoleChunks,
                stream.tokensSent >= min(fault.tokensBeforeFault, stream.tokenEvents)
            {
                pause = .fault(fault)
                break
            }
            if stream.nextIsToken {
                if delayTokens && tokensThisStep == 1 {
                    pause = .tokenDelay
                    break
                }
                tokensThisStep += 1
            }
            if scratch.readableBytes >= Self.streamBatchBytes {
                write(.body(.byteBuffer(scratch)), exchange: exchange, context: context)
                scratch.clear()
                if !context.channel.isWritable {
                    pause = .backpressure
                    break
                }
            }
            stream.writeNextEvent(into: &scratch)
        }
        exchange.stream = stream
        exchange.record.completionTokens = stream.tokensSent
        if scratch.readableBytes > 0 {
            write(.body(.byteBuffer(scratch)), exchange: exchange, context: context)
        }

        switch pause {
        case .finished:
            finish(exchange, context: context)
        case .fault(let fault):
            strike(fault, exchange: exchange, context: context)
        case .tokenDelay:
            context.flush()
            // Tokens keep a timetable, one every `tokenDelay` after the first, like a model generating at
            // a fixed rate: a timer that fires late shortens the next wait instead of pushing every later
            // token back. (Waiting `tokenDelay` from each send let the timer's lateness add up over a
            // stream, and a proxy that made the mock's loop a little later each time looked as if it
            // delayed every chunk by the sum.)
            let due = (exchange.lastTokenDue ?? .now()) + exchange.tokenDelay
            exchange.lastTokenDue = due
            exchange.scheduled = context.eventLoop.assumeIsolated().scheduleTask(deadline: due) {
                exchange.scheduled = nil
                guard case .responding(let current) = self.state, current === exchange else { return }
                self.produceStream(exchange, context: context)
            }
        case .backpressure:
            exchange.awaitingWritability = true
            context.flush()
        }
    }

    /// Ends a complete response. The log line is queued first, then the end is written: writing the end
    /// may deliver the next pipelined request to this handler at once.
    private func finish(_ exchange: MockExchange, context: ChannelHandlerContext) {
        exchange.record.outcome = .complete
        server.log?.append(exchange.record)
        if exchange.keepAlive {
            state = .idle
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        } else {
            state = .closing
            context.writeAndFlush(wrapOutboundOut(.end(nil))).assumeIsolated().whenComplete { _ in
                context.close(promise: nil)
            }
        }
    }

    /// Carries out an injected fault once its tokens are written.
    private func strike(_ fault: InjectedFault, exchange: MockExchange, context: ChannelHandlerContext) {
        switch fault {
        case .dropAfter:
            exchange.record.outcome = .dropped
            server.log?.append(exchange.record)
            state = .closing
            context.flush()
            // Close only once what was written has reached the socket, so the client sees exactly the
            // promised chunks and then the end of the connection, without the terminating chunk.
            let written = exchange.lastWrite ?? context.eventLoop.makeSucceededVoidFuture()
            written.assumeIsolated().whenComplete { _ in
                context.close(promise: nil)
            }
        case .stallAfter:
            exchange.isStalled = true
            context.flush()
        }
    }

    /// Writes a response part; when a fault will need to know that everything went out, keeps its future.
    private func write(_ part: HTTPServerResponsePart, exchange: MockExchange, context: ChannelHandlerContext) {
        if exchange.fault == nil {
            context.write(wrapOutboundOut(part), promise: nil)
        } else {
            exchange.lastWrite = context.write(wrapOutboundOut(part))
        }
    }

    // MARK: - Constants

    private static let jsonHeaders: HTTPHeaders = ["content-type": "application/json"]
    private static let chunkedEventStreamHeaders: HTTPHeaders = [
        "content-type": "text/event-stream", "cache-control": "no-cache", "transfer-encoding": "chunked",
    ]
    private static let eventStreamHeaders: HTTPHeaders = [
        "content-type": "text/event-stream", "cache-control": "no-cache",
    ]

    /// Wall-clock time in Unix seconds.
    static func unixTime() -> Double {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Double(now.tv_sec) + Double(now.tv_nsec) / 1_000_000_000
    }
}

/// One response in progress on a connection. Lives on the connection's event loop only.
final class MockExchange {
    var record: RequestLogRecord
    let version: HTTPVersion
    let status: Int
    let keepAlive: Bool
    let tokenDelay: TimeAmount
    let firstByteDelay: TimeAmount
    let fault: InjectedFault?
    /// A complete JSON body, until it is written.
    var fixedBody: ByteBuffer?
    /// Completion tokens inside `fixedBody`, logged once it is sent.
    var completionTokensInBody = 0
    /// A streamed completion and its progress.
    var stream: CompletionStream?
    /// The pending first-byte or token delay.
    var scheduled: Scheduled<Void>?
    /// When the latest delayed token was due (nil until the first delay): the next is due `tokenDelay` later.
    var lastTokenDue: NIODeadline?
    /// Set when the stream paused for a full socket buffer.
    var awaitingWritability = false
    /// Set once `x-mock-stall-after` has struck.
    var isStalled = false
    /// Completion of the latest write, kept only when a fault is injected.
    var lastWrite: EventLoopFuture<Void>?

    init(
        record: RequestLogRecord, version: HTTPVersion, status: Int, keepAlive: Bool,
        fixedBody: ByteBuffer? = nil, stream: CompletionStream? = nil, knobs: RequestKnobs? = nil
    ) {
        self.record = record
        self.version = version
        self.status = status
        self.keepAlive = keepAlive
        self.fixedBody = fixedBody
        self.stream = stream
        self.tokenDelay = knobs?.tokenDelay ?? .zero
        self.firstByteDelay = knobs?.firstByteDelay ?? .zero
        self.fault = knobs?.fault
    }
}
