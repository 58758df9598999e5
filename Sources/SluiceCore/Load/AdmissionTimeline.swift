/// What a client saw admitted over time (one entry per admitted request, weighted by its cost:
/// 1 for requests, its tokens for tokens), and the most that fell within any window of a given
/// length: the figure a bucket of burst B and rate r per minute must keep at or below
/// B + r × window ÷ 60, whatever the window's position.
///
/// `sluice load` keeps one per key and measure; the type is pure so that its arithmetic is tested
/// on its own.
public struct AdmissionTimeline: Sendable, Equatable {
    /// One admission: when (seconds from any fixed origin) and what it cost.
    public struct Entry: Sendable, Equatable {
        public var time: Double
        public var weight: Int
        public init(time: Double, weight: Int) {
            self.time = time
            self.weight = weight
        }
    }

    public private(set) var entries: [Entry] = []

    public init(entries: [Entry] = []) { self.entries = entries }

    /// Adds one admission at `time` costing `weight`.
    public mutating func record(time: Double, weight: Int = 1) {
        entries.append(Entry(time: time, weight: weight))
    }

    /// Adds every admission of `other` (e.g. another worker's timeline of the same key).
    public mutating func merge(_ other: AdmissionTimeline) {
        entries.append(contentsOf: other.entries)
    }

    /// The total weight admitted.
    public var total: Int { entries.reduce(0) { $0 + $1.weight } }

    /// The largest single weight (the slack a bound allows: one admission may straddle a window's
    /// edge as the client measures it).
    public var largestWeight: Int { entries.map(\.weight).max() ?? 0 }

    /// The largest total weight of the admissions within any half-open window `[t, t + seconds)`.
    /// - Returns: 0 for an empty timeline or a window that is not positive.
    public func peak(windowSeconds seconds: Double) -> Int {
        guard seconds > 0, !entries.isEmpty else { return 0 }
        let sorted = entries.sorted { $0.time < $1.time }
        var best = 0
        var sum = 0
        var first = 0
        for last in sorted.indices {
            sum += sorted[last].weight
            while sorted[last].time - sorted[first].time >= seconds {
                sum -= sorted[first].weight
                first += 1
            }
            best = max(best, sum)
        }
        return best
    }

    /// What a bucket of `burst` and `perMinute` admits at most within any window of `seconds`.
    public static func bound(burst: Int, perMinute: Int, windowSeconds seconds: Double) -> Double {
        Double(burst) + Double(perMinute) * seconds / 60
    }
}

/// The nearest-rank percentiles of a set of latencies (or any measurements).
public struct LatencyPercentiles: Sendable, Equatable {
    public var p50: Double
    public var p95: Double
    public var p99: Double

    public init(p50: Double, p95: Double, p99: Double) {
        self.p50 = p50
        self.p95 = p95
        self.p99 = p99
    }

    /// nil when there are no samples.
    public init?(samples: [Double]) {
        guard !samples.isEmpty else { return nil }
        let sorted = samples.sorted()
        p50 = Self.nearestRank(0.50, ofSorted: sorted)
        p95 = Self.nearestRank(0.95, ofSorted: sorted)
        p99 = Self.nearestRank(0.99, ofSorted: sorted)
    }

    /// The smallest sample with at least `fraction` of all samples at or below it.
    /// `sorted` must be ascending and not empty.
    public static func nearestRank(_ fraction: Double, ofSorted sorted: [Double]) -> Double {
        let rank = Int((fraction * Double(sorted.count)).rounded(.up))
        return sorted[min(max(rank, 1), sorted.count) - 1]
    }
}
