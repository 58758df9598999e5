import SluiceCore

/// A node's slice of one shared bucket: the interval `[cursor, end)` of the bucket's timeline (µs of
/// Redis' clock) that batch.lua charged to this node. The node admits against it by itself, by the
/// bucket's own GCRA rule on that interval: a request of `c` units needs `cost(c)` µs of it from
/// `max(cursor, now)` on.
///
/// Why that is exact: the shared bucket handed out `[start, end)` as if the units were used then;
/// a unit used later than its place in the timeline would let the bucket refill behind it and hand
/// the same capacity out twice. Starting each admission at `max(cursor, now)` lets time pass over
/// the slice as it passes over the bucket, so what all nodes admit together never exceeds what
/// the one bucket would have admitted (burst + rate × Δt over any window). `now` must be an upper
/// bound of Redis' clock (``RedisClockBound``): a late `now` only wastes capacity.
struct BucketSlice: Sendable, Hashable {
    let bucket: GCRABucket
    /// Where the slice ends: the bucket's TAT right after it was taken.
    let end: Int64
    /// The next unused µs of the slice.
    private(set) var cursor: Int64

    init(limit: BucketLimit, start: Int64, end: Int64) {
        bucket = GCRABucket(limit)
        self.end = end
        cursor = start
    }

    /// Whether `units` fit at `now`, without taking them.
    func fits(_ units: Int, now: Int64) -> Bool {
        max(cursor, now) + bucket.refillMicros(forCost: Int64(units)) <= end
    }

    /// Takes `units` at `now`; the caller checked ``fits(_:now:)`` for every bucket first.
    mutating func take(_ units: Int, now: Int64) {
        cursor = max(cursor, now) + bucket.refillMicros(forCost: Int64(units))
    }

    /// Whole units still usable at `now`.
    func remaining(now: Int64) -> Int64 {
        let left = end - max(cursor, now)
        guard left > 0 else { return 0 }
        return left * bucket.ratePerMinute / GCRABucket.periodMicros
    }
}

/// The slices a node holds of one key's buckets, in `RateLimitKind.buckets` order, all taken under
/// the same limits. A request is admitted locally only if every configured bucket's slice covers it.
struct LimiterLease: Sendable {
    let limits: ResolvedLimits
    var slices: [BucketSlice?]

    /// Admits `request` at `now` (an upper bound of Redis' clock) if every configured bucket's slice
    /// covers its cost; all-or-nothing.
    mutating func admit(_ request: AdmissionRequest, now: Int64) -> Bool {
        guard request.limits == limits else { return false }
        for (index, kind) in RateLimitKind.buckets.enumerated() where limits.bucket(kind) != nil {
            guard let slice = slices[index], slice.fits(request.cost(kind), now: now) else { return false }
        }
        for (index, kind) in RateLimitKind.buckets.enumerated() where limits.bucket(kind) != nil {
            slices[index]?.take(request.cost(kind), now: now)
        }
        return true
    }

    /// Whether time or use has emptied every slice (nothing left to give back).
    func isSpent(now: Int64) -> Bool {
        slices.allSatisfy { ($0?.remaining(now: now) ?? 0) == 0 }
    }
}

/// An upper bound of Redis' clock, from the last reply: Redis ran the script (and read `TIME`)
/// after the call was sent, so at any later moment its clock is at most its reading plus the time
/// elapsed here since sending. Never early, so a slice is never used past its place in time.
struct RedisClockBound: Sendable {
    var redisMicros: Int64
    var sentMonotonicMicros: Int64

    func now(monotonicMicros: Int64 = MonotonicClock.microseconds()) -> Int64 {
        redisMicros + max(monotonicMicros - sentMonotonicMicros, 0)
    }
}

/// This node's recent demand on one key: requests and units per bucket over the last window,
/// smoothed. What a lease is sized by.
struct DemandEstimate: Sendable {
    /// The window demand is counted over, and the horizon a lease covers.
    static let windowMicros: Int64 = 50_000

    private var windowStart: Int64 = 0
    private var counted: [Int] = [0, 0, 0, 0, 0]
    /// Requests, then units of each bucket, per window (smoothed).
    private(set) var perWindow: [Double] = [0, 0, 0, 0, 0]

    mutating func record(_ request: AdmissionRequest, at now: Int64) {
        roll(to: now)
        counted[0] += 1
        for (index, kind) in RateLimitKind.buckets.enumerated() { counted[index + 1] += request.cost(kind) }
    }

    /// Closes the windows that ended before `now` (an empty window halves the estimate).
    mutating func roll(to now: Int64) {
        guard now - windowStart >= Self.windowMicros else { return }
        var windows = (now - windowStart) / Self.windowMicros
        while windows > 0 {
            for index in perWindow.indices {
                perWindow[index] = perWindow[index] / 2 + Double(counted[index]) / 2
                counted[index] = 0
            }
            windows -= 1
            if perWindow.allSatisfy({ $0 < 0.01 }) { perWindow = [0, 0, 0, 0, 0]; break }
        }
        windowStart = now - (now - windowStart) % Self.windowMicros
    }

    /// Requests expected in one window (the current window counts once it has seen more).
    var requests: Double { max(perWindow[0], Double(counted[0])) }

    /// Units of bucket `index` (RateLimitKind.buckets order) expected in one window, at least one.
    func units(bucket index: Int) -> Int {
        max(Int(max(perWindow[index + 1], Double(counted[index + 1])).rounded(.up)), 1)
    }
}
