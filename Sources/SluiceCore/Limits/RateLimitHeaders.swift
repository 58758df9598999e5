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
        appendBudget(snapshot.budget, keyBudgetNames, to: &headers)
        appendBudget(snapshot.teamBudget, teamBudgetNames, to: &headers)
        return headers
    }

    /// `x-ratelimit-{limit,remaining,reset}-<infix>-day`, then the same for `-month`: the key's
    /// budgets under "usd", its team's under "team-usd". The names are made once, not per response.
    private static func appendBudget(_ budget: BudgetState?, _ names: BudgetHeaderNames, to headers: inout [(String, String)]) {
        guard let budget else { return }
        func append(_ period: BudgetState.Period?, _ names: BudgetHeaderNames.Period) {
            guard let period else { return }
            headers.append((names.limit, period.limit.description))
            headers.append((names.remaining, period.remaining.description))
            headers.append((names.reset, GoDuration.string(seconds: period.resetSeconds)))
        }
        append(budget.day, names.day)
        append(budget.month, names.month)
    }

    private struct BudgetHeaderNames {
        struct Period {
            let limit, remaining, reset: String
            init(_ infix: String, _ period: String) {
                limit = "x-ratelimit-limit-\(infix)-\(period)"
                remaining = "x-ratelimit-remaining-\(infix)-\(period)"
                reset = "x-ratelimit-reset-\(infix)-\(period)"
            }
        }
        let day, month: Period
        init(_ infix: String) {
            day = Period(infix, "day")
            month = Period(infix, "month")
        }
    }

    private static let keyBudgetNames = BudgetHeaderNames("usd")
    private static let teamBudgetNames = BudgetHeaderNames("team-usd")
}
