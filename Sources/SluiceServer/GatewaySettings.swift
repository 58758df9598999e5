import SluiceCore
import SluiceTokenizer
import SluiceUpstream

/// The immutable view of the configuration that requests read: the key table, the model → upstream
/// routing, tokenizer overrides. Built once from a validated `SluiceConfig`.
public struct GatewaySettings: Sendable {
    let keys: KeyTable
    let upstreams: [UpstreamRoute]
    let maxPromptBytes: Int
    let routing: RoutingConfig
    /// Model prices and plans (`Pricing.none`: costs are not reported).
    let pricing: Pricing

    public init(config: SluiceConfig) {
        pricing = config.pricing
        keys = KeyTable(config: config)
        upstreams = config.upstreams.map(UpstreamRoute.init)
        maxPromptBytes = config.tokenizer.maxPromptBytes ?? ChatPromptCounter.defaultMaxPromptBytes
        routing = config.routing
    }

    /// The first upstream (in config order) that serves `model` (it names the model's metrics label).
    func upstream(forModel model: String) -> UpstreamRoute? {
        upstreams.first { $0.config.serves(model: model) }
    }

    /// Every upstream that serves `model`, in config order: the model's deployments.
    func deployments(forModel model: String) -> [UpstreamRoute] {
        upstreams.filter { $0.config.serves(model: model) }
    }

    /// Where `key`'s request for `model` may go: the model's deployments, if the key may use it and
    /// some upstream serves it (the authorize step, and what `GET /v1/models/{id}` answers).
    func route(model: String, for key: APIKey) -> [UpstreamRoute]? {
        guard key.mayUse(model: model) else { return nil }
        let deployments = deployments(forModel: model)
        return deployments.isEmpty ? nil : deployments
    }

    /// The `model` label of a request's metrics: the entry of the config that routed it (see
    /// ``UpstreamRoute/metricLabel(forModel:)``), or ``UpstreamRoute/otherModelsLabel`` when no
    /// upstream serves the name (any more: the config may have been reloaded meanwhile).
    func metricLabel(forModel model: String) -> String {
        upstream(forModel: model)?.metricLabel(forModel: model) ?? UpstreamRoute.otherModelsLabel
    }

    /// Where `key`'s requests about stored responses (`GET`/`DELETE /v1/responses/{id}`) may go: the
    /// upstreams serving a model the key may use, in config order. Which one stored a response is
    /// not tracked (it may have been another node's choice): they are asked in turn.
    func responsesUpstreams(for key: APIKey) -> [UpstreamRoute] {
        upstreams.filter { upstream in
            guard let allowed = key.allowedModels else { return true }
            return allowed.contains { matcher in
                if case .exact(let name) = matcher, upstream.config.serves(model: name) { return true }
                return upstream.config.models.contains { served in
                    if case .exact(let name) = served { return matcher.matches(name) }
                    return false
                }
            }
        }
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
///
/// A class, made once per settings generation: a request's walk hands its deployment from step to
/// step and across suspension points, and a struct holding the whole `UpstreamConfig` was copied
/// (with a retain per field) at each of them — measurably, in the per-request profile (issue 19).
final class UpstreamRoute: Sendable {
    let config: UpstreamConfig
    private let base: String
    /// `http_version` in the engine's terms.
    let httpVersion: UpstreamHTTPVersion

    /// `?name=value&…` of `query_params`, percent-encoded; empty without any.
    private let query: String
    /// `url(for:)` of every endpoint, made once.
    private let endpointURLs: [OpenAIEndpoint: String]
    /// The header carrying the upstream key, as the provider wants it (`Authorization: Bearer`, or
    /// the key alone in e.g. Azure's `api-key`); nil without a key. Made once.
    let credentialHeader: (name: String, value: String)?
    let timeouts: UpstreamTimeouts
    /// Streams have no total deadline: a long answer is fine as long as it keeps moving.
    let streamTimeouts: UpstreamTimeouts

    init(config: UpstreamConfig) {
        self.config = config
        var base = config.baseURL
        while base.hasSuffix("/") { base.removeLast() }
        self.base = base
        limits = config.limits.map { ResolvedLimits(tier: nil, own: $0) }
        query = config.queryParameters.isEmpty ? "" : "?" + config.queryParameters.map { Self.percentEncoded($0.name) + "=" + Self.percentEncoded($0.value) }.joined(separator: "&")
        switch config.httpVersion {
        case .auto: httpVersion = .auto
        case .http1_1: httpVersion = .http1_1
        case .http2: httpVersion = .http2
        case .h2c: httpVersion = .h2c
        }
        let query = self.query
        endpointURLs = Dictionary(uniqueKeysWithValues: OpenAIEndpoint.allCases.map { ($0, base + $0.pathBelowVersion + query) })
        if let apiKey = config.apiKey {
            credentialHeader = config.apiKeyHeader == UpstreamConfig.defaultAPIKeyHeader
                ? ("authorization", "Bearer \(apiKey.revealed)") : (config.apiKeyHeader, apiKey.revealed)
        } else {
            credentialHeader = nil
        }
        timeouts = UpstreamTimeouts(
            connectMs: config.connectTimeoutMs, firstByteMs: config.firstByteTimeoutMs,
            stallMs: config.stallTimeoutMs, totalMs: config.requestTimeoutMs
        )
        var streamTimeouts = timeouts
        streamTimeouts.totalMs = nil
        self.streamTimeouts = streamTimeouts
    }

    /// `tls.ca_file`: the CAs the upstream's certificate must chain to (nil: the system's).
    var caFile: String? { config.tls?.caFile }

    var name: String { config.name }
    var apiKey: Secret? { config.apiKey }
    var weight: Int { config.weight }
    /// The deployment's own limits, resolved once; nil without `upstreams[].limits`.
    let limits: ResolvedLimits?

    /// RFC 3986 unreserved characters stay, every other byte is %-encoded.
    static func percentEncoded(_ text: String) -> String {
        var encoded = ""
        for byte in text.utf8 {
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "-"), UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: "~"):
                encoded.unicodeScalars.append(Unicode.Scalar(byte))
            default:
                encoded += "%" + String(byte, radix: 16, uppercase: true).leftPadded(to: 2)
            }
        }
        return encoded
    }

    /// The label of models no configured entry accounts for.
    static let otherModelsLabel = "other"

    /// The `model` label for a request this upstream serves: the name itself when it is listed
    /// exactly, else the prefix pattern that matched it (`gpt-4o*`).
    ///
    /// Why not the name the client sent: under a prefix any name a client invents is served, and
    /// every distinct label value is a series kept in memory for the life of the process and
    /// exported on every scrape. Labels taken from the config are as many as its entries.
    func metricLabel(forModel model: String) -> String {
        var matchedPattern: ModelMatcher?
        for matcher in config.models {
            switch matcher {
            case .exact(let name) where name == model:
                return name
            case .prefix where matchedPattern == nil && matcher.matches(model):
                matchedPattern = matcher
            default:
                continue
            }
        }
        return matchedPattern?.description ?? Self.otherModelsLabel
    }

    func url(for endpoint: OpenAIEndpoint) -> String {
        endpointURLs[endpoint] ?? base + endpoint.pathBelowVersion + query
    }

    /// The URL of a path below the API version (`/responses/resp_1`), its own query string
    /// included (the deployment's `query_params` are added to it).
    func url(pathBelowVersion: String) -> String {
        guard !query.isEmpty else { return base + pathBelowVersion }
        return base + pathBelowVersion + (pathBelowVersion.contains("?") ? "&" + query.dropFirst() : query)
    }
}

private extension String {
    func leftPadded(to width: Int) -> String {
        count >= width ? self : String(repeating: "0", count: width - count) + self
    }
}
