import Synchronization
import XCTest
@testable import SluiceCore

final class CircuitBreakerTests: XCTestCase {
    private final class ManualClock: Sendable {
        let millis = Mutex<Int64>(10_000)
        func advance(_ ms: Int64) { millis.withLock { $0 += ms } }
    }

    private func makeBreaker(_ clock: ManualClock) -> CircuitBreaker {
        CircuitBreaker(configuration: .init(failureThreshold: 3, openMillis: 1_000)) { clock.millis.withLock { $0 } }
    }

    func testOpensAfterConsecutiveFailuresOnly() {
        let clock = ManualClock()
        let breaker = makeBreaker(clock)
        // Failures interrupted by a success do not add up.
        for outcome in [true, true, false, true, true] {
            XCTAssertEqual(breaker.acquire(), .allow)
            breaker.record(upstreamDown: outcome)
        }
        XCTAssertFalse(breaker.isOpen)
        XCTAssertEqual(breaker.acquire(), .allow)
        breaker.record(upstreamDown: true)
        XCTAssertTrue(breaker.isOpen)
        XCTAssertEqual(breaker.acquire(), .reject(retryAfterSeconds: 1.0))
        clock.advance(400)
        XCTAssertEqual(breaker.acquire(), .reject(retryAfterSeconds: 0.6))
    }

    func testHalfOpenLetsOneProbeThroughAndItsOutcomeDecides() {
        let clock = ManualClock()
        let breaker = makeBreaker(clock)
        for _ in 0..<3 { _ = breaker.acquire(); breaker.record(upstreamDown: true) }
        clock.advance(1_000)
        XCTAssertEqual(breaker.acquire(), .probe)
        XCTAssertEqual(breaker.acquire(), .reject(retryAfterSeconds: 1), "one probe at a time")
        // The probe fails: open again for a full period.
        breaker.record(upstreamDown: true)
        XCTAssertEqual(breaker.acquire(), .reject(retryAfterSeconds: 1.0))
        clock.advance(1_000)
        XCTAssertEqual(breaker.acquire(), .probe)
        breaker.record(upstreamDown: false)
        XCTAssertFalse(breaker.isOpen)
        XCTAssertEqual(breaker.acquire(), .allow)
    }

    /// `record` reports the changes it makes, which the failover turns into its mode changes.
    func testRecordReportsWhenTheCircuitOpensAndCloses() {
        let clock = ManualClock()
        let breaker = makeBreaker(clock)
        XCTAssertNil(breaker.record(upstreamDown: true))
        XCTAssertNil(breaker.record(upstreamDown: true))
        XCTAssertEqual(breaker.record(upstreamDown: true), .opened)
        XCTAssertNil(breaker.record(upstreamDown: true), "already open")
        XCTAssertEqual(breaker.record(upstreamDown: false), .closed)
        XCTAssertNil(breaker.record(upstreamDown: false), "already closed")
    }
}
