import Foundation
import NIOHTTP1
import SluiceCore
import SluiceUpstream
import XCTest
@testable import SluiceServer

/// The forward step over several deployments, in process: which deployment each attempt goes to,
/// retries before anything reached the client (and never after), fallbacks to other models, the
/// provider's 429 cooling a deployment down, and what each deployment is sent (model name, key
/// header, query). Every admitted request is settled exactly once, whatever the attempts.
final class GatewayForwardTests: XCTestCase {
    private var harness: PipelineHarness!

    /// Two deployments of `gpt-4o-mini` (a.test weight 3, b.test weight 1), `big` on c.test only with
    /// `gpt-4o-mini` as its fallback, and `small-ctx` falling back to `big` on a context-length error.
    static let upstreams = """
        [{"name": "a", "base_url": "http://a.test/v1", "models": ["gpt-4o-mini", "small-ctx"], "weight": 3},
         {"name": "b", "base_url": "http://b.test/v1", "models": ["gpt-4o-mini"], "weight": 1},
         {"name": "c", "base_url": "http://c.test/v1", "models": ["big", "gpt-4o"]}]
        """
    /// Retries without waiting long, and no fallbacks (for the one-deployment configs).
    static let plainRouting = #"{"max_attempts": 3, "backoff_initial_ms": 1, "backoff_max_ms": 2, "max_retry_after_ms": 1000}"#
    static let routing = """
        {"max_attempts": 3, "backoff_initial_ms": 1, "backoff_max_ms": 2, "max_retry_after_ms": 1000,
         "fallbacks": {"big": ["gpt-4o-mini"]}, "context_window_fallbacks": {"small-ctx": ["big"]}}
        """

    override func setUp() async throws {
        harness = try PipelineHarness(upstreams: Self.upstreams, routing: Self.routing)
    }

    override func tearDown() async throws {
        guard let harness else { return }
        let admitted = harness.limiter.admittedIDs
        XCTAssertEqual(harness.limiter.settledIDs.sorted(), admitted.sorted(), "each admission settled exactly once")
    }

    private func chat(model: String = "gpt-4o-mini", stream: Bool = false) -> String {
        #"{"model":"\#(model)","messages":[{"role":"user","content":"Hello!"}]"# + (stream ? #","stream":true"# : "") + "}"
    }

    private static let unavailable = #"{"error":{"message":"overloaded","type":"server_error","code":null}}"#

    // MARK: spreading

    func testRequestsSpreadOverDeploymentsByWeight() async throws {
        for _ in 0..<200 { harness.upstream.script(.ok()) }
        for _ in 0..<200 {
            let response = try await harness.send(body: chat())
            XCTAssertEqual(response.status, 200)
        }
        let toA = harness.upstream.hosts.filter { $0 == "a.test" }.count
        let toB = harness.upstream.hosts.filter { $0 == "b.test" }.count
        XCTAssertEqual(toA + toB, 200)
        // Weight 3 : 1 → 150 expected on a; binomial(200, 0.75) lies in 120...180 with
        // overwhelming probability (±4.9 σ); an even split (100) or one deployment only would not.
        XCTAssertTrue((120...180).contains(toA), "a got \(toA) of 200")
    }

    func testTheLeastLoadedRelativeToWeightIsChosen() {
        // in flight ÷ weight: 4/2 = 2 vs 1/1 = 1 → the second.
        XCTAssertEqual(DeploymentChoice.index(loads: [(4, 2), (1, 1)], random: 0), 1)
        XCTAssertEqual(DeploymentChoice.index(loads: [(1, 1), (3, 2), (0, 1)], random: 0.99), 2)
        // Equal loads: drawn in proportion to the weights (3 : 1 → random < 0.75 picks the first).
        XCTAssertEqual(DeploymentChoice.index(loads: [(0, 3), (0, 1)], random: 0.74), 0)
        XCTAssertEqual(DeploymentChoice.index(loads: [(0, 3), (0, 1)], random: 0.76), 1)
        XCTAssertEqual(DeploymentChoice.index(loads: [(2, 2), (1, 1)], random: 0.66), 0)
        XCTAssertEqual(DeploymentChoice.index(loads: [(2, 2), (1, 1)], random: 0.68), 1)
    }

    // MARK: retries

    func testAConnectFailureIsRetriedOnTheOtherDeployment() async throws {
        // Whichever is tried first fails (twice: the engine's safe re-send), the other answers.
        harness.upstream.script(.fail(.connectFailed), .fail(.connectFailed), .ok(completionTokens: 7))
        let response = try await harness.send(body: chat())
        XCTAssertEqual(response.status, 200, response.body)
        let hosts = harness.upstream.hosts
        XCTAssertEqual(Set(hosts.prefix(2)).count, 1, "the engine re-sends once on the same deployment: \(hosts)")
        XCTAssertEqual(hosts.count, 3, "\(hosts)")
        XCTAssertNotEqual(hosts[2], hosts[0], "the retry goes to the other deployment: \(hosts)")
        XCTAssertEqual(response.headers.first(name: "x-sluice-attempts"), "3")
        XCTAssertEqual(harness.limiter.settlements.map(\.completionTokens), [7])
    }

    func testAnUpstream503IsHeldBackAndTheRequestRetried() async throws {
        harness.upstream.script(.whole(status: 503, body: Self.unavailable), .ok())
        let response = try await harness.send(body: chat())
        XCTAssertEqual(response.status, 200, response.body)
        XCTAssertFalse(response.body.contains("overloaded"), "the held-back 503 never reached the client")
        XCTAssertEqual(harness.upstream.requestCount, 2)
        XCTAssertEqual(response.headers.first(name: "x-sluice-attempts"), "2")
        let metrics = String(decoding: harness.gateway.metrics.exposition(), as: UTF8.self)
        XCTAssertTrue(metrics.contains(#"sluice_upstream_retries_total{upstream="#), metrics)
    }

    func testWhenEveryAttemptFailsTheLastUpstreamAnswerIsRelayedAndNothingCharged() async throws {
        for _ in 0..<3 { harness.upstream.script(.whole(status: 503, body: Self.unavailable)) }
        harness.upstream.script(.ok())  // never reached: three attempts at most
        let response = try await harness.send(body: chat())
        XCTAssertEqual(response.status, 503)
        XCTAssertTrue(response.body.contains("overloaded"), response.body)
        XCTAssertEqual(harness.upstream.requestCount, 3)
        XCTAssertEqual(response.headers.first(name: "x-sluice-attempts"), "3")
        // Both deployments were tried before one was tried again.
        XCTAssertEqual(Set(harness.upstream.hosts.prefix(2)), ["a.test", "b.test"])
        XCTAssertEqual(harness.limiter.settlements.map(\.promptTokens), [0], "an error status is not billed")
    }

    func testAClientErrorIsNotRetried() async throws {
        harness.upstream.script(.whole(status: 400, body: #"{"error":{"message":"bad","type":"invalid_request_error","code":null}}"#), .ok())
        let response = try await harness.send(body: chat())
        XCTAssertEqual(response.status, 400)
        XCTAssertEqual(harness.upstream.requestCount, 1)
        XCTAssertEqual(response.headers.first(name: "x-sluice-attempts"), "1")
    }

    func testNothingIsRetriedOnceTheAnswerStarted() async throws {
        harness.upstream.script(.stream(events: ["Hel", "lo"], thenFail: .connectionDropped), .ok())
        let response = try await harness.send(body: chat(stream: true))
        XCTAssertEqual(response.status, 200)
        XCTAssertTrue(response.body.contains("Hel"), response.body)
        XCTAssertEqual(harness.upstream.requestCount, 1, "a stream cut after its first byte is not sent again")
    }

    func testAFailureAfterTheUpstreamMayHaveStartedIsNotRetried() async throws {
        // A connection dropped before the head: the upstream may have run the request.
        harness.upstream.script(.fail(.connectionDropped), .ok())
        let dropped = try await harness.send(body: chat())
        XCTAssertEqual(dropped.status, 502)
        XCTAssertEqual(harness.upstream.requestCount, 1)
    }

    func testASingleDeploymentIsRetriedAfterABackoffHonouringRetryAfter() async throws {
        harness = try PipelineHarness(upstreams: #"[{"name": "only", "base_url": "http://only.test/v1", "models": ["gpt-4o-mini", "gpt-4o"]}]"#, routing: Self.plainRouting)
        harness.upstream.script(.wholeWithHeaders(status: 429, body: #"{"error":{"message":"slow down","type":"requests","code":"rate_limit_exceeded"}}"#, headers: [("retry-after-ms", "150")]), .ok())
        let started = ContinuousClock.now
        let response = try await harness.send(body: chat())
        XCTAssertEqual(response.status, 200, response.body)
        XCTAssertEqual(harness.upstream.requestCount, 2)
        XCTAssertGreaterThanOrEqual(ContinuousClock.now - started, .milliseconds(150), "the retry waited for the upstream's retry-after")
    }

    func testARetryAfterLongerThanTheBoundIsNotWaitedFor() async throws {
        harness = try PipelineHarness(upstreams: #"[{"name": "only", "base_url": "http://only.test/v1", "models": ["gpt-4o-mini", "gpt-4o"]}]"#, routing: Self.plainRouting)
        harness.upstream.script(.wholeWithHeaders(status: 429, body: #"{"error":{"message":"slow down","type":"requests","code":"rate_limit_exceeded"}}"#, headers: [("retry-after", "30")]), .ok())
        let response = try await harness.send(body: chat())
        XCTAssertEqual(response.status, 429)
        XCTAssertTrue(response.body.contains("slow down"), "the provider's own answer: \(response.body)")
        XCTAssertEqual(harness.upstream.requestCount, 1)
        // The deployment now cools down: the next request is refused by Sluice without reaching it,
        // with the wait until it is free again.
        let next = try await harness.send(body: chat())
        XCTAssertEqual(next.status, 429)
        XCTAssertTrue(next.body.contains("every deployment"), next.body)
        let retryAfter = try XCTUnwrap(next.headers.first(name: "retry-after").flatMap(Double.init))
        XCTAssertTrue((1...60).contains(retryAfter), "retry-after \(retryAfter)")
        XCTAssertEqual(harness.upstream.requestCount, 1)
        XCTAssertEqual(harness.limiter.settlements.map(\.promptTokens), [0, 0])
    }

    func testADeploymentCoolingDownAfterA429IsSkippedForTheOthers() async throws {
        // Whichever deployment is asked first answers 429 with retry-after 20 s.
        harness.upstream.script(.wholeWithHeaders(status: 429, body: #"{"error":{"message":"slow","type":"tokens","code":"rate_limit_exceeded"}}"#, headers: [("retry-after", "20")]))
        for _ in 0..<6 { harness.upstream.script(.ok()) }
        let first = try await harness.send(body: chat())
        XCTAssertEqual(first.status, 200, "the other deployment answered: \(first.body)")
        let cooled = harness.upstream.hosts[0]
        for _ in 0..<5 {
            let response = try await harness.send(body: chat())
            XCTAssertEqual(response.status, 200)
        }
        XCTAssertEqual(harness.upstream.hosts.dropFirst().filter { $0 == cooled }.count, 0, "\(cooled) is skipped while it cools down: \(harness.upstream.hosts)")
    }

    func testAnOpenCircuitIsSkippedForTheOtherDeployment() async throws {
        harness = try PipelineHarness(upstreams: """
            [{"name": "a", "base_url": "http://a.test/v1", "models": ["gpt-4o-mini", "gpt-4o"], "circuit_breaker": {"failure_threshold": 1, "open_ms": 60000}},
             {"name": "b", "base_url": "http://b.test/v1", "models": ["gpt-4o-mini"], "weight": 1000}]
            """, routing: Self.plainRouting)
        harness.upstream.script(host: "a.test", .fail(.connectTimeout))
        harness.upstream.script(host: "b.test", .fail(.connectTimeout))
        // Whichever was first timed out; with threshold 1 only a's circuit opens on one failure.
        for _ in 0..<6 { harness.upstream.script(.ok()) }
        var sawA = false
        for _ in 0..<6 {
            let response = try await harness.send(body: chat())
            XCTAssertEqual(response.status, 200)
            if harness.upstream.hosts.contains("a.test") { sawA = true }
        }
        guard sawA else { return XCTFail("a was never tried: \(harness.upstream.hosts)") }
        let afterA = harness.upstream.hosts.drop { $0 != "a.test" }.dropFirst()
        XCTAssertFalse(afterA.contains("a.test"), "a's circuit is open for 60 s: \(harness.upstream.hosts)")
    }

    // MARK: the provider's own limits

    func testADeploymentAtItsOwnLimitsIsPassedOverAndEveryOneAtItsLimitIs429() async throws {
        harness = try PipelineHarness(upstreams: """
            [{"name": "tier1", "base_url": "http://a.test/v1", "models": ["gpt-4o-mini", "gpt-4o"], "weight": 1000,
              "limits": {"requests_per_minute": 2}},
             {"name": "tier2", "base_url": "http://b.test/v1", "models": ["gpt-4o-mini"], "limits": {"requests_per_minute": 1}}]
            """, routing: Self.plainRouting)
        for _ in 0..<4 { harness.upstream.script(.ok(completionTokens: 2)) }
        var statuses: [Int] = []
        for _ in 0..<4 {
            statuses.append(try await harness.send(body: chat()).status)
        }
        // tier1 (weight 1000) takes its 2 per minute, tier2 its 1; the fourth finds both at their limits.
        XCTAssertEqual(statuses, [200, 200, 200, 429])
        XCTAssertEqual(harness.upstream.hosts.filter { $0 == "a.test" }.count, 2)
        XCTAssertEqual(harness.upstream.hosts.filter { $0 == "b.test" }.count, 1)
        let refused = try await harness.send(body: chat())
        XCTAssertEqual(refused.status, 429)
        XCTAssertTrue(refused.body.contains("reached on every deployment"), refused.body)
        let retryAfter = try XCTUnwrap(refused.headers.first(name: "retry-after").flatMap(Double.init))
        XCTAssertTrue((20...60).contains(retryAfter), "the wait until tier1 admits one more (2/min: 30 s): \(retryAfter)")
        XCTAssertEqual(harness.upstream.requestCount, 3, "nothing was sent beyond the providers' limits")
        // The deployments' own reservations were admitted and settled like the keys' (tearDown checks
        // every admission was settled once): 3 admitted on the deployments, settled at what was answered.
        let deploymentSettlements = harness.limiter.settlements.filter { $0.requestID.contains("~tier") }
        XCTAssertEqual(deploymentSettlements.count, 3)
        XCTAssertEqual(deploymentSettlements.map(\.completionTokens), [2, 2, 2])
    }

    func testAFailedAttemptGivesTheDeploymentsTokensBack() async throws {
        harness = try PipelineHarness(upstreams: """
            [{"name": "tier1", "base_url": "http://a.test/v1", "models": ["gpt-4o-mini", "gpt-4o"], "limits": {"tokens_per_minute": 100000}}]
            """, routing: Self.plainRouting)
        harness.upstream.script(.whole(status: 503, body: Self.unavailable), .ok(completionTokens: 3))
        let response = try await harness.send(body: chat())
        XCTAssertEqual(response.status, 200)
        let deployment = harness.limiter.settlements.filter { $0.requestID.contains("~tier1~") }
        XCTAssertEqual(deployment.map(\.completionTokens), [0, 3], "the failed attempt's reservation refunded, the answered one charged")
        XCTAssertEqual(deployment[0].promptTokens, 0)
        XCTAssertGreaterThan(deployment[1].promptTokens, 0)
    }

    // MARK: fallbacks

    func testAModelWhoseAttemptsAllFailFallsBackToItsFallback() async throws {
        // Three attempts, each sent twice (the engine's safe re-send of a refused connection).
        for _ in 0..<6 { harness.upstream.script(host: "c.test", .fail(.connectFailed)) }
        harness.upstream.script(.ok(completionTokens: 4))
        let response = try await harness.send(body: chat(model: "big"))
        XCTAssertEqual(response.status, 200, response.body)
        let last = try XCTUnwrap(harness.upstream.requests.last)
        XCTAssertNotEqual(ScriptedUpstream.host(of: last.url), "c.test")
        XCTAssertTrue(String(decoding: last.body, as: UTF8.self).contains(#""model":"gpt-4o-mini""#), "the fallback model is sent")
        XCTAssertEqual(harness.limiter.settlements.map(\.completionTokens), [4])
        XCTAssertTrue(String(decoding: harness.gateway.metrics.exposition(), as: UTF8.self).contains(#"sluice_model_fallbacks_total{model="big",fallback="gpt-4o-mini",reason="exhausted"} 1"#))
    }

    func testAContextLengthErrorFallsBackToTheLargerModel() async throws {
        let tooLong = #"{"error":{"message":"This model's maximum context length is 8192 tokens.","type":"invalid_request_error","param":"messages","code":"context_length_exceeded"}}"#
        harness.upstream.script(host: "a.test", .whole(status: 400, body: tooLong))
        harness.upstream.script(host: "c.test", .ok())
        let response = try await harness.send(body: chat(model: "small-ctx"))
        XCTAssertEqual(response.status, 200, response.body)
        XCTAssertEqual(harness.upstream.hosts, ["a.test", "c.test"])
        XCTAssertTrue(String(decoding: harness.upstream.requests[1].body, as: UTF8.self).contains(#""model":"big""#))
        // Without a fallback the 400 goes to the client as it came, once.
        harness.upstream.script(.whole(status: 400, body: tooLong))
        let plain = try await harness.send(body: chat())
        XCTAssertEqual(plain.status, 400)
        XCTAssertTrue(plain.body.contains("context_length_exceeded"))
        XCTAssertEqual(harness.upstream.requestCount, 3)
    }

    // MARK: what each deployment is sent

    func testADeploymentGetsItsModelNameKeyHeaderAndQuery() async throws {
        harness = try PipelineHarness(upstreams: """
            [{"name": "azure", "base_url": "https://example.openai.azure.com/openai/deployments/prod", "models": ["gpt-4o-mini", "gpt-4o"],
              "api_key_env": "AZURE_KEY", "api_key_header": "api-key", "query_params": {"api-version": "2024-10-21", "x y": "a&b"},
              "model_map": {"gpt-4o-mini": "prod-4o-mini"}}]
            """, environment: ["AZURE_KEY": "azure-secret-123"])
        harness.upstream.script(.ok())
        let response = try await harness.send(body: chat(stream: true).replacingOccurrences(of: #","stream":true"#, with: #","stream":false"#))
        XCTAssertEqual(response.status, 200, response.body)
        let request = try XCTUnwrap(harness.upstream.requests.first)
        XCTAssertEqual(request.url, "https://example.openai.azure.com/openai/deployments/prod/chat/completions?api-version=2024-10-21&x%20y=a%26b")
        XCTAssertEqual(request.headers.first { $0.name == "api-key" }?.value, "azure-secret-123")
        XCTAssertNil(request.headers.first { $0.name.lowercased() == "authorization" }, "no bearer header besides api-key")
        let body = String(decoding: request.body, as: UTF8.self)
        XCTAssertTrue(body.contains(#""model":"prod-4o-mini""#), body)
        XCTAssertFalse(body.contains(#""gpt-4o-mini""#), body)
    }
}
