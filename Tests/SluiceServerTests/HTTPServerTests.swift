import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization
import XCTest
@testable import SluiceServer

#if canImport(Glibc)
import Glibc
#endif

/// The HTTP front door over real sockets, with a handler that echoes the body it was given.
final class HTTPServerTests: XCTestCase {
    /// Echoes the body. For `/linger` it then keeps running after its response until `release()`, the
    /// way the gateway settles a reservation after the response has ended; for `/hold` it answers
    /// only after `release()`.
    final class EchoHandler: RequestHandling {
        private struct State {
            var released = false
            var waiters: [CheckedContinuation<Void, Never>] = []
            var lingered = 0
        }
        private let state = Mutex(State())

        /// How many `/linger` requests have finished their work after the response.
        var lingered: Int { state.withLock { $0.lingered } }

        func handle(_ request: HTTPRequest, writer: ResponseWriter) async {
            if request.head.uri == "/hold" { await released() }
            var headers = HTTPHeaders()
            headers.add(name: "content-type", value: "text/plain")
            try? await writer.writeResponse(status: .ok, headers: headers, body: request.body)
            guard request.head.uri == "/linger" else { return }
            await released()
            state.withLock { $0.lingered += 1 }
        }

        private func released() async {
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                let released = state.withLock { state -> Bool in
                    if !state.released { state.waiters.append(continuation) }
                    return state.released
                }
                if released { continuation.resume() }
            }
        }

        func release() {
            let waiters = state.withLock { state -> [CheckedContinuation<Void, Never>] in
                state.released = true
                defer { state.waiters = [] }
                return state.waiters
            }
            waiters.forEach { $0.resume() }
        }
    }

    private var handler: EchoHandler!
    private var running: RunningServer!
    private var server: HTTPServer { running.server }
    private var runTask: Task<Void, any Error>! { running.runTask }
    private var port: Int { running.port }

    override func setUp() async throws {
        handler = EchoHandler()
        running = try await RunningServer(handler: handler)
    }

    override func tearDown() async throws {
        handler.release()
        try await running.stop()
    }

    func testKeepAliveServesSeveralRequestsOnOneConnection() throws {
        let socket = try TestSocket(port: port)
        for i in 0..<3 {
            let body = "hello \(i)"
            try socket.send("POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)")
            let response = try socket.readResponse()
            XCTAssertTrue(response.hasPrefix("HTTP/1.1 200"), response)
            XCTAssertTrue(response.hasSuffix(body), response)
        }
    }

    /// A request whose task runs on after its response (as the gateway's does while it settles the
    /// reservation) does not hold up the next request on its connection.
    func testNextRequestIsServedWhileThePreviousTaskRunsOn() throws {
        let socket = try TestSocket(port: port)
        try socket.send("POST /linger HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nfirst")
        XCTAssertTrue(try socket.readResponse().hasSuffix("first"))
        try socket.send("POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 6\r\n\r\nsecond")
        let second = try socket.readResponse()
        XCTAssertTrue(second.hasPrefix("HTTP/1.1 200") && second.hasSuffix("second"), second)
        XCTAssertEqual(handler.lingered, 0, "the first request's task is still running")
    }

    /// Shutdown waits for request tasks that outlive their responses and connections: what they do
    /// after the response (settling in Redis) must happen before the limiter closes.
    func testShutdownWaitsForTasksThatOutliveTheirResponse() async throws {
        let socket = try TestSocket(port: port)
        try socket.send("POST /linger HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nok")
        _ = try socket.readResponse()
        server.shutdownGracefully()
        XCTAssertEqual(try socket.readUntilClosed(), "", "the idle connection closes")
        let runTask = self.runTask!
        let returned = Mutex(false)
        let watcher = Task {
            _ = try? await runTask.value
            returned.withLock { $0 = true }
        }
        try await Task.sleep(for: .milliseconds(300))
        XCTAssertFalse(returned.withLock { $0 }, "run() returned while a request task was still running")
        handler.release()
        await watcher.value
        XCTAssertEqual(handler.lingered, 1)
    }

    /// Requests pipelined in one write are answered in order, each with its own body.
    func testPipelinedRequestsAreAnsweredInOrder() throws {
        let socket = try TestSocket(port: port)
        var batch = ""
        for i in 0..<5 { batch += "POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 7\r\n\r\nbody \(i)\r" }
        try socket.send(batch + "POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nConnection: close\r\n\r\nlast")
        let all = try socket.readUntilClosed()
        let bodies = all.components(separatedBy: "\r\n\r\n").dropFirst().map { $0.prefix { $0 != "H" } }
        XCTAssertEqual(bodies, ["body 0\r", "body 1\r", "body 2\r", "body 3\r", "body 4\r", "last"], all)
        XCTAssertEqual(all.components(separatedBy: "HTTP/1.1 200").count - 1, 6)
    }

    func testDeclaredBodyOverTheCapIs413AndCloses() throws {
        let socket = try TestSocket(port: port)
        try socket.send("POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n")
        let response = try socket.readUntilClosed()
        XCTAssertTrue(response.hasPrefix("HTTP/1.1 413"), response)
        XCTAssertTrue(response.contains("\"error\""))
    }

    /// `Expect: 100-continue` is answered before the body is sent: the client does not wait (curl
    /// waits a second for it, then sends anyway).
    func testExpectContinueIsAnsweredBeforeTheBody() throws {
        let socket = try TestSocket(port: port)
        try socket.send("POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        let interim = try socket.readSomeText()
        XCTAssertTrue(interim.hasPrefix("HTTP/1.1 100 Continue\r\n"), interim)
        try socket.send("hello")
        let response = interim.count > 25 ? interim : try socket.readResponse()
        XCTAssertTrue(response.contains("HTTP/1.1 200"), response)
        XCTAssertTrue(response.hasSuffix("hello"), response)
    }

    /// CONNECT would turn the rest of the connection into an unparsed tunnel (a request pipelined
    /// behind it was never answered): it is refused with 405 and the connection closed.
    func testConnectIsRefusedAndTheConnectionClosed() throws {
        let socket = try TestSocket(port: port)
        try socket.send("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\nGET /x HTTP/1.1\r\nHost: t\r\n\r\n")
        let started = Date()
        let response = try socket.readUntilClosed()
        XCTAssertTrue(response.hasPrefix("HTTP/1.1 405"), response)
        XCTAssertTrue(response.lowercased().contains("connection: close"), response)
        XCTAssertLessThan(Date().timeIntervalSince(started), 3, "the connection was left open")
    }

    /// A client still sending a refused body gets the 413 and an orderly end, not a reset: the server
    /// shuts its output after the answer and discards the rest of the body.
    func testRefusedClientStillSendingGetsTheAnswerNotAReset() throws {
        let socket = try TestSocket(port: port)
        try socket.send("POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 4000000\r\n\r\n")
        Thread.sleep(forTimeInterval: 0.1)  // the 413 is written and the server has stopped answering
        // Closed at once, the server would reset the connection here and this send would fail.
        try socket.send(String(repeating: "a", count: 1_000_000))
        let response = try socket.readUntilClosed()
        XCTAssertTrue(response.hasPrefix("HTTP/1.1 413"), response)
    }

    func testChunkedBodyOverTheCapIs413() throws {
        let socket = try TestSocket(port: port)
        let chunk = String(repeating: "a", count: 800)
        try socket.send("POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n320\r\n\(chunk)\r\n320\r\n\(chunk)\r\n0\r\n\r\n")
        let response = try socket.readUntilClosed()
        XCTAssertTrue(response.hasPrefix("HTTP/1.1 413"), response)
    }

    // MARK: What the decoder cannot parse: OpenAI's error envelope, then a close

    /// The status line, the `connection` header and the OpenAI error object of a response that is
    /// followed by the end of the connection (not a reset).
    private func refusal(after request: String, file: StaticString = #filePath, line: UInt = #line) throws -> (status: String, connection: String?, error: [String: Any]) {
        let socket = try TestSocket(port: port)
        try socket.send(request)
        let response = try socket.readUntilClosed()
        XCTAssertFalse(socket.closedByReset, "the answer is followed by an orderly close, not a reset", file: file, line: line)
        let parts = response.components(separatedBy: "\r\n\r\n")
        let headLines = parts[0].components(separatedBy: "\r\n")
        let connection = headLines.first { $0.lowercased().hasPrefix("connection:") }.map { $0.dropFirst("connection:".count).trimmingCharacters(in: .whitespaces) }
        let body = parts.dropFirst().joined(separator: "\r\n\r\n")
        let object = try JSONSerialization.jsonObject(with: Data(body.utf8)) as? [String: Any]
        let error = try XCTUnwrap(object?["error"] as? [String: Any], "an OpenAI error body: \(response)", file: file, line: line)
        XCTAssertEqual(Set(error.keys), ["message", "type", "param", "code"], file: file, line: line)
        XCTAssertEqual(error["type"] as? String, "invalid_request_error", file: file, line: line)
        XCTAssertTrue(error["param"] is NSNull, file: file, line: line)
        return (headLines[0], connection, error)
    }

    func testMalformedRequestLineGetsAnOpenAIError400() throws {
        for request in ["GARBAGE\r\n\r\n", "GET /x HTTX/1.1\r\nHost: t\r\n\r\n", "GET /a b c HTTP/1.1\r\n\r\n"] {
            let refused = try refusal(after: request)
            XCTAssertEqual(refused.status, "HTTP/1.1 400 Bad Request", request)
            XCTAssertEqual(refused.connection, "close", request)
            XCTAssertEqual(refused.error["code"] as? String, "malformed_http_request", request)
        }
    }

    func testMalformedHeaderAndChunkedFramingGet400() throws {
        let bad = [
            "GET /x HTTP/1.1\r\nHost: t\r\nBad Header: x\r\n\r\n",
            "POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 12x\r\n\r\n",
            "POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nZZZ\r\nabc\r\n0\r\n\r\n",
        ]
        for request in bad {
            let refused = try refusal(after: request)
            XCTAssertEqual(refused.status, "HTTP/1.1 400 Bad Request", request)
            XCTAssertEqual(refused.error["code"] as? String, "malformed_http_request", request)
        }
    }

    /// A client speaking HTTP/2 without negotiating it is told that Sluice speaks HTTP/1.1.
    func testHTTP2PrefaceIsToldSluiceSpeaksHTTP11() throws {
        let refused = try refusal(after: "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        XCTAssertEqual(refused.status, "HTTP/1.1 505 HTTP Version Not Supported")
        XCTAssertEqual(refused.connection, "close")
        XCTAssertEqual(refused.error["code"] as? String, "http_version_not_supported")
        XCTAssertTrue((refused.error["message"] as? String ?? "").contains("HTTP/1.1"))
    }

    /// A header section over the limit (64 KiB here) is 431, and the client gets it even though it
    /// sent more than the server read.
    func testHeaderSectionOverTheLimitIs431() throws {
        let big = try refusal(after: "GET /x HTTP/1.1\r\nHost: t\r\nX-Big: " + String(repeating: "a", count: 70 * 1024) + "\r\n\r\n")
        XCTAssertEqual(big.status, "HTTP/1.1 431 Request Header Fields Too Large")
        XCTAssertEqual(big.connection, "close")
        XCTAssertEqual(big.error["code"] as? String, "request_header_fields_too_large")
        let manyFields = (0..<1100).map { "X-F\($0): v\r\n" }.joined()
        let many = try refusal(after: "GET /x HTTP/1.1\r\nHost: t\r\n" + manyFields + "\r\n")
        XCTAssertEqual(many.status, "HTTP/1.1 431 Request Header Fields Too Large")
    }

    /// Garbage after a complete request whose response is still being produced: no answer may be
    /// written then (it would be taken for the first request's response).
    func testNoErrorAnswerInterleavesWithAResponseInProgress() throws {
        let socket = try TestSocket(port: port)
        try socket.send("POST /hold HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nokGARBAGE\r\n\r\n")
        Thread.sleep(forTimeInterval: 0.2)
        handler.release()
        let response = try socket.readUntilClosed()
        XCTAssertFalse(response.contains("400"), response)
    }

    /// A client that sends half a body and stalls is told why (408 in OpenAI's envelope, body
    /// timeout 500 ms here) and the connection closes.
    func testStalledBodyGets408ThenAClose() throws {
        let socket = try TestSocket(port: port)
        try socket.send("POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n{\"a\"")
        let started = Date()
        let response = try socket.readUntilClosed()
        XCTAssertTrue(response.hasPrefix("HTTP/1.1 408 Request Timeout\r\n"), response)
        XCTAssertTrue(response.lowercased().contains("connection: close\r\n"), response)
        XCTAssertTrue(response.contains("\"error\""), response)
        XCTAssertLessThan(Date().timeIntervalSince(started), 3)
    }

    /// A response to HEAD is its head alone, with the length the body would have: a body would be
    /// read as the start of the next response on the connection.
    func testHEADIsAnsweredWithTheHeadOnlyAndTheConnectionGoesOn() throws {
        let socket = try TestSocket(port: port)
        try socket.send("HEAD /x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello" +
                        "POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\nConnection: close\r\n\r\nnext")
        let all = try socket.readUntilClosed()
        let responses = all.components(separatedBy: "HTTP/1.1 200 OK\r\n").dropFirst()
        XCTAssertEqual(responses.count, 2, all)
        XCTAssertTrue(responses.first?.lowercased().contains("content-length: 5\r\n") ?? false, all)
        XCTAssertTrue(responses.first?.hasSuffix("\r\n\r\n") ?? false, "no body after the head: \(all)")
        XCTAssertTrue(all.hasSuffix("\r\n\r\nnext"), all)
    }

    /// Stopping a server that has stopped (a second shutdown, a cancellation after the end) touches
    /// nothing that is gone: the listener's event loop was shut down with it. Before, the second
    /// shutdown asked that loop to close the listener again — NIO prints "Cannot schedule tasks on an
    /// EventLoop that has already shut down" for it, and crashes under `SWIFTNIO_STRICT`, which
    /// scripts/test sets for the whole suite.
    func testShutdownAfterStoppingIsHarmless() async throws {
        server.shutdownGracefully()
        _ = try await runTask.value
        server.shutdownGracefully()
        server.shutdownGracefully()
        XCTAssertEqual(server.openConnections, 0)
        XCTAssertThrowsError(try TestSocket(port: port), "nothing listens any more")
    }

    func testGracefulShutdownClosesIdleConnections() async throws {
        let socket = try TestSocket(port: port)
        try socket.send("POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nok")
        _ = try socket.readResponse()
        server.shutdownGracefully()
        // The idle keep-alive connection is closed by the server, and run() returns.
        XCTAssertEqual(try socket.readUntilClosed(), "")
        _ = try await runTask.value
    }
}

/// An `HTTPServer` on a free loopback port, one event loop, small limits, running until `stop()`.
final class RunningServer {
    let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    let server: HTTPServer
    let runTask: Task<Void, any Error>
    let port: Int

    init(handler: any RequestHandling, idleTimeoutMs: Int = 5000, bodyTimeoutMs: Int = 500) async throws {
        let server = HTTPServer(
            configuration: .init(host: "127.0.0.1", port: 0, maxBodyBytes: 1024, idleTimeoutMs: idleTimeoutMs, bodyTimeoutMs: bodyTimeoutMs, shutdownGraceSeconds: 1),
            group: group, handler: handler, logger: Logger(label: "test")
        )
        self.server = server
        runTask = Task { try await server.run() }
        for _ in 0..<200 where server.localAddress == nil { try await Task.sleep(for: .milliseconds(10)) }
        port = try XCTUnwrap(server.localAddress?.port)
    }

    func stop() async throws {
        server.shutdownGracefully()
        _ = try? await runTask.value
        try await group.shutdownGracefully()
    }
}

/// A blocking client socket: the simplest honest HTTP/1.1 peer for these tests.
final class TestSocket {
    let fd: Int32
    private var closed = false

    /// - Parameter configure: socket options to set before connecting.
    init(port: Int, configure: (Int32) -> Void = { _ in }) throws {
        fd = Glibc.socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        configure(fd)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard result == 0 else { throw POSIXError(.ECONNREFUSED) }
    }

    deinit { close() }

    func close() {
        guard !closed else { return }
        closed = true
        Glibc.close(fd)
    }

    func send(_ text: String) throws {
        let bytes = Array(text.utf8)
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw POSIXError(.EPIPE) }
            sent += n
        }
    }

    /// Reads one response with a content-length body.
    func readResponse() throws -> String {
        var data = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            if let text = String(bytes: data, encoding: .utf8), let headEnd = text.range(of: "\r\n\r\n") {
                let head = text[..<headEnd.lowerBound].lowercased()
                let length = head.split(separator: "\r\n").first { $0.hasPrefix("content-length:") }
                    .flatMap { Int($0.dropFirst("content-length:".count).trimmingCharacters(in: .whitespaces)) } ?? 0
                if text.utf8.distance(from: headEnd.upperBound.samePosition(in: text.utf8)!, to: text.utf8.endIndex) >= length {
                    return text
                }
            }
            let n = recv(fd, &buffer, buffer.count, 0)
            guard n > 0 else { return String(decoding: data, as: UTF8.self) }
            data.append(contentsOf: buffer[0..<n])
        }
    }

    /// Whether the last `readUntilClosed` ended with a reset instead of an orderly close.
    private(set) var closedByReset = false

    /// Reads what has arrived (at least one byte), as text.
    func readSomeText() throws -> String {
        var buffer = [UInt8](repeating: 0, count: 65536)
        let n = recv(fd, &buffer, buffer.count, 0)
        guard n > 0 else { return "" }
        return String(decoding: buffer[0..<n], as: UTF8.self)
    }

    func readUntilClosed() throws -> String {
        var data = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n < 0 { closedByReset = errno == ECONNRESET }
            guard n > 0 else { return String(decoding: data, as: UTF8.self) }
            data.append(contentsOf: buffer[0..<n])
        }
    }
}
