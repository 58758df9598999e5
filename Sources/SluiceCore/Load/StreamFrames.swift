/// Splits a server-sent event stream into its events as the bytes arrive, whatever the chunking:
/// an event ends at a blank line (`\n\n`, or `\r\n\r\n`). Counts the events that carry data
/// (comments, `: …`, are not frames) and tells whether the latest was `data: [DONE]`.
///
/// `sluice load --frame-stats` runs one per connection on every body chunk, so it keeps no bytes but
/// the first few of the current event, and allocates nothing after `init`.
public struct SSEEventScanner: Sendable {
    /// Enough of an event's start to tell `data: [DONE]` and a comment apart.
    private static let keptPrefix = 16
    private static let done = Array("data: [DONE]".utf8)
    private static let doneWithoutSpace = Array("data:[DONE]".utf8)

    private var previousWasNewline = false
    private var prefix: [UInt8] = []
    /// The latest complete event was `data: [DONE]`.
    public private(set) var lastEventWasDone = false

    public init() { prefix.reserveCapacity(Self.keptPrefix) }

    /// Feeds the next bytes of the stream.
    /// - Returns: how many frames (events other than comments) these bytes completed.
    public mutating func scan(_ bytes: UnsafeRawBufferPointer) -> Int {
        var completed = 0
        for byte in bytes {
            switch byte {
            case UInt8(ascii: "\r"):
                continue // CRLF line ends: the LF decides
            case UInt8(ascii: "\n"):
                if previousWasNewline {
                    if !prefix.isEmpty {
                        if prefix.first != UInt8(ascii: ":") {
                            completed += 1
                            lastEventWasDone = prefix.starts(with: Self.done) || prefix.starts(with: Self.doneWithoutSpace)
                        }
                        prefix.removeAll(keepingCapacity: true)
                    }
                    // Blank lines between events (or a third newline) end nothing more.
                    previousWasNewline = false
                    continue
                }
                previousWasNewline = true
                if prefix.count < Self.keptPrefix, !prefix.isEmpty { prefix.append(byte) }
            default:
                previousWasNewline = false
                if prefix.count < Self.keptPrefix { prefix.append(byte) }
            }
        }
        return completed
    }

    /// `scan` over an array (tests, small inputs).
    public mutating func scan(_ bytes: [UInt8]) -> Int {
        bytes.withUnsafeBytes { scan($0) }
    }
}

/// One streamed request as the client saw it: when it was sent, when each frame arrived (only
/// the first, the latest and the largest gap are kept; the gaps themselves go to a `StreamFrameTally`).
/// Times are seconds from any fixed origin.
public struct StreamObservation: Sendable, Equatable {
    public let sentAt: Double
    public private(set) var firstFrameAt: Double?
    public private(set) var lastFrameAt: Double?
    public private(set) var frames = 0
    public private(set) var largestGap = 0.0

    public init(sentAt: Double) { self.sentAt = sentAt }

    /// `count` frames arrived at `time` (one read can complete several).
    /// - Returns: the gaps between consecutive frames these make: the first from the previous frame
    ///   (none for the stream's first frame), the rest 0 (they arrived together).
    public mutating func framesArrived(_ count: Int, at time: Double) -> (gap: Double?, together: Int) {
        guard count > 0 else { return (nil, 0) }
        var gap: Double?
        if let lastFrameAt {
            let elapsed = max(0, time - lastFrameAt)
            largestGap = max(largestGap, elapsed)
            gap = elapsed
        } else {
            firstFrameAt = time
        }
        lastFrameAt = time
        frames += count
        return (gap, count - 1)
    }

    /// Seconds from the send to the first frame.
    public var timeToFirstFrame: Double? { firstFrameAt.map { $0 - sentAt } }
}

/// What the streams of a run (or of one connection; tallies merge) delivered: time to the first
/// frame, every gap between frames, frames against the expected count, streams that stalled
/// (a gap over the stall threshold), how each ended.
public struct StreamFrameTally: Sendable, Equatable {
    /// Requests sent.
    public var started = 0
    /// 2xx streams that ended with `data: [DONE]` and the answer's end.
    public var completed = 0
    /// 2xx streams whose answer ended without `data: [DONE]` as the last frame.
    public var endedWithoutDone = 0
    /// Non-2xx answers, by status.
    public var errorStatuses: [Int: Int] = [:]
    /// Streams cut before the answer's end (connection closed, failed connect), or still open when
    /// the run gave up waiting for them.
    public var transportErrors = 0
    /// Frames of 2xx streams.
    public var frames = 0
    /// Frames short of the expected count, summed over 2xx streams (0 when no count is expected).
    public var missingFrames = 0
    /// 2xx streams with a gap between two frames over the stall threshold.
    public var stalled = 0
    /// Seconds from send to the first frame, per 2xx stream that had one.
    public var timesToFirstFrame: [Double] = []
    /// Seconds between consecutive frames of a stream (0 for frames that arrived in one read).
    public var gaps: [Double] = []
    /// The largest gap of any stream.
    public var largestGap = 0.0

    public init() {}

    public var errors: Int { transportErrors + errorStatuses.values.reduce(0, +) }

    /// Adds the gaps of frames that arrived (see `StreamObservation.framesArrived`).
    public mutating func recordGaps(_ arrival: (gap: Double?, together: Int)) {
        if let gap = arrival.gap { gaps.append(gap) }
        if arrival.together > 0 { gaps.append(contentsOf: repeatElement(0, count: arrival.together)) }
    }

    /// Adds a stream whose answer ended (the `end` of its body).
    /// - Parameters:
    ///   - expectedFrames: frames a complete stream has (nil: unknown, nothing counts as missing).
    ///   - stallGap: a gap over this many seconds makes the stream stalled.
    public mutating func finish(_ stream: StreamObservation, status: Int, endedWithDone: Bool,
                                expectedFrames: Int?, stallGap: Double) {
        guard (200..<300).contains(status) else {
            errorStatuses[status, default: 0] += 1
            return
        }
        frames += stream.frames
        if let ttft = stream.timeToFirstFrame { timesToFirstFrame.append(ttft) }
        largestGap = max(largestGap, stream.largestGap)
        if stream.largestGap > stallGap { stalled += 1 }
        if let expectedFrames { missingFrames += max(0, expectedFrames - stream.frames) }
        if endedWithDone { completed += 1 } else { endedWithoutDone += 1 }
    }

    /// Adds a stream that was cut (or never got an answer): a transport error; the frames it had
    /// and a stall it showed still count, and what it did not get is missing.
    public mutating func fail(_ stream: StreamObservation?, expectedFrames: Int?, stallGap: Double) {
        transportErrors += 1
        guard let stream else {
            if let expectedFrames { missingFrames += expectedFrames }
            return
        }
        frames += stream.frames
        largestGap = max(largestGap, stream.largestGap)
        if stream.largestGap > stallGap { stalled += 1 }
        if let expectedFrames { missingFrames += max(0, expectedFrames - stream.frames) }
    }

    public mutating func merge(_ other: StreamFrameTally) {
        started += other.started
        completed += other.completed
        endedWithoutDone += other.endedWithoutDone
        errorStatuses.merge(other.errorStatuses, uniquingKeysWith: +)
        transportErrors += other.transportErrors
        frames += other.frames
        missingFrames += other.missingFrames
        stalled += other.stalled
        timesToFirstFrame.append(contentsOf: other.timesToFirstFrame)
        gaps.append(contentsOf: other.gaps)
        largestGap = max(largestGap, other.largestGap)
    }
}

/// The figures a streams benchmark compares: percentiles in milliseconds, counts, the verdicts.
public struct StreamFrameSummary: Sendable, Equatable, Encodable {
    public var started: Int
    public var completed: Int
    public var endedWithoutDone: Int
    public var errors: Int
    public var errorRate: Double
    public var frames: Int
    public var missingFrames: Int
    public var stalled: Int
    public var stallGapMs: Double
    public var ttftP50Ms: Double?
    public var ttftP99Ms: Double?
    public var gapP50Ms: Double?
    public var gapP99Ms: Double?
    public var largestGapMs: Double
    /// Every stream complete (each frame arrived, `[DONE]` last) and none stalled.
    public var everyFrameDelivered: Bool

    public init(_ tally: StreamFrameTally, stallGap: Double) {
        started = tally.started
        completed = tally.completed
        endedWithoutDone = tally.endedWithoutDone
        errors = tally.errors
        errorRate = tally.started == 0 ? 0 : Double(tally.errors) / Double(tally.started)
        frames = tally.frames
        missingFrames = tally.missingFrames
        stalled = tally.stalled
        stallGapMs = stallGap * 1000
        let ttft = LatencyPercentiles(samples: tally.timesToFirstFrame)
        ttftP50Ms = ttft.map { $0.p50 * 1000 }
        ttftP99Ms = ttft.map { $0.p99 * 1000 }
        let gaps = LatencyPercentiles(samples: tally.gaps)
        gapP50Ms = gaps.map { $0.p50 * 1000 }
        gapP99Ms = gaps.map { $0.p99 * 1000 }
        largestGapMs = tally.largestGap * 1000
        everyFrameDelivered = tally.started > 0 && tally.missingFrames == 0 && tally.endedWithoutDone == 0 && tally.stalled == 0
    }
}
