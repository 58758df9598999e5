import Synchronization
import XCTest

@testable import SluiceUpstream

final class UpstreamPoolTests: XCTestCase {
    func testFreeSlotsAreGrantedAtOnce() async {
        let pool = UpstreamPool(name: "u", capacity: 2)
        let first = await pool.acquire(timeoutMs: 1000)
        let second = await pool.acquire(timeoutMs: 1000)
        XCTAssertEqual(first.outcome, .granted)
        XCTAssertEqual(second.outcome, .granted)
        XCTAssertEqual(first.waitedNs, 0)
        XCTAssertFalse(first.warnQueueFormed)
        XCTAssertEqual(pool.inUse, 2)
        pool.release()
        pool.release()
        XCTAssertEqual(pool.inUse, 0)
    }

    func testWaitersAreServedInArrivalOrderWhenSlotsComeBack() async throws {
        let pool = UpstreamPool(name: "u", capacity: 1)
        _ = await pool.acquire(timeoutMs: 1000)
        let order = OrderLog()
        let a = Task { let grant = await pool.acquire(timeoutMs: 5000); await order.add("a"); return grant }
        try await waitUntil { pool.queued == 1 }
        let b = Task { let grant = await pool.acquire(timeoutMs: 5000); await order.add("b"); return grant }
        try await waitUntil { pool.queued == 2 }
        pool.release()
        let grantA = await a.value
        XCTAssertEqual(grantA.outcome, .granted)
        XCTAssertTrue(grantA.warnQueueFormed, "the first to queue warns")
        XCTAssertGreaterThan(grantA.waitedNs, 0)
        XCTAssertEqual(pool.queued, 1)
        pool.release()
        let grantB = await b.value
        XCTAssertEqual(grantB.outcome, .granted)
        XCTAssertFalse(grantB.warnQueueFormed, "at most one warning per 10 s")
        let log = await order.entries
        XCTAssertEqual(log, ["a", "b"])
        XCTAssertEqual(pool.inUse, 1)
        pool.release()
        XCTAssertEqual(pool.inUse, 0)
    }

    func testTheQueueWarningIsCalledAsTheQueueFormsOncePerInterval() async throws {
        let pool = UpstreamPool(name: "u", capacity: 1)
        _ = await pool.acquire(timeoutMs: 1000)
        let calls = Counter()
        let first = Task { await pool.acquire(timeoutMs: 5000) { calls.increment() } }
        try await waitUntil { pool.queued == 1 }
        XCTAssertEqual(calls.value, 1, "called while still waiting, not once granted")
        let second = Task { await pool.acquire(timeoutMs: 5000) { calls.increment() } }
        try await waitUntil { pool.queued == 2 }
        pool.release()
        pool.release()
        _ = await first.value
        _ = await second.value
        XCTAssertEqual(calls.value, 1)
    }

    func testQueueTimeout() async {
        let pool = UpstreamPool(name: "u", capacity: 1)
        _ = await pool.acquire(timeoutMs: 1000)
        let started = ContinuousClock.now
        let grant = await pool.acquire(timeoutMs: 100)
        let elapsed = ContinuousClock.now - started
        XCTAssertEqual(grant.outcome, .timedOut)
        XCTAssertGreaterThanOrEqual(elapsed, .milliseconds(90))
        XCTAssertLessThan(elapsed, .seconds(2))
        XCTAssertEqual(pool.queued, 0)
        XCTAssertEqual(pool.inUse, 1, "a timed-out waiter holds nothing")
        pool.release()
        XCTAssertEqual(pool.inUse, 0)
    }

    func testZeroTimeoutDoesNotWait() async {
        let pool = UpstreamPool(name: "u", capacity: 1)
        _ = await pool.acquire(timeoutMs: 0)
        let grant = await pool.acquire(timeoutMs: 0)
        XCTAssertEqual(grant.outcome, .timedOut)
    }

    func testCancelledWaiterLeavesTheQueue() async throws {
        let pool = UpstreamPool(name: "u", capacity: 1)
        _ = await pool.acquire(timeoutMs: 1000)
        let waiter = Task { await pool.acquire(timeoutMs: 10_000) }
        try await waitUntil { pool.queued == 1 }
        waiter.cancel()
        let grant = await waiter.value
        XCTAssertEqual(grant.outcome, .cancelled)
        XCTAssertEqual(pool.queued, 0)
        pool.release()
        XCTAssertEqual(pool.inUse, 0, "the slot went back to the pool, not to the cancelled waiter")
    }

    func testRaisingTheCapacityAdmitsWaiters() async throws {
        let pool = UpstreamPool(name: "u", capacity: 1)
        _ = await pool.acquire(timeoutMs: 1000)
        let waiter = Task { await pool.acquire(timeoutMs: 10_000) }
        try await waitUntil { pool.queued == 1 }
        pool.setCapacity(2)
        let grant = await waiter.value
        XCTAssertEqual(grant.outcome, .granted)
        XCTAssertEqual(pool.inUse, 2)
    }

    func testManyConcurrentAcquisitionsNeverExceedTheCapacity() async {
        let pool = UpstreamPool(name: "u", capacity: 8)
        let peak = PeakCounter()
        await withTaskGroup(of: Void.self) { group in
            for _ in 0..<500 {
                group.addTask {
                    let grant = await pool.acquire(timeoutMs: 30_000)
                    guard grant.outcome == .granted else { return }
                    await peak.enter()
                    await Task.yield()
                    await peak.leave()
                    pool.release()
                }
            }
        }
        let observed = await peak.peak
        XCTAssertLessThanOrEqual(observed, 8)
        XCTAssertEqual(pool.inUse, 0)
        XCTAssertEqual(pool.queued, 0)
    }

    func testPoolsKeepTheirQueueAcrossCapacityChanges() {
        let pools = UpstreamPools()
        let pool = pools.pool(for: "a", capacity: 4)
        XCTAssertTrue(pools.pool(for: "a", capacity: 6) === pool)
        XCTAssertEqual(pool.capacity, 6)
        XCTAssertEqual(pools.queuedByUpstream.map(\.upstream), ["a"])
    }

    private func waitUntil(_ condition: () -> Bool) async throws {
        let deadline = ContinuousClock.now + .seconds(5)
        while !condition() {
            guard ContinuousClock.now < deadline else { return XCTFail("condition not met within 5 s") }
            try await Task.sleep(for: .milliseconds(5))
        }
    }
}

private actor OrderLog {
    var entries: [String] = []
    func add(_ entry: String) { entries.append(entry) }
}

private actor PeakCounter {
    var current = 0
    var peak = 0
    func enter() {
        current += 1
        peak = max(peak, current)
    }
    func leave() { current -= 1 }
}

private final class Counter: Sendable {
    private let count = Mutex(0)
    func increment() { count.withLock { $0 += 1 } }
    var value: Int { count.withLock { $0 } }
}
