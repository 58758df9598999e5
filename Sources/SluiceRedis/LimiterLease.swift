import SluiceCore

/// A node's slice of one shared bucket: µs of the bucket's timeline (Redis' clock) that batch.lua
/// charged to this node, kept as the free intervals not used yet. The node admits against it by
/// itself: a request of `c` units takes `cost(c)` µs of it, from the earliest free µs at or after
/// `now`.
///
/// Why that is exact: each unit of a bucket owns `P / R` µs of its timeline, and the bucket only
/// hands out µs between now and `now + τ`. A µs used later than its place in time would let the
/// bucket refill behind it and hand the same capacity out twice, so free µs that time has passed
/// are never used: time passes over a slice as it passes over the bucket, and what all nodes admit
/// together never exceeds what the one bucket would have admitted (burst + rate × Δt over any
/// window). A request's unused reservation goes back into the slice as the µs it had taken (those
/// still ahead), never to Redis, whose refunds stop at the end of the last slice handed out (the
/// lease mark). `now` must be an upper bound of Redis' clock (``RedisClockBound``): a late `now`
/// only wastes capacity.
struct BucketSlice: Sendable, Hashable {
    struct Interval: Sendable, Hashable {
        var start: Int64
        var end: Int64
    }

    let bucket: GCRABucket
    /// Where the slice ends: the bucket's TAT right after it was taken.
    let end: Int64
    /// The µs not used yet, sorted and disjoint.
    private(set) var free: [Interval]

    init(limit: BucketLimit, start: Int64, end: Int64) {
        bucket = GCRABucket(limit)
        self.end = end
        free = start < end ? [Interval(start: start, end: end)] : []
    }

    /// Free µs at or after `now`.
    func freeMicros(now: Int64) -> Int64 {
        free.reduce(0) { $0 + max($1.end - max($1.start, now), 0) }
    }

    /// Whether `units` fit at `now`, without taking them.
    func fits(_ units: Int, now: Int64) -> Bool {
        freeMicros(now: now) >= bucket.refillMicros(forCost: Int64(units))
    }

    /// Takes `units` at `now` (the caller checked ``fits(_:now:)`` for every bucket first): the
    /// intervals taken, earliest first. Free µs before `now` are dropped.
    mutating func take(_ units: Int, now: Int64) -> [Interval] {
        var needed = bucket.refillMicros(forCost: Int64(units))
        var taken: [Interval] = []
        var index = 0
        while index < free.count, needed > 0 {
            let start = max(free[index].start, now)
            if start >= free[index].end {
                free.remove(at: index)
                continue
            }
            let length = min(free[index].end - start, needed)
            taken.append(Interval(start: start, end: start + length))
            needed -= length
            if start + length == free[index].end {
                free.remove(at: index)
            } else {
                free[index].start = start + length
                index += 1
            }
        }
        return taken
    }

    /// Gives back `micros` of what a request took (`taken`, as ``take(_:now:)`` returned it), the
    /// latest µs first and only those still ahead of `now`.
    mutating func giveBack(_ micros: Int64, of taken: [Interval], now: Int64) {
        var left = micros
        for interval in taken.reversed() where left > 0 {
            let start = max(interval.start, interval.end - left, now)
            guard start < interval.end else { continue }
            insert(Interval(start: start, end: interval.end))
            left -= interval.end - start
        }
        free.removeAll { $0.end <= now }
    }

    private mutating func insert(_ interval: Interval) {
        var merged = interval
        var result: [Interval] = []
        var placed = false
        for current in free {
            if current.end < merged.start {
                result.append(current)
            } else if merged.end < current.start {
                if !placed { result.append(merged); placed = true }
                result.append(current)
            } else {
                merged = Interval(start: min(merged.start, current.start), end: max(merged.end, current.end))
            }
        }
        if !placed { result.append(merged) }
        free = result
    }

    /// Whole units still usable at `now`.
    func remaining(now: Int64) -> Int64 {
        freeMicros(now: now) * bucket.ratePerMinute / GCRABucket.periodMicros
    }

    /// The start of the free tail that reaches the slice's end (what can go back to the bucket), or
    /// nil when the end was used.
    func tailStart(now: Int64) -> Int64? {
        guard let last = free.last, last.end == end else { return nil }
        return max(last.start, now)
    }
}

/// The slices a node holds of one key's buckets, in `RateLimitKind.buckets` order, all taken under
/// the same limits, and the free concurrency slots parked on it. A request is admitted locally only
/// if every configured bucket's slice covers it and, with a concurrency limit, a slot is parked.
struct LimiterLease: Sendable {
    let limits: ResolvedLimits
    var slices: [BucketSlice?]
    /// Concurrency slots counted for this node in Redis and not used by a request now.
    var parkedSlots = 0
    /// The epoch of the node's slots in Redis those parked slots belong to.
    var slotEpoch: Int64 = 0

    /// Admits `request` at `now` (an upper bound of Redis' clock) if every configured bucket's slice
    /// covers its cost; all-or-nothing. Returns what it took of each bucket (for refunds).
    mutating func admit(_ request: AdmissionRequest, now: Int64) -> [[BucketSlice.Interval]]? {
        guard request.limits == limits else { return nil }
        for (index, kind) in RateLimitKind.buckets.enumerated() where limits.bucket(kind) != nil {
            guard let slice = slices[index], slice.fits(request.cost(kind), now: now) else { return nil }
        }
        if limits.maxConcurrentRequests != nil {
            guard parkedSlots > 0 else { return nil }
            parkedSlots -= 1
        }
        var taken: [[BucketSlice.Interval]] = [[], [], [], []]
        for (index, kind) in RateLimitKind.buckets.enumerated() where limits.bucket(kind) != nil {
            taken[index] = slices[index]?.take(request.cost(kind), now: now) ?? []
        }
        return taken
    }

    /// Whether time or use has emptied every slice (nothing left to give back).
    func isSpent(now: Int64) -> Bool {
        parkedSlots == 0 && slices.allSatisfy { ($0?.remaining(now: now) ?? 0) == 0 }
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
