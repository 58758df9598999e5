import Foundation
import Logging
import Synchronization
import XCTest
@testable import SluiceServer

final class LogLineHandlerTests: XCTestCase {
    private final class Captured: Sendable {
        let lines = Mutex<[String]>([])
        var sink: LogLineHandler.Sink {
            { bytes in self.lines.withLock { $0.append(String(decoding: bytes, as: UTF8.self)) } }
        }
    }

    /// The line format is swift-log's StreamLogHandler's, field for field.
    func testLinesHaveStreamLogHandlersFormat() throws {
        let captured = Captured()
        var logger = Logger(label: "sluice") { LogLineHandler(label: $0, sink: captured.sink) }
        logger[metadataKey: "node"] = "n1"
        logger.info("request", metadata: ["status": "200", "key": "demo"], source: "SluiceServer")
        logger.debug("not at info")
        logger.warning("plain", source: "SluiceRedis")
        let lines = captured.lines.withLock { $0 }
        XCTAssertEqual(lines.count, 2)
        let time = #"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}[+-]\d{4}"#
        let first = try XCTUnwrap(lines.first)
        XCTAssertNotNil(first.range(of: "^\(time) info sluice: key=demo node=n1 status=200 \\[SluiceServer\\] request\\n$", options: .regularExpression), first)
        XCTAssertNotNil(lines[1].range(of: "^\(time) warning sluice: node=n1 \\[SluiceRedis\\] plain\\n$", options: .regularExpression), lines[1])
    }

    // MARK: log.format: json

    private func jsonObject(_ line: String) throws -> [String: Any] {
        XCTAssertTrue(line.hasSuffix("\n"))
        XCTAssertEqual(line.dropLast().filter { $0 == "\n" || $0 == "\r" }.count, 0, "one entry, one line")
        let object = try JSONSerialization.jsonObject(with: Data(line.utf8))
        return try XCTUnwrap(object as? [String: Any], line)
    }

    func testJSONLinesHaveStableFieldsAndTheMetadata() throws {
        let captured = Captured()
        var logger = Logger(label: "sluice") { LogLineHandler(label: $0, format: .json, sink: captured.sink) }
        logger[metadataKey: "node"] = "n1"
        logger.info("request", metadata: [
            "status": "200", "prompt_tokens": .stringConvertible(12),
            "limits": ["rpm": "60"], "models": ["a", "b"], "message": "a field named like a reserved one",
        ], source: "SluiceServer")
        let line = try XCTUnwrap(captured.lines.withLock { $0.first })
        let object = try jsonObject(line)
        XCTAssertEqual(object["level"] as? String, "info")
        XCTAssertEqual(object["logger"] as? String, "sluice")
        XCTAssertEqual(object["source"] as? String, "SluiceServer")
        XCTAssertEqual(object["message"] as? String, "request")
        XCTAssertEqual(object["metadata.message"] as? String, "a field named like a reserved one")
        XCTAssertEqual(object["node"] as? String, "n1")
        XCTAssertEqual(object["status"] as? String, "200")
        XCTAssertEqual(object["prompt_tokens"] as? String, "12")
        XCTAssertEqual(object["limits"] as? [String: String], ["rpm": "60"])
        XCTAssertEqual(object["models"] as? [String], ["a", "b"])
        let time = try XCTUnwrap(object["time"] as? String)
        XCTAssertNotNil(time.range(of: #"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}[+-]\d{4}$"#, options: .regularExpression), time)
        XCTAssertTrue(line.hasPrefix(#"{"time":""#), "time first, for people reading raw lines")
    }

    /// Whatever a client puts in a value (a model name, say) comes back exactly from a JSON parser,
    /// and cannot end the line, forge a field or carry terminal or bidirectional controls raw.
    func testJSONEscapesEveryClientValueAndRoundTrips() throws {
        let captured = Captured()
        let logger = Logger(label: "t") { LogLineHandler(label: $0, format: .json, sink: captured.sink) }
        let hostile = "gpt\"}\n{\"level\":\"critical\"\\ \u{1B}[31m\u{0}\u{7F}\u{85}\u{2028}\u{202E}é😀"
        logger.warning("model \(hostile)", metadata: ["model": .string(hostile)])
        let line = try XCTUnwrap(captured.lines.withLock { $0.first })
        let object = try jsonObject(line)
        XCTAssertEqual(object["model"] as? String, hostile)
        XCTAssertEqual(object["message"] as? String, "model \(hostile)")
        XCTAssertEqual(object["level"] as? String, "warning")
        for raw in ["\u{1B}", "\u{0}", "\u{7F}", "\u{85}", "\u{2028}", "\u{202E}"] {
            XCTAssertFalse(line.unicodeScalars.contains(raw.unicodeScalars.first!), "raw U+\(String(raw.unicodeScalars.first!.value, radix: 16)) in the line")
        }
        XCTAssertTrue(line.contains("é😀"), "printable text stays as it is")
    }

    func testTheTimeIsTheLocalTimeOfTheSecond() throws {
        let captured = Captured()
        let logger = Logger(label: "t") { LogLineHandler(label: $0, sink: captured.sink) }
        let before = Date()
        logger.error("x")
        let line = try XCTUnwrap(captured.lines.withLock { $0.first })
        let formatter = DateFormatter()
        formatter.locale = Locale(identifier: "en_US_POSIX")
        formatter.dateFormat = "yyyy-MM-dd'T'HH:mm:ssZ"
        let stamp = try XCTUnwrap(formatter.date(from: String(line.prefix { $0 != " " })))
        XCTAssertLessThanOrEqual(abs(stamp.timeIntervalSince(before)), 2)
    }

    func testAnErrorIsReportedLikeStreamLogHandlerDoes() throws {
        struct Broken: Error {}
        let captured = Captured()
        let logger = Logger(label: "t") { LogLineHandler(label: $0, sink: captured.sink) }
        logger.log(level: .error, "failed", error: Broken())
        let line = try XCTUnwrap(captured.lines.withLock { $0.first })
        XCTAssertTrue(line.contains("error.message=Broken() error.type="), line)
    }

    /// A value a client chose (a model name) with a newline, NUL, ESC, a C1 control or a line
    /// separator stays on its entry's one line, each character written as a visible escape.
    func testControlCharactersInValuesAreEscapedOnOneLine() throws {
        let captured = Captured()
        let logger = Logger(label: "sluice") { LogLineHandler(label: $0, sink: captured.sink) }
        let model = "gpt-4o\n2026-01-01T00:00:00+0000 critical sluice: key=admin FORGED LOG LINE\r\u{0}\u{1B}[31m\t\u{7F}\u{85}\u{2028}\u{202E}\\n"
        logger.info("request", metadata: ["model": "\(model)", "status": "200"])
        logger.warning("message with\na newline")
        let lines = captured.lines.withLock { $0 }
        XCTAssertEqual(lines.count, 2)
        let first = try XCTUnwrap(lines.first)
        XCTAssertEqual(first.filter { $0 == "\n" }.count, 1, first)
        XCTAssertTrue(first.hasSuffix(#"info sluice: model=gpt-4o\n2026-01-01T00:00:00+0000 critical sluice: key=admin FORGED LOG LINE\r\0\u{1B}[31m\t\u{7F}\u{85}\u{2028}\u{202E}\\n status=200 [SluiceServerTests] request"# + "\n"), first)
        XCTAssertFalse(first.unicodeScalars.contains { $0.value < 0x20 && $0 != "\n" || (0x7F...0x9F).contains($0.value) }, first)
        XCTAssertTrue(lines[1].hasSuffix(#"[SluiceServerTests] message with\na newline"# + "\n"), lines[1])
    }

    /// Ordinary text, non-ASCII letters and punctuation included, is written as it is.
    func testOrdinaryTextIsNotEscaped() {
        for text in ["request", "model=gpt-4o-mini é ü ©°« — … “quoted” 日本語 🙂", "path /v1/chat/completions"] {
            let needs = text.utf8.withContiguousStorageIfAvailable(LogLineHandler.needsEscaping)
            XCTAssertEqual(needs, false, text)
            XCTAssertEqual(LogLineHandler.escaped(text), text)
        }
        for text in ["a\nb", "\u{85}", "\u{2029}", "\u{2067}", "back\\slash", "\u{7F}"] {
            XCTAssertEqual(text.utf8.withContiguousStorageIfAvailable(LogLineHandler.needsEscaping), true, text.debugDescription)
        }
    }

    /// A client's value is cut to 256 bytes in a log line, at a character boundary, with its size.
    func testLoggedClientValuesAreBounded() {
        XCTAssertEqual(RequestLogger.bounded("gpt-4o"), "gpt-4o")
        let exact = String(repeating: "m", count: 256)
        XCTAssertEqual(RequestLogger.bounded(exact), exact)
        XCTAssertEqual(RequestLogger.bounded(String(repeating: "m", count: 100_000)), String(repeating: "m", count: 256) + "…(100000 bytes)")
        // "é" is two bytes: the cut does not split it.
        let accented = String(repeating: "m", count: 255) + "é" + "tail"
        XCTAssertEqual(RequestLogger.bounded(accented), String(repeating: "m", count: 255) + "…(261 bytes)")
    }

    /// The access log's `duration_ms`: two decimals, truncated, without Foundation's formatter.
    func testAccessLogDurationFormat() {
        XCTAssertEqual(Gateway.milliseconds(.milliseconds(1234)), "1234.00")
        XCTAssertEqual(Gateway.milliseconds(.microseconds(12_345)), "12.34")
        XCTAssertEqual(Gateway.milliseconds(.microseconds(5)), "0.00")
        XCTAssertEqual(Gateway.milliseconds(.seconds(2) + .microseconds(50)), "2000.05")
        XCTAssertEqual(Gateway.milliseconds(.microseconds(1_090)), "1.09")
    }
}
