import SluiceCore
import SluiceUpstream

/// Translations of the engines' and the limiter's outcomes into the one client-facing error type.
/// They live here because only the server knows both sides.
extension GatewayError {
    /// The 429 for a denied admission, worded like OpenAI's for that limit.
    init(denial: RateLimitDenial, model: String) {
        switch denial.kind {
        case .concurrency:
            self = .concurrencyLimited(model: model, limitValue: denial.limit, retryAfterSeconds: denial.retryAfterSeconds)
        case .dailyTokens, .monthlyTokens:
            self = .quotaExceeded(limit: denial.kind, limitValue: denial.limit, used: denial.used, renewsInSeconds: denial.retryAfterSeconds)
        case _ where denial.neverFits:
            self = .requestTooLarge(limit: denial.kind, model: model, limitValue: denial.limit, requested: denial.requested)
        default:
            self = .rateLimited(
                limit: denial.kind, model: model, limitValue: denial.limit, used: denial.used,
                requested: denial.requested, retryAfterSeconds: denial.retryAfterSeconds
            )
        }
    }

    /// 502/504 for a transfer that failed before its response head arrived.
    init(upstream error: UpstreamError, upstreamName: String) {
        let detail = "upstream \(upstreamName): \(error.kind): \(error.detail)"
        switch error.kind {
        case .connectFailed:
            self = .upstreamConnectFailed(logDetail: detail)
        case .connectTimeout, .firstByteTimeout, .stallTimeout, .totalTimeout:
            self = .upstreamTimeout(logDetail: detail)
        case .connectionDropped, .other:
            self = .upstreamProtocolError(logDetail: detail)
        case .shuttingDown, .cancelled:
            self = .serviceUnavailable(logDetail: detail)
        case .tooManyTransfers:
            self = .upstreamUnavailable(status: 503, logDetail: detail)
        }
    }
}
