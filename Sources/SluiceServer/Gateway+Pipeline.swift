import Logging
import NIOCore
import NIOHTTP1
import NIOPosix
import SluiceCore
import SluiceTokenizer
import SluiceUpstream
import Tracing

/// The request's walk through the gateway, one named step after the other:
///
///     authenticate → read → authorize → count → admit → forward → relay → settle
///
/// Every step before `admit` can refuse the request with a `GatewayError`; nothing is reserved yet.
/// From `admit` on, the reservation is settled exactly once, whatever happens: upstream failure,
/// client disconnect, or success.
extension Gateway {
    /// `requestID` is the id the client meets (its own `x-request-id` when well-formed);
    /// `reservationID` is Sluice's own, unique per request: the limiter's name for the reservation.
    /// `trace`: the request's spans when telemetry is on (one child span per step from count on).
    func proxy(_ endpoint: OpenAIEndpoint, request: HTTPRequest, requestID: String, reservationID: String, writer: ResponseWriter, logger: RequestLogger, trace: RequestTrace?) async -> RequestOutcome {
        // One snapshot of the key table and routing for the whole walk, even across a reload.
        let settings = self.settings
        // 1. authenticate: Bearer secret → SHA-256 → key table.
        let key: APIKey
        switch authenticate(request.head, keys: settings.keys) {
        case .success(let found): key = found
        case .failure(let error): return await writeError(writer, error, requestID: requestID)
        }
        trace?.root.attributes["sluice.key"] = key.id

        // 2. read: the fields that matter, parsed once from the body (UTF-8 checked).
        let body = Array(request.body.readableBytesView)
        let openAIRequest: OpenAIRequest
        do {
            openAIRequest = try OpenAIRequest.parse(body, endpoint: endpoint)
        } catch {
            return await refuse(error, key: key, model: nil, requestID: requestID, writer: writer)
        }
        let model = openAIRequest.model
        if let trace {
            trace.root.updateAttributes { attributes in
                attributes["gen_ai.request.model"] = model
                attributes["sluice.stream"] = openAIRequest.stream
                if let maxTokens = openAIRequest.maxOutputTokens { attributes["gen_ai.request.max_tokens"] = maxTokens }
            }
        }

        // 3. authorize: the key may use the model, and an upstream serves it.
        guard let deployments = settings.route(model: model, for: key) else {
            // No model label: an unknown name from a client must not become a metrics label value.
            return await refuse(.modelNotFound(model), key: key, model: nil, requestID: requestID, writer: writer)
        }

        // 4. count: exact prompt tokens, and the output reservation. A prompt whose size alone
        // proves that it can never fit the key's buckets is not counted: its lower bound goes to
        // admit, which refuses it. A large prompt is counted off the event loop (which serves other
        // connections meanwhile).
        let countSpan = trace?.child("count")
        let reservedOutputTokens = openAIRequest.reservedOutputTokens(defaultOutputTokens: key.defaultOutputTokens)
        let promptBytes = promptCounter.promptBytes(openAIRequest)
        let fewestPromptTokens = promptCounter.minimumTokens(promptBytes: promptBytes)
        let largestPrompt = key.limits.largestAdmissiblePrompt(reservedOutputTokens: reservedOutputTokens)
        // A Responses request continuing a stored conversation: the upstream adds turns Sluice
        // cannot see; reserve the key's allowance for them (settled with the upstream's count).
        let storedContextAllowance = openAIRequest.continuesStoredConversation ? key.previousResponseAllowanceTokens : 0
        var promptTokens: Int
        if let largestPrompt, fewestPromptTokens > largestPrompt {
            promptTokens = fewestPromptTokens
        } else {
            do {
                // Counting stops once the prompt is known not to fit: admit refuses it either way.
                promptTokens = try await countPrompt(openAIRequest, promptBytes: promptBytes, stoppingAbove: largestPrompt)
            } catch {
                countSpan?.setStatus(SpanStatus(code: .error, message: "counting refused the prompt"))
                countSpan?.end()
                return await refuse(error, key: key, model: model, requestID: requestID, writer: writer)
            }
        }
        promptTokens += storedContextAllowance
        if let countSpan {
            countSpan.updateAttributes { attributes in
                attributes["sluice.prompt_tokens"] = promptTokens
                attributes["sluice.prompt_bytes"] = promptBytes
                attributes["sluice.reserved_output_tokens"] = reservedOutputTokens
                attributes["sluice.count.off_loop"] = promptBytes > Self.offLoopCountBytes
            }
            countSpan.end()
        }

        // 5. admit: one atomic step over all of the key's limits. The reservation is named by
        // Sluice's own id, never the client's (a retry repeats that one).
        var admission = AdmissionRequest(
            requestID: reservationID, keyID: key.id, limits: key.limits, model: model,
            promptTokens: promptTokens, reservedOutputTokens: reservedOutputTokens
        )
        admission.team = key.team
        // Volume tiers and plans price a token by where it falls in the key's month (its team's,
        // for a key in a team): the limiter counts that month's tokens and tells the request where
        // its own start.
        if let price = settings.pricing.price(for: model)?.price {
            admission.tracksMonthTokens = price.dependsOnMonthPosition(plan: key.plan.flatMap { settings.pricing.plans[$0] })
        }
        // A budget (the key's or its team's) reserves the most the request can cost (the prompt and
        // the output reservation at the model's dearest prices); a model without a price cannot be
        // charged against it.
        if admission.needsCostReservation {
            guard let price = settings.pricing.price(for: model)?.price else {
                return await refuse(.budgetUnpriced(model: model), key: key, model: model, requestID: requestID, writer: writer)
            }
            admission.reservedCostNanos = price.maximumCost(inputTokens: promptTokens, outputTokens: reservedOutputTokens).nanos
        }
        let reservation: Reservation
        let rateLimitHeaders: [(String, String)]
        let admitSpan = trace?.child("admit")
        do {
            switch try await limiter.admit(admission) {
            case .admitted(let granted, let snapshot):
                reservation = granted
                rateLimitHeaders = RateLimitHeaders.render(snapshot)
                if key.exportsMetrics { metrics.keyRemaining(keyID: key.id, snapshot: snapshot) }
                if let trace, let admitSpan {
                    admitSpan.attributes["sluice.admit.result"] = "admitted"
                    admitSpan.end()
                    snapshot.record(on: trace.root)
                }
            case .denied(let denial, let snapshot):
                if let trace, let admitSpan {
                    admitSpan.updateAttributes { attributes in
                        attributes["sluice.admit.result"] = "denied"
                        attributes["sluice.denial.kind"] = denial.kind.metricLabel
                    }
                    admitSpan.end()
                    trace.root.updateAttributes { attributes in
                        attributes["sluice.denial.kind"] = denial.kind.metricLabel
                        attributes["sluice.denial.limit"] = denial.limit
                        attributes["sluice.denial.requested"] = denial.requested
                        attributes["sluice.denial.retry_after_seconds"] = denial.retryAfterSeconds
                        attributes["sluice.denial.never_fits"] = denial.neverFits
                    }
                    snapshot.record(on: trace.root)
                }
                metrics.rateLimited(kind: denial.kind, keyID: key.id)
                if key.exportsMetrics { metrics.keyRemaining(keyID: key.id, snapshot: snapshot) }
                if denial.neverFits { await chargeRefusedRequest(admission) }
                return await writeError(
                    writer, denial.gatewayError(model: model), requestID: requestID,
                    keyID: key.id, model: model, extraHeaders: RateLimitHeaders.render(snapshot)
                )
            }
        } catch {
            if let admitSpan {
                admitSpan.attributes["sluice.admit.result"] = "error"
                admitSpan.setStatus(SpanStatus(code: .error, message: "limiter unavailable"))
                admitSpan.end()
            }
            logger.error("limiter unavailable", metadata: ["error": "\(error)"])
            return await writeError(writer, .limiterUnavailable(), requestID: requestID, keyID: key.id, model: model)
        }

        // 6–7. forward and relay. Never throws: every failure is answered (or the stream cut) inside.
        let facts = ProxyExchange.Facts(
            requestID: requestID, reservationID: reservationID, key: key, request: openAIRequest, endpoint: endpoint, deployments: deployments,
            routing: settings.routing, originalBody: body, promptTokens: promptTokens, reservedOutputTokens: reservedOutputTokens,
            rateLimitHeaders: rateLimitHeaders, encoding: tokenizers.encoding(forModel: model), pricing: settings.pricing,
            monthTokensBefore: reservation.monthTokensBefore
        )
        let exchange = ProxyExchange(
            facts: facts, upstream: deployments[0], upstreamBody: openAIRequest.upstreamBody(original: body), upstreamBodyModel: model, model: model
        )
        let relayed = await forwardAndRelay(exchange, clientHeaders: request.head.headers, writer: writer, logger: logger, trace: trace)

        // 8. settle: refund or charge the difference to the reservation, exactly once (what is
        // charged for each outcome: `RelayResult`).
        // The Responses API's input is charged as the upstream reports it (`input_tokens`): its
        // framing is not verified, and stored conversations are invisible to Sluice.
        let chargedPromptTokens = relayed.chargesPrompt ? (relayed.reportedPromptTokens ?? promptTokens) : 0
        // Usage is recorded under the client's model name when the model answered (an upstream
        // refuses names it does not serve), else under the config entry that routed it: names a
        // client invents under a wildcard must not grow the usage records without bound.
        let answered = (200..<300).contains(relayed.status)
        if let deploymentReservation = relayed.deploymentReservation {
            await settleDeployment(deploymentReservation, promptTokens: chargedPromptTokens, completionTokens: relayed.completionTokens, logger: logger)
        }
        let modelLabel = deployments[0].metricLabel(forModel: model)
        var settling = answered ? reservation : reservation.recordingUsage(as: modelLabel)
        // What it cost: the same value the non-streamed answer's x-sluice-cost-usd carried.
        let cost = exchange.cost(of: relayed)
        settling.settledCost = cost
        let settleSpan = trace?.child("settle")
        defer { settleSpan?.end() }
        if let settleSpan {
            settleSpan.updateAttributes { attributes in
                attributes["sluice.settle.prompt_tokens"] = chargedPromptTokens
                attributes["sluice.settle.completion_tokens"] = relayed.completionTokens
            }
        }
        do {
            let after = try await limiter.settle(settling, actualPromptTokens: chargedPromptTokens, actualCompletionTokens: relayed.completionTokens)
            if key.exportsMetrics, let after { metrics.keyRemaining(keyID: key.id, snapshot: after) }
        } catch let deferred as FailoverLimiterStore.SettlementDeferred {
            logger.warning("settling the reservation deferred: the shared limiter did not answer; retried in the background", metadata: ["error": "\(deferred.underlying)"])
            settleSpan?.attributes["sluice.settle.deferred"] = true
        } catch {
            settleSpan?.setStatus(SpanStatus(code: .error, message: "settling failed"))
            logger.error("settling the reservation failed", metadata: ["error": "\(error)"])
        }
        metrics.tokens(keyID: key.id, model: modelLabel, prompt: chargedPromptTokens, completion: relayed.completionTokens)
        if let cost { metrics.spend(keyID: key.id, exportsMetrics: key.exportsMetrics, model: modelLabel, cost: cost) }
        if relayed.chargesPrompt, let upstreamTime = relayed.upstreamTime {
            recordGenAI(endpoint: endpoint, model: modelLabel, promptTokens: chargedPromptTokens, relayed: relayed, upstreamTime: upstreamTime)
        }
        if let trace {
            trace.root.updateAttributes { attributes in
                // Input: Sluice's exact count of the prompt, when it was charged (the model answered).
                attributes["gen_ai.usage.input_tokens"] = chargedPromptTokens
                attributes["gen_ai.usage.output_tokens"] = relayed.completionTokens
                if let upstream = relayed.upstreamName { attributes["sluice.upstream"] = upstream }
                if let fallback = relayed.fallbackModel { attributes["sluice.fallback_model"] = fallback }
                attributes["sluice.attempts"] = relayed.attempts
                if let responseModel = relayed.responseModel { attributes["gen_ai.response.model"] = responseModel }
                if !relayed.finishReasons.isEmpty { attributes["gen_ai.response.finish_reasons"] = relayed.finishReasons }
            }
        }
        var outcome = RequestOutcome(status: relayed.status, keyID: key.id, model: model, promptTokens: chargedPromptTokens, completionTokens: relayed.completionTokens)
        outcome.upstreamTime = relayed.upstreamTime
        outcome.upstream = relayed.upstreamName
        outcome.fallbackModel = relayed.fallbackModel
        outcome.attempts = relayed.attempts
        outcome.upstreamHTTPVersion = relayed.upstreamHTTPVersion
        outcome.streamed = relayed.streamed
        outcome.timeToFirstByte = relayed.timeToFirstByte
        outcome.cachedInputTokens = relayed.cachedInputTokens
        outcome.cost = cost
        outcome.reasoningTokens = relayed.reasoningTokens
        return outcome
    }

    /// The `gen_ai_*` metrics of a request the model answered (OpenTelemetry's GenAI conventions):
    /// tokens, the upstream exchange's duration, and for streams the time to the first chunk and
    /// the time per output token after it.
    private func recordGenAI(endpoint: OpenAIEndpoint, model: String, promptTokens: Int, relayed: RelayResult, upstreamTime: Duration) {
        let isEmbeddings = endpoint == .embeddings
        var timePerOutputToken: Duration?
        if relayed.streamed, let first = relayed.timeToFirstChunk, relayed.completionTokens > 1 {
            timePerOutputToken = (upstreamTime - first) / (relayed.completionTokens - 1)
        }
        metrics.genAIRequest(
            operation: endpoint.genAIOperationName, model: model, inputTokens: promptTokens,
            outputTokens: isEmbeddings ? nil : relayed.completionTokens, duration: upstreamTime,
            timeToFirstToken: relayed.streamed ? relayed.timeToFirstChunk : nil, timePerOutputToken: timePerOutputToken
        )
    }

    // MARK: - Steps

    func authenticate(_ head: HTTPRequestHead, keys: KeyTable) -> Result<APIKey, GatewayError> {
        guard let header = head.headers.first(name: "authorization") else { return .failure(.missingAPIKey()) }
        let prefix = "bearer "
        guard header.count > prefix.count, header.prefix(prefix.count).lowercased() == prefix else {
            return .failure(.missingAPIKey())
        }
        let secret = header.dropFirst(prefix.count).trimmingSpaces()
        guard let key = keys.authenticate(bearerSecret: secret) else {
            return .failure(.invalidAPIKey(presented: secret))
        }
        return .success(key)
    }

    /// Prompts larger than this are counted on NIO's thread pool instead of the request's event loop
    /// (counting runs at roughly 10–20 MB/s here: 256 KiB is 10–25 ms of a loop's time).
    static let offLoopCountBytes = 256 * 1024

    /// Step 4's count, on the event loop for ordinary prompts and on NIO's thread pool for large ones.
    func countPrompt(_ request: OpenAIRequest, promptBytes: Int, stoppingAbove limit: Int?) async throws(GatewayError) -> Int {
        guard promptBytes > Self.offLoopCountBytes else { return try promptCounter.count(request, stoppingAbove: limit) }
        let counter = promptCounter
        do {
            return try await NIOThreadPool.singleton.runIfActive { try counter.count(request, stoppingAbove: limit) }
        } catch let error as GatewayError {
            throw error
        } catch {
            throw .shuttingDown()
        }
    }

    /// A request refused because it can never fit (larger than a bucket can hold) still costs one
    /// request on the key's requests-per-minute limit: reading and counting it was work, and a client
    /// must not be able to make the gateway repeat that work without limit. Charged as an admission
    /// of the requests limit alone, settled at once.
    private func chargeRefusedRequest(_ refused: AdmissionRequest) async {
        guard let requests = refused.limits.requests else { return }
        let charge = AdmissionRequest(
            requestID: refused.requestID, keyID: refused.keyID, limits: ResolvedLimits(requests: requests),
            model: refused.model, promptTokens: 0, reservedOutputTokens: 0
        )
        guard case .admitted(let reservation, _)? = try? await limiter.admit(charge) else { return }
        _ = try? await limiter.settle(reservation, actualPromptTokens: 0, actualCompletionTokens: 0)
    }

    /// Refuses a request after authentication and before admission (400, 404). No rate-limit headers:
    /// they would cost a limiter round trip (Redis) for every bad request.
    private func refuse(_ error: GatewayError, key: APIKey, model: String?, requestID: String, writer: ResponseWriter) async -> RequestOutcome {
        await writeError(writer, error, requestID: requestID, keyID: key.id, model: model)
    }
}

private extension Substring {
    func trimmingSpaces() -> String {
        var s = self[...]
        while s.first == " " { s = s.dropFirst() }
        while s.last == " " { s = s.dropLast() }
        return String(s)
    }
}
