/// The whole configuration of a Sluice node: one JSON file (see `Config/sluice.schema.json` and
/// `SluiceConfig+Parsing.swift` for the exact format), validated completely at load.
///
/// An immutable value: a hot reload builds a new one and swaps it in only if it validates.
public struct SluiceConfig: Sendable {
    public var server: ServerConfig
    public var tokenizer: TokenizerConfig
    /// In file order; every upstream that serves a model is one of its deployments (requests are
    /// spread over them by weight).
    public var upstreams: [UpstreamConfig]
    /// Named limit sets that keys refer to with `"tier"`.
    public var tiers: [String: LimitSet]
    /// In file order; ids and secret hashes are unique.
    public var keys: [KeyConfig]
    /// `nil`: the embedded in-memory limiter (single node).
    public var redis: RedisConfig?
    /// Traces (OpenTelemetry); off unless `telemetry.otlp_endpoint` is set.
    public var telemetry: TelemetryConfig
    /// Retries and fallbacks over the upstreams.
    public var routing = RoutingConfig()
    /// How log lines are written.
    public var log = LogConfig()
    /// Model prices and subscription plans (`Pricing.none`: no section; every cost unknown).
    public var pricing = Pricing.none
    /// Named limit sets shared by all the keys that name them with `"team"` (any limit field,
    /// budgets included): a request must pass its key's limits and its team's.
    public var teams: [String: LimitSet] = [:]

    public init(
        server: ServerConfig = ServerConfig(),
        tokenizer: TokenizerConfig = TokenizerConfig(),
        upstreams: [UpstreamConfig],
        tiers: [String: LimitSet] = [:],
        keys: [KeyConfig],
        redis: RedisConfig? = nil,
        telemetry: TelemetryConfig = TelemetryConfig()
    ) {
        self.server = server
        self.tokenizer = tokenizer
        self.upstreams = upstreams
        self.tiers = tiers
        self.keys = keys
        self.redis = redis
        self.telemetry = telemetry
    }

    /// The first upstream (in file order) that serves `model`, or `nil` if none does.
    public func upstream(serving model: String) -> UpstreamConfig? {
        upstreams.first { $0.serves(model: model) }
    }
}

// MARK: - log

/// The `log` section: how each log line is written (read at start; a change needs a restart).
public struct LogConfig: Sendable, Equatable {
    public enum Format: String, Sendable, CaseIterable {
        /// `<time> <level> <label>: <key=value …> [<source>] <message>` (swift-log's stream format).
        case text
        /// One JSON object per line: `time`, `level`, `logger`, `source`, `message`, then the
        /// metadata's fields.
        case json
    }

    public var format: Format = .text

    public init(format: Format = .text) {
        self.format = format
    }
}

// MARK: - server

/// The HTTP listener: address, size bounds and timeouts.
public struct ServerConfig: Sendable, Equatable {
    public static let defaultHost = "127.0.0.1"
    public static let defaultPort = 8080
    /// 32 MiB; a larger body is answered with 413.
    public static let defaultMaxBodyBytes = 32 * 1024 * 1024
    public static let defaultMaxHeaderBytes = 64 * 1024
    /// The whole request head must arrive within this time.
    public static let defaultHeaderTimeoutMs = 10_000
    /// The body must complete within this time (cuts stalled half bodies).
    public static let defaultBodyTimeoutMs = 30_000
    /// A keep-alive connection idle this long is closed.
    public static let defaultIdleTimeoutMs = 75_000
    public static let defaultShutdownGraceSeconds = 30
    /// 0 means one event loop per core.
    public static let defaultEventLoopThreads = 0
    /// 0 means half the cores, rounded up (see `CurlEngine.Configuration.defaultThreads`).
    public static let defaultUpstreamThreads = 0
    /// Reload when the config file's content changes (checked every second), besides on SIGHUP.
    public static let defaultWatchConfig = true
    /// The admin listener (`/metrics`, `/healthz`, `/readyz`): loopback unless configured otherwise.
    public static let defaultAdminHost = "127.0.0.1"
    /// 9464, the port registered for Prometheus exporters of OpenTelemetry; 0 means no admin listener.
    public static let defaultAdminPort = 9464

    public var host: String = ServerConfig.defaultHost
    public var port: Int = ServerConfig.defaultPort
    public var maxBodyBytes: Int = ServerConfig.defaultMaxBodyBytes
    public var maxHeaderBytes: Int = ServerConfig.defaultMaxHeaderBytes
    public var headerTimeoutMs: Int = ServerConfig.defaultHeaderTimeoutMs
    public var bodyTimeoutMs: Int = ServerConfig.defaultBodyTimeoutMs
    public var idleTimeoutMs: Int = ServerConfig.defaultIdleTimeoutMs
    public var shutdownGraceSeconds: Int = ServerConfig.defaultShutdownGraceSeconds
    /// 0 means one event loop per core.
    public var eventLoopThreads: Int = ServerConfig.defaultEventLoopThreads
    /// Curl engine threads, which own the upstream connections; 0 means half the cores, rounded up.
    public var upstreamThreads: Int = ServerConfig.defaultUpstreamThreads
    /// Reload when the config file's content changes; read at start (a change needs a restart).
    public var watchConfig: Bool = ServerConfig.defaultWatchConfig
    /// Where the admin listener binds: the only place `/metrics` is served.
    public var adminHost: String = ServerConfig.defaultAdminHost
    /// The admin listener's port; 0: none (no `/metrics` at all).
    public var adminPort: Int = ServerConfig.defaultAdminPort

    public init() {}
}

// MARK: - tokenizer

/// Where the tokenizer's rank files are and which encoding a model uses.
public struct TokenizerConfig: Sendable, Equatable {
    public static let defaultDirectory = ".cache/tokenizer"
    /// The environment variable that, when set and non-empty, replaces `directory`.
    public static let directoryEnvironmentVariable = "SLUICE_TOKENIZER_DIR"
    /// The encoding names a `model_encodings` entry may use.
    public static let knownEncodings = ["cl100k_base", "o200k_base"]

    /// The rank-file directory, relative to the working directory unless absolute.
    public var directory: String = TokenizerConfig.defaultDirectory
    /// Overrides of the built-in model → encoding map (model name → encoding name).
    public var modelEncodings: [String: String] = [:]
    /// Prompts longer than this many bytes are refused before tokenizing; `nil`: no cap beyond
    /// the body limit.
    public var maxPromptBytes: Int?

    public init() {}
}

// MARK: - upstreams

/// Which model names an upstream (or a key) accepts: an exact name, or a prefix written with a
/// trailing `*` in the file (`"gpt-4.1*"`; a lone `"*"` matches every model).
public enum ModelMatcher: Sendable, Hashable, CustomStringConvertible {
    case exact(String)
    case prefix(String)

    /// Parses the file form; `nil` if `*` appears anywhere but at the end, or the name is empty.
    public init?(pattern: String) {
        guard !pattern.isEmpty else { return nil }
        if pattern.hasSuffix("*") {
            let stem = String(pattern.dropLast())
            guard !stem.contains("*") else { return nil }
            self = .prefix(stem)
        } else {
            guard !pattern.contains("*") else { return nil }
            self = .exact(pattern)
        }
    }

    /// Whether `model` is accepted by this matcher (case-sensitive, like OpenAI's model ids).
    public func matches(_ model: String) -> Bool {
        switch self {
        case .exact(let name): model == name
        case .prefix(let stem): model.hasPrefix(stem)
        }
    }

    /// The file form (`gpt-4o`, `gpt-4.1*`).
    public var description: String {
        switch self {
        case .exact(let name): name
        case .prefix(let stem): stem + "*"
        }
    }
}

/// One OpenAI-compatible upstream API and the models it serves.
public struct UpstreamConfig: Sendable, Equatable {
    /// `http_version`: which HTTP versions the exchanges with the upstream may use.
    public enum HTTPVersion: String, Sendable, Hashable, CaseIterable {
        /// HTTP/2 over TLS when the server offers it by ALPN, else HTTP/1.1; HTTP/1.1 over cleartext.
        case auto
        /// HTTP/1.1 only.
        case http1_1 = "1.1"
        /// HTTP/2 over TLS, required: a server that does not choose h2 by ALPN fails the exchange
        /// before the request is sent. `https://` only.
        case http2 = "2"
        /// Cleartext HTTP/2 by prior knowledge (no upgrade). `http://` only.
        case h2c
    }

    public static let defaultConnectTimeoutMs = 2_000
    public static let defaultFirstByteTimeoutMs = 60_000
    public static let defaultStallTimeoutMs = 30_000
    /// Total time of a non-streaming request.
    public static let defaultRequestTimeoutMs = 600_000
    /// Connections kept per upstream host.
    /// Per upstream and node (shared by all engine threads): over HTTP/1.1 one connection carries one
    /// exchange, and a streamed completion holds it for seconds to minutes, so a node serving 100
    /// requests/s of 20-second streams needs ~2,000. Each costs a socket (an fd) and a few tens of KiB
    /// in the kernel and libcurl; the engine allows 10,000 transfers in flight per node.
    public static let defaultMaxConnections = 2048
    /// How long an exchange may wait for one of the `max_connections` before it gets 503 with
    /// `retry-after`.
    public static let defaultQueueTimeoutMs = 10_000
    public static let defaultHTTPVersion = HTTPVersion.auto

    /// Unique among upstreams; used in logs and metrics.
    public var name: String
    /// `http` or `https` URL without a trailing slash, e.g. `http://127.0.0.1:9000/v1`; the request
    /// path after `/v1` is appended to it.
    public var baseURL: String
    /// The environment variable the API key was read from, if any.
    public var apiKeyEnvironmentVariable: String?
    /// The upstream API key, sent as `Authorization: Bearer …`; `nil`: no authorization header.
    public var apiKey: Secret?
    /// Non-empty.
    public var models: [ModelMatcher]
    public var connectTimeoutMs: Int = UpstreamConfig.defaultConnectTimeoutMs
    public var firstByteTimeoutMs: Int = UpstreamConfig.defaultFirstByteTimeoutMs
    public var stallTimeoutMs: Int = UpstreamConfig.defaultStallTimeoutMs
    public var requestTimeoutMs: Int = UpstreamConfig.defaultRequestTimeoutMs
    /// Exchanges in flight to this upstream at once, per node: over HTTP/1.1 one connection each,
    /// over HTTP/2 one stream each (many share a connection).
    public var maxConnections: Int = UpstreamConfig.defaultMaxConnections
    public var queueTimeoutMs: Int = UpstreamConfig.defaultQueueTimeoutMs
    /// Share of a model's requests among the deployments that serve it (relative to theirs).
    public var weight: Int = 1
    /// Public model name → the name this deployment knows it by (e.g. an Azure deployment name),
    /// written into the forwarded body's `model`.
    public var modelMap: [String: String] = [:]
    /// The header that carries the upstream key: `authorization` (the default) sends
    /// `Authorization: Bearer <key>`; any other name (Azure's `api-key`) sends the key as it is.
    public var apiKeyHeader: String = UpstreamConfig.defaultAPIKeyHeader
    /// Fixed query parameters added to every request URL (e.g. Azure's `api-version`), sorted by name.
    public var queryParameters: [(name: String, value: String)] = []
    /// When this deployment's circuit opens, and for how long.
    public var circuitBreaker = CircuitBreaker.Configuration()
    /// The provider's own limits for this deployment (its key's tier), enforced for the whole fleet
    /// in the shared store; nil: none.
    public var limits: LimitSet?

    /// The limiter's name for this deployment's limits: not a valid key id (`~`), so no key can
    /// share its buckets.
    public var limiterKeyID: String { "upstream~" + name }

    public static let defaultAPIKeyHeader = "authorization"
    public static let maximumWeight = 1_000
    public var httpVersion: HTTPVersion = UpstreamConfig.defaultHTTPVersion
    /// `tls`: only for an `https://` base URL; nil: the system's trust roots.
    public var tls: UpstreamTLSConfig?

    public init(name: String, baseURL: String, apiKeyEnvironmentVariable: String? = nil, apiKey: Secret? = nil, models: [ModelMatcher]) {
        self.name = name
        self.baseURL = baseURL
        self.apiKeyEnvironmentVariable = apiKeyEnvironmentVariable
        self.apiKey = apiKey
        self.models = models
    }

    /// Whether this upstream accepts requests for `model`.
    public func serves(model: String) -> Bool {
        models.contains { $0.matches(model) }
    }

    /// Same URL, key and query: requests to either go to one place.
    public func isSameEndpoint(as other: UpstreamConfig) -> Bool {
        baseURL == other.baseURL && apiKeyEnvironmentVariable == other.apiKeyEnvironmentVariable
            && queryParameters.elementsEqual(other.queryParameters, by: ==)
    }

    /// The name this deployment knows `model` by (`model_map`, else the public name).
    public func upstreamModel(for model: String) -> String {
        modelMap[model] ?? model
    }

    public static func == (lhs: UpstreamConfig, rhs: UpstreamConfig) -> Bool {
        lhs.name == rhs.name && lhs.baseURL == rhs.baseURL && lhs.apiKeyEnvironmentVariable == rhs.apiKeyEnvironmentVariable
            && lhs.apiKey == rhs.apiKey && lhs.models == rhs.models && lhs.connectTimeoutMs == rhs.connectTimeoutMs
            && lhs.firstByteTimeoutMs == rhs.firstByteTimeoutMs && lhs.stallTimeoutMs == rhs.stallTimeoutMs
            && lhs.requestTimeoutMs == rhs.requestTimeoutMs && lhs.maxConnections == rhs.maxConnections
            && lhs.queueTimeoutMs == rhs.queueTimeoutMs && lhs.weight == rhs.weight && lhs.modelMap == rhs.modelMap
            && lhs.apiKeyHeader == rhs.apiKeyHeader && lhs.queryParameters.elementsEqual(rhs.queryParameters, by: ==)
            && lhs.circuitBreaker == rhs.circuitBreaker && lhs.limits == rhs.limits && lhs.httpVersion == rhs.httpVersion && lhs.tls == rhs.tls
    }
}

/// How a request travels over the deployments of its model: retries, their budget, and the other
/// models to fall back to (`routing` in the config).
public struct RoutingConfig: Sendable, Equatable {
    public static let defaultMaxAttempts = 3
    public static let defaultRetryBudgetMs = 30_000
    public static let defaultBackoffInitialMs = 250
    public static let defaultBackoffMaxMs = 4_000
    public static let defaultMaxRetryAfterMs = 10_000
    /// Fallback models per model, at most.
    public static let maximumFallbacks = 8

    /// Requests sent upstream per model at most (the first one included); 1: no retries.
    public var maxAttempts = RoutingConfig.defaultMaxAttempts
    /// No new attempt starts later than this after the first (the attempt in flight keeps its own timeouts).
    public var retryBudgetMs = RoutingConfig.defaultRetryBudgetMs
    /// Backoff before trying a deployment again: doubling from this, with jitter, up to `backoffMaxMs`.
    public var backoffInitialMs = RoutingConfig.defaultBackoffInitialMs
    public var backoffMaxMs = RoutingConfig.defaultBackoffMaxMs
    /// An upstream's `retry-after` is honoured up to this; a longer one is not waited for here.
    public var maxRetryAfterMs = RoutingConfig.defaultMaxRetryAfterMs
    /// Public model → other public models to try, in order, once every attempt at it failed.
    public var fallbacks: [String: [String]] = [:]
    /// Public model → other public models to try when the upstream says the prompt does not fit the
    /// model's context window (`context_length_exceeded`).
    public var contextWindowFallbacks: [String: [String]] = [:]

    public init() {}
}

/// How an `https://` upstream is trusted: the `upstreams[].tls` object.
public struct UpstreamTLSConfig: Sendable, Hashable {
    /// `ca_file`: PEM file of the CAs the upstream's certificate must chain to, instead of the
    /// system's trust roots (a private CA, a self-signed certificate); nil: the system's.
    public var caFile: String?

    public init(caFile: String? = nil) {
        self.caFile = caFile
    }
}

// MARK: - limits

/// A set of limits as written in a tier or a key's `limits`: every field optional.
///
/// In a tier, `nil` means unlimited. In a key's `limits`, `nil` (absent or `null`) means "as the
/// tier says"; a key cannot lift a tier's limit, only set its own value (use another tier for
/// that). See `ResolvedLimits` for the merged, effective form.
public struct LimitSet: Sendable, Hashable {
    /// The largest value any limit may have. Chosen so that the limiter's fixed-point math stays
    /// exact in the Redis Lua scripts, whose numbers are IEEE doubles (integers exact below
    /// 2^53 ≈ 9.007e15): the largest product the bucket math forms is value × 60 000 000 µs
    /// = 9.0e15 < 2^53. 150 M/min is OpenAI's highest published token rate.
    public static let maximumValue = 150_000_000
    /// The largest daily or monthly quota (also kept exact as a Lua double).
    public static let maximumQuota = 1 << 52
    /// The largest budget, in nano-dollars: kept exact as a Lua double too ($4,503,599.627370496).
    public static let maximumBudgetNanos = Int64(1) << 52

    public var requestsPerMinute: Int?
    public var tokensPerMinute: Int?
    public var inputTokensPerMinute: Int?
    public var outputTokensPerMinute: Int?
    public var maxConcurrentRequests: Int?
    /// Bucket capacities; `nil`: the per-minute value (OpenAI's behaviour). Lower it for a
    /// stricter window, raise it to allow bigger bursts.
    public var requestsBurst: Int?
    public var tokensBurst: Int?
    public var inputTokensBurst: Int?
    public var outputTokensBurst: Int?
    /// Quotas, enforced by the Redis limiter.
    public var tokensPerDay: Int?
    public var tokensPerMonth: Int?
    /// Budgets over UTC calendar periods (`usd_per_day`, `usd_per_month`), enforced by the embedded
    /// limiter.
    public var usdPerDay: USDAmount?
    public var usdPerMonth: USDAmount?
    /// Whether the Redis limiter may admit this key's requests against slices of its buckets held
    /// by the node (`nil`: as the tier says, else ``LeaseMode/auto``).
    public var lease: LeaseMode?

    public init(
        requestsPerMinute: Int? = nil, tokensPerMinute: Int? = nil,
        inputTokensPerMinute: Int? = nil, outputTokensPerMinute: Int? = nil,
        maxConcurrentRequests: Int? = nil,
        requestsBurst: Int? = nil, tokensBurst: Int? = nil,
        inputTokensBurst: Int? = nil, outputTokensBurst: Int? = nil,
        tokensPerDay: Int? = nil, tokensPerMonth: Int? = nil,
        lease: LeaseMode? = nil
    ) {
        self.lease = lease
        self.requestsPerMinute = requestsPerMinute
        self.tokensPerMinute = tokensPerMinute
        self.inputTokensPerMinute = inputTokensPerMinute
        self.outputTokensPerMinute = outputTokensPerMinute
        self.maxConcurrentRequests = maxConcurrentRequests
        self.requestsBurst = requestsBurst
        self.tokensBurst = tokensBurst
        self.inputTokensBurst = inputTokensBurst
        self.outputTokensBurst = outputTokensBurst
        self.tokensPerDay = tokensPerDay
        self.tokensPerMonth = tokensPerMonth
    }

    /// These limits with every field that `overrides` sets replaced by its value.
    public func overridden(by overrides: LimitSet) -> LimitSet {
        LimitSet(
            requestsPerMinute: overrides.requestsPerMinute ?? requestsPerMinute,
            tokensPerMinute: overrides.tokensPerMinute ?? tokensPerMinute,
            inputTokensPerMinute: overrides.inputTokensPerMinute ?? inputTokensPerMinute,
            outputTokensPerMinute: overrides.outputTokensPerMinute ?? outputTokensPerMinute,
            maxConcurrentRequests: overrides.maxConcurrentRequests ?? maxConcurrentRequests,
            requestsBurst: overrides.requestsBurst ?? requestsBurst,
            tokensBurst: overrides.tokensBurst ?? tokensBurst,
            inputTokensBurst: overrides.inputTokensBurst ?? inputTokensBurst,
            outputTokensBurst: overrides.outputTokensBurst ?? outputTokensBurst,
            tokensPerDay: overrides.tokensPerDay ?? tokensPerDay,
            tokensPerMonth: overrides.tokensPerMonth ?? tokensPerMonth,
            lease: overrides.lease ?? lease
        ).withBudgets(perDay: overrides.usdPerDay ?? usdPerDay, perMonth: overrides.usdPerMonth ?? usdPerMonth)
    }

    /// These limits with the budgets given.
    public func withBudgets(perDay: USDAmount?, perMonth: USDAmount?) -> LimitSet {
        var limits = self
        limits.usdPerDay = perDay
        limits.usdPerMonth = perMonth
        return limits
    }
}

/// How the Redis limiter admits a key's requests (`limits.lease`).
///
/// Exact mode costs one Redis call per admission (several admissions of one key from one node share
/// a call). Leased mode takes a slice of each per-minute bucket (and free concurrency slots) in one
/// call and admits locally against it: never beyond the slice, so what every node admits together
/// stays within the limits exactly as in exact mode; what it costs is capacity parked on a node that
/// does not use it. Keys with quotas are never leased.
public enum LeaseMode: String, Sendable, Hashable, CaseIterable {
    /// Leased while this node's rate for the key makes a round trip per request wasteful and the
    /// slices stay small next to the buckets; exact otherwise. The default.
    case auto
    /// Always exact.
    case off
    /// Leased whenever the key can be (for tests and benchmarks, or a key known to be hot).
    case always
}

// MARK: - keys

/// One client API key as configured: only the SHA-256 of its secret is in the file.
public struct KeyConfig: Sendable, Equatable {
    /// The output reservation of a request that sets no `max_tokens` / `max_completion_tokens`.
    public static let defaultDefaultOutputTokens = 1024
    /// Default `previous_response_allowance_tokens`: a few turns of a conversation.
    public static let defaultPreviousResponseAllowanceTokens = 4096
    /// What an id may look like: `[A-Za-z0-9_.-]{1,64}` (it becomes part of Redis key names).
    public static let maximumIDLength = 64

    public var id: String
    /// 64 lowercase hex characters.
    public var secretSHA256: String
    public var tier: String?
    /// The key's own limits, overriding the tier's field by field.
    public var limits: LimitSet?
    /// `nil`: every model an upstream serves.
    public var models: [ModelMatcher]?
    public var defaultOutputTokens: Int = KeyConfig.defaultDefaultOutputTokens
    /// `previous_response_allowance_tokens`: input tokens reserved, on top of what Sluice counts, for a
    /// Responses request that continues a stored conversation (`previous_response_id`), whose earlier
    /// turns the upstream adds unseen. Settled with the upstream's `input_tokens`.
    public var previousResponseAllowanceTokens: Int = KeyConfig.defaultPreviousResponseAllowanceTokens
    /// When every secret of the key stops authenticating; `nil`: never.
    public var expiresAt: UTCTimestamp?
    /// Secrets the key had before a rotation: each authenticates as this key until its own expiry
    /// (and the key's), so a client can switch to the new secret with no downtime.
    public var previousSecrets: [PreviousSecret] = []
    /// Export this key's remaining limits as `sluice_key_remaining{key,limit}` (opt-in: a series per
    /// key and limit is kept and exported for the life of the process).
    public var metrics: Bool = false
    /// The subscription plan (a `pricing.plans` name) the key's requests are priced under; `nil`: none.
    public var plan: String?
    /// The team (a `teams` name) whose limits the key shares with the team's other keys; `nil`: none.
    public var team: String?

    /// A secret replaced by a rotation, still valid for a while.
    public struct PreviousSecret: Sendable, Equatable {
        /// 64 lowercase hex characters.
        public var secretSHA256: String
        /// Required: an old secret must not stay valid by being forgotten.
        public var expiresAt: UTCTimestamp

        public init(secretSHA256: String, expiresAt: UTCTimestamp) {
            self.secretSHA256 = secretSHA256
            self.expiresAt = expiresAt
        }
    }

    public init(
        id: String, secretSHA256: String, tier: String? = nil, limits: LimitSet? = nil, models: [ModelMatcher]? = nil,
        defaultOutputTokens: Int = KeyConfig.defaultDefaultOutputTokens, expiresAt: UTCTimestamp? = nil, previousSecrets: [PreviousSecret] = [],
        metrics: Bool = false, previousResponseAllowanceTokens: Int = KeyConfig.defaultPreviousResponseAllowanceTokens
    ) {
        self.metrics = metrics
        self.previousResponseAllowanceTokens = previousResponseAllowanceTokens
        self.id = id
        self.secretSHA256 = secretSHA256
        self.tier = tier
        self.limits = limits
        self.models = models
        self.defaultOutputTokens = defaultOutputTokens
        self.expiresAt = expiresAt
        self.previousSecrets = previousSecrets
    }

    /// Whether `id` has the allowed form `[A-Za-z0-9_.-]{1,64}`.
    public static func isValidID(_ id: String) -> Bool {
        let bytes = Array(id.utf8)
        guard !bytes.isEmpty, bytes.count <= maximumIDLength else { return false }
        return bytes.allSatisfy { byte in
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
                 UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "_"), UInt8(ascii: "."), UInt8(ascii: "-"):
                true
            default:
                false
            }
        }
    }
}

// MARK: - redis

/// The shared Redis that holds the limiter state of a cluster of Sluice nodes.
public struct RedisConfig: Sendable, Equatable {
    /// What a node does while Redis is unreachable.
    public enum FailurePolicy: String, Sendable, CaseIterable {
        /// Enforce limit ÷ live nodes in memory on each node (live nodes known from heartbeats).
        case local
        /// Admit everything (availability over limits).
        case open
        /// Refuse everything with 503 (limits over availability).
        case closed
    }

    public static let defaultPort = 6379
    public static let defaultDatabase = 0
    public static let defaultFailurePolicy = FailurePolicy.local
    /// Nodes assumed alive for the `local` policy before any heartbeat was seen.
    public static let defaultFallbackNodeCount = 1

    public var host: String
    public var port: Int = RedisConfig.defaultPort
    public var database: Int = RedisConfig.defaultDatabase
    /// ACL user name (`redis://user:password@…`), `nil` for the default user.
    public var username: String?
    public var password: Secret?
    public var onFailure: FailurePolicy = RedisConfig.defaultFailurePolicy
    public var fallbackNodeCount: Int = RedisConfig.defaultFallbackNodeCount
    /// `usage_stream`: also append one entry per settled request to each key's usage stream in
    /// Redis (an `XADD` per request); the daily usage totals are kept either way.
    public var usageStream = false
    /// `cluster_nodes`: the seeds of a Redis Cluster (host, port and credentials each; the rest of
    /// the cluster is found with `CLUSTER SLOTS`). Empty for a single Redis (`url`); when given,
    /// `host` and `port` are the first seed's.
    public var clusterNodes: [RedisConfig] = []
    /// TLS for this address: set exactly when its URL is `rediss://` (then with the `redis.tls`
    /// settings, or the defaults), `nil` for a plain `redis://` one. Carried per address so that
    /// every server a node talks to says for itself whether it is reached over TLS.
    public var tls: RedisTLSConfig?

    public init(host: String, port: Int = RedisConfig.defaultPort, database: Int = RedisConfig.defaultDatabase, username: String? = nil, password: Secret? = nil, tls: RedisTLSConfig? = nil) {
        self.host = host
        self.port = port
        self.database = database
        self.username = username
        self.password = password
        self.tls = tls
    }

    /// Whether two servers are reached the same way (credentials, database; everything but the
    /// address): the seeds of one cluster must be.
    func sameServerSettings(as other: RedisConfig) -> Bool {
        var other = other
        other.host = host
        other.port = port
        other.clusterNodes = clusterNodes
        return other == self
    }

    /// Where it connects, without secrets: the URL for one Redis, the seeds for a cluster.
    public var redactedTarget: String {
        guard !clusterNodes.isEmpty else { return redactedURL }
        return "cluster " + clusterNodes.map(\.redactedURL).joined(separator: ",")
    }

    /// The URL with the password replaced by `<redacted>`, for logs and `check-config`
    /// (`rediss://` for an address reached over TLS).
    public var redactedURL: String {
        var credentials = ""
        if password != nil { credentials = "\(username ?? ""):<redacted>@" }
        let hostPart = host.contains(":") ? "[\(host)]" : host
        return "\(tls == nil ? "redis" : "rediss")://\(credentials)\(hostPart):\(port)/\(database)"
    }

    /// The name the server's certificate must carry, and the one sent as SNI (unless it is an IP
    /// address, which SNI cannot carry): `redis.tls.server_name`, else the URL's host. `nil`
    /// without TLS.
    public var tlsServerName: String? {
        guard let tls else { return nil }
        return tls.serverName ?? host
    }
}

/// How a `rediss://` address is reached: the `redis.tls` object. The files are PEM, read when the
/// Redis client starts (their presence is checked when the config loads).
public struct RedisTLSConfig: Sendable, Hashable {
    /// `ca_file`: the CA certificates a server's certificate must chain to; `nil`: the system's
    /// trust roots.
    public var caFile: String?
    /// `cert_file`: this node's certificate (and its chain) for mutual TLS; set together with
    /// `keyFile`.
    public var certificateFile: String?
    /// `key_file`: the private key of `certificateFile` (unencrypted PEM).
    public var keyFile: String?
    /// `server_name`: the host name checked against the server's certificate and sent as SNI;
    /// `nil`: the URL's host.
    public var serverName: String?
    /// `verify`: whether the server's certificate is checked at all (chain and name). False
    /// encrypts without authenticating the server, and is logged as a warning at start.
    public var verifyCertificate = true

    public init(caFile: String? = nil, certificateFile: String? = nil, keyFile: String? = nil, serverName: String? = nil, verifyCertificate: Bool = true) {
        self.caFile = caFile
        self.certificateFile = certificateFile
        self.keyFile = keyFile
        self.serverName = serverName
        self.verifyCertificate = verifyCertificate
    }
}
