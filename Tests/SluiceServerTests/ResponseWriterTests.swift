import NIOCore
import NIOEmbedded
import NIOHTTP1
import SluiceCore
import XCTest
@testable import SluiceServer

/// What `ResponseWriter` puts on the wire (`HTTP1ResponseBytes`), read back by NIO's HTTP/1 response
/// decoder (`CapturedResponse`): a parser Sluice did not write.
final class ResponseWriterTests: XCTestCase {
    private func capture(method: HTTPMethod = .POST, keepAlive: Bool = true, _ respond: (ResponseWriter) async throws -> Void) async throws -> (CapturedResponse, raw: String) {
        let channel = NIOAsyncTestingChannel()
        try await channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1))
        let writer = ResponseWriter(channel: channel, keepAlive: keepAlive, bodyless: method == .HEAD)
        try await respond(writer)
        var captured = CapturedResponse(requestMethod: method)
        var raw = ""
        while let bytes = try await channel.readOutbound(as: ByteBuffer.self) {
            raw += String(buffer: bytes)
            try captured.take(bytes)
        }
        return (captured, raw)
    }

    func testWholeResponseIsOneWriteWithItsLength() async throws {
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: "application/json")
        let channel = NIOAsyncTestingChannel()
        try await channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1))
        let writer = ResponseWriter(channel: channel, keepAlive: false)
        try await writer.writeResponse(status: .ok, headers: headers, body: ByteBuffer(string: #"{"ok":true}"#))
        let bytes = try await channel.readOutbound(as: ByteBuffer.self)
        let more = try await channel.readOutbound(as: ByteBuffer.self)
        XCTAssertNil(more, "head and body leave as one buffer")
        XCTAssertEqual(bytes.map { String(buffer: $0) },
                       "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\nconnection: close\r\n\r\n{\"ok\":true}")
    }

    /// Small chunks are framed in one buffer, large ones written behind their framing line; either
    /// way the client reads the same body.
    func testStreamOfSmallAndLargeChunksReadsBackWhole() async throws {
        let small = String(repeating: "s", count: 300), large = String(repeating: "L", count: ResponseWriter.copiedChunkBytes + 1)
        let (captured, _) = try await capture { writer in
            var headers = HTTPHeaders()
            headers.add(name: "content-type", value: "text/event-stream")
            headers.add(name: "content-length", value: "99")  // an upstream's: a stream has none
            try await writer.writeStreamHead(status: .ok, headers: headers)
            for text in [small, large, "", small] { try await writer.writeStreamChunk(ByteBuffer(string: text)) }
            try await writer.endStream()
        }
        XCTAssertEqual(captured.status, 200)
        XCTAssertEqual(captured.headers.first(name: "transfer-encoding"), "chunked")
        XCTAssertNil(captured.headers.first(name: "content-length"))
        XCTAssertEqual(captured.body, small + large + small)
        XCTAssertTrue(captured.ended)
    }

    /// A header value holding CR or LF (an upstream's line with a bare CR) is left out: written, it
    /// would end the head early and the rest would be read as more headers or a body.
    func testHeaderWithALineBreakIsLeftOut() async throws {
        let (captured, raw) = try await capture { writer in
            var headers = HTTPHeaders()
            headers.add(name: "x-fine", value: "1")
            headers.add(name: "x-split", value: "a\r\nset-cookie: stolen=1")
            headers.add(name: "x-bare", value: "a\rb")
            try await writer.writeResponse(status: .ok, headers: headers, body: ByteBuffer(string: "body"))
        }
        XCTAssertEqual(captured.headers.first(name: "x-fine"), "1")
        XCTAssertNil(captured.headers.first(name: "set-cookie"))
        XCTAssertNil(captured.headers.first(name: "x-bare"))
        XCTAssertFalse(raw.contains("stolen"), raw)
        XCTAssertEqual(captured.body, "body")
    }

    func testHEADGetsTheHeadWithTheLengthButNoBody() async throws {
        let (whole, raw) = try await capture(method: .HEAD) { writer in
            try await writer.writeResponse(status: .ok, headers: HTTPHeaders(), body: ByteBuffer(string: "twelve bytes"))
        }
        XCTAssertEqual(whole.headers.first(name: "content-length"), "12")
        XCTAssertTrue(raw.hasSuffix("\r\n\r\n"), raw)
        XCTAssertTrue(whole.ended)
        let (stream, streamRaw) = try await capture(method: .HEAD) { writer in
            try await writer.writeStreamHead(status: .ok, headers: HTTPHeaders())
            try await writer.writeStreamChunk(ByteBuffer(string: "data"))
            try await writer.endStream()
        }
        XCTAssertNil(stream.headers.first(name: "transfer-encoding"))
        XCTAssertFalse(streamRaw.contains("data"), streamRaw)
    }

    func testErrorIsRenderedInOpenAIsEnvelopeWithItsStatus() async throws {
        let (captured, _) = try await capture { writer in
            try await writer.writeError(GatewayError.requestTimeout(), requestID: "req_1")
        }
        XCTAssertEqual(captured.status, 408)
        XCTAssertEqual(captured.headers.first(name: "x-request-id"), "req_1")
        XCTAssertTrue(captured.body.contains(#""error""#), captured.body)
    }
}
