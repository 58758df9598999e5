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

    /// The access log's `duration_ms`: two decimals, truncated, without Foundation's formatter.
    func testAccessLogDurationFormat() {
        XCTAssertEqual(Gateway.milliseconds(.milliseconds(1234)), "1234.00")
        XCTAssertEqual(Gateway.milliseconds(.microseconds(12_345)), "12.34")
        XCTAssertEqual(Gateway.milliseconds(.microseconds(5)), "0.00")
        XCTAssertEqual(Gateway.milliseconds(.seconds(2) + .microseconds(50)), "2000.05")
        XCTAssertEqual(Gateway.milliseconds(.microseconds(1_090)), "1.09")
    }
}
