import SluiceCore
import SluiceTokenizer
import SluiceUpstream

/// The immutable view of the configuration that requests read: the key table, the model → upstream
/// routing, tokenizer overrides. Built once from a validated `SluiceConfig`.
public struct GatewaySettings: Sendable {
    let keys: KeyTable
    let upstreams: [UpstreamRoute]
    let maxPromptBytes: Int

    public init(config: SluiceConfig) {
        keys = KeyTable(config: config)
        upstreams = config.upstreams.map(UpstreamRoute.init)
        maxPromptBytes = config.tokenizer.maxPromptBytes ?? ChatPromptCounter.defaultMaxPromptBytes
    }

    /// The first upstream (in config order) that serves `model`.
    func upstream(forModel model: String) -> UpstreamRoute? {
        upstreams.first { $0.config.serves(model: model) }
    }

    /// Models listed by `GET /v1/models` for a key: the exact model names upstreams serve that the
    /// key may use (prefix rules cannot be enumerated).
    func listedModels(for key: APIKey) -> [String] {
        var seen = Set<String>()
        var models: [String] = []
        for upstream in upstreams {
            for case .exact(let name) in upstream.config.models where key.mayUse(model: name) && seen.insert(name).inserted {
                models.append(name)
            }
        }
        return models
    }
}

/// An upstream as the relay uses it: where to send each endpoint, with which key and timeouts.
struct UpstreamRoute: Sendable {
    let config: UpstreamConfig
    private let base: String

    init(config: UpstreamConfig) {
        self.config = config
        var base = config.baseURL
        while base.hasSuffix("/") { base.removeLast() }
        self.base = base
    }

    var name: String { config.name }
    var apiKey: Secret? { config.apiKey }

    func url(for endpoint: OpenAIEndpoint) -> String {
        switch endpoint {
        case .chatCompletions: return base + "/chat/completions"
        case .completions: return base + "/completions"
        case .embeddings: return base + "/embeddings"
        }
    }

    var timeouts: UpstreamTimeouts {
        UpstreamTimeouts(
            connectMs: config.connectTimeoutMs, firstByteMs: config.firstByteTimeoutMs,
            stallMs: config.stallTimeoutMs, totalMs: config.requestTimeoutMs
        )
    }

    /// Streams have no total deadline: a long answer is fine as long as it keeps moving.
    var streamTimeouts: UpstreamTimeouts {
        var timeouts = self.timeouts
        timeouts.totalMs = nil
        return timeouts
    }
}
