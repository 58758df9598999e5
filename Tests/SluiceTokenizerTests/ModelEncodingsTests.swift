import XCTest
@testable import SluiceTokenizer

final class ModelEncodingsTests: XCTestCase {
    /// Expected encodings are tiktoken's `encoding_name_for_model` for these names
    /// (checked with tiktoken 0.14.0); unknown names fall back to o200k_base.
    func testTiktokensModelTable() {
        let cases: [(String, EncodingName)] = [
            ("gpt-4o", .o200k_base), ("gpt-4o-2024-08-06", .o200k_base), ("gpt-4o-mini", .o200k_base),
            ("chatgpt-4o-latest", .o200k_base), ("gpt-4.1", .o200k_base), ("gpt-4.1-nano", .o200k_base),
            ("gpt-4.5-preview", .o200k_base), ("gpt-5", .o200k_base), ("gpt-5-mini", .o200k_base),
            ("o1", .o200k_base), ("o1-mini", .o200k_base), ("o3", .o200k_base), ("o3-mini", .o200k_base),
            ("o4-mini", .o200k_base), ("o4-mini-2025-04-16", .o200k_base),
            ("gpt-4", .cl100k_base), ("gpt-4-0613", .cl100k_base), ("gpt-4-turbo", .cl100k_base),
            ("gpt-4-32k", .cl100k_base), ("gpt-3.5-turbo", .cl100k_base), ("gpt-3.5-turbo-0125", .cl100k_base),
            ("gpt-35-turbo", .cl100k_base), ("gpt-35-turbo-16k", .cl100k_base),
            ("text-embedding-3-small", .cl100k_base), ("text-embedding-ada-002", .cl100k_base),
            ("ft:gpt-4o-mini:org::abc", .o200k_base), ("ft:gpt-4-0613:org::abc", .cl100k_base),
            ("ft:gpt-3.5-turbo:org::abc", .cl100k_base),
            ("llama-3-70b", .o200k_base), ("", .o200k_base),
        ]
        let table = ModelEncodings()
        for (model, expected) in cases {
            XCTAssertEqual(table.encodingName(forModel: model), expected, model)
        }
    }

    func testOverridesWinOverBuiltInRules() {
        let table = ModelEncodings(overrides: ["gpt-4o": .cl100k_base, "my-deployment": .cl100k_base])
        XCTAssertEqual(table.encodingName(forModel: "gpt-4o"), .cl100k_base)
        XCTAssertEqual(table.encodingName(forModel: "my-deployment"), .cl100k_base)
        XCTAssertEqual(table.encodingName(forModel: "gpt-4o-mini"), .o200k_base)
    }
}
