import NIOCore
import NIOHTTP1
import SluiceCore

/// An error that renders itself as an HTTP response: its status, its own headers (`retry-after`,
/// `allow`, …) and its body. The HTTP layer answers errors through this alone — the request's
/// writer, the stalled-body 408 and the malformed-request answers alike — so an error's wire form is
/// decided in one place. `GatewayError` is the one kind Sluice sends.
protocol ErrorResponse: Sendable {
    var status: Int { get }
    var headers: [(String, String)] { get }
    func responseBody() -> [UInt8]
}

extension GatewayError: ErrorResponse {}

extension ErrorResponse {
    /// The head and body of this error's response: a JSON body with its length, the request id,
    /// `extraHeaders` (rate-limit headers) overridden by the error's own, and `connection: close`
    /// when `closing`.
    func rendered(requestID: String?, extraHeaders: [(String, String)] = [], closing: Bool) -> (head: HTTPResponseHead, body: ByteBuffer) {
        let body = ByteBuffer(bytes: responseBody())
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: "application/json")
        if let requestID { headers.add(name: "x-request-id", value: requestID) }
        for (name, value) in extraHeaders { headers.add(name: name, value: value) }
        for (name, value) in self.headers { headers.replaceOrAdd(name: name, value: value) }
        headers.replaceOrAdd(name: "content-length", value: String(body.readableBytes))
        if closing { headers.replaceOrAdd(name: "connection", value: "close") }
        return (HTTPResponseHead(version: .http1_1, status: HTTPResponseStatus(statusCode: status), headers: headers), body)
    }
}
