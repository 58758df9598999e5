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
    /// What stays the same across the request's attempts, in one object: the exchange is handed from
    /// step to step and kept across suspension points, and as one large struct it was copied (with a
    /// retain per field) at each of them — measurably, in the per-request profile (issue 19).
    final class Facts: Sendable {
        /// The id the client meets, sent upstream and back as `x-request-id` (not the reservation's).
        let requestID: String
        /// Sluice's own id of the request (its reservations are named after it).
        let reservationID: String
        let key: APIKey
        let request: OpenAIRequest
        let endpoint: OpenAIEndpoint
        /// The deployments of the request's model (config order), and the routing policy over them.
        let deployments: [UpstreamRoute]
        let routing: RoutingConfig
        /// The body as the client sent it (what `upstreamBody` was made from).
        let originalBody: [UInt8]
        let promptTokens: Int
        let reservedOutputTokens: Int
        let rateLimitHeaders: [(String, String)]
        let encoding: BPEEncoding
        /// The prices of the settings snapshot the request walks with.
        let pricing: Pricing
        /// Where the request's tokens start in the key's month (volume tiers, plans); `nil`: not known.
        let monthTokensBefore: Int?

        init(requestID: String, reservationID: String, key: APIKey, request: OpenAIRequest, endpoint: OpenAIEndpoint, deployments: [UpstreamRoute],
             routing: RoutingConfig, originalBody: [UInt8], promptTokens: Int, reservedOutputTokens: Int, rateLimitHeaders: [(String, String)],
             encoding: BPEEncoding, pricing: Pricing, monthTokensBefore: Int?) {
            self.requestID = requestID
            self.reservationID = reservationID
            self.key = key
            self.request = request
            self.endpoint = endpoint
            self.deployments = deployments
            self.routing = routing
            self.originalBody = originalBody
            self.promptTokens = promptTokens
            self.reservedOutputTokens = reservedOutputTokens
            self.rateLimitHeaders = rateLimitHeaders
            self.encoding = encoding
            self.pricing = pricing
            self.monthTokensBefore = monthTokensBefore
        }
    }

    let facts: Facts
    /// The deployment of the attempt under way (set by the forward step for each attempt).
    var upstream: UpstreamRoute
    var upstreamBody: [UInt8]
    /// The model name `upstreamBody` carries (the request's until a deployment or fallback names another).
    var upstreamBodyModel: String
    /// Requests sent upstream for this one so far (the `x-sluice-attempts` header).
    var attempts = 0
    /// The public model the attempt under way is for: the request's, or a fallback model.
    var model: String

    var requestID: String { facts.requestID }
    var reservationID: String { facts.reservationID }
    var key: APIKey { facts.key }
    var request: OpenAIRequest { facts.request }
    var endpoint: OpenAIEndpoint { facts.endpoint }
    var deployments: [UpstreamRoute] { facts.deployments }
    var routing: RoutingConfig { facts.routing }
    var originalBody: [UInt8] { facts.originalBody }
    var promptTokens: Int { facts.promptTokens }
    var reservedOutputTokens: Int { facts.reservedOutputTokens }
    var rateLimitHeaders: [(String, String)] { facts.rateLimitHeaders }
    var encoding: BPEEncoding { facts.encoding }
    var pricing: Pricing { facts.pricing }
    var monthTokensBefore: Int? { facts.monthTokensBefore }

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
        // At the price of the model that answered: a fallback's when one did.
        return pricing.cost(model: result.fallbackModel ?? model, planName: key.plan, tokens: tokens, monthTokensBefore: monthTokensBefore)
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
    /// The HTTP version the upstream's response came on; nil when none came (or the engine did not say).
    var upstreamHTTPVersion: UpstreamConnectionInfo.HTTPVersion?
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
    /// The deployment of the last attempt (nil when none was tried), and the model it was asked
    /// for when a fallback model answered instead of the requested one.
    var upstreamName: String?
    var fallbackModel: String?
    /// The answering deployment's reservation on its own limits (`upstreams[].limits`), settled
    /// with the request's.
    var deploymentReservation: Reservation?

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
    /// Response header: how many requests went upstream for this one (retries and fallbacks included).
    static let attemptsHeader = "x-sluice-attempts"

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

    /// The upstream span's record of the response head: its status, and events for the connection
    /// (when a new one was made; its connect time) and the first byte (the head's arrival).
    static func recordHead(_ response: UpstreamResponse, on span: any Span, startedAt started: DefaultTracerClock.Instant) {
        if let connection = response.connection, connection.newConnection {
            let connectedAt = DefaultTracerClock.Instant(nanosecondsSinceEpoch: started.nanosecondsSinceEpoch + UInt64(max(connection.connectMicroseconds, 0)) * 1_000)
            span.addEvent(SpanEvent(
                name: "connect", at: connectedAt,
                attributes: ["sluice.upstream.connect_ms": .double(Double(connection.connectMicroseconds) / 1_000)]
            ))
        }
        span.addEvent(SpanEvent(name: "first_byte"))
        span.attributes["http.response.status_code"] = response.status
        if let version = response.connection?.httpVersion {
            span.attributes["network.protocol.version"] = version.rawValue
        }
        if response.status >= 500 {
            span.attributes["error.type"] = "\(response.status)"
            span.setStatus(SpanStatus(code: .error))
        }
        span.end()
    }

    /// A transfer cancelled because the client's connection closed (its task was cancelled) is the
    /// client's doing, not an upstream failure: no error response, no upstream-error metric.
    static func clientWentAway(_ error: UpstreamError) -> Bool {
        error.isCancellation || Task.isCancelled
    }

    /// `tracing`: the client's trace headers are not forwarded; the caller adds Sluice's own.
    func makeUpstreamRequest(_ exchange: ProxyExchange, clientHeaders: HTTPHeaders, tracing: Bool) -> UpstreamRequest {
        var headers: [(name: String, value: String)] = []
        headers.reserveCapacity(clientHeaders.count + 4)
        headers.append(("content-type", "application/json"))
        headers.append(("accept", exchange.request.stream ? "text/event-stream" : "application/json"))
        headers.append(("x-request-id", exchange.requestID))
        for (name, value) in clientHeaders {
            let lowercased = name.asciiLowercased
            if Self.droppedRequestHeaders.contains(lowercased) { continue }
            if tracing, Self.traceContextHeaders.contains(lowercased) { continue }
            headers.append((name, value))
        }
        if let credential = exchange.upstream.credentialHeader { headers.append(credential) }
        return UpstreamRequest(
            url: exchange.upstream.url(for: exchange.endpoint),
            method: "POST",
            headers: headers,
            body: exchange.upstreamBody,
            timeouts: exchange.request.stream ? exchange.upstream.streamTimeouts : exchange.upstream.timeouts,
            httpVersion: exchange.upstream.httpVersion,
            caFile: exchange.upstream.caFile
        )
    }

    func responseHeaders(_ exchange: ProxyExchange, upstream: [(name: String, value: String)]) -> HTTPHeaders {
        var headers = HTTPHeaders()
        headers.reserveCapacity(upstream.count + exchange.rateLimitHeaders.count + 3)
        var upstreamID: String?
        for (name, value) in upstream {
            let lowercased = name.asciiLowercased
            if lowercased == "x-request-id" { upstreamID = upstreamID ?? value }
            if Self.droppedResponseHeaders.contains(lowercased) { continue }
            headers.add(name: name, value: value)
        }
        if let upstreamID {
            headers.add(name: "x-upstream-request-id", value: upstreamID)
        }
        headers.add(name: "x-request-id", value: exchange.requestID)
        for (name, value) in exchange.rateLimitHeaders { headers.add(name: name, value: value) }
        headers.add(name: Self.attemptsHeader, value: String(exchange.attempts))
        return headers
    }

    // MARK: Non-streamed answers (and every upstream error status)

    /// An upstream answer read whole, not yet relayed (an error status the forward step may retry).
    struct CollectedAnswer: Sendable {
        var status: Int
        var headers: [(name: String, value: String)]
        var body: ByteBuffer
    }

    /// Reads an answer's body whole (at most ``maxBufferedResponseBytes``).
    static func collect(_ response: UpstreamResponse) async throws -> ByteBuffer {
        // A small answer is one chunk: kept as it came, not copied into a buffer of its own.
        var collected: ByteBuffer?
        for try await chunk in response.body {
            guard (collected?.readableBytes ?? 0) + chunk.readableBytes <= maxBufferedResponseBytes else {
                throw UpstreamError(kind: .other, detail: "response larger than \(maxBufferedResponseBytes) bytes")
            }
            if collected == nil {
                collected = chunk
            } else {
                var chunk = chunk
                collected!.writeBuffer(&chunk)
            }
        }
        return collected ?? ByteBuffer()
    }

    func relayWhole(_ exchange: ProxyExchange, response: UpstreamResponse, writer: ResponseWriter, logger: RequestLogger, scanning: Bool) async -> RelayResult {
        let collected: ByteBuffer
        do {
            collected = try await Self.collect(response)
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
        return await relayCollected(exchange, CollectedAnswer(status: response.status, headers: response.headers, body: collected), writer: writer, logger: logger, scanning: scanning)
    }

    /// Relays an answer read whole: usage from its JSON (else counted), the status and body as they came.
    /// - Parameter countsError: false when an error status was counted already (an answer held back for a retry).
    func relayCollected(_ exchange: ProxyExchange, _ response: CollectedAnswer, writer: ResponseWriter, logger: RequestLogger, scanning: Bool, countsError: Bool = true) async -> RelayResult {
        let collected = response.body
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
        } else if countsError {
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
    func relayStream(_ exchange: ProxyExchange, response: UpstreamResponse, sent: ContinuousClock.Instant, writer: ResponseWriter, logger: RequestLogger, scanning: Bool) async -> RelayResult {
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
                // Most chunks go to the client as they came: their own buffer, not a copy.
                if let changed = chunk.withUnsafeReadableBytes({ filter.consumeUnlessUnchanged($0) }) {
                    if !changed.isEmpty { try await writer.writeStreamChunk(ByteBuffer(bytes: changed)) }
                } else {
                    try await writer.writeStreamChunk(chunk)
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

extension String {
    /// The name with ASCII letters lowercased; itself (no new string) when it has no uppercase letter,
    /// as most header names sent by HTTP/2-era clients and upstreams do not.
    var asciiLowercased: String {
        utf8.contains(where: { $0 >= UInt8(ascii: "A") && $0 <= UInt8(ascii: "Z") }) ? lowercased() : self
    }
}
