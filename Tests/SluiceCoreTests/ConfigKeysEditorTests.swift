import XCTest
@testable import SluiceCore

/// Targeted edits of the `keys` array: the result's text, byte for byte.
final class ConfigKeysEditorTests: XCTestCase {
    func edit(_ text: String) throws -> ConfigKeysEditor {
        try ConfigKeysEditor(text: Array(text.utf8))
    }

    func string(_ bytes: [UInt8]) -> String {
        String(decoding: bytes, as: UTF8.self)
    }

    static let pretty = """
        {
            "tiers": {"t": {"requests_per_minute": 1.0e1}},
            "keys": [
                {
                    "id": "a",
                    "secret_sha256": "aa"
                },
                {
                    "id": "b",
                    "secret_sha256": "bb"
                }
            ],
            "redis": null
        }

        """

    func testAppendCopiesTheLastEntrysLayout() throws {
        let result = string(try edit(Self.pretty).appendingKey([("id", "\"c\""), ("tier", "\"t\"")]))
        let expected = Self.pretty.replacingOccurrences(
            of: "\"bb\"\n        }\n",
            with: "\"bb\"\n        },\n        {\n            \"id\": \"c\",\n            \"tier\": \"t\"\n        }\n"
        )
        XCTAssertNotEqual(expected, Self.pretty)
        XCTAssertEqual(result, expected)
    }

    func testAppendToOneLineEntriesAndToAnEmptyArray() throws {
        XCTAssertEqual(
            string(try edit(#"{"keys":[{"id":"a"}], "x": 1}"#).appendingKey([("id", "\"b\"")])),
            #"{"keys":[{"id":"a"},{"id":"b"}], "x": 1}"#
        )
        XCTAssertEqual(
            string(try edit("{\n  \"keys\": [\n    {\"id\": \"a\"}\n  ]\n}").appendingKey([("id", "\"b\"")])),
            "{\n  \"keys\": [\n    {\"id\": \"a\"},\n    {\"id\": \"b\"}\n  ]\n}"
        )
        XCTAssertEqual(
            string(try edit("{\n  \"keys\": []\n}").appendingKey([("id", "\"b\""), ("tier", "\"t\"")])),
            "{\n  \"keys\": [\n    {\n      \"id\": \"b\",\n      \"tier\": \"t\"\n    }\n  ]\n}"
        )
        XCTAssertEqual(string(try edit(#"{"keys":[]}"#).appendingKey([("id", "\"b\"")])), #"{"keys":[{"id": "b"}]}"#)
    }

    func testRemoveFirstMiddleLastAndOnly() throws {
        let three = "{\"keys\": [\n  {\"id\": \"a\"},\n  {\"id\": \"b\"},\n  {\"id\": \"c\"}\n]}"
        XCTAssertEqual(string(try edit(three).removingKey(at: 0)), "{\"keys\": [\n  {\"id\": \"b\"},\n  {\"id\": \"c\"}\n]}")
        XCTAssertEqual(string(try edit(three).removingKey(at: 1)), "{\"keys\": [\n  {\"id\": \"a\"},\n  {\"id\": \"c\"}\n]}")
        XCTAssertEqual(string(try edit(three).removingKey(at: 2)), "{\"keys\": [\n  {\"id\": \"a\"},\n  {\"id\": \"b\"}\n]}")
        XCTAssertEqual(string(try edit("{\"keys\": [\n  {\"id\": \"a\"}\n], \"z\": 0}").removingKey(at: 0)), "{\"keys\": [], \"z\": 0}")
    }

    func testSetMemberReplacesOrInsertsAfterItsAnchor() throws {
        let editor = try edit(Self.pretty)
        let inserted = string(editor.settingMember(ofKeyAt: 1, name: "previous_secrets", json: "[]", after: "secret_sha256"))
        XCTAssertTrue(inserted.contains("\"secret_sha256\": \"bb\",\n            \"previous_secrets\": []\n        }"), inserted)
        let replaced = string(try edit(inserted).settingMember(ofKeyAt: 1, name: "secret_sha256", json: "\"cc\"", after: "id"))
        XCTAssertEqual(replaced, inserted.replacingOccurrences(of: "\"bb\"", with: "\"cc\""))
        XCTAssertEqual(
            string(try edit(#"{"keys": [{"id": "a", "secret_sha256": "aa", "tier": "t"}]}"#).settingMember(ofKeyAt: 0, name: "previous_secrets", json: "[1]", after: "secret_sha256")),
            #"{"keys": [{"id": "a", "secret_sha256": "aa", "previous_secrets": [1], "tier": "t"}]}"#
        )
    }

    func testStringsWithEscapesAndRefusals() throws {
        let text = #"{"k\u0065ys": [{"id": "a\"]"}], "other": "[{"}"#
        XCTAssertEqual(string(try edit(text).removingKey(at: 0)), #"{"k\u0065ys": [], "other": "[{"}"#)
        XCTAssertThrowsError(try edit(#"{"keys": {}}"#))
        XCTAssertThrowsError(try edit(#"[1]"#))
        XCTAssertEqual(ConfigKeysEditor.quoted("a\"b\\c\u{1}"), #""a\"b\\c\u0001""#)
    }
}
