import NIOPosix
import Prometheus
import SluiceCore
import SluiceRedis
import SluiceUpstream
import Synchronization

/// The gateway's metrics, in a Prometheus registry of its own (not a process-global bootstrap, so
/// several gateways can live in one test process), served by the admin listener's `/metrics`.
///
/// Every family has HELP text (``MetricFamily``); label values are stable snake_case words or
/// bounded values from the config. Routes, upstreams, keys and models come from the config: the
/// callers pass as `model` the config entry that routed the request (`gpt-4o`, or the pattern
/// `gpt-4o*` for a name it matched), never a name a client sent; a model a key may not use is
/// refused before anything is recorded under its name.
public final class GatewayMetrics: Sendable {
    let registry: PrometheusCollectorRegistry
    private let openConnections: @Sendable () -> Int
    private let runningTasks: @Sendable () -> Int
    private let pendingSettlements: @Sendable () -> Int
    private let limiterStatistics: @Sendable () -> LimiterStatistics?
    /// Whether `/metrics` ends with the `process_*` families read from `/proc/self`.
    private let processMetrics: Bool
    /// The statistics' values at the last scrape: counters advance by the difference.
    private let lastLimiterCounts = Mutex<[LimiterStatistics.Event: Int]>([:])
    private let connectionsGauge: Prometheus.Gauge
    private let tasksGauge: Prometheus.Gauge
    private let pendingSettlementsGauge: Prometheus.Gauge
    private let readyGauge: Prometheus.Gauge
    private let limiterCallDuration: DurationHistogram
    private let cache = Mutex<[HandleKey: AnyObject]>([:])
    /// `sluice_config_info{sha256="…"} 1` for the config in force; replaced, not added to, by a reload.
    private let configInfo = Mutex<Prometheus.Gauge?>(nil)
    /// The per-request handles, found again per thread without the shared lock (see ``HotHandles``).
    private let hot = ThreadSpecificVariable<HotHandles>()

    /// - Parameters:
    ///   - runningTasks: request tasks not finished yet (a response may have ended before its task:
    ///     it settles after). One that never comes down is a request that hangs.
    ///   - pendingSettlements: settlements the shared limiter has not taken yet (retried).
    ///   - limiterStatistics: what the Redis limiter's lanes did (nil without Redis).
    ///   - version: `sluice_build_info{version}`.
    ///   - processMetrics: append the `process_*` families (read from `/proc/self`) to each scrape.
    public init(
        openConnections: @escaping @Sendable () -> Int = { 0 },
        runningTasks: @escaping @Sendable () -> Int = { 0 },
        pendingSettlements: @escaping @Sendable () -> Int = { 0 },
        limiterStatistics: @escaping @Sendable () -> LimiterStatistics? = { nil },
        version: String = "unknown",
        processMetrics: Bool = true
    ) {
        registry = PrometheusCollectorRegistry()
        self.openConnections = openConnections
        self.runningTasks = runningTasks
        self.pendingSettlements = pendingSettlements
        self.limiterStatistics = limiterStatistics
        self.processMetrics = processMetrics
        connectionsGauge = registry.makeGauge(name: MetricFamily.openConnections.name, labels: [], help: MetricFamily.openConnections.help)
        tasksGauge = registry.makeGauge(name: MetricFamily.requestTasks.name, labels: [], help: MetricFamily.requestTasks.help)
        pendingSettlementsGauge = registry.makeGauge(
            name: MetricFamily.pendingSettlements.name, labels: [], help: MetricFamily.pendingSettlements.help
        )
        readyGauge = registry.makeGauge(name: MetricFamily.ready.name, labels: [], help: MetricFamily.ready.help)
        readyGauge.set(to: 1)
        limiterCallDuration = registry.makeDurationHistogram(
            name: MetricFamily.limiterCallDuration.name, labels: [], buckets: Self.durationBuckets, help: MetricFamily.limiterCallDuration.help
        )
        registry.makeGauge(name: MetricFamily.buildInfo.name, labels: [("version", version)], help: MetricFamily.buildInfo.help).set(to: 1)
        // Both results from the start, at 0: a rate over a series that appears late misses its first count.
        for result in [ConfigStatus.LastReload.ok, .refused] {
            _ = counter(.configReloads, [("result", result.rawValue)])
        }
    }

    // MARK: Buckets

    /// Request and upstream durations: 250 µs to a minute.
    static let durationBuckets: [Duration] = [
        .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5),
        .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250),
        .milliseconds(500), .seconds(1), .seconds(2.5), .seconds(5), .seconds(10), .seconds(30), .seconds(60),
    ]

    /// OpenTelemetry's GenAI semantic conventions' advice, for the `gen_ai_*` families.
    static let tokenBuckets: [Double] = [1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262_144, 1_048_576, 4_194_304, 16_777_216, 67_108_864]
    static let genAIDurationBuckets: [Duration] = [0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92].map { .seconds($0) }
    static let timeToFirstTokenBuckets: [Duration] = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0].map { .seconds($0) }
    static let timePerOutputTokenBuckets: [Duration] = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5].map { .seconds($0) }

    // MARK: Per request

    /// A request finished: its count and duration; for the proxy routes also the time Sluice added
    /// (`duration` minus `upstreamTime`, the exchange with the upstream; all of it when none happened).
    func requestFinished(route: String, status: Int, model: String?, duration: Duration, proxied: Bool = false, upstreamTime: Duration? = nil) {
        let hot = hotHandles()
        let requestKey = HotHandles.RequestKey(route: route, status: status, model: model)
        let requests = hot.requests[requestKey] ?? {
            let handle = counter(.requests, [("route", route), ("status", String(status)), ("model", model ?? "")])
            hot.requests[requestKey] = handle
            return handle
        }()
        requests.increment()
        let durationHandle = hot.durations[route] ?? {
            let handle = durationHistogram(.requestDuration, [("route", route)], buckets: Self.durationBuckets)
            hot.durations[route] = handle
            return handle
        }()
        durationHandle.record(duration)
        guard proxied else { return }
        let added = hot.addedLatency[route] ?? {
            let handle = durationHistogram(.addedLatency, [("route", route)], buckets: Self.durationBuckets)
            hot.addedLatency[route] = handle
            return handle
        }()
        added.record(max(duration - (upstreamTime ?? .zero), .zero))
    }

    func tokens(keyID: String, model: String, prompt: Int, completion: Int) {
        let hot = hotHandles()
        let tokensKey = HotHandles.TokensKey(keyID: keyID, model: model)
        let handles = hot.tokens[tokensKey] ?? {
            let handles = (
                prompt: counter(.promptTokens, [("key", keyID), ("model", model)]),
                completion: counter(.completionTokens, [("key", keyID), ("model", model)])
            )
            hot.tokens[tokensKey] = handles
            return handles
        }()
        handles.prompt.increment(by: Int64(prompt))
        handles.completion.increment(by: Int64(completion))
    }

    /// Label value of `key` in the spend families for keys without `"metrics": true`: their spend is
    /// summed per model under it (no key id is empty, so it names no key).
    static let unlistedKeyLabel = ""

    /// A settled request's cost: `sluice_spend_usd_total{key,model}` grows by a known cost,
    /// `sluice_spend_unknown_requests_total{key,model}` counts an unknown one. `key` is the key's id
    /// only for keys that export their metrics (`keys[].metrics`), else ``unlistedKeyLabel``.
    func spend(keyID: String, exportsMetrics: Bool, model: String, cost: RequestCost) {
        let key = exportsMetrics ? keyID : Self.unlistedKeyLabel
        switch cost {
        case .known(let amount):
            // Nano-dollars as a counter's float: the metric displays spend, nothing is charged from it.
            counter(.spend, [("key", key), ("model", model)]).increment(by: Double(amount.nanos) / Double(USDAmount.nanosPerDollar))
        case .unknown:
            counter(.spendUnknown, [("key", key), ("model", model)]).increment()
        }
    }

    /// One answered model request as OpenTelemetry's GenAI conventions count it. `operation` is
    /// `chat`, `text_completion` or `embeddings`; `model` the config entry that routed it.
    /// `timeToFirstToken` and `timePerOutputToken` are for streams only (nil otherwise).
    func genAIRequest(operation: String, model: String, inputTokens: Int, outputTokens: Int?, duration: Duration, timeToFirstToken: Duration?, timePerOutputToken: Duration?) {
        let hot = hotHandles()
        let key = HotHandles.TokensKey(keyID: operation, model: model)
        let handles = hot.genAI[key] ?? {
            let labels = [("gen_ai_operation_name", operation), ("gen_ai_request_model", model)]
            let handles = HotHandles.GenAIHandles(
                input: valueHistogram(.genAITokenUsage, labels + [("gen_ai_token_type", "input")], buckets: Self.tokenBuckets),
                output: valueHistogram(.genAITokenUsage, labels + [("gen_ai_token_type", "output")], buckets: Self.tokenBuckets),
                duration: durationHistogram(.genAIRequestDuration, labels, buckets: Self.genAIDurationBuckets),
                timeToFirstToken: durationHistogram(.genAITimeToFirstToken, labels, buckets: Self.timeToFirstTokenBuckets),
                timePerOutputToken: durationHistogram(.genAITimePerOutputToken, labels, buckets: Self.timePerOutputTokenBuckets)
            )
            hot.genAI[key] = handles
            return handles
        }()
        handles.input.record(Double(inputTokens))
        if let outputTokens { handles.output.record(Double(outputTokens)) }
        handles.duration.record(duration)
        if let timeToFirstToken { handles.timeToFirstToken.record(timeToFirstToken) }
        if let timePerOutputToken { handles.timePerOutputToken.record(timePerOutputToken) }
    }

    /// One exchange with an upstream, from sending the request to its last byte (or its failure):
    /// its duration by outcome, and the time to the response's head when one came.
    func upstreamExchange(upstream: String, outcome: UpstreamOutcome, duration: Duration, timeToFirstByte: Duration?) {
        let hot = hotHandles()
        let key = HotHandles.ExchangeKey(upstream: upstream, outcome: outcome)
        let histogram = hot.exchanges[key] ?? {
            let handle = durationHistogram(.upstreamRequestDuration, [("upstream", upstream), ("outcome", outcome.rawValue)], buckets: Self.durationBuckets)
            hot.exchanges[key] = handle
            return handle
        }()
        histogram.record(duration)
        if let timeToFirstByte {
            let ttfb = hot.timeToFirstByte[upstream] ?? {
                let handle = durationHistogram(.upstreamTimeToFirstByte, [("upstream", upstream)], buckets: Self.durationBuckets)
                hot.timeToFirstByte[upstream] = handle
                return handle
            }()
            ttfb.record(timeToFirstByte)
        }
    }

    /// A response head came from the upstream, on `httpVersion`.
    func upstreamResponse(upstream: String, httpVersion: UpstreamConnectionInfo.HTTPVersion) {
        let hot = hotHandles()
        let key = HotHandles.TokensKey(keyID: upstream, model: httpVersion.rawValue)
        let responses = hot.responses[key] ?? {
            let handle = counter(.upstreamResponses, [("upstream", upstream), ("http_version", httpVersion.rawValue)])
            hot.responses[key] = handle
            return handle
        }()
        responses.increment()
    }

    /// How long an exchange waited for one of its upstream's connections (0 when one was free).
    func upstreamQueueWait(upstream: String, waited: Duration) {
        durationHistogram(.upstreamQueueWait, [("upstream", upstream)], buckets: Self.durationBuckets).record(waited)
    }

    /// A failed attempt after which the request is tried again.
    func upstreamRetry(upstream: String, reason: UpstreamOutcome) {
        counter(.upstreamRetries, [("upstream", upstream), ("reason", reason.rawValue)]).increment()
    }

    /// A request sent on to a fallback model (labels: the config's entries, see `metricLabel(forModel:)`).
    func modelFallback(model: String, fallback: String, reason: String) {
        counter(.modelFallbacks, [("model", model), ("fallback", fallback), ("reason", reason)]).increment()
    }

    /// What the limiter said a key has left (keys with `"metrics": true` only: the callers check).
    func keyRemaining(keyID: String, snapshot: RateLimitSnapshot) {
        if let requests = snapshot.remainingRequests { remainingGauge(keyID, .requests).set(to: Double(requests)) }
        if let tokens = snapshot.remainingTokens { remainingGauge(keyID, .tokens).set(to: Double(tokens)) }
    }

    private func remainingGauge(_ keyID: String, _ limit: RateLimitKind) -> Prometheus.Gauge {
        let hot = hotHandles()
        let key = HotHandles.TokensKey(keyID: keyID, model: limit.rawValue)
        if let gauge = hot.remaining[key] { return gauge }
        let gauge = gauge(.keyRemaining, [("key", keyID), ("limit", limit.metricLabel)])
        hot.remaining[key] = gauge
        return gauge
    }

    func rateLimited(kind: RateLimitKind, keyID: String) {
        counter(.rateLimited, [("limit", kind.metricLabel), ("key", keyID)]).increment()
    }

    /// An upstream reported more completion tokens than the request allowed (charged at the bound).
    func implausibleUsage(upstream: String) {
        counter(.implausibleUsage, [("upstream", upstream)]).increment()
    }

    func upstreamError(upstream: String, kind: UpstreamOutcome) {
        counter(.upstreamErrors, [("upstream", upstream), ("kind", kind.rawValue)]).increment()
    }

    // MARK: Limiter

    /// With a shared limiter: every failure reason's series from the start, at 0 (a rate over a
    /// series born at its first failure misses that failure, and a burst within one scrape is lost).
    func sharedLimiterConfigured() {
        for reason in LimiterCallFailure.allCases { _ = counter(.limiterCallFailures, [("reason", reason.rawValue)]) }
    }

    /// One call to the shared limiter store, as the node waited for it; `failure` when it failed.
    @Sendable func limiterCall(micros: Int64, failure: LimiterCallFailure?) {
        limiterCallDuration.record(.microseconds(max(micros, 0)))
        if let failure {
            counter(.limiterCallFailures, [("reason", failure.rawValue)]).increment()
        }
    }

    /// Which limiter mode this node is in: 1 for the current mode, 0 for the others.
    func limiterMode(_ current: String) {
        for mode in ["embedded", "redis", "local", "open", "closed"] {
            gauge(.limiterMode, [("mode", mode)]).set(to: mode == current ? 1 : 0)
        }
    }

    // MARK: Config

    /// A config reload finished: `ok` (applied) or `refused` (the file was not valid; nothing changed).
    func configReloaded(_ result: ConfigStatus.LastReload) {
        counter(.configReloads, [("result", result.rawValue)]).increment()
    }

    /// The config in force is now the file with this SHA-256: `sluice_config_info` holds this hash
    /// alone (its first 12 hex digits, as `/readyz` shows them), so comparing nodes is one query.
    func configInForce(sha256: String) {
        configInfo.withLock { gauge in
            if let gauge { registry.unregisterGauge(gauge) }
            let next = registry.makeGauge(name: MetricFamily.configInfo.name, labels: [("sha256", String(sha256.prefix(12)))], help: MetricFamily.configInfo.help)
            next.set(to: 1.0)
            gauge = next
        }
    }

    // MARK: Scrape

    /// What only the gateway knows at scrape time.
    struct ScrapeState {
        var ready: Bool
        /// Each configured upstream's name and whether its circuit is open now.
        var circuits: [(upstream: String, open: Bool)]
        /// Each upstream's exchanges waiting for a connection now.
        var queued: [(upstream: String, queued: Int)] = []
    }

    /// Prometheus text exposition of everything recorded so far.
    public func exposition() -> [UInt8] {
        exposition(nil)
    }

    func exposition(_ state: ScrapeState?) -> [UInt8] {
        connectionsGauge.set(to: Double(openConnections()))
        tasksGauge.set(to: Double(runningTasks()))
        pendingSettlementsGauge.set(to: Double(pendingSettlements()))
        if let state {
            readyGauge.set(to: state.ready ? 1 : 0)
            for circuit in state.circuits {
                gauge(.circuitOpen, [("upstream", circuit.upstream)]).set(to: circuit.open ? 1 : 0)
            }
            for queue in state.queued {
                gauge(.upstreamQueued, [("upstream", queue.upstream)]).set(to: Double(queue.queued))
            }
        }
        if let statistics = limiterStatistics() { recordLimiter(statistics) }
        var bytes = registry.emitToBuffer()
        if processMetrics, let process = ProcessMetrics.read() {
            bytes.append(contentsOf: process.exposition().utf8)
        }
        return bytes
    }

    /// `sluice_limiter_admissions_total{path}` (leased: against this node's lease, no call; redis:
    /// decided in a call; remembered_denial: denied from a recent denial, no call) and
    /// `sluice_limiter_calls_total{result}` (ok, lost: reply never came, resolved by the next call;
    /// failed: certainly not run).
    private func recordLimiter(_ statistics: LimiterStatistics) {
        let series: [(LimiterStatistics.Event, MetricFamily, (String, String))] = [
            (.leasedAdmissions, .limiterAdmissions, ("path", "leased")),
            (.redisAdmissions, .limiterAdmissions, ("path", "redis")),
            (.rememberedDenials, .limiterAdmissions, ("path", "remembered_denial")),
            (.calls, .limiterCalls, ("result", "ok")),
            (.lostCalls, .limiterCalls, ("result", "lost")),
            (.failedCalls, .limiterCalls, ("result", "failed")),
        ]
        let deltas = lastLimiterCounts.withLock { last in
            series.map { event, _, _ in
                let now = statistics[event]
                defer { last[event] = now }
                return max(now - (last[event] ?? 0), 0)
            }
        }
        for ((_, family, dimension), delta) in zip(series, deltas) {
            counter(family, [dimension]).increment(by: Int64(delta))
        }
    }

    // MARK: Handles

    /// Metric handles are looked up once per label set and kept: creating one per request would go
    /// through the registry's lock and allocate every time.
    private func hotHandles() -> HotHandles {
        hot.valueForThisThread(orMake: HotHandles.init)
    }

    private func counter(_ family: MetricFamily, _ labels: [(String, String)]) -> Prometheus.Counter {
        cached(family, labels) { registry.makeCounter(name: family.name, labels: labels, help: family.help) }
    }

    private func gauge(_ family: MetricFamily, _ labels: [(String, String)]) -> Prometheus.Gauge {
        cached(family, labels) { registry.makeGauge(name: family.name, labels: labels, help: family.help) }
    }

    private func durationHistogram(_ family: MetricFamily, _ labels: [(String, String)], buckets: [Duration]) -> DurationHistogram {
        cached(family, labels) { registry.makeDurationHistogram(name: family.name, labels: labels, buckets: buckets, help: family.help) }
    }

    private func valueHistogram(_ family: MetricFamily, _ labels: [(String, String)], buckets: [Double]) -> ValueHistogram {
        cached(family, labels) { registry.makeValueHistogram(name: family.name, labels: labels, buckets: buckets, help: family.help) }
    }

    /// Label names differ between families, so one cache keyed by family and labels serves all.
    private func cached<Handle: AnyObject>(_ family: MetricFamily, _ labels: [(String, String)], make: () -> Handle) -> Handle {
        let cacheKey = HandleKey(family: family, labels: labels)
        return cache.withLock { cache in
            if let handle = cache[cacheKey] as? Handle { return handle }
            let handle = make()
            cache[cacheKey] = handle
            return handle
        }
    }
}

/// A handle's family and label set, compared and hashed as they are (a key built by concatenating
/// them allocated a string or two per metric update).
private struct HandleKey: Hashable {
    let family: MetricFamily
    let labels: [(String, String)]

    static func == (lhs: HandleKey, rhs: HandleKey) -> Bool {
        lhs.family == rhs.family && lhs.labels.elementsEqual(rhs.labels, by: ==)
    }

    func hash(into hasher: inout Hasher) {
        hasher.combine(family)
        for (name, value) in labels {
            hasher.combine(name)
            hasher.combine(value)
        }
    }
}

/// Every metric family the registry holds: its name and HELP text (one text per name: the registry
/// refuses a second, different one). The `process_*` families are written by ``ProcessMetrics``.
enum MetricFamily: String, CaseIterable {
    case requests = "sluice_requests_total"
    case requestDuration = "sluice_request_duration_seconds"
    case addedLatency = "sluice_added_latency_seconds"
    case promptTokens = "sluice_prompt_tokens_total"
    case completionTokens = "sluice_completion_tokens_total"
    case spend = "sluice_spend_usd_total"
    case spendUnknown = "sluice_spend_unknown_requests_total"
    case rateLimited = "sluice_rate_limited_total"
    case upstreamErrors = "sluice_upstream_errors_total"
    case upstreamRequestDuration = "sluice_upstream_request_duration_seconds"
    case upstreamTimeToFirstByte = "sluice_upstream_time_to_first_byte_seconds"
    case circuitOpen = "sluice_upstream_circuit_open"
    case upstreamQueued = "sluice_upstream_queued_requests"
    case upstreamQueueWait = "sluice_upstream_queue_wait_seconds"
    case upstreamRetries = "sluice_upstream_retries_total"
    case modelFallbacks = "sluice_model_fallbacks_total"
    case upstreamResponses = "sluice_upstream_responses_total"
    case implausibleUsage = "sluice_implausible_usage_total"
    case limiterMode = "sluice_limiter_mode"
    case pendingSettlements = "sluice_limiter_pending_settlements"
    case limiterAdmissions = "sluice_limiter_admissions_total"
    case limiterCalls = "sluice_limiter_calls_total"
    case limiterCallDuration = "sluice_limiter_call_duration_seconds"
    case limiterCallFailures = "sluice_limiter_call_failures_total"
    case keyRemaining = "sluice_key_remaining"
    case openConnections = "sluice_open_connections"
    case requestTasks = "sluice_request_tasks"
    case ready = "sluice_ready"
    case buildInfo = "sluice_build_info"
    case configInfo = "sluice_config_info"
    case configReloads = "sluice_config_reloads_total"
    case genAITokenUsage = "gen_ai_client_token_usage"
    case genAIRequestDuration = "gen_ai_server_request_duration_seconds"
    case genAITimeToFirstToken = "gen_ai_server_time_to_first_token_seconds"
    case genAITimePerOutputToken = "gen_ai_server_time_per_output_token_seconds"

    var name: String { rawValue }

    var help: String {
        switch self {
        case .requests: "Requests answered, by route, HTTP status and model (the config entry that routed it)."
        case .requestDuration: "Time from a request's arrival to the end of its response, by route."
        case .addedLatency: "Time Sluice itself added to a proxied request: its duration minus the upstream exchange's."
        case .promptTokens: "Prompt tokens charged, by key and model."
        case .completionTokens: "Completion tokens charged, by key and model."
        case .spend: "USD spent (the settled requests' costs at the configured prices), by key (keys with metrics on; the others summed under key=\"\") and model."
        case .spendUnknown: "Settled requests whose cost is unknown (no price, or a price needing the month's position), by key (as sluice_spend_usd_total) and model."
        case .rateLimited: "Requests refused with 429 by a key's limit, by limit and key."
        case .upstreamErrors: "Upstream exchanges that failed, by upstream and kind (the outcome words of sluice_upstream_request_duration_seconds)."
        case .upstreamRequestDuration: "One exchange with an upstream, from sending the request to its last byte or its failure, by upstream and outcome."
        case .upstreamTimeToFirstByte: "Time from sending a request upstream to the response's head, by upstream."
        case .upstreamQueued: "Exchanges waiting for one of the upstream's max_connections (its connection pool is exhausted), by upstream."
        case .upstreamQueueWait: "Time an exchange waited for one of the upstream's max_connections (0 when one was free), by upstream."
        case .upstreamRetries: "Failed attempts at an upstream deployment after which the request was tried again (there or on another deployment), by upstream and the failure (reason: the outcome words of sluice_upstream_request_duration_seconds)."
        case .modelFallbacks: "Requests sent on to a fallback model, by model, fallback and reason (exhausted: every attempt at the model failed; context_window: the upstream said the prompt does not fit)."
        case .upstreamResponses: "Response heads received from an upstream, by upstream and the HTTP version they came on (1.1, 2)."
        case .circuitOpen: "1 while the upstream's circuit breaker refuses requests (open or probing), else 0."
        case .implausibleUsage: "Answers whose reported completion tokens exceeded what the request allowed (charged at the bound)."
        case .limiterMode: "1 for the way this node enforces limits now (embedded, redis, or a failure policy: local, open, closed), 0 for the others."
        case .pendingSettlements: "Settlements the shared limiter has not taken yet (retried in the background)."
        case .limiterAdmissions: "Admissions by how they were decided: leased (this node's lease), redis (a call), remembered_denial."
        case .limiterCalls: "Calls to the shared limiter by result: ok, lost (reply never came), failed (certainly not run)."
        case .limiterCallDuration: "One call to the shared limiter (Redis), as the node waited for it."
        case .limiterCallFailures: "Calls to the shared limiter that failed, by reason."
        case .keyRemaining: "What a key has left in its per-minute limit as the limiter last said (keys with \"metrics\": true only)."
        case .openConnections: "Client connections open on the public listener."
        case .requestTasks: "Request tasks still running (a task may outlive its response while it settles)."
        case .ready: "1 while /readyz says ready, 0 while the node drains."
        case .buildInfo: "1, labelled with the version of Sluice running."
        case .configInfo: "1 for the config in force, labelled with the first 12 hex digits of its file's SHA-256."
        case .configReloads: "Config reloads by result: ok (applied) or refused (invalid, nothing changed)."
        case .genAITokenUsage: "Tokens per answered model request, by operation, model and token type (input, output)."
        case .genAIRequestDuration: "Time the model took for an answered request (the upstream exchange), by operation and model."
        case .genAITimeToFirstToken: "Time from sending a streamed request upstream to its first chunk, by operation and model."
        case .genAITimePerOutputToken: "Time per output token after the first of a streamed answer, by operation and model."
        }
    }
}

/// How one exchange with an upstream ended: the `outcome` label of
/// `sluice_upstream_request_duration_seconds`, and (all but `ok` and `cancelled`) the `kind` of
/// `sluice_upstream_errors_total`.
enum UpstreamOutcome: String, Sendable, Hashable, CaseIterable {
    /// A 1xx–3xx answer, relayed whole.
    case ok
    case http4xx = "http_4xx"
    case http429 = "http_429"
    case http5xx = "http_5xx"
    /// No connection: refused, unreachable, DNS, TLS.
    case connectFailed = "connect_failed"
    /// A deadline passed: connect, first byte or the whole request.
    case timeout
    /// The circuit breaker refused the request: it never left.
    case circuitOpen = "circuit_open"
    /// No byte for the stall timeout once the answer had started.
    case stalled
    /// The client went away first.
    case cancelled
    /// Not tried: its provider answered 429 with a retry-after that has not passed yet.
    case coolingDown = "cooling_down"
    /// Not tried: the deployment's own limits (`upstreams[].limits`) would be exceeded.
    case atLimit = "at_limit"
    /// No connection to the upstream came free within its queue_timeout_ms: answered 503.
    case queueTimeout = "queue_timeout"
    /// The connection broke before the answer was complete.
    case connectionDropped = "connection_dropped"
    /// Anything else (an oversized answer, the engine shutting down or overloaded).
    case other

    init(status: Int) {
        switch status {
        case 429: self = .http429
        case 400..<500: self = .http4xx
        case 500...: self = .http5xx
        default: self = .ok
        }
    }

    init(_ kind: UpstreamError.Kind) {
        switch kind {
        case .connectFailed: self = .connectFailed
        case .connectTimeout, .firstByteTimeout, .totalTimeout: self = .timeout
        case .stallTimeout: self = .stalled
        case .connectionDropped: self = .connectionDropped
        case .cancelled: self = .cancelled
        case .shuttingDown, .tooManyTransfers, .other: self = .other
        }
    }
}

extension RateLimitKind {
    /// The `limit` label: snake_case, stable (not the Swift case name).
    var metricLabel: String {
        switch self {
        case .requests: "requests"
        case .tokens: "tokens"
        case .inputTokens: "input_tokens"
        case .outputTokens: "output_tokens"
        case .concurrency: "concurrency"
        case .dailyTokens: "tokens_per_day"
        case .monthlyTokens: "tokens_per_month"
        case .dailyBudget: "usd_per_day"
        case .monthlyBudget: "usd_per_month"
        }
    }
}

/// One thread's references to the handles every request updates, keyed by their label values.
///
/// Why: finding a handle in the shared cache means building a string key and taking a lock all
/// event loops share, on every request. The handles themselves are the shared ones (created once
/// through that cache), so every thread updates the same series. The label values are bounded by
/// the config (routes, statuses, configured models, upstreams and keys), and so is this cache.
/// `@unchecked Sendable`: an instance is only ever reached through its own thread's slot.
private final class HotHandles: @unchecked Sendable {
    struct RequestKey: Hashable {
        let route: String
        let status: Int
        let model: String?
    }

    struct TokensKey: Hashable {
        let keyID: String
        let model: String
    }

    struct ExchangeKey: Hashable {
        let upstream: String
        let outcome: UpstreamOutcome
    }

    struct GenAIHandles {
        let input: ValueHistogram
        let output: ValueHistogram
        let duration: DurationHistogram
        let timeToFirstToken: DurationHistogram
        let timePerOutputToken: DurationHistogram
    }

    var requests: [RequestKey: Prometheus.Counter] = [:]
    var durations: [String: DurationHistogram] = [:]
    var addedLatency: [String: DurationHistogram] = [:]
    var tokens: [TokensKey: (prompt: Prometheus.Counter, completion: Prometheus.Counter)] = [:]
    /// Keyed by operation (in `keyID`) and model.
    var genAI: [TokensKey: GenAIHandles] = [:]
    var exchanges: [ExchangeKey: DurationHistogram] = [:]
    var timeToFirstByte: [String: DurationHistogram] = [:]
    /// Keyed by upstream (in `keyID`) and HTTP version (in `model`).
    var responses: [TokensKey: Prometheus.Counter] = [:]
    /// Keyed by key id and limit (in `model`).
    var remaining: [TokensKey: Prometheus.Gauge] = [:]
}
