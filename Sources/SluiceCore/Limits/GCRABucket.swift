/// The bucket math of every per-minute limit: the Generic Cell Rate Algorithm with variable cost.
///
/// This is the one place that defines it. The Redis limiter's Lua script mirrors these formulas
/// line by line; check it against the comments here.
///
/// ## Model
/// A bucket holds up to `burst` units (requests or tokens) and refills continuously at
/// `ratePerMinute` units per minute. Instead of a level, GCRA keeps one number per bucket, the
/// *theoretical arrival time* `tat`: the instant at which the bucket will be full again. A bucket
/// whose `tat ≤ now` is full. All times are integer microseconds (`Int64`) on one clock.
///
/// Constants (P = 60 000 000 µs, one minute; R = ratePerMinute; B = burst):
///
///     cost(c)   = ⌈c · P / R⌉                 time that c units take to refill (rounded up:
///                                              never admits more than the rate)
///     tolerance = cost(B)                     τ, the time a full bucket takes to refill
///
/// Operations (d = max(tat − now, 0), the time until full, i.e. the part of τ in use):
///
///     admit(c):    c > B                        → tooLarge (can never pass)
///                  new = max(tat, now) + cost(c)
///                  new − now ≤ τ                 → allowed, tat := new
///                  otherwise                     → denied, retryAfter = new − now − τ
///     refund(a):   tat := max(tat − ⌊a · P / R⌋, now)   (rounded down: never refunds more than
///                                                       was charged; never fuller than full)
///     charge(a):   tat := max(tat, now) + cost(a)       (no check: may exceed τ — see below)
///     remaining:   max(0, min(B, ⌊(τ − d) · R / P⌋))    the largest c that admit accepts now
///     resetAfter:  d                                    time until the bucket is full again
///
/// `remaining` is exactly consistent with `admit`: ⌈c·P/R⌉ ≤ τ − d ⟺ c ≤ ⌊(τ − d)·R/P⌋.
///
/// ## Debt
/// `charge` settles usage that was larger than its reservation. It may push `tat` beyond
/// `now + τ`: the bucket is then in debt, `remaining` is 0, and every later admission waits until
/// the debt is paid off by the refill (`retryAfter` includes it). Debt is never forgiven.
///
/// ## Exactness in Lua
/// Limits are capped at `LimitSet.maximumValue` (1.5e8) and costs above `B` are rejected before
/// any multiplication, so every product formed (`c · P`, `(τ − d) · R`) is at most 9.0e15 < 2^53
/// and exact in the doubles of Redis' Lua. Lua should compute on differences (`tat − now`), not on
/// absolute microsecond timestamps, whose sums with τ could pass 2^53.
public struct GCRABucket: Sendable, Hashable {
    /// One minute in microseconds, the period of every per-minute rate.
    public static let periodMicros: Int64 = 60_000_000

    /// Units refilled per minute (> 0).
    public let ratePerMinute: Int64
    /// Capacity in units (> 0).
    public let burst: Int64
    /// τ = cost(burst): microseconds a full bucket takes to refill from empty.
    public let toleranceMicros: Int64

    /// The outcome of `admit`.
    public enum Admission: Sendable, Hashable {
        /// Admitted; store `newTAT` as the bucket's state.
        case allowed(newTAT: Int64)
        /// Not now; the same cost will be admitted after `retryAfterMicros` (if nothing else is
        /// admitted meanwhile). The state is unchanged.
        case denied(retryAfterMicros: Int64)
        /// The cost exceeds the burst: it can never be admitted. The state is unchanged.
        case tooLarge
    }

    /// - Precondition: `ratePerMinute` and `burst` in `1...LimitSet.maximumValue` (the config
    ///   validation guarantees it; other values are clamped into that range).
    public init(ratePerMinute: Int, burst: Int) {
        let maximum = Int64(LimitSet.maximumValue)
        self.ratePerMinute = min(max(Int64(ratePerMinute), 1), maximum)
        self.burst = min(max(Int64(burst), 1), maximum)
        self.toleranceMicros = Self.ceilDiv(self.burst * Self.periodMicros, self.ratePerMinute)
    }

    /// The bucket of a configured limit.
    public init(_ limit: BucketLimit) {
        self.init(ratePerMinute: limit.perMinute, burst: limit.burst)
    }

    /// cost(c) = ⌈c · P / R⌉ for 0 ≤ c ≤ maximumValue (larger amounts are clamped).
    @inlinable
    public func refillMicros(forCost cost: Int64) -> Int64 {
        let units = min(max(cost, 0), Int64(LimitSet.maximumValue))
        return Self.ceilDiv(units * Self.periodMicros, ratePerMinute)
    }

    /// Decides whether `cost` units may pass at `now` given the state `tat`.
    public func admit(cost: Int64, tat: Int64, now: Int64) -> Admission {
        let units = max(cost, 0)
        guard units <= burst else { return .tooLarge }
        let newTAT = max(tat, now) &+ refillMicros(forCost: units)
        let waited = newTAT &- now
        if waited <= toleranceMicros { return .allowed(newTAT: newTAT) }
        return .denied(retryAfterMicros: waited - toleranceMicros)
    }

    /// The state after giving back `amount` unused units at `now` (never fuller than full).
    public func refund(_ amount: Int64, tat: Int64, now: Int64) -> Int64 {
        let units = min(max(amount, 0), Int64(LimitSet.maximumValue))
        let back = (units * Self.periodMicros) / ratePerMinute
        return max(tat &- back, now)
    }

    /// The state after taking `amount` more units at `now`, admitted or not (may create debt).
    public func charge(_ amount: Int64, tat: Int64, now: Int64) -> Int64 {
        let added = refillMicros(forCost: amount)
        let (sum, overflow) = max(tat, now).addingReportingOverflow(added)
        return overflow ? Int64.max : sum
    }

    /// Microseconds until the bucket is full again (0 when it is full).
    public func resetAfterMicros(tat: Int64, now: Int64) -> Int64 {
        tat > now ? tat &- now : 0
    }

    /// The largest cost `admit` would accept at `now` (0 in debt, `burst` when full).
    public func remaining(tat: Int64, now: Int64) -> Int64 {
        let inUse = resetAfterMicros(tat: tat, now: now)
        guard inUse < toleranceMicros else { return 0 }
        return min(burst, ((toleranceMicros - inUse) * ratePerMinute) / Self.periodMicros)
    }

    /// Units in use at `now`: `burst − remaining` while not in debt; beyond `burst` in debt
    /// (rounded up). For "Used N" in 429 messages.
    public func used(tat: Int64, now: Int64) -> Int64 {
        let inUse = resetAfterMicros(tat: tat, now: now)
        if inUse <= toleranceMicros { return burst - remaining(tat: tat, now: now) }
        // In debt: the time in use may be large; compute in floating point, only for display.
        let units = (Double(inUse) * Double(ratePerMinute) / Double(Self.periodMicros)).rounded(.up)
        return units >= Double(Int64.max / 2) ? Int64.max / 2 : Int64(units)
    }

    /// Whether the bucket is full at `now` (its state can be forgotten).
    public func isFull(tat: Int64, now: Int64) -> Bool { tat <= now }

    @usableFromInline
    static func ceilDiv(_ numerator: Int64, _ denominator: Int64) -> Int64 {
        (numerator + denominator - 1) / denominator
    }
}
