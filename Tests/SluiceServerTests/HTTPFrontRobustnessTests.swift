import Logging
import NIOCore
import NIOEmbedded
import NIOHTTP1
import XCTest
@testable import SluiceServer

#if canImport(Glibc)
import Glibc
#endif

/// The HTTP front door against requests mangled at random, over real sockets: whatever arrives, the
/// client gets well-formed HTTP/1.1 responses (or none) and the connection ends (short idle and body
/// timeouts here: a request cut short is answered 408); no connection or task is left behind, and
/// the server goes on serving. Seeded: a failure names its case.
final class HTTPFrontRobustnessTests: XCTestCase {
    private var handler: HTTPServerTests.EchoHandler!
    private var running: RunningServer!

    override func setUp() async throws {
        handler = HTTPServerTests.EchoHandler()
        running = try await RunningServer(handler: handler, idleTimeoutMs: 300, bodyTimeoutMs: 200)
    }

    override func tearDown() async throws {
        try await running.stop()
    }

    /// Requests the mangling starts from: plain, with a body, chunked, pipelined, `Expect`, oversized.
    private static let seeds: [String] = [
        "GET /x HTTP/1.1\r\nHost: t\r\n\r\n",
        "POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 11\r\nContent-Type: application/json\r\n\r\n{\"a\":[1,2]}",
        "POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
        "POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nonePOST /y HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\ntwo",
        "POST /x HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\nbody",
        "POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 2000\r\n\r\n" + String(repeating: "z", count: 2000),
        "GET /x HTTP/1.0\r\n\r\n",
    ]

    private static let alphabet = Array("\r\n :;/\t0123456789aAzZ-\u{7f}".utf8) + [0, 0xff, 0x80]

    func testMangledRequestsGetWellFormedAnswersAndNothingIsLeftBehind() async throws {
        var random = SplitMix64(seed: 0x5_11CE)
        var statuses: [UInt: Int] = [:]
        // In batches of connections open at once: each ends by a timeout at the latest.
        for batch in 0..<6 {
            var cases: [(index: Int, bytes: [UInt8], socket: TestSocket)] = []
            for index in (batch * 50)..<(batch * 50 + 50) {
                var bytes = Array(Self.seeds[Int(random.next() % UInt64(Self.seeds.count))].utf8)
                // A third of the cases unmangled (answered by the handler), the rest one or two changes.
                for _ in 0..<(random.next() % 3) { Self.mangle(&bytes, &random) }
                let socket = try TestSocket(port: running.port)
                _ = bytes.withUnsafeBytes { Glibc.send(socket.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                cases.append((index, bytes, socket))
            }
            let started = ContinuousClock.now
            for (index, bytes, socket) in cases {
                let answer = Self.readUntilClosed(socket.fd)
                do {
                    for status in try Self.checkWellFormed(answer) { statuses[status, default: 0] += 1 }
                } catch {
                    XCTFail("case \(index): \(error)\nsent: \(String(decoding: bytes, as: UTF8.self).debugDescription)\ngot: \(String(decoding: answer, as: UTF8.self).debugDescription)")
                    return
                }
            }
            XCTAssertLessThan(ContinuousClock.now - started, .seconds(4), "a connection was left open")
        }
        // The cases reach both the handler and the refusals (else the mangling tests nothing).
        print("mangled requests answered, by status: \(statuses.sorted { $0.key < $1.key })")
        XCTAssertGreaterThan(statuses[200] ?? 0, 50, "\(statuses)")
        XCTAssertGreaterThan(statuses[400] ?? 0, 50, "\(statuses)")
        // Nothing left behind, and still serving.
        for _ in 0..<100 where running.server.openConnections > 0 || running.server.runningTasks > 0 {
            try await Task.sleep(for: .milliseconds(20))
        }
        XCTAssertEqual(running.server.openConnections, 0)
        XCTAssertEqual(running.server.runningTasks, 0)
        let socket = try TestSocket(port: running.port)
        try socket.send("POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nok")
        XCTAssertTrue(try socket.readResponse().hasSuffix("\r\n\r\nok"))
    }

    /// The bytes as they came (the echoed bodies need not be UTF-8), until the server closes.
    private static func readUntilClosed(_ fd: Int32) -> [UInt8] {
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = recv(fd, &buffer, buffer.count, 0)
            guard n > 0 else { return received }
            received.append(contentsOf: buffer[0..<n])
        }
    }

    private static func mangle(_ bytes: inout [UInt8], _ random: inout SplitMix64) {
        guard !bytes.isEmpty else { return }
        let at = Int(random.next() % UInt64(bytes.count))
        switch random.next() % 5 {
        case 0: bytes[at] = alphabet[Int(random.next() % UInt64(alphabet.count))]
        case 1: bytes.insert(alphabet[Int(random.next() % UInt64(alphabet.count))], at: at)
        case 2: bytes.removeSubrange(at..<min(bytes.count, at + 1 + Int(random.next() % 8)))
        case 3: bytes.insert(contentsOf: bytes[at..<min(bytes.count, at + 1 + Int(random.next() % 16))], at: at)
        default: bytes.removeSubrange(at...)
        }
    }

    struct Malformed: Error, CustomStringConvertible { let description: String }

    /// The answer is zero or more complete HTTP/1.1 responses (interim `100 Continue` allowed), as
    /// NIO's response decoder reads them; errors are in OpenAI's envelope.
    private static func checkWellFormed(_ answer: [UInt8]) throws -> [UInt] {
        guard !answer.isEmpty else { return [] }
        let decoder = EmbeddedChannel(handler: ByteToMessageHandler(HTTPResponseDecoder(informationalResponseStrategy: .drop)))
        for _ in 0..<16 {
            try decoder.writeOutbound(HTTPClientRequestPart.head(HTTPRequestHead(version: .http1_1, method: .GET, uri: "/")))
        }
        try decoder.writeInbound(ByteBuffer(bytes: answer))
        var statuses: [UInt] = [], ends = 0, body = ""
        var heads: Int { statuses.count }
        while let part = try decoder.readInbound(as: HTTPClientResponsePart.self) {
            switch part {
            case .head(let head):
                statuses.append(head.status.code)
                body = ""
                if head.status.code >= 400, head.headers.first(name: "content-type") != "application/json" {
                    throw Malformed(description: "an error without OpenAI's envelope: \(head.status)")
                }
            case .body(let bytes): body += String(buffer: bytes)
            case .end: ends += 1
            }
        }
        // Only an interim `100 Continue` is an answer too: the client's side ended before its body.
        let onlyContinue = answer == Array("HTTP/1.1 100 Continue\r\n\r\n".utf8)
        guard heads == ends, heads > 0 || onlyContinue else { throw Malformed(description: "\(heads) heads, \(ends) complete responses") }
        _ = try? decoder.finish()
        return statuses
    }
}

/// A small, seedable generator (SplitMix64), so a failing case can be replayed.
private struct SplitMix64: RandomNumberGenerator {
    private var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE5_E4B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
