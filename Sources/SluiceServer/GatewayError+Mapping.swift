import SluiceCore
import SluiceUpstream

/// Translations of the engines' and the limiter's outcomes into the one client-facing error type.
/// They live here because only the server knows both sides.
extension GatewayError {
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
