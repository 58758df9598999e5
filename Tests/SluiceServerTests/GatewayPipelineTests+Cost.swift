import NIOHTTP1
import SluiceCore
import XCTest
@testable import SluiceServer

/// The cost of each request at the configured prices: the `x-sluice-cost-usd` header of non-streamed
/// answers, and the cost settled (and recorded) for every outcome.
final class GatewayPipelineCostTests: XCTestCase {
    /// $0.15 / $0.075 / $0.60 per million: 150 n$ per input token, 75 cached, 600 output.
    static let pricing = #"{"models": {"gpt-4o-mini": {"input_per_mtok": 0.15, "cached_input_per_mtok": 0.075, "output_per_mtok": 0.6}}}"#
    var harness: PipelineHarness!

    override func setUp() async throws {
        harness = try PipelineHarness(pricing: Self.pricing)
    }

    private func chat(_ extra: String = "", stream: Bool = false, model: String = "gpt-4o-mini") -> String {
        #"{"model":"\#(model)","messages":[{"role":"user","content":"Hello!"}]\#(extra)\#(stream ? #","stream":true"# : "")}"#
    }

    private func answer(completionTokens: Int, cachedTokens: Int) -> ScriptedUpstream.Answer {
        .whole(status: 200, body: #"{"id":"chatcmpl-scripted","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":\#(completionTokens),"total_tokens":99,"prompt_tokens_details":{"cached_tokens":\#(cachedTokens)}}}"#)
    }

    func testNonStreamedAnswerCarriesItsExactCost() async throws {
        harness.upstream.script(answer(completionTokens: 5, cachedTokens: 4))
        let response = try await harness.send(body: chat())
        XCTAssertEqual(response.status, 200)
        let prompt = try XCTUnwrap(harness.limiter.admissions.first?.promptTokens)
        // (prompt − 4) uncached × 150 n$ + 4 cached × 75 n$ + 5 output × 600 n$, Sluice's count of the prompt.
        let expected = USDAmount(nanos: Int64((prompt - 4) * 150 + 4 * 75 + 5 * 600))
        XCTAssertEqual(response.headers.first(name: "x-sluice-cost-usd"), expected.description)
        XCTAssertEqual(harness.limiter.settlements.first?.cost, .known(expected), "the header's value is the one settled")
    }

    func testStreamedAnswerSettlesItsCostWithoutAHeader() async throws {
        harness.upstream.script(.stream(events: ["Hello", " world"]))
        let response = try await harness.send(body: chat(stream: true))
        XCTAssertEqual(response.status, 200)
        XCTAssertNil(response.headers.first(name: "x-sluice-cost-usd"), "the head leaves before the cost is known")
        // No usage reported: the 2 tokens counted from what was relayed, at the output price.
        let prompt = try XCTUnwrap(harness.limiter.admissions.first?.promptTokens)
        XCTAssertEqual(harness.limiter.settlements.first?.completionTokens, 2)
        XCTAssertEqual(harness.limiter.settlements.first?.cost, .known(USDAmount(nanos: Int64(prompt * 150 + 2 * 600))))
    }

    func testModelWithoutAPriceCostsUnknownNeverZero() async throws {
        harness.upstream.script(.ok(completionTokens: 3))
        let response = try await harness.send(body: chat(model: "gpt-4o"))
        XCTAssertEqual(response.status, 200)
        XCTAssertEqual(response.headers.first(name: "x-sluice-cost-usd"), "unknown")
        XCTAssertEqual(harness.limiter.settlements.first?.cost, .unknown)
    }

    func testUpstreamErrorCostsNothing() async throws {
        // Every attempt (routing.max_attempts, 3 by default) answered 503: the last one is relayed.
        for _ in 0..<3 { harness.upstream.script(.ok(status: 503, body: #"{"error":{"message":"overloaded"}}"#)) }
        let response = try await harness.send(body: chat())
        XCTAssertEqual(response.status, 503)
        XCTAssertEqual(response.headers.first(name: "x-sluice-cost-usd"), "0")
        XCTAssertEqual(harness.limiter.settlements.first?.cost, .known(.zero))
    }

    /// The budget key: $0.00001 a day. 100 output tokens reserve 60,000 n$ and more: never fits; one
    /// output token (600 n$ + the prompt at 150 n$) does.
    func testBudgetReservesTheMaximumCostAndRefusesWithInsufficientQuota() async throws {
        harness.upstream.script(.ok(completionTokens: 1))
        let refused = try await harness.send(body: chat(#","max_tokens":100"#), secret: GatewayPipelineTests.budgetSecret)
        XCTAssertEqual(refused.status, 429)
        XCTAssertEqual(refused.headers.first(name: "x-should-retry"), "false")
        XCTAssertTrue(refused.body.contains(#""code":"insufficient_quota""#), refused.body)
        XCTAssertTrue(refused.body.contains("USD per day"), refused.body)
        XCTAssertEqual(harness.upstream.requestCount, 0)
        XCTAssertEqual(refused.headers.first(name: "x-ratelimit-limit-usd-day"), "0.00001")
        XCTAssertEqual(refused.headers.first(name: "x-ratelimit-remaining-usd-day"), "0.00001")
        XCTAssertNotNil(refused.headers.first(name: "x-ratelimit-reset-usd-day"))
        XCTAssertNil(refused.headers.first(name: "x-ratelimit-limit-usd-month"))
        let admitted = try await harness.send(body: chat(#","max_tokens":1"#), secret: GatewayPipelineTests.budgetSecret)
        XCTAssertEqual(admitted.status, 200)
        let admission = try XCTUnwrap(harness.limiter.admissions.last)
        XCTAssertEqual(admission.reservedCostNanos, Int64(admission.promptTokens * 150 + 600))
        // The headers went out with the answer, the reservation still held.
        XCTAssertEqual(admitted.headers.first(name: "x-ratelimit-remaining-usd-day"), USDAmount(nanos: 10_000 - admission.reservedCostNanos).description)
    }

    func testBudgetKeyCannotUseAnUnpricedModel() async throws {
        let refused = try await harness.send(body: chat(model: "gpt-4o"), secret: GatewayPipelineTests.budgetSecret)
        XCTAssertEqual(refused.status, 429)
        XCTAssertEqual(refused.headers.first(name: "x-should-retry"), "false")
        XCTAssertTrue(refused.body.contains("has no price"), refused.body)
        XCTAssertEqual(harness.upstream.requestCount, 0)
        XCTAssertTrue(harness.limiter.admittedIDs.isEmpty)
    }

    /// `GET /v1/sluice/key`, authenticated by the key itself: its limits and what its budget has left.
    func testKeyStateShowsTheBudgetBeingSpent() async throws {
        let before = try await harness.send(.GET, path: "/v1/sluice/key", secret: GatewayPipelineTests.budgetSecret)
        XCTAssertEqual(before.status, 200)
        let limits = #""limits":{"requests_per_minute":null,"requests_burst":null,"tokens_per_minute":null,"tokens_burst":null,"input_tokens_per_minute":null,"input_tokens_burst":null,"output_tokens_per_minute":null,"output_tokens_burst":null,"max_concurrent_requests":null,"tokens_per_day":null,"tokens_per_month":null,"usd_per_day":0.00001,"usd_per_month":null}"#
        XCTAssertEqual(before.body, #"{"object":"sluice.key","id":"budget","# + limits + #","remaining":{"requests":null,"tokens":null,"tokens_today":null,"tokens_this_month":null,"usd_today":0.00001,"usd_this_month":null},"used":{"tokens_today":null,"tokens_this_month":null,"usd_today":0,"usd_this_month":null},"team":null}"#)
        harness.upstream.script(.ok(completionTokens: 1))
        let answered = try await harness.send(body: chat(#","max_tokens":1"#), secret: GatewayPipelineTests.budgetSecret)
        let cost = try XCTUnwrap(answered.headers.first(name: "x-sluice-cost-usd"))
        let spent = try XCTUnwrap(USDAmount(decimal: cost))
        let after = try await harness.send(.GET, path: "/v1/sluice/key", secret: GatewayPipelineTests.budgetSecret)
        XCTAssertTrue(after.body.contains(#""used":{"tokens_today":null,"tokens_this_month":null,"usd_today":\#(spent),"#), after.body)
        XCTAssertTrue(after.body.contains(#""usd_today":\#(USDAmount(nanos: 10_000 - spent.nanos))"#), after.body)
        let anonymous = try await harness.send(.GET, path: "/v1/sluice/key", secret: nil)
        XCTAssertEqual(anonymous.status, 401)
    }

    /// Volume tiers: the limiter tells each request where its tokens start in the key's month. $1/M
    /// (1,000 n$ a token) until the key's 12th token, $0.5/M from it.
    func testVolumeTierPricesFromTheKeysMonthPosition() async throws {
        let tiered = try PipelineHarness(pricing: #"{"models": {"gpt-4o-mini": {"input_per_mtok": 1, "output_per_mtok": 1, "volume_tiers": [{"after_tokens": 12, "input_per_mtok": 0.5, "output_per_mtok": 0.5}]}}}"#)
        tiered.upstream.script(.ok(completionTokens: 2), .ok(completionTokens: 2))
        let first = try await tiered.send(body: chat(#","max_tokens":2"#))
        let prompt = try XCTUnwrap(tiered.limiter.admissions.first?.promptTokens)
        XCTAssertTrue(tiered.limiter.admissions.first?.tracksMonthTokens ?? false)
        // Positions 0 ..< prompt + 2: those below 12 at 1,000 n$, the rest at 500 n$.
        func cost(from start: Int, tokens: Int) -> Int64 {
            Int64((start..<(start + tokens)).map { $0 < 12 ? 1_000 : 500 }.reduce(0, +))
        }
        XCTAssertEqual(first.headers.first(name: "x-sluice-cost-usd"), USDAmount(nanos: cost(from: 0, tokens: prompt + 2)).description)
        let second = try await tiered.send(body: chat(#","max_tokens":2"#))
        XCTAssertEqual(second.headers.first(name: "x-sluice-cost-usd"), USDAmount(nanos: cost(from: prompt + 2, tokens: prompt + 2)).description, "after the first request's settled tokens")
    }

    /// A key in a team is priced by the team's month: the team's combined volume reaches the tier.
    /// Two keys of team `crew`, $1/M until the team's 12th token, $0.5/M from it: the second key's
    /// first request starts where the first key's tokens end, not at 0.
    func testVolumeTierIsReachedByTheTeamsCombinedVolume() async throws {
        let teamed = try PipelineHarness(
            pricing: #"{"models": {"gpt-4o-mini": {"input_per_mtok": 1, "output_per_mtok": 1, "volume_tiers": [{"after_tokens": 12, "input_per_mtok": 0.5, "output_per_mtok": 0.5}]}}}"#,
            teams: #"{"crew": {"requests_per_minute": 100}}"#,
            extraKeys: [
                #"{"id": "crew-a", "secret_sha256": "\#(sha256(Self.crewA))", "team": "crew", "limits": {"requests_per_minute": 1000}}"#,
                #"{"id": "crew-b", "secret_sha256": "\#(sha256(Self.crewB))", "team": "crew", "limits": {"requests_per_minute": 1000}}"#,
            ]
        )
        teamed.upstream.script(.ok(completionTokens: 2), .ok(completionTokens: 2))
        func cost(from start: Int, tokens: Int) -> Int64 {
            Int64((start..<(start + tokens)).map { $0 < 12 ? 1_000 : 500 }.reduce(0, +))
        }
        let first = try await teamed.send(body: chat(#","max_tokens":2"#), secret: Self.crewA)
        let prompt = try XCTUnwrap(teamed.limiter.admissions.first?.promptTokens)
        XCTAssertLessThan(prompt + 2, 12, "the first request stays below the tier")
        XCTAssertEqual(first.headers.first(name: "x-sluice-cost-usd"), USDAmount(nanos: cost(from: 0, tokens: prompt + 2)).description)
        let second = try await teamed.send(body: chat(#","max_tokens":2"#), secret: Self.crewB)
        XCTAssertEqual(second.status, 200)
        // crew-b has no tokens of its own this month; the team has prompt + 2.
        XCTAssertEqual(second.headers.first(name: "x-sluice-cost-usd"), USDAmount(nanos: cost(from: prompt + 2, tokens: prompt + 2)).description, "after crew-a's tokens: the team's month")
        XCTAssertNotEqual(cost(from: prompt + 2, tokens: prompt + 2), cost(from: 0, tokens: prompt + 2), "the two positions price differently")
    }

    /// A plan's included tokens are counted on the team's month too: once the team's keys together
    /// used the 12 included tokens, a member's request pays the overage price.
    func testPlanIncludedTokensAreTheTeamsMonth() async throws {
        let teamed = try PipelineHarness(
            pricing: #"{"models": {"gpt-4o-mini": {"input_per_mtok": 1, "output_per_mtok": 1}}, "plans": {"starter": {"monthly_fee": 10, "included_tokens": 12}}}"#,
            teams: #"{"crew": {"requests_per_minute": 100}}"#,
            extraKeys: [
                #"{"id": "crew-a", "secret_sha256": "\#(sha256(Self.crewA))", "team": "crew", "plan": "starter", "limits": {"requests_per_minute": 1000}}"#,
                #"{"id": "crew-b", "secret_sha256": "\#(sha256(Self.crewB))", "team": "crew", "plan": "starter", "limits": {"requests_per_minute": 1000}}"#,
            ]
        )
        teamed.upstream.script(.ok(completionTokens: 2), .ok(completionTokens: 2))
        let first = try await teamed.send(body: chat(#","max_tokens":2"#), secret: Self.crewA)
        let prompt = try XCTUnwrap(teamed.limiter.admissions.first?.promptTokens)
        XCTAssertEqual(first.headers.first(name: "x-sluice-cost-usd"), "0", "inside the included tokens")
        let second = try await teamed.send(body: chat(#","max_tokens":2"#), secret: Self.crewB)
        // Positions prompt + 2 ..< 2 × (prompt + 2): those from 12 on pay $1/M.
        let overage = Int64(2 * (prompt + 2) - max(12, prompt + 2)) * 1_000
        XCTAssertGreaterThan(overage, 0)
        XCTAssertEqual(second.headers.first(name: "x-sluice-cost-usd"), USDAmount(nanos: overage).description, "crew-a's tokens used part of the team's included ones")
    }

    static let crewA = "sk-pipeline-crew-a-0123456789"
    static let crewB = "sk-pipeline-crew-b-0123456789"

    func testNoPricingSectionNoCost() async throws {
        let plain = try PipelineHarness()
        plain.upstream.script(.ok(completionTokens: 3))
        let response = try await plain.send(body: chat())
        XCTAssertEqual(response.status, 200)
        XCTAssertNil(response.headers.first(name: "x-sluice-cost-usd"))
        XCTAssertEqual(plain.limiter.settlements.count, 1)
        XCTAssertNil(plain.limiter.settlements.first?.cost ?? nil)
    }
}
