import XCTest
@testable import SluiceCore

final class CompletionTextTests: XCTestCase {
    func testChatCompletionsAndToolCalls() {
        let body = #"{"choices":[{"message":{"content":"Hello","tool_calls":[{"function":{"name":"f","arguments":"{\"a\":1}"}}]}},{"message":{"content":" there"}}]}"#
        XCTAssertEqual(CompletionText.fromResponseBody(Array(body.utf8)), #"Hello{"a":1} there"#)
    }

    func testLegacyCompletions() {
        XCTAssertEqual(CompletionText.fromResponseBody(Array(#"{"choices":[{"text":"abc"},{"text":"def"}]}"#.utf8)), "abcdef")
    }

    func testGarbageGivesEmptyText() {
        XCTAssertEqual(CompletionText.fromResponseBody(Array("not json".utf8)), "")
        XCTAssertEqual(CompletionText.fromResponseBody(Array(#"{"choices":"x"}"#.utf8)), "")
    }
}
