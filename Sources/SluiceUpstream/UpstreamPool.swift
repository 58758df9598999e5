import NIOPosix
import SluiceCore
import Synchronization

/// One upstream's node-wide connection budget: at most `capacity` exchanges in flight at once (over
/// HTTP/1.1 one exchange holds one connection), the rest wait in one FIFO queue, each at most its
/// queue timeout.
///
/// Why a gate in front of the engine instead of libcurl's `CURLMOPT_MAX_HOST_CONNECTIONS`: curl's
/// limit is per multi handle (per engine thread) and its queue (pending transfers) is invisible — no
/// count, no wait, no bound. Here the limit is the node's, shared by every engine thread (requests
/// go round-robin to the threads once admitted, so no thread hoards the budget), and the queue is
/// counted (``queued``), timed (``Grant/waitedNs``) and bounded (the timeout). The engine's own
/// per-host cap is set above the sum of the pools' capacities so curl never queues behind this gate.
public final class UpstreamPool: Sendable {
    /// How an ``acquire(timeoutMs:)`` ended.
    public enum Outcome: Sendable, Hashable {
        /// The exchange may go: call ``release()`` once it is over.
        case granted
        /// No slot within the timeout: nothing to release.
        case timedOut
        /// The calling task was cancelled while waiting: nothing to release.
        case cancelled
    }

    public struct Grant: Sendable, Hashable {
        public let outcome: Outcome
        /// Time spent waiting in the queue (0 when a slot was free).
        public let waitedNs: UInt64
        /// The request had to queue and no queue warning was due for 10 s: log one now.
        public let warnQueueFormed: Bool
    }

    /// At most one queue warning per pool per this long.
    public static let warningIntervalNs: UInt64 = 10_000_000_000

    public let name: String
    private let state: Mutex<State>
    private let nextID = Atomic<UInt64>(1)
    /// `State.capacity`, readable without the lock (every request compares it with its config's).
    private let capacityMirror: Atomic<Int>

    private struct State {
        var capacity: Int
        var inUse = 0
        var waiters: [UInt64: CheckedContinuation<Outcome, Never>] = [:]
        /// Waiter ids in arrival order; ids no longer in `waiters` (timed out, cancelled) are skipped.
        var order: [UInt64] = []
        var head = 0
        var lastWarningNs: UInt64?

        /// Takes the oldest live waiter off the queue.
        mutating func popOldest() -> CheckedContinuation<Outcome, Never>? {
            while head < order.count {
                let id = order[head]
                head += 1
                if let waiter = waiters.removeValue(forKey: id) {
                    compact()
                    return waiter
                }
            }
            compact()
            return nil
        }

        mutating func compact() {
            if head == order.count {
                order.removeAll(keepingCapacity: true)
                head = 0
            } else if head > 1024 && head * 2 > order.count {
                order.removeFirst(head)
                head = 0
            }
        }
    }

    public init(name: String, capacity: Int) {
        self.name = name
        self.state = Mutex(State(capacity: max(1, capacity)))
        self.capacityMirror = Atomic(max(1, capacity))
    }

    /// Exchanges waiting for a slot now.
    public var queued: Int { state.withLock { $0.waiters.count } }
    /// Exchanges holding a slot now.
    public var inUse: Int { state.withLock { $0.inUse } }
    public var capacity: Int { capacityMirror.load(ordering: .relaxed) }

    /// Changes the capacity (a config reload); a larger one admits waiters at once, a smaller one
    /// lets the exchanges in flight finish.
    public func setCapacity(_ capacity: Int) {
        var admitted: [CheckedContinuation<Outcome, Never>] = []
        state.withLock { state in
            state.capacity = max(1, capacity)
            capacityMirror.store(state.capacity, ordering: .relaxed)
            while state.inUse < state.capacity, let waiter = state.popOldest() {
                state.inUse += 1
                admitted.append(waiter)
            }
        }
        for waiter in admitted { waiter.resume(returning: .granted) }
    }

    /// Waits for a slot, at most `timeoutMs` (≤ 0: do not wait at all beyond a free slot).
    /// - Parameter onQueueFormed: called as this request joins the queue when no queue warning was
    ///   due for 10 s (at most once per ``warningIntervalNs``): the moment to log one.
    public func acquire(timeoutMs: Int, onQueueFormed: (@Sendable () -> Void)? = nil) async -> Grant {
        let startNs = MonotonicClock.nanoseconds()
        let fast = state.withLock { state -> Bool in
            guard state.inUse < state.capacity, state.waiters.isEmpty else { return false }
            state.inUse += 1
            return true
        }
        if fast { return Grant(outcome: .granted, waitedNs: 0, warnQueueFormed: false) }

        let id = nextID.add(1, ordering: .relaxed).oldValue
        let warn = Mutex(false)
        let timer = Mutex<Task<Void, Never>?>(nil)
        let outcome = await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CheckedContinuation<Outcome, Never>) in
                let immediate = state.withLock { state -> Outcome? in
                    // Checked under the lock: a cancellation either shows here or finds the waiter.
                    if Task.isCancelled { return .cancelled }
                    if state.inUse < state.capacity, state.waiters.isEmpty {
                        state.inUse += 1
                        return .granted
                    }
                    state.waiters[id] = continuation
                    state.order.append(id)
                    if state.lastWarningNs.map({ startNs &- $0 >= Self.warningIntervalNs }) ?? true {
                        state.lastWarningNs = startNs
                        warn.withLock { $0 = true }
                    }
                    return nil
                }
                if let immediate {
                    continuation.resume(returning: immediate)
                } else {
                    // Started once the waiter is in the queue, so that it always finds it (or finds
                    // it gone: granted or cancelled).
                    let sleeper = Task { [weak self] in
                        try? await Task.sleep(for: .milliseconds(max(timeoutMs, 0)))
                        guard !Task.isCancelled else { return }
                        self?.abandon(id, with: .timedOut)
                    }
                    timer.withLock { $0 = sleeper }
                    if let onQueueFormed, warn.withLock({ $0 }) { onQueueFormed() }
                }
            }
        } onCancel: {
            self.abandon(id, with: .cancelled)
        }
        timer.withLock { $0 }?.cancel()
        let waited = MonotonicClock.nanoseconds() &- startNs
        return Grant(outcome: outcome, waitedNs: waited, warnQueueFormed: warn.withLock { $0 })
    }

    /// Gives a granted slot back: to the oldest waiter, or to the pool.
    public func release() {
        let next = state.withLock { state -> CheckedContinuation<Outcome, Never>? in
            if state.inUse <= state.capacity, let waiter = state.popOldest() {
                return waiter  // handed over: inUse unchanged
            }
            state.inUse = max(0, state.inUse - 1)
            return nil
        }
        next?.resume(returning: .granted)
    }

    private func abandon(_ id: UInt64, with outcome: Outcome) {
        let waiter = state.withLock { state in
            let waiter = state.waiters.removeValue(forKey: id)
            state.compact()
            return waiter
        }
        waiter?.resume(returning: outcome)
    }
}

/// The pools of the upstreams, by name, kept across config reloads (a reload changes a pool's
/// capacity in place).
///
/// Every request looks its upstream's pool up: each thread keeps its own map of the (shared) pools,
/// so the lookup takes no lock all event loops share (as ``UpstreamBreakers``).
public final class UpstreamPools: Sendable {
    private let pools = Mutex<[String: UpstreamPool]>([:])
    private let perThread = ThreadSpecificVariable<ThreadPools>()

    public init() {}

    /// The pool of `upstream`, made on first use with `capacity`; an existing pool takes `capacity`.
    public func pool(for upstream: String, capacity: Int) -> UpstreamPool {
        let local = perThread.currentValue ?? {
            let made = ThreadPools()
            perThread.currentValue = made
            return made
        }()
        let pool = local.byName[upstream] ?? {
            let pool = pools.withLock { pools -> UpstreamPool in
                if let pool = pools[upstream] { return pool }
                let pool = UpstreamPool(name: upstream, capacity: capacity)
                pools[upstream] = pool
                return pool
            }
            local.byName[upstream] = pool
            return pool
        }()
        if pool.capacity != capacity { pool.setCapacity(capacity) }
        return pool
    }

    /// Queued exchanges by upstream (for the gauge).
    public var queuedByUpstream: [(upstream: String, queued: Int)] {
        pools.withLock { $0.map { (upstream: $0.key, queued: $0.value.queued) } }
    }
}

/// One thread's view of `UpstreamPools`. `@unchecked Sendable`: only reached through its own
/// thread's slot. Bounded by the upstream names the config ever had.
private final class ThreadPools: @unchecked Sendable {
    var byName: [String: UpstreamPool] = [:]
}
