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
        harness.upstream.script(.ok(status: 503, body: #"{"error":{"message":"overloaded"}}"#))
        let response = try await harness.send(body: chat())
        XCTAssertEqual(response.status, 503)
        XCTAssertEqual(response.headers.first(name: "x-sluice-cost-usd"), "0")
        XCTAssertEqual(harness.limiter.settlements.first?.cost, .known(.zero))
    }

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
