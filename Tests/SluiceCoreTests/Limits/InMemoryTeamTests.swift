import XCTest
@testable import SluiceCore

/// Teams in the embedded limiter: a request passes its key's limits and its team's in one step, and
/// both are charged and settled.
final class InMemoryTeamTests: XCTestCase {
    var store = InMemoryLimiterStore(shardCount: 8)
    var next = 0

    func request(_ key: String, team: TeamSubject?, keyLimits: ResolvedLimits = ResolvedLimits(requests: BucketLimit(perMinute: 100)), cost: Int64 = 0) -> AdmissionRequest {
        next += 1
        var request = AdmissionRequest(requestID: "t\(next)", keyID: key, limits: keyLimits, model: "m", promptTokens: 10, reservedOutputTokens: 10)
        request.team = team
        request.reservedCostNanos = cost
        return request
    }

    func testTheTeamsLimitIsSharedByItsKeys() {
        let team = TeamSubject(id: "red", limits: ResolvedLimits(requests: BucketLimit(perMinute: 3)))
        for key in ["a", "b", "a"] {
            guard case .admitted(let reservation, _) = store.admitNow(request(key, team: team)) else { return XCTFail("denied") }
            XCTAssertEqual(reservation.team, team)
        }
        guard case .denied(let denial, let snapshot) = store.admitNow(request("b", team: team)) else { return XCTFail("admitted past the team's limit") }
        XCTAssertEqual(denial.kind, .requests)
        XCTAssertEqual(denial.limit, 3)
        XCTAssertEqual(snapshot.remainingRequests, 99, "the key's own bucket, untouched by the refusal")
        // A key outside the team is not limited by it.
        guard case .admitted = store.admitNow(request("c", team: nil)) else { return XCTFail("denied") }
    }

    func testAKeyDenialChargesTheTeamNothing() {
        let team = TeamSubject(id: "blue", limits: ResolvedLimits(requests: BucketLimit(perMinute: 2)))
        let tight = ResolvedLimits(requests: BucketLimit(perMinute: 1))
        guard case .admitted = store.admitNow(request("a", team: team, keyLimits: tight)) else { return XCTFail("denied") }
        guard case .denied(let denial, _) = store.admitNow(request("a", team: team, keyLimits: tight)) else { return XCTFail("admitted") }
        XCTAssertEqual(denial.limit, 1, "the key's limit denied")
        // The team still has its second request: the key's refusal took none of it.
        guard case .admitted = store.admitNow(request("b", team: team)) else { return XCTFail("the team was charged for a refused request") }
        guard case .denied = store.admitNow(request("c", team: team)) else { return XCTFail("admitted past the team's limit") }
    }

    func testTheTeamsBudgetIsChargedAndSettled() throws {
        var limits = ResolvedLimits()
        limits.usdPerDay = 1_000_000
        let team = TeamSubject(id: "green", limits: limits)
        guard case .admitted(var first, _) = store.admitNow(request("a", team: team, cost: 600_000)) else { return XCTFail("denied") }
        XCTAssertEqual(first.reservedCostNanos, 600_000, "reserved for the team's budget though the key has none")
        XCTAssertEqual(store.budgetSpent(team: "green").day, 600_000)
        XCTAssertEqual(store.budgetSpent(keyID: "a").day, 0, "the key has no budget of its own")
        guard case .denied(let denial, _) = store.admitNow(request("b", team: team, cost: 600_000)) else { return XCTFail("admitted past the team's budget") }
        XCTAssertEqual(denial.kind, .dailyBudget)
        first.settledCost = .known(USDAmount(nanos: 100_000))
        XCTAssertNotNil(store.settleNow(first, actualPromptTokens: 10, actualCompletionTokens: 1))
        XCTAssertEqual(store.budgetSpent(team: "green").day, 100_000)
        guard case .admitted = store.admitNow(request("b", team: team, cost: 600_000)) else { return XCTFail("the settlement did not reach the team") }
    }

    func testTheTeamsConcurrencySlotIsReleasedOnSettle() {
        let team = TeamSubject(id: "slots", limits: ResolvedLimits(maxConcurrentRequests: 1))
        guard case .admitted(let first, _) = store.admitNow(request("a", team: team)) else { return XCTFail("denied") }
        guard case .denied(let denial, _) = store.admitNow(request("b", team: team)) else { return XCTFail("two in flight") }
        XCTAssertEqual(denial.kind, .concurrency)
        XCTAssertNotNil(store.settleNow(first, actualPromptTokens: 10, actualCompletionTokens: 1))
        guard case .admitted = store.admitNow(request("b", team: team)) else { return XCTFail("the team's slot was not released") }
    }

    /// Many keys of one team, concurrently, against its small budget: the team's spend never passes it.
    func testConcurrentKeysNeverOvershootTheTeamsBudget() async {
        var limits = ResolvedLimits()
        limits.usdPerDay = 1_000_000
        let team = TeamSubject(id: "busy", limits: limits)
        let store = self.store
        let costs = await withTaskGroup(of: Int64?.self) { group in
            for index in 0..<300 {
                group.addTask {
                    var admission = AdmissionRequest(requestID: "c\(index)", keyID: "key-\(index % 9)", limits: ResolvedLimits(requests: BucketLimit(perMinute: 1_000)), model: "m", promptTokens: 1, reservedOutputTokens: 1)
                    admission.team = team
                    admission.reservedCostNanos = 10_000
                    guard case .admitted(var reservation, _) = store.admitNow(admission) else { return nil }
                    let cost = Int64(index % 5) * 1_500 + 4_000
                    reservation.settledCost = .known(USDAmount(nanos: cost))
                    _ = store.settleNow(reservation, actualPromptTokens: 1, actualCompletionTokens: 1)
                    return cost
                }
            }
            return await group.reduce(into: [Int64]()) { if let cost = $1 { $0.append(cost) } }
        }
        XCTAssertLessThanOrEqual(costs.reduce(0, +), 1_000_000)
        XCTAssertEqual(store.budgetSpent(team: "busy").day, costs.reduce(0, +), "every settled cost reached the team")
        XCTAssertGreaterThanOrEqual(costs.count, 100)
    }
}
