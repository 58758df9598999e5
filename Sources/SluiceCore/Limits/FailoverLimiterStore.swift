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
/// shared store is skipped for `retryIntervalMicros`, then one admission probes it again. There is
/// one breaker per failure domain of the shared store (`LimiterStore.failureDomain(keyID:)`: a
/// Redis Cluster's slot; a single Redis is one domain), so keys on a healthy shard keep the shared,
/// exact limits while another shard is down. Reservations are settled where they were made (a
/// local one locally), exactly once.
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
        /// One breaker per failure domain, made on first use.
        var breakers: [Int: CircuitBreaker] = [:]
        /// The domains whose breaker is open (the node is under its failure policy for their keys).
        var failedDomains: Set<Int> = []
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
    /// Domain 0's breaker (every key's, with a single Redis), kept out of `State.breakers`.
    private let domainZeroBreaker: CircuitBreaker

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
        self.onModeChange = onModeChange
        self.domainZeroBreaker = Self.makeBreaker(retryIntervalMicros: retryIntervalMicros, clock: clock)
    }

    /// What this node enforces now: the failure policy as soon as one domain is under it.
    public var mode: Mode {
        domainZeroBreaker.isOpen || state.withLock { $0.breakers.values.contains(where: \.isOpen) } ? fallbackMode : .shared
    }

    /// Failure domains (Redis Cluster slots; 1 for a single Redis) under the failure policy now.
    public var failedDomainCount: Int {
        (domainZeroBreaker.isOpen ? 1 : 0) + state.withLock { $0.breakers.values.reduce(0) { $0 + ($1.isOpen ? 1 : 0) } }
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
        let domain = shared.failureDomain(keyID: request.keyID, team: request.team?.id)
        if shouldTryShared(domain) {
            do {
                let decision = try await shared.admit(request)
                sharedSucceeded(domain)
                return decision
            } catch {
                sharedFailed(error, domain)
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
        let domain = shared.failureDomain(keyID: reservation.keyID, team: reservation.team?.id)
        do {
            let snapshot = try await shared.settle(reservation, actualPromptTokens: actualPromptTokens, actualCompletionTokens: actualCompletionTokens)
            sharedSucceeded(domain)
            return snapshot
        } catch {
            // Kept and retried: the difference between reservation and usage is applied, and the
            // concurrency slot freed, as soon as the shared store answers again.
            sharedFailed(error, domain)
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

    /// The shared store's counters; the node's own when the shared store does not answer.
    public func periodUsage(_ subject: LimitSubject) async throws -> PeriodUsage {
        do {
            return try await shared.periodUsage(subject)
        } catch {
            return try await local.periodUsage(subject)
        }
    }

    public func snapshot(keyID: String, team: String?, limits: ResolvedLimits) async throws -> RateLimitSnapshot {
        let domain = shared.failureDomain(keyID: keyID, team: team)
        if shouldTryShared(domain, probe: false) {
            do {
                return try await shared.snapshot(keyID: keyID, team: team, limits: limits)
            } catch {
                sharedFailed(error, domain)
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
            // The team's limits are split the same way (each node its share, counted from zero).
            scaled.team = request.team.map { TeamSubject(id: $0.id, limits: localLimits($0.limits)) }
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
        // Budgets: each node its share, counted from zero in its memory (it cannot see what Redis
        // holds): an outage may let a key spend up to one budget more in all.
        scaled.usdPerDay = limits.usdPerDay.map { max(1, $0 / Int64(nodes)) }
        scaled.usdPerMonth = limits.usdPerMonth.map { max(1, $0 / Int64(nodes)) }
        return scaled
    }

    public func failureDomain(keyID: String, team: String?) -> Int { shared.failureDomain(keyID: keyID, team: team) }

    // MARK: - Circuit breakers

    /// The breaker of a failure domain: open while the shared store is skipped for its keys; one
    /// failure opens it for the retry interval, then one admission probes; any success (a
    /// heartbeat's too, for the heartbeat's domain) closes it.
    private func breaker(_ domain: Int) -> CircuitBreaker {
        // A single Redis is domain 0 only: no lock on the request's path.
        if domain == 0 { return domainZeroBreaker }
        return state.withLock { state in
            if let breaker = state.breakers[domain] { return breaker }
            let breaker = Self.makeBreaker(retryIntervalMicros: retryIntervalMicros, clock: clock)
            state.breakers[domain] = breaker
            return breaker
        }
    }

    private static func makeBreaker(retryIntervalMicros: Int64, clock: @escaping InMemoryLimiterStore.Clock) -> CircuitBreaker {
        CircuitBreaker(
            configuration: .init(failureThreshold: 1, openMillis: Int(max(retryIntervalMicros / 1_000, 1))),
            clock: { clock() / 1_000 }
        )
    }

    /// Whether to use the shared store for this call: always while the circuit is closed; once per
    /// retry interval (one probe at a time) while it is open. A `probe: false` call never probes.
    private func shouldTryShared(_ domain: Int, probe: Bool = true) -> Bool {
        let breaker = breaker(domain)
        guard probe else { return !breaker.isOpen }
        switch breaker.acquire() {
        case .allow, .probe: return true
        case .reject: return false
        }
    }

    /// Tells the breaker of `domain` the shared store answered (a heartbeat, say): a node that had
    /// switched to its failure policy returns to the shared store at once instead of waiting for
    /// the next probe.
    public func sharedStoreAnswered(domain: Int = 0) { sharedSucceeded(domain) }

    /// Tells the breaker of `domain` the shared store failed outside an admission (a heartbeat,
    /// say), so the node switches to its failure policy before a request has to pay for the timeout.
    public func sharedStoreFailed(_ error: any Error, domain: Int = 0) { sharedFailed(error, domain) }

    private func sharedSucceeded(_ domain: Int) {
        guard breaker(domain).record(upstreamDown: false) == .closed else { return }
        let allBack = state.withLock { state -> Bool in
            guard state.failedDomains.remove(domain) != nil else { return false }
            if state.failedDomains.isEmpty { state.lastError = nil }
            return state.failedDomains.isEmpty
        }
        if allBack { onModeChange(.shared, nil) }
    }

    private func sharedFailed(_ error: any Error, _ domain: Int) {
        let description = String(describing: error)
        state.withLock { $0.lastError = description }
        guard breaker(domain).record(upstreamDown: true) == .opened else { return }
        let first = state.withLock { state in state.failedDomains.insert(domain).inserted && state.failedDomains.count == 1 }
        if first { onModeChange(fallbackMode, description) }
    }
}
