import CoreMetrics
import Metrics
import NIOPosix
import Prometheus
import SluiceCore
import SluiceRedis
import Synchronization

/// The gateway's metrics, recorded through swift-metrics into a Prometheus registry of its own (not
/// the process-global bootstrap, so several gateways can live in one test process).
///
/// Label values are bounded: routes are fixed strings, keys and models come from the config. The
/// callers pass as `model` the config entry that routed the request (`gpt-4o`, or the pattern
/// `gpt-4o*` for a name it matched), never a name a client sent; a model a key may not use is
/// refused before anything is recorded under its name.
public final class GatewayMetrics: Sendable {
    let registry: PrometheusCollectorRegistry
    private let factory: PrometheusMetricsFactory
    private let openConnections: @Sendable () -> Int
    private let runningTasks: @Sendable () -> Int
    private let pendingSettlements: @Sendable () -> Int
    private let limiterStatistics: @Sendable () -> LimiterStatistics?
    /// The statistics' values at the last scrape: counters advance by the difference.
    private let lastLimiterCounts = Mutex<[LimiterStatistics.Event: Int]>([:])
    private let connectionsGauge: CoreMetrics.Gauge
    private let tasksGauge: CoreMetrics.Gauge
    private let pendingSettlementsGauge: CoreMetrics.Gauge
    private let cache = Mutex<[String: AnyObject]>([:])
    /// `sluice_config_info{sha256="…"} 1` for the config in force; replaced, not added to, by a reload.
    private let configInfo = Mutex<Prometheus.Gauge?>(nil)
    /// The per-request handles, found again per thread without the shared lock (see ``HotHandles``).
    private let hot = ThreadSpecificVariable<HotHandles>()

    /// - Parameters:
    ///   - runningTasks: request tasks not finished yet (a response may have ended before its task:
    ///     it settles after). One that never comes down is a request that hangs.
    ///   - pendingSettlements: settlements the shared limiter has not taken yet (retried).
    ///   - limiterStatistics: what the Redis limiter's lanes did (nil without Redis).
    public init(
        openConnections: @escaping @Sendable () -> Int = { 0 },
        runningTasks: @escaping @Sendable () -> Int = { 0 },
        pendingSettlements: @escaping @Sendable () -> Int = { 0 },
        limiterStatistics: @escaping @Sendable () -> LimiterStatistics? = { nil }
    ) {
        registry = PrometheusCollectorRegistry()
        var factory = PrometheusMetricsFactory(registry: registry)
        factory.defaultDurationHistogramBuckets = [
            .microseconds(250), .microseconds(500), .milliseconds(1), .milliseconds(2), .milliseconds(5),
            .milliseconds(10), .milliseconds(25), .milliseconds(50), .milliseconds(100), .milliseconds(250),
            .milliseconds(500), .seconds(1), .seconds(2.5), .seconds(5), .seconds(10), .seconds(30), .seconds(60),
        ]
        self.factory = factory
        self.openConnections = openConnections
        self.runningTasks = runningTasks
        self.pendingSettlements = pendingSettlements
        self.limiterStatistics = limiterStatistics
        connectionsGauge = CoreMetrics.Gauge(label: "sluice_open_connections", factory: factory)
        tasksGauge = CoreMetrics.Gauge(label: "sluice_request_tasks", factory: factory)
        pendingSettlementsGauge = CoreMetrics.Gauge(label: "sluice_limiter_pending_settlements", factory: factory)
        // Both results from the start, at 0: a rate over a series that appears late misses its first count.
        for result in [ConfigStatus.LastReload.ok, .refused] {
            counter("sluice_config_reloads_total", [("result", result.rawValue)]).increment(by: 0)
        }
    }

    func requestFinished(route: String, status: Int, model: String?, duration: Duration) {
        let hot = hotHandles()
        let requestKey = HotHandles.RequestKey(route: route, status: status, model: model)
        let requests = hot.requests[requestKey] ?? {
            let handle = counter("sluice_requests_total", [("route", route), ("status", String(status)), ("model", model ?? "")])
            hot.requests[requestKey] = handle
            return handle
        }()
        requests.increment()
        let durations = hot.durations[route] ?? {
            let handle = timer("sluice_request_duration_seconds", [("route", route)])
            hot.durations[route] = handle
            return handle
        }()
        durations.record(duration: duration)
    }

    func tokens(keyID: String, model: String, prompt: Int, completion: Int) {
        let hot = hotHandles()
        let tokensKey = HotHandles.TokensKey(keyID: keyID, model: model)
        let handles = hot.tokens[tokensKey] ?? {
            let handles = (
                prompt: counter("sluice_prompt_tokens_total", [("key", keyID), ("model", model)]),
                completion: counter("sluice_completion_tokens_total", [("key", keyID), ("model", model)])
            )
            hot.tokens[tokensKey] = handles
            return handles
        }()
        handles.prompt.increment(by: prompt)
        handles.completion.increment(by: completion)
    }

    func rateLimited(kind: RateLimitKind, keyID: String) {
        counter("sluice_rate_limited_total", [("limit", kind.rawValue), ("key", keyID)]).increment()
    }

    /// An upstream reported more completion tokens than the request allowed (charged at the bound).
    func implausibleUsage(upstream: String) {
        counter("sluice_implausible_usage_total", [("upstream", upstream)]).increment()
    }

    func upstreamError(upstream: String, kind: String) {
        counter("sluice_upstream_errors_total", [("upstream", upstream), ("kind", kind)]).increment()
    }

    /// Which limiter mode this node is in: 1 for the current mode, 0 for the others.
    func limiterMode(_ current: String) {
        for mode in ["embedded", "redis", "local", "open", "closed"] {
            CoreMetrics.Gauge(label: "sluice_limiter_mode", dimensions: [("mode", mode)], factory: factory)
                .record(mode == current ? 1 : 0)
        }
    }

    /// A config reload finished: `ok` (applied) or `refused` (the file was not valid; nothing changed).
    func configReloaded(_ result: ConfigStatus.LastReload) {
        counter("sluice_config_reloads_total", [("result", result.rawValue)]).increment()
    }

    /// The config in force is now the file with this SHA-256: `sluice_config_info` holds this hash
    /// alone (its first 12 hex digits, as `/readyz` shows them), so comparing nodes is one query.
    func configInForce(sha256: String) {
        configInfo.withLock { gauge in
            if let gauge { registry.unregisterGauge(gauge) }
            let next = registry.makeGauge(descriptor: Self.configInfo, labels: [("sha256", String(sha256.prefix(12)))])
            next.set(to: 1.0)
            gauge = next
        }
    }

    private static var configInfo: MetricNameDescriptor {
        MetricNameDescriptor(
            namespace: "sluice", metricName: "config", unitName: "info",
            helpText: "1 for the config in force, labelled with the first 12 hex digits of its file's SHA-256."
        )
    }

    /// Prometheus text exposition of everything recorded so far.
    public func exposition() -> [UInt8] {
        connectionsGauge.record(openConnections())
        tasksGauge.record(runningTasks())
        pendingSettlementsGauge.record(pendingSettlements())
        if let statistics = limiterStatistics() { recordLimiter(statistics) }
        return registry.emitToBuffer()
    }

    /// `sluice_limiter_admissions_total{path}` (leased: against this node's lease, no call; redis:
    /// decided in a call; remembered_denial: denied from a recent denial, no call) and
    /// `sluice_limiter_calls_total{result}` (ok, lost: reply never came, resolved by the next call;
    /// failed: certainly not run).
    private func recordLimiter(_ statistics: LimiterStatistics) {
        let series: [(LimiterStatistics.Event, String, (String, String))] = [
            (.leasedAdmissions, "sluice_limiter_admissions_total", ("path", "leased")),
            (.redisAdmissions, "sluice_limiter_admissions_total", ("path", "redis")),
            (.rememberedDenials, "sluice_limiter_admissions_total", ("path", "remembered_denial")),
            (.calls, "sluice_limiter_calls_total", ("result", "ok")),
            (.lostCalls, "sluice_limiter_calls_total", ("result", "lost")),
            (.failedCalls, "sluice_limiter_calls_total", ("result", "failed")),
        ]
        let deltas = lastLimiterCounts.withLock { last in
            series.map { event, _, _ in
                let now = statistics[event]
                defer { last[event] = now }
                return max(now - (last[event] ?? 0), 0)
            }
        }
        for ((_, label, dimension), delta) in zip(series, deltas) {
            counter(label, [dimension]).increment(by: delta)
        }
    }

    /// Metric handles are looked up once per label set and kept: creating one per request would go
    /// through the factory's lock and allocate every time.
    private func hotHandles() -> HotHandles {
        hot.valueForThisThread(orMake: HotHandles.init)
    }

    private func counter(_ label: String, _ dimensions: [(String, String)]) -> CoreMetrics.Counter {
        cached(label, dimensions) { CoreMetrics.Counter(label: $0, dimensions: $1, factory: factory) }
    }

    private func timer(_ label: String, _ dimensions: [(String, String)]) -> Metrics.Timer {
        cached(label, dimensions) { Metrics.Timer(label: $0, dimensions: $1, factory: factory) }
    }

    /// Labels differ between metric kinds, so one cache keyed by label and dimensions serves all.
    private func cached<Handle: AnyObject>(
        _ label: String, _ dimensions: [(String, String)], make: (String, [(String, String)]) -> Handle
    ) -> Handle {
        var cacheKey = label
        for (name, value) in dimensions {
            cacheKey += "\u{1}" + name + "=" + value
        }
        return cache.withLock { cache in
            if let handle = cache[cacheKey] as? Handle { return handle }
            let handle = make(label, dimensions)
            cache[cacheKey] = handle
            return handle
        }
    }
}

/// One thread's references to the handles every request updates, keyed by their label values.
///
/// Why: finding a handle in the shared cache means building a string key and taking a lock all
/// event loops share, on every request. The handles themselves are the shared ones (created once
/// through that cache), so every thread updates the same series. The label values are bounded by
/// the config (routes, statuses, configured models and keys), and so is this cache.
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

    var requests: [RequestKey: CoreMetrics.Counter] = [:]
    var durations: [String: Metrics.Timer] = [:]
    var tokens: [TokensKey: (prompt: CoreMetrics.Counter, completion: CoreMetrics.Counter)] = [:]
}
