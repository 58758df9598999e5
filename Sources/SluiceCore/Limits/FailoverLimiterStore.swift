import Synchronization

/// The limiter a node uses with a shared store (Redis): the shared store while it answers, and the
/// configured failure policy while it does not.
///
/// - `local`: each node enforces every limit ÷ the number of live nodes, in memory. The node count is
///   the last one the shared store reported (heartbeats), else the configured fallback count. Over a
///   whole cluster that admits about the limit, never N× the limit.
/// - `open`: everything is admitted (availability over limits).
/// - `closed`: admissions fail, and the server answers 503.
///
/// A circuit breaker keeps a dead store from adding latency to every request: after a failure the
/// shared store is skipped for `retryIntervalMicros`, then one admission probes it again.
/// Reservations are settled where they were made (a local one locally), exactly once.
public final class FailoverLimiterStore: LimiterStore {
    public enum Mode: String, Sendable {
        /// The shared store answers.
        case shared
        /// The shared store is unreachable: the failure policy is in force.
        case local, open, closed
    }

    /// Thrown by `admit` under the `closed` policy while the shared store is unreachable.
    public struct SharedStoreUnavailable: Error, Sendable {
        public let underlying: String
    }

    public static let defaultRetryIntervalMicros: Int64 = 1_000_000

    private let shared: any LimiterStore
    private let local: InMemoryLimiterStore
    private let policy: RedisConfig.FailurePolicy
    private let fallbackNodeCount: Int
    private let retryIntervalMicros: Int64
    private let maximumPendingAgeMicros: Int64
    private let clock: InMemoryLimiterStore.Clock
    private let onModeChange: @Sendable (Mode, String?) -> Void

    private struct State {
        var liveNodes: Int?
        var lastError: String?
        /// Reservations made without the shared store, by request id: settled here, not there.
        var localReservations: Set<String> = []
        var unenforcedReservations: Set<String> = []
        /// Settlements the shared store did not take, oldest first: retried until it does.
        var pending: [PendingSettlement] = []
        var droppedSettlements = 0
    }

    /// A settlement owed to the shared store: a reservation to reconcile with what was used, or to
    /// release whole (an admission whose outcome is unknown: it may have run before the connection
    /// failed, or it may still run).
    struct PendingSettlement: Sendable {
        var reservation: Reservation
        var promptTokens: Int
        var completionTokens: Int
        /// When it was first owed (µs of `clock`): after `maximumPendingAgeMicros` the reservation
        /// has expired in the shared store and there is nothing left to settle.
        var owedSince: Int64
    }

    /// Thrown by `settle` when the shared store did not take the settlement: it is kept and retried
    /// by `retryPendingSettlements()`, so nothing is lost; the caller only logs it.
    public struct SettlementDeferred: Error, Sendable, CustomStringConvertible {
        public let underlying: String
        public var description: String { "settlement deferred (retried until the shared store takes it): \(underlying)" }
    }

    /// Most settlements kept for retry; beyond, the oldest are dropped (their reservations expire).
    public static let maximumPendingSettlements = 100_000
    /// How long a settlement is retried: the shared store's reservation lifetime.
    public static let defaultMaximumPendingAgeMicros: Int64 = 900_000_000
    private let state = Mutex(State())
    /// Open while the shared store is skipped: one failure opens it for the retry interval, then one
    /// admission probes; any success (a heartbeat's too) closes it.
    private let breaker: CircuitBreaker

    /// - Parameters:
    ///   - onModeChange: called when the node switches between the shared store and its failure
    ///     policy (for the log line and the metrics); never on the request's hot path otherwise.
    public init(
        shared: any LimiterStore, policy: RedisConfig.FailurePolicy, fallbackNodeCount: Int,
        retryIntervalMicros: Int64 = FailoverLimiterStore.defaultRetryIntervalMicros,
        maximumPendingAgeMicros: Int64 = FailoverLimiterStore.defaultMaximumPendingAgeMicros,
        clock: @escaping InMemoryLimiterStore.Clock = InMemoryLimiterStore.monotonicMicroseconds,
        onModeChange: @escaping @Sendable (Mode, String?) -> Void = { _, _ in }
    ) {
        self.shared = shared
        self.local = InMemoryLimiterStore(clock: clock)
        self.policy = policy
        self.fallbackNodeCount = max(1, fallbackNodeCount)
        self.retryIntervalMicros = retryIntervalMicros
        self.maximumPendingAgeMicros = maximumPendingAgeMicros
        self.clock = clock
        self.breaker = CircuitBreaker(
            configuration: .init(failureThreshold: 1, openMillis: Int(max(retryIntervalMicros / 1_000, 1))),
            clock: { clock() / 1_000 }
        )
        self.onModeChange = onModeChange
    }

    /// What this node enforces now.
    public var mode: Mode {
        breaker.isOpen ? fallbackMode : .shared
    }

    private var fallbackMode: Mode {
        switch policy {
        case .local: .local
        case .open: .open
        case .closed: .closed
        }
    }

    /// The live node count seen in the shared store (heartbeats); used to split limits in `local` mode.
    public func updateLiveNodeCount(_ count: Int) {
        state.withLock { $0.liveNodes = max(1, count) }
    }

    /// Nodes the limits are divided by in `local` mode.
    public var nodeCountForLocalLimits: Int {
        state.withLock { $0.liveNodes } ?? fallbackNodeCount
    }

    public func admit(_ request: AdmissionRequest) async throws -> AdmissionDecision {
        if shouldTryShared() {
            do {
                let decision = try await shared.admit(request)
                sharedSucceeded()
                return decision
            } catch {
                sharedFailed(error)
                // The shared admission may have run before the failure (its reply lost): release
                // it, or its reservation and concurrency slot would outlive a request the failure
                // policy answers. Releasing one that never ran changes nothing.
                owe(PendingSettlement(reservation: Reservation(admitting: request), promptTokens: 0, completionTokens: 0, owedSince: clock()))
            }
        }
        return try admitByPolicy(request)
    }

    public func settle(_ reservation: Reservation, actualPromptTokens: Int, actualCompletionTokens: Int) async throws -> RateLimitSnapshot? {
        let (wasLocal, wasUnenforced) = state.withLock {
            ($0.localReservations.remove(reservation.requestID) != nil, $0.unenforcedReservations.remove(reservation.requestID) != nil)
        }
        if wasLocal {
            return local.settleNow(reservation, actualPromptTokens: actualPromptTokens, actualCompletionTokens: actualCompletionTokens)
        }
        if wasUnenforced { return nil }
        do {
            let snapshot = try await shared.settle(reservation, actualPromptTokens: actualPromptTokens, actualCompletionTokens: actualCompletionTokens)
            sharedSucceeded()
            return snapshot
        } catch {
            // Kept and retried: the difference between reservation and usage is applied, and the
            // concurrency slot freed, as soon as the shared store answers again.
            sharedFailed(error)
            owe(PendingSettlement(reservation: reservation, promptTokens: actualPromptTokens, completionTokens: actualCompletionTokens, owedSince: clock()))
            throw SettlementDeferred(underlying: String(describing: error))
        }
    }

    // MARK: - Settlements owed to the shared store

    /// Settlements waiting for the shared store.
    public var pendingSettlements: Int { state.withLock { $0.pending.count } }

    private func owe(_ settlement: PendingSettlement) {
        state.withLock { state in
            state.pending.append(settlement)
            let excess = state.pending.count - Self.maximumPendingSettlements
            if excess > 0 {
                state.pending.removeFirst(excess)
                state.droppedSettlements += excess
            }
        }
    }

    /// Sends the settlements owed to the shared store, oldest first, until one fails (the rest wait
    /// for the next call). Those older than the shared reservations' lifetime are dropped: nothing
    /// is left there to settle. Call it periodically (the node does, after each heartbeat).
    /// Returns how many were settled.
    @discardableResult
    public func retryPendingSettlements() async -> Int {
        let owed = state.withLock { state -> [PendingSettlement] in
            defer { state.pending = [] }
            return state.pending
        }
        guard !owed.isEmpty else { return 0 }
        let now = clock()
        var settled = 0
        for (index, settlement) in owed.enumerated() where now - settlement.owedSince <= maximumPendingAgeMicros {
            do {
                _ = try await shared.settle(settlement.reservation, actualPromptTokens: settlement.promptTokens, actualCompletionTokens: settlement.completionTokens)
                settled += 1
            } catch {
                // Still unreachable: keep this one and the rest, in order, ahead of any owed meanwhile.
                let rest = owed[index...].filter { now - $0.owedSince <= maximumPendingAgeMicros }
                state.withLock { state in state.pending = rest + state.pending }
                break
            }
        }
        return settled
    }

    public func snapshot(keyID: String, limits: ResolvedLimits) async throws -> RateLimitSnapshot {
        if shouldTryShared(probe: false) {
            do {
                return try await shared.snapshot(keyID: keyID, limits: limits)
            } catch {
                sharedFailed(error)
            }
        }
        return local.snapshotNow(keyID: keyID, limits: localLimits(limits))
    }

    // MARK: - Policy

    private func admitByPolicy(_ request: AdmissionRequest) throws -> AdmissionDecision {
        switch policy {
        case .closed:
            throw SharedStoreUnavailable(underlying: state.withLock { $0.lastError } ?? "unreachable")
        case .open:
            state.withLock { _ = $0.unenforcedReservations.insert(request.requestID) }
            return .admitted(Reservation(admitting: request), .empty)
        case .local:
            var scaled = request
            scaled.limits = localLimits(request.limits)
            let decision = local.admitNow(scaled)
            if case .admitted = decision {
                state.withLock { _ = $0.localReservations.insert(request.requestID) }
            }
            return decision
        }
    }

    /// Every limit ÷ live nodes (at least 1 per bucket, so a tiny limit still admits somewhere).
    func localLimits(_ limits: ResolvedLimits) -> ResolvedLimits {
        let nodes = nodeCountForLocalLimits
        guard nodes > 1 else { return limits }
        func split(_ bucket: BucketLimit?) -> BucketLimit? {
            bucket.map { BucketLimit(perMinute: max(1, $0.perMinute / nodes), burst: max(1, $0.burst / nodes)) }
        }
        var scaled = limits
        scaled.requests = split(limits.requests)
        scaled.tokens = split(limits.tokens)
        scaled.inputTokens = split(limits.inputTokens)
        scaled.outputTokens = split(limits.outputTokens)
        scaled.maxConcurrentRequests = limits.maxConcurrentRequests.map { max(1, $0 / nodes) }
        return scaled
    }

    // MARK: - Circuit breaker

    /// Whether to use the shared store for this call: always while the circuit is closed; once per
    /// retry interval (one probe at a time) while it is open. A `probe: false` call never probes.
    private func shouldTryShared(probe: Bool = true) -> Bool {
        guard probe else { return !breaker.isOpen }
        switch breaker.acquire() {
        case .allow, .probe: return true
        case .reject: return false
        }
    }

    /// Tells the breaker the shared store answered (a heartbeat, say): a node that had switched to
    /// its failure policy returns to the shared store at once instead of waiting for the next probe.
    public func sharedStoreAnswered() { sharedSucceeded() }

    /// Tells the breaker the shared store failed outside an admission (a heartbeat, say), so the node
    /// switches to its failure policy before a request has to pay for the timeout.
    public func sharedStoreFailed(_ error: any Error) { sharedFailed(error) }

    private func sharedSucceeded() {
        guard breaker.record(upstreamDown: false) == .closed else { return }
        state.withLock { $0.lastError = nil }
        onModeChange(.shared, nil)
    }

    private func sharedFailed(_ error: any Error) {
        let description = String(describing: error)
        state.withLock { $0.lastError = description }
        if breaker.record(upstreamDown: true) == .opened { onModeChange(fallbackMode, description) }
    }
}
