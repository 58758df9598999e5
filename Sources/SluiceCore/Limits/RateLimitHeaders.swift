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
        appendBudget(snapshot.budget, infix: "usd", to: &headers)
        appendBudget(snapshot.teamBudget, infix: "team-usd", to: &headers)
        return headers
    }

    /// `x-ratelimit-{limit,remaining,reset}-<infix>-day`, then the same for `-month`: the key's
    /// budgets under "usd", its team's under "team-usd".
    private static func appendBudget(_ budget: BudgetState?, infix: String, to headers: inout [(String, String)]) {
        guard let budget else { return }
        for (suffix, period) in [("day", budget.day), ("month", budget.month)] {
            guard let period else { continue }
            headers.append(("x-ratelimit-limit-\(infix)-\(suffix)", period.limit.description))
            headers.append(("x-ratelimit-remaining-\(infix)-\(suffix)", period.remaining.description))
            headers.append(("x-ratelimit-reset-\(infix)-\(suffix)", GoDuration.string(seconds: period.resetSeconds)))
        }
    }
}
