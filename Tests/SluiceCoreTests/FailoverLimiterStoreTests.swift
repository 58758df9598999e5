import Synchronization
import XCTest
@testable import SluiceCore

/// A shared store that can be switched off, and counts what it was asked.
private final class SwitchableStore: LimiterStore {
    struct Down: Error {}
    let inner: InMemoryLimiterStore
    let up = Mutex(true)
    let calls = Mutex((admits: 0, settles: 0))

    init(clock: @escaping InMemoryLimiterStore.Clock) { inner = InMemoryLimiterStore(clock: clock) }

    func admit(_ request: AdmissionRequest) async throws -> AdmissionDecision {
        calls.withLock { $0.admits += 1 }
        guard up.withLock({ $0 }) else { throw Down() }
        return inner.admitNow(request)
    }

    func settle(_ reservation: Reservation, actualPromptTokens: Int, actualCompletionTokens: Int) async throws -> RateLimitSnapshot? {
        calls.withLock { $0.settles += 1 }
        guard up.withLock({ $0 }) else { throw Down() }
        return inner.settleNow(reservation, actualPromptTokens: actualPromptTokens, actualCompletionTokens: actualCompletionTokens)
    }

    func snapshot(keyID: String, team: String?, limits: ResolvedLimits) async throws -> RateLimitSnapshot {
        guard up.withLock({ $0 }) else { throw Down() }
        return inner.snapshotNow(keyID: keyID, limits: limits)
    }
}

final class FailoverLimiterStoreTests: XCTestCase {
    private final class ManualClock: Sendable {
        let now = Mutex<Int64>(1_000_000_000)
    }
    private let manual = ManualClock()
    private var clock: InMemoryLimiterStore.Clock { { [manual] in manual.now.withLock { $0 } } }
    private let limits = ResolvedLimits(requests: BucketLimit(perMinute: 40), maxConcurrentRequests: 100)

    private func request(_ n: Int) -> AdmissionRequest {
        AdmissionRequest(requestID: "r\(n)", keyID: "k", limits: limits, model: "m", promptTokens: 1, reservedOutputTokens: 1)
    }

    private func admittedCount(_ store: FailoverLimiterStore, _ range: Range<Int>) async throws -> Int {
        var admitted = 0
        for n in range {
            if case .admitted = try await store.admit(request(n)) { admitted += 1 }
        }
        return admitted
    }

    func testUsesTheSharedStoreWhileItAnswers() async throws {
        let shared = SwitchableStore(clock: clock)
        let store = FailoverLimiterStore(shared: shared, policy: .local, fallbackNodeCount: 4, clock: clock)
        let admitted = try await admittedCount(store, 0..<50)
        XCTAssertEqual(admitted, 40)
        XCTAssertEqual(shared.calls.withLock { $0.admits }, 50)
        XCTAssertEqual(store.mode, .shared)
    }

    func testLocalPolicyEnforcesTheLimitDividedByLiveNodes() async throws {
        let shared = SwitchableStore(clock: clock)
        shared.up.withLock { $0 = false }
        let modes = Mutex<[FailoverLimiterStore.Mode]>([])
        let store = FailoverLimiterStore(shared: shared, policy: .local, fallbackNodeCount: 4, clock: clock) { mode, _ in
            modes.withLock { $0.append(mode) }
        }
        // No heartbeat seen yet: the configured count (4) → 40 / 4 = 10.
        let firstAdmitted = try await admittedCount(store, 0..<30)
        XCTAssertEqual(firstAdmitted, 10)
        XCTAssertEqual(store.mode, .local)
        XCTAssertEqual(modes.withLock { $0 }, [.local])
        // The circuit is open: the dead store was asked once, not for every request.
        XCTAssertEqual(shared.calls.withLock { $0.admits }, 1)

        // With 2 live nodes known from heartbeats, a fresh key gets 40 / 2 = 20.
        store.updateLiveNodeCount(2)
        var admitted = 0
        for n in 100..<140 {
            let r = AdmissionRequest(requestID: "x\(n)", keyID: "other", limits: limits, model: "m", promptTokens: 1, reservedOutputTokens: 1)
            if case .admitted = try await store.admit(r) { admitted += 1 }
        }
        XCTAssertEqual(admitted, 20)
    }

    /// Under `local`, a team's limits are split like a key's: each node enforces its share of the
    /// team's, across the team's keys (here 40 / 4 = 10 requests for the two keys together).
    func testLocalPolicySplitsATeamsLimitsToo() async throws {
        let shared = SwitchableStore(clock: clock)
        shared.up.withLock { $0 = false }
        let store = FailoverLimiterStore(shared: shared, policy: .local, fallbackNodeCount: 4, clock: clock)
        let team = TeamSubject(id: "squad", limits: ResolvedLimits(requests: BucketLimit(perMinute: 40)))
        var admitted = 0
        var teamDenials = 0
        for n in 0..<30 {
            var r = AdmissionRequest(requestID: "t\(n)", keyID: n % 2 == 0 ? "a" : "b", limits: ResolvedLimits(requests: BucketLimit(perMinute: 400)), model: "m", promptTokens: 1, reservedOutputTokens: 1)
            r.team = team
            switch try await store.admit(r) {
            case .admitted: admitted += 1
            case .denied(let denial, _): if denial.team == "squad" { teamDenials += 1 }
            }
        }
        XCTAssertEqual(admitted, 10)
        XCTAssertEqual(teamDenials, 20, "refused by the team's share, and said so")
    }

    func testCircuitProbesAfterTheIntervalAndReturnsToTheSharedStore() async throws {
        let shared = SwitchableStore(clock: clock)
        shared.up.withLock { $0 = false }
        let modes = Mutex<[FailoverLimiterStore.Mode]>([])
        let store = FailoverLimiterStore(shared: shared, policy: .local, fallbackNodeCount: 1, retryIntervalMicros: 1_000_000, clock: clock) { mode, _ in
            modes.withLock { $0.append(mode) }
        }
        _ = try await store.admit(request(0))
        _ = try await store.admit(request(1))
        XCTAssertEqual(shared.calls.withLock { $0.admits }, 1)
        manual.now.withLock { $0 += 1_100_000 }
        shared.up.withLock { $0 = true }
        _ = try await store.admit(request(2))
        XCTAssertEqual(shared.calls.withLock { $0.admits }, 2, "one probe after the interval")
        XCTAssertEqual(store.mode, .shared)
        XCTAssertEqual(modes.withLock { $0 }, [.local, .shared])
    }

    func testReservationsSettleWhereTheyWereMadeExactlyOnce() async throws {
        let shared = SwitchableStore(clock: clock)
        let store = FailoverLimiterStore(shared: shared, policy: .local, fallbackNodeCount: 1, clock: clock)
        guard case .admitted(let viaShared, _) = try await store.admit(request(0)) else { return XCTFail() }
        shared.up.withLock { $0 = false }
        guard case .admitted(let viaLocal, _) = try await store.admit(request(1)) else { return XCTFail() }

        let first = try await store.settle(viaLocal, actualPromptTokens: 1, actualCompletionTokens: 1)
        XCTAssertNotNil(first)
        XCTAssertEqual(shared.calls.withLock { $0.settles }, 0, "a local reservation never goes to the shared store")

        shared.up.withLock { $0 = true }
        _ = try await store.settle(viaShared, actualPromptTokens: 1, actualCompletionTokens: 1)
        XCTAssertEqual(shared.calls.withLock { $0.settles }, 1)
        // A repeated settle is a no-op wherever it lands (the shared store knows no such reservation).
        let again = try await store.settle(viaLocal, actualPromptTokens: 1, actualCompletionTokens: 1)
        XCTAssertNil(again)
        let againShared = try await store.settle(viaShared, actualPromptTokens: 1, actualCompletionTokens: 1)
        XCTAssertNil(againShared)
    }

    func testOpenAdmitsEverythingAndClosedRefuses() async throws {
        let shared = SwitchableStore(clock: clock)
        shared.up.withLock { $0 = false }
        let open = FailoverLimiterStore(shared: shared, policy: .open, fallbackNodeCount: 1, clock: clock)
        let openAdmitted = try await admittedCount(open, 0..<100)
        XCTAssertEqual(openAdmitted, 100)
        XCTAssertEqual(open.mode, .open)

        let closed = FailoverLimiterStore(shared: shared, policy: .closed, fallbackNodeCount: 1, clock: clock)
        do {
            _ = try await closed.admit(request(0))
            XCTFail("closed policy must refuse")
        } catch is FailoverLimiterStore.SharedStoreUnavailable {}
        XCTAssertEqual(closed.mode, .closed)
    }

    // MARK: settlements owed to the shared store

    /// A settlement the shared store does not take is kept and sent when it answers again: the
    /// concurrency slot comes free and the difference is applied. Before, it was dropped, and the
    /// slot stayed taken until its lease expired (10 minutes).
    func testSettlementTheSharedStoreMissedIsRetriedWhenItAnswers() async throws {
        let shared = SwitchableStore(clock: clock)
        let store = FailoverLimiterStore(shared: shared, policy: .local, fallbackNodeCount: 1, clock: clock)
        let oneAtATime = ResolvedLimits(maxConcurrentRequests: 1)
        let first = AdmissionRequest(requestID: "a", keyID: "k", limits: oneAtATime, model: "m", promptTokens: 1, reservedOutputTokens: 1)
        guard case .admitted(let reservation, _) = try await store.admit(first) else { return XCTFail("denied") }

        shared.up.withLock { $0 = false }
        do {
            _ = try await store.settle(reservation, actualPromptTokens: 1, actualCompletionTokens: 1)
            XCTFail("a settlement the shared store did not take was reported as done")
        } catch is FailoverLimiterStore.SettlementDeferred {}
        XCTAssertEqual(store.pendingSettlements, 1)
        // Still down: kept for the next try.
        let none = await store.retryPendingSettlements()
        XCTAssertEqual(none, 0)
        XCTAssertEqual(store.pendingSettlements, 1)

        shared.up.withLock { $0 = true }
        let settled = await store.retryPendingSettlements()
        XCTAssertEqual(settled, 1)
        XCTAssertEqual(store.pendingSettlements, 0)
        let second = AdmissionRequest(requestID: "b", keyID: "k", limits: oneAtATime, model: "m", promptTokens: 1, reservedOutputTokens: 1)
        guard case .admitted = shared.inner.admitNow(second) else { return XCTFail("the slot was never freed in the shared store") }
    }

    /// An admission whose reply was lost may have run in the shared store: it is released there
    /// once the store answers, so its slot does not outlive the request the failure policy served.
    func testAdmissionThatFailedIsReleasedInTheSharedStore() async throws {
        let shared = LosesReplies(clock: clock)
        let store = FailoverLimiterStore(shared: shared, policy: .local, fallbackNodeCount: 1, clock: clock)
        let oneAtATime = ResolvedLimits(maxConcurrentRequests: 1)
        let lost = AdmissionRequest(requestID: "lost", keyID: "k", limits: oneAtATime, model: "m", promptTokens: 1, reservedOutputTokens: 1)
        // Ran in the shared store, but the caller saw an error and admitted it locally instead.
        guard case .admitted = try await store.admit(lost) else { return XCTFail("denied") }
        XCTAssertEqual(store.pendingSettlements, 1)
        let next = AdmissionRequest(requestID: "next", keyID: "k", limits: oneAtATime, model: "m", promptTokens: 1, reservedOutputTokens: 1)
        guard case .denied = shared.inner.admitNow(next) else { return XCTFail("expected the lost admission to hold the slot") }
        await store.retryPendingSettlements()
        guard case .admitted = shared.inner.admitNow(next) else { return XCTFail("the lost admission still holds the slot") }
    }

    /// Settlements older than the shared reservations' lifetime are dropped, not retried for ever.
    func testSettlementsOlderThanTheReservationLifetimeAreDropped() async throws {
        let shared = SwitchableStore(clock: clock)
        let store = FailoverLimiterStore(shared: shared, policy: .local, fallbackNodeCount: 1, maximumPendingAgeMicros: 1_000_000, clock: clock)
        guard case .admitted(let reservation, _) = try await store.admit(request(1)) else { return XCTFail("denied") }
        shared.up.withLock { $0 = false }
        _ = try? await store.settle(reservation, actualPromptTokens: 1, actualCompletionTokens: 1)
        XCTAssertEqual(store.pendingSettlements, 1)
        manual.now.withLock { $0 += 2_000_000 }
        shared.up.withLock { $0 = true }
        let settled = await store.retryPendingSettlements()
        XCTAssertEqual(settled, 0)
        XCTAssertEqual(store.pendingSettlements, 0)
    }
}

/// A shared store whose admissions run but whose replies are lost (a timeout after the command ran).
private final class LosesReplies: LimiterStore {
    struct Lost: Error {}
    let inner: InMemoryLimiterStore

    init(clock: @escaping InMemoryLimiterStore.Clock) { inner = InMemoryLimiterStore(clock: clock) }

    func admit(_ request: AdmissionRequest) async throws -> AdmissionDecision {
        _ = inner.admitNow(request)
        throw Lost()
    }

    func settle(_ reservation: Reservation, actualPromptTokens: Int, actualCompletionTokens: Int) async throws -> RateLimitSnapshot? {
        inner.settleNow(reservation, actualPromptTokens: actualPromptTokens, actualCompletionTokens: actualCompletionTokens)
    }

    func snapshot(keyID: String, team: String?, limits: ResolvedLimits) async throws -> RateLimitSnapshot {
        inner.snapshotNow(keyID: keyID, limits: limits)
    }
}
