import XCTest
@testable import SluiceCore

final class UsageTests: XCTestCase {
    private func usage(_ json: String) -> Usage? { Usage.fromResponseBody(Array(json.utf8)) }

    func testChatCompletionResponse() {
        let body = """
        {"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion","created":1741569952,"model":"gpt-4.1-2025-04-14",
         "choices":[{"index":0,"message":{"role":"assistant","content":"Hello! {\\"usage\\": 1} How can I assist you today?","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],
         "usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},
                  "completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},
         "service_tier":"default"}
        """
        var expected = Usage(promptTokens: 19, completionTokens: 10, totalTokens: 29)
        expected.cachedInputTokens = 0
        expected.reasoningTokens = 0
        XCTAssertEqual(usage(body), expected)
    }

    /// Chat's details: `prompt_tokens_details.cached_tokens` (priced as cached input) and
    /// `completion_tokens_details.reasoning_tokens`; of the chat and Responses names, the last member counts.
    func testChatUsageDetails() {
        let read = usage(#"{"usage":{"prompt_tokens":2006,"completion_tokens":300,"prompt_tokens_details":{"cached_tokens":1920},"completion_tokens_details":{"reasoning_tokens":192}}}"#)
        XCTAssertEqual(read?.cachedInputTokens, 1920)
        XCTAssertEqual(read?.reasoningTokens, 192)
        XCTAssertEqual(read?.promptTokens, 2006)
        XCTAssertEqual(usage(#"{"usage":{"prompt_tokens":9,"input_tokens_details":{"cached_tokens":1},"prompt_tokens_details":{"cached_tokens":4}}}"#)?.cachedInputTokens, 4)
        XCTAssertNil(usage(#"{"usage":{"prompt_tokens":9,"prompt_tokens_details":{"cached_tokens":4},"prompt_tokens_details":null}}"#)?.cachedInputTokens)
        XCTAssertNil(usage(#"{"usage":{"prompt_tokens":9,"prompt_tokens_details":{"cached_tokens":-4}}}"#)?.cachedInputTokens, "a malformed detail is ignored")
    }

    func testEmbeddingsResponseHasNoCompletionTokens() {
        let body = #"{"object":"list","data":[{"object":"embedding","index":0,"embedding":[-0.006929283,-0.005336422]}],"model":"text-embedding-3-small","usage":{"prompt_tokens":5,"total_tokens":5}}"#
        XCTAssertEqual(usage(body), Usage(promptTokens: 5, completionTokens: 0, totalTokens: 5))
    }

    func testTotalDefaultsToSum() {
        XCTAssertEqual(usage(#"{"usage":{"prompt_tokens":3,"completion_tokens":4}}"#), Usage(promptTokens: 3, completionTokens: 4, totalTokens: 7))
    }

    func testMissingOrGarbageUsageIsNil() {
        for body in [
            "", "[]", "null", #"{"id":"x"}"#, #"{"usage":null}"#, #"{"usage":"lots"}"#, #"{"usage":{}}"#,
            #"{"usage":{"prompt_tokens":-1,"completion_tokens":2}}"#, #"{"usage":{"prompt_tokens":1.5}}"#,
            #"{"usage":{"prompt_tokens":"1"}}"#, #"{"choices":[{"usage":{"prompt_tokens":1}}]}"#,
            #"{"id":"x","choices":["#, "<html>502 Bad Gateway</html>",
        ] {
            XCTAssertNil(usage(body), body)
        }
    }

    /// Every shape of usage object, read whole: the member after it is still read (in a response
    /// and in a stream chunk).
    func testUsageObjectShapes() throws {
        let cases: [(String, Usage?)] = [
            (#"{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29}"#, Usage(promptTokens: 19, completionTokens: 10, totalTokens: 29)),
            (#"{"prompt_tokens":1,"prompt_tokens":2}"#, Usage(promptTokens: 2, completionTokens: 0)),
            (#"{"prompt_tokens":null,"completion_tokens":2}"#, nil),
            (#"{"prompt_tokens":3,"completion_tokens":null,"total_tokens":null}"#, Usage(promptTokens: 3, completionTokens: 0, totalTokens: 3)),
            (#"{"prompt_tokens":3,"completion_tokens":true}"#, nil),
            (#"{"prompt_tokens":3,"total_tokens":1e2}"#, nil),
            (#"{"prompt_tokens":-0}"#, Usage(promptTokens: 0, completionTokens: 0)),
            (#"{"prompt_tokens":-2}"#, nil),
            (#"{"prompt_tokens":0}"#, Usage(promptTokens: 0, completionTokens: 0)),
            (#"{"prompt_tokens":2147483647}"#, Usage(promptTokens: Int(Int32.max), completionTokens: 0)),
            (#"{"prompt_tokens":2147483648}"#, nil),
            (#"{"prompt_tokens":9223372036854775808}"#, nil),
            (#"{"prompt_tokens":4,"completion_tokens":[1],"total_tokens":4}"#, nil),
            (#"{"prompt_tokens":4,"completion_tokens":{"x":1}}"#, nil),
            (#"{"prompt_tokens_details":{"cached_tokens":7},"prompt_tokens":5,"completion_tokens":2}"#, { var u = Usage(promptTokens: 5, completionTokens: 2); u.cachedInputTokens = 7; return u }()),
            (#"{"prompt_tokens":5,"completion_tokens":"2"}"#, nil),
            (#"{"completion_tokens":2}"#, nil),
            (#"{}"#, nil),
        ]
        for (object, expected) in cases {
            XCTAssertEqual(usage(#"{"usage":\#(object),"id":"after"}"#), expected, object)
            var text: [UInt8] = []
            let payload = Array(#"{"usage":\#(object),"choices":[]}"#.utf8)
            let chunk = try XCTUnwrap(payload.withUnsafeBytes { OpenAIStreamChunk.read($0, appendingTextTo: &text) }, object)
            XCTAssertEqual(chunk.usage, expected, object)
            XCTAssertTrue(chunk.hasUsageObject, object)
            XCTAssertEqual(chunk.choiceCount, 0, "the member after usage was read: \(object)")
        }
    }

    /// Found by fuzzing (Tests/Fuzz, fuzz-usage): counts near `Int.max` trapped on the default
    /// total's overflow, or passed an `Int.max` completion count on to settling (prompt +
    /// completion overflowed there). Counts above `maximumTokenCount` now make the usage invalid.
    func testCountsAboveTheMaximumAreInvalid() {
        let maximum = Usage.maximumTokenCount
        let cases: [(String, Usage?)] = [
            (#"{"prompt_tokens":9223372036854775807,"completion_tokens":1}"#, nil),
            (#"{"prompt_tokens":5,"completion_tokens":9223372036854775807,"total_tokens":5}"#, nil),
            (#"{"prompt_tokens":1,"completion_tokens":2,"total_tokens":2147483648}"#, nil),
            (#"{"prompt_tokens":-9223372036854775808}"#, nil),
            (#"{"prompt_tokens":\#(maximum),"completion_tokens":\#(maximum)}"#,
             Usage(promptTokens: maximum, completionTokens: maximum, totalTokens: 2 * maximum)),
        ]
        for (object, expected) in cases {
            XCTAssertEqual(usage(#"{"usage":\#(object)}"#), expected, object)
            var filter = StreamRelayFilter(dropsUsageChunk: true)
            _ = filter.consume(Array("data: {\"choices\":[],\"usage\":\(object)}\n\n".utf8))
            XCTAssertEqual(filter.usage, expected, "stream: \(object)")
        }
    }
}
