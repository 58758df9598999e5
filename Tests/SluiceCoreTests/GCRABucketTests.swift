import XCTest
@testable import SluiceCore

/// The bucket math, checked against values derived by hand from the formulas in GCRABucket's
/// documentation (P = 60 000 000 µs).
final class GCRABucketTests: XCTestCase {
    let second: Int64 = 1_000_000

    func testConstants() {
        // 60/min: one unit per second; τ = 60 s.
        let perSecond = GCRABucket(ratePerMinute: 60, burst: 60)
        XCTAssertEqual(perSecond.refillMicros(forCost: 1), second)
        XCTAssertEqual(perSecond.toleranceMicros, 60 * second)
        // 5000/min: 12 ms per request (OpenAI's "5000 RPM, 1 used → 12ms").
        XCTAssertEqual(GCRABucket(ratePerMinute: 5_000, burst: 5_000).refillMicros(forCost: 1), 12_000)
        // 7/min: 60e6 / 7 = 8 571 428.57… → rounded up; τ = cost(7) = 60e6 exactly.
        let seven = GCRABucket(ratePerMinute: 7, burst: 7)
        XCTAssertEqual(seven.refillMicros(forCost: 1), 8_571_429)
        XCTAssertEqual(seven.toleranceMicros, 60_000_000)
        // Lowered burst: 600/min with burst 10 → 100 ms per unit, τ = 1 s.
        let strict = GCRABucket(ratePerMinute: 600, burst: 10)
        XCTAssertEqual(strict.refillMicros(forCost: 1), 100_000)
        XCTAssertEqual(strict.toleranceMicros, second)
    }

    func testAdmitTable() {
        let bucket = GCRABucket(ratePerMinute: 60, burst: 60)
        let rows: [(cost: Int64, tat: Int64, now: Int64, expected: GCRABucket.Admission)] = [
            // empty state, one unit: TAT = now + 1 s
            (1, 0, 1_000, .allowed(newTAT: 1_001_000)),
            // the whole burst at once from full
            (60, 0, 0, .allowed(newTAT: 60 * second)),
            // nothing left: one more waits exactly one unit's refill
            (1, 60 * second, 0, .denied(retryAfterMicros: second)),
            // half a second later, half a unit has come back: waits the other half
            (1, 60 * second, 500_000, .denied(retryAfterMicros: 500_000)),
            // one second later it fits exactly (new − now = τ)
            (1, 60 * second, second, .allowed(newTAT: 61 * second)),
            // 10 units with 30 s in use: new − now = 40 s ≤ 60 s
            (10, 30 * second, 0, .allowed(newTAT: 40 * second)),
            // 40 units with 30 s in use: new − now = 70 s → 10 s to wait
            (40, 30 * second, 0, .denied(retryAfterMicros: 10 * second)),
            // larger than the burst: never
            (61, 0, 0, .tooLarge),
            // a state far in the past is a full bucket
            (60, -1_000 * second, 5 * second, .allowed(newTAT: 65 * second)),
            // zero cost always passes and changes nothing but the floor
            (0, 60 * second, 0, .allowed(newTAT: 60 * second)),
        ]
        for (index, row) in rows.enumerated() {
            XCTAssertEqual(bucket.admit(cost: row.cost, tat: row.tat, now: row.now), row.expected, "row \(index)")
        }
    }

    func testLoweredBurstLimitsBackToBack() {
        let bucket = GCRABucket(ratePerMinute: 600, burst: 10)
        var tat: Int64 = 0
        for _ in 0..<10 {
            guard case .allowed(let next) = bucket.admit(cost: 1, tat: tat, now: 0) else { return XCTFail("burst of 10 must pass") }
            tat = next
        }
        XCTAssertEqual(bucket.admit(cost: 1, tat: tat, now: 0), .denied(retryAfterMicros: 100_000))
        XCTAssertEqual(bucket.admit(cost: 11, tat: 0, now: 0), .tooLarge)
    }

    func testRemainingAndReset() {
        let bucket = GCRABucket(ratePerMinute: 60, burst: 60)
        XCTAssertEqual(bucket.remaining(tat: 0, now: 0), 60)
        XCTAssertEqual(bucket.resetAfterMicros(tat: 0, now: 0), 0)
        XCTAssertEqual(bucket.remaining(tat: 60 * second, now: 0), 0)
        XCTAssertEqual(bucket.remaining(tat: 60 * second, now: 500_000), 0, "half a unit is not a unit")
        XCTAssertEqual(bucket.remaining(tat: 60 * second, now: second), 1)
        XCTAssertEqual(bucket.remaining(tat: 30 * second, now: 0), 30)
        XCTAssertEqual(bucket.resetAfterMicros(tat: 30 * second, now: 10 * second), 20 * second)
        XCTAssertEqual(bucket.used(tat: 30 * second, now: 0), 30)
        XCTAssertTrue(bucket.isFull(tat: 5, now: 5))
        XCTAssertFalse(bucket.isFull(tat: 6, now: 5))
    }

    func testRemainingIsExactlyWhatAdmitAccepts() {
        for (rate, burst) in [(7, 7), (5_000, 5_000), (600, 10), (150_000_000, 150_000_000), (90_000, 120_000)] {
            let bucket = GCRABucket(ratePerMinute: rate, burst: burst)
            for inUse in [Int64(0), 1, 999, bucket.toleranceMicros / 3, bucket.toleranceMicros - 1, bucket.toleranceMicros] {
                let remaining = bucket.remaining(tat: inUse, now: 0)
                if remaining > 0, case .allowed = bucket.admit(cost: remaining, tat: inUse, now: 0) {} else if remaining > 0 {
                    XCTFail("rate \(rate) inUse \(inUse): remaining \(remaining) refused")
                }
                if remaining < bucket.burst, case .allowed = bucket.admit(cost: remaining + 1, tat: inUse, now: 0) {
                    XCTFail("rate \(rate) inUse \(inUse): remaining + 1 admitted")
                }
            }
        }
    }

    func testRefund() {
        let bucket = GCRABucket(ratePerMinute: 60, burst: 60)
        XCTAssertEqual(bucket.refund(10, tat: 50 * second, now: 0), 40 * second)
        // never fuller than full
        XCTAssertEqual(bucket.refund(60, tat: 10 * second, now: 5 * second), 5 * second)
        // rounded down: 7/min refunds ⌊60e6 / 7⌋ per unit, one µs less than it charges
        let seven = GCRABucket(ratePerMinute: 7, burst: 7)
        XCTAssertEqual(seven.refund(1, tat: 60 * second, now: 0), 60 * second - 8_571_428)
        XCTAssertEqual(bucket.refund(-5, tat: 50 * second, now: 0), 50 * second, "negative amounts do nothing")
    }

    func testChargeCreatesDebt() {
        let bucket = GCRABucket(ratePerMinute: 60, burst: 60)
        // 120 units on a full bucket: two minutes of refill, one beyond the burst
        let tat = bucket.charge(120, tat: 0, now: 0)
        XCTAssertEqual(tat, 120 * second)
        XCTAssertEqual(bucket.remaining(tat: tat, now: 0), 0)
        XCTAssertEqual(bucket.used(tat: tat, now: 0), 120)
        // one more unit waits for the debt and its own refill: 121 s − 60 s
        XCTAssertEqual(bucket.admit(cost: 1, tat: tat, now: 0), .denied(retryAfterMicros: 61 * second))
        XCTAssertEqual(bucket.resetAfterMicros(tat: tat, now: 0), 120 * second)
        // charges on a state in the past start from now
        XCTAssertEqual(bucket.charge(1, tat: 0, now: 10 * second), 11 * second)
    }

    /// Over a long simulated run with random costs and gaps, the admitted total never exceeds
    /// burst + rate × elapsed, and under a constant flood the limiter lets the rate through.
    func testAdmittedCostIsBoundedByBurstPlusRate() {
        var random = SplitMix64(seed: 0x5EED)
        for (rate, burst) in [(60, 60), (10_000, 10_000), (600, 10), (7, 20), (200_000, 50_000)] {
            let bucket = GCRABucket(ratePerMinute: rate, burst: burst)
            var tat: Int64 = 0
            var now: Int64 = 0
            var admitted: Int64 = 0
            let maxCost = UInt64(max(burst / 4, 1))
            for _ in 0..<20_000 {
                now += Int64(random.next() % 40_000)
                let cost = Int64(random.next() % maxCost) + 1
                if case .allowed(let next) = bucket.admit(cost: cost, tat: tat, now: now) {
                    tat = next
                    admitted += cost
                }
                let bound = Double(burst) + Double(rate) * Double(now) / 60_000_000 + 1
                XCTAssertLessThanOrEqual(Double(admitted), bound, "rate \(rate) burst \(burst) at \(now) µs")
                if Double(admitted) > bound { break }
            }
            // mean gap 20 ms: demand far above every rate here except the largest
            let ideal = Double(burst) + Double(rate) * Double(now) / 60_000_000
            if Double(rate) * 0.02 / 60 < Double(maxCost) / 2 {
                XCTAssertGreaterThan(Double(admitted), 0.95 * ideal - Double(maxCost), "rate \(rate) burst \(burst): too strict")
            }
        }
    }
}
