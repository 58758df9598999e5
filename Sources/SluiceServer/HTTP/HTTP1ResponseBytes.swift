import NIOCore
import NIOHTTP1

/// HTTP/1.1 responses as the bytes that go on the wire: a status line with its headers, a chunk of
/// a chunked body, the last chunk.
///
/// Why Sluice writes these itself instead of NIO's `HTTPResponseEncoder`: the encoder is a pipeline
/// handler, so every response crossed the pipeline three times (head, body, end), each part boxed in
/// `NIOAny`, and a whole answer left as three buffers. Here a whole answer — head and body — is one
/// buffer and one write (`ResponseWriter`). The framing Sluice needs is small: every response it
/// writes carries either a `content-length` or `transfer-encoding: chunked`, decided by the writer.
enum HTTP1ResponseBytes {
    /// `HTTP/1.1 100 Continue` with no headers: the interim answer to `Expect: 100-continue`.
    static let continueHead = ByteBuffer(string: "HTTP/1.1 100 Continue\r\n\r\n")

    /// The last chunk of a chunked body (no trailers).
    static let lastChunk = ByteBuffer(string: "0\r\n\r\n")

    /// Writes the status line and `headers`, then the empty line that ends the head.
    ///
    /// A header whose name or value holds a CR or LF is left out: written, it would end the head
    /// early and let the rest be read as another header or response (response splitting). Sluice's
    /// own values never hold them; an upstream's header could, if a line had a bare CR.
    static func writeHead(status: HTTPResponseStatus, headers: HTTPHeaders, into buffer: inout ByteBuffer) {
        buffer.writeStaticString("HTTP/1.1 ")
        buffer.writeString(String(status.code))
        buffer.writeStaticString(" ")
        buffer.writeString(status.reasonPhrase)
        buffer.writeStaticString("\r\n")
        for (name, value) in headers where isSafe(name) && isSafe(value) {
            buffer.writeString(name)
            buffer.writeStaticString(": ")
            buffer.writeString(value)
            buffer.writeStaticString("\r\n")
        }
        buffer.writeStaticString("\r\n")
    }

    /// The framing line before a chunk of `size` bytes (`size` in hex, then CRLF).
    static func writeChunkStart(size: Int, into buffer: inout ByteBuffer) {
        buffer.writeString(String(size, radix: 16))
        buffer.writeStaticString("\r\n")
    }

    /// The CRLF after a chunk's data.
    static let chunkEnd = ByteBuffer(string: "\r\n")

    /// Bytes of head to reserve beyond the headers' own (status line, separators).
    static func estimatedHeadBytes(_ headers: HTTPHeaders) -> Int {
        var bytes = 64
        for (name, value) in headers { bytes += name.utf8.count + value.utf8.count + 4 }
        return bytes
    }

    private static func isSafe(_ text: String) -> Bool {
        !text.utf8.contains { $0 == UInt8(ascii: "\r") || $0 == UInt8(ascii: "\n") }
    }
}
