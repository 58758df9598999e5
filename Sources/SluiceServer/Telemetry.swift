import Logging
import NIOHTTP1
import OTel
import ServiceContextModule
import ServiceLifecycle
import SluiceCore
import Synchronization
import Tracing
import W3CTraceContext

/// Traces (OpenTelemetry, exported over OTLP/HTTP): the tracer requests use, and the service that
/// batches and exports their spans. Exists only when `telemetry.otlp_endpoint` is set; without it
/// the gateway holds no tracer and the request path makes no spans and reads no trace headers.
public struct Telemetry: Sendable {
    let tracer: any Tracer
    /// The exporter and its batch processor, run as one of the node's services: at shutdown it
    /// exports what is still buffered (after the HTTP server drained).
    let service: any Service

    /// How often a failing export is logged at most.
    static let failureLogInterval: Duration = .seconds(60)

    /// `nil` when the config sets no endpoint. `OTEL_*` environment variables that swift-otel reads
    /// (e.g. `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_EXPORTER_OTLP_HEADERS`) still apply on top.
    public static func make(_ config: TelemetryConfig, logger: Logger) throws -> Telemetry? {
        guard let url = config.tracesURL else { return nil }
        var configuration = OTel.Configuration.default
        configuration.serviceName = config.serviceName
        // swift-otel's own complaints (an export that failed, a full queue) go to Sluice's log, at
        // most once a minute: a collector that is down must not flood the log.
        let throttle = LogThrottle(interval: failureLogInterval)
        configuration.diagnosticLogger = .custom(Logger(label: "sluice.telemetry") { _ in ThrottledLogHandler(base: logger, throttle: throttle) })
        configuration.diagnosticLogLevel = .warning
        configuration.propagators = [.traceContext]
        configuration.traces.enabled = true
        configuration.traces.sampler = .parentBasedTraceIDRatio(ratio: config.samplingRatio) ?? .parentBasedAlwaysOn
        configuration.traces.exporter = .otlp
        configuration.traces.otlpExporter.endpoint = url
        configuration.traces.otlpExporter.protocol = .httpProtobuf
        // A collector that is down must not hold up shutdown for long: one export (the HTTP client
        // keeps trying to connect until its timeout) gets 2 s, a batch 3 s. At shutdown an export
        // in flight and the final flush each wait at most that.
        configuration.traces.otlpExporter.timeout = .seconds(2)
        configuration.traces.batchSpanProcessor.exportTimeout = .seconds(3)
        configuration.metrics.enabled = false
        configuration.logs.enabled = false
        let backend = try OTel.makeTracingBackend(configuration: configuration)
        return Telemetry(tracer: backend.factory, service: backend.service)
    }
}

/// When a throttled log line was last let through, shared by the copies of a logger.
final class LogThrottle: Sendable {
    let interval: Duration
    private let state = Mutex<(last: ContinuousClock.Instant?, suppressed: Int)>((nil, 0))

    init(interval: Duration) { self.interval = interval }

    /// nil: drop this line; else let it through, with the count of lines dropped since the last.
    func admit(now: ContinuousClock.Instant = .now) -> Int? {
        state.withLock { state in
            if let last = state.last, now - last < interval {
                state.suppressed += 1
                return nil
            }
            defer { state = (now, 0) }
            return state.suppressed
        }
    }
}

/// A log handler that passes on warnings and worse, at most one per the throttle's interval (with
/// how many were left out since the last), and drops the rest.
struct ThrottledLogHandler: LogHandler {
    private let base: Logger
    private let throttle: LogThrottle
    var metadata: Logger.Metadata = [:]
    var metadataProvider: Logger.MetadataProvider?
    var logLevel: Logger.Level = .warning

    init(base: Logger, throttle: LogThrottle) {
        self.base = base
        self.throttle = throttle
    }

    subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    func log(event: LogEvent) {
        guard event.level >= .warning, let suppressed = throttle.admit() else { return }
        var metadata = self.metadata.merging(event.metadata ?? [:]) { $1 }
        if let error = event.error { metadata["error"] = "\(error)" }
        if suppressed > 0 { metadata["suppressed_since_last"] = "\(suppressed)" }
        base.log(level: event.level, "telemetry: \(event.message)", metadata: metadata)
    }
}

// MARK: - One request's spans

/// The spans of one proxied request: the request span (server kind), continuing the client's trace
/// when it sent a valid `traceparent`, and its children, one per pipeline step. Made only when
/// telemetry is on; every use on the request path is behind one optional (`RequestTrace?`).
///
/// Never holds prompt or completion text.
struct RequestTrace: Sendable {
    let tracer: any Tracer
    let root: any Span

    static func start(tracer: any Tracer, head: HTTPRequestHead, endpoint: OpenAIEndpoint, path: String, requestID: String) -> RequestTrace {
        var context = ServiceContext.topLevel
        if let accepted = TraceContextHeaders.accepted(from: head.headers) {
            // A tracestate the W3C parser refuses is dropped, not the traceparent with it (and the
            // tracer's own extraction, which logs a failure, then never fails).
            var carrier = AcceptedTraceHeaders(traceParent: accepted.traceParent, traceState: accepted.traceState)
            if let state = carrier.traceState, (try? TraceContext(traceParentHeaderValue: carrier.traceParent, traceStateHeaderValue: state)) == nil {
                carrier.traceState = nil
            }
            tracer.extract(carrier, into: &context, using: AcceptedTraceHeaders.Extractor())
        }
        let root = tracer.startSpan("\(head.method.rawValue) \(path)", context: context, ofKind: .server)
        root.updateAttributes { attributes in
            attributes["http.request.method"] = head.method.rawValue
            attributes["http.route"] = path
            attributes["url.path"] = path
            attributes["sluice.request_id"] = requestID
            attributes["gen_ai.operation.name"] = endpoint.genAIOperationName
        }
        return RequestTrace(tracer: tracer, root: root)
    }

    /// A child of the request span (or of `parent`).
    func child(_ name: String, of parent: (any Span)? = nil, kind: SpanKind = .internal) -> any Span {
        tracer.startSpan(name, context: (parent ?? root).context, ofKind: kind)
    }

    /// `traceparent` (and `tracestate`) naming `span`, appended to the upstream request's headers.
    func inject(_ span: any Span, into headers: inout [(name: String, value: String)]) {
        tracer.inject(span.context, into: &headers, using: UpstreamHeaderInjector())
    }

    /// Ends the request span: its status code, and an error status for a 5xx.
    func finish(status: Int) {
        root.attributes["http.response.status_code"] = status
        if status >= 500 { root.setStatus(SpanStatus(code: .error)) }
        root.end()
    }
}

/// The trace headers a client sent, as accepted by `TraceContextHeaders`.
struct AcceptedTraceHeaders: Sendable {
    var traceParent: String
    var traceState: String?

    struct Extractor: Tracing.Extractor {
        func extract(key: String, from carrier: AcceptedTraceHeaders) -> String? {
            switch key {
            case "traceparent": carrier.traceParent
            case "tracestate": carrier.traceState
            default: nil
            }
        }
    }
}

struct UpstreamHeaderInjector: Injector {
    func inject(_ value: String, forKey key: String, into carrier: inout [(name: String, value: String)]) {
        carrier.append((name: key, value: value))
    }
}

extension OpenAIEndpoint {
    /// `gen_ai.operation.name` (OpenTelemetry GenAI semantic conventions).
    var genAIOperationName: String {
        switch self {
        case .chatCompletions: "chat"
        case .completions: "text_completion"
        case .embeddings: "embeddings"
        case .responses: "chat"
        }
    }
}


extension RateLimitSnapshot {
    /// The limits and what remains of them, on the request span.
    func record(on span: any Span) {
        span.updateAttributes { attributes in
            if let limitRequests { attributes["sluice.limit.requests"] = limitRequests }
            if let remainingRequests { attributes["sluice.remaining.requests"] = remainingRequests }
            if let limitTokens { attributes["sluice.limit.tokens"] = limitTokens }
            if let remainingTokens { attributes["sluice.remaining.tokens"] = remainingTokens }
        }
    }
}
