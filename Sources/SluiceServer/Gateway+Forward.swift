import Logging
import NIOCore
import NIOHTTP1
import SluiceCore
import SluiceUpstream
import Tracing

/// Step 6, forward, over a model's deployments: which one each attempt goes to, when to try again
/// and where, and when to fall back to another model. Step 7 (relay) starts once an answer is to be
/// relayed; from its first byte on nothing is retried.
///
/// One request's walk over the deployments:
///
///     choose (weight, least in flight; skip open circuits and deployments cooling down after a 429)
///       → attempt: connection budget (pool) → circuit → send
///       → retryable failure (connect failure, timeout to the first byte, queue timeout, circuit
///         open, or an upstream 429/500/502/503/504 read whole and held back)?
///           another untried deployment at once; else the same ones again after a backoff with
///           jitter (at least the upstream's `retry-after`, up to `routing.max_retry_after_ms`);
///           at most `routing.max_attempts` per model, none started after `routing.retry_budget_ms`
///       → every attempt failed: the model's `fallbacks` (a 400 `context_length_exceeded`: its
///         `context_window_fallbacks`), each the same way
///       → nothing left: the last failure is answered (the held upstream answer as it came, or
///         Sluice's own error).
extension Gateway {
    /// Statuses an upstream answers when another attempt may succeed.
    static let retryableStatuses: Set<Int> = [429, 500, 502, 503, 504]

    /// An upstream 429's `retry-after` makes its deployment cool down for at most this long here.
    static let maximumCooldownMs: Int64 = 60_000

    /// How a request's attempts at one model ended.
    enum ModelAttemptsEnding {
        /// An answer (or an error of Sluice's) went to the client.
        case relayed(RelayResult)
        /// Every attempt failed, or no deployment could be tried.
        case exhausted
        /// The upstream said the prompt does not fit this model's context window.
        case contextWindowExceeded
    }

    /// A failed attempt whose failure nothing has shown the client yet.
    struct AttemptFailure {
        var upstream: String
        var outcome: UpstreamOutcome
        /// An upstream answer read whole: relayed as it came if nothing better comes.
        var answer: CollectedAnswer?
        /// Sluice's own answer for a failure without one from the upstream.
        var error: GatewayError?
        /// What the upstream asked to wait (`retry-after-ms` / `retry-after`).
        var retryAfterMs: Int64?
    }

    /// What one request's forward step has done so far, across attempts and models.
    struct ForwardState {
        let startedNs = MonotonicClock.nanoseconds()
        var lastFailure: AttemptFailure?
        /// Why no deployment could be tried, when none could (circuits open, cooling down).
        var refusal: GatewayError?
        /// Per deployment name: its last retryable failure's `retry-after`.
        var retryAfterMs: [String: Int64] = [:]
        /// Per deployment name: how long until its own limits would admit the request.
        var limitWaitMs: [String: Int64] = [:]
        /// Admissions asked of deployments' limits (names each one's reservation).
        var deploymentAdmissions = 0
        var elapsedMs: Int64 { Int64((MonotonicClock.nanoseconds() - startedNs) / 1_000_000) }
    }

    /// Steps 6 and 7: forward to the model's deployments, relay the answer. Never throws. Records each
    /// attempt's metrics (outcome, duration, time to the response's head) and, with telemetry on,
    /// one upstream span per attempt.
    func forwardAndRelay(_ exchange: ProxyExchange, clientHeaders: HTTPHeaders, writer: ResponseWriter, logger: RequestLogger, trace: RequestTrace?) async -> RelayResult {
        var exchange = exchange
        var state = ForwardState()
        let requested = exchange.request.model
        var model = requested
        var deployments = exchange.deployments
        var fallbacks = exchange.routing.fallbacks[requested] ?? []
        var contextWindowFallbacks = exchange.routing.contextWindowFallbacks[requested] ?? []
        let settings = self.settings
        while true {
            let ending = await attempts(at: model, deployments: deployments, &exchange, &state, clientHeaders: clientHeaders, writer: writer, logger: logger, trace: trace)
            var next: (model: String, deployments: [UpstreamRoute])?
            switch ending {
            case .relayed(var result):
                result.upstreamName = result.upstreamName ?? state.lastFailure?.upstream
                if model != requested { result.fallbackModel = model }
                return result
            case .exhausted:
                next = Self.nextFallback(&fallbacks, key: exchange.key, settings: settings)
            case .contextWindowExceeded:
                next = Self.nextFallback(&contextWindowFallbacks, key: exchange.key, settings: settings)
            }
            guard let next, state.elapsedMs <= exchange.routing.retryBudgetMs else {
                return await answerLastFailure(exchange, state, writer: writer, logger: logger)
            }
            metrics.modelFallback(model: settings.metricLabel(forModel: model), fallback: settings.metricLabel(forModel: next.model),
                                  reason: ending.isContextWindow ? "context_window" : "exhausted")
            logger.info("falling back to another model", metadata: [
                "model": "\(model)", "fallback": "\(next.model)", "reason": "\(ending.isContextWindow ? "context_length_exceeded" : "every attempt failed")",
            ])
            model = next.model
            deployments = next.deployments
        }
    }

    /// The next fallback model the key may use and some upstream serves (taken off `queue`).
    private static func nextFallback(_ queue: inout [String], key: APIKey, settings: GatewaySettings) -> (model: String, deployments: [UpstreamRoute])? {
        while !queue.isEmpty {
            let model = queue.removeFirst()
            if let deployments = settings.route(model: model, for: key) { return (model, deployments) }
        }
        return nil
    }

    /// Up to `routing.max_attempts` attempts at `model` over its deployments.
    private func attempts(at model: String, deployments: [UpstreamRoute], _ exchange: inout ProxyExchange, _ state: inout ForwardState,
                          clientHeaders: HTTPHeaders, writer: ResponseWriter, logger: RequestLogger, trace: RequestTrace?) async -> ModelAttemptsEnding {
        let routing = exchange.routing
        var tried: Set<String> = []
        // Deployments not to try again for this request: their failure was Sluice's own (the
        // connection budget's queue timed out, the circuit refused), which waiting does not mend.
        var noRepeat: Set<String> = []
        var backoffStep = 0
        for attempt in 0..<routing.maxAttempts {
            if attempt > 0, state.elapsedMs > routing.retryBudgetMs { return .exhausted }
            let nowMs = MonotonicClock.milliseconds()
            let open = deployments.filter { deployment in
                !breakers.breaker(for: deployment.name, configuration: deployment.config.circuitBreaker).refusesNow
            }
            var untried = open.filter { !tried.contains($0.name) && cooldowns.remainingMs($0.name, nowMs: nowMs) == 0 }
            var deployment: UpstreamRoute?
            var deploymentReservation: Reservation?
            // A deployment at its provider's limits (`upstreams[].limits`, shared by the fleet) is
            // passed over for another; choosing one does not use up an attempt.
            while deployment == nil, !untried.isEmpty {
                let candidate = choose(untried)
                switch await admit(candidate, model: model, exchange, &state) {
                case .admitted(let reservation):
                    deployment = candidate
                    deploymentReservation = reservation
                case .atLimit:
                    tried.insert(candidate.name)
                    untried.removeAll { $0.name == candidate.name }
                }
            }
            if deployment == nil, attempt == 0 {
                // Nothing can take the request now: every deployment's circuit is open, or its
                // provider's limit is reached (cooling down after a 429, or its own limits).
                state.refusal = refusal(for: deployments, model: model, nowMs: nowMs, state)
                return .exhausted
            }
            if deployment == nil {
                // The same deployments again, after a backoff that is at least what the provider
                // asked to wait (its 429's cooldown or retry-after), as long as that is not too long.
                backoffStep += 1
                let backoffMs = RetryBackoff.delayMs(step: backoffStep, initialMs: routing.backoffInitialMs, maxMs: routing.backoffMaxMs)
                let waits = open.filter { !noRepeat.contains($0.name) }.compactMap { deployment -> (UpstreamRoute, Int64)? in
                    let providerWait = max(cooldowns.remainingMs(deployment.name, nowMs: nowMs), state.retryAfterMs[deployment.name] ?? 0, state.limitWaitMs[deployment.name] ?? 0)
                    guard providerWait <= Int64(routing.maxRetryAfterMs) else { return nil }
                    return (deployment, max(backoffMs, providerWait))
                }
                guard let shortest = waits.map(\.1).min() else { return .exhausted }
                let again = choose(waits.filter { $0.1 == shortest }.map(\.0))
                guard state.elapsedMs + shortest <= Int64(routing.retryBudgetMs) else { return .exhausted }
                do {
                    try await Task.sleep(for: .milliseconds(shortest))
                } catch {
                    return .relayed(.notAnswered(status: 499, outcome: .cancelled))
                }
                guard case .admitted(let reservation) = await admit(again, model: model, exchange, &state) else { return .exhausted }
                deployment = again
                deploymentReservation = reservation
            }
            guard let deployment else { return .exhausted }
            tried.insert(deployment.name)
            exchange.upstream = deployment
            exchange.model = model
            let upstreamModel = deployment.config.upstreamModel(for: model)
            if upstreamModel != exchange.upstreamBodyModel {
                // Another name than the body carries (model_map, a fallback): the body once more.
                exchange.upstreamBody = exchange.request.upstreamBody(original: exchange.originalBody, model: upstreamModel)
                exchange.upstreamBodyModel = upstreamModel
            }
            let ending = await tryDeployment(&exchange, model: model, clientHeaders: clientHeaders, writer: writer, logger: logger, trace: trace)
            switch ending {
            case .relayed(var result):
                // Settled with the request's own settlement, at what the answer cost.
                result.deploymentReservation = deploymentReservation
                return .relayed(result)
            case .failed(let failure), .contextWindowExceeded(let failure):
                // Nothing was answered: the deployment's tokens go back (the request counts, as the
                // provider counts it).
                if let deploymentReservation { await settleDeployment(deploymentReservation, promptTokens: 0, completionTokens: 0, logger: logger) }
                state.lastFailure = failure
                if failure.outcome == .queueTimeout || failure.outcome == .circuitOpen { noRepeat.insert(failure.upstream) }
                if let retryAfter = failure.retryAfterMs { state.retryAfterMs[failure.upstream] = retryAfter }
                if case .contextWindowExceeded = ending { return .contextWindowExceeded }
                if attempt + 1 < routing.maxAttempts {
                    metrics.upstreamRetry(upstream: failure.upstream, reason: failure.outcome)
                }
            }
        }
        return .exhausted
    }

    enum DeploymentAdmission {
        case admitted(Reservation?)
        case atLimit
    }

    /// Admits the request against `deployment`'s own limits (`upstreams[].limits`), in the shared
    /// store under the deployment's name: every node's requests to it share one set of buckets.
    /// Not one atomic step with the key's admission (a deployment's buckets would have to share a
    /// Redis Cluster slot with every key): the key was admitted first and keeps its reservation
    /// while deployments are tried; neither is ever admitted beyond its limits.
    private func admit(_ deployment: UpstreamRoute, model: String, _ exchange: ProxyExchange, _ state: inout ForwardState) async -> DeploymentAdmission {
        guard let limits = deployment.limits else { return .admitted(nil) }
        state.deploymentAdmissions += 1
        let request = AdmissionRequest(
            requestID: "\(exchange.reservationID)~\(deployment.name)~\(state.deploymentAdmissions)", keyID: deployment.config.limiterKeyID,
            limits: limits, model: model, promptTokens: exchange.promptTokens, reservedOutputTokens: exchange.reservedOutputTokens
        )
        do {
            switch try await limiter.admit(request) {
            case .admitted(let reservation, _):
                return .admitted(reservation)
            case .denied(let denial, _):
                let waitMs = denial.neverFits ? Int64.max / 4 : Int64((denial.retryAfterSeconds * 1000).rounded(.up))
                state.limitWaitMs[deployment.name] = waitMs
                metrics.upstreamError(upstream: deployment.name, kind: .atLimit)
                return .atLimit
            }
        } catch {
            // The shared limiter cannot say (its `closed` failure policy): not sent beyond what is known.
            state.limitWaitMs[deployment.name] = 1000
            metrics.upstreamError(upstream: deployment.name, kind: .atLimit)
            return .atLimit
        }
    }

    /// Settles a deployment's reservation; failures are logged (as the key's are).
    func settleDeployment(_ reservation: Reservation, promptTokens: Int, completionTokens: Int, logger: RequestLogger) async {
        do {
            _ = try await limiter.settle(reservation, actualPromptTokens: promptTokens, actualCompletionTokens: completionTokens)
        } catch is FailoverLimiterStore.SettlementDeferred {
            // Retried in the background by the store.
        } catch {
            logger.error("settling the deployment's reservation failed", metadata: ["upstream": "\(reservation.keyID)", "error": "\(error)"])
        }
    }

    /// Among deployments that may be tried: the least in flight relative to its weight (in flight ÷
    /// weight), ties broken at random in proportion to the weights.
    private func choose(_ candidates: [UpstreamRoute]) -> UpstreamRoute {
        guard candidates.count > 1 else { return candidates[0] }
        let loads = candidates.map { (inFlight: pools.pool(for: $0.name, capacity: $0.config.maxConnections).inUse, weight: $0.weight) }
        return candidates[DeploymentChoice.index(loads: loads, random: Double.random(in: 0..<1))]
    }

    /// Why none of a model's deployments could be tried: all cooling down after the provider's 429
    /// (429, with the wait until the first is free again), or circuits open (503).
    /// Each deployment's reason is counted (`sluice_upstream_errors_total` and an exchange of
    /// duration 0, as a refusal by its circuit always was).
    private func refusal(for deployments: [UpstreamRoute], model: String, nowMs: Int64, _ state: ForwardState) -> GatewayError {
        // Per deployment: how long until its provider takes requests again (0: its circuit is open).
        let waits = deployments.map { deployment in
            max(cooldowns.remainingMs(deployment.name, nowMs: nowMs), state.limitWaitMs[deployment.name] ?? 0)
        }
        for (deployment, wait) in zip(deployments, waits) {
            let outcome: UpstreamOutcome = state.limitWaitMs[deployment.name] != nil ? .atLimit : wait > 0 ? .coolingDown : .circuitOpen
            if outcome != .atLimit { metrics.upstreamError(upstream: deployment.name, kind: outcome) }
            metrics.upstreamExchange(upstream: deployment.name, outcome: outcome, duration: .zero, timeToFirstByte: nil)
        }
        if waits.allSatisfy({ $0 > 0 }), let soonest = waits.min() {
            let seconds = Double(soonest) / 1000
            return .rateLimited(
                type: "requests",
                message: "The upstream model provider's rate limit for \(model) is reached on every deployment. Please try again in \(GatewayError.formatRetryDelay(seconds: seconds)).",
                retryAfterSeconds: seconds
            )
        }
        let retryAfter = deployments.compactMap { deployment in
            breakers.breaker(for: deployment.name, configuration: deployment.config.circuitBreaker).refusalSeconds
        }.min() ?? 1
        return .upstreamCircuitOpen(upstream: deployments.map(\.name).joined(separator: ","), retryAfterSeconds: retryAfter)
    }

    /// Nothing more to try: answer what the last attempt got — the upstream's answer as it came, or
    /// Sluice's error for a failure without one.
    private func answerLastFailure(_ exchange: ProxyExchange, _ state: ForwardState, writer: ResponseWriter, logger: RequestLogger) async -> RelayResult {
        let extraHeaders = exchange.rateLimitHeaders + [(Self.attemptsHeader, String(exchange.attempts))]
        guard let failure = state.lastFailure else {
            let refusal = state.refusal ?? .upstreamCircuitOpen(upstream: exchange.upstream.name, retryAfterSeconds: 1)
            _ = await writeError(writer, refusal, requestID: exchange.requestID, keyID: exchange.key.id, model: exchange.request.model, extraHeaders: extraHeaders)
            var result = RelayResult.notAnswered(status: refusal.status, outcome: refusal.status == 429 ? .http429 : .circuitOpen)
            result.attempts = exchange.attempts
            return result
        }
        var result: RelayResult
        if let answer = failure.answer {
            // Its failure was counted when it came.
            result = await relayCollected(exchange, answer, writer: writer, logger: logger, scanning: false, countsError: false)
        } else {
            let error = failure.error ?? .upstreamUnavailable()
            _ = await writeError(writer, error, requestID: exchange.requestID, keyID: exchange.key.id, model: exchange.request.model, extraHeaders: extraHeaders)
            result = .notAnswered(status: error.status, outcome: failure.outcome)
        }
        result.attempts = exchange.attempts
        result.upstreamName = failure.upstream
        return result
    }

    // MARK: One attempt

    enum AttemptEnding {
        case relayed(RelayResult)
        case failed(AttemptFailure)
        case contextWindowExceeded(AttemptFailure)
    }

    /// One attempt at `exchange.upstream`: its connection budget, its circuit, the request, and either
    /// the relay of its answer or a failure held back for the next attempt.
    private func tryDeployment(_ exchange: inout ProxyExchange, model: String, clientHeaders: HTTPHeaders, writer: ResponseWriter, logger: RequestLogger, trace: RequestTrace?) async -> AttemptEnding {
        let deployment = exchange.upstream
        // The upstream span covers the exchange up to the response head (events: the connection,
        // the first byte); the relay span, its sibling, the answer's way to the client.
        let upstreamSpan = trace?.child("upstream", kind: .client)
        upstreamSpan?.updateAttributes { attributes in
            attributes["sluice.upstream"] = deployment.name
            attributes["gen_ai.request.model"] = model
        }
        func failSpan(_ kind: String) {
            guard let upstreamSpan else { return }
            upstreamSpan.attributes["error.type"] = kind
            upstreamSpan.setStatus(SpanStatus(code: .error, message: kind))
            upstreamSpan.end()
        }

        // The connection budget first: a request that times out in the queue never took a breaker
        // probe it would then have to report.
        let pool = pools.pool(for: deployment.name, capacity: deployment.config.maxConnections)
        let queueTimeoutMs = deployment.config.queueTimeoutMs
        let grant = await pool.acquire(timeoutMs: queueTimeoutMs) { [logger] in
            // Logged as the queue forms (at most once per 10 s per upstream), not once it drained.
            logger.warning("upstream connection pool exhausted, requests queue", metadata: [
                "upstream": "\(pool.name)", "max_connections": "\(pool.capacity)", "queued": "\(pool.queued)",
                "queue_timeout_ms": "\(queueTimeoutMs)",
            ])
        }
        metrics.upstreamQueueWait(upstream: deployment.name, waited: .nanoseconds(Int64(grant.waitedNs)))
        switch grant.outcome {
        case .granted:
            break
        case .cancelled:
            // Left while queued: nothing was sent, nothing to charge.
            upstreamSpan?.end()
            return .relayed(.notAnswered(status: 499, outcome: .cancelled))
        case .timedOut:
            metrics.upstreamError(upstream: deployment.name, kind: .queueTimeout)
            metrics.upstreamExchange(upstream: deployment.name, outcome: .queueTimeout, duration: .zero, timeToFirstByte: nil)
            failSpan("queue_timeout")
            let waitedMs = grant.waitedNs / 1_000_000
            let error = GatewayError.serviceUnavailable(
                message: "The upstream model provider is busy. Please try again later.", retryAfterSeconds: 1,
                logDetail: "upstream \(deployment.name): no connection free within queue_timeout_ms (waited \(waitedMs) ms, max_connections \(pool.capacity))"
            )
            return .failed(AttemptFailure(upstream: deployment.name, outcome: .queueTimeout, error: error))
        }
        defer { pool.release() }

        let breaker = breakers.breaker(for: deployment.name, configuration: deployment.config.circuitBreaker)
        if case .reject(let retryAfter) = breaker.acquire() {
            metrics.upstreamError(upstream: deployment.name, kind: .circuitOpen)
            metrics.upstreamExchange(upstream: deployment.name, outcome: .circuitOpen, duration: .zero, timeToFirstByte: nil)
            failSpan("circuit_open")
            let error = GatewayError.upstreamCircuitOpen(upstream: deployment.name, retryAfterSeconds: retryAfter)
            return .failed(AttemptFailure(upstream: deployment.name, outcome: .circuitOpen, error: error))
        }

        var upstreamRequest = makeUpstreamRequest(exchange, clientHeaders: clientHeaders, tracing: trace != nil)
        if let trace, let upstreamSpan { trace.inject(upstreamSpan, into: &upstreamRequest.headers) }
        let sent = ContinuousClock.now
        let started = DefaultTracerClock.now
        let attemptsBefore = exchange.attempts
        var sends = 0
        func exchangeEnded(_ outcome: UpstreamOutcome, firstByte: ContinuousClock.Instant?) -> Duration {
            let duration = ContinuousClock.now - sent
            metrics.upstreamExchange(upstream: deployment.name, outcome: outcome, duration: duration, timeToFirstByte: firstByte.map { $0 - sent })
            return duration
        }
        var httpVersion: UpstreamConnectionInfo.HTTPVersion?
        /// The attempt's end with what the client got: the exchange's metrics and times recorded.
        func relayed(_ result: RelayResult, firstByte: ContinuousClock.Instant?) -> AttemptEnding {
            var result = result
            result.upstreamHTTPVersion = httpVersion
            result.upstreamTime = exchangeEnded(result.upstreamOutcome, firstByte: firstByte)
            result.timeToFirstByte = firstByte.map { $0 - sent }
            result.attempts = exchange.attempts
            result.upstreamName = deployment.name
            return .relayed(result)
        }
        let response: UpstreamResponse
        do {
            if let upstreamSpan {
                sends = 1
                defer { exchange.attempts = attemptsBefore + sends }
                response = try await engine.executeRetryingSafeFailures(upstreamRequest) { error in
                    sends += 1
                    upstreamSpan.addEvent(SpanEvent(name: "retry", attributes: ["error.type": "\(error.kind)"]))
                }
                upstreamSpan.attributes["sluice.attempts"] = sends
                Self.recordHead(response, on: upstreamSpan, startedAt: started)
            } else {
                defer { exchange.attempts = attemptsBefore + sends }
                response = try await engine.executeRetryingSafeFailures(upstreamRequest, attempts: &sends)
            }
            breaker.record(upstreamDown: response.meansUpstreamDown)
        } catch where Self.clientWentAway(error) {
            breaker.record(upstreamDown: false)  // unknown: the client left first; don't punish the upstream
            if let upstreamSpan {
                upstreamSpan.attributes["error.type"] = "cancelled"
                upstreamSpan.end()
            }
            return relayed(.clientGoneBeforeAnswer, firstByte: nil)
        } catch {
            failSpan("\(error.kind)")
            breaker.record(upstreamDown: error.meansUpstreamDown)
            let outcome = UpstreamOutcome(error.kind)
            metrics.upstreamError(upstream: deployment.name, kind: outcome)
            logger.warning("upstream request failed", metadata: ["upstream": "\(deployment.name)", "error": "\(error.kind)", "detail": "\(error.detail)"])
            let gatewayError = GatewayError(upstream: error, upstreamName: deployment.name)
            let failure = AttemptFailure(upstream: deployment.name, outcome: outcome, error: gatewayError)
            // Retried only when the upstream cannot have started answering: nothing reached the
            // client either way, but a request cut mid-answer may have run.
            if error.allowsAnotherAttempt {
                _ = exchangeEnded(outcome, firstByte: nil)
                return .failed(failure)
            }
            _ = await writeError(writer, gatewayError, requestID: exchange.requestID, keyID: exchange.key.id, model: exchange.request.model,
                                 extraHeaders: exchange.rateLimitHeaders + [(Self.attemptsHeader, String(exchange.attempts))])
            return relayed(.notAnswered(status: gatewayError.status, outcome: outcome), firstByte: nil)
        }
        let firstByte = ContinuousClock.now
        httpVersion = response.connection?.httpVersion
        if let httpVersion { metrics.upstreamResponse(upstream: deployment.name, httpVersion: httpVersion) }

        // An answer another attempt may better: read whole (error bodies are small) and held back.
        let mayFallBackOnContext = response.status == 400 && !(exchange.routing.contextWindowFallbacks[exchange.request.model] ?? []).isEmpty
        if Self.retryableStatuses.contains(response.status) || mayFallBackOnContext {
            let body: ByteBuffer
            do {
                body = try await Self.collect(response)
            } catch {
                if (error as? UpstreamError).map(Self.clientWentAway) ?? true || Task.isCancelled {
                    return relayed(.clientGoneBeforeAnswer, firstByte: firstByte)
                }
                let outcome = UpstreamOutcome.connectionDropped
                metrics.upstreamError(upstream: deployment.name, kind: outcome)
                _ = exchangeEnded(outcome, firstByte: firstByte)
                return .failed(AttemptFailure(upstream: deployment.name, outcome: outcome, error: .upstreamUnavailable(logDetail: "upstream \(deployment.name): \(error)")))
            }
            let answer = CollectedAnswer(status: response.status, headers: response.headers, body: body)
            let outcome = UpstreamOutcome(status: response.status)
            if response.status == 400 {
                if body.readableBytesView.firstRange(of: Array(#""context_length_exceeded""#.utf8)) != nil {
                    metrics.upstreamError(upstream: deployment.name, kind: outcome)
                    _ = exchangeEnded(outcome, firstByte: firstByte)
                    return .contextWindowExceeded(AttemptFailure(upstream: deployment.name, outcome: outcome, answer: answer))
                }
            } else {
                metrics.upstreamError(upstream: deployment.name, kind: outcome)
                _ = exchangeEnded(outcome, firstByte: firstByte)
                let retryAfterMs = RetryBackoff.retryAfterMs(response.headers)
                if response.status == 429, let retryAfterMs, retryAfterMs > 0 {
                    // The provider's own limit: skip this deployment here until then.
                    cooldowns.coolDown(deployment.name, forMs: min(retryAfterMs, Self.maximumCooldownMs), nowMs: MonotonicClock.milliseconds())
                }
                return .failed(AttemptFailure(upstream: deployment.name, outcome: outcome, answer: answer, retryAfterMs: retryAfterMs))
            }
            // A 400 of another kind: relayed as it came.
            return relayed(await relayCollected(exchange, answer, writer: writer, logger: logger, scanning: false), firstByte: firstByte)
        }

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
        return relayed(result, firstByte: firstByte)
    }
}

extension Gateway.ModelAttemptsEnding {
    var isContextWindow: Bool {
        if case .contextWindowExceeded = self { return true }
        return false
    }
}

extension UpstreamError {
    /// Another attempt may be made after this failure: the upstream cannot have started answering
    /// (no connection, or no first byte in time). A failure after the answer started is not retried.
    var allowsAnotherAttempt: Bool {
        switch kind {
        case .connectFailed, .connectTimeout, .firstByteTimeout: true
        case .stallTimeout, .totalTimeout, .connectionDropped, .cancelled, .shuttingDown, .tooManyTransfers, .other: false
        }
    }
}

/// The choice among a model's deployments, as a pure function (unit-tested).
enum DeploymentChoice {
    /// The index of the least loaded candidate relative to its weight (in flight ÷ weight, compared
    /// exactly); among equals, one drawn in proportion to the weights with `random` in [0, 1).
    static func index(loads: [(inFlight: Int, weight: Int)], random: Double) -> Int {
        var equals: [Int] = []
        for (index, load) in loads.enumerated() {
            guard let first = equals.first else {
                equals = [index]
                continue
            }
            let best = loads[first]
            // inFlight / weight < best.inFlight / best.weight, without division.
            let lhs = load.inFlight * best.weight, rhs = best.inFlight * load.weight
            if lhs < rhs { equals = [index] } else if lhs == rhs { equals.append(index) }
        }
        guard equals.count > 1 else { return equals.first ?? 0 }
        let total = equals.reduce(0) { $0 + max(loads[$1].weight, 1) }
        var draw = random * Double(total)
        for index in equals {
            draw -= Double(max(loads[index].weight, 1))
            if draw < 0 { return index }
        }
        return equals[equals.count - 1]
    }
}

/// Waits between attempts at the same deployments.
enum RetryBackoff {
    /// Exponential from `initialMs` (doubling per step, at most `maxMs`), with jitter: a uniformly
    /// drawn share of it between a half and the whole, so that many requests failing together do
    /// not come back together.
    static func delayMs(step: Int, initialMs: Int, maxMs: Int, random: Double = Double.random(in: 0..<1)) -> Int64 {
        let exponent = min(max(step - 1, 0), 30)
        let ceiling = min(Int64(initialMs) << Int64(exponent), Int64(maxMs))
        return ceiling / 2 + Int64(Double(ceiling - ceiling / 2) * random)
    }

    /// The wait an upstream asks for: `retry-after-ms` (OpenAI's, milliseconds), else `retry-after`
    /// in seconds (an HTTP date is not read). Bounded to a day; nil when absent or unreadable.
    static func retryAfterMs(_ headers: [(name: String, value: String)]) -> Int64? {
        var seconds: Double?
        for (name, value) in headers {
            switch name.lowercased() {
            case "retry-after-ms":
                if let ms = Double(value.trimmedOfSpaces), ms.isFinite, ms >= 0 { return Int64(min(ms, 86_400_000)) }
            case "retry-after":
                if let value = Double(value.trimmedOfSpaces), value.isFinite, value >= 0 { seconds = value }
            default:
                continue
            }
        }
        return seconds.map { Int64(min($0, 86_400) * 1000) }
    }
}

private extension String {
    var trimmedOfSpaces: Substring {
        var s = self[...]
        while s.first == " " || s.first == "\t" { s = s.dropFirst() }
        while s.last == " " || s.last == "\t" { s = s.dropLast() }
        return s
    }
}
