import XCTest
import SluiceCore
@testable import SluiceRedis

/// The lease arithmetic on its own: a slice is µs of a bucket's timeline, used from now on, never
/// behind now.
final class LimiterLeaseTests: XCTestCase {
    // 60 per minute: one unit is one second (1_000_000 µs) of the timeline.
    let limit = BucketLimit(perMinute: 60, burst: 10)
    let second: Int64 = 1_000_000

    func testTakesFromNowOnAndTimePassesOverTheSlice() {
        var slice = BucketSlice(limit: limit, start: 0, end: 4 * second)
        XCTAssertEqual(slice.remaining(now: 0), 4)
        XCTAssertEqual(slice.take(1, now: 0), [.init(start: 0, end: second)])
        // 1.5 s later the unit at [1 s, 2 s) is half gone: whole units left are 2.
        XCTAssertEqual(slice.remaining(now: second + second / 2), 2)
        XCTAssertTrue(slice.fits(2, now: second + second / 2))
        XCTAssertFalse(slice.fits(3, now: second + second / 2))
        XCTAssertEqual(slice.take(2, now: second + second / 2), [.init(start: second + second / 2, end: 3 * second + second / 2)])
        XCTAssertFalse(slice.fits(1, now: second + second / 2), "half a unit is not a unit")
        XCTAssertEqual(slice.remaining(now: 4 * second), 0)
    }

    func testUnusedReservationGoesBackAsTheLatestMicrosStillAhead() {
        var slice = BucketSlice(limit: limit, start: 0, end: 10 * second)
        let taken = slice.take(4, now: 0)  // [0, 4 s)
        XCTAssertEqual(slice.remaining(now: 0), 6)
        slice.giveBack(3 * second, of: taken, now: 0)
        XCTAssertEqual(slice.free, [.init(start: second, end: 10 * second)], "merged with the free tail")
        XCTAssertEqual(slice.remaining(now: 0), 9)

        var late = BucketSlice(limit: limit, start: 0, end: 10 * second)
        let lateTaken = late.take(4, now: 0)
        // At 3 s, only [3 s, 4 s) of the request's µs is still ahead: that is all that comes back.
        late.giveBack(3 * second, of: lateTaken, now: 3 * second)
        XCTAssertEqual(late.free, [.init(start: 3 * second, end: 10 * second)])
        XCTAssertEqual(late.remaining(now: 3 * second), 7)
    }

    func testTakingSpansHolesAndTheTailIsWhatReachesTheEnd() {
        var slice = BucketSlice(limit: limit, start: 0, end: 6 * second)
        let first = slice.take(2, now: 0)   // [0, 2 s)
        _ = slice.take(2, now: 0)           // [2 s, 4 s)
        slice.giveBack(second, of: first, now: 0)  // [1 s, 2 s) free again
        XCTAssertEqual(slice.free, [.init(start: second, end: 2 * second), .init(start: 4 * second, end: 6 * second)])
        XCTAssertEqual(slice.tailStart(now: 0), 4 * second)
        XCTAssertEqual(slice.take(2, now: 0), [.init(start: second, end: 2 * second), .init(start: 4 * second, end: 5 * second)])
        XCTAssertEqual(slice.tailStart(now: 0), 5 * second)
        _ = slice.take(1, now: 0)
        XCTAssertNil(slice.tailStart(now: 0), "the end was used: nothing can go back to the bucket")
    }

    func testALeaseAdmitsAllOrNothing() {
        let limits = ResolvedLimits(requests: limit, tokens: BucketLimit(perMinute: 600, burst: 100), lease: .always)
        var lease = LimiterLease(limits: limits, slices: [
            BucketSlice(limit: limit, start: 0, end: 5 * second),
            BucketSlice(limit: BucketLimit(perMinute: 600, burst: 100), start: 0, end: second),  // 10 tokens
            nil, nil,
        ])
        let small = AdmissionRequest(requestID: "a", keyID: "k", limits: limits, model: "m", promptTokens: 4, reservedOutputTokens: 4)
        let large = AdmissionRequest(requestID: "b", keyID: "k", limits: limits, model: "m", promptTokens: 4, reservedOutputTokens: 4)
        XCTAssertNotNil(lease.admit(small, now: 0))
        XCTAssertNil(lease.admit(large, now: 0), "8 tokens do not fit in the 2 left")
        XCTAssertEqual(lease.slices[0]?.remaining(now: 0), 4, "the refused request took no request unit either")
        var other = limits
        other.requests = BucketLimit(perMinute: 61)
        XCTAssertNil(lease.admit(AdmissionRequest(requestID: "c", keyID: "k", limits: other, model: "m", promptTokens: 0, reservedOutputTokens: 0), now: 0),
                     "a lease serves only the limits it was taken under")
    }

    func testRedisClockBoundNeverRunsEarly() {
        let bound = RedisClockBound(redisMicros: 1_000, sentMonotonicMicros: 50)
        XCTAssertEqual(bound.now(monotonicMicros: 50), 1_000)
        XCTAssertEqual(bound.now(monotonicMicros: 550), 1_500)
        XCTAssertEqual(bound.now(monotonicMicros: 10), 1_000, "never before the reading")
    }

    func testLeasesAreSizedByDemandAndOnlyForLeasableKeys() {
        let limits = ResolvedLimits(requests: BucketLimit(perMinute: 600_000), lease: .auto)
        let request = AdmissionRequest(requestID: "a", keyID: "k", limits: limits, model: "m", promptTokens: 0, reservedOutputTokens: 0)
        var demand = DemandEstimate()
        demand.record(request, at: 0)
        XCTAssertNil(KeyLane.leaseWanted(limits, demand, request), "one request per window: exact")
        for _ in 0..<20 { demand.record(request, at: 10) }
        XCTAssertEqual(KeyLane.leaseWanted(limits, demand, request)?.units, [1_000, 0, 0, 0], "the bucket's rate over 100 ms")
        var slow = limits
        slow.requests = BucketLimit(perMinute: 6_000)
        XCTAssertEqual(KeyLane.leaseWanted(slow, demand, request)?.units, [42, 0, 0, 0], "twice the window's demand")
        var narrow = limits
        narrow.requests = BucketLimit(perMinute: 600_000, burst: 4_000)
        XCTAssertEqual(KeyLane.leaseWanted(narrow, demand, request)?.units, [500, 0, 0, 0], "at most ⅛ of the bucket")
        demand.roll(to: 10 * DemandEstimate.windowMicros)
        XCTAssertLessThan(demand.requests, 1, "idle windows halve the estimate")

        var small = limits
        small.requests = BucketLimit(perMinute: 100)
        for _ in 0..<20 { demand.record(request, at: 10 * DemandEstimate.windowMicros) }
        XCTAssertNil(KeyLane.leaseWanted(small, demand, request), "a slice would be large next to the bucket: exact")
        var concurrent = limits
        concurrent.maxConcurrentRequests = 10
        XCTAssertNil(KeyLane.leaseWanted(concurrent, demand, request), "four slots would be more than ⅛ of ten: exact")
        concurrent.maxConcurrentRequests = 1_000
        XCTAssertEqual(KeyLane.leaseWanted(concurrent, demand, request, slotsInUse: 40)?.slots, 40, "as many as in use")
        XCTAssertEqual(KeyLane.leaseWanted(concurrent, demand, request, slotsInUse: 1)?.slots, 4, "at least four")
        var quota = limits
        quota.tokensPerDay = 1_000_000
        XCTAssertNil(KeyLane.leaseWanted(quota, demand, request), "quotas are always exact")
        var off = limits
        off.lease = .off
        XCTAssertNil(KeyLane.leaseWanted(off, demand, request))
        var always = small
        always.lease = .always
        XCTAssertNotNil(KeyLane.leaseWanted(always, demand, request))
    }
}
