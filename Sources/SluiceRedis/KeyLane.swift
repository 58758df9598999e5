import Logging
import SluiceCore
import Synchronization

/// This node's road to Redis for one API key: every admission and settlement of the key made here
/// goes through it, and it sends them in batch.lua calls, at most one at a time.
///
/// - **Batching.** While a call is in flight, whatever arrives waits and goes in the next one, so a
///   key's calls cost Redis four commands however many requests they carry. Settlements wait up to
///   `settleDelayMicros` for an admission to ride with.
/// - **Leasing.** When the key is leased (``LeaseMode``), a call also takes a slice of each bucket
///   (``LimiterLease``) and the lane admits against it locally, with no call at all, until it runs
///   out; then the request goes to Redis exactly and the next slice comes with it.
/// - **Exactly once.** A call whose reply is lost (timeout, connection reset) may or may not have
///   run. The lane keeps it (``LostCall``) and, before anything else, sends a call that resolves it
///   in Redis. Settlements are never lost, admissions never counted twice.
final class KeyLane: Sendable {
    struct Context: Sendable {
        let client: RedisClient
        let function: RedisFunction
        let options: RedisLimiterStore.Options
        let nodeID: String
        let logger: Logger
        /// When an admission sent now stops mattering, on Redis' clock.
        let deadline: @Sendable () async throws -> Int64
        /// Every reply's reading of Redis' clock.
        let observeRedisClock: @Sendable (Int64) -> Void
        let statistics: LimiterStatistics
        /// The node's call sequence numbers: increasing across all its lanes, so a lane created
        /// again for a key (after it was forgotten) never reuses one Redis has seen.
        let nextSequence: @Sendable () -> Int64
    }

    struct QueuedAdmission {
        var request: AdmissionRequest
        var continuation: CheckedContinuation<AdmissionDecision, any Error>
    }

    struct QueuedSettlement {
        var values: SettlementValues
        var limits: ResolvedLimits
        /// The team's limits, for a lane of a key in a team.
        var teamLimits: ResolvedLimits? = nil
        /// Resumed with the key's state once Redis took it, or with nil when the call failed (the
        /// settlement stays queued and is retried; its caller need not wait for Redis to come back).
        var continuation: CheckedContinuation<RateLimitSnapshot?, Never>?
    }

    struct State {
        var admissions: [QueuedAdmission] = []
        var settlements: [QueuedSettlement] = []
        var draining = false
        var lost: (call: LostCall, limits: ResolvedLimits, teamLimits: ResolvedLimits?)?
        var held: [String: HeldReservation] = [:]
        var slotsHeld = 0
        var lease: LimiterLease?
        var returnLease = false
        var renew = false
        var demand = DemandEstimate()
        var clock: RedisClockBound?
        var lastCallMonotonic: Int64 = 0
        var lastFailureMonotonic: Int64 = .min / 2
        var lastAdmissionMonotonic: Int64 = 0
        var sharedHeaders: [Int64] = [0, 0, 0, 0]
        var limits: ResolvedLimits?
        /// The team's limits as last seen (for calls that carry no request).
        var teamLimits: ResolvedLimits?
        /// The last denial by a bucket or quota, while it holds (see ``DenialMemory``).
        var denied: DenialMemory?
        /// Parked slots to give back with the next call (a call that gave them back did not run),
        /// and their epoch.
        var slotsToReturn = 0
        var slotsToReturnEpoch: Int64 = 0

        /// Marks the lane busy if it was idle: the caller then starts the drain.
        mutating func startDraining() -> Bool {
            guard !draining else { return false }
            draining = true
            return true
        }
    }

    /// Settlements kept per lane while Redis does not take them; beyond, the oldest are dropped
    /// (their differences never applied, their slots freed when their lease expires).
    static let maximumQueuedSettlements = 10_000

    let keyID: String
    /// The key's team (`keys[].team`): fixed for the lane's life, since it decides where the key's
    /// state lives (a key moved to another team gets another lane).
    let teamID: String?
    let stateKey: String
    /// The team's state hash (in the key's slot), sent with every call of the lane; nil: no team.
    let teamKey: String?
    private let context: Context
    private let state = Mutex(State())

    init(keyID: String, team: String? = nil, context: Context) {
        self.keyID = keyID
        self.teamID = team
        self.stateKey = RedisKeyLayout(keyID: keyID, team: team).state
        self.teamKey = team.map(RedisKeyLayout.teamState)
        self.context = context
    }

    // MARK: admit and settle

    func admit(_ request: AdmissionRequest) async throws -> AdmissionDecision {
        let now = MonotonicClock.microseconds()
        let local: AdmissionDecision? = state.withLock { state in
            state.limits = request.limits
            if let team = request.team { state.teamLimits = team.limits }
            state.lastAdmissionMonotonic = now
            state.demand.record(request, at: now)
            if request.limits.isUnlimited, request.team?.limits.isUnlimited ?? true, !request.tracksMonthTokens {
                // Nothing to charge: no call. Held all the same, so that its usage is recorded once.
                state.held[request.requestID] = HeldReservation(quotaDay: -1, quotaMonth: -1, slotEpoch: 0)
                return .admitted(Reservation(admitting: request), .empty)
            }
            if let memory = state.denied, let denial = memory.denial(for: request, at: now) {
                context.statistics.count(.rememberedDenials)
                return .denied(denial, memory.snapshot)
            }
            // A request that tracks the month's tokens is decided in Redis, which counts them.
            // Keys in a team are never leased (their lanes take no lease): nothing to admit locally.
            guard !request.tracksMonthTokens, state.lost == nil, var lease = state.lease, let clock = state.clock,
                  let taken = lease.admit(request, now: clock.now(monotonicMicros: now)) else { return nil }
            state.lease = lease
            context.statistics.count(.leasedAdmissions)
            let slot = request.limits.maxConcurrentRequests != nil ? lease.slotEpoch : 0
            if slot != 0 { state.slotsHeld += 1 }
            state.held[request.requestID] = HeldReservation(quotaDay: -1, quotaMonth: -1, slotEpoch: slot, leased: taken)
            return .admitted(Reservation(admitting: request), Self.snapshot(request.limits, state.sharedHeaders[...], adding: lease, now: clock.now(monotonicMicros: now)))
        }
        if let local { return local }
        return try await withCheckedThrowingContinuation { continuation in
            let start = state.withLock { state in
                state.admissions.append(QueuedAdmission(request: request, continuation: continuation))
                return state.startDraining()
            }
            if start { Task { await self.drain() } }
        }
    }

    /// Takes the reservation out of the lane: nil when it is not (or no longer) held here — already
    /// settled, or its admission failed. What it returns is then settled exactly once.
    func release(_ reservation: Reservation) -> HeldReservation? {
        state.withLock { state in
            guard let held = state.held.removeValue(forKey: reservation.requestID) else { return nil }
            if held.slotEpoch != 0 { state.slotsHeld = max(state.slotsHeld - 1, 0) }
            // A settlement may give capacity back: what was denied may pass now.
            state.denied = nil
            return held
        }
    }

    /// What settling against the node's lease left to do.
    enum LeaseSettlement {
        /// No lease of these limits: settle in Redis as usual.
        case noLease
        /// Settled here; the key's state as this node sees it.
        case settled(RateLimitSnapshot)
        /// Usage beyond what the lease held (or a slot of another epoch) still goes to Redis.
        case charge(SettlementValues)
    }

    /// Settles against this node's lease, for a request of a leased key while the lane holds a
    /// lease: the unused reservation goes back into the slices as the µs the request took (those
    /// still ahead and inside the slice), and usage beyond the reservation is taken from the slices
    /// first; what they cannot cover is charged in Redis.
    func settleAgainstLease(_ taken: [[BucketSlice.Interval]], _ reservation: Reservation, slotEpoch: Int64, prompt: Int, completion: Int) -> LeaseSettlement {
        let reserved = [1, reservation.promptTokens + reservation.reservedOutputTokens, reservation.promptTokens, reservation.reservedOutputTokens]
        let actual = [1, prompt + completion, prompt, completion]
        return state.withLock { state -> LeaseSettlement in
            guard var lease = state.lease, lease.limits == reservation.limits, let clock = state.clock else { return .noLease }
            let now = clock.now()
            var residual = [0, 0, 0, 0]
            for (index, kind) in RateLimitKind.buckets.enumerated().dropFirst() where lease.limits.bucket(kind) != nil {
                guard var slice = lease.slices[index] else {
                    residual[index] = max(actual[index] - reserved[index], 0)
                    continue
                }
                if actual[index] < reserved[index] {
                    let back = slice.bucket.refillMicros(forCost: Int64(reserved[index])) - slice.bucket.refillMicros(forCost: Int64(actual[index]))
                    slice.giveBack(back, of: taken[index], now: now)
                } else if actual[index] > reserved[index] {
                    let extra = actual[index] - reserved[index]
                    let covered = Int(min(Int64(extra), slice.remaining(now: now)))
                    if covered > 0 { _ = slice.take(covered, now: now) }
                    residual[index] = extra - covered
                }
                lease.slices[index] = slice
            }
            // A slot of the epoch the lease's parked slots belong to is parked again: it stays
            // counted for this node in Redis, and the next request here uses it without a call.
            var slotToRelease: Int64 = 0
            if slotEpoch != 0 {
                if slotEpoch == lease.slotEpoch { lease.parkedSlots += 1 } else { slotToRelease = slotEpoch }
            }
            state.lease = lease
            guard residual[1] + residual[2] + residual[3] > 0 || slotToRelease != 0 else {
                return .settled(Self.snapshot(reservation.limits, state.sharedHeaders[...], adding: lease, now: now))
            }
            // batch.lua charges tokens prompt + completion, input prompt, output completion: enough
            // for every bucket's residual (never less than it).
            let output = residual[3]
            let input = max(residual[2], residual[1] - output)
            return .charge(SettlementValues(
                reservedPrompt: 0, reservedOutput: 0, actualPrompt: input, actualCompletion: output,
                quotaDay: -1, quotaMonth: -1, slotEpoch: slotToRelease
            ))
        }
    }

    /// Settles what ``release(_:)`` returned: the key's state once Redis took it, or nil when it did
    /// not yet (then the lane keeps it and retries it).
    func settle(_ values: SettlementValues, limits: ResolvedLimits, teamLimits: ResolvedLimits? = nil) async -> RateLimitSnapshot? {
        await withCheckedContinuation { continuation in
            let start = state.withLock { state in
                state.settlements.append(QueuedSettlement(values: values, limits: limits, teamLimits: teamLimits, continuation: continuation))
                return state.startDraining()
            }
            if start { Task { await self.drain() } }
        }
    }

    // MARK: upkeep

    /// Concurrency slots held by requests running here.
    var slotsHeld: Int { state.withLock { $0.slotsHeld } }

    /// Settlements Redis has not taken yet (queued or in a lost call).
    var owedSettlements: Int { state.withLock { $0.settlements.count + ($0.lost?.call.settlements.count ?? 0) } }

    /// Whether the lane has held nothing since `since` (monotonic µs): it can be forgotten.
    func isIdle(since: Int64) -> Bool {
        state.withLock {
            $0.held.isEmpty && $0.settlements.isEmpty && $0.admissions.isEmpty && $0.lost == nil && $0.lease == nil && !$0.draining
                && $0.slotsToReturn == 0
                && $0.lastAdmissionMonotonic < since && $0.lastCallMonotonic < since
        }
    }

    /// Periodic upkeep (``RedisLimiterStore/maintain()``): gives back a lease no request used for
    /// `leaseIdleMicros`, renews the slots of requests still running, retries what failed.
    func maintain(now: Int64 = MonotonicClock.microseconds()) {
        let options = context.options
        let start = state.withLock { state -> Bool in
            if let lease = state.lease, now - state.lastAdmissionMonotonic >= options.leaseIdleMicros {
                if let clock = state.clock, lease.isSpent(now: clock.now(monotonicMicros: now)) {
                    state.lease = nil
                } else {
                    state.returnLease = true
                }
            }
            if state.slotsHeld > 0 || (state.lease?.parkedSlots ?? 0) > 0, now - state.lastCallMonotonic >= Int64(options.leaseTTLMillis) * 1_000 / 3 {
                state.renew = true
            }
            let owed = state.lost != nil || !state.settlements.isEmpty || state.slotsToReturn > 0
            let due = state.returnLease || state.renew || (owed && now - state.lastFailureMonotonic >= options.retryIntervalMicros)
            return due && state.startDraining()
        }
        if start { Task { await self.drain() } }
    }

    /// Whether something waits for Redis: queued work, a lost call, a call in flight.
    var isBusy: Bool {
        state.withLock {
            !$0.settlements.isEmpty || !$0.admissions.isEmpty || $0.lost != nil || $0.draining || $0.returnLease || $0.slotsToReturn > 0
        }
    }

    /// Sends what is owed now, whatever the retry interval, and gives the lease back (at shutdown).
    func flushNow() {
        let start = state.withLock { state -> Bool in
            if state.lease != nil { state.returnLease = true }
            guard state.lost != nil || !state.settlements.isEmpty || state.returnLease || state.slotsToReturn > 0 else { return false }
            return state.startDraining()
        }
        if start { Task { await self.drain() } }
    }

    // MARK: the calls

    private func drain() async {
        while true {
            let onlySettlements = state.withLock {
                $0.admissions.isEmpty && $0.lost == nil && !$0.settlements.isEmpty && !$0.renew && !$0.returnLease
            }
            if onlySettlements { try? await Task.sleep(for: .microseconds(context.options.settleDelayMicros)) }
            let deadline: Int64
            do {
                deadline = try await context.deadline()
            } catch {
                finish(failing: nil, error: error, applied: false)
                return
            }
            guard let (call, admissions, settlements) = state.withLock({ nextCall(&$0) }) else { return }
            let sent = MonotonicClock.microseconds()
            let arguments = call.arguments(stateKey: stateKey, teamKey: teamKey, keyID: keyID, nodeID: context.nodeID, deadline: deadline, options: context.options)
            do {
                let raw = try await context.client.call(context.function, RedisScriptCall(keyCount: teamKey == nil ? 1 : 2, arguments: arguments, routingKey: stateKey))
                let reply = try LaneReply(raw, admissions: admissions.count, team: teamID)
                context.observeRedisClock(reply.redisMicros)
                context.statistics.count(.calls)
                context.statistics.count(.redisAdmissions, by: admissions.count)
                context.statistics.observeCall(sent: sent, failure: reply.status == .applied ? nil : .other)
                guard reply.status == .applied else {
                    context.logger.warning("redis refused a limiter call", metadata: [
                        "key_id": "\(keyID)", "reason": "\(reply.status == .stale ? "stale sequence number" : "past its deadline")",
                    ])
                    finish(failing: (call, admissions, settlements), error: RedisError.timedOut, applied: false)
                    return
                }
                finish(call, admissions, settlements, reply, sent: sent)
            } catch {
                // Not sent, or refused by the server before it changed anything: nothing applied.
                // Lost on the way back (timeout, reset, an unreadable reply): perhaps applied.
                let applied: Bool?
                switch error {
                case .connectFailed, .handshakeFailed, .tlsSetupFailed, .notConnected, .invalidCommand, .shutDown, .server: applied = false
                default: applied = nil
                }
                context.statistics.count(applied == nil ? .lostCalls : .failedCalls)
                context.statistics.observeCall(sent: sent, failure: LimiterCallFailure(error))
                finish(failing: (call, admissions, settlements), error: error, applied: applied)
                return
            }
        }
    }

    /// The next call from what is queued, or nil (and the lane idle) when there is nothing to send.
    private func nextCall(_ state: inout State) -> (LaneCall, [QueuedAdmission], [QueuedSettlement])? {
        if var lost = state.lost {
            // Nothing else goes before the lost call is resolved.
            let sequence = context.nextSequence()
            lost.call.firstResolution = lost.call.firstResolution ?? sequence
            state.lost = lost
            var call = LaneCall(sequence: sequence, limits: lost.limits, admissions: [], settlements: [], lost: lost.call)
            call.teamLimits = lost.teamLimits
            return (call, [], [])
        }
        let admissions = Array(state.admissions.prefix(LaneCall.maximumAdmissions))
        let settlements = Array(state.settlements.prefix(LaneCall.maximumSettlements))
        guard !admissions.isEmpty || !settlements.isEmpty || state.renew || state.returnLease || state.slotsToReturn > 0 else {
            state.draining = false
            return nil
        }
        state.admissions.removeFirst(admissions.count)
        state.settlements.removeFirst(settlements.count)
        guard let limits = admissions.last?.request.limits ?? settlements.last?.limits ?? state.limits ?? state.lease?.limits else {
            state.draining = false
            return nil
        }
        var call = LaneCall(
            sequence: context.nextSequence(), limits: limits, admissions: admissions.map(\.request),
            settlements: settlements.map(\.values), lost: nil
        )
        if teamID != nil {
            call.teamLimits = admissions.last?.request.team?.limits ?? settlements.last?.teamLimits ?? state.teamLimits
        }
        if let lease = state.lease, state.returnLease || !admissions.isEmpty || lease.limits != limits {
            // Given back before a new one is taken: what it still holds returns to the bucket if
            // nothing was handed out after it.
            let now = state.clock?.now() ?? 0
            for (index, slice) in lease.slices.enumerated() {
                if let slice, let tailStart = slice.tailStart(now: now) { call.leaseReturned[index] = (slice.end, tailStart) }
            }
            if lease.parkedSlots > 0 {
                if state.slotsToReturn > 0, state.slotsToReturnEpoch != lease.slotEpoch { state.slotsToReturn = 0 }
                state.slotsToReturn += lease.parkedSlots
                state.slotsToReturnEpoch = lease.slotEpoch
            }
            state.lease = nil
        }
        if state.slotsToReturn > 0 {
            call.slotsReturned = state.slotsToReturn
            call.slotsEpoch = state.slotsToReturnEpoch
            state.slotsToReturn = 0
        }
        // A key in a team is never leased: a slice of the key's buckets would admit without the
        // team's (whose other keys admit on other lanes and nodes), so every request goes to Redis.
        if teamID == nil, !admissions.isEmpty, let wanted = Self.leaseWanted(limits, state.demand, admissions.last!.request, slotsInUse: state.slotsHeld) {
            call.leaseWanted = wanted.units
            call.leaseLeast = RateLimitKind.buckets.map { admissions.last!.request.cost($0) }
            call.slotsWanted = wanted.slots
        }
        state.renew = false
        state.returnLease = false
        return (call, admissions, settlements)
    }

    /// What a new lease should hold: of each bucket, twice this node's demand over one window, and
    /// at least the bucket's own rate over ``leaseSpanMicros`` (a slice is a stretch of the bucket's
    /// timeline: while the bucket has room, time passes over it as soon as it is taken, so a slice
    /// shorter than that would be gone before it is used); with a concurrency limit, as many free
    /// slots as this node's requests use now (at least four): fewer, and every burst above them
    /// would wait for a call.
    struct LeaseWant: Sendable, Hashable {
        var units: [Int]
        var slots: Int
    }

    /// How much of a bucket's timeline a slice spans at least.
    static let leaseSpanMicros: Int64 = 100_000

    /// The lease to take with a call, or nil when the key is not leased now: `auto` keys lease when
    /// their demand makes a call per request wasteful (two requests or more per window) and stays
    /// small next to their limits (twice a window's demand under ⅛ of each); an `auto` slice is cut
    /// at ⅛ of its bucket.
    static func leaseWanted(_ limits: ResolvedLimits, _ demand: DemandEstimate, _ request: AdmissionRequest, slotsInUse: Int = 0) -> LeaseWant? {
        guard limits.isLeasable else { return nil }
        var wanted = LeaseWant(units: [0, 0, 0, 0], slots: 0)
        for (index, kind) in RateLimitKind.buckets.enumerated() {
            guard let bucket = limits.bucket(kind) else { continue }
            let demanded = max(demand.units(bucket: index), request.cost(kind)) * 2
            if limits.lease == .auto, demanded * 8 > bucket.burst { return nil }
            let span = Int(Int64(bucket.perMinute) * leaseSpanMicros / GCRABucket.periodMicros)
            let cap = limits.lease == .auto ? max(bucket.burst / 8, demanded) : bucket.burst
            wanted.units[index] = min(max(demanded, span), cap)
        }
        if let maximum = limits.maxConcurrentRequests {
            wanted.slots = min(max(slotsInUse, 4), maximum)
            if limits.lease == .auto, wanted.slots * 8 > maximum { return nil }
        }
        if limits.lease == .auto, demand.requests < 2 { return nil }
        return wanted
    }

    private func finish(_ call: LaneCall, _ admissions: [QueuedAdmission], _ settlements: [QueuedSettlement], _ reply: LaneReply, sent: Int64) {
        if reply.corrupt {
            context.logger.warning("corrupt limiter state in Redis was discarded and reset", metadata: ["key_id": "\(keyID)"])
        }
        if reply.lostResolution == 1 {
            context.logger.notice("a limiter call whose reply was lost had run: its admissions were released", metadata: ["key_id": "\(keyID)"])
        }
        let limits = call.limits
        var decisions: [AdmissionDecision] = []
        let snapshot = state.withLock { state -> RateLimitSnapshot in
            state.clock = RedisClockBound(redisMicros: reply.redisMicros, sentMonotonicMicros: sent)
            state.lastCallMonotonic = sent
            if call.lost != nil { state.lost = nil }
            state.sharedHeaders = Array(reply.headerValues)
            // The budgets' headers: their spend after the call, their periods on Redis' clock.
            let calendar = BudgetCalendar(seconds: reply.redisMicros / 1_000_000)
            func withBudgets(_ snapshot: RateLimitSnapshot, _ limits: ResolvedLimits, team: ResolvedLimits?) -> RateLimitSnapshot {
                var snapshot = snapshot
                snapshot.budget = BudgetState(limits, spentToday: reply.budgetSpent.day, spentThisMonth: reply.budgetSpent.month, calendar: calendar)
                if let team {
                    snapshot.teamBudget = BudgetState(team, spentToday: reply.teamBudgetSpent.day, spentThisMonth: reply.teamBudgetSpent.month, calendar: calendar)
                }
                return snapshot
            }
            for (queued, outcome) in zip(admissions, reply.admissions) {
                let request = queued.request
                let snapshot = withBudgets(Self.snapshot(request.limits, outcome.headerValues), request.limits, team: teamID == nil ? nil : request.team?.limits)
                if outcome.admitted {
                    // A slot is counted when the key or its team limits concurrency (batch.lua).
                    let countsSlot = request.limits.maxConcurrentRequests != nil || request.team?.limits.maxConcurrentRequests != nil
                    let slot = countsSlot ? reply.slotEpoch : 0
                    var held = HeldReservation(quotaDay: reply.quotaDay, quotaMonth: reply.quotaMonth, slotEpoch: slot)
                    if teamID == nil, request.limits.isLeasable, !request.tracksMonthTokens {
                        held.leased = Self.charged(request, outcome.chargeStarts)
                    }
                    state.held[request.requestID] = held
                    if slot != 0 { state.slotsHeld += 1 }
                    var reservation = Reservation(admitting: request)
                    if request.tracksMonthTokens, outcome.monthTokensBefore >= 0 { reservation.monthTokensBefore = Int(outcome.monthTokensBefore) }
                    decisions.append(.admitted(reservation, snapshot))
                } else if let denial = outcome.denial {
                    decisions.append(.denied(denial, snapshot))
                    if let memory = DenialMemory(denial, request: request, snapshot: snapshot, at: sent) { state.denied = memory }
                }
            }
            if var lease = state.lease, lease.parkedSlots > 0, lease.slotEpoch != reply.slotEpoch {
                // The node's slots in Redis expired (it was cut off for a lease TTL): those parked
                // are not counted any more.
                lease.parkedSlots = 0
                state.lease = lease
            }
            if reply.slices.contains(where: { $0.end > 0 }) || reply.slotsGranted > 0 {
                var slices: [BucketSlice?] = []
                for (index, kind) in RateLimitKind.buckets.enumerated() {
                    let granted = reply.slices[index]
                    if let limit = limits.bucket(kind), granted.end > 0 {
                        slices.append(BucketSlice(limit: limit, start: granted.start, end: granted.end))
                    } else {
                        slices.append(nil)
                    }
                }
                state.lease = LimiterLease(limits: limits, slices: slices, parkedSlots: reply.slotsGranted, slotEpoch: reply.slotEpoch)
            }
            return withBudgets(Self.snapshot(limits, reply.headerValues, adding: state.lease, now: reply.redisMicros), limits, team: teamID == nil ? nil : call.teamLimits)
        }
        for (queued, decision) in zip(admissions, decisions) { queued.continuation.resume(returning: decision) }
        for settlement in settlements { settlement.continuation?.resume(returning: snapshot) }
    }

    /// A call failed. Its admissions fail (the caller applies its failure policy) and so does
    /// everything queued behind it; its settlements are kept: queued again if the call certainly
    /// did not run (`applied` false), else kept with the lost call for its resolution.
    private func finish(failing failed: (LaneCall, [QueuedAdmission], [QueuedSettlement])?, error: any Error, applied: Bool?) {
        let (admissions, settlements, dropped) = state.withLock { state -> ([QueuedAdmission], [QueuedSettlement], Int) in
            var admissions = state.admissions
            state.admissions = []
            state.lastFailureMonotonic = MonotonicClock.microseconds()
            var resumed: [QueuedSettlement] = []
            if let (call, calledAdmissions, calledSettlements) = failed {
                admissions = calledAdmissions + admissions
                resumed = calledSettlements
                if call.lost != nil {
                    // A resolution that failed: the lost call stays, with its first resolution.
                } else if applied == false {
                    state.settlements.insert(contentsOf: calledSettlements.map { QueuedSettlement(values: $0.values, limits: $0.limits, teamLimits: $0.teamLimits) }, at: 0)
                    if call.slotsReturned > 0 {
                        // Given back with the next call (unless their epoch is over by then).
                        if state.slotsToReturn > 0, state.slotsToReturnEpoch != call.slotsEpoch { state.slotsToReturn = 0 }
                        state.slotsToReturn += call.slotsReturned
                        state.slotsToReturnEpoch = call.slotsEpoch
                    }
                } else {
                    state.lost = (LostCall(
                        sequence: call.sequence, admissions: call.admissions.map { ($0.promptTokens, $0.reservedOutputTokens, $0.needsCostReservation ? $0.reservedCostNanos : 0, $0.tracksMonthTokens) },
                        settlements: call.settlements, firstResolution: nil,
                        slotsReturned: call.slotsReturned, slotsEpoch: call.slotsEpoch
                    ), call.limits, call.teamLimits)
                }
            }
            // Callers stop waiting; their settlements stay queued for the next attempt.
            for index in state.settlements.indices where state.settlements[index].continuation != nil {
                resumed.append(state.settlements[index])
                state.settlements[index].continuation = nil
            }
            let excess = max(state.settlements.count - Self.maximumQueuedSettlements, 0)
            state.settlements.removeFirst(excess)
            state.draining = false
            return (admissions, resumed, excess)
        }
        if dropped > 0 {
            context.logger.warning("settlements Redis did not take were dropped (too many kept); their slots free when their lease expires", metadata: [
                "key_id": "\(keyID)", "dropped": "\(dropped)", "kept": "\(Self.maximumQueuedSettlements)",
            ])
        }
        for admission in admissions { admission.continuation.resume(throwing: error) }
        for settlement in settlements { settlement.continuation?.resume(returning: nil) }
    }

    /// The µs an exactly admitted request was charged in each bucket's timeline.
    private static func charged(_ request: AdmissionRequest, _ starts: [Int64]) -> [[BucketSlice.Interval]] {
        var taken: [[BucketSlice.Interval]] = [[], [], [], []]
        for (index, kind) in RateLimitKind.buckets.enumerated().dropFirst() {
            guard let limit = request.limits.bucket(kind), starts[index - 1] > 0 else { continue }
            let length = GCRABucket(limit).refillMicros(forCost: Int64(request.cost(kind)))
            taken[index] = [BucketSlice.Interval(start: starts[index - 1], end: starts[index - 1] + length)]
        }
        return taken
    }

    // MARK: snapshots

    /// The key's state as this node sees it: Redis' values (requests remaining, reset µs, tokens
    /// remaining, reset µs, as of the last call or `values`) with what this node's lease still
    /// holds added.
    func snapshot(_ limits: ResolvedLimits, redisValues values: ArraySlice<Int64>) -> RateLimitSnapshot {
        state.withLock { state in Self.snapshot(limits, values, adding: state.lease, now: state.clock?.now() ?? 0) }
    }

    /// Redis' four header values, plus what `lease` still holds of the requests and tokens buckets:
    /// capacity this node can still admit, which also shortens the time until they are full.
    private static func snapshot(_ limits: ResolvedLimits, _ values: ArraySlice<Int64>, adding lease: LimiterLease? = nil, now: Int64 = 0) -> RateLimitSnapshot {
        guard values.count == 4 else { return .empty }
        let start = values.startIndex
        let requests = lease?.slices[0], tokens = lease?.slices[1]
        return RateLimitSnapshot(
            limits: limits,
            requestsRemaining: min(values[start] + (requests?.remaining(now: now) ?? 0), Int64(limits.requests?.burst ?? 0)),
            requestsResetMicros: max(values[start + 1] - (requests?.freeMicros(now: now) ?? 0), 0),
            tokensRemaining: min(values[start + 2] + (tokens?.remaining(now: now) ?? 0), Int64(limits.tokens?.burst ?? 0)),
            tokensResetMicros: max(values[start + 3] - (tokens?.freeMicros(now: now) ?? 0), 0)
        )
    }
}

/// A denial remembered for a moment, so that a client hammering a key past its limit costs Redis
/// a few calls a second instead of one per request. Only what cannot pass sooner is denied from
/// memory: the same limits, and at least the remembered cost in the bucket (or quota) that denied,
/// before its retry-after (capped at ``maximumMicros``, as settlements elsewhere may free capacity
/// earlier). Concurrency denials are never remembered: a slot frees whenever a request ends.
struct DenialMemory: Sendable {
    static let maximumMicros: Int64 = 250_000

    let denial: RateLimitDenial
    let limits: ResolvedLimits
    let cost: Int
    let snapshot: RateLimitSnapshot
    let deniedAt: Int64
    let until: Int64

    init?(_ denial: RateLimitDenial, request: AdmissionRequest, snapshot: RateLimitSnapshot, at now: Int64) {
        guard denial.kind != .concurrency else { return nil }
        self.denial = denial
        limits = request.limits
        cost = request.cost(denial.kind)
        self.snapshot = snapshot
        deniedAt = now
        let wait = denial.neverFits ? Self.maximumMicros : min(Int64(denial.retryAfterSeconds * 1_000_000), Self.maximumMicros)
        until = now + wait
    }

    /// The denial `request` gets from memory at `now`, or nil (ask Redis).
    func denial(for request: AdmissionRequest, at now: Int64) -> RateLimitDenial? {
        guard now < until, request.limits == limits, request.cost(denial.kind) >= cost else { return nil }
        var repeated = denial
        repeated.requested = request.cost(denial.kind)
        if !denial.neverFits {
            repeated.retryAfterSeconds = max(denial.retryAfterSeconds - Double(now - deniedAt) / 1_000_000, 0.001)
        }
        return repeated
    }
}

/// Why a call to the shared limiter failed: the `reason` label of `sluice_limiter_call_failures_total`.
public enum LimiterCallFailure: String, Sendable, Hashable, CaseIterable {
    /// No reply within the command timeout.
    case timeout
    /// The connection failed with the call in flight.
    case connectionLost = "connection_lost"
    /// No connection (down and reconnecting, or none could be opened): the call was not sent.
    case notConnected = "not_connected"
    /// Redis answered with an error reply.
    case serverError = "server_error"
    /// Anything else: an unexpected reply, a failed AUTH/SELECT, the client shut down, a call
    /// Redis refused to apply (a stale sequence number, or past its deadline).
    case other

    public init(_ error: RedisError) {
        switch error {
        case .timedOut: self = .timeout
        case .connectionLost: self = .connectionLost
        case .notConnected, .connectFailed: self = .notConnected
        case .server: self = .serverError
        case .handshakeFailed, .tlsSetupFailed, .unexpectedReply, .invalidCommand, .shutDown: self = .other
        }
    }
}

/// What the lanes did, since the store started: read by the metrics at each scrape.
public final class LimiterStatistics: Sendable {
    public enum Event: Int, Sendable, CaseIterable {
        /// Admitted against a lease held by this node, without a call.
        case leasedAdmissions
        /// Decided by Redis (admitted or denied), in batch.lua calls.
        case redisAdmissions
        /// Denied from a denial remembered for a moment, without a call.
        case rememberedDenials
        /// batch.lua calls answered.
        case calls
        /// Calls whose reply never came (resolved by the lane's next call).
        case lostCalls
        /// Calls that certainly did not run (not sent, refused).
        case failedCalls
    }

    private let leased = Atomic(0), redis = Atomic(0), remembered = Atomic(0)
    private let calls = Atomic(0), lost = Atomic(0), failed = Atomic(0)
    /// Told of every lane call: how long the lane waited for it (µs), and why it failed if it did.
    let callObserver: (@Sendable (_ micros: Int64, _ failure: LimiterCallFailure?) -> Void)?

    public init(callObserver: (@Sendable (_ micros: Int64, _ failure: LimiterCallFailure?) -> Void)? = nil) {
        self.callObserver = callObserver
    }

    func observeCall(sent: Int64, failure: LimiterCallFailure?) {
        callObserver?(MonotonicClock.microseconds() - sent, failure)
    }

    func count(_ event: Event, by amount: Int = 1) {
        switch event {
        case .leasedAdmissions: leased.add(amount, ordering: .relaxed)
        case .redisAdmissions: redis.add(amount, ordering: .relaxed)
        case .rememberedDenials: remembered.add(amount, ordering: .relaxed)
        case .calls: calls.add(amount, ordering: .relaxed)
        case .lostCalls: lost.add(amount, ordering: .relaxed)
        case .failedCalls: failed.add(amount, ordering: .relaxed)
        }
    }

    public subscript(_ event: Event) -> Int {
        switch event {
        case .leasedAdmissions: leased.load(ordering: .relaxed)
        case .redisAdmissions: redis.load(ordering: .relaxed)
        case .rememberedDenials: remembered.load(ordering: .relaxed)
        case .calls: calls.load(ordering: .relaxed)
        case .lostCalls: lost.load(ordering: .relaxed)
        case .failedCalls: failed.load(ordering: .relaxed)
        }
    }
}
