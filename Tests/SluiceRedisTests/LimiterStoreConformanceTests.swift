import Foundation
import XCTest
import SluiceCore
@testable import SluiceRedis

/// One semantics: the same checks run against `InMemoryLimiterStore` and `RedisLimiterStore`.
///
/// Both run on real time (Redis uses its own clock), so rates are small (one unit refills in
/// ≥ 0.6 s, far longer than a check's few milliseconds, so `remaining` values are exact) and
/// times are compared with a tolerance.
struct LimiterStoreConformance {
    let store: any LimiterStore
    /// Slack for reset and retry-after times: real time passes between the calls.
    let tolerance = 0.5
    let model = "gpt-4o-mini"

    private func newKey() -> String { "conf-" + UUID().uuidString.prefix(8).lowercased() }

    private func request(_ key: String, _ limits: ResolvedLimits, prompt: Int = 0, output: Int = 0) -> AdmissionRequest {
        AdmissionRequest(requestID: UUID().uuidString, keyID: key, limits: limits, model: model, promptTokens: prompt, reservedOutputTokens: output)
    }

    @discardableResult
    private func admitted(_ request: AdmissionRequest, file: StaticString = #filePath, line: UInt = #line) async throws -> (Reservation, RateLimitSnapshot) {
        switch try await store.admit(request) {
        case .admitted(let reservation, let snapshot): return (reservation, snapshot)
        case .denied(let denial, _):
            XCTFail("denied: \(denial)", file: file, line: line)
            throw RedisTestError("unexpected denial")
        }
    }

    private func denied(_ request: AdmissionRequest, file: StaticString = #filePath, line: UInt = #line) async throws -> (RateLimitDenial, RateLimitSnapshot) {
        switch try await store.admit(request) {
        case .denied(let denial, let snapshot): return (denial, snapshot)
        case .admitted:
            XCTFail("admitted", file: file, line: line)
            throw RedisTestError("unexpected admission")
        }
    }

    private func settled(_ reservation: Reservation, prompt: Int, completion: Int, file: StaticString = #filePath, line: UInt = #line) async throws -> RateLimitSnapshot {
        guard let snapshot = try await store.settle(reservation, actualPromptTokens: prompt, actualCompletionTokens: completion) else {
            XCTFail("settle found nothing to settle", file: file, line: line)
            throw RedisTestError("nothing settled")
        }
        return snapshot
    }

    // MARK: checks

    func admitChargesEveryBucketAndReportsHeaders() async throws {
        let limits = ResolvedLimits(requests: BucketLimit(perMinute: 10), tokens: BucketLimit(perMinute: 100))
        let (reservation, snapshot) = try await admitted(request(newKey(), limits, prompt: 50, output: 40))
        XCTAssertEqual(reservation.promptTokens, 50)
        XCTAssertEqual(reservation.reservedOutputTokens, 40)
        XCTAssertFalse(reservation.holdsConcurrencySlot)
        XCTAssertEqual(snapshot.limitRequests, 10)
        XCTAssertEqual(snapshot.remainingRequests, 9)
        // one request at 10/min refills in 6 s; 90 tokens at 100/min in 54 s
        XCTAssertEqual(snapshot.resetRequestsSeconds ?? -1, 6, accuracy: tolerance)
        XCTAssertEqual(snapshot.limitTokens, 100)
        XCTAssertEqual(snapshot.remainingTokens, 10)
        XCTAssertEqual(snapshot.resetTokensSeconds ?? -1, 54, accuracy: tolerance)
    }

    func denialIsAllOrNothing() async throws {
        let key = newKey()
        let limits = ResolvedLimits(requests: BucketLimit(perMinute: 10), tokens: BucketLimit(perMinute: 100))
        try await admitted(request(key, limits, prompt: 50, output: 40))
        let (denial, snapshot) = try await denied(request(key, limits, prompt: 20))
        XCTAssertEqual(denial.kind, .tokens)
        XCTAssertEqual(denial.limit, 100)
        XCTAssertEqual(denial.burst, 100)
        XCTAssertEqual(denial.used, 90)
        XCTAssertEqual(denial.requested, 20)
        XCTAssertFalse(denial.neverFits)
        // 10 tokens more than the bucket holds, at 100/min: 6 s
        XCTAssertEqual(denial.retryAfterSeconds, 6, accuracy: tolerance)
        XCTAssertEqual(snapshot.remainingRequests, 9, "a denied request charges nothing")
        XCTAssertEqual(snapshot.remainingTokens, 10)
        let (_, last) = try await admitted(request(key, limits, prompt: 10))
        XCTAssertEqual(last.remainingTokens, 0)
        XCTAssertEqual(last.remainingRequests, 8)
    }

    func eachBucketChargesItsOwnCost() async throws {
        let key = newKey()
        let limits = ResolvedLimits(
            requests: BucketLimit(perMinute: 100), tokens: BucketLimit(perMinute: 1_000),
            inputTokens: BucketLimit(perMinute: 300), outputTokens: BucketLimit(perMinute: 200)
        )
        try await admitted(request(key, limits, prompt: 250, output: 150))
        let (input, _) = try await denied(request(key, limits, prompt: 60, output: 10))
        XCTAssertEqual(input.kind, .inputTokens)
        XCTAssertEqual(input.used, 250)
        XCTAssertEqual(input.requested, 60)
        let (output, _) = try await denied(request(key, limits, prompt: 10, output: 60))
        XCTAssertEqual(output.kind, .outputTokens)
        XCTAssertEqual(output.used, 150)
        XCTAssertEqual(output.requested, 60)
        let (_, snapshot) = try await admitted(request(key, limits, prompt: 50, output: 50))
        XCTAssertEqual(snapshot.remainingTokens, 500)
        XCTAssertEqual(snapshot.remainingRequests, 98)
    }

    func neverFitsOutranksLongerWaits() async throws {
        let key = newKey()
        let limits = ResolvedLimits(requests: BucketLimit(perMinute: 1), tokens: BucketLimit(perMinute: 100, burst: 50))
        try await admitted(request(key, limits, prompt: 10))
        // RPM denies with a ~60 s wait, TPM can never hold 60 tokens (burst 50).
        let (denial, _) = try await denied(request(key, limits, prompt: 60))
        XCTAssertEqual(denial.kind, .tokens)
        XCTAssertTrue(denial.neverFits)
        XCTAssertEqual(denial.retryAfterSeconds, 0)
        XCTAssertEqual(denial.limit, 100)
        XCTAssertEqual(denial.burst, 50)
        XCTAssertEqual(denial.requested, 60)
    }

    func longestWaitIsReported() async throws {
        let key = newKey()
        let limits = ResolvedLimits(requests: BucketLimit(perMinute: 1), tokens: BucketLimit(perMinute: 100))
        try await admitted(request(key, limits, prompt: 95))
        // RPM: 60 s; TPM: 5 tokens left, 10 asked: 3 s.
        let (denial, _) = try await denied(request(key, limits, prompt: 10))
        XCTAssertEqual(denial.kind, .requests)
        XCTAssertEqual(denial.retryAfterSeconds, 60, accuracy: tolerance)
        XCTAssertEqual(denial.used, 1)
        XCTAssertEqual(denial.requested, 1)
    }

    func settleRefundsUnusedReservation() async throws {
        let key = newKey()
        let limits = ResolvedLimits(tokens: BucketLimit(perMinute: 100, burst: 200), outputTokens: BucketLimit(perMinute: 60))
        let (reservation, _) = try await admitted(request(key, limits, prompt: 50, output: 40))
        let snapshot = try await settled(reservation, prompt: 50, completion: 10)
        XCTAssertEqual(snapshot.remainingTokens, 140, "30 unused output tokens come back")
        XCTAssertEqual(snapshot.resetTokensSeconds ?? -1, 36, accuracy: tolerance)
        // OTPM: 10 of 60 in use after the refund; 50 fit, 51 do not.
        try await admitted(request(key, limits, output: 40))
        let (denial, _) = try await denied(request(key, limits, output: 11))
        XCTAssertEqual(denial.kind, .outputTokens)
        XCTAssertEqual(denial.used, 50)
    }

    func settleChargesUsageBeyondReservation() async throws {
        let key = newKey()
        let limits = ResolvedLimits(tokens: BucketLimit(perMinute: 100))
        let (reservation, _) = try await admitted(request(key, limits, prompt: 50, output: 40))
        let snapshot = try await settled(reservation, prompt: 50, completion: 60)
        XCTAssertEqual(snapshot.remainingTokens, 0, "110 tokens used of 100: in debt")
        XCTAssertEqual(snapshot.resetTokensSeconds ?? -1, 66, accuracy: tolerance)
        let (denial, _) = try await denied(request(key, limits, prompt: 1))
        XCTAssertEqual(denial.kind, .tokens)
        XCTAssertEqual(denial.used, 110)
        // the debt (10 tokens) plus the token asked for, at 100/min
        XCTAssertEqual(denial.retryAfterSeconds, 6.6, accuracy: tolerance)
    }

    func concurrencySlotsAreReleasedOnSettle() async throws {
        let key = newKey()
        let limits = ResolvedLimits(maxConcurrentRequests: 2)
        let (first, _) = try await admitted(request(key, limits))
        XCTAssertTrue(first.holdsConcurrencySlot)
        try await admitted(request(key, limits))
        let (denial, _) = try await denied(request(key, limits))
        XCTAssertEqual(denial.kind, .concurrency)
        XCTAssertEqual(denial.limit, 2)
        XCTAssertEqual(denial.used, 2)
        XCTAssertEqual(denial.requested, 1)
        XCTAssertEqual(denial.retryAfterSeconds, RateLimitDenial.concurrencyRetryAfterSeconds)
        XCTAssertFalse(denial.neverFits)
        _ = try await settled(first, prompt: 0, completion: 0)
        try await admitted(request(key, limits))
    }

    func settleHappensExactlyOnce() async throws {
        let key = newKey()
        let limits = ResolvedLimits(tokens: BucketLimit(perMinute: 100), maxConcurrentRequests: 1)
        let (reservation, _) = try await admitted(request(key, limits, prompt: 50, output: 40))
        let first = try await settled(reservation, prompt: 50, completion: 0)
        XCTAssertEqual(first.remainingTokens, 50)
        let second = try await store.settle(reservation, actualPromptTokens: 50, actualCompletionTokens: 0)
        XCTAssertNil(second, "a second settle is a no-op")
        let after = try await store.snapshot(keyID: key, limits: limits)
        XCTAssertEqual(after.remainingTokens, 50, "the refund was not applied twice")
        // The slot was released once: one request gets in, the next one does not.
        try await admitted(request(key, limits, prompt: 1))
        let (denial, _) = try await denied(request(key, limits, prompt: 1))
        XCTAssertEqual(denial.kind, .concurrency)
    }

    func snapshotChargesNothing() async throws {
        let key = newKey()
        let limits = ResolvedLimits(requests: BucketLimit(perMinute: 10), tokens: BucketLimit(perMinute: 100, burst: 40))
        let fresh = try await store.snapshot(keyID: key, limits: limits)
        XCTAssertEqual(fresh, RateLimitSnapshot(limitRequests: 10, remainingRequests: 10, resetRequestsSeconds: 0, limitTokens: 100, remainingTokens: 40, resetTokensSeconds: 0))
        let again = try await store.snapshot(keyID: key, limits: limits)
        XCTAssertEqual(again, fresh)
        let (_, admittedSnapshot) = try await admitted(request(key, limits, prompt: 30))
        let later = try await store.snapshot(keyID: key, limits: limits)
        XCTAssertEqual(later.remainingRequests, admittedSnapshot.remainingRequests)
        XCTAssertEqual(later.remainingTokens, 10)
        XCTAssertEqual(later.resetTokensSeconds ?? -1, 18, accuracy: tolerance)
        let unlimited = try await store.snapshot(keyID: key, limits: .unlimited)
        XCTAssertEqual(unlimited, .empty)
    }

    func unlimitedKeyIsAlwaysAdmitted() async throws {
        let key = newKey()
        for _ in 0..<5 {
            let (reservation, snapshot) = try await admitted(request(key, .unlimited, prompt: 100_000, output: 100_000))
            XCTAssertEqual(snapshot, .empty)
            let afterSettle = try await settled(reservation, prompt: 10, completion: 10)
            XCTAssertEqual(afterSettle, .empty)
        }
    }

    func keysAreIndependent() async throws {
        let limits = ResolvedLimits(requests: BucketLimit(perMinute: 1))
        let exhausted = newKey()
        try await admitted(request(exhausted, limits))
        _ = try await denied(request(exhausted, limits))
        try await admitted(request(newKey(), limits))
    }

    func retryAfterIsWhenTheRequestPasses() async throws {
        let key = newKey()
        // one request per second, no burst
        let limits = ResolvedLimits(requests: BucketLimit(perMinute: 60, burst: 1))
        try await admitted(request(key, limits))
        let (denial, _) = try await denied(request(key, limits))
        XCTAssertEqual(denial.retryAfterSeconds, 1, accuracy: 0.3)
        XCTAssertGreaterThan(denial.retryAfterSeconds, 0)
        try await Task.sleep(nanoseconds: UInt64((denial.retryAfterSeconds + 0.05) * 1_000_000_000))
        try await admitted(request(key, limits))
    }

    // MARK: budgets

    /// $0.001 a day (1,000,000 n$), with a requests limit beside it.
    private var budget: ResolvedLimits {
        var limits = ResolvedLimits(requests: BucketLimit(perMinute: 100))
        limits.usdPerDay = 1_000_000
        return limits
    }

    private func costing(_ key: String, _ nanos: Int64, _ limits: ResolvedLimits? = nil) -> AdmissionRequest {
        var admission = request(key, limits ?? budget, prompt: 1, output: 1)
        admission.reservedCostNanos = nanos
        return admission
    }

    private func settled(_ reservation: Reservation, cost: RequestCost?) async throws {
        _ = try await settled(reservation, prompt: 1, completion: 1, cost: cost)
    }

    private func settled(_ reservation: Reservation, prompt: Int, completion: Int, cost: RequestCost?) async throws -> RateLimitSnapshot {
        var reservation = reservation
        reservation.settledCost = cost
        return try await settled(reservation, prompt: prompt, completion: completion)
    }

    func budgetReservesTheMaximumAndSettleCorrectsIt() async throws {
        let key = newKey()
        let (first, admittedSnapshot) = try await admitted(costing(key, 600_000))
        XCTAssertEqual(first.reservedCostNanos, 600_000)
        // The budget's header values: $0.001 a day, $0.0004 left while $0.0006 is reserved.
        XCTAssertEqual(admittedSnapshot.budget?.day?.limit, USDAmount(nanos: 1_000_000))
        XCTAssertEqual(admittedSnapshot.budget?.day?.remaining, USDAmount(nanos: 400_000))
        XCTAssertNil(admittedSnapshot.budget?.month, "no monthly budget: no header")
        let reset = try XCTUnwrap(admittedSnapshot.budget?.day?.resetSeconds)
        XCTAssertTrue((0...86_400).contains(reset), "\(reset)")
        let (denial, deniedSnapshot) = try await denied(costing(key, 600_000))
        XCTAssertEqual(deniedSnapshot.budget?.day?.remaining, USDAmount(nanos: 400_000), "a refusal charges nothing")
        XCTAssertEqual(denial.kind, .dailyBudget)
        XCTAssertEqual(denial.limit, 1_000_000)
        XCTAssertEqual(denial.used, 600_000)
        XCTAssertEqual(denial.requested, 600_000)
        XCTAssertFalse(denial.neverFits)
        XCTAssertGreaterThan(denial.retryAfterSeconds, 0)
        XCTAssertLessThanOrEqual(denial.retryAfterSeconds, 86_400, "renews at the next UTC midnight")
        let afterSettle = try await settled(first, prompt: 1, completion: 1, cost: .known(USDAmount(nanos: 100_000)))
        XCTAssertEqual(afterSettle.budget?.day?.remaining, USDAmount(nanos: 900_000))
        try await admitted(costing(key, 600_000))
        let (full, _) = try await denied(costing(key, 600_000))
        XCTAssertEqual(full.used, 700_000, "the settled cost plus the new reservation")
    }

    func budgetDenialIsAllOrNothingAndNeverFitsAboveTheBudget() async throws {
        let key = newKey()
        let (tooDear, _) = try await denied(costing(key, 1_000_001))
        XCTAssertEqual(tooDear.kind, .dailyBudget)
        XCTAssertTrue(tooDear.neverFits)
        let (_, snapshot) = try await admitted(costing(key, 1_000_000))
        XCTAssertEqual(snapshot.remainingRequests, 99, "the refused request took no request")
    }

    func unknownCostKeepsTheBudgetReservation() async throws {
        let key = newKey()
        let (first, _) = try await admitted(costing(key, 600_000))
        try await settled(first, cost: .unknown)
        let (denial, _) = try await denied(costing(key, 600_000))
        XCTAssertEqual(denial.used, 600_000)
    }

    func monthlyBudgetIsEnforcedToo() async throws {
        let key = newKey()
        var limits = ResolvedLimits()
        limits.usdPerMonth = 500
        try await admitted(costing(key, 300, limits))
        let (denial, _) = try await denied(costing(key, 300, limits))
        XCTAssertEqual(denial.kind, .monthlyBudget)
        XCTAssertEqual(denial.used, 300)
    }

    /// Many concurrent requests against a small budget: every admitted request costs at most what it
    /// reserved, so what they cost together never passes the budget (the slack the issue allows is one
    /// settle correction, for a request that costs more than it reserved; none here).
    func concurrentRequestsNeverOvershootABudget() async throws {
        let key = newKey()
        let limits = budget
        let store = self.store
        let costs = try await withThrowingTaskGroup(of: Int64?.self) { group in
            for index in 0..<200 {
                group.addTask {
                    var admission = AdmissionRequest(requestID: UUID().uuidString, keyID: key, limits: limits, model: "m", promptTokens: 1, reservedOutputTokens: 1)
                    admission.reservedCostNanos = 10_000
                    guard case .admitted(var reservation, _) = try await store.admit(admission) else { return nil }
                    let cost = Int64(index % 7) * 1_000 + 4_000
                    reservation.settledCost = .known(USDAmount(nanos: cost))
                    _ = try await store.settle(reservation, actualPromptTokens: 1, actualCompletionTokens: 1)
                    return cost
                }
            }
            return try await group.reduce(into: [Int64]()) { if let cost = $1 { $0.append(cost) } }
        }
        XCTAssertLessThanOrEqual(costs.reduce(0, +), 1_000_000)
        XCTAssertGreaterThanOrEqual(costs.count, 100, "a refusal comes only once less than one reservation is left")
    }
}

// MARK: - the two stores

final class InMemoryLimiterStoreConformanceTests: XCTestCase {
    var checks = LimiterStoreConformance(store: InMemoryLimiterStore())

    func testAdmitChargesEveryBucketAndReportsHeaders() async throws { try await checks.admitChargesEveryBucketAndReportsHeaders() }
    func testDenialIsAllOrNothing() async throws { try await checks.denialIsAllOrNothing() }
    func testEachBucketChargesItsOwnCost() async throws { try await checks.eachBucketChargesItsOwnCost() }
    func testNeverFitsOutranksLongerWaits() async throws { try await checks.neverFitsOutranksLongerWaits() }
    func testLongestWaitIsReported() async throws { try await checks.longestWaitIsReported() }
    func testSettleRefundsUnusedReservation() async throws { try await checks.settleRefundsUnusedReservation() }
    func testSettleChargesUsageBeyondReservation() async throws { try await checks.settleChargesUsageBeyondReservation() }
    func testConcurrencySlotsAreReleasedOnSettle() async throws { try await checks.concurrencySlotsAreReleasedOnSettle() }
    func testSettleHappensExactlyOnce() async throws { try await checks.settleHappensExactlyOnce() }
    func testSnapshotChargesNothing() async throws { try await checks.snapshotChargesNothing() }
    func testUnlimitedKeyIsAlwaysAdmitted() async throws { try await checks.unlimitedKeyIsAlwaysAdmitted() }
    func testKeysAreIndependent() async throws { try await checks.keysAreIndependent() }
    func testRetryAfterIsWhenTheRequestPasses() async throws { try await checks.retryAfterIsWhenTheRequestPasses() }
    func testBudgetReservesTheMaximumAndSettleCorrectsIt() async throws { try await checks.budgetReservesTheMaximumAndSettleCorrectsIt() }
    func testBudgetDenialIsAllOrNothingAndNeverFitsAboveTheBudget() async throws { try await checks.budgetDenialIsAllOrNothingAndNeverFitsAboveTheBudget() }
    func testUnknownCostKeepsTheBudgetReservation() async throws { try await checks.unknownCostKeepsTheBudgetReservation() }
    func testMonthlyBudgetIsEnforcedToo() async throws { try await checks.monthlyBudgetIsEnforcedToo() }
    func testConcurrentRequestsNeverOvershootABudget() async throws { try await checks.concurrentRequestsNeverOvershootABudget() }
}

final class RedisLimiterStoreConformanceTests: XCTestCase {
    var server: RedisServerProcess?
    var client: RedisClient?
    var checks: LimiterStoreConformance?

    override func setUpWithError() throws {
        let server = try RedisServerProcess()
        let client = try RedisClient(config: server.config, options: testClientOptions)
        self.server = server
        self.client = client
        checks = LimiterStoreConformance(store: try RedisLimiterStore(client: client))
    }

    override func tearDown() {
        client?.shutdown()
        server?.stop()
    }

    private var run: LimiterStoreConformance {
        get throws {
            guard let checks else { throw RedisTestError("no store") }
            return checks
        }
    }

    func testAdmitChargesEveryBucketAndReportsHeaders() async throws { try await run.admitChargesEveryBucketAndReportsHeaders() }
    func testDenialIsAllOrNothing() async throws { try await run.denialIsAllOrNothing() }
    func testEachBucketChargesItsOwnCost() async throws { try await run.eachBucketChargesItsOwnCost() }
    func testNeverFitsOutranksLongerWaits() async throws { try await run.neverFitsOutranksLongerWaits() }
    func testLongestWaitIsReported() async throws { try await run.longestWaitIsReported() }
    func testSettleRefundsUnusedReservation() async throws { try await run.settleRefundsUnusedReservation() }
    func testSettleChargesUsageBeyondReservation() async throws { try await run.settleChargesUsageBeyondReservation() }
    func testConcurrencySlotsAreReleasedOnSettle() async throws { try await run.concurrencySlotsAreReleasedOnSettle() }
    func testSettleHappensExactlyOnce() async throws { try await run.settleHappensExactlyOnce() }
    func testSnapshotChargesNothing() async throws { try await run.snapshotChargesNothing() }
    func testUnlimitedKeyIsAlwaysAdmitted() async throws { try await run.unlimitedKeyIsAlwaysAdmitted() }
    func testKeysAreIndependent() async throws { try await run.keysAreIndependent() }
    func testRetryAfterIsWhenTheRequestPasses() async throws { try await run.retryAfterIsWhenTheRequestPasses() }
    func testBudgetReservesTheMaximumAndSettleCorrectsIt() async throws { try await run.budgetReservesTheMaximumAndSettleCorrectsIt() }
    func testBudgetDenialIsAllOrNothingAndNeverFitsAboveTheBudget() async throws { try await run.budgetDenialIsAllOrNothingAndNeverFitsAboveTheBudget() }
    func testUnknownCostKeepsTheBudgetReservation() async throws { try await run.unknownCostKeepsTheBudgetReservation() }
    func testMonthlyBudgetIsEnforcedToo() async throws { try await run.monthlyBudgetIsEnforcedToo() }
    func testConcurrentRequestsNeverOvershootABudget() async throws { try await run.concurrentRequestsNeverOvershootABudget() }
}

/// The Redis store with every key leased (`lease: always`): the node admits against slices of the
/// buckets it holds, and the semantics must not change.
final class LeasedRedisLimiterStoreConformanceTests: XCTestCase {
    var server: RedisServerProcess?
    var client: RedisClient?
    var checks: LimiterStoreConformance?

    override func setUpWithError() throws {
        let server = try RedisServerProcess()
        let client = try RedisClient(config: server.config, options: testClientOptions)
        self.server = server
        self.client = client
        checks = LimiterStoreConformance(store: AlwaysLeased(try RedisLimiterStore(client: client)))
    }

    override func tearDown() {
        client?.shutdown()
        server?.stop()
    }

    private var run: LimiterStoreConformance {
        get throws {
            guard let checks else { throw RedisTestError("no store") }
            return checks
        }
    }

    func testAdmitChargesEveryBucketAndReportsHeaders() async throws { try await run.admitChargesEveryBucketAndReportsHeaders() }
    func testDenialIsAllOrNothing() async throws { try await run.denialIsAllOrNothing() }
    func testEachBucketChargesItsOwnCost() async throws { try await run.eachBucketChargesItsOwnCost() }
    func testNeverFitsOutranksLongerWaits() async throws { try await run.neverFitsOutranksLongerWaits() }
    func testLongestWaitIsReported() async throws { try await run.longestWaitIsReported() }
    func testSettleRefundsUnusedReservation() async throws { try await run.settleRefundsUnusedReservation() }
    func testSettleChargesUsageBeyondReservation() async throws { try await run.settleChargesUsageBeyondReservation() }
    func testConcurrencySlotsAreReleasedOnSettle() async throws { try await run.concurrencySlotsAreReleasedOnSettle() }
    func testSettleHappensExactlyOnce() async throws { try await run.settleHappensExactlyOnce() }
    func testSnapshotChargesNothing() async throws { try await run.snapshotChargesNothing() }
    func testUnlimitedKeyIsAlwaysAdmitted() async throws { try await run.unlimitedKeyIsAlwaysAdmitted() }
    func testKeysAreIndependent() async throws { try await run.keysAreIndependent() }
    func testRetryAfterIsWhenTheRequestPasses() async throws { try await run.retryAfterIsWhenTheRequestPasses() }
    func testBudgetReservesTheMaximumAndSettleCorrectsIt() async throws { try await run.budgetReservesTheMaximumAndSettleCorrectsIt() }
    func testBudgetDenialIsAllOrNothingAndNeverFitsAboveTheBudget() async throws { try await run.budgetDenialIsAllOrNothingAndNeverFitsAboveTheBudget() }
    func testUnknownCostKeepsTheBudgetReservation() async throws { try await run.unknownCostKeepsTheBudgetReservation() }
    func testMonthlyBudgetIsEnforcedToo() async throws { try await run.monthlyBudgetIsEnforcedToo() }
    func testConcurrentRequestsNeverOvershootABudget() async throws { try await run.concurrentRequestsNeverOvershootABudget() }
}

/// A store whose requests all ask for leasing.
struct AlwaysLeased: LimiterStore {
    let store: RedisLimiterStore

    init(_ store: RedisLimiterStore) { self.store = store }

    func admit(_ request: AdmissionRequest) async throws -> AdmissionDecision {
        var leased = request
        leased.limits.lease = .always
        return try await store.admit(leased)
    }

    func settle(_ reservation: Reservation, actualPromptTokens: Int, actualCompletionTokens: Int) async throws -> RateLimitSnapshot? {
        try await store.settle(reservation, actualPromptTokens: actualPromptTokens, actualCompletionTokens: actualCompletionTokens)
    }

    func snapshot(keyID: String, team: String?, limits: ResolvedLimits) async throws -> RateLimitSnapshot {
        try await store.snapshot(keyID: keyID, team: team, limits: limits)
    }

    func periodUsage(_ subject: LimitSubject) async throws -> PeriodUsage {
        try await store.periodUsage(subject)
    }
}

// MARK: - the month's tokens (volume tiers, plans)

extension LimiterStoreConformance {
    /// A request priced by its position in the key's month learns where its tokens start: after the
    /// settled tokens and the reservations admitted before it; settle corrects the count.
    func monthTokensGivePositions() async throws {
        let key = "month-" + UUID().uuidString.prefix(8).lowercased()
        func tracked(_ prompt: Int, _ output: Int, limits: ResolvedLimits = ResolvedLimits()) -> AdmissionRequest {
            var admission = AdmissionRequest(requestID: UUID().uuidString, keyID: key, limits: limits, model: model, promptTokens: prompt, reservedOutputTokens: output)
            admission.tracksMonthTokens = true
            return admission
        }
        guard case .admitted(let first, _) = try await store.admit(tracked(100, 50)) else { return XCTFail("denied") }
        XCTAssertEqual(first.monthTokensBefore, 0)
        guard case .admitted(let second, _) = try await store.admit(tracked(10, 10, limits: ResolvedLimits(requests: BucketLimit(perMinute: 1_000)))) else { return XCTFail("denied") }
        XCTAssertEqual(second.monthTokensBefore, 150, "after the first one's reservation")
        _ = try await store.settle(first, actualPromptTokens: 100, actualCompletionTokens: 20)
        _ = try await store.settle(second, actualPromptTokens: 10, actualCompletionTokens: 10)
        guard case .admitted(let third, _) = try await store.admit(tracked(1, 1)) else { return XCTFail("denied") }
        XCTAssertEqual(third.monthTokensBefore, 140, "120 + 20 settled")
        // A request that does not track learns nothing.
        var untracked = tracked(1, 1)
        untracked.tracksMonthTokens = false
        guard case .admitted(let plain, _) = try await store.admit(untracked) else { return XCTFail("denied") }
        XCTAssertNil(plain.monthTokensBefore)
    }
}

final class MonthTokensConformanceTests: XCTestCase {
    func testInMemory() async throws {
        try await LimiterStoreConformance(store: InMemoryLimiterStore()).monthTokensGivePositions()
    }

    func testRedis() async throws {
        try await withRedisClient { client in
            try await LimiterStoreConformance(store: try RedisLimiterStore(client: client)).monthTokensGivePositions()
            try await LimiterStoreConformance(store: AlwaysLeased(try RedisLimiterStore(client: client))).monthTokensGivePositions()
        }
    }
}

// MARK: - teams

/// A team's limits are shared by its keys: a request passes its key's and its team's limits in one
/// atomic step (nothing charged unless both admit), and settlements correct both.
extension LimiterStoreConformance {
    private func teamRequest(_ key: String, _ keyLimits: ResolvedLimits, team: TeamSubject, prompt: Int = 1, output: Int = 1, cost: Int64 = 0) -> AdmissionRequest {
        var admission = AdmissionRequest(requestID: UUID().uuidString, keyID: key, limits: keyLimits, model: model, promptTokens: prompt, reservedOutputTokens: output)
        admission.team = team
        admission.reservedCostNanos = cost
        return admission
    }

    private func newTeam(_ limits: ResolvedLimits) -> TeamSubject {
        TeamSubject(id: "team-" + UUID().uuidString.prefix(8).lowercased(), limits: limits)
    }

    /// Admitted by both: the key's buckets and the team's budget are charged by the one admission.
    func keyAndTeamAreChargedTogether() async throws {
        var teamLimits = ResolvedLimits()
        teamLimits.usdPerDay = 1_000_000
        let team = newTeam(teamLimits)
        let key = newKey()
        let keyLimits = ResolvedLimits(requests: BucketLimit(perMinute: 10))
        let (reservation, snapshot) = try await admitted(teamRequest(key, keyLimits, team: team, cost: 600_000))
        XCTAssertEqual(reservation.team?.id, team.id)
        XCTAssertEqual(snapshot.remainingRequests, 9, "the key's own limit was charged")
        XCTAssertNil(snapshot.budget, "the key has no budget of its own")
        XCTAssertEqual(snapshot.teamBudget?.day?.limit, USDAmount(nanos: 1_000_000), "the team's budget, for its headers")
        XCTAssertEqual(snapshot.teamBudget?.day?.remaining, USDAmount(nanos: 400_000))
        XCTAssertNil(snapshot.teamBudget?.month)
        let used = try await store.periodUsage(.team(team.id))
        XCTAssertEqual(used.spentToday, USDAmount(nanos: 600_000), "the team's budget was charged")
        // Another key of the team: its own limits are untouched, the team's budget is shared.
        let (denial, deniedSnapshot) = try await denied(teamRequest(newKey(), keyLimits, team: team, cost: 600_000))
        XCTAssertEqual(denial.kind, .dailyBudget)
        XCTAssertEqual(denial.team, team.id, "the team's limit denied, and says so")
        XCTAssertEqual(denial.used, 600_000)
        XCTAssertEqual(deniedSnapshot.remainingRequests, 10, "a refusal by the team charges the key nothing")
        XCTAssertEqual(deniedSnapshot.teamBudget?.day?.remaining, USDAmount(nanos: 400_000), "nor the team")
        XCTAssertTrue(denial.gatewayError(model: model).message.contains("of team \(team.id)"), denial.gatewayError(model: model).message)
    }

    /// The team's per-minute limit denies a second key; a denial by the key's own limit charges the
    /// team nothing.
    func aTeamLimitDeniesAnotherKey() async throws {
        let team = newTeam(ResolvedLimits(requests: BucketLimit(perMinute: 2)))
        let keyLimits = ResolvedLimits(requests: BucketLimit(perMinute: 10))
        let first = newKey(), second = newKey()
        try await admitted(teamRequest(first, keyLimits, team: team))
        // A key whose own limit is tiny: its refusal must leave the team's last request alone.
        let (own, _) = try await denied(teamRequest(newKey(), ResolvedLimits(tokens: BucketLimit(perMinute: 1)), team: team, prompt: 5))
        XCTAssertEqual(own.kind, .tokens)
        XCTAssertNil(own.team, "the key's own limit denied")
        try await admitted(teamRequest(second, keyLimits, team: team))
        let (denial, snapshot) = try await denied(teamRequest(second, keyLimits, team: team))
        XCTAssertEqual(denial.kind, .requests)
        XCTAssertEqual(denial.team, team.id)
        XCTAssertEqual(denial.limit, 2)
        XCTAssertEqual(snapshot.remainingRequests, 9, "only the admitted request was charged to the key")
    }

    /// Settle corrects both: the unused reservation returns to the team's tokens bucket and the
    /// cost replaces the budget's reservation, so another key of the team can use them.
    func settleCorrectsKeyAndTeam() async throws {
        var teamLimits = ResolvedLimits(tokens: BucketLimit(perMinute: 100))
        teamLimits.usdPerDay = 1_000_000
        let team = newTeam(teamLimits)
        let keyLimits = ResolvedLimits(tokens: BucketLimit(perMinute: 100))
        let first = newKey()
        let (reservation, _) = try await admitted(teamRequest(first, keyLimits, team: team, prompt: 50, output: 40, cost: 600_000))
        // Before the settlement the team has 10 tokens and $0.0004 left.
        let (before, _) = try await denied(teamRequest(newKey(), keyLimits, team: team, prompt: 50, output: 30, cost: 100))
        XCTAssertEqual(before.kind, .tokens)
        XCTAssertEqual(before.team, team.id)
        var used = reservation
        used.settledCost = .known(USDAmount(nanos: 100_000))
        let snapshot = try await settled(used, prompt: 10, completion: 10)
        XCTAssertEqual(snapshot.remainingTokens, 80, "the key's bucket was refunded")
        let corrected = try await store.periodUsage(.team(team.id)).spentToday
        XCTAssertEqual(corrected, USDAmount(nanos: 100_000), "the team's budget was corrected to the cost")
        // 20 tokens used + 80 fits the team's 100; $0.0001 + $0.0009 fits its $0.001.
        try await admitted(teamRequest(newKey(), keyLimits, team: team, prompt: 50, output: 30, cost: 900_000))
        let again = try await store.settle(used, actualPromptTokens: 10, actualCompletionTokens: 10)
        XCTAssertNil(again, "settled once")
        let full = try await store.periodUsage(.team(team.id)).spentToday
        XCTAssertEqual(full, USDAmount(nanos: 1_000_000))
    }

    /// The team's concurrency limit counts the requests of all its keys; settle frees the slot.
    func teamConcurrencyCountsEveryKey() async throws {
        let team = newTeam(ResolvedLimits(maxConcurrentRequests: 1))
        let (first, _) = try await admitted(teamRequest(newKey(), ResolvedLimits(), team: team))
        let other = newKey()
        let (denial, _) = try await denied(teamRequest(other, ResolvedLimits(), team: team))
        XCTAssertEqual(denial.kind, .concurrency)
        XCTAssertEqual(denial.team, team.id)
        _ = try await settled(first, prompt: 1, completion: 1)
        try await admitted(teamRequest(other, ResolvedLimits(), team: team))
    }
}

// MARK: - the month's tokens of a team (volume tiers, plans)

extension LimiterStoreConformance {
    /// A key in a team is priced by the team's month: each key's request starts where the team's
    /// tokens of the month (all its keys', reservations included) end; settle corrects the team's
    /// count; a refused request takes no position; the key's own month (outside the team) counts
    /// none of it.
    func teamMonthTokensGivePositions() async throws {
        let team = TeamSubject(id: "month-team-" + UUID().uuidString.prefix(8).lowercased(), limits: ResolvedLimits(requests: BucketLimit(perMinute: 4)))
        let first = newKey(), second = newKey()
        func tracked(_ key: String, _ prompt: Int, _ output: Int, team: TeamSubject? = nil) -> AdmissionRequest {
            var admission = AdmissionRequest(requestID: UUID().uuidString, keyID: key, limits: ResolvedLimits(), model: model, promptTokens: prompt, reservedOutputTokens: output)
            admission.team = team
            admission.tracksMonthTokens = true
            return admission
        }
        let (a, _) = try await admitted(tracked(first, 100, 50, team: team))
        XCTAssertEqual(a.monthTokensBefore, 0)
        let (b, _) = try await admitted(tracked(second, 10, 10, team: team))
        XCTAssertEqual(b.monthTokensBefore, 150, "the second key starts after the first key's reservation: the team's month")
        _ = try await settled(a, prompt: 100, completion: 20)
        _ = try await settled(b, prompt: 10, completion: 10)
        let (c, _) = try await admitted(tracked(second, 1, 1, team: team))
        XCTAssertEqual(c.monthTokensBefore, 140, "120 + 20 settled, the first key's settlement corrected the team's count")
        // The team's 4 requests a minute are used up by the next one: the fifth is refused and takes
        // no position in the month.
        let (d, _) = try await admitted(tracked(first, 5, 5, team: team))
        XCTAssertEqual(d.monthTokensBefore, 142)
        let (denial, _) = try await denied(tracked(second, 1_000, 1_000, team: team))
        XCTAssertEqual(denial.team, team.id)
        _ = try await settled(c, prompt: 1, completion: 1)
        _ = try await settled(d, prompt: 5, completion: 0)
        // The same key outside the team (as after leaving it) has a month of its own, empty.
        let (alone, _) = try await admitted(tracked(second, 1, 1))
        XCTAssertEqual(alone.monthTokensBefore, 0, "the team's tokens were never counted on the key's own month")
        // Back in the team (its request limit lifted): 142 + 5 (d used 5 of its 10) = 147.
        let unlimitedTeam = TeamSubject(id: team.id, limits: ResolvedLimits())
        let (e, _) = try await admitted(tracked(first, 1, 1, team: unlimitedTeam))
        XCTAssertEqual(e.monthTokensBefore, 147)
    }
}

final class TeamMonthTokensConformanceTests: XCTestCase {
    func testInMemory() async throws {
        try await LimiterStoreConformance(store: InMemoryLimiterStore()).teamMonthTokensGivePositions()
    }

    func testRedis() async throws {
        try await withRedisClient { client in
            try await LimiterStoreConformance(store: try RedisLimiterStore(client: client)).teamMonthTokensGivePositions()
            // Keys in a team are never leased: the same positions.
            try await LimiterStoreConformance(store: AlwaysLeased(try RedisLimiterStore(client: client))).teamMonthTokensGivePositions()
            // Two nodes sharing the Redis: the team's month is one counter.
            let nodeA = try RedisLimiterStore(client: client, nodeID: "node-a"), nodeB = try RedisLimiterStore(client: client, nodeID: "node-b")
            let team = TeamSubject(id: "month-team-" + UUID().uuidString.prefix(8).lowercased(), limits: ResolvedLimits())
            var onA = AdmissionRequest(requestID: UUID().uuidString, keyID: "month-a-" + UUID().uuidString.prefix(6).lowercased(), limits: ResolvedLimits(), model: "m", promptTokens: 30, reservedOutputTokens: 20)
            onA.team = team
            onA.tracksMonthTokens = true
            guard case .admitted(let a, _) = try await nodeA.admit(onA) else { return XCTFail("denied") }
            _ = try await nodeA.settle(a, actualPromptTokens: 30, actualCompletionTokens: 5)
            var onB = onA
            onB.requestID = UUID().uuidString
            onB.keyID = "month-b-" + UUID().uuidString.prefix(6).lowercased()
            guard case .admitted(let b, _) = try await nodeB.admit(onB) else { return XCTFail("denied") }
            XCTAssertEqual(b.monthTokensBefore, 35, "node-b's key starts after node-a's key's settled 35 tokens")
        }
    }
}

/// Many concurrent requests of several keys of one team, spread over `stores` (nodes sharing one
/// state), against a small team budget: what they cost never passes it (each request costs at most
/// what it reserved, so no settle correction is owed), and the budget is used up to less than one
/// reservation.
func concurrentKeysOfATeamNeverOvershootItsBudget(_ stores: [any LimiterStore]) async throws {
    var teamLimits = ResolvedLimits()
    teamLimits.usdPerDay = 1_000_000
    let team = TeamSubject(id: "team-" + UUID().uuidString.prefix(8).lowercased(), limits: teamLimits)
    let keys = (0..<4).map { "member-\($0)-" + UUID().uuidString.prefix(6).lowercased() }
    let costs = try await withThrowingTaskGroup(of: Int64?.self) { group in
        for index in 0..<200 {
            let store = stores[index % stores.count]
            group.addTask {
                var admission = AdmissionRequest(requestID: UUID().uuidString, keyID: keys[index % keys.count], limits: ResolvedLimits(requests: BucketLimit(perMinute: 1_000)), model: "m", promptTokens: 1, reservedOutputTokens: 1)
                admission.team = team
                admission.reservedCostNanos = 10_000
                guard case .admitted(var reservation, _) = try await store.admit(admission) else { return nil }
                let cost = Int64(index % 7) * 1_000 + 4_000
                reservation.settledCost = .known(USDAmount(nanos: cost))
                _ = try await store.settle(reservation, actualPromptTokens: 1, actualCompletionTokens: 1)
                return cost
            }
        }
        return try await group.reduce(into: [Int64]()) { if let cost = $1 { $0.append(cost) } }
    }
    XCTAssertLessThanOrEqual(costs.reduce(0, +), 1_000_000)
    XCTAssertGreaterThanOrEqual(costs.count, 100, "a refusal comes only once less than one reservation is left")
    let spent = try await stores[0].periodUsage(.team(team.id)).spentToday
    XCTAssertEqual(spent, USDAmount(nanos: costs.reduce(0, +)), "the team's spend is the sum of its keys' settled costs")
}

final class TeamConformanceTests: XCTestCase {
    private func checks(_ store: any LimiterStore) async throws {
        let checks = LimiterStoreConformance(store: store)
        try await checks.keyAndTeamAreChargedTogether()
        try await checks.aTeamLimitDeniesAnotherKey()
        try await checks.settleCorrectsKeyAndTeam()
        try await checks.teamConcurrencyCountsEveryKey()
    }

    func testInMemory() async throws {
        let store = InMemoryLimiterStore()
        try await checks(store)
        try await concurrentKeysOfATeamNeverOvershootItsBudget([store])
    }

    func testRedis() async throws {
        try await withRedisClient { client in
            try await checks(try RedisLimiterStore(client: client))
            // Keys in a team are never leased, whatever they ask for: the same semantics.
            try await checks(AlwaysLeased(try RedisLimiterStore(client: client)))
            // Two nodes sharing the Redis.
            try await concurrentKeysOfATeamNeverOvershootItsBudget([
                try RedisLimiterStore(client: client, nodeID: "node-a"), try RedisLimiterStore(client: client, nodeID: "node-b"),
            ])
        }
    }
}

/// A redis-server of its own and a client on it for `body`, both stopped after it.
private func withRedisClient(_ body: (RedisClient) async throws -> Void) async throws {
    let server = try RedisServerProcess()
    let client = try RedisClient(config: server.config, options: testClientOptions)
    defer {
        client.shutdown()
        server.stop()
    }
    try await body(client)
}
