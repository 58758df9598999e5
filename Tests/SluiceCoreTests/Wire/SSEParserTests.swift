import XCTest
@testable import SluiceCore

final class SSEParserTests: XCTestCase {
    private struct Framed: Equatable {
        var rawByteCount: Int
        var data: String?
        var name: String?
    }

    /// Frames `stream` fed in the given chunks, then finishes.
    private func frame(_ chunks: [[UInt8]], maxEventBytes: Int = SSEParser.defaultMaxEventBytes) throws -> [Framed] {
        var parser = SSEParser(maxEventBytes: maxEventBytes)
        var events: [Framed] = []
        for chunk in chunks {
            try chunk.withUnsafeBytes { raw in
                var offset = 0
                while let event = try parser.nextEvent(in: raw, from: &offset) {
                    events.append(Framed(rawByteCount: event.rawByteCount,
                                         data: event.hasData ? String(decoding: parser.eventData, as: UTF8.self) : nil, name: event.name))
                }
                XCTAssertEqual(offset, raw.count)
            }
        }
        if let last = parser.finish() {
            events.append(Framed(rawByteCount: last.rawByteCount,
                                 data: last.hasData ? String(decoding: parser.eventData, as: UTF8.self) : nil, name: last.name))
        }
        return events
    }

    private static let table: [(name: String, stream: String, events: [Framed])] = [
        ("LF", "data: a\n\ndata: b\n\n", [Framed(rawByteCount: 9, data: "a"), Framed(rawByteCount: 9, data: "b")]),
        ("CRLF", "data: a\r\n\r\ndata:b\r\n\r\n", [Framed(rawByteCount: 11, data: "a"), Framed(rawByteCount: 10, data: "b")]),
        ("CR only", "data: a\r\rdata: b\r\r", [Framed(rawByteCount: 9, data: "a"), Framed(rawByteCount: 9, data: "b")]),
        ("multi-line data joined with LF", "data: {\"a\":\ndata:  1}\n\n", [Framed(rawByteCount: 23, data: "{\"a\":\n 1}")]),
        ("comments, id, retry and names", ": ping\n\nevent: delta\nid: 7\nretry: 10\ndata\n\n",
         [Framed(rawByteCount: 8, data: nil), Framed(rawByteCount: 35, data: "", name: "delta")]),
        ("unterminated last event completed at finish", "data: a\n\ndata: [DONE]\n",
         [Framed(rawByteCount: 9, data: "a"), Framed(rawByteCount: 13, data: "[DONE]")]),
        ("unterminated last line", "data: x", [Framed(rawByteCount: 7, data: "x")]),
        ("blank lines between events", "\n\ndata: a\n\n", [Framed(rawByteCount: 1), Framed(rawByteCount: 1), Framed(rawByteCount: 9, data: "a")]),
    ]

    func testTableWholeAndSplitAtEveryPosition() throws {
        for (name, stream, expected) in Self.table {
            let bytes = Array(stream.utf8)
            XCTAssertEqual(try frame([bytes]), expected, name)
            XCTAssertEqual(expected.reduce(0) { $0 + $1.rawByteCount }, bytes.count, "\(name): events tile the stream")
            for split in 0...bytes.count {
                XCTAssertEqual(try frame([Array(bytes[..<split]), Array(bytes[split...])]), expected, "\(name) split at \(split)")
            }
            XCTAssertEqual(try frame(bytes.map { [$0] }), expected, "\(name) byte by byte")
        }
    }

    func testOversizeEventFails() throws {
        let big = Array(("data: " + String(repeating: "x", count: 100) + "\n\n").utf8)
        XCTAssertThrowsError(try frame([big], maxEventBytes: 64)) { error in
            XCTAssertEqual(error as? SSEParseError, .eventTooLarge(limit: 64))
        }
        // Split into small chunks: the partial line is bounded too.
        XCTAssertThrowsError(try frame(stride(from: 0, to: big.count, by: 8).map { Array(big[$0..<min($0 + 8, big.count)]) }, maxEventBytes: 64))
        XCTAssertEqual(try frame([big], maxEventBytes: big.count).count, 1)
    }

    /// Found with fuzz-sse-relay's tiling property: a last line ending in a lone CR that took its
    /// event one byte past the limit made `finish()` fail silently (nil, as on an event boundary),
    /// so the events no longer covered the stream. The CR now counts when it is consumed.
    func testCRAtTheEndCountsTowardsTheLimit() throws {
        let line = "data: " + String(repeating: "x", count: 58) // 64 bytes
        let stream = Array((line + "\r").utf8)
        XCTAssertThrowsError(try frame([stream], maxEventBytes: 64)) { error in
            XCTAssertEqual(error as? SSEParseError, .eventTooLarge(limit: 64))
        }
        XCTAssertThrowsError(try frame(stream.map { [$0] }, maxEventBytes: 64), "byte by byte")
        let oneMore = Framed(rawByteCount: 65, data: String(repeating: "x", count: 58))
        XCTAssertEqual(try frame([stream], maxEventBytes: 65), [oneMore])
        XCTAssertEqual(try frame(stream.map { [$0] }, maxEventBytes: 65), [oneMore], "byte by byte")
        // Split CRLF: the LF is the byte that does not fit.
        XCTAssertThrowsError(try frame([stream, [0x0A, 0x0A]], maxEventBytes: 65))
    }
}
