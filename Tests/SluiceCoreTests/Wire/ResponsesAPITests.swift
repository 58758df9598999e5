import Foundation
import SluiceTokenizer
import XCTest
@testable import SluiceCore

/// The Responses API (`POST /v1/responses`): how its input is framed for counting, and where its
/// usage is read from (non-streamed body, final `response.completed` event).
final class ResponsesAPITests: XCTestCase {
    private func parse(_ json: String, _ endpoint: OpenAIEndpoint) throws -> OpenAIRequest {
        try OpenAIRequest.parse(Array(json.utf8), endpoint: endpoint)
    }

    private func prompt(_ json: String, _ endpoint: OpenAIEndpoint = .responses) throws -> ChatPrompt {
        guard case .chat(let prompt) = try parse(json, endpoint).prompt else {
            XCTFail("not a chat prompt")
            return ChatPrompt(messages: [])
        }
        return prompt
    }

    // MARK: Input framing

    func testStringInputWithInstructionsIsFramedAsDeveloperAndUserMessages() throws {
        let responses = try prompt(#"{"model":"gpt-4o-mini","instructions":"Be brief.","input":"Hello there"}"#)
        let chat = try prompt(#"{"model":"gpt-4o-mini","messages":[{"role":"developer","content":"Be brief."},{"role":"user","content":"Hello there"}]}"#, .chatCompletions)
        XCTAssertEqual(responses, chat)
    }

    func testInputItemsWithTextAndImageParts() throws {
        let body = #"""
        {"model":"gpt-4o","input":[
          {"role":"system","content":"sys"},
          {"type":"message","role":"user","content":[{"type":"input_text","text":"look"},{"type":"input_image","image_url":"https://x/y.png","detail":"low"},{"type":"input_file","file_id":"file-1"}]},
          {"type":"message","role":"assistant","content":[{"type":"output_text","text":"ok","annotations":[]}]},
          {"type":"function_call","call_id":"c1","name":"get_weather","arguments":"{\"city\":\"Paris\"}"},
          {"type":"function_call_output","call_id":"c1","output":"sunny"},
          {"type":"item_reference","id":"msg_1"}
        ]}
        """#
        let got = try prompt(body)
        XCTAssertEqual(got.messages, [
            ChatMessage(role: "system", content: [.text("sys")]),
            ChatMessage(role: "user", content: [.text("look"), .image(ChatImage(detail: .low))]),
            ChatMessage(role: "assistant", content: [.text("ok")]),
            ChatMessage(role: "assistant", content: [], otherStrings: ["get_weather", #"{"city":"Paris"}"#]),
            ChatMessage(role: "tool", content: [.text("sunny")]),
        ])
        XCTAssertEqual(got.extraText, [#"{"type":"item_reference","id":"msg_1"}"#])
    }

    func testFlatFunctionToolsUseTheChatToolFraming() throws {
        let responses = try prompt(#"{"model":"gpt-4o","input":"hi","tools":[{"type":"function","name":"get_weather","description":"Weather.","parameters":{"type":"object","properties":{"city":{"type":"string","description":"City"}},"required":["city"]}},{"type":"web_search"}]}"#)
        let chat = try prompt(#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"tools":[{"type":"function","function":{"name":"get_weather","description":"Weather.","parameters":{"type":"object","properties":{"city":{"type":"string","description":"City"}},"required":["city"]}}}]}"#, .chatCompletions)
        XCTAssertEqual(responses.messages, chat.messages)
        XCTAssertEqual(responses.tools, chat.tools)
        XCTAssertEqual(responses.extraText, [#"{"type":"web_search"}"#])
    }

    func testCountEqualsTheEquivalentChatRequest() throws {
        // Same ChatPrompt, so the same count: 3 + developer + "Be brief." + 3 + user + "Hello" + 3.
        let responses = try prompt(#"{"model":"gpt-4o-mini","instructions":"Be brief.","input":[{"role":"user","content":[{"type":"input_text","text":"Hello"}]}]}"#)
        XCTAssertEqual(responses.messages.count, 2)
        XCTAssertEqual(responses.messages[0].role, "developer")
        XCTAssertEqual(responses.messages[1].content, [.text("Hello")])
    }

    func testOutputReservationAndStream() throws {
        let request = try parse(#"{"model":"gpt-4o-mini","input":"x","max_output_tokens":77,"stream":true}"#, .responses)
        XCTAssertEqual(request.maxOutputTokens, 77)
        XCTAssertEqual(request.reservedOutputTokens(defaultOutputTokens: 1024), 77)
        XCTAssertTrue(request.stream)
        XCTAssertFalse(request.sluiceAddedUsage, "a Responses stream always ends with its usage: nothing is added")
        XCTAssertEqual(request.upstreamBody(original: Array(#"{"a":1}"#.utf8)), Array(#"{"a":1}"#.utf8))
        let unbounded = try parse(#"{"model":"gpt-4o-mini","input":"x"}"#, .responses)
        XCTAssertEqual(unbounded.reservedOutputTokens(defaultOutputTokens: 1024), 1024)
        XCTAssertFalse(unbounded.continuesStoredConversation)
    }

    func testPreviousResponseIDMarksAStoredConversation() throws {
        let request = try parse(#"{"model":"gpt-4o-mini","input":"and then?","previous_response_id":"resp_1"}"#, .responses)
        XCTAssertTrue(request.continuesStoredConversation)
    }

    func testBadInputIsRefusedWithItsParam() {
        for (body, param) in [
            (#"{"model":"m","input":3}"#, "input"),
            (#"{"model":"m","input":[{"role":"robot","content":"x"}]}"#, "input[0].role"),
            (#"{"model":"m","input":[{"role":"user","content":[{"type":"input_video"}]}]}"#, "input[0].content[0].type"),
            (#"{"model":"m","input":"x","max_output_tokens":-1}"#, "max_output_tokens"),
        ] {
            XCTAssertThrowsError(try parse(body, .responses), body) { error in
                XCTAssertEqual((error as? GatewayError)?.status, 400, body)
                XCTAssertEqual((error as? GatewayError)?.param, param, body)
            }
        }
    }

    // MARK: Usage

    private static let usageJSON = #"{"input_tokens":36,"input_tokens_details":{"cached_tokens":12},"output_tokens":87,"output_tokens_details":{"reasoning_tokens":40},"total_tokens":123}"#

    func testUsageOfANonStreamedResponse() {
        let body = #"{"id":"resp_1","object":"response","status":"completed","output":[{"type":"message","content":[{"type":"output_text","text":"{\"usage\":1}"}]}],"usage":"# + Self.usageJSON + "}"
        var expected = Usage(promptTokens: 36, completionTokens: 87, totalTokens: 123)
        expected.cachedInputTokens = 12
        expected.reasoningTokens = 40
        XCTAssertEqual(Usage.fromResponseBody(Array(body.utf8)), expected)
    }

    func testUsageFromTheFinalEventOfAStreamPassedThroughUnchanged() {
        let events = [
            "event: response.created\ndata: {\"type\":\"response.created\",\"sequence_number\":0,\"response\":{\"id\":\"resp_1\",\"status\":\"in_progress\",\"usage\":null}}\n\n",
            "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"sequence_number\":1,\"item_id\":\"msg_1\",\"delta\":\"Hello\"}\n\n",
            "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"sequence_number\":2,\"item_id\":\"msg_1\",\"delta\":\" world\"}\n\n",
            "event: response.completed\ndata: {\"type\":\"response.completed\",\"sequence_number\":3,\"response\":{\"id\":\"resp_1\",\"status\":\"completed\",\"usage\":" + Self.usageJSON + "}}\n\n",
        ]
        var filter = StreamRelayFilter(dropsUsageChunk: true, isResponsesStream: true)
        var relayed: [UInt8] = []
        let all = Array(events.joined().utf8)
        // Fed in awkward pieces: 7 bytes at a time.
        var offset = 0
        while offset < all.count {
            relayed += filter.consume(Array(all[offset..<min(offset + 7, all.count)]))
            offset += 7
        }
        relayed += filter.finish()
        XCTAssertEqual(relayed, all, "every event passes through unchanged")
        XCTAssertEqual(filter.usage?.promptTokens, 36)
        XCTAssertEqual(filter.usage?.completionTokens, 87)
        XCTAssertEqual(filter.usage?.cachedInputTokens, 12)
        XCTAssertEqual(filter.usage?.reasoningTokens, 40)
        XCTAssertEqual(filter.streamedText, "Hello world")
        XCTAssertTrue(filter.sawDone)
    }

    func testIncompleteResponseStillReportsUsage() {
        let event = "event: response.incomplete\ndata: {\"type\":\"response.incomplete\",\"sequence_number\":9,\"response\":{\"status\":\"incomplete\",\"incomplete_details\":{\"reason\":\"max_output_tokens\"},\"usage\":{\"input_tokens\":5,\"output_tokens\":16,\"total_tokens\":21}}}\n\n"
        var filter = StreamRelayFilter(dropsUsageChunk: false, isResponsesStream: true)
        _ = filter.consume(Array(event.utf8))
        _ = filter.finish()
        XCTAssertEqual(filter.usage, Usage(promptTokens: 5, completionTokens: 16, totalTokens: 21))
        XCTAssertTrue(filter.sawDone)
    }
}
