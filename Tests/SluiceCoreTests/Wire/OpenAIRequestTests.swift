import Foundation
import SluiceTokenizer
import XCTest
@testable import SluiceCore

final class OpenAIRequestTests: XCTestCase {
    private func parse(_ json: String, _ endpoint: OpenAIEndpoint = .chatCompletions) throws -> OpenAIRequest {
        try OpenAIRequest.parse(Array(json.utf8), endpoint: endpoint)
    }

    private struct NotAChatPrompt: Error {}

    /// The chat prompt of `request`; anything else is a parsing regression and fails the test.
    private func chatPrompt(_ request: OpenAIRequest, file: StaticString = #filePath, line: UInt = #line) throws -> ChatPrompt {
        guard case .chat(let prompt) = request.prompt else {
            XCTFail("not a chat prompt: \(request.prompt)", file: file, line: line)
            throw NotAChatPrompt()
        }
        return prompt
    }

    /// The reader refuses a body that is not UTF-8 (so the gateway and `sluice tokens --chat`
    /// refuse the same bodies), with OpenAI's 400.
    func testBodyThatIsNotUTF8IsRefused() {
        let body = Array(#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":""#.utf8) + [0xC3, 0x28] + Array(#""}]}"#.utf8)
        XCTAssertThrowsError(try OpenAIRequest.parse(body, endpoint: .chatCompletions)) { error in
            XCTAssertEqual((error as? GatewayError)?.status, 400)
            XCTAssertTrue((error as? GatewayError)?.message.contains("UTF-8") ?? false)
        }
    }

    func testReservedOutputIsMaxTokensTimesNAndNothingForEmbeddings() throws {
        XCTAssertEqual(try parse(#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":10,"n":3}"#).reservedOutputTokens(defaultOutputTokens: 100), 30)
        XCTAssertEqual(try parse(#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_completion_tokens":4,"max_tokens":10}"#).reservedOutputTokens(defaultOutputTokens: 100), 4)
        XCTAssertEqual(try parse(#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":2}"#).reservedOutputTokens(defaultOutputTokens: 100), 200)
        XCTAssertEqual(try parse(#"{"model":"m","input":"hi"}"#, .embeddings).reservedOutputTokens(defaultOutputTokens: 100), 0)
    }

    // MARK: Chat

    func testMinimalChatRequest() throws {
        let request = try parse(#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello"}]}"#)
        XCTAssertEqual(request.model, "gpt-4o-mini")
        XCTAssertFalse(request.stream)
        XCTAssertFalse(request.clientRequestedUsage)
        XCTAssertFalse(request.sluiceAddedUsage)
        XCTAssertNil(request.maxOutputTokens)
        XCTAssertEqual(request.n, 1)
        XCTAssertEqual(request.prompt, .chat(ChatPrompt(messages: [ChatMessage(role: "user", content: [.text("Hello")])])))
    }

    func testChatRequestWithEveryCountedField() throws {
        let png1x1 = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg=="
        let json = """
        {"model":"gpt-4o","max_tokens":50,"max_completion_tokens":70,"n":3,
         "messages":[
          {"role":"system","content":"Be brief.","name":"rules"},
          {"role":"user","content":[{"type":"text","text":"What is this?"},
                                    {"type":"image_url","image_url":{"url":"data:image/png;base64,\(png1x1)","detail":"high"}},
                                    {"type":"image_url","image_url":{"url":"https://example.com/cat.jpg"}}]},
          {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"lookup","arguments":"{\\"q\\":\\"cat\\"}"}}]},
          {"role":"tool","tool_call_id":"call_1","content":"a cat"},
          {"role":"assistant","content":"","refusal":"I can't"}],
         "tools":[{"type":"function","function":{"name":"lookup","description":"Look up.","parameters":{
            "type":"object","required":["q"],"properties":{
              "q":{"type":"string","description":"query"},
              "unit":{"type":"string","enum":["c","f"]},
              "filter":{"type":"object","properties":{"x":{"type":"integer"}}}}}}}],
         "functions":[{"name":"legacy","parameters":{"type":"object","properties":{}}}],
         "tool_choice":{"type":"function","function":{"name":"lookup"}},
         "response_format":{"type":"json_schema","json_schema":{"name":"out","schema":{"type":"object"}}}}
        """
        let request = try parse(json)
        XCTAssertEqual(request.maxOutputTokens, 70, "max_completion_tokens wins over max_tokens")
        XCTAssertEqual(request.n, 3)
        let prompt = try chatPrompt(request)
        XCTAssertEqual(prompt.messages.count, 5)
        XCTAssertEqual(prompt.messages[0], ChatMessage(role: "system", name: "rules", content: [.text("Be brief.")]))
        XCTAssertEqual(prompt.messages[1].content, [
            .text("What is this?"),
            .image(ChatImage(detail: .high, width: 1, height: 1)),
            .image(ChatImage(detail: .auto)),
        ])
        XCTAssertEqual(prompt.messages[2], ChatMessage(role: "assistant", content: [], otherStrings: ["lookup", #"{"q":"cat"}"#]))
        XCTAssertEqual(prompt.messages[3].otherStrings, ["call_1"])
        XCTAssertEqual(prompt.messages[4].otherStrings, ["I can't"])
        XCTAssertEqual(prompt.tools, [
            ChatTool(name: "lookup", description: "Look up.",
                     properties: [ChatToolProperty(name: "q", type: "string", description: "query"),
                                  ChatToolProperty(name: "unit", type: "string", enumValues: ["c", "f"])],
                     unmodelledSchemaJSON: #"{"properties":{"filter":{"type":"object","properties":{"x":{"type":"integer"}}}}}"#),
            ChatTool(name: "legacy"),
        ])
        XCTAssertEqual(prompt.extraText, [
            #"{"type":"function","function":{"name":"lookup"}}"#,
            #"{"name":"out","schema":{"type":"object"}}"#,
        ])
    }

    func testStreamingFlags() throws {
        let base = #""model":"m","messages":[{"role":"user","content":"x"}]"#
        let plain = try parse("{\(base),\"stream\":true}")
        XCTAssertTrue(plain.stream)
        XCTAssertFalse(plain.clientRequestedUsage)
        XCTAssertTrue(plain.sluiceAddedUsage)

        let asked = try parse("{\(base),\"stream\":true,\"stream_options\":{\"include_usage\":true}}")
        XCTAssertTrue(asked.clientRequestedUsage)
        XCTAssertFalse(asked.sluiceAddedUsage)

        let declined = try parse("{\(base),\"stream\":true,\"stream_options\":{\"include_usage\":false}}")
        XCTAssertFalse(declined.clientRequestedUsage)
        XCTAssertTrue(declined.sluiceAddedUsage)

        let notStreaming = try parse("{\(base),\"stream\":false,\"stream_options\":null}")
        XCTAssertFalse(notStreaming.sluiceAddedUsage)
    }

    // MARK: Completions and embeddings

    func testCompletionsPromptShapes() throws {
        XCTAssertEqual(try parse(#"{"model":"m","prompt":"Say hi","max_tokens":7}"#, .completions).prompt, .texts(["Say hi"]))
        XCTAssertEqual(try parse(#"{"model":"m","prompt":"Say hi","max_tokens":7}"#, .completions).maxOutputTokens, 7)
        XCTAssertEqual(try parse(#"{"model":"m","prompt":["a","b"]}"#, .completions).prompt, .texts(["a", "b"]))
        XCTAssertEqual(try parse(#"{"model":"m","prompt":[1,2,3]}"#, .completions).prompt, .tokenCount(3))
        XCTAssertEqual(try parse(#"{"model":"m","prompt":[[1,2],[3],[]]}"#, .completions).prompt, .tokenCount(3))
        XCTAssertEqual(try parse(#"{"model":"m","prompt":[]}"#, .completions).prompt, .texts([]))
        let streaming = try parse(#"{"model":"m","prompt":"x","stream":true}"#, .completions)
        XCTAssertTrue(streaming.sluiceAddedUsage)
    }

    func testEmbeddingsIgnoreCompletionFields() throws {
        let request = try parse(#"{"model":"text-embedding-3-small","input":["a","b"],"stream":"whatever","n":0,"max_tokens":"x"}"#, .embeddings)
        XCTAssertEqual(request.prompt, .texts(["a", "b"]))
        XCTAssertFalse(request.stream)
        XCTAssertEqual(request.n, 1)
        XCTAssertNil(request.maxOutputTokens)
        XCTAssertEqual(try parse(#"{"model":"m","input":[[5,6,7]]}"#, .embeddings).prompt, .tokenCount(3))
    }

    // MARK: Values OpenAI's API accepts (issue 22)

    /// Each role's `content` as OpenAI's spec has it: assistant may leave it out or null, function
    /// must give it but may give null; system, developer, user and tool need it.
    func testContentNullabilityFollowsEachRole() throws {
        let function = try parse(#"{"model":"m","messages":[{"role":"function","name":"f","content":null}]}"#)
        XCTAssertEqual(try chatPrompt(function).messages, [ChatMessage(role: "function", name: "f", content: [])])
        for assistant in [#"{"role":"assistant","content":null,"tool_calls":[]}"#, #"{"role":"assistant","function_call":{"name":"f","arguments":"{}"}}"#] {
            XCTAssertNoThrow(try parse(#"{"model":"m","messages":[\#(assistant)]}"#), assistant)
        }
        assertInvalid(#"{"model":"m","messages":[{"role":"function","name":"f"}]}"#, param: "messages[0].content",
                      message: "Missing required parameter: 'messages[0].content'.", code: "missing_required_parameter")
        for role in ["system", "developer", "user", "tool"] {
            assertInvalid(#"{"model":"m","messages":[{"role":"\#(role)","content":null,"tool_call_id":"c"}]}"#, param: "messages[0].content",
                          message: "Missing required parameter: 'messages[0].content'.")
        }
    }

    /// `/v1/completions`' `prompt` is nullable and defaults to `<|endoftext|>`: one token.
    func testCompletionsPromptNullIsTheEndOfTextToken() throws {
        for json in [#"{"model":"m","prompt":null}"#, #"{"model":"m"}"#] {
            let request = try parse(json, .completions)
            XCTAssertEqual(request.prompt, .tokenCount(1), json)
            XCTAssertEqual(request.upstreamBody(original: Array(json.utf8)), Array(json.utf8))
        }
        assertInvalid(#"{"model":"m","input":null}"#, .embeddings, param: "input", message: "Missing required parameter: 'input'.")
    }

    /// `max_tokens: 0` (the completions spec's minimum; with `echo`, how clients get prompt
    /// logprobs) is accepted and reserves nothing, not the key's default.
    func testMaxTokensZeroReservesNothing() throws {
        let completions = try parse(#"{"model":"m","prompt":"x","max_tokens":0,"echo":true,"logprobs":0,"n":3}"#, .completions)
        XCTAssertEqual(completions.maxOutputTokens, 0)
        XCTAssertEqual(completions.reservedOutputTokens(defaultOutputTokens: 1024), 0)
        let chat = try parse(#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_completion_tokens":0,"max_tokens":5}"#)
        XCTAssertEqual(chat.reservedOutputTokens(defaultOutputTokens: 1024), 0)
    }

    /// Whole-number floats are integers (JSON Schema's and OpenAI's reading): `n`, the output
    /// limits and token ids.
    func testWholeNumberFloatsAreIntegers() throws {
        let chat = try parse(#"{"model":"m","messages":[{"role":"user","content":"x"}],"n":2.0,"max_tokens":228.0}"#)
        XCTAssertEqual(chat.n, 2)
        XCTAssertEqual(chat.maxOutputTokens, 228)
        XCTAssertEqual(chat.reservedOutputTokens(defaultOutputTokens: 1), 456)
        XCTAssertEqual(try parse(#"{"model":"m","prompt":"x","max_completion_tokens":1.5e1,"n":1E0}"#, .completions).maxOutputTokens, 15)
        XCTAssertEqual(try parse(#"{"model":"m","prompt":[1.0,2e0,30e-1]}"#, .completions).prompt, .tokenCount(3))
        XCTAssertEqual(try parse(#"{"model":"m","input":[[1.0],[2,3.0]]}"#, .embeddings).prompt, .tokenCount(3))
    }

    /// Token ids are counted, not judged: a negative id is the upstream's to refuse (the spec sets
    /// no minimum), and the count (the number of ids) is right whatever their values.
    func testTokenIDsAreCountedWhateverTheirValues() throws {
        XCTAssertEqual(try parse(#"{"model":"m","input":[1,-2]}"#, .embeddings).prompt, .tokenCount(2))
        XCTAssertEqual(try parse(#"{"model":"m","prompt":[[-1],[99999999999999999999]]}"#, .completions).prompt, .tokenCount(2))
    }

    /// An output limit above what a reservation uses is forwarded unchanged and reserved at the
    /// bound (more than any bucket holds), never refused with a limit OpenAI does not have.
    func testOutputLimitAboveTheBoundIsReservedAtTheBound() throws {
        let bound = OpenAIRequest.maximumOutputTokens
        for literal in ["2147483648", "99999999999", "1e30", "123456789012345678901234567890"] {
            let json = #"{"model":"m","messages":[{"role":"user","content":"x"}],"n":128,"max_tokens":\#(literal)}"#
            let request = try parse(json)
            XCTAssertEqual(request.maxOutputTokens, bound, literal)
            XCTAssertEqual(request.reservedOutputTokens(defaultOutputTokens: 1), bound * 128, literal)
            XCTAssertEqual(request.upstreamBody(original: Array(json.utf8)), Array(json.utf8), "forwarded as it is")
        }
        XCTAssertEqual(try parse(#"{"model":"m","prompt":"x","max_tokens":2147483647}"#, .completions).maxOutputTokens, bound)
    }

    // MARK: Errors

    private func assertInvalid(_ json: String, _ endpoint: OpenAIEndpoint = .chatCompletions, param: String?, message: String,
                               code: String? = nil, file: StaticString = #filePath, line: UInt = #line) {
        do {
            _ = try parse(json, endpoint)
            XCTFail("accepted \(json)", file: file, line: line)
        } catch let error as GatewayError {
            XCTAssertEqual(error.kind, .invalidRequest, file: file, line: line)
            XCTAssertEqual(error.status, 400, file: file, line: line)
            XCTAssertEqual(error.param, param, file: file, line: line)
            XCTAssertEqual(error.message, message, file: file, line: line)
            if let code { XCTAssertEqual(error.code, code, file: file, line: line) }
        } catch {
            XCTFail("unexpected error \(error)", file: file, line: line)
        }
    }

    func testMalformedJSON() {
        for body in ["", "{", #"{"model":"m",}"#, "not json", #"{"model":"m"} trailing"#] {
            XCTAssertThrowsError(try parse(body)) { error in
                let gatewayError = error as? GatewayError
                XCTAssertEqual(gatewayError?.kind, .invalidJSON, body)
                XCTAssertEqual(gatewayError?.status, 400)
                XCTAssertTrue(gatewayError?.message.hasPrefix("We could not parse the JSON body of your request. (HINT:") ?? false)
            }
        }
    }

    func testChatValidationErrors() {
        let user = #"{"role":"user","content":"x"}"#
        assertInvalid("[]", param: nil, message: "Invalid type for request body: expected an object, but got an array instead.")
        assertInvalid(#"{"messages":[\#(user)]}"#, param: "model", message: "you must provide a model parameter")
        assertInvalid(#"{"model":5,"messages":[\#(user)]}"#, param: "model",
                      message: "Invalid type for 'model': expected a string, but got an integer instead.", code: "invalid_type")
        assertInvalid(#"{"model":"m"}"#, param: "messages", message: "Missing required parameter: 'messages'.", code: "missing_required_parameter")
        assertInvalid(#"{"model":"m","messages":{}}"#, param: "messages",
                      message: "Invalid type for 'messages': expected an array, but got an object instead.")
        assertInvalid(#"{"model":"m","messages":[]}"#, param: "messages",
                      message: "Invalid 'messages': empty array. Expected an array with minimum length 1, but got an empty array instead.", code: "empty_array")
        assertInvalid(#"{"model":"m","messages":["hi"]}"#, param: "messages[0]",
                      message: "Invalid type for 'messages[0]': expected an object, but got a string instead.")
        assertInvalid(#"{"model":"m","messages":[\#(user),{"content":"x"}]}"#, param: "messages[1].role",
                      message: "Missing required parameter: 'messages[1].role'.")
        assertInvalid(#"{"model":"m","messages":[{"role":"robot","content":"x"}]}"#, param: "messages[0].role",
                      message: "Invalid value: 'robot'. Supported values are: 'system', 'assistant', 'user', 'function', 'tool', and 'developer'.",
                      code: "invalid_value")
        assertInvalid(#"{"model":"m","messages":[{"role":"user"}]}"#, param: "messages[0].content",
                      message: "Missing required parameter: 'messages[0].content'.")
        assertInvalid(#"{"model":"m","messages":[{"role":"user","content":7}]}"#, param: "messages[0].content",
                      message: "Invalid type for 'messages[0].content': expected one of a string or array of objects, but got an integer instead.")
        assertInvalid(#"{"model":"m","messages":[\#(user),\#(user),{"role":"user","content":[{"type":"video"}]}]}"#, param: "messages[2].content[0].type",
                      message: "Invalid value: 'video'. Supported values are: 'text', 'image_url', 'input_audio', 'refusal', and 'file'.")
        assertInvalid(#"{"model":"m","messages":[{"role":"user","content":[{"type":"text"}]}]}"#, param: "messages[0].content[0].text",
                      message: "Missing required parameter: 'messages[0].content[0].text'.")
        assertInvalid(#"{"model":"m","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"u","detail":"max"}}]}]}"#,
                      param: "messages[0].content[0].image_url.detail",
                      message: "Invalid value: 'max'. Supported values are: 'auto', 'low', and 'high'.")
        assertInvalid(#"{"model":"m","messages":[{"role":"user","content":"x","name":1}]}"#, param: "messages[0].name",
                      message: "Invalid type for 'messages[0].name': expected a string, but got an integer instead.")
        assertInvalid(#"{"model":"m","messages":[\#(user)],"tools":[{"type":"function","function":{"description":"d"}}]}"#,
                      param: "tools[0].function.name", message: "Missing required parameter: 'tools[0].function.name'.")
        assertInvalid(#"{"model":"m","messages":[\#(user)],"tools":[{"type":"function"}]}"#,
                      param: "tools[0].function", message: "Missing required parameter: 'tools[0].function'.")
    }

    func testNumericAndFlagValidationErrors() {
        let base = #""model":"m","messages":[{"role":"user","content":"x"}]"#
        assertInvalid("{\(base),\"max_tokens\":\"100\"}", param: "max_tokens",
                      message: "Invalid type for 'max_tokens': expected an integer, but got a string instead.", code: "invalid_type")
        assertInvalid("{\(base),\"max_tokens\":10.5}", param: "max_tokens",
                      message: "Invalid type for 'max_tokens': expected an integer, but got a decimal number instead.")
        assertInvalid("{\(base),\"max_tokens\":-1}", param: "max_tokens",
                      message: "Invalid 'max_tokens': integer below minimum value. Expected a value >= 0, but got -1 instead.", code: "integer_below_min_value")
        assertInvalid("{\(base),\"max_tokens\":-1.0}", param: "max_tokens",
                      message: "Invalid 'max_tokens': integer below minimum value. Expected a value >= 0, but got -1.0 instead.")
        assertInvalid("{\(base),\"max_completion_tokens\":-99999999999999999999}", param: "max_completion_tokens",
                      message: "Invalid 'max_completion_tokens': integer below minimum value. Expected a value >= 0, but got -99999999999999999999 instead.")
        assertInvalid("{\(base),\"max_completion_tokens\":1e-1}", param: "max_completion_tokens",
                      message: "Invalid type for 'max_completion_tokens': expected an integer, but got a decimal number instead.")
        assertInvalid("{\(base),\"n\":129}", param: "n",
                      message: "Invalid 'n': integer above maximum value. Expected a value <= 128, but got 129 instead.", code: "integer_above_max_value")
        assertInvalid("{\(base),\"n\":1.29e2}", param: "n", message: "Invalid 'n': integer above maximum value. Expected a value <= 128, but got 1.29e2 instead.")
        assertInvalid("{\(base),\"n\":1e999}", param: "n", message: "Invalid 'n': integer above maximum value. Expected a value <= 128, but got 1e999 instead.")
        assertInvalid("{\(base),\"n\":0}", param: "n",
                      message: "Invalid 'n': integer below minimum value. Expected a value >= 1, but got 0 instead.")
        assertInvalid("{\(base),\"n\":-2}", param: "n",
                      message: "Invalid 'n': integer below minimum value. Expected a value >= 1, but got -2 instead.")
        assertInvalid("{\(base),\"n\":1.5}", param: "n", message: "Invalid type for 'n': expected an integer, but got a decimal number instead.")
        assertInvalid("{\(base),\"stream\":\"yes\"}", param: "stream",
                      message: "Invalid type for 'stream': expected a boolean, but got a string instead.")
        assertInvalid("{\(base),\"stream\":true,\"stream_options\":[]}", param: "stream_options",
                      message: "Invalid type for 'stream_options': expected an object, but got an array instead.")
        assertInvalid("{\(base),\"stream\":true,\"stream_options\":{\"include_usage\":1}}", param: "stream_options.include_usage",
                      message: "Invalid type for 'stream_options.include_usage': expected a boolean, but got an integer instead.")
        XCTAssertEqual(try parse("{\(base),\"n\":128,\"max_tokens\":null}").n, 128)
    }

    func testPromptAndInputValidationErrors() {
        assertInvalid(#"{"model":"m","input":null}"#, .embeddings, param: "input", message: "Missing required parameter: 'input'.")
        assertInvalid(#"{"model":"m","prompt":["a",1]}"#, .completions, param: "prompt[1]",
                      message: "Invalid type for 'prompt[1]': expected a string, but got an integer instead.")
        assertInvalid(#"{"model":"m","input":[1,"2"]}"#, .embeddings, param: "input[1]",
                      message: "Invalid type for 'input[1]': expected an integer (token id), but got a string instead.")
        assertInvalid(#"{"model":"m","input":[[1],[2.5]]}"#, .embeddings, param: "input[1][0]",
                      message: "Invalid type for 'input[1][0]': expected an integer (token id), but got a decimal number instead.")
        assertInvalid(#"{"model":"m","input":{}}"#, .embeddings, param: "input",
                      message: "Invalid type for 'input': expected a string, an array of strings, an array of integers, or an array of arrays of integers, but got an object instead.")
        assertInvalid(#"{"model":"m","prompt":[true]}"#, .completions, param: "prompt[0]",
                      message: "Invalid type for 'prompt[0]': expected a string or an integer, but got a boolean instead.")
    }

    // MARK: Upstream body

    private func foundationObject(_ bytes: [UInt8]) throws -> NSDictionary {
        try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(bytes)) as? NSDictionary)
    }

    func testUpstreamBodyUnchangedUnlessSluiceAddsUsage() throws {
        for json in [
            #"{"model":"m","messages":[{"role":"user","content":"x"}]}"#,
            #"{"model":"m","messages":[{"role":"user","content":"x"}],"stream":true,"stream_options":{"include_usage":true}}"#,
            #"{"model":"m","stream":true,"prompt":"p","stream_options":{"include_usage":true}}"#,
        ] {
            let body = Array(json.utf8)
            let endpoint: OpenAIEndpoint = json.contains("prompt") ? .completions : .chatCompletions
            XCTAssertEqual(try OpenAIRequest.parse(body, endpoint: endpoint).upstreamBody(original: body), body)
        }
    }

    func testUpstreamBodyInsertsStreamOptions() throws {
        let json = "  \n{ \"model\" : \"m\", \"messages\":[{\"role\":\"user\",\"content\":\"h\\u00e9 \\ud83d\"}], \"stream\": true, \"temperature\": 0.25 }\n"
        let body = Array(json.utf8)
        let request = try OpenAIRequest.parse(body, endpoint: .chatCompletions)
        let upstream = request.upstreamBody(original: body)
        let original = try foundationObject(Array(json.replacingOccurrences(of: "\\ud83d", with: "").utf8)).mutableCopy() as! NSMutableDictionary
        let forwarded = try foundationObject(Array(String(decoding: upstream, as: UTF8.self).replacingOccurrences(of: "\\ud83d", with: "").utf8))
        original["stream_options"] = ["include_usage": true]
        XCTAssertEqual(forwarded, original)
        XCTAssertEqual(String(decoding: upstream, as: UTF8.self),
                       "  \n{\"stream_options\":{\"include_usage\":true}, \"model\" : \"m\", \"messages\":[{\"role\":\"user\",\"content\":\"h\\u00e9 \\ud83d\"}], \"stream\": true, \"temperature\": 0.25 }\n")
        // The result parses to the same request, now with usage asked for by the body itself.
        let reparsed = try OpenAIRequest.parse(upstream, endpoint: .chatCompletions)
        XCTAssertTrue(reparsed.clientRequestedUsage)
        XCTAssertEqual(reparsed.prompt, request.prompt)
    }

    func testUpstreamBodyNamesAnotherModelAlongsideTheStreamOptionsEdit() throws {
        let cases: [(json: String, expected: String)] = [
            // stream_options inserted before `model`, whose value is replaced further on.
            (#"{"model" : "gpt-4o","messages":[{"role":"user","content":"x"}],"stream":true}"#,
             #"{"stream_options":{"include_usage":true},"model" : "prod-\"4o\"","messages":[{"role":"user","content":"x"}],"stream":true}"#),
            // stream_options rewritten after `model`; duplicate `model` keys: the last one (the one read) is replaced.
            (#"{"model":"a","model":"gpt-4o","prompt":"x","stream":true,"stream_options":{"include_usage":false,"k":1}}"#,
             #"{"model":"a","model":"prod-\"4o\"","prompt":"x","stream":true,"stream_options":{"k":1,"include_usage":true}}"#),
            // No stream edit: only the model.
            (#"{"prompt":"x","model":"gpt-4o"}"#, #"{"prompt":"x","model":"prod-\"4o\""}"#),
        ]
        for (json, expected) in cases {
            let body = Array(json.utf8)
            let endpoint: OpenAIEndpoint = json.contains("prompt") ? .completions : .chatCompletions
            let request = try OpenAIRequest.parse(body, endpoint: endpoint)
            XCTAssertEqual(String(decoding: request.upstreamBody(original: body, model: #"prod-"4o""#), as: UTF8.self), expected, json)
            XCTAssertEqual(request.upstreamBody(original: body, model: "gpt-4o"), request.upstreamBody(original: body), "the same name: no model edit")
        }
    }

    func testUpstreamBodyRewritesExistingStreamOptionsKeepingOtherFields() throws {
        let cases = [
            #"{"model":"m","prompt":"x","stream":true,"stream_options":{"include_usage":false,"continuous_usage_stats":true,"x":[1, {"y" : null}]},"top_p":1}"#,
            #"{"model":"m","prompt":"x","stream":true,"stream_options":null}"#,
            #"{"model":"m","prompt":"x","stream":true,"stream_options":{}}"#,
            #"{"model":"m","prompt":"x","stream":true,"stream_options":{"include_usage":null}}"#,
        ]
        for json in cases {
            let body = Array(json.utf8)
            let request = try OpenAIRequest.parse(body, endpoint: .completions)
            XCTAssertTrue(request.sluiceAddedUsage, json)
            let upstream = request.upstreamBody(original: body)
            let expected = try foundationObject(body).mutableCopy() as! NSMutableDictionary
            let options = ((expected["stream_options"] as? NSDictionary)?.mutableCopy() as? NSMutableDictionary) ?? NSMutableDictionary()
            options["include_usage"] = true
            expected["stream_options"] = options
            XCTAssertEqual(try foundationObject(upstream), expected, String(decoding: upstream, as: UTF8.self))
            XCTAssertTrue(try OpenAIRequest.parse(upstream, endpoint: .completions).clientRequestedUsage)
        }
    }
}
