/// The OpenAI `x-ratelimit-*` response headers of a key.
public enum RateLimitHeaders {
    /// Header name/value pairs for the limits that are configured, in this order:
    /// `x-ratelimit-limit-requests`, `x-ratelimit-limit-tokens`, `x-ratelimit-remaining-requests`,
    /// `x-ratelimit-remaining-tokens`, `x-ratelimit-reset-requests`, `x-ratelimit-reset-tokens`.
    public static func render(_ snapshot: RateLimitSnapshot) -> [(String, String)] {
        var headers: [(String, String)] = []
        headers.reserveCapacity(6)
        if let limit = snapshot.limitRequests { headers.append(("x-ratelimit-limit-requests", String(limit))) }
        if let limit = snapshot.limitTokens { headers.append(("x-ratelimit-limit-tokens", String(limit))) }
        if let remaining = snapshot.remainingRequests { headers.append(("x-ratelimit-remaining-requests", String(remaining))) }
        if let remaining = snapshot.remainingTokens { headers.append(("x-ratelimit-remaining-tokens", String(remaining))) }
        if let reset = snapshot.resetRequestsSeconds { headers.append(("x-ratelimit-reset-requests", GoDuration.string(seconds: reset))) }
        if let reset = snapshot.resetTokensSeconds { headers.append(("x-ratelimit-reset-tokens", GoDuration.string(seconds: reset))) }
        return headers
    }
}
