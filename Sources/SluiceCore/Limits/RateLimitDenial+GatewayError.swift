extension RateLimitDenial {
    /// The 429 to send for this denial of a request for `model`: "Request too large" (no retry)
    /// when it can never fit — quoting the bucket's capacity, which is what it exceeds —,
    /// `insufficient_quota` for the daily and monthly quotas, the concurrency wording for
    /// in-flight limits, and OpenAI's "Rate limit reached … Please try again in …" otherwise; a
    /// team's limit is named as the team's ("… on tokens per min (TPM) of team <name>: …").
    public func gatewayError(model: String) -> GatewayError {
        if kind.isBudget {
            return .budgetExceeded(
                limit: kind, limitValue: USDAmount(nanos: Int64(limit)), used: USDAmount(nanos: Int64(used)),
                requested: USDAmount(nanos: Int64(requested)), renewsInSeconds: neverFits || retryAfterSeconds <= 0 ? nil : retryAfterSeconds, team: team
            )
        }
        if neverFits {
            return .requestTooLarge(limit: kind, model: model, limitValue: burst, requested: requested, team: team)
        }
        switch kind {
        case .concurrency:
            return .concurrencyLimited(model: model, limitValue: limit, retryAfterSeconds: retryAfterSeconds, team: team)
        case .dailyTokens, .monthlyTokens, .dailyBudget, .monthlyBudget:
            return .quotaExceeded(limit: kind, limitValue: limit, used: used, renewsInSeconds: retryAfterSeconds > 0 ? retryAfterSeconds : nil, team: team)
        case .requests, .tokens, .inputTokens, .outputTokens:
            return .rateLimited(limit: kind, model: model, limitValue: limit, used: used, requested: requested, retryAfterSeconds: retryAfterSeconds, team: team)
        }
    }
}
