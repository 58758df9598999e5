import Foundation
import XCTest
@testable import SluiceTokenizer

final class ChatPromptCounterTests: XCTestCase {
    private func counter(_ name: EncodingName, maxPromptBytes: Int = ChatPromptCounter.defaultMaxPromptBytes) throws -> ChatPromptCounter {
        let encoding = BPEEncoding(name: name, ranks: try LoadedRankTables.table(name))
        return ChatPromptCounter(encoding: encoding, maxPromptBytes: maxPromptBytes)
    }

    // MARK: The cookbook's API-verified examples

    /// "How to count tokens with tiktoken", section 6: the API billed 129 prompt tokens on
    /// gpt-4-0613 / gpt-3.5-turbo (cl100k_base) and 124 on gpt-4o / gpt-4o-mini (o200k_base).
    func testCookbookMessagesExample() throws {
        let prompt = ChatPrompt(messages: [
            ChatMessage(role: "system", content: [.text("You are a helpful, pattern-following assistant that translates corporate jargon into plain English.")]),
            ChatMessage(role: "system", name: "example_user", content: [.text("New synergies will help drive top-line growth.")]),
            ChatMessage(role: "system", name: "example_assistant", content: [.text("Things working well together will increase revenue.")]),
            ChatMessage(role: "system", name: "example_user", content: [.text("Let's circle back when we have more bandwidth to touch base on opportunities for increased leverage.")]),
            ChatMessage(role: "system", name: "example_assistant", content: [.text("Let's talk later when we're less busy about how to do better.")]),
            ChatMessage(role: "user", content: [.text("This late pivot means we don't have time to boil the ocean for the client deliverable.")]),
        ])
        XCTAssertEqual(try counter(.cl100k_base).count(prompt), 129)
        XCTAssertEqual(try counter(.o200k_base).count(prompt), 124)
    }

    /// Section 7: with the get_current_weather tool the API billed 105 prompt tokens on
    /// gpt-3.5-turbo / gpt-4 and 101 on gpt-4o / gpt-4o-mini.
    /// With a stop, the count is exact when the prompt is within it, and otherwise some number
    /// above it found without counting a huge message in full.
    func testCountStoppingAboveALimit() throws {
        let counter = try counter(.o200k_base)
        let long = (0..<20_000).map { "w\($0 % 977)x\($0 % 13)" }.joined(separator: " ")
        let prompt = ChatPrompt(messages: [
            ChatMessage(role: "system", content: [.text("Be brief.")]),
            ChatMessage(role: "user", content: [.text(long)]),
            ChatMessage(role: "user", content: [.text("and one more")]),
        ])
        let exact = try counter.count(prompt)
        XCTAssertEqual(try counter.count(prompt, stoppingAbove: exact), exact)
        let stopped = try counter.count(prompt, stoppingAbove: 500)
        XCTAssertGreaterThan(stopped, 500)
        XCTAssertLessThan(stopped, 520)
    }

    func testCookbookToolsExample() throws {
        let prompt = ChatPrompt(
            messages: [
                ChatMessage(role: "system", content: [.text("You are a helpful assistant that can answer to questions about the weather.")]),
                ChatMessage(role: "user", content: [.text("What's the weather like in San Francisco?")]),
            ],
            tools: [
                ChatTool(name: "get_current_weather", description: "Get the current weather in a given location", properties: [
                    ChatToolProperty(name: "location", type: "string", description: "The city and state, e.g. San Francisco, CA"),
                    ChatToolProperty(name: "unit", type: "string", description: "The unit of temperature to return", enumValues: ["celsius", "fahrenheit"]),
                ]),
            ]
        )
        XCTAssertEqual(try counter(.cl100k_base).count(prompt), 105)
        XCTAssertEqual(try counter(.o200k_base).count(prompt), 101)
    }

    // MARK: Per-feature cases computed by the cookbook's formulas with the real tiktoken

    func testChatFixturesMatchTheCookbookFormulas() throws {
        struct Fixture: Decodable {
            struct Case: Decodable {
                struct Message: Decodable { var role: String; var name: String?; var content: String }
                struct Tool: Decodable {
                    struct Function: Decodable {
                        struct Parameters: Decodable { var properties: [String: Property] }
                        struct Property: Decodable { var type: String; var description: String; var `enum`: [String]? }
                        var name: String
                        var description: String
                        var parameters: Parameters
                    }
                    var function: Function
                }
                var name: String
                var messages: [Message]
                var tools: [Tool]
                var expected: [String: Int]
            }
            var cases: [Case]
        }
        let fixture = try JSONDecoder().decode(Fixture.self, from: TestPaths.fixture("chat-vectors.json"))
        XCTAssertGreaterThan(fixture.cases.count, 5)
        for encodingName in EncodingName.allCases {
            let counter = try counter(encodingName)
            for testCase in fixture.cases {
                // Property order does not matter: the formula is a sum over properties.
                let prompt = ChatPrompt(
                    messages: testCase.messages.map { ChatMessage(role: $0.role, name: $0.name, content: [.text($0.content)]) },
                    tools: testCase.tools.map { tool in
                        ChatTool(
                            name: tool.function.name, description: tool.function.description,
                            properties: tool.function.parameters.properties.map { key, property in
                                ChatToolProperty(name: key, type: property.type, description: property.description, enumValues: property.enum ?? [])
                            })
                    })
                let expected = try XCTUnwrap(testCase.expected[encodingName.rawValue])
                XCTAssertEqual(try counter.count(prompt), expected, "\(encodingName) \(testCase.name)")
            }
        }
    }

    // MARK: Estimates beyond the cookbook: plain text

    func testOtherStringsExtraTextAndUnmodelledSchemaAreCountedAsPlainText() throws {
        let counter = try counter(.o200k_base)
        let encoding = counter.encoding
        let base = ChatPrompt(messages: [ChatMessage(role: "assistant", content: [.text("Calling.")])],
                              tools: [ChatTool(name: "lookup", description: "Find.")])
        var extended = base
        extended.messages[0].otherStrings = ["call_abc123", "{\"query\":\"swift\"}"]
        extended.messages[0].content.append(.text(" Second part"))
        extended.tools[0].unmodelledSchemaJSON = "{\"type\":\"object\",\"properties\":{\"nested\":{\"type\":\"object\"}}}"
        extended.extraText = ["{\"type\":\"json_schema\"}"]
        let plain = ["call_abc123", "{\"query\":\"swift\"}", " Second part",
                     "{\"type\":\"object\",\"properties\":{\"nested\":{\"type\":\"object\"}}}", "{\"type\":\"json_schema\"}"]
            .map { encoding.countOrdinary($0) }.reduce(0, +)
        XCTAssertEqual(try counter.count(extended), try counter.count(base) + plain)
    }

    // MARK: Images

    /// OpenAI's documented examples for gpt-4o-class models.
    func testImageCostsFromOpenAIsDocumentation() {
        let cost = ImageTokenCost.gpt4oClass
        XCTAssertEqual(cost.tokens(for: ChatImage(detail: .high, width: 1024, height: 1024)), 765)
        XCTAssertEqual(cost.tokens(for: ChatImage(detail: .high, width: 2048, height: 4096)), 1105)
        XCTAssertEqual(cost.tokens(for: ChatImage(detail: .low, width: 4096, height: 8192)), 85)
    }

    func testImageWorstCaseWhenSizeUnknown() {
        let cost = ImageTokenCost.gpt4oClass
        // Worst shape after scaling is 768×2048: 2×4 tiles.
        XCTAssertEqual(cost.worstCaseTileCount, 8)
        XCTAssertEqual(cost.tokens(for: ChatImage(detail: .auto)), 85 + 8 * 170)
        XCTAssertEqual(cost.tokens(for: ChatImage(detail: .high, width: 0, height: 10)), 85 + 8 * 170)
        XCTAssertEqual(cost.tokens(for: ChatImage(detail: .high, width: 768, height: 2048)), 85 + 8 * 170)
        XCTAssertEqual(cost.tokens(for: ChatImage(detail: .low)), 85)
        // No size can exceed the worst case, however absurd.
        for (width, height) in [(Int.max, 1), (1, Int.max), (Int.max, Int.max), (100_000, 3), (5000, 4999), (1, 1)] {
            let tokens = cost.tokens(for: ChatImage(detail: .high, width: width, height: height))
            XCTAssertLessThanOrEqual(tokens, 85 + 8 * 170, "\(width)×\(height)")
            XCTAssertGreaterThanOrEqual(tokens, 85 + 170, "\(width)×\(height)")
        }
    }

    func testImagesAddToMessageFraming() throws {
        let counter = try counter(.o200k_base)
        let textOnly = ChatPrompt(messages: [ChatMessage(role: "user", content: [.text("What is this?")])])
        var withImage = textOnly
        withImage.messages[0].content.append(.image(ChatImage(detail: .high, width: 1024, height: 1024)))
        XCTAssertEqual(try counter.count(withImage), try counter.count(textOnly) + 765)
    }

    // MARK: Size cap

    func testOversizedPromptIsRefusedBeforeCounting() throws {
        let counter = try counter(.cl100k_base, maxPromptBytes: 20)
        let fits = ChatPrompt(messages: [ChatMessage(role: "user", content: [.text("0123456789abcdef")])])  // 4 + 16 bytes
        XCTAssertNoThrow(try counter.count(fits))
        let tooLarge = ChatPrompt(messages: [ChatMessage(role: "user", content: [.text("0123456789abcdefé")])])
        XCTAssertThrowsError(try counter.count(tooLarge)) { error in
            XCTAssertEqual(error as? TokenizerError, .inputTooLarge(byteCount: 22, limit: 20))
        }
        let viaTools = ChatPrompt(messages: [], tools: [ChatTool(name: String(repeating: "n", count: 21))])
        XCTAssertThrowsError(try counter.count(viaTools))
    }
}
