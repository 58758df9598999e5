import Crypto
import Foundation

extension SluiceConfig {
    /// Configuration files larger than this are refused unread (a config is a few KB).
    public static let maximumFileBytes = 16 * 1024 * 1024

    /// Reads and validates the configuration file at `path`.
    ///
    /// Upstream API keys and the Redis password (`password_env`) are read from `environment` (the
    /// process environment by default), and `SLUICE_TOKENIZER_DIR` there replaces
    /// `tokenizer.directory`; the Redis TLS files must be readable files. With
    /// `requireMachineSecrets` false, a variable that is not set or a TLS file that is not there is
    /// no problem (the upstream gets no key, Redis no password): for commands that only edit the
    /// file, on a machine that does not hold the deployment's secrets.
    /// - Throws: `ConfigError.unreadable`, `.malformedJSON`, or `.invalid` with every problem.
    public static func load(path: String, environment: [String: String] = ProcessInfo.processInfo.environment, requireMachineSecrets: Bool = true) throws(ConfigError) -> SluiceConfig {
        try parse(bytes: ConfigFileContents.read(path: path).bytes, environment: environment, requireMachineSecrets: requireMachineSecrets)
    }

    /// Validates a configuration document. See `load(path:environment:requireMachineSecrets:)`.
    public static func parse(bytes: some Collection<UInt8>, environment: [String: String] = ProcessInfo.processInfo.environment, requireMachineSecrets: Bool = true) throws(ConfigError) -> SluiceConfig {
        guard bytes.count <= maximumFileBytes else {
            throw .malformedJSON(reason: "document larger than \(maximumFileBytes) bytes")
        }
        let foundationValue: Any
        do {
            foundationValue = try JSONSerialization.jsonObject(with: Data(bytes), options: [])
        } catch {
            throw .malformedJSON(reason: Self.describeJSONError(error))
        }
        guard case .object(let root) = ConfigJSON(foundation: foundationValue) else {
            throw .malformedJSON(reason: "the top level must be an object")
        }
        var reader = ConfigDocumentReader(environment: environment, requireMachineSecrets: requireMachineSecrets)
        let config = reader.read(root)
        if let config, reader.walker.problems.isEmpty { return config }
        throw .invalid(reader.walker.problems)
    }

    private static func describeJSONError(_ error: any Error) -> String {
        let nsError = error as NSError
        if let detail = nsError.userInfo[NSDebugDescriptionErrorKey] as? String { return detail }
        return nsError.localizedDescription
    }
}

/// The walk over one document, section by section. Every reader returns a value even when it
/// found problems (with defaults in place of bad fields) so that later sections can still be
/// checked against it, e.g. keys against tiers.
struct ConfigDocumentReader {
    var walker = ConfigWalker()
    let environment: [String: String]
    /// False: an `api_key_env` or `password_env` naming an unset variable, or a Redis TLS file that
    /// is not there, is not reported.
    let requireMachineSecrets: Bool
    /// False once some upstream's model list had a problem: checking keys' models against
    /// incomplete lists would report problems that are only echoes of that one.
    var upstreamModelsComplete = true
    /// The plans of `pricing`, read before the keys that name them.
    var plans: [String: SubscriptionPlan] = [:]
    /// The names of `teams`, read before the keys that name them.
    var teamNames: Set<String> = []

    init(environment: [String: String], requireMachineSecrets: Bool = true) {
        self.environment = environment
        self.requireMachineSecrets = requireMachineSecrets
    }

    static let topLevelFields = ["$schema", "server", "tokenizer", "upstreams", "tiers", "keys", "redis", "telemetry", "log", "routing", "pricing", "teams"]
    static let logFields = ["format"]
    static let serverFields = ["host", "port", "max_body_bytes", "max_header_bytes", "header_timeout_ms", "body_timeout_ms", "idle_timeout_ms", "shutdown_grace_seconds", "event_loop_threads", "upstream_threads", "watch_config", "admin_host", "admin_port"]
    static let tokenizerFields = ["directory", "model_encodings", "max_prompt_bytes"]
    static let upstreamFields = ["name", "base_url", "api_key_env", "models", "connect_timeout_ms", "first_byte_timeout_ms", "stall_timeout_ms", "request_timeout_ms", "max_connections", "queue_timeout_ms", "weight", "model_map", "api_key_header", "query_params", "circuit_breaker", "limits", "http_version", "tls"]
    static let upstreamTLSFields = ["ca_file"]
    /// What a provider limits per deployment (its key's tier): per-minute rates, no quotas or
    /// concurrency (`max_connections` bounds that).
    static let deploymentLimitFields = ["requests_per_minute", "tokens_per_minute", "input_tokens_per_minute", "output_tokens_per_minute", "requests_burst", "tokens_burst", "input_tokens_burst", "output_tokens_burst", "lease"]
    static let circuitBreakerFields = ["failure_threshold", "open_ms"]
    static let routingFields = ["max_attempts", "retry_budget_ms", "backoff_initial_ms", "backoff_max_ms", "max_retry_after_ms", "fallbacks", "context_window_fallbacks"]
    /// Headers an `api_key_header` cannot name: the ones Sluice writes itself or that frame the request.
    static let reservedUpstreamHeaders: Set<String> = ["host", "content-type", "content-length", "accept", "accept-encoding", "connection", "transfer-encoding", "x-request-id", "te", "upgrade", "expect", "traceparent", "tracestate"]
    /// Bounds of the strings an upstream's `model_map` and `query_params` hold.
    static let maximumMappedNameLength = 256
    static let maximumQueryParameters = 32
    static let limitFields = ["requests_per_minute", "tokens_per_minute", "input_tokens_per_minute", "output_tokens_per_minute", "max_concurrent_requests", "requests_burst", "tokens_burst", "input_tokens_burst", "output_tokens_burst", "tokens_per_day", "tokens_per_month", "usd_per_day", "usd_per_month", "lease"]
    static let keyFields = ["id", "secret_sha256", "tier", "limits", "models", "default_output_tokens", "previous_response_allowance_tokens", "expires_at", "previous_secrets", "metrics", "plan", "team"]
    static let previousSecretFields = ["secret_sha256", "expires_at"]
    static let redisFields = ["url", "cluster_nodes", "password_env", "tls", "on_failure", "fallback_node_count", "usage_stream"]
    static let redisTLSFields = ["ca_file", "cert_file", "key_file", "server_name", "verify"]
    /// Seeds of a Redis Cluster: enough to find the others, bounded so a typo cannot make many.
    static let maximumClusterSeeds = 64

    /// Field names that would put a secret into the file, with what to do instead.
    static let inlineUpstreamSecretFields: [String: String] = {
        let message = "inline secrets are not allowed: put the upstream key in an environment variable and give its name in \"api_key_env\""
        return Dictionary(uniqueKeysWithValues: ["api_key", "apikey", "apiKey", "key", "token", "secret", "authorization", "bearer"].map { ($0, message) })
    }()
    static let inlineKeySecretFields: [String: String] = {
        let message = "the secret itself must not be in the file: put its SHA-256 in \"secret_sha256\" (`sluice keys new` prints both)"
        return Dictionary(uniqueKeysWithValues: ["secret", "api_key", "key", "token", "bearer"].map { ($0, message) })
    }()

    static let timeoutRange = 1...86_400_000

    mutating func read(_ root: [String: ConfigJSON]) -> SluiceConfig? {
        walker.rejectUnknownFields(root, known: Self.topLevelFields, at: "$")
        if let schema = root["$schema"], case .string = schema {} else if let schema = root["$schema"] {
            walker.report("$.$schema", "expected a string, found \(schema.kindDescription)")
        }

        let server = root["server"].map { readServer($0, at: "$.server") } ?? ServerConfig()
        let tokenizer = readTokenizer(root["tokenizer"], at: "$.tokenizer")

        var upstreams: [UpstreamConfig] = []
        if let value = root["upstreams"] {
            upstreams = readUpstreams(value, at: "$.upstreams")
        } else {
            walker.report("$.upstreams", "missing (required): at least one upstream")
        }

        var tiers: [String: LimitSet] = [:]
        if let value = root["tiers"], let members = walker.object(value, at: "$.tiers") {
            for name in members.keys.sorted() {
                let path = ConfigWalker.member("$.tiers", name)
                if !KeyConfig.isValidID(name) {
                    walker.report(path, "tier names must match [A-Za-z0-9_.-]{1,64}")
                }
                if let limits = readLimitSet(members[name]!, at: path) {
                    reportBurstsWithoutRates(limits, ownFields: limits, at: path)
                    tiers[name] = limits
                }
            }
        }

        let pricing = root["pricing"].flatMap { $0.isNull ? nil : readPricing($0, at: "$.pricing") } ?? .none
        plans = pricing.plans

        var teams: [String: LimitSet] = [:]
        if let value = root["teams"], !value.isNull, let members = walker.object(value, at: "$.teams") {
            for name in members.keys.sorted() {
                let path = ConfigWalker.member("$.teams", name)
                if !KeyConfig.isValidID(name) {
                    walker.report(path, "team names must match [A-Za-z0-9_.-]{1,64}")
                    continue
                }
                if let limits = readLimitSet(members[name]!, at: path) {
                    reportBurstsWithoutRates(limits, ownFields: limits, at: path)
                    teams[name] = limits
                }
            }
        }
        teamNames = Set(teams.keys)

        var keys: [KeyConfig] = []
        if let value = root["keys"] {
            keys = readKeys(value, at: "$.keys", tiers: tiers, upstreams: upstreams)
        } else {
            walker.report("$.keys", "missing (required): an array of keys (may be empty)")
        }

        let redis = root["redis"].flatMap { $0.isNull ? nil : readRedis($0, at: "$.redis") }

        let telemetry = root["telemetry"].flatMap { $0.isNull ? nil : readTelemetry($0, at: "$.telemetry") } ?? TelemetryConfig()

        var config = SluiceConfig(server: server, tokenizer: tokenizer, upstreams: upstreams, tiers: tiers, keys: keys, redis: redis, telemetry: telemetry)
        if let value = root["log"], !value.isNull { config.log = readLog(value, at: "$.log") }
        if let value = root["routing"], !value.isNull { config.routing = readRouting(value, at: "$.routing", upstreams: upstreams, keysCheckable: upstreamModelsComplete) }
        config.pricing = pricing
        config.teams = teams
        return config
    }

    // MARK: log

    mutating func readLog(_ value: ConfigJSON, at path: String) -> LogConfig {
        var log = LogConfig()
        guard let members = walker.object(value, at: path) else { return log }
        walker.rejectUnknownFields(members, known: Self.logFields, at: path)
        if let name = walker.string(members, "format", at: path, default: LogConfig.Format.text.rawValue) {
            if let format = LogConfig.Format(rawValue: name) {
                log.format = format
            } else {
                let known = LogConfig.Format.allCases.map(\.rawValue).joined(separator: ", ")
                walker.report("\(path).format", "unknown log format \"\(name)\" (known: \(known))")
            }
        }
        return log
    }

    // MARK: server

    mutating func readServer(_ value: ConfigJSON, at path: String) -> ServerConfig {
        var server = ServerConfig()
        guard let members = walker.object(value, at: path) else { return server }
        walker.rejectUnknownFields(members, known: Self.serverFields, at: path)
        server.host = walker.string(members, "host", at: path, default: ServerConfig.defaultHost) ?? ServerConfig.defaultHost
        server.port = walker.integer(members, "port", at: path, default: ServerConfig.defaultPort, range: 1...65_535)
        server.maxBodyBytes = walker.integer(members, "max_body_bytes", at: path, default: ServerConfig.defaultMaxBodyBytes, range: 1...(1 << 40))
        server.maxHeaderBytes = walker.integer(members, "max_header_bytes", at: path, default: ServerConfig.defaultMaxHeaderBytes, range: 1024...(16 << 20))
        server.headerTimeoutMs = walker.integer(members, "header_timeout_ms", at: path, default: ServerConfig.defaultHeaderTimeoutMs, range: Self.timeoutRange)
        server.bodyTimeoutMs = walker.integer(members, "body_timeout_ms", at: path, default: ServerConfig.defaultBodyTimeoutMs, range: Self.timeoutRange)
        server.idleTimeoutMs = walker.integer(members, "idle_timeout_ms", at: path, default: ServerConfig.defaultIdleTimeoutMs, range: Self.timeoutRange)
        server.shutdownGraceSeconds = walker.integer(members, "shutdown_grace_seconds", at: path, default: ServerConfig.defaultShutdownGraceSeconds, range: 0...3600)
        server.eventLoopThreads = walker.integer(members, "event_loop_threads", at: path, default: ServerConfig.defaultEventLoopThreads, range: 0...1024)
        server.upstreamThreads = walker.integer(members, "upstream_threads", at: path, default: ServerConfig.defaultUpstreamThreads, range: 0...256)
        server.watchConfig = walker.boolean(members, "watch_config", at: path, default: ServerConfig.defaultWatchConfig)
        server.adminHost = walker.string(members, "admin_host", at: path, default: ServerConfig.defaultAdminHost) ?? ServerConfig.defaultAdminHost
        server.adminPort = walker.integer(members, "admin_port", at: path, default: ServerConfig.defaultAdminPort, range: 0...65_535)
        if server.adminPort != 0, server.adminPort == server.port {
            walker.report("\(path).admin_port", "\(server.adminPort) is also server.port: the admin listener (/metrics) needs a port of its own (0 turns it off)")
        }
        return server
    }

    // MARK: tokenizer

    mutating func readTokenizer(_ value: ConfigJSON?, at path: String) -> TokenizerConfig {
        var tokenizer = TokenizerConfig()
        if let value, let members = walker.object(value, at: path) {
            walker.rejectUnknownFields(members, known: Self.tokenizerFields, at: path)
            tokenizer.directory = walker.string(members, "directory", at: path, default: TokenizerConfig.defaultDirectory) ?? TokenizerConfig.defaultDirectory
            tokenizer.maxPromptBytes = walker.optionalInteger(members, "max_prompt_bytes", at: path, range: 1...(1 << 40))
            if let encodingsValue = members["model_encodings"], let encodings = walker.object(encodingsValue, at: "\(path).model_encodings") {
                for model in encodings.keys.sorted() {
                    let modelPath = ConfigWalker.member("\(path).model_encodings", model)
                    guard case .string(let encoding) = encodings[model]! else {
                        walker.report(modelPath, "expected an encoding name (a string), found \(encodings[model]!.kindDescription)")
                        continue
                    }
                    if TokenizerConfig.knownEncodings.contains(encoding) {
                        tokenizer.modelEncodings[model] = encoding
                    } else {
                        walker.report(modelPath, "unknown encoding \"\(encoding)\" (known: \(TokenizerConfig.knownEncodings.joined(separator: ", ")))")
                    }
                }
            }
        }
        if let override = environment[TokenizerConfig.directoryEnvironmentVariable], !override.isEmpty {
            tokenizer.directory = override
        }
        return tokenizer
    }

    // MARK: upstreams

    mutating func readUpstreams(_ value: ConfigJSON, at path: String) -> [UpstreamConfig] {
        guard let elements = walker.array(value, at: path) else { return [] }
        if elements.isEmpty { walker.report(path, "at least one upstream is required") }
        var upstreams: [UpstreamConfig] = []
        var firstPathOfName: [String: String] = [:]
        for (index, element) in elements.enumerated() {
            let elementPath = ConfigWalker.element(path, index)
            guard let upstream = readUpstream(element, at: elementPath) else { continue }
            if let earlier = firstPathOfName[upstream.name] {
                walker.report("\(elementPath).name", "duplicate upstream name \"\(upstream.name)\" (also at \(earlier))")
            } else {
                firstPathOfName[upstream.name] = "\(elementPath).name"
            }
            upstreams.append(upstream)
        }
        return upstreams
    }

    mutating func readUpstream(_ value: ConfigJSON, at path: String) -> UpstreamConfig? {
        guard let members = walker.object(value, at: path) else { return nil }
        walker.rejectUnknownFields(members, known: Self.upstreamFields, forbidden: Self.inlineUpstreamSecretFields, at: path)
        let name = walker.string(members, "name", at: path)
        let baseURL = walker.string(members, "base_url", at: path).flatMap { readBaseURL($0, at: "\(path).base_url") }

        let apiKeyEnv = walker.optionalString(members, "api_key_env", at: path)
        let apiKey = apiKeyEnv.flatMap { secretFromEnvironment(named: $0, at: "\(path).api_key_env") }

        var models: [ModelMatcher] = []
        let problemsBeforeModels = walker.problems.count
        if let modelsValue = members["models"] {
            models = readModelPatterns(modelsValue, at: "\(path).models") ?? []
            if case .array(let patterns) = modelsValue, patterns.isEmpty {
                walker.report("\(path).models", "must list at least one model")
            }
        } else {
            walker.report("\(path).models", "missing (required): the models this upstream serves")
        }
        if walker.problems.count > problemsBeforeModels { upstreamModelsComplete = false }

        var upstream = UpstreamConfig(name: name ?? "", baseURL: baseURL ?? "", apiKeyEnvironmentVariable: apiKeyEnv, apiKey: apiKey, models: models)
        upstream.connectTimeoutMs = walker.integer(members, "connect_timeout_ms", at: path, default: UpstreamConfig.defaultConnectTimeoutMs, range: Self.timeoutRange)
        upstream.firstByteTimeoutMs = walker.integer(members, "first_byte_timeout_ms", at: path, default: UpstreamConfig.defaultFirstByteTimeoutMs, range: Self.timeoutRange)
        upstream.stallTimeoutMs = walker.integer(members, "stall_timeout_ms", at: path, default: UpstreamConfig.defaultStallTimeoutMs, range: Self.timeoutRange)
        upstream.requestTimeoutMs = walker.integer(members, "request_timeout_ms", at: path, default: UpstreamConfig.defaultRequestTimeoutMs, range: Self.timeoutRange)
        upstream.maxConnections = walker.integer(members, "max_connections", at: path, default: UpstreamConfig.defaultMaxConnections, range: 1...100_000)
        upstream.queueTimeoutMs = walker.integer(members, "queue_timeout_ms", at: path, default: UpstreamConfig.defaultQueueTimeoutMs, range: 0...3_600_000)
        upstream.weight = walker.integer(members, "weight", at: path, default: 1, range: 1...UpstreamConfig.maximumWeight)
        if let value = members["model_map"], !value.isNull { upstream.modelMap = readModelMap(value, at: "\(path).model_map") }
        if let header = walker.optionalString(members, "api_key_header", at: path) {
            upstream.apiKeyHeader = readAPIKeyHeader(header, at: "\(path).api_key_header")
        }
        if let value = members["query_params"], !value.isNull { upstream.queryParameters = readQueryParameters(value, at: "\(path).query_params") }
        if let value = members["circuit_breaker"], !value.isNull, let breaker = walker.object(value, at: "\(path).circuit_breaker") {
            let breakerPath = "\(path).circuit_breaker"
            walker.rejectUnknownFields(breaker, known: Self.circuitBreakerFields, at: breakerPath)
            upstream.circuitBreaker = CircuitBreaker.Configuration(
                failureThreshold: walker.integer(breaker, "failure_threshold", at: breakerPath, default: CircuitBreaker.Configuration.defaultFailureThreshold, range: 1...1_000),
                openMillis: walker.integer(breaker, "open_ms", at: breakerPath, default: CircuitBreaker.Configuration.defaultOpenMillis, range: 1...3_600_000)
            )
        }
        if let value = members["limits"], !value.isNull {
            let limitsPath = "\(path).limits"
            if let object = walker.object(value, at: limitsPath) {
                for name in object.keys.sorted() where Self.limitFields.contains(name) && !Self.deploymentLimitFields.contains(name) {
                    walker.report(ConfigWalker.member(limitsPath, name), "not a deployment limit: a provider's limits are per-minute rates (requests, tokens, input and output tokens) and their bursts")
                }
            }
            if let limits = readLimitSet(value, at: limitsPath) {
                reportBurstsWithoutRates(limits, ownFields: limits, at: limitsPath)
                upstream.limits = limits
            }
            if let name, !KeyConfig.isValidID(name) {
                walker.report("\(path).name", "an upstream with limits must have a name matching [A-Za-z0-9_.-]{1,64} (its limits are kept under it in the shared store)")
            }
        }
        let scheme = baseURL.map { $0.lowercased().hasPrefix("https://") ? "https" : "http" }
        upstream.httpVersion = readHTTPVersion(members["http_version"], scheme: scheme, at: "\(path).http_version")
        if let tlsValue = members["tls"], !tlsValue.isNull {
            let tls = readUpstreamTLS(tlsValue, at: "\(path).tls")
            if scheme == "http" {
                walker.report("\(path).tls", "TLS settings given, but base_url is a cleartext http:// URL: write https:// to reach the upstream over TLS, or remove \"tls\"")
            } else {
                upstream.tls = tls
            }
        }
        return upstream
    }

    /// `model_map`: public model name → the deployment's own name for it; both non-empty, bounded.
    mutating func readModelMap(_ value: ConfigJSON, at path: String) -> [String: String] {
        guard let members = walker.object(value, at: path) else { return [:] }
        var map: [String: String] = [:]
        for name in members.keys.sorted() {
            let entryPath = ConfigWalker.member(path, name)
            guard case .string(let mapped) = members[name]! else {
                walker.report(entryPath, "expected the deployment's model name (a string), found \(members[name]!.kindDescription)")
                continue
            }
            if name.isEmpty || name.hasSuffix("*") || name.utf8.count > Self.maximumMappedNameLength {
                walker.report(entryPath, "the public name must be an exact model name (not a prefix), 1 to \(Self.maximumMappedNameLength) bytes")
            } else if mapped.isEmpty || mapped.utf8.count > Self.maximumMappedNameLength {
                walker.report(entryPath, "the deployment's model name must be 1 to \(Self.maximumMappedNameLength) bytes")
            } else {
                map[name] = mapped
            }
        }
        return map
    }

    /// `api_key_header`: an HTTP header name (token characters), lowercased; not one Sluice writes itself.
    mutating func readAPIKeyHeader(_ header: String, at path: String) -> String {
        let name = header.lowercased()
        let tokenCharacters = Set("abcdefghijklmnopqrstuvwxyz0123456789!#$%&'*+-.^_`|~".utf8)
        guard !name.isEmpty, name.utf8.count <= 64, name.utf8.allSatisfy(tokenCharacters.contains) else {
            walker.report(path, "expected an HTTP header name (letters, digits and -, at most 64 characters), e.g. \"api-key\"")
            return UpstreamConfig.defaultAPIKeyHeader
        }
        guard !Self.reservedUpstreamHeaders.contains(name) else {
            walker.report(path, "\"\(header)\" is a header Sluice writes itself; name the one the provider reads the key from (\"authorization\" sends Bearer, \"api-key\" for Azure)")
            return UpstreamConfig.defaultAPIKeyHeader
        }
        return name
    }

    /// `query_params`: name → value strings, added to every request URL (percent-encoded when sent).
    mutating func readQueryParameters(_ value: ConfigJSON, at path: String) -> [(name: String, value: String)] {
        guard let members = walker.object(value, at: path) else { return [] }
        if members.count > Self.maximumQueryParameters {
            walker.report(path, "at most \(Self.maximumQueryParameters) parameters")
            return []
        }
        var parameters: [(name: String, value: String)] = []
        for name in members.keys.sorted() {
            let entryPath = ConfigWalker.member(path, name)
            guard case .string(let parameter) = members[name]! else {
                walker.report(entryPath, "expected a string, found \(members[name]!.kindDescription)")
                continue
            }
            guard !name.isEmpty, name.utf8.count <= Self.maximumMappedNameLength, parameter.utf8.count <= Self.maximumMappedNameLength else {
                walker.report(entryPath, "names and values must be 1 to \(Self.maximumMappedNameLength) bytes")
                continue
            }
            parameters.append((name, parameter))
        }
        return parameters
    }

    // MARK: routing

    mutating func readRouting(_ value: ConfigJSON, at path: String, upstreams: [UpstreamConfig], keysCheckable: Bool) -> RoutingConfig {
        var routing = RoutingConfig()
        guard let members = walker.object(value, at: path) else { return routing }
        walker.rejectUnknownFields(members, known: Self.routingFields, at: path)
        routing.maxAttempts = walker.integer(members, "max_attempts", at: path, default: RoutingConfig.defaultMaxAttempts, range: 1...10)
        routing.retryBudgetMs = walker.integer(members, "retry_budget_ms", at: path, default: RoutingConfig.defaultRetryBudgetMs, range: 0...3_600_000)
        routing.backoffInitialMs = walker.integer(members, "backoff_initial_ms", at: path, default: RoutingConfig.defaultBackoffInitialMs, range: 1...60_000)
        routing.backoffMaxMs = walker.integer(members, "backoff_max_ms", at: path, default: RoutingConfig.defaultBackoffMaxMs, range: 1...600_000)
        routing.maxRetryAfterMs = walker.integer(members, "max_retry_after_ms", at: path, default: RoutingConfig.defaultMaxRetryAfterMs, range: 0...600_000)
        if routing.backoffMaxMs < routing.backoffInitialMs {
            walker.report("\(path).backoff_max_ms", "must be at least backoff_initial_ms (\(routing.backoffInitialMs))")
        }
        if let value = members["fallbacks"], !value.isNull {
            routing.fallbacks = readFallbacks(value, at: "\(path).fallbacks", upstreams: upstreams, checkServed: keysCheckable)
        }
        if let value = members["context_window_fallbacks"], !value.isNull {
            routing.contextWindowFallbacks = readFallbacks(value, at: "\(path).context_window_fallbacks", upstreams: upstreams, checkServed: keysCheckable)
        }
        return routing
    }

    /// Model → fallback models: exact names, none the model itself, no repeats, each served by some
    /// upstream (a fallback nobody serves could never be tried).
    mutating func readFallbacks(_ value: ConfigJSON, at path: String, upstreams: [UpstreamConfig], checkServed: Bool) -> [String: [String]] {
        guard let members = walker.object(value, at: path) else { return [:] }
        var fallbacks: [String: [String]] = [:]
        for model in members.keys.sorted() {
            let modelPath = ConfigWalker.member(path, model)
            guard let elements = walker.array(members[model]!, at: modelPath) else { continue }
            if elements.count > RoutingConfig.maximumFallbacks {
                walker.report(modelPath, "at most \(RoutingConfig.maximumFallbacks) fallback models")
                continue
            }
            var list: [String] = []
            for (index, element) in elements.enumerated() {
                let elementPath = ConfigWalker.element(modelPath, index)
                guard case .string(let name) = element, !name.isEmpty, !name.hasSuffix("*"), name.utf8.count <= Self.maximumMappedNameLength else {
                    walker.report(elementPath, "expected an exact model name (a string, not a prefix)")
                    continue
                }
                if name == model || list.contains(name) {
                    walker.report(elementPath, "\"\(name)\" is already tried before this fallback")
                } else if checkServed && !upstreams.contains(where: { $0.serves(model: name) }) {
                    walker.report(elementPath, "no upstream serves \"\(name)\": this fallback could never be tried")
                } else {
                    list.append(name)
                }
            }
            fallbacks[model] = list
        }
        return fallbacks
    }

    /// `http_version`: absent or null → `auto`. `2` needs TLS (HTTP/2 is agreed on by ALPN there)
    /// and `h2c` cleartext; `scheme` is the base URL's (`nil` when it was invalid: not checked).
    mutating func readHTTPVersion(_ value: ConfigJSON?, scheme: String?, at path: String) -> UpstreamConfig.HTTPVersion {
        let known = UpstreamConfig.HTTPVersion.allCases.map { "\"\($0.rawValue)\"" }.joined(separator: ", ")
        guard let value, !value.isNull else { return UpstreamConfig.defaultHTTPVersion }
        let text: String
        switch value {
        case .string(let string):
            text = string
        case .integer(let number):
            walker.report(path, "expected one of \(known) (a string), found the number \(number): write \"\(number)\"")
            return UpstreamConfig.defaultHTTPVersion
        case .number(let number):
            walker.report(path, "expected one of \(known) (a string), found the number \(number): write \"\(number)\"")
            return UpstreamConfig.defaultHTTPVersion
        default:
            walker.report(path, "expected one of \(known), found \(value.kindDescription)")
            return UpstreamConfig.defaultHTTPVersion
        }
        guard let version = UpstreamConfig.HTTPVersion(rawValue: text) else {
            walker.report(path, "unknown HTTP version \"\(text)\" (known: \(known))")
            return UpstreamConfig.defaultHTTPVersion
        }
        switch (version, scheme) {
        case (.http2, "http"):
            walker.report(path, "\"2\" is HTTP/2 agreed on by TLS (ALPN), but base_url is a cleartext http:// URL: for cleartext HTTP/2 by prior knowledge write \"h2c\", or use an https:// base_url")
        case (.h2c, "https"):
            walker.report(path, "\"h2c\" is cleartext HTTP/2, but base_url is an https:// URL: over TLS write \"2\" (HTTP/2 required) or \"auto\" (HTTP/2 when the upstream offers it)")
        default:
            break
        }
        return version
    }

    /// The `upstreams[].tls` object.
    mutating func readUpstreamTLS(_ value: ConfigJSON, at path: String) -> UpstreamTLSConfig? {
        guard let members = walker.object(value, at: path) else { return nil }
        walker.rejectUnknownFields(members, known: Self.upstreamTLSFields, at: path)
        return UpstreamTLSConfig(caFile: readCAFile(members, "ca_file", at: path))
    }

    /// The base URL normalised without a trailing slash, or `nil` (reported).
    mutating func readBaseURL(_ string: String, at path: String) -> String? {
        guard let components = URLComponents(string: string),
              let scheme = components.scheme?.lowercased(), scheme == "http" || scheme == "https",
              let host = components.host, !host.isEmpty
        else {
            // Shown only without the places a credential goes (user info, query, fragment).
            let shown = string.contains(where: { "@?#".contains($0) }) ? "a value not shown here (it may hold a credential)" : "\"\(string)\""
            walker.report(path, "must be an http:// or https:// URL with a host, found \(shown)")
            return nil
        }
        if components.user != nil || components.password != nil {
            walker.report(path, "must not contain credentials; name an environment variable in \"api_key_env\" instead")
            return nil
        }
        if components.query != nil || components.fragment != nil {
            walker.report(path, "must not have a query or fragment (not shown: it may hold a key; name an environment variable in \"api_key_env\" instead)")
            return nil
        }
        var normalized = string
        while normalized.hasSuffix("/") { normalized.removeLast() }
        return normalized
    }

    /// Model patterns (`"gpt-4o"`, `"gpt-4.1*"`, `"*"`), or `nil` if `value` is not an array.
    mutating func readModelPatterns(_ value: ConfigJSON, at path: String) -> [ModelMatcher]? {
        guard let elements = walker.array(value, at: path) else { return nil }
        var matchers: [ModelMatcher] = []
        for (index, element) in elements.enumerated() {
            let elementPath = ConfigWalker.element(path, index)
            guard case .string(let pattern) = element else {
                walker.report(elementPath, "expected a model name (a string), found \(element.kindDescription)")
                continue
            }
            if let matcher = ModelMatcher(pattern: pattern) {
                matchers.append(matcher)
            } else {
                walker.report(elementPath, "\"\(pattern)\" is not a model name or a prefix ending in \"*\"")
            }
        }
        return matchers
    }

    /// Longer `api_key_env` values are refused as names (real names are short; a key is not).
    static let maximumEnvironmentVariableNameLength = 128
    /// The value of the environment variable `name` (given at `fieldPath`), or `nil` (reported
    /// unless `requireMachineSecrets` is false). The name is echoed only when it has the usual form
    /// of a variable name: a secret pasted here by mistake must not end up in `check-config`'s
    /// output or the log. The value is never echoed.
    mutating func secretFromEnvironment(named name: String, at fieldPath: String) -> Secret? {
        if !Self.isEnvironmentVariableName(name) {
            walker.report(fieldPath, "must name an environment variable (letters, digits and underscores, not starting with a digit, at most \(Self.maximumEnvironmentVariableNameLength) characters); the value given looks like a secret and is not shown")
        } else if let value = environment[name], !value.isEmpty {
            return Secret(value)
        } else if !requireMachineSecrets {
            // The file is only being edited here; `serve` and `check-config` report it.
        } else if Self.isConventionalEnvironmentVariableName(name) {
            walker.report(fieldPath, "environment variable \(name) is not set (or empty)")
        } else {
            walker.report(fieldPath, "the environment variable it names is not set (or empty); the name is not shown: it is not in the usual form (A-Z, 0-9 and _, at most \(Self.maximumConventionalNameLength) characters) and may be a secret")
        }
        return nil
    }

    /// Names echoed in problems are at most this long, and upper-case (see below).
    static let maximumConventionalNameLength = 64

    /// Whether `name` can name an environment variable: `[A-Za-z_][A-Za-z0-9_]*`, at most
    /// ``maximumEnvironmentVariableNameLength`` bytes.
    static func isEnvironmentVariableName(_ name: String) -> Bool {
        let bytes = Array(name.utf8)
        guard bytes.count <= maximumEnvironmentVariableNameLength else { return false }
        guard let first = bytes.first, !(UInt8(ascii: "0")...UInt8(ascii: "9")).contains(first) else { return false }
        return bytes.allSatisfy { byte in
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
                 UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "_"):
                true
            default:
                false
            }
        }
    }

    /// Whether `name` has the form variable names are given by convention, `[A-Z_][A-Z0-9_]*` of at
    /// most ``maximumConventionalNameLength`` bytes (`OPENAI_API_KEY`), and can be shown in a
    /// problem: a key pasted in its place is mixed- or lower-case (`sk_live_…`, hex) or longer.
    static func isConventionalEnvironmentVariableName(_ name: String) -> Bool {
        name.utf8.count <= maximumConventionalNameLength && isEnvironmentVariableName(name)
            && !name.utf8.contains { (UInt8(ascii: "a")...UInt8(ascii: "z")).contains($0) }
    }

    // MARK: limits

    mutating func readLimitSet(_ value: ConfigJSON, at path: String) -> LimitSet? {
        guard let members = walker.object(value, at: path) else { return nil }
        walker.rejectUnknownFields(members, known: Self.limitFields, at: path)
        let rate = 1...LimitSet.maximumValue
        let quota = 1...LimitSet.maximumQuota
        let hint = "leave it out or use null for no limit"
        return LimitSet(
            requestsPerMinute: walker.optionalInteger(members, "requests_per_minute", at: path, range: rate, zeroHint: hint),
            tokensPerMinute: walker.optionalInteger(members, "tokens_per_minute", at: path, range: rate, zeroHint: hint),
            inputTokensPerMinute: walker.optionalInteger(members, "input_tokens_per_minute", at: path, range: rate, zeroHint: hint),
            outputTokensPerMinute: walker.optionalInteger(members, "output_tokens_per_minute", at: path, range: rate, zeroHint: hint),
            maxConcurrentRequests: walker.optionalInteger(members, "max_concurrent_requests", at: path, range: 1...1_000_000, zeroHint: hint),
            requestsBurst: walker.optionalInteger(members, "requests_burst", at: path, range: rate, zeroHint: hint),
            tokensBurst: walker.optionalInteger(members, "tokens_burst", at: path, range: rate, zeroHint: hint),
            inputTokensBurst: walker.optionalInteger(members, "input_tokens_burst", at: path, range: rate, zeroHint: hint),
            outputTokensBurst: walker.optionalInteger(members, "output_tokens_burst", at: path, range: rate, zeroHint: hint),
            tokensPerDay: walker.optionalInteger(members, "tokens_per_day", at: path, range: quota, zeroHint: hint),
            tokensPerMonth: walker.optionalInteger(members, "tokens_per_month", at: path, range: quota, zeroHint: hint),
            lease: readLeaseMode(members, at: path)
        ).withBudgets(
            perDay: readDollars(members, "usd_per_day", at: path, range: 1...LimitSet.maximumBudgetNanos),
            perMonth: readDollars(members, "usd_per_month", at: path, range: 1...LimitSet.maximumBudgetNanos)
        )
    }

    mutating func readLeaseMode(_ members: [String: ConfigJSON], at path: String) -> LeaseMode? {
        guard let name = walker.optionalString(members, "lease", at: path) else { return nil }
        guard let mode = LeaseMode(rawValue: name) else {
            let known = LeaseMode.allCases.map { "\"\($0.rawValue)\"" }.joined(separator: ", ")
            walker.report("\(path).lease", "unknown lease mode \"\(name.prefix(64))\" (known: \(known))")
            return nil
        }
        return mode
    }

    /// A burst only sizes a bucket that has a rate: reports bursts of `merged` without their rate,
    /// at `path`, for the bursts that `ownFields` sets (the others were reported at their tier).
    mutating func reportBurstsWithoutRates(_ merged: LimitSet, ownFields: LimitSet, at path: String) {
        let pairs: [(burst: Int?, own: Int?, rate: Int?, burstName: String, rateName: String)] = [
            (merged.requestsBurst, ownFields.requestsBurst, merged.requestsPerMinute, "requests_burst", "requests_per_minute"),
            (merged.tokensBurst, ownFields.tokensBurst, merged.tokensPerMinute, "tokens_burst", "tokens_per_minute"),
            (merged.inputTokensBurst, ownFields.inputTokensBurst, merged.inputTokensPerMinute, "input_tokens_burst", "input_tokens_per_minute"),
            (merged.outputTokensBurst, ownFields.outputTokensBurst, merged.outputTokensPerMinute, "output_tokens_burst", "output_tokens_per_minute"),
        ]
        for pair in pairs where pair.burst != nil && pair.own != nil && pair.rate == nil {
            walker.report("\(path).\(pair.burstName)", "a burst needs a rate: \(pair.rateName) is not set")
        }
    }

    // MARK: keys

    mutating func readKeys(_ value: ConfigJSON, at path: String, tiers: [String: LimitSet], upstreams: [UpstreamConfig]) -> [KeyConfig] {
        guard let elements = walker.array(value, at: path) else { return [] }
        var keys: [KeyConfig] = []
        var firstPathOfID: [String: String] = [:]
        var firstPathOfHash: [String: String] = [:]
        for (index, element) in elements.enumerated() {
            let elementPath = ConfigWalker.element(path, index)
            guard let key = readKey(element, at: elementPath, tiers: tiers, upstreams: upstreams) else { continue }
            if !key.id.isEmpty {
                if let earlier = firstPathOfID[key.id] {
                    walker.report("\(elementPath).id", "duplicate key id \"\(key.id)\" (also at \(earlier))")
                } else {
                    firstPathOfID[key.id] = "\(elementPath).id"
                }
            }
            let hashes = [(key.secretSHA256, "\(elementPath).secret_sha256")]
                + key.previousSecrets.enumerated().map { ($1.secretSHA256, "\(ConfigWalker.element("\(elementPath).previous_secrets", $0)).secret_sha256") }
            for (hash, hashPath) in hashes where !hash.isEmpty {
                if let earlier = firstPathOfHash[hash] {
                    walker.report(hashPath, "duplicate secret hash (also at \(earlier)): two keys would share one secret")
                } else {
                    firstPathOfHash[hash] = hashPath
                }
            }
            keys.append(key)
        }
        reportIDsThatAreSecrets(keys, at: path)
        return keys
    }

    /// Reports every key whose id is a key's bearer secret itself (its SHA-256 is one of the
    /// file's `secret_sha256`): ids are written to every access-log line and metric, and the
    /// message must not repeat it either.
    mutating func reportIDsThatAreSecrets(_ keys: [KeyConfig], at path: String) {
        var indexOfDigest: [SecretDigest: Int] = [:]
        for (index, key) in keys.enumerated() {
            for hash in [key.secretSHA256] + key.previousSecrets.map(\.secretSHA256) {
                if let digest = SecretDigest(hex: hash), indexOfDigest[digest] == nil { indexOfDigest[digest] = index }
            }
        }
        for (index, key) in keys.enumerated() where !key.id.isEmpty {
            guard let owner = indexOfDigest[SecretDigest(SHA256.hash(data: Array(key.id.utf8)))] else { continue }
            let whose = owner == index ? "this key's own secret" : "the secret of \(ConfigWalker.element(path, owner))"
            walker.report("\(ConfigWalker.element(path, index)).id", "is \(whose) (its SHA-256 is that key's secret_sha256), and ids appear in logs and metrics: choose another id, and replace the secret, which is now in the file (the id is not shown)")
        }
    }

    mutating func readKey(_ value: ConfigJSON, at path: String, tiers: [String: LimitSet], upstreams: [UpstreamConfig]) -> KeyConfig? {
        guard let members = walker.object(value, at: path) else { return nil }
        walker.rejectUnknownFields(members, known: Self.keyFields, forbidden: Self.inlineKeySecretFields, at: path)

        var id = walker.string(members, "id", at: path) ?? ""
        if !id.isEmpty && !KeyConfig.isValidID(id) {
            // Not echoed: a secret pasted into `id` would otherwise be printed.
            walker.report("\(path).id", "is not a valid key id ([A-Za-z0-9_.-]{1,64}), found \(id.utf8.count) characters (the value is not shown: it may be a secret)")
            id = ""
        }

        var hash = walker.string(members, "secret_sha256", at: path) ?? ""
        if !hash.isEmpty && !Self.isLowercaseSHA256Hex(hash) {
            walker.report("\(path).secret_sha256", "must be the SHA-256 of the secret as 64 lowercase hex characters, found \(hash.utf8.count) characters")
            hash = ""
        }

        let tier = walker.optionalString(members, "tier", at: path)
        if let tier, tiers[tier] == nil {
            let known = tiers.keys.sorted().joined(separator: ", ")
            walker.report("\(path).tier", "unknown tier \"\(tier)\" (known: \(known.isEmpty ? "none defined" : known))")
        }

        var ownLimits: LimitSet?
        if let limitsValue = members["limits"], !limitsValue.isNull {
            ownLimits = readLimitSet(limitsValue, at: "\(path).limits")
        }
        let hasTier = members["tier"].map { !$0.isNull } ?? false
        let hasLimits = members["limits"].map { !$0.isNull } ?? false
        if !hasTier && !hasLimits {
            walker.report(path, "needs \"tier\" or \"limits\" (for a key without limits, use a tier that sets none)")
        }
        if let ownLimits {
            let merged = (tier.flatMap { tiers[$0] } ?? LimitSet()).overridden(by: ownLimits)
            reportBurstsWithoutRates(merged, ownFields: ownLimits, at: "\(path).limits")
        }

        var models: [ModelMatcher]?
        if let modelsValue = members["models"], !modelsValue.isNull {
            let modelsPath = "\(path).models"
            models = readModelPatterns(modelsValue, at: modelsPath)
            for (index, matcher) in (models ?? []).enumerated() {
                // An exact name no upstream serves is almost always a typo.
                if case .exact(let name) = matcher, upstreamModelsComplete, !upstreams.isEmpty, !upstreams.contains(where: { $0.serves(model: name) }) {
                    walker.report(ConfigWalker.element(modelsPath, index), "model \"\(name)\" is not served by any upstream")
                }
            }
        }

        let defaultOutputTokens = walker.integer(members, "default_output_tokens", at: path, default: KeyConfig.defaultDefaultOutputTokens, range: 1...LimitSet.maximumValue)
        let previousResponseAllowance = walker.integer(members, "previous_response_allowance_tokens", at: path, default: KeyConfig.defaultPreviousResponseAllowanceTokens, range: 0...LimitSet.maximumValue)
        let expiresAt = readTimestamp(members, "expires_at", at: path)
        var previousSecrets: [KeyConfig.PreviousSecret] = []
        if let value = members["previous_secrets"], !value.isNull, let elements = walker.array(value, at: "\(path).previous_secrets") {
            for (index, element) in elements.enumerated() {
                if let previous = readPreviousSecret(element, at: ConfigWalker.element("\(path).previous_secrets", index)) {
                    previousSecrets.append(previous)
                }
            }
        }
        let metrics = walker.boolean(members, "metrics", at: path, default: false)
        let plan = walker.optionalString(members, "plan", at: path)
        if let plan, plans[plan] == nil {
            let known = plans.keys.sorted().joined(separator: ", ")
            walker.report("\(path).plan", "unknown plan \"\(plan.prefix(64))\" (known: \(known.isEmpty ? "none defined in pricing.plans" : known))")
        }
        var key = KeyConfig(
            id: id, secretSHA256: hash, tier: tier, limits: ownLimits, models: models, defaultOutputTokens: defaultOutputTokens,
            expiresAt: expiresAt, previousSecrets: previousSecrets, metrics: metrics,
            previousResponseAllowanceTokens: previousResponseAllowance
        )
        key.plan = plan
        if let team = walker.optionalString(members, "team", at: path) {
            if teamNames.contains(team) {
                key.team = team
            } else {
                let known = teamNames.sorted().joined(separator: ", ")
                walker.report("\(path).team", "unknown team \"\(team.prefix(64))\" (known: \(known.isEmpty ? "none defined in teams" : known))")
            }
        }
        return key
    }

    /// One `previous_secrets` entry: a hash and its (required) expiry.
    mutating func readPreviousSecret(_ value: ConfigJSON, at path: String) -> KeyConfig.PreviousSecret? {
        guard let members = walker.object(value, at: path) else { return nil }
        walker.rejectUnknownFields(members, known: Self.previousSecretFields, forbidden: Self.inlineKeySecretFields, at: path)
        var hash = walker.string(members, "secret_sha256", at: path)
        if let found = hash, !Self.isLowercaseSHA256Hex(found) {
            walker.report("\(path).secret_sha256", "must be the SHA-256 of the secret as 64 lowercase hex characters, found \(found.utf8.count) characters")
            hash = nil
        }
        if members["expires_at"]?.isNull ?? true {
            walker.report("\(path).expires_at", "missing (required): when this old secret stops authenticating")
        }
        guard let hash, let expiresAt = readTimestamp(members, "expires_at", at: path) else { return nil }
        return KeyConfig.PreviousSecret(secretSHA256: hash, expiresAt: expiresAt)
    }

    /// An optional RFC 3339 UTC time: absent or `null` → `nil`.
    mutating func readTimestamp(_ members: [String: ConfigJSON], _ name: String, at path: String) -> UTCTimestamp? {
        guard let text = walker.optionalString(members, name, at: path) else { return nil }
        guard let timestamp = UTCTimestamp(rfc3339: text) else {
            walker.report(ConfigWalker.member(path, name), "expected an RFC 3339 UTC time such as \"2027-01-31T00:00:00Z\", found \"\(text)\"")
            return nil
        }
        return timestamp
    }

    static func isLowercaseSHA256Hex(_ string: String) -> Bool {
        string.utf8.count == 64 && string.utf8.allSatisfy { byte in
            (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains(byte)
        }
    }

    // MARK: redis

    mutating func readRedis(_ value: ConfigJSON, at path: String) -> RedisConfig? {
        guard let members = walker.object(value, at: path) else { return nil }
        walker.rejectUnknownFields(members, known: Self.redisFields, forbidden: Self.inlineRedisSecretFields, at: path)
        var redis: RedisConfig?
        if let seeds = members["cluster_nodes"] {
            if members["url"] != nil {
                walker.report("\(path).url", "give either url (one Redis) or cluster_nodes (a Redis Cluster), not both")
            }
            redis = readClusterSeeds(seeds, at: "\(path).cluster_nodes")
        } else if let url = walker.string(members, "url", at: path) {
            switch RedisURL.parse(url) {
            case .success(let parsed): redis = parsed
            case .failure(let problem): walker.report("\(path).url", problem.message)
            }
        }

        let urlField = members["cluster_nodes"] != nil ? "\(path).cluster_nodes" : "\(path).url"
        let tlsSettings = members["tls"].flatMap { $0.isNull ? nil : readRedisTLS($0, at: "\(path).tls") }
        if let tlsSettings, var server = redis {
            if server.tls == nil {
                walker.report("\(path).tls", "TLS settings given, but \(urlField) is a plain redis:// URL: write rediss:// to connect with TLS, or remove \"tls\"")
            } else {
                server.tls = tlsSettings
                redis = server
            }
        }

        if let passwordEnv = walker.optionalString(members, "password_env", at: path) {
            let password = secretFromEnvironment(named: passwordEnv, at: "\(path).password_env")
            if redis?.password != nil {
                walker.report("\(path).password_env", "\(urlField) holds a password too: give the password in one place only (the URL's is not shown)")
            } else if let password {
                redis?.password = password
            }
        } else if let server = redis, server.username != nil, server.password == nil {
            // The user name is not echoed: a password written without its colon ("pw@host") looks the same.
            walker.report(urlField, "names an ACL user but no password: write user:password@, or name the environment variable holding the password in \"password_env\"")
        }
        // Every seed of a cluster is reached like the first (the seeds agree on scheme and user).
        if var server = redis, !server.clusterNodes.isEmpty {
            server.clusterNodes = server.clusterNodes.map { seed in
                var seed = seed
                seed.tls = server.tls
                seed.password = server.password
                return seed
            }
            redis = server
        }

        var onFailure = RedisConfig.defaultFailurePolicy
        if let policyName = walker.string(members, "on_failure", at: path, default: RedisConfig.defaultFailurePolicy.rawValue) {
            if let policy = RedisConfig.FailurePolicy(rawValue: policyName) {
                onFailure = policy
            } else {
                let known = RedisConfig.FailurePolicy.allCases.map(\.rawValue).joined(separator: ", ")
                walker.report("\(path).on_failure", "unknown policy \"\(policyName)\" (known: \(known))")
            }
        }
        let fallbackNodeCount = walker.integer(members, "fallback_node_count", at: path, default: RedisConfig.defaultFallbackNodeCount, range: 1...1024)
        redis?.onFailure = onFailure
        redis?.fallbackNodeCount = fallbackNodeCount
        redis?.usageStream = walker.boolean(members, "usage_stream", at: path, default: false)
        return redis
    }

    /// `cluster_nodes`: seed URLs of one cluster, so they must agree on everything but the address;
    /// the first one, with the list, becomes the config.
    private mutating func readClusterSeeds(_ value: ConfigJSON, at path: String) -> RedisConfig? {
        guard let elements = walker.array(value, at: path) else { return nil }
        guard (1...Self.maximumClusterSeeds).contains(elements.count) else {
            walker.report(path, "list 1 to \(Self.maximumClusterSeeds) seed URLs (any nodes of the cluster; Sluice finds the rest), found \(elements.count)")
            return nil
        }
        var seeds: [RedisConfig] = []
        for (index, element) in elements.enumerated() {
            let elementPath = "\(path)[\(index)]"
            guard case .string(let url) = element else {
                walker.report(elementPath, "expected a redis:// or rediss:// URL string, found \(element.kindDescription)")
                continue
            }
            switch RedisURL.parse(url) {
            case .success(let seed):
                if seed.database != 0 {
                    walker.report(elementPath, "a Redis Cluster has only database 0; remove /\(seed.database)")
                } else if let first = seeds.first, !first.sameServerSettings(as: seed) {
                    walker.report(elementPath, "every seed must use the same scheme and credentials as the first (they are one cluster)")
                } else if seeds.contains(where: { $0.host == seed.host && $0.port == seed.port }) {
                    walker.report(elementPath, "listed twice")
                } else {
                    seeds.append(seed)
                }
            case .failure(let problem):
                walker.report(elementPath, problem.message)
            }
        }
        guard var config = seeds.first else { return nil }
        config.clusterNodes = seeds
        return config
    }

    /// Field names that would put the Redis password into the file.
    static let inlineRedisSecretFields: [String: String] = {
        let message = "the password must not be a field of its own: name the environment variable holding it in \"password_env\" (or put it in the URL)"
        return Dictionary(uniqueKeysWithValues: ["password", "pass", "auth", "secret"].map { ($0, message) })
    }()

    /// The `redis.tls` object: the settings every `rediss://` address of the section is reached
    /// with. `nil` when it is not an object (reported).
    mutating func readRedisTLS(_ value: ConfigJSON, at path: String) -> RedisTLSConfig? {
        guard let members = walker.object(value, at: path) else { return nil }
        walker.rejectUnknownFields(members, known: Self.redisTLSFields, at: path)
        var tls = RedisTLSConfig()
        tls.caFile = readTLSFile(members, "ca_file", at: path)
        tls.certificateFile = readTLSFile(members, "cert_file", at: path)
        tls.keyFile = readTLSFile(members, "key_file", at: path)
        let certificateGiven = members["cert_file"].map { !$0.isNull } ?? false
        let keyGiven = members["key_file"].map { !$0.isNull } ?? false
        if certificateGiven != keyGiven {
            let (missing, given) = certificateGiven ? ("key_file", "cert_file") : ("cert_file", "key_file")
            walker.report(ConfigWalker.member(path, missing), "missing: \(given) and \(missing) go together (the client certificate for mutual TLS and its private key)")
        }
        if let serverName = walker.optionalString(members, "server_name", at: path) {
            if Self.isIPAddress(serverName) {
                walker.report("\(path).server_name", "must be a host name, found the IP address \"\(serverName)\": to check a certificate for an IP address, put that address in the URL and leave server_name out")
            } else if !Self.isHostName(serverName) {
                walker.report("\(path).server_name", "must be a host name (letters, digits, '-' and '.', at most 253 characters), found \"\(serverName)\"")
            } else {
                tls.serverName = serverName
            }
        }
        tls.verifyCertificate = walker.boolean(members, "verify", at: path, default: true)
        return tls
    }

    /// An optional PEM file path of `redis.tls` (or `upstreams[].tls`), reported when it names no
    /// readable file (with the path, never the content).
    mutating func readTLSFile(_ members: [String: ConfigJSON], _ name: String, at path: String) -> String? {
        guard let file = walker.optionalString(members, name, at: path) else { return nil }
        guard requireMachineSecrets else { return file }
        let fieldPath = ConfigWalker.member(path, name)
        var isDirectory: ObjCBool = false
        if !FileManager.default.fileExists(atPath: file, isDirectory: &isDirectory) {
            walker.report(fieldPath, "file \"\(file)\" does not exist")
        } else if isDirectory.boolValue {
            walker.report(fieldPath, "\"\(file)\" is a directory, not a PEM file")
        } else if !FileManager.default.isReadableFile(atPath: file) {
            walker.report(fieldPath, "file \"\(file)\" is not readable by this process")
        }
        return file
    }

    /// Larger CA files are refused (a system bundle of every public CA is about 200 KB).
    static let maximumCAFileBytes = 16 * 1024 * 1024

    /// An optional PEM file of CA certificates (`upstreams[].tls.ca_file`): a readable file (as
    /// ``readTLSFile(_:_:at:)``) that holds at least one certificate, so that a key or an empty file
    /// given by mistake is found at load instead of failing every connection.
    mutating func readCAFile(_ members: [String: ConfigJSON], _ name: String, at path: String) -> String? {
        let problemsBefore = walker.problems.count
        guard let file = readTLSFile(members, name, at: path) else { return nil }
        guard requireMachineSecrets, walker.problems.count == problemsBefore else { return file }
        let fieldPath = ConfigWalker.member(path, name)
        guard let handle = FileHandle(forReadingAtPath: file) else {
            walker.report(fieldPath, "file \"\(file)\" is not readable by this process")
            return file
        }
        defer { try? handle.close() }
        let data = (try? handle.read(upToCount: Self.maximumCAFileBytes + 1)) ?? Data()
        if data.count > Self.maximumCAFileBytes {
            walker.report(fieldPath, "file \"\(file)\" is larger than \(Self.maximumCAFileBytes) bytes: not a PEM bundle of CA certificates")
        } else if data.range(of: Data("-----BEGIN CERTIFICATE-----".utf8)) == nil {
            walker.report(fieldPath, "file \"\(file)\" holds no PEM certificate (-----BEGIN CERTIFICATE-----): give the CA certificates the upstream's certificate chains to")
        }
        return file
    }

    /// Whether `text` is an IPv4 or IPv6 address (which TLS cannot send as a server name).
    static func isIPAddress(_ text: String) -> Bool {
        var ipv4 = in_addr()
        var ipv6 = in6_addr()
        return inet_pton(AF_INET, text, &ipv4) == 1 || inet_pton(AF_INET6, text, &ipv6) == 1
    }

    /// Whether `text` is a DNS host name: labels of letters, digits and `-` (and `_`, which some
    /// internal names carry) separated by dots, at most 253 bytes.
    static func isHostName(_ text: String) -> Bool {
        guard (1...253).contains(text.utf8.count) else { return false }
        return text.split(separator: ".", omittingEmptySubsequences: false).allSatisfy { label in
            (1...63).contains(label.utf8.count) && label.utf8.allSatisfy { byte in
                switch byte {
                case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
                     UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "-"), UInt8(ascii: "_"):
                    true
                default:
                    false
                }
            }
        }
    }
}
