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

/// How a connection ends a running request when the client leaves, and how it ends a response it
/// closes after: over real sockets, with a handler that streams the way the relay step does.
final class HTTPConnectionHandlerTests: XCTestCase {
    /// `/stream?chunks=N`: a streamed answer of N chunks of 16 KiB, then its end.
    /// `/quiet`: a stream head, then nothing until the task is cancelled (an upstream gone quiet).
    /// Records how each request ended.
    final class StreamingHandler: RequestHandling {
        enum Ending: Equatable, Sendable { case completed, writeFailed, cancelled }
        private let endings = Mutex<[Ending]>([])

        var ended: [Ending] { endings.withLock { $0 } }

        func handle(_ request: HTTPRequest, writer: ResponseWriter) async {
            let ending = await respond(request, writer: writer)
            endings.withLock { $0.append(ending) }
        }

        private func respond(_ request: HTTPRequest, writer: ResponseWriter) async -> Ending {
            var headers = HTTPHeaders()
            headers.add(name: "content-type", value: "text/event-stream")
            do {
                try await writer.writeStreamHead(status: .ok, headers: headers)
                if request.head.uri == "/quiet" {
                    do { try await Task.sleep(for: .seconds(60)) } catch { return .cancelled }
                    return .completed
                }
                let chunks = Int(request.head.uri.split(separator: "=").last ?? "") ?? 1000
                let chunk = ByteBuffer(repeating: UInt8(ascii: "x"), count: 16 * 1024)
                for _ in 0..<chunks { try await writer.writeStreamChunk(chunk) }
                try await writer.endStream()
                return .completed
            } catch {
                return .writeFailed
            }
        }
    }

    private var handler: StreamingHandler!
    private var running: RunningServer!
    private var port: Int { running.port }

    override func setUp() async throws {
        handler = StreamingHandler()
        running = try await RunningServer(handler: handler)
    }

    override func tearDown() async throws {
        try await running.stop()
    }

    private func waitForEndings(_ count: Int, within seconds: Double) async -> [StreamingHandler.Ending] {
        let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        while handler.ended.count < count, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(20))
        }
        return handler.ended
    }

    /// A client that stops reading a stream (the writes wait for a socket that is not writable) and
    /// then closes with the answer unread resets the connection. The request must end then, not
    /// wait for ever (before, the reset reached `errorCaught` first, which forgot the running request).
    func testStreamAbandonedByAClientThatStoppedReadingEnds() async throws {
        let socket = try TestSocket(port: port, receiveBufferBytes: 4096)
        try socket.send("GET /stream?chunks=100000 HTTP/1.1\r\nhost: x\r\n\r\n")
        _ = try socket.readSome()
        try await Task.sleep(for: .milliseconds(500))  // the server's writes now wait for writability
        XCTAssertEqual(handler.ended, [])
        socket.close()  // unread data: the kernel answers with a reset
        let ended = await waitForEndings(1, within: 5)
        XCTAssertEqual(ended, [.writeFailed])
    }

    /// A client that leaves while its upstream is quiet (nothing is being written) is noticed at once:
    /// the request's task is cancelled.
    func testClientLeavingWhileNothingIsWrittenCancelsTheRequest() async throws {
        let socket = try TestSocket(port: port)
        try socket.send("GET /quiet HTTP/1.1\r\nhost: x\r\n\r\n")
        _ = try socket.readSome()
        socket.close()
        let ended = await waitForEndings(1, within: 3)
        XCTAssertEqual(ended, [.cancelled])
    }

    /// The same, when the client resets the connection instead of closing it.
    func testClientResettingWhileNothingIsWrittenCancelsTheRequest() async throws {
        let socket = try TestSocket(port: port)
        try socket.send("GET /quiet HTTP/1.1\r\nhost: x\r\n\r\n")
        _ = try socket.readSome()
        socket.reset()
        let ended = await waitForEndings(1, within: 3)
        XCTAssertEqual(ended, [.cancelled])
    }

    /// Under `Connection: close` the connection closes after the response, but only once all of it was
    /// written: a slow reader still gets every chunk and the terminating chunk (before, the close
    /// dropped whatever the socket had not taken yet).
    func testConnectionCloseStreamReachesASlowReaderWhole() async throws {
        let chunks = 64
        let socket = try TestSocket(port: port, receiveBufferBytes: 4096)
        try socket.send("GET /stream?chunks=\(chunks) HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        try await Task.sleep(for: .milliseconds(300))  // let the server run ahead of the reader
        let ended = await waitForEndings(1, within: 10)
        XCTAssertEqual(ended, [.completed])
        let response = try socket.readAllBytes()
        let text = String(decoding: response, as: UTF8.self)
        XCTAssertTrue(text.hasSuffix("\r\n0\r\n\r\n"), "the terminating chunk is missing: the stream was cut")
        let body = try XCTUnwrap(text.range(of: "\r\n\r\n")).upperBound
        XCTAssertEqual(text[body...].utf8.filter { $0 == UInt8(ascii: "x") }.count, chunks * 16 * 1024)
    }
}

extension TestSocket {
    convenience init(port: Int, receiveBufferBytes: Int32) throws {
        try self.init(port: port, configure: { fd in
            var size = receiveBufferBytes
            setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
        })
    }

    /// Reads what has arrived (at least one byte).
    func readSome() throws -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: 4096)
        let n = recv(fd, &buffer, buffer.count, 0)
        guard n > 0 else { throw POSIXError(.ECONNRESET) }
        return Array(buffer[0..<n])
    }

    /// Reads until the server closes.
    func readAllBytes() throws -> [UInt8] {
        var data = [UInt8]()
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = recv(fd, &buffer, buffer.count, 0)
            guard n > 0 else { return data }
            data.append(contentsOf: buffer[0..<n])
        }
    }

    /// Closes with a reset (SO_LINGER 0), as a client killed mid-request does.
    func reset() {
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        close()
    }
}
