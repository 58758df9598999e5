import XCTest
@testable import SluiceCore

final class AdmissionTimelineTests: XCTestCase {
    func testPeakCountsTheBusiestHalfOpenWindow() {
        var timeline = AdmissionTimeline()
        for time in [0.0, 0.1, 0.2, 1.0, 1.05, 1.1, 1.15, 3.0] { timeline.record(time: time) }
        // [0.2, 1.2) holds 0.2, 1.0, 1.05, 1.1, 1.15; [0.1, 1.1) only four: 1.1 - 0.1 = 1.0 is excluded.
        XCTAssertEqual(timeline.peak(windowSeconds: 1), 5)
        XCTAssertEqual(timeline.peak(windowSeconds: 1.2), 7)
        XCTAssertEqual(timeline.peak(windowSeconds: 10), 8)
        XCTAssertEqual(timeline.peak(windowSeconds: 0.01), 1)
    }

    func testPeakDoesNotDependOnTheOrderOfRecording() {
        var forward = AdmissionTimeline()
        var shuffled = AdmissionTimeline()
        let times = (0..<40).map { Double($0) * 0.25 }
        for time in times { forward.record(time: time) }
        for time in times.reversed() { shuffled.record(time: time) }
        XCTAssertEqual(forward.peak(windowSeconds: 1), 4)
        XCTAssertEqual(shuffled.peak(windowSeconds: 1), 4)
    }

    func testWeightsAreSummed() {
        var tokens = AdmissionTimeline()
        tokens.record(time: 0, weight: 100)
        tokens.record(time: 0.5, weight: 300)
        tokens.record(time: 1.6, weight: 50)
        XCTAssertEqual(tokens.peak(windowSeconds: 1), 400)
        XCTAssertEqual(tokens.peak(windowSeconds: 1.2), 400)
        XCTAssertEqual(tokens.peak(windowSeconds: 1.7), 450)
        XCTAssertEqual(tokens.total, 450)
        XCTAssertEqual(tokens.largestWeight, 300)
    }

    func testMergeKeepsEveryEntry() {
        var a = AdmissionTimeline()
        var b = AdmissionTimeline()
        a.record(time: 0.0)
        a.record(time: 0.4)
        b.record(time: 0.2)
        a.merge(b)
        XCTAssertEqual(a.total, 3)
        XCTAssertEqual(a.peak(windowSeconds: 0.5), 3)
    }

    func testEmptyTimelineAndNonPositiveWindow() {
        XCTAssertEqual(AdmissionTimeline().peak(windowSeconds: 1), 0)
        var one = AdmissionTimeline()
        one.record(time: 1)
        XCTAssertEqual(one.peak(windowSeconds: 0), 0)
        XCTAssertEqual(one.largestWeight, 1)
    }

    func testBoundIsBurstPlusRateTimesWindow() {
        // 60/min with a burst of 10: 11 in one second, 15 in five, 20 in ten.
        XCTAssertEqual(AdmissionTimeline.bound(burst: 10, perMinute: 60, windowSeconds: 1), 11)
        XCTAssertEqual(AdmissionTimeline.bound(burst: 10, perMinute: 60, windowSeconds: 5), 15)
        XCTAssertEqual(AdmissionTimeline.bound(burst: 10, perMinute: 60, windowSeconds: 10), 20)
    }

    func testNearestRankPercentiles() {
        let samples = (1...100).map(Double.init).reversed()
        let percentiles = LatencyPercentiles(samples: Array(samples))
        XCTAssertEqual(percentiles, LatencyPercentiles(p50: 50, p95: 95, p99: 99))
        XCTAssertEqual(LatencyPercentiles(samples: [7]), LatencyPercentiles(p50: 7, p95: 7, p99: 7))
        XCTAssertEqual(LatencyPercentiles.nearestRank(0.5, ofSorted: [1, 2, 3]), 2)
        XCTAssertEqual(LatencyPercentiles.nearestRank(0.99, ofSorted: [1, 2, 3]), 3)
        XCTAssertNil(LatencyPercentiles(samples: []))
    }
}
