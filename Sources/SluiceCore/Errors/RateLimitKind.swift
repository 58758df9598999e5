/// One dimension a rate limit can be measured in.
///
/// Shared by the limiter (which buckets to check), the rate-limit headers and the 429 bodies
/// (`GatewayError.rateLimited(limit:…)`), so the wording matches OpenAI's everywhere.
public enum RateLimitKind: String, Sendable, Hashable, CaseIterable {
    /// Requests per minute (RPM).
    case requests
    /// Total tokens (input + output) per minute (TPM).
    case tokens
    /// Input (prompt) tokens per minute (ITPM).
    case inputTokens
    /// Output (completion) tokens per minute (OTPM).
    case outputTokens
    /// Requests in flight at the same time.
    case concurrency
    /// Tokens per day (TPD).
    case dailyTokens
    /// Tokens per calendar month.
    case monthlyTokens
    /// USD per UTC day (`usd_per_day`), in nano-dollars.
    case dailyBudget
    /// USD per UTC calendar month (`usd_per_month`), in nano-dollars.
    case monthlyBudget

    /// The phrase OpenAI uses in 429 messages after "on", e.g. "tokens per min (TPM)".
    public var openAILabel: String {
        switch self {
        case .requests: "requests per min (RPM)"
        case .tokens: "tokens per min (TPM)"
        case .inputTokens: "input tokens per min (ITPM)"
        case .outputTokens: "output tokens per min (OTPM)"
        case .concurrency: "concurrent requests"
        case .dailyTokens: "tokens per day (TPD)"
        case .monthlyTokens: "tokens per month"
        case .dailyBudget: "USD per day"
        case .monthlyBudget: "USD per month"
        }
    }

    /// The `type` field of the OpenAI 429 error object, e.g. `tokens` or `requests`.
    public var errorType: String {
        switch self {
        case .requests: "requests"
        case .tokens, .dailyTokens, .monthlyTokens: "tokens"
        case .inputTokens: "input_tokens"
        case .outputTokens: "output_tokens"
        case .concurrency: "requests"
        case .dailyBudget, .monthlyBudget: "usd"
        }
    }

    /// Whether the kind counts money (nano-dollars), not tokens or requests.
    public var isBudget: Bool { self == .dailyBudget || self == .monthlyBudget }
}

// MARK: - The limiter's vocabulary, shared by both stores and the Lua scripts

extension RateLimitKind {
    /// The per-minute buckets a key may have, in the order both stores check them (and the Redis
    /// scripts take their keys and arguments).
    public static let buckets: [RateLimitKind] = [.requests, .tokens, .inputTokens, .outputTokens]

    /// The number a limiter script reports this kind with (`admit.lua`'s denial kinds).
    public var code: Int {
        switch self {
        case .requests: 1
        case .tokens: 2
        case .inputTokens: 3
        case .outputTokens: 4
        case .concurrency: 5
        case .dailyTokens: 6
        case .monthlyTokens: 7
        case .dailyBudget: 8
        case .monthlyBudget: 9
        }
    }

    /// The kind a limiter script reported as `code`; nil for a code no kind has.
    public init?(code: Int) {
        guard let kind = Self.allCases.first(where: { $0.code == code }) else { return nil }
        self = kind
    }
}
