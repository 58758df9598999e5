import Foundation
import XCTest
@testable import SluiceCore

final class StreamRelayFilterTests: XCTestCase {
    // MARK: Recorded-shape streams (OpenAI's chunk layout), one event per element

    private static let chunkHead = #""id":"chatcmpl-9x","object":"chat.completion.chunk","created":1731000000,"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_0ba0d124f1""#
    private static let usageEvent = "data: {\(chunkHead),\"choices\":[],\"usage\":{\"prompt_tokens\":19,\"completion_tokens\":6,\"total_tokens\":25,\"prompt_tokens_details\":{\"cached_tokens\":0,\"audio_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0,\"audio_tokens\":0,\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}}\n\n"
    /// What `usageEvent` reports: its details (`cached_tokens`, `reasoning_tokens`) are read too.
    private static let reportedUsage: Usage = {
        var usage = Usage(promptTokens: 19, completionTokens: 6, totalTokens: 25)
        usage.cachedInputTokens = 0
        usage.reasoningTokens = 0
        return usage
    }()
    private static let chatEvents: [String] = [
        "data: {\(chunkHead),\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\(chunkHead),\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hello\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\(chunkHead),\"choices\":[{\"index\":0,\"delta\":{\"content\":\" w\\u00f6rld \\\"\\ud83d\\ude00\\\"\\n\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\(chunkHead),\"choices\":[{\"index\":0,\"delta\":{\"content\":\"中文\"},\"logprobs\":null,\"finish_reason\":null}],\"usage\":null}\n\n",
        "data: {\(chunkHead),\"choices\":[{\"index\":0,\"delta\":{},\"logprobs\":null,\"finish_reason\":\"stop\"}],\"usage\":null}\n\n",
        usageEvent,
        "data: [DONE]\n\n",
    ]
    private static let toolEvents: [String] = [
        "data: {\(chunkHead),\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"index\":0,\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"\"}}]},\"finish_reason\":null}]}\n\n",
        "data: {\(chunkHead),\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\\\"city\\\":\"}}]},\"finish_reason\":null}]}\n\n",
        "data: {\(chunkHead),\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"\\\"Paris\\\"}\"}}]},\"finish_reason\":null}]}\n\n",
        "data: {\(chunkHead),\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n",
        usageEvent,
        "data: [DONE]\n\n",
    ]
    private static let completionsEvents: [String] = [
        "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1,\"choices\":[{\"text\":\"Once\",\"index\":0,\"logprobs\":null,\"finish_reason\":null}],\"model\":\"gpt-3.5-turbo-instruct\"}\n\n",
        "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1,\"choices\":[{\"text\":\" upon\",\"index\":0,\"logprobs\":null,\"finish_reason\":\"length\"}],\"model\":\"gpt-3.5-turbo-instruct\"}\n\n",
        "data: {\"id\":\"cmpl-1\",\"object\":\"text_completion\",\"created\":1,\"model\":\"gpt-3.5-turbo-instruct\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":2,\"total_tokens\":7}}\n\n",
        "data: [DONE]\n\n",
    ]

    private struct Case {
        var name: String
        var events: [String]
        var dropsUsage: Bool
        /// Events (by index) the client must not see.
        var dropped: Set<Int>
        var usage: Usage?
        var sawDone = true
        var maxEventBytes = SSEParser.defaultMaxEventBytes
        var passThrough = false
    }

    private static let crlfEvents = chatEvents.map { $0.replacingOccurrences(of: "\n", with: "\r\n") }

    private static let table: [Case] = [
        Case(name: "chat, Sluice added usage", events: chatEvents, dropsUsage: true, dropped: [5],
             usage: StreamRelayFilterTests.reportedUsage),
        Case(name: "chat, client asked for usage", events: chatEvents, dropsUsage: false, dropped: [],
             usage: StreamRelayFilterTests.reportedUsage),
        Case(name: "chat with CRLF", events: crlfEvents, dropsUsage: true, dropped: [5],
             usage: StreamRelayFilterTests.reportedUsage),
        Case(name: "tool calls", events: toolEvents, dropsUsage: true, dropped: [4],
             usage: StreamRelayFilterTests.reportedUsage),
        Case(name: "completions", events: completionsEvents, dropsUsage: true, dropped: [2],
             usage: Usage(promptTokens: 5, completionTokens: 2, totalTokens: 7)),
        Case(name: "upstream never reports usage", events: Array(chatEvents[0..<5]) + [chatEvents[6]], dropsUsage: true, dropped: [], usage: nil),
        Case(name: "keep-alive comments and an error event pass", events: [": keep-alive\n\n", chatEvents[1],
             "event: error\ndata: {\"error\":{\"message\":\"overloaded\",\"type\":\"server_error\"}}\n\n", "data: not json\n\n"],
             dropsUsage: true, dropped: [], usage: nil, sawDone: false),
        Case(name: "usage chunk last without blank line", events: Array(chatEvents[0..<5]) + [String(usageEvent.dropLast())],
             dropsUsage: true, dropped: [5], usage: StreamRelayFilterTests.reportedUsage, sawDone: false),
        Case(name: "oversize event turns to pass-through", events: [chatEvents[1], "data: " + String(repeating: "x", count: 600) + "\n\n", usageEvent],
             dropsUsage: true, dropped: [], usage: nil, sawDone: false, maxEventBytes: 512, passThrough: true),
    ]

    /// The generated text, computed independently with Foundation's JSON parser.
    private func expectedText(_ events: [String], through limit: Int? = nil) throws -> String {
        var text = ""
        for event in events.prefix(limit ?? events.count) {
            for line in event.split(whereSeparator: { $0 == "\n" || $0 == "\r" }) where line.hasPrefix("data: {") {
                guard let object = try? JSONSerialization.jsonObject(with: Data(line.dropFirst(6).utf8)) as? [String: Any],
                      let choices = object["choices"] as? [[String: Any]] else { continue }
                for choice in choices {
                    text += choice["text"] as? String ?? ""
                    guard let delta = choice["delta"] as? [String: Any] else { continue }
                    text += delta["content"] as? String ?? ""
                    for call in delta["tool_calls"] as? [[String: Any]] ?? [] {
                        let function = call["function"] as? [String: Any] ?? [:]
                        text += (function["name"] as? String ?? "") + (function["arguments"] as? String ?? "")
                    }
                }
            }
        }
        return text
    }

    private enum Feed { case arrays, rawPointers, unlessUnchanged }

    private func run(_ testCase: Case, chunks: [[UInt8]], feed: Feed = .arrays) -> (output: [UInt8], filter: StreamRelayFilter) {
        var filter = StreamRelayFilter(dropsUsageChunk: testCase.dropsUsage, maxEventBytes: testCase.maxEventBytes)
        var output: [UInt8] = []
        for chunk in chunks {
            switch feed {
            case .arrays: output += filter.consume(chunk)
            case .rawPointers: output += chunk.withUnsafeBytes { filter.consume($0) }
            // nil: the chunk goes out as it came (the relay sends its own buffer).
            case .unlessUnchanged: output += chunk.withUnsafeBytes { filter.consumeUnlessUnchanged($0) } ?? chunk
            }
        }
        output += filter.finish()
        return (output, filter)
    }

    private struct Expectation {
        var output: [UInt8]
        var text: String
    }

    private func expectation(_ testCase: Case) throws -> Expectation {
        let output = testCase.events.enumerated().filter { !testCase.dropped.contains($0.offset) }.map(\.element).joined()
        // In pass-through the filter stops reading at the oversize event (the second one).
        let text = try expectedText(testCase.events, through: testCase.passThrough ? 1 : nil)
        return Expectation(output: Array(output.utf8), text: text)
    }

    private func check(_ testCase: Case, _ expected: Expectation, chunks: [[UInt8]], feed: Feed = .arrays, label: String) {
        let (output, filter) = run(testCase, chunks: chunks, feed: feed)
        XCTAssertEqual(output, expected.output, label)
        XCTAssertEqual(filter.usage, testCase.usage, label)
        XCTAssertEqual(filter.sawDone, testCase.sawDone, label)
        XCTAssertEqual(filter.droppedUsageChunk, !testCase.dropped.isEmpty, label)
        XCTAssertEqual(filter.state, .finished, label)
        XCTAssertEqual(filter.streamedText, expected.text, label)
    }

    func testTableWholeStream() throws {
        for testCase in Self.table {
            let stream = Array(testCase.events.joined().utf8)
            let expected = try expectation(testCase)
            check(testCase, expected, chunks: [stream], label: testCase.name)
            check(testCase, expected, chunks: [stream], feed: .rawPointers, label: "\(testCase.name) (raw pointers)")
            check(testCase, expected, chunks: [stream], feed: .unlessUnchanged, label: "\(testCase.name) (unless unchanged)")
            check(testCase, expected, chunks: testCase.events.map { Array($0.utf8) }, feed: .unlessUnchanged, label: "\(testCase.name) (event per chunk, unless unchanged)")
            check(testCase, expected, chunks: testCase.events.map { Array($0.utf8) }, label: "\(testCase.name) (event per chunk)")
        }
    }

    func testTableSplitAtEveryBytePosition() throws {
        for testCase in Self.table {
            let stream = Array(testCase.events.joined().utf8)
            let expected = try expectation(testCase)
            for split in 0...stream.count {
                check(testCase, expected, chunks: [Array(stream[..<split]), Array(stream[split...])], label: "\(testCase.name) split at \(split)")
                check(testCase, expected, chunks: [Array(stream[..<split]), Array(stream[split...])], feed: .unlessUnchanged,
                      label: "\(testCase.name) split at \(split) (unless unchanged)")
            }
        }
    }

    func testTableByteByByteAndRandomChunks() throws {
        var generator = SplitMix64(seed: 0x5eed)
        for testCase in Self.table {
            let stream = Array(testCase.events.joined().utf8)
            let expected = try expectation(testCase)
            check(testCase, expected, chunks: stream.map { [$0] }, label: "\(testCase.name) byte by byte")
            for round in 0..<20 {
                var chunks: [[UInt8]] = []
                var start = 0
                while start < stream.count {
                    let length = Int.random(in: 1...97, using: &generator)
                    chunks.append(Array(stream[start..<min(start + length, stream.count)]))
                    start += length
                }
                check(testCase, expected, chunks: chunks, feed: [Feed.arrays, .rawPointers, .unlessUnchanged][round % 3],
                          label: "\(testCase.name) random chunks round \(round)")
            }
        }
    }

    func testStreamedTextIsBounded() {
        var filter = StreamRelayFilter(dropsUsageChunk: false, maxStreamedTextBytes: 8)
        let events = Array(Self.chatEvents[1].utf8) + Array(Self.chatEvents[1].utf8)
        XCTAssertEqual(filter.consume(events), events)
        XCTAssertEqual(filter.streamedText, "HelloHel")
        XCTAssertTrue(filter.streamedTextTruncated)
    }

    func testWholeEventChunksAreForwardedWithoutHoldingBytes() {
        var filter = StreamRelayFilter(dropsUsageChunk: true)
        let first = Array(Self.chatEvents[1].utf8)
        XCTAssertEqual(filter.consume(first), first)
        let partial = Array(Self.chatEvents[2].utf8.dropLast())
        XCTAssertEqual(filter.consume(partial), [], "a partial event is held back")
        XCTAssertEqual(filter.consume([UInt8(ascii: "\n")]), Array(Self.chatEvents[2].utf8))
        XCTAssertEqual(filter.consume(Array(Self.usageEvent.utf8)), [], "the usage event is dropped")
        XCTAssertEqual(filter.finish(), [])
    }

    /// The relay sends a chunk's own buffer when the filter returns nil: only whole events, none
    /// dropped, nothing held before; anything else comes back as the bytes to send.
    func testUnchangedChunksAreNotCopied() {
        var filter = StreamRelayFilter(dropsUsageChunk: true)
        let first = Array(Self.chatEvents[1].utf8)
        XCTAssertNil(first.withUnsafeBytes { filter.consumeUnlessUnchanged($0) }, "a whole event passes as it came")
        let partial = Array(Self.chatEvents[2].utf8.dropLast())
        XCTAssertEqual(partial.withUnsafeBytes { filter.consumeUnlessUnchanged($0) }, [], "a partial event is held back")
        XCTAssertEqual([UInt8(ascii: "\n")].withUnsafeBytes { filter.consumeUnlessUnchanged($0) }, Array(Self.chatEvents[2].utf8),
                       "the held bytes come out with their end")
        XCTAssertEqual(Array(Self.usageEvent.utf8).withUnsafeBytes { filter.consumeUnlessUnchanged($0) }, [], "the usage event is dropped")
        XCTAssertEqual(filter.finish(), [])
    }
}
