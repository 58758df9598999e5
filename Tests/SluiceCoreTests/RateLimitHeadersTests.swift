import XCTest
@testable import SluiceCore

final class RateLimitHeadersTests: XCTestCase {
    /// Expected strings follow Go's `time.Duration.String()` (src/time/time.go): below one second
    /// the largest unit with a fraction ("547ms"); from one second "h", "m" (printed as soon as the
    /// duration reaches a minute, even "0m") and seconds with the fraction's trailing zeros removed.
    /// Inputs are whole milliseconds, as Sluice rounds to them first.
    func testGoDurationTable() {
        let table: [(milliseconds: Int64, go: String)] = [
            (0, "0s"),
            (1, "1ms"),
            (12, "12ms"),
            (100, "100ms"),
            (547, "547ms"),
            (999, "999ms"),
            (1_000, "1s"),
            (1_001, "1.001s"),
            (1_500, "1.5s"),
            (1_230, "1.23s"),
            (33_023, "33.023s"),
            (59_999, "59.999s"),
            (60_000, "1m0s"),
            (172_800, "2m52.8s"),
            (360_000, "6m0s"),
            (3_599_999, "59m59.999s"),
            (3_600_000, "1h0m0s"),
            (3_661_500, "1h1m1.5s"),
            (90_061_001, "25h1m1.001s"),
        ]
        for row in table {
            XCTAssertEqual(GoDuration.string(milliseconds: row.milliseconds), row.go, "\(row.milliseconds) ms")
        }
    }

    func testRoundingUpToMilliseconds() {
        XCTAssertEqual(GoDuration.string(microseconds: 0), "0s")
        XCTAssertEqual(GoDuration.string(microseconds: -5), "0s")
        XCTAssertEqual(GoDuration.string(microseconds: 1), "1ms")
        XCTAssertEqual(GoDuration.string(microseconds: 12_000), "12ms")
        XCTAssertEqual(GoDuration.string(microseconds: 12_001), "13ms")
        XCTAssertEqual(GoDuration.string(microseconds: 999_001), "1s")
        // from seconds: binary-fraction noise must not add a millisecond
        XCTAssertEqual(GoDuration.string(seconds: 0.012), "12ms")
        XCTAssertEqual(GoDuration.string(seconds: 33.023), "33.023s")
        XCTAssertEqual(GoDuration.string(seconds: 172.8), "2m52.8s")
        XCTAssertEqual(GoDuration.string(seconds: 0.0004), "1ms")
        XCTAssertEqual(GoDuration.string(seconds: .nan), "0s")
    }

    func testRenderOnlyConfiguredLimits() {
        let full = RateLimitSnapshot(limitRequests: 60, remainingRequests: 59, resetRequestsSeconds: 1, limitTokens: 150_000, remainingTokens: 149_984, resetTokensSeconds: 360)
        let headers = RateLimitHeaders.render(full)
        XCTAssertEqual(headers.map(\.0), [
            "x-ratelimit-limit-requests", "x-ratelimit-limit-tokens",
            "x-ratelimit-remaining-requests", "x-ratelimit-remaining-tokens",
            "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens",
        ])
        XCTAssertEqual(headers.map(\.1), ["60", "150000", "59", "149984", "1s", "6m0s"])

        let requestsOnly = RateLimitSnapshot(limitRequests: 10, remainingRequests: 10, resetRequestsSeconds: 0)
        XCTAssertEqual(RateLimitHeaders.render(requestsOnly).map(\.0), ["x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests"])
        XCTAssertTrue(RateLimitHeaders.render(.empty).isEmpty)
    }

    /// A team's budgets get headers of their own, after the key's, in the same style.
    func testTeamBudgetsRenderAfterTheKeys() {
        var team = ResolvedLimits()
        team.usdPerDay = 5_000_000_000
        var snapshot = RateLimitSnapshot(limitRequests: 10, remainingRequests: 9, resetRequestsSeconds: 6)
        snapshot.teamBudget = BudgetState(team, spentToday: 1_250_000_000, spentThisMonth: 0, calendar: BudgetCalendar(seconds: 43_200))
        let headers = RateLimitHeaders.render(snapshot)
        XCTAssertEqual(Array(headers.map(\.0).suffix(3)), ["x-ratelimit-limit-team-usd-day", "x-ratelimit-remaining-team-usd-day", "x-ratelimit-reset-team-usd-day"])
        XCTAssertEqual(Array(headers.map(\.1).suffix(3)), ["5", "3.75", "12h0m0s"])
        XCTAssertNil(BudgetState(ResolvedLimits(), spentToday: 0, spentThisMonth: 0, calendar: BudgetCalendar(seconds: 0)), "no team budget: no headers")
    }

    /// Both budgets of the key and both of its team: every header, in order, byte for byte.
    func testKeyAndTeamBudgetsRenderInOrder() {
        var key = ResolvedLimits()
        key.usdPerDay = 2_000_000_000
        key.usdPerMonth = 30_500_000_000
        var team = ResolvedLimits()
        team.usdPerDay = 5_000_000_000
        team.usdPerMonth = 100_000_000_000
        // 2024-02-10 12:00:00 UTC: 12 h to the next day, 19.5 days to March.
        let calendar = BudgetCalendar(seconds: 1_707_566_400)
        var snapshot = RateLimitSnapshot(limitRequests: 10, remainingRequests: 9, resetRequestsSeconds: 6)
        snapshot.budget = BudgetState(key, spentToday: 250_000_000, spentThisMonth: 40_000_000_000, calendar: calendar)
        snapshot.teamBudget = BudgetState(team, spentToday: 1_250_000_000, spentThisMonth: 12_345_678_901, calendar: calendar)
        let headers = RateLimitHeaders.render(snapshot)
        XCTAssertEqual(headers.map(\.0), [
            "x-ratelimit-limit-requests", "x-ratelimit-remaining-requests", "x-ratelimit-reset-requests",
            "x-ratelimit-limit-usd-day", "x-ratelimit-remaining-usd-day", "x-ratelimit-reset-usd-day",
            "x-ratelimit-limit-usd-month", "x-ratelimit-remaining-usd-month", "x-ratelimit-reset-usd-month",
            "x-ratelimit-limit-team-usd-day", "x-ratelimit-remaining-team-usd-day", "x-ratelimit-reset-team-usd-day",
            "x-ratelimit-limit-team-usd-month", "x-ratelimit-remaining-team-usd-month", "x-ratelimit-reset-team-usd-month",
        ])
        XCTAssertEqual(headers.map(\.1), [
            "10", "9", "6s",
            "2", "1.75", "12h0m0s",
            "30.5", "0", "468h0m0s",
            "5", "3.75", "12h0m0s",
            "100", "87.654321099", "468h0m0s",
        ])
    }

    /// The codes the limiter scripts report kinds with: one per kind, and back.
    func testRateLimitKindCodesRoundTrip() {
        XCTAssertEqual(Set(RateLimitKind.allCases.map(\.code)).count, RateLimitKind.allCases.count)
        for kind in RateLimitKind.allCases { XCTAssertEqual(RateLimitKind(code: kind.code), kind) }
        XCTAssertNil(RateLimitKind(code: 0))
        // The buckets' codes are their positions: the Lua scripts rely on it.
        XCTAssertEqual(RateLimitKind.buckets.map(\.code), [1, 2, 3, 4])
    }
}
