import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import SluiceCore
import SluiceTokenizer
import SluiceUpstream
import Synchronization
import Tracing

/// One admitted request on its way upstream and back.
struct ProxyExchange: Sendable {
    /// The id the client meets, sent upstream and back as `x-request-id` (not the reservation's).
    let requestID: String
    let key: APIKey
    let request: OpenAIRequest
    let endpoint: OpenAIEndpoint
    let upstream: UpstreamRoute
    let upstreamBody: [UInt8]
    let promptTokens: Int
    let rateLimitHeaders: [(String, String)]
    let encoding: BPEEncoding
    /// The prices of the settings snapshot the request walks with.
    let pricing: Pricing
    /// Where the request's tokens start in the key's month (volume tiers, plans); `nil`: not known.
    let monthTokensBefore: Int?

    /// What the request costs for the outcome `result`: the prompt and completion tokens it is
    /// charged (the cached part of the prompt as the upstream reported it) at the model's price,
    /// under the key's plan. `nil` without a `pricing` section; a known zero when nothing is charged
    /// (the model never answered); unknown when the model has no price (or its price needs the
    /// month's position). The same function for the header and the settle step: one value.
    func cost(of result: RelayResult) -> RequestCost? {
        guard !pricing.isEmpty else { return nil }
        guard result.chargesPrompt else { return .known(.zero) }
        let tokens = BilledTokens(
            inputTokens: result.reportedPromptTokens ?? promptTokens, cachedInputTokens: result.cachedInputTokens ?? 0,
            outputTokens: result.completionTokens
        )
        return pricing.cost(model: request.model, planName: key.plan, tokens: tokens, monthTokensBefore: monthTokensBefore)
    }
}

/// The response header with a non-streamed answer's cost in USD (or `unknown`).
let costHeaderName = "x-sluice-cost-usd"

/// What the relay step reports to the settle step: what the client saw, and what to charge for it.
///
/// The charging policy, one outcome at a time (the README's "Failure behaviour" lists it too):
///
/// | outcome | prompt tokens | completion tokens |
/// |---|---|---|
/// | answered (2xx) | charged | the upstream's `usage` (bounded), else counted from the answer |
/// | upstream never reached, circuit open, upstream error status, failure before the head | refunded | none |
/// | stream cut by the upstream | charged | what was relayed |
/// | client gone before the head | charged (the upstream may have started) | none |
/// | client gone mid-answer | charged | what was relayed |
///
/// The request itself always counts on the requests-per-minute limit: it was made.
struct RelayResult: Sendable {
    /// Status the client saw (or would have seen).
    var status: Int
    /// Whether the prompt is charged: false when no answer came from the model (nothing was billed).
    var chargesPrompt: Bool
    /// Completion tokens to charge: the upstream's `usage` (bounded), else counted from what was relayed.
    var completionTokens: Int
    /// How the exchange with the upstream ended (for the metrics).
    var upstreamOutcome: UpstreamOutcome
    /// The exchange with the upstream, from sending the request to its end; nil when it never left
    /// (the circuit was open). Set by `forwardAndRelay`.
    var upstreamTime: Duration? = nil
    /// From sending the request to the stream's first chunk (streams only).
    var timeToFirstChunk: Duration? = nil
    /// Whether the answer was streamed to the client.
    var streamed = false
    /// From sending the request to the response's head; nil when none came. Set by `forwardAndRelay`.
    var timeToFirstByte: Duration? = nil
    /// Requests sent to the upstream for this one (2 after a safe retry of a refused connection; 0
    /// when none was sent).
    var attempts = 0
    /// Only with telemetry on: the answering model and the choices' finish reasons, from the answer.
    var responseModel: String?
    var finishReasons: [String] = []
    /// Responses API only: the upstream's reported `input_tokens` (bounded), charged instead of
    /// Sluice's count; nil when none was reported (or for other endpoints).
    var reportedPromptTokens: Int?
    /// The upstream's reported cached prompt tokens (priced as cached input) and reasoning tokens
    /// (part of the completion), any endpoint; nil when not reported.
    var cachedInputTokens: Int?
    var reasoningTokens: Int?

    init(status: Int, chargesPrompt: Bool, completionTokens: Int, upstreamOutcome: UpstreamOutcome) {
        self.status = status
        self.chargesPrompt = chargesPrompt
        self.completionTokens = completionTokens
        self.upstreamOutcome = upstreamOutcome
    }

    /// Nothing came from the model: the reservation is refunded whole.
    static func notAnswered(status: Int, outcome: UpstreamOutcome) -> RelayResult {
        RelayResult(status: status, chargesPrompt: false, completionTokens: 0, upstreamOutcome: outcome)
    }

    /// The client left before anything was relayed: the prompt was sent, nothing came back to charge.
    static let clientGoneBeforeAnswer = RelayResult(status: 499, chargesPrompt: true, completionTokens: 0, upstreamOutcome: .cancelled)
}

extension Gateway {
    /// Largest non-streamed upstream answer Sluice will hold in memory before giving up (502).
    static let maxBufferedResponseBytes = 64 * 1024 * 1024

    /// Response headers never copied from the upstream: hop-by-hop ones, lengths we recompute, and the
    /// upstream's own rate-limit view (the client sees its key's limits at Sluice instead).
    private static let droppedResponseHeaders: Set<String> = [
        "connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection", "upgrade", "trailer",
        "x-ratelimit-limit-requests", "x-ratelimit-limit-tokens", "x-ratelimit-remaining-requests",
        "x-ratelimit-remaining-tokens", "x-ratelimit-reset-requests", "x-ratelimit-reset-tokens",
        "x-request-id", "date", "server",
    ]

    /// Request headers never forwarded: hop-by-hop ones, what Sluice sets itself, the caller's
    /// credentials (the upstream gets the upstream's key) and OpenAI account routing headers (they
    /// name the caller's account, which is not the one the upstream key belongs to).
    private static let droppedRequestHeaders: Set<String> = [
        "connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection", "upgrade", "te",
        "trailer", "host", "expect", "authorization", "proxy-authorization", "cookie", "content-type", "accept",
        "accept-encoding", "x-request-id", "openai-organization", "openai-project", "api-key",
    ]

    /// With telemetry on, the client's trace context is replaced by one naming Sluice's upstream span.
    private static let traceContextHeaders: Set<String> = ["traceparent", "tracestate"]

    /// Steps 6 and 7: forward to the upstream, relay the answer. Never throws. Records the
    /// exchange's metrics (outcome, duration, time to the response's head) and, with telemetry on,
    /// its spans.
    func forwardAndRelay(_ exchange: ProxyExchange, clientHeaders: HTTPHeaders, writer: ResponseWriter, logger: RequestLogger, trace: RequestTrace?) async -> RelayResult {
        guard let trace else {
            return await forwardAndRelay(exchange, clientHeaders: clientHeaders, writer: writer, logger: logger, upstreamSpan: nil, trace: nil)
        }
        // The upstream span covers the exchange up to the response head (events: the connection,
        // the first byte); the relay span, its sibling, the answer's way to the client.
        let upstreamSpan = trace.child("upstream", kind: .client)
        upstreamSpan.updateAttributes { attributes in
            attributes["sluice.upstream"] = exchange.upstream.name
            attributes["gen_ai.request.model"] = exchange.request.model
        }
        return await forwardAndRelay(exchange, clientHeaders: clientHeaders, writer: writer, logger: logger, upstreamSpan: upstreamSpan, trace: trace)
    }

    private func forwardAndRelay(_ exchange: ProxyExchange, clientHeaders: HTTPHeaders, writer: ResponseWriter, logger: RequestLogger, upstreamSpan: (any Span)?, trace: RequestTrace?) async -> RelayResult {
        var upstreamRequest = makeUpstreamRequest(exchange, clientHeaders: clientHeaders, tracing: trace != nil)
        if let trace, let upstreamSpan { trace.inject(upstreamSpan, into: &upstreamRequest.headers) }
        // The connection budget first: a request that times out in the queue never took a breaker
        // probe it would then have to report.
        let pool = pools.pool(for: exchange.upstream.name, capacity: exchange.upstream.config.maxConnections)
        let queueTimeoutMs = exchange.upstream.config.queueTimeoutMs
        let grant = await pool.acquire(timeoutMs: queueTimeoutMs) { [logger] in
            // Logged as the queue forms (at most once per 10 s per upstream), not once it drained.
            logger.warning("upstream connection pool exhausted, requests queue", metadata: [
                "upstream": "\(pool.name)", "max_connections": "\(pool.capacity)", "queued": "\(pool.queued)",
                "queue_timeout_ms": "\(queueTimeoutMs)",
            ])
        }
        metrics.upstreamQueueWait(upstream: exchange.upstream.name, waited: .nanoseconds(Int64(grant.waitedNs)))
        switch grant.outcome {
        case .granted:
            break
        case .cancelled:
            // Left while queued: nothing was sent, nothing to charge.
            upstreamSpan?.end()
            return .notAnswered(status: 499, outcome: .cancelled)
        case .timedOut:
            metrics.upstreamError(upstream: exchange.upstream.name, kind: .queueTimeout)
            metrics.upstreamExchange(upstream: exchange.upstream.name, outcome: .queueTimeout, duration: .zero, timeToFirstByte: nil)
            let waitedMs = grant.waitedNs / 1_000_000
            let refusal = GatewayError.serviceUnavailable(
                message: "The upstream model provider is busy. Please try again later.", retryAfterSeconds: 1,
                logDetail: "upstream \(exchange.upstream.name): no connection free within queue_timeout_ms (waited \(waitedMs) ms, max_connections \(pool.capacity))"
            )
            if let upstreamSpan {
                upstreamSpan.updateAttributes { attributes in
                    attributes["sluice.attempts"] = 0
                    attributes["error.type"] = "queue_timeout"
                }
                upstreamSpan.setStatus(SpanStatus(code: .error, message: "queue timeout"))
                upstreamSpan.end()
            }
            _ = await writeError(writer, refusal, requestID: exchange.requestID, keyID: exchange.key.id, model: exchange.request.model, extraHeaders: exchange.rateLimitHeaders)
            return .notAnswered(status: refusal.status, outcome: .queueTimeout)
        }
        defer { pool.release() }
        let breaker = breakers.breaker(for: exchange.upstream.name)
        if case .reject(let retryAfter) = breaker.acquire() {
            metrics.upstreamError(upstream: exchange.upstream.name, kind: .circuitOpen)
            metrics.upstreamExchange(upstream: exchange.upstream.name, outcome: .circuitOpen, duration: .zero, timeToFirstByte: nil)
            let refusal = GatewayError.upstreamCircuitOpen(upstream: exchange.upstream.name, retryAfterSeconds: retryAfter)
            if let upstreamSpan {
                upstreamSpan.updateAttributes { attributes in
                    attributes["sluice.attempts"] = 0
                    attributes["error.type"] = "circuit_open"
                }
                upstreamSpan.setStatus(SpanStatus(code: .error, message: "circuit open"))
                upstreamSpan.end()
            }
            _ = await writeError(writer, refusal, requestID: exchange.requestID, keyID: exchange.key.id, model: exchange.request.model, extraHeaders: exchange.rateLimitHeaders)
            return .notAnswered(status: refusal.status, outcome: .circuitOpen)
        }
        let sent = ContinuousClock.now
        let started = DefaultTracerClock.now
        var attempts = 0
        func ended(_ result: RelayResult, firstByte: ContinuousClock.Instant? = nil) -> RelayResult {
            var result = result
            let upstreamTime = ContinuousClock.now - sent
            result.upstreamTime = upstreamTime
            result.timeToFirstByte = firstByte.map { $0 - sent }
            result.attempts = attempts
            metrics.upstreamExchange(
                upstream: exchange.upstream.name, outcome: result.upstreamOutcome, duration: upstreamTime,
                timeToFirstByte: firstByte.map { $0 - sent }
            )
            return result
        }
        let response: UpstreamResponse
        do {
            if let upstreamSpan {
                attempts = 1
                response = try await engine.executeRetryingSafeFailures(upstreamRequest) { error in
                    attempts += 1
                    upstreamSpan.addEvent(SpanEvent(name: "retry", attributes: ["error.type": "\(error.kind)"]))
                }
                upstreamSpan.attributes["sluice.attempts"] = attempts
                Self.recordHead(response, on: upstreamSpan, startedAt: started)
            } else {
                response = try await engine.executeRetryingSafeFailures(upstreamRequest, attempts: &attempts)
            }
            breaker.record(upstreamDown: response.meansUpstreamDown)
        } catch where Self.clientWentAway(error) {
            breaker.record(upstreamDown: false)  // unknown: the client left first; don't punish the upstream
            if let upstreamSpan {
                upstreamSpan.attributes["error.type"] = "cancelled"
                upstreamSpan.end()
            }
            return ended(.clientGoneBeforeAnswer)
        } catch {
            if let upstreamSpan {
                upstreamSpan.attributes["error.type"] = "\(error.kind)"
                upstreamSpan.setStatus(SpanStatus(code: .error, message: "\(error.kind)"))
                upstreamSpan.end()
            }
            breaker.record(upstreamDown: error.meansUpstreamDown)
            let outcome = UpstreamOutcome(error.kind)
            metrics.upstreamError(upstream: exchange.upstream.name, kind: outcome)
            logger.warning("upstream request failed", metadata: ["upstream": "\(exchange.upstream.name)", "error": "\(error.kind)", "detail": "\(error.detail)"])
            let gatewayError = GatewayError(upstream: error, upstreamName: exchange.upstream.name)
            _ = await writeError(writer, gatewayError, requestID: exchange.requestID, keyID: exchange.key.id, model: exchange.request.model, extraHeaders: exchange.rateLimitHeaders)
            return ended(.notAnswered(status: gatewayError.status, outcome: outcome))
        }
        let firstByte = ContinuousClock.now

        let isEventStream = response.headers.contains { $0.name.lowercased() == "content-type" && $0.value.lowercased().hasPrefix("text/event-stream") }
        let relaySpan = trace?.child("relay")
        defer { relaySpan?.end() }
        var result: RelayResult
        if exchange.request.stream && response.status == 200 && isEventStream {
            relaySpan?.attributes["sluice.stream"] = true
            result = await relayStream(exchange, response: response, sent: sent, writer: writer, logger: logger, scanning: relaySpan != nil)
        } else {
            relaySpan?.attributes["sluice.stream"] = false
            result = await relayWhole(exchange, response: response, writer: writer, logger: logger, scanning: relaySpan != nil)
        }
        if let relaySpan {
            relaySpan.updateAttributes { attributes in
                attributes["http.response.status_code"] = result.status
                attributes["gen_ai.usage.output_tokens"] = result.completionTokens
            }
            if result.status >= 500 { relaySpan.setStatus(SpanStatus(code: .error)) }
        }
        return ended(result, firstByte: firstByte)
    }

    /// The upstream span's record of the response head: its status, and events for the connection
    /// (when a new one was made; its connect time) and the first byte (the head's arrival).
    private static func recordHead(_ response: UpstreamResponse, on span: any Span, startedAt started: DefaultTracerClock.Instant) {
        if let connection = response.connection, connection.newConnection {
            let connectedAt = DefaultTracerClock.Instant(nanosecondsSinceEpoch: started.nanosecondsSinceEpoch + UInt64(max(connection.connectMicroseconds, 0)) * 1_000)
            span.addEvent(SpanEvent(
                name: "connect", at: connectedAt,
                attributes: ["sluice.upstream.connect_ms": .double(Double(connection.connectMicroseconds) / 1_000)]
            ))
        }
        span.addEvent(SpanEvent(name: "first_byte"))
        span.attributes["http.response.status_code"] = response.status
        if response.status >= 500 {
            span.attributes["error.type"] = "\(response.status)"
            span.setStatus(SpanStatus(code: .error))
        }
        span.end()
    }

    /// A transfer cancelled because the client's connection closed (its task was cancelled) is the
    /// client's doing, not an upstream failure: no error response, no upstream-error metric.
    private static func clientWentAway(_ error: UpstreamError) -> Bool {
        error.isCancellation || Task.isCancelled
    }

    /// `tracing`: the client's trace headers are not forwarded; the caller adds Sluice's own.
    private func makeUpstreamRequest(_ exchange: ProxyExchange, clientHeaders: HTTPHeaders, tracing: Bool) -> UpstreamRequest {
        var headers: [(name: String, value: String)] = [
            ("content-type", "application/json"),
            ("accept", exchange.request.stream ? "text/event-stream" : "application/json"),
            ("x-request-id", exchange.requestID),
        ]
        for (name, value) in clientHeaders where !Self.droppedRequestHeaders.contains(name.lowercased()) {
            if tracing, Self.traceContextHeaders.contains(name.lowercased()) { continue }
            headers.append((name, value))
        }
        if let apiKey = exchange.upstream.apiKey {
            headers.append(("authorization", "Bearer \(apiKey.revealed)"))
        }
        return UpstreamRequest(
            url: exchange.upstream.url(for: exchange.endpoint),
            method: "POST",
            headers: headers,
            body: exchange.upstreamBody,
            timeouts: exchange.request.stream ? exchange.upstream.streamTimeouts : exchange.upstream.timeouts
        )
    }

    private func responseHeaders(_ exchange: ProxyExchange, upstream: [(name: String, value: String)]) -> HTTPHeaders {
        var headers = HTTPHeaders()
        for (name, value) in upstream where !Self.droppedResponseHeaders.contains(name.lowercased()) {
            headers.add(name: name, value: value)
        }
        if let upstreamID = upstream.first(where: { $0.name.lowercased() == "x-request-id" })?.value {
            headers.add(name: "x-upstream-request-id", value: upstreamID)
        }
        headers.add(name: "x-request-id", value: exchange.requestID)
        for (name, value) in exchange.rateLimitHeaders { headers.add(name: name, value: value) }
        return headers
    }

    // MARK: Non-streamed answers (and every upstream error status)

    private func relayWhole(_ exchange: ProxyExchange, response: UpstreamResponse, writer: ResponseWriter, logger: RequestLogger, scanning: Bool) async -> RelayResult {
        var collected = ByteBuffer()
        do {
            for try await chunk in response.body {
                guard collected.readableBytes + chunk.readableBytes <= Self.maxBufferedResponseBytes else {
                    throw UpstreamError(kind: .other, detail: "response larger than \(Self.maxBufferedResponseBytes) bytes")
                }
                var chunk = chunk
                collected.writeBuffer(&chunk)
            }
        } catch let error as UpstreamError where !Self.clientWentAway(error) {
            let outcome = UpstreamOutcome(error.kind)
            metrics.upstreamError(upstream: exchange.upstream.name, kind: outcome)
            logger.warning("upstream response failed", metadata: ["upstream": "\(exchange.upstream.name)", "error": "\(error.kind)", "detail": "\(error.detail)"])
            let gatewayError = GatewayError(upstream: error, upstreamName: exchange.upstream.name)
            _ = await writeError(writer, gatewayError, requestID: exchange.requestID, keyID: exchange.key.id, model: exchange.request.model, extraHeaders: exchange.rateLimitHeaders)
            return .notAnswered(status: gatewayError.status, outcome: outcome)
        } catch {
            // The client went away (task cancelled): nothing was relayed, nothing produced is known.
            return .clientGoneBeforeAnswer
        }

        let answered = (200..<300).contains(response.status)
        var completionTokens = 0
        var reportedUsage: Usage?
        if answered {
            if let usage = collected.withUnsafeReadableBytes(Usage.fromResponseBody) {
                reportedUsage = usage
                completionTokens = plausibleCompletionTokens(reported: usage.completionTokens, exchange, logger: logger)
            } else {
                // No usage reported: charge what the answer holds, counted by Sluice.
                let text = CompletionText.fromResponseBody(Array(collected.readableBytesView))
                completionTokens = exchange.encoding.countOrdinary(text)
            }
        } else {
            metrics.upstreamError(upstream: exchange.upstream.name, kind: UpstreamOutcome(status: response.status))
        }
        // An error status is not billed by the provider, so neither is it here.
        var result = RelayResult(status: response.status, chargesPrompt: answered, completionTokens: completionTokens, upstreamOutcome: UpstreamOutcome(status: response.status))
        result.recordUsageDetails(reportedUsage)
        result.recordResponsesUsage(reportedUsage, exchange)
        var headers = responseHeaders(exchange, upstream: response.headers)
        if let cost = exchange.cost(of: result) { headers.replaceOrAdd(name: costHeaderName, value: cost.description) }
        do {
            try await writer.writeResponse(status: HTTPResponseStatus(statusCode: response.status), headers: headers, body: collected)
        } catch {
            logger.debug("client went away before the response")
        }
        if scanning, answered {
            var scanner = ResponseFieldScanner()
            collected.withUnsafeReadableBytes { scanner.consume($0) }
            result.responseModel = scanner.model
            result.finishReasons = scanner.finishReasons
        }
        return result
    }

    /// Completions per choice assumed at most when a request sets no `max_tokens`: above what any
    /// model produces today (reasoning included), far below what a broken upstream may report.
    static let plausibleCompletionTokensPerChoice = 131_072

    /// The upstream's reported completion tokens, bounded by what the request allowed: its
    /// `max_completion_tokens`/`max_tokens` × `n` (reasoning tokens included, as OpenAI counts them),
    /// else ``plausibleCompletionTokensPerChoice`` × `n`; embeddings produce none. A report above the
    /// bound is charged at the bound, logged and counted: an upstream must not be able to lock a key
    /// out for hours (or fill its quota) with one absurd number.
    func plausibleCompletionTokens(reported: Int, _ exchange: ProxyExchange, logger: RequestLogger) -> Int {
        let request = exchange.request
        let bound = exchange.endpoint == .embeddings
            ? 0
            : (request.maxOutputTokens ?? Self.plausibleCompletionTokensPerChoice) * max(request.n, 1)
        guard reported > bound else { return max(reported, 0) }
        metrics.implausibleUsage(upstream: exchange.upstream.name)
        logger.warning("upstream reported implausible usage; charging the bound", metadata: [
            "upstream": "\(exchange.upstream.name)", "reported_completion_tokens": "\(reported)", "charged_completion_tokens": "\(bound)",
        ])
        return bound
    }

    // MARK: Streamed answers

    /// `sent`: when the request left for the upstream (the time to the first chunk counts from it).
    private func relayStream(_ exchange: ProxyExchange, response: UpstreamResponse, sent: ContinuousClock.Instant, writer: ResponseWriter, logger: RequestLogger, scanning: Bool) async -> RelayResult {
        var filter = StreamRelayFilter(dropsUsageChunk: exchange.request.sluiceAddedUsage, isResponsesStream: exchange.endpoint == .responses)
        var scanner: ResponseFieldScanner? = scanning ? ResponseFieldScanner() : nil
        func producedTokens() -> Int {
            if let usage = filter.usage { return plausibleCompletionTokens(reported: usage.completionTokens, exchange, logger: logger) }
            return exchange.encoding.countOrdinary(filter.streamedText)
        }
        do {
            try await writer.writeStreamHead(status: .ok, headers: responseHeaders(exchange, upstream: response.headers))
        } catch {
            return .clientGoneBeforeAnswer
        }
        var firstChunk: ContinuousClock.Instant?
        func streamed(_ result: RelayResult) -> RelayResult {
            var result = result
            result.streamed = true
            result.recordUsageDetails(filter.usage)
            result.recordResponsesUsage(filter.usage, exchange)
            result.timeToFirstChunk = firstChunk.map { $0 - sent }
            if let scanner {
                result.responseModel = scanner.model
                result.finishReasons = scanner.finishReasons
            }
            return result
        }
        do {
            for try await chunk in response.body {
                if firstChunk == nil { firstChunk = .now }
                if scanner != nil { chunk.withUnsafeReadableBytes { scanner!.consume($0) } }
                let forward = chunk.withUnsafeReadableBytes { filter.consume($0) }
                if !forward.isEmpty {
                    try await writer.writeStreamChunk(ByteBuffer(bytes: forward))
                }
            }
            let tail = filter.finish()
            if !tail.isEmpty { try await writer.writeStreamChunk(ByteBuffer(bytes: tail)) }
            try await writer.endStream()
            return streamed(RelayResult(status: 200, chargesPrompt: true, completionTokens: producedTokens(), upstreamOutcome: .ok))
        } catch let error as UpstreamError where !Self.clientWentAway(error) {
            // The upstream failed mid-stream: the head is gone, so cut the connection; charge what was produced.
            let outcome = UpstreamOutcome(error.kind)
            metrics.upstreamError(upstream: exchange.upstream.name, kind: outcome)
            logger.warning("upstream stream failed", metadata: ["upstream": "\(exchange.upstream.name)", "error": "\(error.kind)", "detail": "\(error.detail)"])
            writer.abort()
            return streamed(RelayResult(status: 502, chargesPrompt: true, completionTokens: producedTokens(), upstreamOutcome: outcome))
        } catch {
            // The client went away mid-stream: leaving the loop cancelled the upstream transfer.
            let produced = producedTokens()
            logger.info("client disconnected mid-stream", metadata: ["completion_tokens_relayed": "\(produced)"])
            return streamed(RelayResult(status: 499, chargesPrompt: true, completionTokens: produced, upstreamOutcome: .cancelled))
        }
    }
}

extension RelayResult {
    /// Most input tokens taken from a Responses answer's `usage`: beyond any context window, far
    /// below what would overflow a bucket's arithmetic.
    static let plausibleInputTokens = 4_194_304

    /// For the Responses API: keeps the upstream's `input_tokens` (bounded) to charge instead of
    /// Sluice's own count.
    mutating func recordResponsesUsage(_ usage: Usage?, _ exchange: ProxyExchange) {
        guard exchange.endpoint == .responses, let usage else { return }
        reportedPromptTokens = min(usage.promptTokens, Self.plausibleInputTokens)
    }

    /// Keeps the reported details of any endpoint's usage: the cached prompt tokens (priced as
    /// cached input; bounded by the prompt when priced) and the reasoning tokens (informational).
    mutating func recordUsageDetails(_ usage: Usage?) {
        guard let usage else { return }
        cachedInputTokens = usage.cachedInputTokens
        reasoningTokens = usage.reasoningTokens
    }
}
