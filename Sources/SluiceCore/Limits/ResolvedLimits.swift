/// One continuous-refill bucket as configured: its rate and its capacity.
public struct BucketLimit: Sendable, Hashable {
    /// Units refilled per minute; also the `x-ratelimit-limit-*` value.
    public let perMinute: Int
    /// Capacity: the largest single cost that can ever pass.
    public let burst: Int

    public init(perMinute: Int, burst: Int? = nil) {
        self.perMinute = perMinute
        self.burst = burst ?? perMinute
    }
}

/// A key's effective limits: its tier merged with its own `limits`, field by field, with bursts
/// defaulted to the per-minute values. `nil` means unlimited.
public struct ResolvedLimits: Sendable, Hashable {
    /// RPM; each request costs 1.
    public var requests: BucketLimit?
    /// TPM; a request costs prompt + reserved output tokens.
    public var tokens: BucketLimit?
    /// ITPM; a request costs its prompt tokens.
    public var inputTokens: BucketLimit?
    /// OTPM; a request costs its reserved output tokens.
    public var outputTokens: BucketLimit?
    /// Requests in flight at once.
    public var maxConcurrentRequests: Int?
    /// Quotas (enforced by the Redis limiter).
    public var tokensPerDay: Int?
    public var tokensPerMonth: Int?
    /// Budgets in nano-dollars (`usd_per_day`, `usd_per_month`; UTC calendar periods), enforced by
    /// the embedded limiter.
    public var usdPerDay: Int64?
    public var usdPerMonth: Int64?
    /// Whether the Redis limiter may lease this key's buckets (``LeaseMode``).
    public var lease: LeaseMode

    /// No limit at all.
    public static let unlimited = ResolvedLimits()

    public init(
        requests: BucketLimit? = nil, tokens: BucketLimit? = nil,
        inputTokens: BucketLimit? = nil, outputTokens: BucketLimit? = nil,
        maxConcurrentRequests: Int? = nil, tokensPerDay: Int? = nil, tokensPerMonth: Int? = nil,
        lease: LeaseMode = .auto
    ) {
        self.lease = lease
        self.requests = requests
        self.tokens = tokens
        self.inputTokens = inputTokens
        self.outputTokens = outputTokens
        self.maxConcurrentRequests = maxConcurrentRequests
        self.tokensPerDay = tokensPerDay
        self.tokensPerMonth = tokensPerMonth
    }

    /// The most prompt tokens a request reserving `reservedOutputTokens` could ever be admitted with:
    /// above it, a bucket's capacity is exceeded whatever the wait (`nil`: no bucket bounds the
    /// prompt). Quotas are left out: not every limiter enforces them.
    public func largestAdmissiblePrompt(reservedOutputTokens: Int) -> Int? {
        var largest: Int?
        if let tokens { largest = min(largest ?? .max, tokens.burst - reservedOutputTokens) }
        if let inputTokens { largest = min(largest ?? .max, inputTokens.burst) }
        return largest.map { max($0, 0) }
    }

    /// The effective limits of a tier (`nil`: none) overridden by a key's own `limits`.
    /// A burst without its rate (rejected by config validation) is ignored.
    public init(tier: LimitSet?, own: LimitSet?) {
        let merged = (tier ?? LimitSet()).overridden(by: own ?? LimitSet())
        self.init(
            requests: merged.requestsPerMinute.map { BucketLimit(perMinute: $0, burst: merged.requestsBurst) },
            tokens: merged.tokensPerMinute.map { BucketLimit(perMinute: $0, burst: merged.tokensBurst) },
            inputTokens: merged.inputTokensPerMinute.map { BucketLimit(perMinute: $0, burst: merged.inputTokensBurst) },
            outputTokens: merged.outputTokensPerMinute.map { BucketLimit(perMinute: $0, burst: merged.outputTokensBurst) },
            maxConcurrentRequests: merged.maxConcurrentRequests,
            tokensPerDay: merged.tokensPerDay,
            tokensPerMonth: merged.tokensPerMonth,
            lease: merged.lease ?? .auto
        )
        usdPerDay = merged.usdPerDay?.nanos
        usdPerMonth = merged.usdPerMonth?.nanos
    }

    /// Whether a budget (`usd_per_day`, `usd_per_month`) is configured: admission must reserve the
    /// request's maximum cost.
    public var hasBudget: Bool { usdPerDay != nil || usdPerMonth != nil }

    /// Whether no limit at all is configured (nothing to charge anywhere).
    public var isUnlimited: Bool {
        requests == nil && tokens == nil && inputTokens == nil && outputTokens == nil
            && maxConcurrentRequests == nil && tokensPerDay == nil && tokensPerMonth == nil && !hasBudget
    }

    /// Whether leasing can apply at all: per-minute buckets (slices of their timelines) and the
    /// concurrency limit (free slots parked on a node) can be leased; a quota slice would stay
    /// charged for its whole period if its node died, so keys with quotas are always exact.
    public var isLeasable: Bool {
        lease != .off && tokensPerDay == nil && tokensPerMonth == nil && !hasBudget
            && (requests != nil || tokens != nil || inputTokens != nil || outputTokens != nil || maxConcurrentRequests != nil)
    }

    /// The configured bucket of a per-minute kind (`nil` for unlimited and for the kinds that are
    /// not buckets: concurrency and the quotas).
    public func bucket(_ kind: RateLimitKind) -> BucketLimit? {
        switch kind {
        case .requests: requests
        case .tokens: tokens
        case .inputTokens: inputTokens
        case .outputTokens: outputTokens
        case .concurrency, .dailyTokens, .monthlyTokens, .dailyBudget, .monthlyBudget: nil
        }
    }
}
