import Dispatch
import Foundation
import Synchronization

/// The embedded limiter: every key's buckets in this process's memory, for a single node (the
/// default when the config has no `redis` section). Same semantics as the Redis store.
///
/// State is sharded by key id, each shard behind its own `Mutex` held only for the few
/// arithmetic steps of one decision, so requests of different keys rarely contend. A key costs
/// one entry (four bucket states, an in-flight count, the ids of unsettled reservations); an entry
/// whose buckets are full again and that has nothing in flight is dropped by a periodic sweep of
/// its shard, so memory is bounded by the keys active in the last minute or so.
public final class InMemoryLimiterStore: LimiterStore {
    /// A clock in microseconds; only differences matter. Must never go backwards.
    public typealias Clock = @Sendable () -> Int64

    public static let defaultShardCount = 64
    /// How often each shard drops its idle, full entries.
    public static let sweepIntervalMicros: Int64 = 60_000_000

    private let shards: [Shard]
    private let clock: Clock
    private let calendarClock: CalendarClock

    /// Seconds since 1970-01-01 UTC: the wall clock the budgets' calendar periods follow.
    public typealias CalendarClock = @Sendable () -> Int64
    public static let wallClockSeconds: CalendarClock = { Int64(Date().timeIntervalSince1970.rounded(.down)) }

    /// - Parameters:
    ///   - shardCount: number of independently locked partitions of the key space.
    ///   - clock: injectable for deterministic tests; by default the monotonic clock.
    ///   - calendarClock: the wall clock (UTC seconds) of the budgets' days and months; injectable too.
    public init(
        shardCount: Int = InMemoryLimiterStore.defaultShardCount, clock: @escaping Clock = InMemoryLimiterStore.monotonicMicroseconds,
        calendarClock: @escaping CalendarClock = InMemoryLimiterStore.wallClockSeconds
    ) {
        self.shards = (0..<max(shardCount, 1)).map { _ in Shard() }
        self.clock = clock
        self.calendarClock = calendarClock
    }

    /// Microseconds of the monotonic clock.
    public static let monotonicMicroseconds: Clock = MonotonicClock.microseconds

    // MARK: LimiterStore

    public func admit(_ request: AdmissionRequest) async throws -> AdmissionDecision {
        admitNow(request)
    }

    public func settle(_ reservation: Reservation, actualPromptTokens: Int, actualCompletionTokens: Int) async throws -> RateLimitSnapshot? {
        settleNow(reservation, actualPromptTokens: actualPromptTokens, actualCompletionTokens: actualCompletionTokens)
    }

    public func snapshot(keyID: String, team: String?, limits: ResolvedLimits) async throws -> RateLimitSnapshot {
        snapshotNow(keyID: keyID, limits: limits)
    }

    // MARK: synchronous core (the async methods above never suspend)

    /// `admit`, without the async hop.
    public func admitNow(_ request: AdmissionRequest) -> AdmissionDecision {
        let now = clock()
        let calendar = BudgetCalendar(seconds: calendarClock())
        if let team = request.team { return admitWithTeam(request, team: team, now: now, calendar: calendar) }
        return shard(for: request.keyID).state.withLock { state in
            let decision = state.entries[request.keyID, default: KeyEntry()].admit(request, now: now, calendar: calendar)
            state.sweepIfDue(now: now, calendar: calendar)
            return decision
        }
    }

    /// `settle`, without the async hop.
    public func settleNow(_ reservation: Reservation, actualPromptTokens: Int, actualCompletionTokens: Int) -> RateLimitSnapshot? {
        let now = clock()
        let calendar = BudgetCalendar(seconds: calendarClock())
        if let team = reservation.team {
            // The team's share of the settlement: the same request, on the team's limits.
            var teamShare = Reservation(
                requestID: reservation.requestID, keyID: Self.teamEntryID(team.id), limits: team.limits, model: reservation.model,
                promptTokens: reservation.promptTokens, reservedOutputTokens: reservation.reservedOutputTokens,
                holdsConcurrencySlot: team.limits.maxConcurrentRequests != nil
            )
            teamShare.reservedCostNanos = reservation.reservedCostNanos
            teamShare.settledCost = reservation.settledCost
            // The month's tokens of a key in a team are counted on the team's entry only.
            teamShare.monthTokensBefore = reservation.monthTokensBefore
            _ = shard(for: teamShare.keyID).state.withLock { state -> RateLimitSnapshot? in
                guard state.entries[teamShare.keyID] != nil else { return nil }
                return state.entries[teamShare.keyID]!.settle(
                    teamShare, actualPromptTokens: actualPromptTokens, actualCompletionTokens: actualCompletionTokens, now: now, calendar: calendar
                )
            }
        }
        var keyShare = reservation
        if reservation.team != nil { keyShare.monthTokensBefore = nil }
        return shard(for: reservation.keyID).state.withLock { state in
            guard state.entries[reservation.keyID] != nil else { return nil }
            return state.entries[reservation.keyID]!.settle(
                keyShare, actualPromptTokens: actualPromptTokens, actualCompletionTokens: actualCompletionTokens, now: now, calendar: calendar
            )
        }
    }

    /// The name of a team's entry: no key id holds a control character, so it names no key.
    static func teamEntryID(_ team: String) -> String { "\u{1}team\u{1}" + team }

    /// A request of a key in a team: the key's entry and the team's, each decided on its own limits
    /// on a copy, and written back only if both admit — one atomic step (both shards locked, in
    /// index order). The month's tokens (volume tiers, plans) are the team's: counted on the team's
    /// entry, whose position prices the request; the key's entry does not count them.
    private func admitWithTeam(_ request: AdmissionRequest, team: TeamSubject, now: Int64, calendar: BudgetCalendar) -> AdmissionDecision {
        var keyRequest = request
        keyRequest.tracksMonthTokens = false
        var teamRequest = request
        teamRequest.keyID = Self.teamEntryID(team.id)
        teamRequest.limits = team.limits
        teamRequest.team = nil
        let keyIndex = shardIndex(for: request.keyID), teamIndex = shardIndex(for: teamRequest.keyID)
        func decide(_ keyState: inout ShardState, _ teamState: inout ShardState) -> AdmissionDecision {
            var keyEntry = keyState.entries[request.keyID] ?? KeyEntry()
            var teamEntry = teamState.entries[teamRequest.keyID] ?? KeyEntry()
            let keyDecision = keyEntry.admit(keyRequest, now: now, calendar: calendar)
            let teamDecision = Self.markingTeam(teamEntry.admit(teamRequest, now: now, calendar: calendar), team.id)
            let teamBefore = teamState.entries[teamRequest.keyID] ?? KeyEntry()
            switch (keyDecision, teamDecision) {
            case (.admitted(var reservation, let snapshot), .admitted(let teamReservation, _)):
                keyState.entries[request.keyID] = keyEntry
                teamState.entries[teamRequest.keyID] = teamEntry
                reservation.team = team
                reservation.monthTokensBefore = teamReservation.monthTokensBefore
                return .admitted(reservation, teamEntry.addingTeamBudget(of: team, to: snapshot, calendar: calendar))
            case (.denied(let keyDenial, let snapshot), .denied(let teamDenial, _)):
                return .denied(teamDenial.outranks(keyDenial) ? teamDenial : keyDenial, teamBefore.addingTeamBudget(of: team, to: snapshot, calendar: calendar))
            case (.denied(let denial, _), .admitted), (.admitted, .denied(let denial, _)):
                // Nothing is written back: the copy that admitted is dropped; the key's state as it stood.
                let snapshot = (keyState.entries[request.keyID] ?? KeyEntry()).snapshot(limits: request.limits, now: now)
                return .denied(denial, teamBefore.addingTeamBudget(of: team, to: snapshot, calendar: calendar))
            }
        }
        if keyIndex == teamIndex {
            return shards[keyIndex].state.withLock { state in
                let decision = decideInOneShard(&state, request: keyRequest, teamRequest: teamRequest, team: team, now: now, calendar: calendar)
                state.sweepIfDue(now: now, calendar: calendar)
                return decision
            }
        }
        let (first, second) = keyIndex < teamIndex ? (keyIndex, teamIndex) : (teamIndex, keyIndex)
        return shards[first].state.withLock { firstState in
            shards[second].state.withLock { secondState in
                keyIndex == first ? decide(&firstState, &secondState) : decide(&secondState, &firstState)
            }
        }
    }

    /// A team entry's denial, said to be the team's (the 429 names the team's limit).
    private static func markingTeam(_ decision: AdmissionDecision, _ team: String) -> AdmissionDecision {
        guard case .denied(var denial, let snapshot) = decision else { return decision }
        denial.team = team
        return .denied(denial, snapshot)
    }

    /// `admitWithTeam` when the key's and the team's entries share a shard.
    private func decideInOneShard(_ state: inout ShardState, request: AdmissionRequest, teamRequest: AdmissionRequest, team: TeamSubject, now: Int64, calendar: BudgetCalendar) -> AdmissionDecision {
        var keyEntry = state.entries[request.keyID] ?? KeyEntry()
        var teamEntry = state.entries[teamRequest.keyID] ?? KeyEntry()
        let keyDecision = keyEntry.admit(request, now: now, calendar: calendar)
        let teamDecision = Self.markingTeam(teamEntry.admit(teamRequest, now: now, calendar: calendar), team.id)
        let teamBefore = state.entries[teamRequest.keyID] ?? KeyEntry()
        switch (keyDecision, teamDecision) {
        case (.admitted(var reservation, let snapshot), .admitted(let teamReservation, _)):
            state.entries[request.keyID] = keyEntry
            state.entries[teamRequest.keyID] = teamEntry
            reservation.team = team
            reservation.monthTokensBefore = teamReservation.monthTokensBefore
            return .admitted(reservation, teamEntry.addingTeamBudget(of: team, to: snapshot, calendar: calendar))
        case (.denied(let keyDenial, let snapshot), .denied(let teamDenial, _)):
            return .denied(teamDenial.outranks(keyDenial) ? teamDenial : keyDenial, teamBefore.addingTeamBudget(of: team, to: snapshot, calendar: calendar))
        case (.denied(let denial, _), .admitted), (.admitted, .denied(let denial, _)):
            let snapshot = (state.entries[request.keyID] ?? KeyEntry()).snapshot(limits: request.limits, now: now)
            return .denied(denial, teamBefore.addingTeamBudget(of: team, to: snapshot, calendar: calendar))
        }
    }

    /// The budgets' spend of a key or team (token quotas are not kept here: `nil`).
    public func periodUsage(_ subject: LimitSubject) async throws -> PeriodUsage {
        let spent: (day: Int64, month: Int64)
        switch subject {
        case .key(let id, _): spent = budgetSpent(keyID: id)
        case .team(let id): spent = budgetSpent(team: id)
        }
        return PeriodUsage(spentToday: USDAmount(nanos: spent.day), spentThisMonth: USDAmount(nanos: spent.month))
    }

    /// What a team's budgets have spent in the current UTC day and month (as `budgetSpent(keyID:)`).
    public func budgetSpent(team: String) -> (day: Int64, month: Int64) {
        budgetSpent(keyID: Self.teamEntryID(team))
    }

    /// What a key's budgets have spent in the current UTC day and month (nano-dollars; reservations
    /// in flight included at their reserved cost).
    public func budgetSpent(keyID: String) -> (day: Int64, month: Int64) {
        let calendar = BudgetCalendar(seconds: calendarClock())
        return shard(for: keyID).state.withLock { state in
            guard let entry = state.entries[keyID] else { return (0, 0) }
            return (entry.budgetDay == calendar.day ? entry.budgetDaySpent : 0, entry.budgetMonth == calendar.month ? entry.budgetMonthSpent : 0)
        }
    }

    /// `snapshot`, without the async hop.
    public func snapshotNow(keyID: String, limits: ResolvedLimits) -> RateLimitSnapshot {
        let now = clock()
        let calendar = BudgetCalendar(seconds: calendarClock())
        return shard(for: keyID).state.withLock { state in
            (state.entries[keyID] ?? KeyEntry()).snapshot(limits: limits, now: now, calendar: calendar)
        }
    }

    /// Number of keys with state in memory (for tests and metrics).
    public var trackedKeyCount: Int {
        shards.reduce(0) { total, shard in total + shard.state.withLock { $0.entries.count } }
    }

    /// Drops every idle, full entry now, whatever the sweep schedule (for tests and shutdown).
    public func sweep() {
        let now = clock()
        let calendar = BudgetCalendar(seconds: calendarClock())
        for shard in shards {
            shard.state.withLock { $0.sweep(now: now, calendar: calendar) }
        }
    }

    private func shard(for keyID: String) -> Shard {
        shards[shardIndex(for: keyID)]
    }

    private func shardIndex(for keyID: String) -> Int {
        Int(UInt(bitPattern: keyID.hashValue) % UInt(shards.count))
    }
}

// MARK: - state

private final class Shard: Sendable {
    let state = Mutex(ShardState())
}

private struct ShardState {
    var entries: [String: KeyEntry] = [:]
    var lastSweep: Int64 = 0

    mutating func sweepIfDue(now: Int64, calendar: BudgetCalendar) {
        if now - lastSweep >= InMemoryLimiterStore.sweepIntervalMicros { sweep(now: now, calendar: calendar) }
    }

    /// An entry whose buckets are all full, that holds no reservation and has spent nothing of a
    /// budget in the current day or month is equivalent to no entry at all: dropping it loses nothing.
    mutating func sweep(now: Int64, calendar: BudgetCalendar) {
        lastSweep = now
        entries = entries.filter { !$0.value.isIdleAndFull(now: now, calendar: calendar) }
    }
}

/// The UTC calendar periods the budgets count in: day index (days since 1970-01-01) and month index
/// (year × 12 + month − 1, as the Redis quotas), with the seconds until each ends.
public struct BudgetCalendar: Sendable {
    public let day: Int64
    public let month: Int64
    public let secondsToNextDay: Int64
    public let secondsToNextMonth: Int64

    public init(seconds: Int64) {
        let day = seconds >= 0 ? seconds / 86_400 : (seconds - 86_399) / 86_400
        let date = CivilCalendar.date(daysSinceEpoch: Int(day))
        let nextMonthStart = date.month == 12
            ? CivilCalendar.daysSinceEpoch(year: date.year + 1, month: 1, day: 1)
            : CivilCalendar.daysSinceEpoch(year: date.year, month: date.month + 1, day: 1)
        self.day = day
        self.month = Int64(date.year * 12 + date.month - 1)
        self.secondsToNextDay = (day + 1) * 86_400 - seconds
        self.secondsToNextMonth = Int64(nextMonthStart) * 86_400 - seconds
    }
}

/// One key's limiter state.
private struct KeyEntry {
    /// GCRA theoretical arrival times (µs) of the four per-minute buckets; ≤ now means full.
    var requestsTAT: Int64 = 0
    var tokensTAT: Int64 = 0
    var inputTokensTAT: Int64 = 0
    var outputTokensTAT: Int64 = 0
    /// Reservations holding a concurrency slot.
    var inFlight = 0
    /// Admitted, not yet settled (what makes settle exactly-once), with the budget periods each was
    /// charged in: a settlement corrects those periods only if they are still the current ones.
    var unsettled: [String: (day: Int64, month: Int64)] = [:]
    /// The budgets' periods and what was spent in them (nano-dollars, reservations included).
    var budgetDay: Int64 = -1
    var budgetDaySpent: Int64 = 0
    var budgetMonth: Int64 = -1
    var budgetMonthSpent: Int64 = 0
    /// The key's tokens of the month, for requests whose price depends on their position in it.
    var tokensMonth: Int64 = -1
    var monthTokens: Int64 = 0

    func tat(_ kind: RateLimitKind) -> Int64 {
        switch kind {
        case .requests: requestsTAT
        case .tokens: tokensTAT
        case .inputTokens: inputTokensTAT
        case .outputTokens: outputTokensTAT
        case .concurrency, .dailyTokens, .monthlyTokens, .dailyBudget, .monthlyBudget: 0
        }
    }

    mutating func setTAT(_ kind: RateLimitKind, _ value: Int64) {
        switch kind {
        case .requests: requestsTAT = value
        case .tokens: tokensTAT = value
        case .inputTokens: inputTokensTAT = value
        case .outputTokens: outputTokensTAT = value
        case .concurrency, .dailyTokens, .monthlyTokens, .dailyBudget, .monthlyBudget: break
        }
    }

    func isIdleAndFull(now: Int64, calendar: BudgetCalendar) -> Bool {
        unsettled.isEmpty && inFlight == 0
            && requestsTAT <= now && tokensTAT <= now && inputTokensTAT <= now && outputTokensTAT <= now
            && (budgetDay != calendar.day || budgetDaySpent == 0) && (budgetMonth != calendar.month || budgetMonthSpent == 0)
            && (tokensMonth != calendar.month || monthTokens == 0)
    }

    /// Moves the budget counters to the current periods (a new day or month starts from 0).
    mutating func rollBudgets(to calendar: BudgetCalendar) {
        if budgetDay != calendar.day { (budgetDay, budgetDaySpent) = (calendar.day, 0) }
        if budgetMonth != calendar.month { (budgetMonth, budgetMonthSpent) = (calendar.month, 0) }
    }

    /// All-or-nothing: decide every limit first, change state only if all admit.
    mutating func admit(_ request: AdmissionRequest, now: Int64, calendar: BudgetCalendar) -> AdmissionDecision {
        let limits = request.limits
        var newTATs: (requests: Int64, tokens: Int64, input: Int64, output: Int64) = (requestsTAT, tokensTAT, inputTokensTAT, outputTokensTAT)
        var denial: RateLimitDenial?

        func consider(_ candidate: RateLimitDenial) {
            if let current = denial, !candidate.outranks(current) { return }
            denial = candidate
        }

        for kind in RateLimitKind.buckets {
            guard let limit = limits.bucket(kind) else { continue }
            let bucket = GCRABucket(limit)
            let cost = request.cost(kind)
            let state = tat(kind)
            switch bucket.admit(cost: Int64(cost), tat: state, now: now) {
            case .allowed(let newTAT):
                switch kind {
                case .requests: newTATs.requests = newTAT
                case .tokens: newTATs.tokens = newTAT
                case .inputTokens: newTATs.input = newTAT
                default: newTATs.output = newTAT
                }
            case .denied(let retryAfterMicros):
                consider(RateLimitDenial(
                    kind: kind, limit: limit.perMinute, burst: limit.burst, used: Int(bucket.used(tat: state, now: now)),
                    requested: cost, retryAfterSeconds: Double(retryAfterMicros) / 1_000_000, neverFits: false
                ))
            case .tooLarge:
                consider(RateLimitDenial(
                    kind: kind, limit: limit.perMinute, burst: limit.burst, used: Int(bucket.used(tat: state, now: now)),
                    requested: cost, retryAfterSeconds: 0, neverFits: true
                ))
            }
        }
        if let maximum = limits.maxConcurrentRequests, inFlight >= maximum {
            consider(RateLimitDenial(
                kind: .concurrency, limit: maximum, burst: maximum, used: inFlight, requested: 1,
                retryAfterSeconds: RateLimitDenial.concurrencyRetryAfterSeconds, neverFits: false
            ))
        }
        // Budgets: the request's maximum cost must fit what is left of the day and the month.
        rollBudgets(to: calendar)
        let cost = limits.hasBudget ? max(request.reservedCostNanos, 0) : 0
        for (kind, budget, spent, renews) in [
            (RateLimitKind.dailyBudget, limits.usdPerDay, budgetDaySpent, calendar.secondsToNextDay),
            (RateLimitKind.monthlyBudget, limits.usdPerMonth, budgetMonthSpent, calendar.secondsToNextMonth),
        ] {
            guard let budget, spent + cost > budget else { continue }
            consider(RateLimitDenial(
                kind: kind, limit: Int(budget), burst: Int(budget), used: Int(spent), requested: Int(cost),
                retryAfterSeconds: cost > budget ? 0 : Double(renews), neverFits: cost > budget
            ))
        }

        if let denial {
            return .denied(denial, snapshot(limits: limits, now: now, calendar: calendar))
        }
        (requestsTAT, tokensTAT, inputTokensTAT, outputTokensTAT) = newTATs
        let reservation = Reservation(admitting: request)
        if reservation.holdsConcurrencySlot { inFlight += 1 }
        if limits.usdPerDay != nil { budgetDaySpent += reservation.reservedCostNanos }
        if limits.usdPerMonth != nil { budgetMonthSpent += reservation.reservedCostNanos }
        unsettled[request.requestID] = (calendar.day, calendar.month)
        var admitted = reservation
        if request.tracksMonthTokens {
            if tokensMonth != calendar.month { (tokensMonth, monthTokens) = (calendar.month, 0) }
            admitted.monthTokensBefore = Int(monthTokens)
            monthTokens += Int64(reservation.promptTokens + reservation.reservedOutputTokens)
        }
        return .admitted(admitted, snapshot(limits: limits, now: now, calendar: calendar))
    }

    mutating func settle(_ reservation: Reservation, actualPromptTokens: Int, actualCompletionTokens: Int, now: Int64, calendar: BudgetCalendar) -> RateLimitSnapshot? {
        guard let periods = unsettled.removeValue(forKey: reservation.requestID) else { return nil }
        // The budgets: the difference between what was reserved and what the request cost, in the
        // periods it was charged in (a period that has ended is left as it was).
        rollBudgets(to: calendar)
        if reservation.monthTokensBefore != nil, periods.month == tokensMonth {
            let tokens = Int64(max(actualPromptTokens, 0) + max(actualCompletionTokens, 0) - reservation.promptTokens - reservation.reservedOutputTokens)
            monthTokens = max(monthTokens + tokens, 0)
        }
        let difference = reservation.settledCostNanos - reservation.reservedCostNanos
        if difference != 0 {
            if reservation.limits.usdPerDay != nil, periods.day == budgetDay { budgetDaySpent = max(budgetDaySpent + difference, 0) }
            if reservation.limits.usdPerMonth != nil, periods.month == budgetMonth { budgetMonthSpent = max(budgetMonthSpent + difference, 0) }
        }
        let prompt = max(actualPromptTokens, 0)
        let completion = max(actualCompletionTokens, 0)
        let limits = reservation.limits
        reconcile(.tokens, limits, reserved: reservation.promptTokens + reservation.reservedOutputTokens, actual: prompt + completion, now: now)
        reconcile(.inputTokens, limits, reserved: reservation.promptTokens, actual: prompt, now: now)
        reconcile(.outputTokens, limits, reserved: reservation.reservedOutputTokens, actual: completion, now: now)
        if reservation.holdsConcurrencySlot { inFlight = max(inFlight - 1, 0) }
        return snapshot(limits: limits, now: now, calendar: calendar)
    }

    /// Refunds what was reserved but not used, or charges what was used beyond the reservation
    /// (possibly into debt; see `GCRABucket`).
    private mutating func reconcile(_ kind: RateLimitKind, _ limits: ResolvedLimits, reserved: Int, actual: Int, now: Int64) {
        guard let limit = limits.bucket(kind), actual != reserved else { return }
        let bucket = GCRABucket(limit)
        if actual < reserved {
            setTAT(kind, bucket.refund(Int64(reserved - actual), tat: tat(kind), now: now))
        } else {
            setTAT(kind, bucket.charge(Int64(actual - reserved), tat: tat(kind), now: now))
        }
    }

    /// `snapshot` with the budgets of `team` (whose entry this is) as they stand in this entry.
    func addingTeamBudget(of team: TeamSubject, to snapshot: RateLimitSnapshot, calendar: BudgetCalendar) -> RateLimitSnapshot {
        var snapshot = snapshot
        snapshot.teamBudget = budget(team.limits, calendar: calendar)
        return snapshot
    }

    /// `snapshot(limits:now:)` with the budgets' headers of the current periods.
    func snapshot(limits: ResolvedLimits, now: Int64, calendar: BudgetCalendar) -> RateLimitSnapshot {
        var snapshot = snapshot(limits: limits, now: now)
        snapshot.budget = budget(limits, calendar: calendar)
        return snapshot
    }

    /// The budgets of `limits` (this entry's key's or team's) with what this entry spent in the
    /// periods of `calendar`: spend of an earlier period counts as none.
    private func budget(_ limits: ResolvedLimits, calendar: BudgetCalendar) -> BudgetState? {
        BudgetState(
            limits, spentToday: budgetDay == calendar.day ? budgetDaySpent : 0,
            spentThisMonth: budgetMonth == calendar.month ? budgetMonthSpent : 0, calendar: calendar
        )
    }

    func snapshot(limits: ResolvedLimits, now: Int64) -> RateLimitSnapshot {
        let requests = limits.requests.map(GCRABucket.init)
        let tokens = limits.tokens.map(GCRABucket.init)
        return RateLimitSnapshot(
            limits: limits,
            requestsRemaining: requests?.remaining(tat: requestsTAT, now: now) ?? 0,
            requestsResetMicros: requests?.resetAfterMicros(tat: requestsTAT, now: now) ?? 0,
            tokensRemaining: tokens?.remaining(tat: tokensTAT, now: now) ?? 0,
            tokensResetMicros: tokens?.resetAfterMicros(tat: tokensTAT, now: now) ?? 0
        )
    }
}
