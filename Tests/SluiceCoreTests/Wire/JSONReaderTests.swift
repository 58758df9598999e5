import Foundation
import XCTest
@testable import SluiceCore

final class JSONReaderTests: XCTestCase {
    // MARK: Valid documents, checked against Foundation's JSONSerialization as the oracle

    static let validCorpus: [String] = [
        #"{}"#, #"[]"#, #"0"#, #"-0"#, #"1.5e10"#, #"-12.25E-3"#, #""plain""#, #"true"#, #"false"#, #"null"#,
        #"  {"a" : [1, 2, {"b": null}], "c": "d"}  "#,
        #"{"esc":"quote \" backslash \\ slash \/ \b\f\n\r\t end"}"#,
        #"["\u00e9\u4e2d\ud83d\ude00", "é中😀", "\u0000\u001f"]"#,
        #"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"n":2,"stream":true}"#,
        #"[1e308, 123456789012345678, 0.000001, 1E+2]"#,
        "\t\r\n[\n1\n,\n2\n]\n",
    ]

    func testValidCorpusMatchesFoundation() throws {
        for text in Self.validCorpus {
            let ours = try JSONReader.parse(text)
            let foundation = try JSONSerialization.jsonObject(with: Data(text.utf8), options: [.fragmentsAllowed])
            XCTAssertTrue(Self.equivalent(ours, foundation), "mismatch for \(text): \(ours) vs \(foundation)")
        }
    }

    func testCompactWriterRoundTripsThroughFoundation() throws {
        for text in Self.validCorpus {
            let value = try JSONReader.parse(text)
            let written = JSONWriter.compactText(value)
            let reparsed = try JSONSerialization.jsonObject(with: Data(written.utf8), options: [.fragmentsAllowed])
            XCTAssertTrue(Self.equivalent(value, reparsed), "writer output \(written) differs from \(text)")
            XCTAssertEqual(try JSONReader.parse(written), value)
        }
    }

    func testObjectKeepsOrderDuplicatesAndValueRanges() throws {
        let text = #"{ "b" : 1, "a":[true ,null], "b":"x" }"#
        let bytes = Array(text.utf8)
        let object = try XCTUnwrap(try JSONReader.parse(bytes).objectValue)
        XCTAssertEqual(object.members.map(\.key), ["b", "a", "b"])
        XCTAssertEqual(object["b"], .string("x"), "the last duplicate wins, like Python's json")
        for member in object.members {
            let slice = String(decoding: bytes[member.valueRange], as: UTF8.self)
            XCTAssertEqual(try JSONReader.parse(slice), member.value, "range of \(member.key) is \(slice)")
        }
        XCTAssertEqual(String(decoding: bytes[object.members[1].valueRange], as: UTF8.self), "[true ,null]")
    }

    func testNumbersKeepTheirLiterals() throws {
        let value = try JSONReader.parse("[12, -3, 4.0, 1e2, 123456789012345678901234567890]")
        let numbers = try XCTUnwrap(value.arrayValue).compactMap { value -> JSONNumber? in
            if case .number(let number) = value { return number }
            return nil
        }
        XCTAssertEqual(numbers.map(\.literal), ["12", "-3", "4.0", "1e2", "123456789012345678901234567890"])
        XCTAssertEqual(numbers.map(\.intValue), [12, -3, nil, nil, nil])
        XCTAssertEqual(numbers.map(\.isIntegerLiteral), [true, true, false, false, true])
        XCTAssertEqual(numbers[3].doubleValue, 100)
    }

    /// Whole numbers in any spelling are integers (JSON Schema's `integer`, which OpenAI follows),
    /// decided exactly on the digits; beyond `Int`'s range they saturate.
    func testWholeValueTakesEverySpellingOfAWholeNumber() {
        let cases: [(String, Int?)] = [
            ("0", 0), ("-0", 0), ("-0.0", 0), ("0e5", 0), ("1.0", 1), ("228.0", 228), ("1e2", 100), ("1E+2", 100),
            ("1.25e2", 125), ("12500e-2", 125), ("-3.000", -3), ("0.0000e-999999999999", 0),
            ("1.5", nil), ("1e-3", nil), ("12501e-2", nil), ("1.0000000000000001", nil), ("-0.5", nil),
            ("9223372036854775807", Int.max), ("9223372036854775808", Int.max), ("123456789012345678901234567890", Int.max),
            ("1e19", Int.max), ("1e999999999999", Int.max), ("-1e19", Int.min), ("2147483648.0", 2_147_483_648),
        ]
        for (literal, expected) in cases {
            XCTAssertEqual(JSONNumber(validatedLiteral: literal).wholeValue, expected, literal)
        }
    }

    // MARK: Strings: surrogates and invalid UTF-8 never fail

    func testLoneSurrogatesBecomeReplacementCharacter() throws {
        let cases: [(String, String)] = [
            (#""\ud83d""#, "\u{FFFD}"),
            (#""a\ud83db""#, "a\u{FFFD}b"),
            (#""\ude00""#, "\u{FFFD}"),
            (#""\ud83d\ud83d\ude00""#, "\u{FFFD}😀"),
            (#""\ud83d\n""#, "\u{FFFD}\n"),
            (#""\ud83d\u0041""#, "\u{FFFD}A"),
            (#""\uD83D\uDE00""#, "😀"),
        ]
        for (json, expected) in cases {
            XCTAssertEqual(try JSONReader.parse(json), .string(expected), json)
        }
    }

    func testInvalidUTF8IsRepairedNotRejected() throws {
        let documents: [[UInt8]] = [
            [0x22, 0xFF, 0x22],
            [0x22, 0x61, 0xC3, 0x22],
            [0x22, 0xED, 0xA0, 0xBD, 0x22], // UTF-8-encoded surrogate
            [0x22, 0xE2, 0x5C, 0x6E, 0x22], // truncated sequence followed by an escape
        ]
        for document in documents {
            let value = try JSONReader.parse(document)
            let string = try XCTUnwrap(value.stringValue)
            XCTAssertTrue(string.unicodeScalars.contains("\u{FFFD}"), "\(document) → \(string.debugDescription)")
        }
        XCTAssertEqual(try JSONReader.parse([0x22, 0xE2, 0x5C, 0x6E, 0x22]), .string("\u{FFFD}\n"))
    }

    // MARK: Invalid documents

    func testInvalidCorpusIsRejectedWithOffsets() {
        let cases: [(String, JSONParseError.Reason, Int)] = [
            ("", .unexpectedEndOfInput, 0),
            ("   ", .unexpectedEndOfInput, 3),
            ("{", .unexpectedEndOfInput, 1),
            (#"{"a":1,}"#, .unexpectedByte(UInt8(ascii: "}")), 7),
            ("[1,]", .unexpectedByte(UInt8(ascii: "]")), 3),
            ("[1 2]", .unexpectedByte(UInt8(ascii: "2")), 3),
            (#"{"a" 1}"#, .unexpectedByte(UInt8(ascii: "1")), 5),
            ("{a:1}", .unexpectedByte(UInt8(ascii: "a")), 1),
            ("01", .invalidNumber, 1),
            ("1.", .invalidNumber, 2),
            ("-", .invalidNumber, 1),
            ("1e", .invalidNumber, 2),
            (".5", .unexpectedByte(UInt8(ascii: ".")), 0),
            ("+1", .unexpectedByte(UInt8(ascii: "+")), 0),
            ("NaN", .unexpectedByte(UInt8(ascii: "N")), 0),
            ("tru", .unexpectedEndOfInput, 3),
            ("nul1", .unexpectedByte(UInt8(ascii: "1")), 3),
            (#""abc"#, .unexpectedEndOfInput, 4),
            (#""\x""#, .invalidEscape, 2),
            (#""\u12G4""#, .invalidUnicodeEscape, 5),
            (#""\u12"#, .unexpectedEndOfInput, 5),
            ("\"a\tb\"", .controlCharacterInString, 2),
            ("{} x", .trailingData, 3),
            ("[] []", .trailingData, 3),
            ("\u{FEFF}{}", .unexpectedByte(0xEF), 0),
            ("'a'", .unexpectedByte(UInt8(ascii: "'")), 0),
        ]
        for (text, reason, offset) in cases {
            XCTAssertThrowsError(try JSONReader.parse(text), text.debugDescription) { error in
                XCTAssertEqual(error as? JSONParseError, JSONParseError(reason, at: offset), text.debugDescription)
            }
            // The oracle agrees that each document is invalid, except where Foundation on Linux is
            // laxer than RFC 8259 (it skips a byte-order mark and accepts trailing commas;
            // Python's json module rejects them too, as it does all others here but `NaN`).
            if text.hasPrefix("\u{FEFF}") || text.hasSuffix(",}") || text.hasSuffix(",]") { continue }
            XCTAssertNil(try? JSONSerialization.jsonObject(with: Data(text.utf8), options: [.fragmentsAllowed]), text)
        }
    }

    func testSpecialBytesAreFoundAtEveryPositionOfLongStrings() throws {
        // The scanner skips plain bytes eight at a time; every special byte must still be seen
        // wherever it falls within such a word.
        let filler = Array("abcdefghijklmnopqrstuvwxyzé0123456789".utf8)
        for position in 0..<filler.count {
            var controlled = filler
            controlled[position] = 0x09
            XCTAssertThrowsError(try JSONReader.parse([0x22] + controlled + [0x22])) { error in
                XCTAssertEqual(error as? JSONParseError, JSONParseError(.controlCharacterInString, at: position + 1))
            }
            var escaped = filler
            escaped.replaceSubrange(position..<position + 1, with: Array(#"\""#.utf8))
            let expected = String(decoding: filler[..<position], as: UTF8.self) + "\"" + String(decoding: filler[(position + 1)...], as: UTF8.self)
            XCTAssertEqual(try JSONReader.parse([0x22] + escaped + [0x22]), .string(expected))
            let quoted = [0x22] + Array(filler[..<position]) + [0x22]
            XCTAssertEqual(try JSONReader.parse(quoted + [0x20]), .string(String(decoding: filler[..<position], as: UTF8.self)))
        }
    }

    func testNestingLimit() throws {
        let depth = JSONReader.defaultMaxDepth
        let allowed = String(repeating: "[", count: depth) + String(repeating: "]", count: depth)
        XCTAssertNoThrow(try JSONReader.parse(allowed))
        let tooDeep = String(repeating: "[", count: depth + 1) + String(repeating: "]", count: depth + 1)
        XCTAssertThrowsError(try JSONReader.parse(tooDeep)) { error in
            XCTAssertEqual(error as? JSONParseError, JSONParseError(.nestingTooDeep(limit: depth), at: depth))
        }
        // A hostile document far deeper than any stack could recurse fails fast instead of crashing.
        let hostile = Array(repeating: UInt8(ascii: "{"), count: 1_000_000)
        XCTAssertThrowsError(try JSONReader.parse(hostile))
        let hostileArrays = String(repeating: #"{"a":["#, count: 200_000)
        XCTAssertThrowsError(try JSONReader.parse(hostileArrays))
    }

    func testHugeNumbersAreKeptNotOverflowed() throws {
        let digits = String(repeating: "9", count: 10_000)
        guard case .number(let number) = try JSONReader.parse(digits) else { return XCTFail("not a number") }
        XCTAssertNil(number.intValue)
        XCTAssertEqual(number.literal.count, 10_000)
        guard case .number(let big) = try JSONReader.parse("1e400") else { return XCTFail("not a number") }
        XCTAssertEqual(big.doubleValue, .infinity)
    }

    // MARK: Writer escaping

    func testWriterEscapesEveryControlCharacter() throws {
        var text = ""
        for scalar in 0..<0x20 { text.unicodeScalars.append(Unicode.Scalar(UInt8(scalar))) }
        text += "\"\\/é😀\u{2028}"
        let literal = JSONWriter.stringLiteral(text)
        let decoded = try JSONSerialization.jsonObject(with: Data(literal), options: [.fragmentsAllowed]) as? String
        XCTAssertEqual(decoded, text)
        XCTAssertEqual(try JSONReader.parse(literal), .string(text))
        XCTAssertFalse(literal.dropFirst().dropLast().contains { $0 < 0x20 }, "no raw control byte is written")
    }

    // MARK: Oracle comparison

    /// Structural equality between our value and Foundation's (numbers by value, bools apart).
    static func equivalent(_ value: JSONValue, _ foundation: Any) -> Bool {
        switch value {
        case .null: return foundation is NSNull
        case .bool(let flag):
            // Foundation represents booleans as NSNumber on Linux; compare by value.
            return (foundation as? NSNumber)?.boolValue == flag
        case .number(let number):
            return (foundation as? NSNumber)?.doubleValue == number.doubleValue
        case .string(let string): return (foundation as? String) == string
        case .array(let elements):
            guard let others = foundation as? [Any], others.count == elements.count else { return false }
            return zip(elements, others).allSatisfy { equivalent($0, $1) }
        case .object(let object):
            guard let others = foundation as? [String: Any], others.count == Set(object.members.map(\.key)).count else { return false }
            return object.members.allSatisfy { member in others[member.key].map { equivalent(object[member.key]!, $0) } ?? false }
        }
    }
}
