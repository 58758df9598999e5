import Logging
import NIOCore
import NIOHTTP1
import SluiceCore

/// Answers what the HTTP decoder could not parse with OpenAI's error envelope, then closes the
/// connection: 400 for a malformed request (request line, header syntax, body framing), 431 for a
/// header section over the limits, 505 for another HTTP version (an HTTP/2 connection preface).
///
/// Why not NIO's `HTTPServerProtocolErrorHandler`: it answers every case with an empty 400, which an
/// OpenAI SDK reports as an unexplained error, and it closes at once.
///
/// Sits right after the decoder: it sees every request part read and every response part written,
/// so it knows when a response is being produced or is still owed for a complete request. Then it
/// does not answer (a second response would corrupt the first), and the error goes on to the
/// connection handler, which closes the connection. After an answer, the output is shut, what the
/// client still sends is read and discarded (the decoder reports each read as an error, swallowed
/// here), and the connection closes when the client closes it or after ``lingerTimeout``: closing
/// with unread bytes (the rest of a 70 KiB header) would reset the connection, and the client could
/// lose the answer.
final class MalformedRequestResponder: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private let maxHeaderBytes: Int
    private let maxHeaderFields: Int
    private let logger: Logger
    /// Complete requests read, and responses ended: a request read in full is owed a response.
    private var requestsRead = 0
    private var responsesEnded = 0
    /// A response head was written and its end not yet.
    private var inResponse = false
    /// The output was shut (a refused request's lingering close, or after this handler's answer).
    private var outputShut = false
    /// This handler answered: nothing more is written, later errors are dropped.
    private var answered = false

    /// The longest an answered connection is read (and discarded) before it is closed.
    static let lingerTimeout = TimeAmount.seconds(2)

    init(maxHeaderBytes: Int, maxHeaderFields: Int, logger: Logger) {
        self.maxHeaderBytes = maxHeaderBytes
        self.maxHeaderFields = maxHeaderFields
        self.logger = logger
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        if case .end = unwrapInboundIn(data) { requestsRead += 1 }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        // Nothing may follow the answer (a stalled-body 408 from the deadline handler, say).
        guard !answered else {
            promise?.fail(ChannelError.outputClosed)
            return
        }
        switch unwrapOutboundIn(data) {
        case .head(let head) where head.status.code >= 200:  // a 1xx head is not the response
            inResponse = true
        case .end:
            inResponse = false
            responsesEnded += 1
        case .head, .body:
            break
        }
        context.write(data, promise: promise)
    }

    func close(context: ChannelHandlerContext, mode: CloseMode, promise: EventLoopPromise<Void>?) {
        if mode == .output { outputShut = true }
        context.close(mode: mode, promise: promise)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        // While lingering after the answer the decoder reports every read as an error: expected.
        if answered { return }
        guard let answer = Self.answer(to: error, maxHeaderBytes: maxHeaderBytes, maxHeaderFields: maxHeaderFields),
              !inResponse, requestsRead <= responsesEnded, !outputShut
        else {
            context.fireErrorCaught(error)
            return
        }
        logger.debug("malformed request answered", metadata: ["status": "\(answer.status)", "error": "\(error)"])
        answered = true
        let (head, body) = answer.rendered(requestID: nil, closing: true)
        context.write(wrapOutboundOut(.head(head)), promise: nil)
        context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
        let channel = context.channel
        let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
        context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
            let closed = channel.eventLoop.makePromise(of: Void.self)
            bound.value.close(mode: .output, promise: closed)
            closed.futureResult.whenFailure { _ in channel.close(promise: nil) }
        }
        context.eventLoop.scheduleTask(in: Self.lingerTimeout) { channel.close(promise: nil) }
    }

    /// The client-facing error for a decoder error, or nil when there is nothing to answer (not a
    /// parse error, or the client already closed its side).
    static func answer(to error: any Error, maxHeaderBytes: Int, maxHeaderFields: Int) -> GatewayError? {
        guard let parserError = error as? HTTPParserError else { return nil }
        switch parserError {
        case .headerOverflow:
            return .headersTooLarge(limitBytes: maxHeaderBytes, maxFields: maxHeaderFields)
        case .invalidVersion, .paused:
            // `.paused`: llhttp stops at the HTTP/2 preface (`PRI * HTTP/2.0`) of a client that
            // speaks HTTP/2 without negotiating it.
            return .httpVersionNotSupported()
        case .invalidEOFState, .closedConnection:
            return nil
        case .invalidMethod:
            return .malformedHTTP("unknown or malformed request method")
        case .invalidURL:
            return .malformedHTTP("malformed request target")
        case .invalidHeaderToken, .invalidCharactersUsed:
            return .malformedHTTP("malformed header")
        case .invalidContentLength, .unexpectedContentLength:
            return .malformedHTTP("invalid or conflicting Content-Length")
        case .invalidChunkSize:
            return .malformedHTTP("invalid chunk size in a chunked body")
        default:
            return .malformedHTTP("malformed request")
        }
    }
}
