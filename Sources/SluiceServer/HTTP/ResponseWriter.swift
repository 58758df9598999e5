import NIOCore
import NIOHTTP1
import SluiceCore
import Synchronization

/// Writes the one response to a request: a whole body, an OpenAI-shaped error, or a stream of chunks.
///
/// Writes suspend while the client's socket is not writable; that suspension is the backpressure that
/// pauses an upstream transfer for a slow client. A write to a connection the client has closed throws.
public final class ResponseWriter: Sendable {
    private let outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>
    /// Whether the connection stays open after this response.
    public let keepAlive: Bool
    private let state = Mutex<(headSent: Bool, closeAfter: Bool, status: Int)>((false, false, 0))

    init(outbound: NIOAsyncChannelOutboundWriter<HTTPServerResponsePart>, keepAlive: Bool) {
        self.outbound = outbound
        self.keepAlive = keepAlive
    }

    /// True once a response head went out (an error can no longer be sent as a status).
    public var headSent: Bool { state.withLock { $0.headSent } }
    /// The status of the response head sent (0 before).
    public var status: Int { state.withLock { $0.status } }
    var closeAfterResponse: Bool { state.withLock { $0.closeAfter } }

    /// Sends a complete response with a `content-length`, in one flush.
    public func writeResponse(status: HTTPResponseStatus, headers: HTTPHeaders, body: ByteBuffer, forceClose: Bool = false) async throws {
        var headers = headers
        headers.replaceOrAdd(name: "content-length", value: String(body.readableBytes))
        let head = makeHead(status: status, headers: headers, forceClose: forceClose)
        try await outbound.write(contentsOf: [.head(head), .body(.byteBuffer(body)), .end(nil)])
    }

    /// Sends `error` as OpenAI's error envelope with its status and headers.
    public func writeError(_ error: GatewayError, requestID: String?, extraHeaders: [(String, String)] = [], forceClose: Bool = false) async throws {
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: "application/json")
        if let requestID { headers.add(name: "x-request-id", value: requestID) }
        for (name, value) in extraHeaders { headers.add(name: name, value: value) }
        for (name, value) in error.headers { headers.replaceOrAdd(name: name, value: value) }
        try await writeResponse(
            status: HTTPResponseStatus(statusCode: error.status),
            headers: headers,
            body: ByteBuffer(bytes: error.responseBody()),
            forceClose: forceClose
        )
    }

    /// Starts a chunked response (streaming).
    public func writeStreamHead(status: HTTPResponseStatus, headers: HTTPHeaders) async throws {
        var headers = headers
        headers.remove(name: "content-length")
        headers.replaceOrAdd(name: "transfer-encoding", value: "chunked")
        try await outbound.write(.head(makeHead(status: status, headers: headers, forceClose: false)))
    }

    /// Sends one chunk of a streamed body, flushed at once.
    public func writeStreamChunk(_ chunk: ByteBuffer) async throws {
        try await outbound.write(.body(.byteBuffer(chunk)))
    }

    /// Ends a streamed body.
    public func endStream() async throws {
        try await outbound.write(.end(nil))
    }

    /// Gives up on a response whose head already went out (the upstream failed mid-stream): the
    /// connection is closed so the client sees a truncated body, never a silently "complete" one.
    public func abort() {
        state.withLock { $0.closeAfter = true }
        outbound.finish()
    }

    private func makeHead(status: HTTPResponseStatus, headers: HTTPHeaders, forceClose: Bool) -> HTTPResponseHead {
        var headers = headers
        let close = forceClose || !keepAlive
        if close { headers.replaceOrAdd(name: "connection", value: "close") }
        state.withLock {
            $0.headSent = true
            $0.status = Int(status.code)
            if close { $0.closeAfter = true }
        }
        return HTTPResponseHead(version: .http1_1, status: status, headers: headers)
    }
}
