import XCTest
@testable import SluiceServer

final class ConfigChangeDetectorTests: XCTestCase {
    private let a = ConfigFileState.content(sha256: String(repeating: "a", count: 64))
    private let b = ConfigFileState.content(sha256: String(repeating: "b", count: 64))
    private let c = ConfigFileState.content(sha256: String(repeating: "c", count: 64))

    /// Each case: looks at the file (milliseconds since start, what was there) and the looks after
    /// which a change is reported; the baseline is `a`, the settle delay 500 ms.
    func testReportsAContentOnceItHasSettled() {
        let cases: [(name: String, looks: [(ms: Int, state: ConfigFileState)], reported: [Int: ConfigFileState])] = [
            ("the same content: nothing", [(0, a), (1000, a), (2000, a)], [:]),
            ("a change, seen again 500 ms later", [(0, b), (500, b)], [1: b]),
            ("a change not yet settled", [(0, b), (499, b)], [:]),
            ("reported once, then it is the baseline", [(0, b), (500, b), (1000, b), (2000, b)], [1: b]),
            ("changed back before settling: nothing", [(0, b), (500, a), (1000, a)], [:]),
            ("a second change restarts the delay", [(0, b), (300, c), (600, c), (800, c)], [3: c]),
            ("an unreadable file is a change too", [(0, .unreadable), (500, .unreadable)], [1: .unreadable]),
            ("then the file back as it was loaded", [(0, .unreadable), (500, .unreadable), (1000, a), (1500, a)], [1: .unreadable, 3: a]),
        ]
        let start = ContinuousClock.now
        for testCase in cases {
            var detector = ConfigChangeDetector(baseline: a, settleDelay: .milliseconds(500))
            var reported: [Int: ConfigFileState] = [:]
            for (index, look) in testCase.looks.enumerated() {
                if let state = detector.observe(look.state, at: start + .milliseconds(look.ms)) { reported[index] = state }
            }
            XCTAssertEqual(reported, testCase.reported, testCase.name)
        }
    }

    func testLooksAgainWhenTheSettleDelayEnds() {
        let start = ContinuousClock.now
        var detector = ConfigChangeDetector(baseline: a, settleDelay: .milliseconds(500))
        XCTAssertEqual(detector.nextLook(after: start, pollInterval: .seconds(1)), start + .seconds(1))
        _ = detector.observe(b, at: start)
        XCTAssertEqual(detector.nextLook(after: start, pollInterval: .seconds(1)), start + .milliseconds(500))
        XCTAssertEqual(detector.observe(b, at: start + .milliseconds(500)), b)
        XCTAssertEqual(detector.nextLook(after: start + .milliseconds(500), pollInterval: .seconds(1)), start + .milliseconds(1500))
    }

    /// A SIGHUP reload took the content first: the detector does not report it again, and a later
    /// return to the old content is a change.
    func testRebaseOnAContentLoadedByOtherMeans() {
        let start = ContinuousClock.now
        var detector = ConfigChangeDetector(baseline: a, settleDelay: .milliseconds(500))
        _ = detector.observe(b, at: start)
        detector.rebase(on: b)
        XCTAssertNil(detector.candidate)
        XCTAssertNil(detector.observe(b, at: start + .milliseconds(500)))
        XCTAssertNil(detector.observe(a, at: start + .seconds(1)))
        XCTAssertEqual(detector.observe(a, at: start + .milliseconds(1500)), a)
    }
}
