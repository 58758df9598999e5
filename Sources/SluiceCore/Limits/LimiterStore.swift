/// A team a request's key belongs to: its id and its limits, shared by all its keys. A request must
/// pass both its key's limits and its team's, in one atomic step; charges and refunds go to both.
public struct TeamSubject: Sendable, Hashable {
    public let id: String
    public let limits: ResolvedLimits

    public init(id: String, limits: ResolvedLimits) {
        self.id = id
        self.limits = limits
    }
}

/// What the pipeline asks the limiter for one request (step 6, "admit").
public struct AdmissionRequest: Sendable {
    /// Unique per request; settles are idempotent per id. Sluice's own id, never a client's
    /// `x-request-id` (a client may repeat one).
    public var requestID: String
    public var keyID: String
    public var limits: ResolvedLimits
    public var model: String
    /// Exact prompt tokens, counted by the tokenizer.
    public var promptTokens: Int
    /// The output reservation: max output × n, or the key's default.
    public var reservedOutputTokens: Int
    /// The most the request can cost (nano-dollars): what its key's budgets reserve. 0 without a
    /// budget.
    public var reservedCostNanos: Int64 = 0
    /// The key's team, whose limits the request must pass too (`nil`: none).
    public var team: TeamSubject?
    /// Whether the request's price depends on the key's position in its month's tokens (volume
    /// tiers, a plan): the store then counts the key's tokens of the month and tells the request
    /// where it starts (`Reservation.monthTokensBefore`). For a key in a team (`team` set) the
    /// month counted is the team's: the tokens of all its keys, in the same atomic step.
    public var tracksMonthTokens = false

    /// Whether the key or its team has a budget: the request's maximum cost must be reserved.
    public var needsCostReservation: Bool { limits.hasBudget || (team?.limits.hasBudget ?? false) }

    public init(requestID: String, keyID: String, limits: ResolvedLimits, model: String, promptTokens: Int, reservedOutputTokens: Int) {
        self.requestID = requestID
        self.keyID = keyID
        self.limits = limits
        self.model = model
        self.promptTokens = promptTokens
        self.reservedOutputTokens = reservedOutputTokens
    }

    /// What the request costs in each per-minute bucket:
    /// RPM 1, TPM prompt + reserved output, ITPM prompt, OTPM reserved output.
    public func cost(_ kind: RateLimitKind) -> Int {
        switch kind {
        case .requests: 1
        case .tokens: max(promptTokens, 0) + max(reservedOutputTokens, 0)
        case .inputTokens: max(promptTokens, 0)
        case .outputTokens: max(reservedOutputTokens, 0)
        case .concurrency: 1
        case .dailyTokens, .monthlyTokens: max(promptTokens, 0) + max(reservedOutputTokens, 0)
        case .dailyBudget, .monthlyBudget: Int(max(reservedCostNanos, 0))
        }
    }
}

/// An admitted request's claim on its key's limits, to be settled exactly once.
public struct Reservation: Sendable {
    public let requestID: String
    public let keyID: String
    public let limits: ResolvedLimits
    public let model: String
    public let promptTokens: Int
    public let reservedOutputTokens: Int
    /// Whether a concurrency slot was taken (released at settle).
    public let holdsConcurrencySlot: Bool
    /// What the request cost, set by the settle step before it settles (`nil`: no pricing
    /// configured); recorded with the usage, and what the budgets are settled with.
    public var settledCost: RequestCost?
    /// What the budgets reserved at admission (nano-dollars; 0 without a budget).
    public var reservedCostNanos: Int64 = 0
    /// The team charged with the key (`nil`: none).
    public var team: TeamSubject?
    /// For a request that tracks the month's tokens: the key's (for a key in a team, the team's)
    /// tokens of the calendar month (UTC) before it — settled ones, and the reservations of those
    /// admitted before it — where its own tokens start for volume tiers and plans. `nil`: not
    /// tracked. Settle corrects the same counter.
    public var monthTokensBefore: Int?

    /// What the budgets are charged at settle: the known cost, else (unknown, or not set) the
    /// reservation, kept as it was.
    public var settledCostNanos: Int64 {
        settledCost?.amount.map { max($0.nanos, 0) } ?? reservedCostNanos
    }

    public init(requestID: String, keyID: String, limits: ResolvedLimits, model: String, promptTokens: Int, reservedOutputTokens: Int, holdsConcurrencySlot: Bool) {
        self.requestID = requestID
        self.keyID = keyID
        self.limits = limits
        self.model = model
        self.promptTokens = promptTokens
        self.reservedOutputTokens = reservedOutputTokens
        self.holdsConcurrencySlot = holdsConcurrencySlot
    }

    /// The same claim, with its usage recorded under `model` instead.
    public func recordingUsage(as model: String) -> Reservation {
        var copy = Reservation(
            requestID: requestID, keyID: keyID, limits: limits, model: model, promptTokens: promptTokens,
            reservedOutputTokens: reservedOutputTokens, holdsConcurrencySlot: holdsConcurrencySlot
        )
        copy.settledCost = settledCost
        copy.reservedCostNanos = reservedCostNanos
        copy.team = team
        copy.monthTokensBefore = monthTokensBefore
        return copy
    }

    public init(admitting request: AdmissionRequest) {
        self.init(
            requestID: request.requestID, keyID: request.keyID, limits: request.limits, model: request.model,
            promptTokens: max(request.promptTokens, 0), reservedOutputTokens: max(request.reservedOutputTokens, 0),
            holdsConcurrencySlot: request.limits.maxConcurrentRequests != nil
        )
        reservedCostNanos = request.needsCostReservation ? max(request.reservedCostNanos, 0) : 0
        team = request.team
    }
}

/// Why a request was not admitted: the limit that denied it (the one with the longest wait when
/// several did), in the terms of OpenAI's 429 message.
public struct RateLimitDenial: Sendable, Hashable {
    /// Retry-after suggested for a concurrency denial: a slot frees when some request ends, which
    /// no clock predicts. The Redis store uses the same value.
    public static let concurrencyRetryAfterSeconds = 1.0

    public var kind: RateLimitKind
    /// The configured limit (per minute, or the concurrency maximum).
    public var limit: Int
    /// The bucket's capacity (`limit` unless a burst is configured); what `neverFits` compares to.
    public var burst: Int
    /// In use at the moment of the decision.
    public var used: Int
    /// What this request asked for in that dimension.
    public var requested: Int
    /// When the same request would be admitted (if nothing else is admitted meanwhile); 0 when
    /// `neverFits`.
    public var retryAfterSeconds: Double
    /// The request is larger than the bucket's capacity: it can never pass; do not retry.
    public var neverFits: Bool
    /// The team whose limit denied (`keys[].team`); `nil`: the key's own limit.
    public var team: String?

    public init(kind: RateLimitKind, limit: Int, burst: Int, used: Int, requested: Int, retryAfterSeconds: Double, neverFits: Bool, team: String? = nil) {
        self.team = team
        self.kind = kind
        self.limit = limit
        self.burst = burst
        self.used = used
        self.requested = requested
        self.retryAfterSeconds = retryAfterSeconds
        self.neverFits = neverFits
    }

    /// Whether `self` should be reported rather than `other` when both deny one request:
    /// a request that can never fit wins (retrying is pointless), then the longest wait.
    public func outranks(_ other: RateLimitDenial) -> Bool {
        if neverFits != other.neverFits { return neverFits }
        return retryAfterSeconds > other.retryAfterSeconds
    }
}

/// A key's state for the `x-ratelimit-*` headers. `nil` fields belong to limits that are not
/// configured and are not rendered.
public struct RateLimitSnapshot: Sendable, Hashable {
    public var limitRequests: Int?
    public var remainingRequests: Int?
    /// Seconds until the request bucket is full again.
    public var resetRequestsSeconds: Double?
    public var limitTokens: Int?
    public var remainingTokens: Int?
    /// Seconds until the token bucket is full again.
    public var resetTokensSeconds: Double?

    /// The key's budgets (`usd_per_day`, `usd_per_month`); `nil` when it has none.
    public var budget: BudgetState?
    /// The budgets of the key's team (`keys[].team`); `nil` when the team has none (or the key no team).
    public var teamBudget: BudgetState?

    /// No limits configured: no headers.
    public static let empty = RateLimitSnapshot()

    /// The header values for `limits`: what is left in the requests and tokens buckets and how long
    /// until each is full (µs); a limit that is not configured gets no values. Both stores build
    /// their snapshots here.
    public init(limits: ResolvedLimits, requestsRemaining: Int64, requestsResetMicros: Int64, tokensRemaining: Int64, tokensResetMicros: Int64) {
        self.init()
        if let limit = limits.requests {
            limitRequests = limit.perMinute
            remainingRequests = Int(requestsRemaining)
            resetRequestsSeconds = Double(requestsResetMicros) / 1_000_000
        }
        if let limit = limits.tokens {
            limitTokens = limit.perMinute
            remainingTokens = Int(tokensRemaining)
            resetTokensSeconds = Double(tokensResetMicros) / 1_000_000
        }
    }

    public init(limitRequests: Int? = nil, remainingRequests: Int? = nil, resetRequestsSeconds: Double? = nil, limitTokens: Int? = nil, remainingTokens: Int? = nil, resetTokensSeconds: Double? = nil) {
        self.limitRequests = limitRequests
        self.remainingRequests = remainingRequests
        self.resetRequestsSeconds = resetRequestsSeconds
        self.limitTokens = limitTokens
        self.remainingTokens = remainingTokens
        self.resetTokensSeconds = resetTokensSeconds
    }
}

/// The budgets of a key or of a team, for their `x-ratelimit-*-usd-*` headers: each UTC period
/// that has a budget, `nil` the other.
public struct BudgetState: Sendable, Hashable {
    /// One period's budget: the limit, what is left of it now, and the seconds until it renews.
    public struct Period: Sendable, Hashable {
        public var limit: USDAmount
        public var remaining: USDAmount
        public var resetSeconds: Double
    }

    public var day: Period?
    public var month: Period?

    /// The budgets of `limits`, given what was spent (nano-dollars) in the periods of `calendar`;
    /// `nil` when `limits` has no budget. Every store and the gateway build them here.
    public init?(_ limits: ResolvedLimits, spentToday: Int64, spentThisMonth: Int64, calendar: BudgetCalendar) {
        guard limits.hasBudget else { return nil }
        func period(_ limit: Int64?, spent: Int64, secondsLeft: Int64) -> Period? {
            limit.map { Period(limit: USDAmount(nanos: $0), remaining: USDAmount(nanos: max($0 - spent, 0)), resetSeconds: Double(secondsLeft)) }
        }
        day = period(limits.usdPerDay, spent: spentToday, secondsLeft: calendar.secondsToNextDay)
        month = period(limits.usdPerMonth, spent: spentThisMonth, secondsLeft: calendar.secondsToNextMonth)
    }
}

/// The limiter's answer to an admission.
public enum AdmissionDecision: Sendable {
    /// Admitted: every limit was charged; settle the reservation when the request ends.
    case admitted(Reservation, RateLimitSnapshot)
    /// Denied: nothing was charged.
    case denied(RateLimitDenial, RateLimitSnapshot)
}

/// Whose calendar usage to read: a key's (with its team, which may decide where the key's state
/// lives), or a team's.
public enum LimitSubject: Sendable, Hashable {
    case key(String, team: String?)
    case team(String)

    /// A key in no team.
    public static func key(_ keyID: String) -> LimitSubject { .key(keyID, team: nil) }
}

/// What a subject has used of its calendar limits in the current UTC day and month; `nil` where the
/// store does not keep it (the embedded limiter keeps no token quotas).
public struct PeriodUsage: Sendable, Hashable {
    public var tokensToday: Int?
    public var tokensThisMonth: Int?
    /// Spend counted against the budgets: settled costs plus the reservations still in flight.
    public var spentToday: USDAmount?
    public var spentThisMonth: USDAmount?

    public init(tokensToday: Int? = nil, tokensThisMonth: Int? = nil, spentToday: USDAmount? = nil, spentThisMonth: USDAmount? = nil) {
        self.tokensToday = tokensToday
        self.tokensThisMonth = tokensThisMonth
        self.spentToday = spentToday
        self.spentThisMonth = spentThisMonth
    }
}

/// Where the limits' state lives: in memory (`InMemoryLimiterStore`, one node) or in Redis
/// (every node shares it). Both implement exactly these semantics.
///
/// - `admit` is one atomic step over all the key's limits, all-or-nothing: either every bucket is
///   charged (RPM 1, TPM prompt + reserved output, ITPM prompt, OTPM reserved output) and a
///   concurrency slot taken, or nothing changes. When several limits deny, the denial reported is
///   the one that `outranks` the others (never-fits first, then the longest retry-after). A cost
///   larger than a bucket's burst is denied with `neverFits`.
/// - The bucket math is `GCRABucket`'s.
public protocol LimiterStore: Sendable {
    /// Decides one request against all of its key's limits, atomically.
    func admit(_ request: AdmissionRequest) async throws -> AdmissionDecision

    /// Settles a reservation exactly once per requestID (later calls are no-ops returning nil):
    /// refunds or charges the difference between the reservation and the actual usage on the
    /// token buckets, releases the concurrency slot.
    /// - Returns: the key's state afterwards, or `nil` if this reservation was already settled.
    func settle(_ reservation: Reservation, actualPromptTokens: Int, actualCompletionTokens: Int) async throws -> RateLimitSnapshot?

    /// The key's current state, charging nothing (for responses that skip admission). `team` is the
    /// key's team (`keys[].team`): where a store keeps the key's state may depend on it.
    func snapshot(keyID: String, team: String?, limits: ResolvedLimits) async throws -> RateLimitSnapshot

    /// What `subject` used of its quotas and budgets in the current UTC day and month, charging
    /// nothing (`GET /v1/sluice/key`).
    func periodUsage(_ subject: LimitSubject) async throws -> PeriodUsage

    /// Which part of the store holds the key's state and fails on its own (a Redis Cluster slot):
    /// the failure policy applies per part, so keys elsewhere keep exact limits. `team` is the
    /// key's team: a key in a team lives where its team does.
    func failureDomain(keyID: String, team: String?) -> Int
}

extension LimiterStore {
    /// A store that fails as one.
    public func failureDomain(keyID: String, team: String?) -> Int { 0 }

    /// The state of a key in no team.
    public func snapshot(keyID: String, limits: ResolvedLimits) async throws -> RateLimitSnapshot {
        try await snapshot(keyID: keyID, team: nil, limits: limits)
    }

    /// The failure domain of a key in no team.
    public func failureDomain(keyID: String) -> Int { failureDomain(keyID: keyID, team: nil) }

    /// A store that keeps no calendar counters: nothing known.
    public func periodUsage(_ subject: LimitSubject) async throws -> PeriodUsage { PeriodUsage() }
}
