import XCTest
@testable import SluiceCore

final class SSEEventScannerTests: XCTestCase {
    private let stream = Array(("data: {\"a\":1}\n\n" + "data: {\"b\":2}\n\n" + ": keep-alive\n\n" + "data: [DONE]\n\n").utf8)

    func testCountsDataEventsNotComments() {
        var scanner = SSEEventScanner()
        XCTAssertEqual(scanner.scan(stream), 3)
        XCTAssertTrue(scanner.lastEventWasDone)
    }

    func testTheCountDoesNotDependOnTheChunking() {
        // Every split point, and byte by byte: an event boundary split across reads still counts once.
        for split in 0...stream.count {
            var scanner = SSEEventScanner()
            let total = scanner.scan(Array(stream[..<split])) + scanner.scan(Array(stream[split...]))
            XCTAssertEqual(total, 3, "split at \(split)")
            XCTAssertTrue(scanner.lastEventWasDone, "split at \(split)")
        }
        var scanner = SSEEventScanner()
        XCTAssertEqual(stream.reduce(0) { $0 + scanner.scan([$1]) }, 3)
    }

    func testAnEventCountsOnlyOnceItsBlankLineArrived() {
        var scanner = SSEEventScanner()
        XCTAssertEqual(scanner.scan(Array("data: x\n".utf8)), 0)
        XCTAssertEqual(scanner.scan(Array("\n".utf8)), 1)
        XCTAssertEqual(scanner.scan(Array("data: [DONE]\n".utf8)), 0)
        XCTAssertFalse(scanner.lastEventWasDone, "[DONE] is not complete before its blank line")
    }

    func testCRLFLineEndsAndMultiLineEvents() {
        var scanner = SSEEventScanner()
        XCTAssertEqual(scanner.scan(Array("event: delta\r\ndata: x\r\n\r\ndata:[DONE]\r\n\r\n".utf8)), 2)
        XCTAssertTrue(scanner.lastEventWasDone)
    }

    func testDoneMustBeTheLastEvent() {
        var scanner = SSEEventScanner()
        XCTAssertEqual(scanner.scan(Array("data: [DONE]\n\ndata: late\n\n".utf8)), 2)
        XCTAssertFalse(scanner.lastEventWasDone)
    }

    func testExtraBlankLinesAreNoEvents() {
        var scanner = SSEEventScanner()
        XCTAssertEqual(scanner.scan(Array("\n\n\ndata: x\n\n\n\n\ndata: y\n\n".utf8)), 2)
    }
}

final class StreamFrameTallyTests: XCTestCase {
    func testObservationKeepsFirstFrameAndLargestGap() {
        var stream = StreamObservation(sentAt: 1.0)
        XCTAssertNil(stream.timeToFirstFrame)
        let first = stream.framesArrived(2, at: 1.05)
        XCTAssertNil(first.gap, "the first frame has no gap before it")
        XCTAssertEqual(first.together, 1)
        let second = stream.framesArrived(1, at: 1.075)
        XCTAssertEqual(second.gap!, 0.025, accuracy: 1e-9)
        XCTAssertEqual(second.together, 0)
        _ = stream.framesArrived(1, at: 1.175)
        XCTAssertEqual(stream.framesArrived(0, at: 5).gap, nil, "no frame, no gap")
        XCTAssertEqual(stream.frames, 4)
        XCTAssertEqual(stream.timeToFirstFrame!, 0.05, accuracy: 1e-9)
        XCTAssertEqual(stream.largestGap, 0.1, accuracy: 1e-9)
    }

    /// A stream of `frames` frames `gap` apart, the first `ttft` after the send, all recorded.
    private func paced(_ tally: inout StreamFrameTally, ttft: Double, frames: Int, gap: Double) -> StreamObservation {
        var stream = StreamObservation(sentAt: 0)
        for k in 0..<frames { tally.recordGaps(stream.framesArrived(1, at: ttft + Double(k) * gap)) }
        return stream
    }

    func testCompleteStreamsAndTheSummary() {
        var tally = StreamFrameTally()
        for k in 1...100 {
            tally.started += 1
            let stream = paced(&tally, ttft: Double(k) / 1000, frames: 5, gap: 0.02)
            tally.finish(stream, status: 200, endedWithDone: true, expectedFrames: 5, stallGap: 0.2)
        }
        XCTAssertEqual(tally.completed, 100)
        XCTAssertEqual(tally.frames, 500)
        XCTAssertEqual(tally.gaps.count, 400)
        let summary = StreamFrameSummary(tally, stallGap: 0.2)
        XCTAssertEqual(summary.ttftP50Ms!, 50, accuracy: 1e-6)
        XCTAssertEqual(summary.ttftP99Ms!, 99, accuracy: 1e-6)
        XCTAssertEqual(summary.gapP50Ms!, 20, accuracy: 1e-6)
        XCTAssertEqual(summary.gapP99Ms!, 20, accuracy: 1e-6)
        XCTAssertEqual(summary.missingFrames, 0)
        XCTAssertEqual(summary.stalled, 0)
        XCTAssertEqual(summary.errorRate, 0)
        XCTAssertTrue(summary.everyFrameDelivered)
    }

    func testMissingFramesStallsAndStreamsWithoutDone() {
        var tally = StreamFrameTally()
        tally.started = 3
        // Two frames short, no [DONE].
        tally.finish(paced(&tally, ttft: 0.01, frames: 3, gap: 0.02), status: 200, endedWithDone: false,
                     expectedFrames: 5, stallGap: 0.25)
        // Complete, but one gap of 0.3 s: stalled.
        var stalled = paced(&tally, ttft: 0.01, frames: 4, gap: 0.02)
        tally.recordGaps(stalled.framesArrived(1, at: 0.37))
        tally.finish(stalled, status: 200, endedWithDone: true, expectedFrames: 5, stallGap: 0.25)
        // A gap of exactly the threshold is no stall (0.25: exact in binary).
        tally.finish(paced(&tally, ttft: 0, frames: 5, gap: 0.25), status: 200, endedWithDone: true,
                     expectedFrames: 5, stallGap: 0.25)
        XCTAssertEqual(tally.missingFrames, 2)
        XCTAssertEqual(tally.endedWithoutDone, 1)
        XCTAssertEqual(tally.stalled, 1)
        XCTAssertEqual(tally.largestGap, 0.3, accuracy: 1e-9)
        let summary = StreamFrameSummary(tally, stallGap: 0.25)
        XCTAssertFalse(summary.everyFrameDelivered)
        XCTAssertEqual(summary.largestGapMs, 300, accuracy: 1e-6)
    }

    func testErrorsAndCutStreams() {
        var tally = StreamFrameTally()
        tally.started = 4
        tally.finish(StreamObservation(sentAt: 0), status: 503, endedWithDone: false, expectedFrames: 5, stallGap: 1)
        tally.fail(nil, expectedFrames: 5, stallGap: 1)
        tally.fail(paced(&tally, ttft: 0.01, frames: 2, gap: 0.02), expectedFrames: 5, stallGap: 1)
        tally.finish(paced(&tally, ttft: 0.01, frames: 5, gap: 0.02), status: 200, endedWithDone: true,
                     expectedFrames: 5, stallGap: 1)
        XCTAssertEqual(tally.errorStatuses, [503: 1])
        XCTAssertEqual(tally.transportErrors, 2)
        XCTAssertEqual(tally.errors, 3)
        XCTAssertEqual(tally.missingFrames, 5 + 3, "a failed connect misses every frame, a cut stream the rest")
        XCTAssertEqual(tally.timesToFirstFrame.count, 1, "only answered 2xx streams have a time to first frame")
        let summary = StreamFrameSummary(tally, stallGap: 1)
        XCTAssertEqual(summary.errorRate, 0.75)
        XCTAssertFalse(summary.everyFrameDelivered)
    }

    func testFramesArrivingTogetherHaveZeroGaps() {
        var tally = StreamFrameTally()
        var stream = StreamObservation(sentAt: 0)
        tally.recordGaps(stream.framesArrived(1, at: 0.01))
        tally.recordGaps(stream.framesArrived(3, at: 0.03))
        XCTAssertEqual(tally.gaps.count, 3)
        XCTAssertEqual(tally.gaps[0], 0.02, accuracy: 1e-9)
        XCTAssertEqual(Array(tally.gaps[1...]), [0, 0])
    }

    func testMergeAddsEverything() {
        var a = StreamFrameTally()
        a.started = 2
        a.finish(paced(&a, ttft: 0.01, frames: 5, gap: 0.02), status: 200, endedWithDone: true, expectedFrames: 5, stallGap: 1)
        a.fail(nil, expectedFrames: 5, stallGap: 1)
        var b = StreamFrameTally()
        b.started = 2
        b.finish(paced(&b, ttft: 0.02, frames: 5, gap: 0.05), status: 200, endedWithDone: true, expectedFrames: 5, stallGap: 1)
        b.finish(StreamObservation(sentAt: 0), status: 429, endedWithDone: false, expectedFrames: 5, stallGap: 1)
        var merged = a
        merged.merge(b)
        XCTAssertEqual(merged.started, 4)
        XCTAssertEqual(merged.completed, 2)
        XCTAssertEqual(merged.errors, 2)
        XCTAssertEqual(merged.frames, 10)
        XCTAssertEqual(merged.gaps.count, 8)
        XCTAssertEqual(merged.timesToFirstFrame.count, 2)
        XCTAssertEqual(merged.missingFrames, 5)
        XCTAssertEqual(merged.largestGap, 0.05, accuracy: 1e-9)
    }
}
