import NIOCore
import NIOHTTP1
import Synchronization

/// Writes the one response to a request: a whole body, an OpenAI-shaped error, or a stream of chunks.
///
/// Writes go straight to the channel as HTTP/1.1 bytes (`HTTP1ResponseBytes`; the request's task runs
/// on the channel's event loop, where they are plain calls): a whole answer is one buffer and one
/// write, a streamed chunk one buffer with its framing. A response to `HEAD` gets its head only.
/// A streamed chunk waits while the client's socket is not writable; that wait is the backpressure
/// that pauses an upstream transfer for a slow client. A write to a connection the client has closed
/// throws.
public final class ResponseWriter: Sendable {
    private struct State {
        var headSent = false
        var closeAfter = false
        var status = 0
        var closed = false
        /// A streamed write waiting for the socket to become writable again.
        var writableWaiter: CheckedContinuation<Void, any Error>?
        /// Told once, when the end of the response has been written; dropped then or when the
        /// connection closes.
        var onEnd: (@Sendable (ResponseWriter) -> Void)?
        /// Completes once the end of the response has left for the socket (nil before the end).
        var endWritten: EventLoopFuture<Void>?
    }

    private let channel: any Channel
    /// Whether the connection stays open after this response.
    public let keepAlive: Bool
    /// The request was `HEAD`: the response's head is written (with the length the body would have),
    /// its body is not (RFC 9112 §6.3).
    private let bodyless: Bool
    private let state = Mutex(State())

    /// - Parameters:
    ///   - bodyless: the request was `HEAD`.
    ///   - onEnd: called (on the channel's loop, where the writes happen) right after the end of the
    ///     response was written: the connection may serve its next request while the handler
    ///     finishes its own work (settling the reservation, the access log).
    init(channel: any Channel, keepAlive: Bool, bodyless: Bool = false, onEnd: (@Sendable (ResponseWriter) -> Void)? = nil) {
        self.channel = channel
        self.keepAlive = keepAlive
        self.bodyless = bodyless
        if let onEnd { state.withLock { $0.onEnd = onEnd } }
    }

    /// True once a response head went out (an error can no longer be sent as a status).
    public var headSent: Bool { state.withLock { $0.headSent } }
    /// The status of the response head sent (0 before).
    public var status: Int { state.withLock { $0.status } }
    var closeAfterResponse: Bool { state.withLock { $0.closeAfter } }

    /// Sends a complete response with a `content-length`, in one flush.
    public func writeResponse(status: HTTPResponseStatus, headers: HTTPHeaders, body: ByteBuffer, forceClose: Bool = false) async throws {
        try checkOpen()
        writeWhole(status: status, headers: headers, body: body, forceClose: forceClose)
    }

    /// Sends `error` as rendered by itself (for Sluice, OpenAI's error envelope with its status and headers).
    func writeError(_ error: some ErrorResponse, requestID: String?, extraHeaders: [(String, String)] = [], forceClose: Bool = false) async throws {
        try checkOpen()
        writeErrorNow(error, requestID: requestID, extraHeaders: extraHeaders, forceClose: forceClose)
    }

    /// `writeError` for the connection handler itself (on the event loop, nothing to wait for).
    func writeErrorNow(_ error: some ErrorResponse, requestID: String?, extraHeaders: [(String, String)] = [], forceClose: Bool = false) {
        let (head, body) = error.rendered(requestID: requestID, extraHeaders: extraHeaders, closing: false)
        writeWhole(status: head.status, headers: head.headers, body: body, forceClose: forceClose)
    }

    /// Starts a chunked response (streaming).
    public func writeStreamHead(status: HTTPResponseStatus, headers: HTTPHeaders) async throws {
        try checkOpen()
        var headers = headers
        headers.remove(name: "content-length")
        if !bodyless { headers.replaceOrAdd(name: "transfer-encoding", value: "chunked") }
        var buffer = channel.allocator.buffer(capacity: HTTP1ResponseBytes.estimatedHeadBytes(headers))
        writeHead(status: status, headers: headers, forceClose: false, into: &buffer)
        channel.writeAndFlush(buffer, promise: nil)
    }

    /// Sends one chunk of a streamed body, flushed at once; waits while the client cannot take more.
    public func writeStreamChunk(_ chunk: ByteBuffer) async throws {
        try checkOpen()
        // An empty chunk would read as the last one: there is nothing to send.
        guard !bodyless, chunk.readableBytes > 0 else { return }
        if chunk.readableBytes <= Self.copiedChunkBytes {
            // An SSE event is a few hundred bytes: framing and data in one buffer is one pipeline write.
            var framed = channel.allocator.buffer(capacity: chunk.readableBytes + 12)
            HTTP1ResponseBytes.writeChunkStart(size: chunk.readableBytes, into: &framed)
            framed.writeImmutableBuffer(chunk)
            framed.writeImmutableBuffer(HTTP1ResponseBytes.chunkEnd)
            channel.writeAndFlush(framed, promise: nil)
        } else {
            var start = channel.allocator.buffer(capacity: 12)
            HTTP1ResponseBytes.writeChunkStart(size: chunk.readableBytes, into: &start)
            channel.write(start, promise: nil)
            channel.write(chunk, promise: nil)
            channel.writeAndFlush(HTTP1ResponseBytes.chunkEnd, promise: nil)
        }
        try await waitUntilWritable()
    }

    /// Chunks up to this size are copied behind their framing line; larger ones are written as they are.
    static let copiedChunkBytes = 8 * 1024

    /// Ends a streamed body.
    public func endStream() async throws {
        try checkOpen()
        writeEnd()
        responseEnded()
    }

    /// Completes once the end of the response has been written to the socket (at once if the
    /// response never ended). A connection that closes after its response waits for this: closing
    /// earlier drops what a slow client has not yet taken, and it would see a truncated answer.
    var endWritten: EventLoopFuture<Void> {
        state.withLock { $0.endWritten } ?? channel.eventLoop.makeSucceededVoidFuture()
    }

    /// Gives up on a response whose head already went out (the upstream failed mid-stream): the
    /// connection is closed so the client sees a truncated body, never a silently "complete" one.
    public func abort() {
        state.withLock {
            $0.closeAfter = true
            $0.onEnd = nil
        }
        channel.close(promise: nil)
    }

    // MARK: From the connection handler

    /// The socket can take more: a waiting streamed write goes on.
    func channelBecameWritable() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, any Error>? in
            defer { state.writableWaiter = nil }
            return state.writableWaiter
        }
        waiter?.resume()
    }

    /// The connection closed: a waiting write fails, and so does every later one.
    func channelClosed() {
        let waiter = state.withLock { state -> CheckedContinuation<Void, any Error>? in
            state.closed = true
            state.onEnd = nil
            defer { state.writableWaiter = nil }
            return state.writableWaiter
        }
        waiter?.resume(throwing: ChannelError.ioOnClosedChannel)
    }

    // MARK: Internals

    private func checkOpen() throws {
        if state.withLock({ $0.closed }) || !channel.isActive {
            throw ChannelError.ioOnClosedChannel
        }
    }

    private func waitUntilWritable() async throws {
        guard !channel.isWritable else { return }
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            let outcome = state.withLock { state -> Result<Void, any Error>? in
                if state.closed { return .failure(ChannelError.ioOnClosedChannel) }
                state.writableWaiter = continuation
                return nil
            }
            if let outcome {
                continuation.resume(with: outcome)
            } else if channel.isWritable {
                // Became writable between the check and the registration.
                channelBecameWritable()
            }
        }
    }

    private func writeWhole(status: HTTPResponseStatus, headers: HTTPHeaders, body: ByteBuffer, forceClose: Bool) {
        var headers = headers
        headers.replaceOrAdd(name: "content-length", value: String(body.readableBytes))
        let bodyBytes = bodyless ? 0 : body.readableBytes
        var buffer = channel.allocator.buffer(capacity: HTTP1ResponseBytes.estimatedHeadBytes(headers) + bodyBytes)
        writeHead(status: status, headers: headers, forceClose: forceClose, into: &buffer)
        if bodyBytes > 0 { buffer.writeImmutableBuffer(body) }
        writeEnd(buffer)
        responseEnded()
    }

    /// Writes and flushes the last bytes of the response (`bytes`, or the last chunk of a stream),
    /// remembering when they have left.
    private func writeEnd(_ bytes: ByteBuffer? = nil) {
        let written = channel.eventLoop.makePromise(of: Void.self)
        channel.writeAndFlush(bytes ?? (bodyless ? ByteBuffer() : HTTP1ResponseBytes.lastChunk), promise: written)
        state.withLock { $0.endWritten = written.futureResult }
    }

    private func responseEnded() {
        let onEnd = state.withLock { state -> (@Sendable (ResponseWriter) -> Void)? in
            defer { state.onEnd = nil }
            return state.onEnd
        }
        onEnd?(self)
    }

    private func writeHead(status: HTTPResponseStatus, headers: HTTPHeaders, forceClose: Bool, into buffer: inout ByteBuffer) {
        var headers = headers
        let close = forceClose || !keepAlive
        if close { headers.replaceOrAdd(name: "connection", value: "close") }
        state.withLock {
            $0.headSent = true
            $0.status = Int(status.code)
            if close { $0.closeAfter = true }
        }
        HTTP1ResponseBytes.writeHead(status: status, headers: headers, into: &buffer)
    }
}
