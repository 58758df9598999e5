/// The OpenAI `x-ratelimit-*` response headers of a key.
public enum RateLimitHeaders {
    /// Header name/value pairs for the limits that are configured, in this order:
    /// `x-ratelimit-limit-requests`, `x-ratelimit-limit-tokens`, `x-ratelimit-remaining-requests`,
    /// `x-ratelimit-remaining-tokens`, `x-ratelimit-reset-requests`, `x-ratelimit-reset-tokens`; then
    /// for budgets `x-ratelimit-{limit,remaining,reset}-usd-day` and `…-usd-month`, and for the budgets
    /// of the key's team `x-ratelimit-{limit,remaining,reset}-team-usd-day` and `…-team-usd-month`.
    public static func render(_ snapshot: RateLimitSnapshot) -> [(String, String)] {
        var headers: [(String, String)] = []
        headers.reserveCapacity(6)
        if let limit = snapshot.limitRequests { headers.append(("x-ratelimit-limit-requests", String(limit))) }
        if let limit = snapshot.limitTokens { headers.append(("x-ratelimit-limit-tokens", String(limit))) }
        if let remaining = snapshot.remainingRequests { headers.append(("x-ratelimit-remaining-requests", String(remaining))) }
        if let remaining = snapshot.remainingTokens { headers.append(("x-ratelimit-remaining-tokens", String(remaining))) }
        if let reset = snapshot.resetRequestsSeconds { headers.append(("x-ratelimit-reset-requests", GoDuration.string(seconds: reset))) }
        if let reset = snapshot.resetTokensSeconds { headers.append(("x-ratelimit-reset-tokens", GoDuration.string(seconds: reset))) }
        // Budgets, in the same style: USD as exact decimals, the reset at the period's end (UTC).
        if let limit = snapshot.limitUSDDay { headers.append(("x-ratelimit-limit-usd-day", limit.description)) }
        if let remaining = snapshot.remainingUSDDay { headers.append(("x-ratelimit-remaining-usd-day", remaining.description)) }
        if let reset = snapshot.resetUSDDaySeconds { headers.append(("x-ratelimit-reset-usd-day", GoDuration.string(seconds: reset))) }
        if let limit = snapshot.limitUSDMonth { headers.append(("x-ratelimit-limit-usd-month", limit.description)) }
        if let remaining = snapshot.remainingUSDMonth { headers.append(("x-ratelimit-remaining-usd-month", remaining.description)) }
        if let reset = snapshot.resetUSDMonthSeconds { headers.append(("x-ratelimit-reset-usd-month", GoDuration.string(seconds: reset))) }
        if let team = snapshot.teamBudget {
            if let limit = team.limitUSDDay { headers.append(("x-ratelimit-limit-team-usd-day", limit.description)) }
            if let remaining = team.remainingUSDDay { headers.append(("x-ratelimit-remaining-team-usd-day", remaining.description)) }
            if let reset = team.resetUSDDaySeconds { headers.append(("x-ratelimit-reset-team-usd-day", GoDuration.string(seconds: reset))) }
            if let limit = team.limitUSDMonth { headers.append(("x-ratelimit-limit-team-usd-month", limit.description)) }
            if let remaining = team.remainingUSDMonth { headers.append(("x-ratelimit-remaining-team-usd-month", remaining.description)) }
            if let reset = team.resetUSDMonthSeconds { headers.append(("x-ratelimit-reset-team-usd-month", GoDuration.string(seconds: reset))) }
        }
        return headers
    }
}
