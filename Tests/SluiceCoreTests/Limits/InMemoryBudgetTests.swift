import Synchronization
import XCTest
@testable import SluiceCore

/// A wall clock (UTC seconds) the test moves by hand, for the budgets' calendar periods.
final class ManualCalendar: Sendable {
    private let seconds: Atomic<Int64>
    init(_ start: Int64) { seconds = Atomic(start) }
    func advance(seconds delta: Int64) { seconds.add(delta, ordering: .relaxed) }
    var clock: InMemoryLimiterStore.CalendarClock { { [self] in self.seconds.load(ordering: .relaxed) } }
}

/// Budgets (`usd_per_day`, `usd_per_month`) in the embedded limiter: reserved at admission in the same
/// step as the other limits, corrected at settle, UTC calendar periods.
final class InMemoryBudgetTests: XCTestCase {
    /// 2026-12-31T23:00:00Z: an hour before both a new day and a new month.
    static let lastHourOfTheYear: Int64 = Int64(CivilCalendar.daysSinceEpoch(year: 2026, month: 12, day: 31)) * 86_400 + 23 * 3_600
    var calendar = ManualCalendar(InMemoryBudgetTests.lastHourOfTheYear)
    var store = InMemoryLimiterStore()
    var next = 0

    override func setUp() {
        calendar = ManualCalendar(Self.lastHourOfTheYear)
        store = InMemoryLimiterStore(shardCount: 4, calendarClock: calendar.clock)
    }

    /// $1 a day, $1.50 a month (in nano-dollars), no other limit.
    var budgets: ResolvedLimits {
        var limits = ResolvedLimits()
        limits.usdPerDay = 1_000_000_000
        limits.usdPerMonth = 1_500_000_000
        return limits
    }

    func request(cost: Int64, limits: ResolvedLimits? = nil, key: String = "k") -> AdmissionRequest {
        next += 1
        var request = AdmissionRequest(requestID: "r\(next)", keyID: key, limits: limits ?? budgets, model: "m", promptTokens: 10, reservedOutputTokens: 10)
        request.reservedCostNanos = cost
        return request
    }

    func admit(_ request: AdmissionRequest) -> Reservation? {
        if case .admitted(let reservation, _) = store.admitNow(request) { return reservation }
        return nil
    }

    func denial(_ request: AdmissionRequest) -> RateLimitDenial? {
        if case .denied(let denial, _) = store.admitNow(request) { return denial }
        return nil
    }

    func settle(_ reservation: Reservation, cost: RequestCost?) {
        var reservation = reservation
        reservation.settledCost = cost
        XCTAssertNotNil(store.settleNow(reservation, actualPromptTokens: 10, actualCompletionTokens: 1))
    }

    func testReservationCountsUntilSettledThenTheActualCost() throws {
        let first = try XCTUnwrap(admit(request(cost: 600_000_000)))
        XCTAssertEqual(first.reservedCostNanos, 600_000_000)
        XCTAssertEqual(store.budgetSpent(keyID: "k").day, 600_000_000)
        // $0.60 reserved of $1: a second $0.60 does not fit until the first is settled at its cost.
        let refused = try XCTUnwrap(denial(request(cost: 600_000_000)))
        XCTAssertEqual(refused.kind, .dailyBudget)
        XCTAssertEqual(refused.used, 600_000_000)
        XCTAssertEqual(refused.requested, 600_000_000)
        XCTAssertFalse(refused.neverFits)
        XCTAssertEqual(refused.retryAfterSeconds, 3_600, "the day renews at midnight UTC")
        settle(first, cost: .known(USDAmount(nanos: 100_000_000)))
        XCTAssertEqual(store.budgetSpent(keyID: "k").day, 100_000_000)
        XCTAssertNotNil(admit(request(cost: 600_000_000)))
        XCTAssertEqual(store.budgetSpent(keyID: "k").day, 700_000_000)
    }

    func testDenialChargesNothingAndOtherLimitsAreAllOrNothing() throws {
        var limits = budgets
        limits.requests = BucketLimit(perMinute: 10)
        _ = try XCTUnwrap(admit(request(cost: 900_000_000, limits: limits)))
        XCTAssertNil(admit(request(cost: 200_000_000, limits: limits)))
        // The refused request took no request from the bucket: 8 left after the first and this one.
        guard case .admitted(_, let snapshot) = store.admitNow(request(cost: 0, limits: limits)) else { return XCTFail("denied") }
        XCTAssertEqual(snapshot.remainingRequests, 8)
        XCTAssertEqual(store.budgetSpent(keyID: "k").day, 900_000_000)
    }

    func testARequestDearerThanTheBudgetNeverFits() throws {
        let refused = try XCTUnwrap(denial(request(cost: 1_000_000_001)))
        XCTAssertTrue(refused.neverFits)
        XCTAssertEqual(refused.retryAfterSeconds, 0)
        let error = refused.gatewayError(model: "m")
        XCTAssertEqual(error.status, 429)
        XCTAssertEqual(error.code, "insufficient_quota")
        XCTAssertEqual(error.shouldRetry, false)
        XCTAssertTrue(error.message.contains("Limit 1, Used 0, Requested up to 1.000000001"), error.message)
    }

    func testUnknownCostKeepsTheReservation() throws {
        let reservation = try XCTUnwrap(admit(request(cost: 300_000_000)))
        settle(reservation, cost: .unknown)
        XCTAssertEqual(store.budgetSpent(keyID: "k").day, 300_000_000)
    }

    func testAnUnderestimateIsChargedInFull() throws {
        // A settlement may exceed its reservation (a Responses input the upstream reports larger):
        // charged as it was, the budget may then be passed by that one correction.
        let reservation = try XCTUnwrap(admit(request(cost: 900_000_000)))
        settle(reservation, cost: .known(USDAmount(nanos: 1_100_000_000)))
        XCTAssertEqual(store.budgetSpent(keyID: "k").day, 1_100_000_000)
        XCTAssertEqual(denial(request(cost: 1))?.kind, .dailyBudget)
    }

    func testNewDayAndNewMonthStartFromZero() throws {
        let late = try XCTUnwrap(admit(request(cost: 900_000_000)))
        XCTAssertEqual(denial(request(cost: 200_000_000))?.kind, .dailyBudget)
        calendar.advance(seconds: 3_600)  // 2027-01-01T00:00:00Z
        // A new day and a new month: the $0.90 still in flight belongs to 2026-12.
        XCTAssertEqual(store.budgetSpent(keyID: "k").day, 0)
        XCTAssertNotNil(admit(request(cost: 200_000_000)))
        // Settling the old reservation corrects the ended period only: today's count is untouched.
        settle(late, cost: .known(USDAmount(nanos: 1)))
        XCTAssertEqual(store.budgetSpent(keyID: "k").day, 200_000_000)
        XCTAssertEqual(store.budgetSpent(keyID: "k").month, 200_000_000)
    }

    func testMonthBudgetOutlastsTheDay() throws {
        let noon = ManualCalendar(Int64(CivilCalendar.daysSinceEpoch(year: 2026, month: 12, day: 10)) * 86_400 + 43_200)
        store = InMemoryLimiterStore(shardCount: 4, calendarClock: noon.clock)
        settle(try XCTUnwrap(admit(request(cost: 900_000_000))), cost: nil)
        noon.advance(seconds: 86_400)
        settle(try XCTUnwrap(admit(request(cost: 500_000_000))), cost: nil)
        let refused = try XCTUnwrap(denial(request(cost: 200_000_000)))
        XCTAssertEqual(refused.kind, .monthlyBudget)
        XCTAssertEqual(refused.used, 1_400_000_000)
        // From 2026-12-11T12:00Z to 2027-01-01T00:00Z.
        XCTAssertEqual(refused.retryAfterSeconds, Double(20 * 86_400 + 43_200))
    }

    func testIdleKeyWithSpendIsKeptBySweep() throws {
        settle(try XCTUnwrap(admit(request(cost: 5))), cost: .known(USDAmount(nanos: 5)))
        store.sweep()
        XCTAssertEqual(store.trackedKeyCount, 1, "its spend today must not be forgotten")
        calendar.advance(seconds: 86_400 * 40)
        store.sweep()
        XCTAssertEqual(store.trackedKeyCount, 0, "once both periods ended, nothing is lost")
    }

    /// Many concurrent requests against a small budget: what is admitted never exceeds it by more
    /// than one request's settle correction (here none: every request costs at most its reservation).
    func testConcurrentRequestsNeverOvershoot() async throws {
        let store = self.store
        let limits = budgets
        let admittedCount = await withTaskGroup(of: Bool.self) { group in
            for index in 0..<400 {
                group.addTask {
                    var request = AdmissionRequest(requestID: "c\(index)", keyID: "shared", limits: limits, model: "m", promptTokens: 1, reservedOutputTokens: 1)
                    request.reservedCostNanos = 10_000_000  // $0.01 reserved
                    guard case .admitted(var reservation, _) = store.admitNow(request) else { return false }
                    reservation.settledCost = .known(USDAmount(nanos: Int64(index % 7) * 1_000_000 + 4_000_000))  // $0.004–$0.01
                    _ = store.settleNow(reservation, actualPromptTokens: 1, actualCompletionTokens: 1)
                    return true
                }
            }
            return await group.reduce(0) { $0 + ($1 ? 1 : 0) }
        }
        let spent = store.budgetSpent(keyID: "shared").day
        XCTAssertLessThanOrEqual(spent, 1_000_000_000)
        // A denial comes only once more than $0.99 is spent or reserved, each request holding at most $0.01.
        XCTAssertGreaterThanOrEqual(admittedCount, 100, "at least the budget ÷ the reservation")
    }
}
