import NIOCore
import NIOEmbedded
import XCTest
@testable import SluiceServer

/// Deterministic tests of a connection's deadlines on an `EmbeddedEventLoop` with a manual clock.
/// (Over real sockets, the 408 and close: `HTTPServerTests`.)
final class ConnectionDeadlinesTests: XCTestCase {
    private var loop: EmbeddedEventLoop!
    private var expired: [ConnectionDeadlines.Expiry] = []

    override func setUp() {
        loop = EmbeddedEventLoop()
        expired = []
    }

    private func makeDeadlines() -> ConnectionDeadlines {
        let deadlines = ConnectionDeadlines(idleTimeout: .seconds(10), bodyTimeout: .seconds(2), eventLoop: loop) { [unowned self] in
            expired.append($0)
        }
        deadlines.connectionOpened()
        return deadlines
    }

    func testIdleConnectionExpiresAfterTheIdleTimeout() {
        let deadlines = makeDeadlines()
        loop.advanceTime(by: .seconds(9))
        XCTAssertEqual(expired, [])
        loop.advanceTime(by: .seconds(2))
        XCTAssertEqual(expired, [.idle])
        loop.advanceTime(by: .seconds(60))
        XCTAssertEqual(expired, [.idle], "told once")
        deadlines.stop()
    }

    func testStalledBodyExpiresAfterTheBodyTimeout() {
        let deadlines = makeDeadlines()
        deadlines.requestStarted()
        loop.advanceTime(by: .seconds(3))
        XCTAssertEqual(expired, [.requestBody])
        deadlines.stop()
    }

    /// The deadlines are checked lazily (no timer per phase change): a body deadline that starts late
    /// in an idle period still passes on time, not at the next idle check.
    func testBodyDeadlineStartedLateInAnIdlePeriodPassesOnTime() {
        let deadlines = makeDeadlines()
        loop.advanceTime(by: .seconds(9))
        deadlines.requestStarted()
        loop.advanceTime(by: .milliseconds(1_900))
        XCTAssertEqual(expired, [], "not yet: 1.9 s of the 2 s")
        loop.advanceTime(by: .milliseconds(200))
        XCTAssertEqual(expired, [.requestBody])
        deadlines.stop()
    }

    /// Requests that keep coming keep a connection open however long it lives.
    func testBusyKeepAliveConnectionNeverExpires() {
        let deadlines = makeDeadlines()
        for _ in 0..<10 {
            loop.advanceTime(by: .seconds(8))
            deadlines.requestStarted()
            deadlines.requestRead()
            loop.advanceTime(by: .seconds(1))
            deadlines.responseEnded()
        }
        XCTAssertEqual(expired, [])
        loop.advanceTime(by: .seconds(10))
        XCTAssertEqual(expired, [.idle], "idle for the idle timeout after the last response")
        deadlines.stop()
    }

    func testLongResponseIsNotIdle() {
        let deadlines = makeDeadlines()
        deadlines.requestStarted()
        deadlines.requestRead()
        // The request is complete; producing the response can take far longer than any timeout.
        loop.advanceTime(by: .seconds(600))
        XCTAssertEqual(expired, [])
        // After the response ends, the idle clock starts.
        deadlines.responseEnded()
        loop.advanceTime(by: .seconds(11))
        XCTAssertEqual(expired, [.idle])
        deadlines.stop()
    }

    func testStoppedDeadlinesNeverExpire() {
        let deadlines = makeDeadlines()
        deadlines.requestStarted()
        deadlines.stop()
        loop.advanceTime(by: .seconds(60))
        XCTAssertEqual(expired, [])
    }
}
