import Foundation
import XCTest
@testable import SluiceTokenizer

/// Whole-text encoding against ids produced by the real tiktoken (Fixtures/encode-vectors.json).
final class BPEEncodingTests: XCTestCase {
    static let encodings: Result<[EncodingName: BPEEncoding], Error> = Result {
        var loaded: [EncodingName: BPEEncoding] = [:]
        for name in EncodingName.allCases {
            loaded[name] = BPEEncoding(name: name, ranks: try LoadedRankTables.table(name))
        }
        return loaded
    }

    private func encoding(_ name: EncodingName) throws -> BPEEncoding {
        try XCTUnwrap(Self.encodings.get()[name])
    }

    func testEveryFixtureTextEncodesToTiktokensIds() throws {
        let vectors = try EncodeVectors.load()
        XCTAssertGreaterThan(vectors.texts.count, 200)
        for name in EncodingName.allCases {
            let encoding = try encoding(name)
            for vector in vectors.texts {
                let expected = vector.ids(name)
                XCTAssertEqual(encoding.encodeOrdinary(vector.text), expected, "\(name) \(vector.name)")
                XCTAssertEqual(encoding.countOrdinary(vector.text), expected.count, "\(name) \(vector.name)")
                let bytes = Array(vector.text.utf8)
                let count = bytes.withUnsafeBufferPointer { encoding.countOrdinary(utf8: $0) }
                XCTAssertEqual(count, expected.count, "\(name) \(vector.name) (bytes)")
            }
        }
    }

    /// Ill-formed UTF-8 is repaired like Python's `bytes.decode("utf-8", "replace")`.
    func testIllFormedUTF8IsRepairedLikePython() throws {
        let vectors = try EncodeVectors.load()
        for vector in vectors.illFormedUTF8 {
            let bytes = try XCTUnwrap(Data(base64Encoded: vector.base64).map(Array.init))
            XCTAssertFalse(bytes.withUnsafeBufferPointer(UTF8Validation.isValid), vector.name)
            let repaired = String(decoding: bytes, as: UTF8.self)
            XCTAssertEqual(repaired.unicodeScalars.filter { $0 == "\u{FFFD}" }.count, vector.replacementCount, vector.name)
            for name in EncodingName.allCases {
                let encoding = try encoding(name)
                let expected = vector.ids(name)
                XCTAssertEqual(bytes.withUnsafeBufferPointer { encoding.encodeOrdinary(utf8: $0) }, expected, "\(name) \(vector.name)")
                XCTAssertEqual(bytes.withUnsafeBufferPointer { encoding.countOrdinary(utf8: $0) }, expected.count, "\(name) \(vector.name)")
            }
        }
    }

    func testUTF8ValidationAcceptsEveryFixtureText() throws {
        for vector in try EncodeVectors.load().texts {
            XCTAssertTrue(Array(vector.text.utf8).withUnsafeBufferPointer(UTF8Validation.isValid), vector.name)
        }
    }

    func testLimitRefusesBeforeCounting() throws {
        let encoding = try encoding(.o200k_base)
        XCTAssertEqual(try encoding.countOrdinary("hello world", limit: 11), 2)
        XCTAssertThrowsError(try encoding.countOrdinary("hello world!", limit: 11)) { error in
            XCTAssertEqual(error as? TokenizerError, .inputTooLarge(byteCount: 12, limit: 11))
        }
        let bytes = Array("héllo".utf8)
        XCTAssertThrowsError(try bytes.withUnsafeBufferPointer { try encoding.countOrdinary(utf8: $0, limit: 5) }) { error in
            XCTAssertEqual(error as? TokenizerError, .inputTooLarge(byteCount: 6, limit: 5))
        }
    }

    /// A count with a stop is exact up to its limit; above it, it returns as soon as the limit is
    /// passed, so refusing a huge text costs about `limit` tokens of work, not the text's size.
    func testCountStoppingAboveALimitIsExactBelowItAndStopsEarlyAboveIt() throws {
        let encoding = try encoding(.o200k_base)
        let text = (0..<5_000).map { "w\($0 % 977)x\($0 % 13)" }.joined(separator: " ")
        let exact = encoding.countOrdinary(text)
        XCTAssertEqual(encoding.countOrdinary(text, stoppingAbove: exact), exact)
        XCTAssertEqual(encoding.countOrdinary(text, stoppingAbove: exact + 1_000), exact)
        let stopped = encoding.countOrdinary(text, stoppingAbove: 100)
        XCTAssertGreaterThan(stopped, 100)
        // It stopped within one piece of the limit (a piece is at most a few tokens here).
        XCTAssertLessThan(stopped, 110)
        XCTAssertEqual(encoding.countOrdinary("", stoppingAbove: 0), 0)
    }

    func testEmptyInput() throws {
        let encoding = try encoding(.cl100k_base)
        XCTAssertEqual(encoding.encodeOrdinary(""), [])
        XCTAssertEqual(encoding.countOrdinary(""), 0)
        XCTAssertEqual(encoding.countOrdinary(utf8: UnsafeBufferPointer(start: nil, count: 0)), 0)
    }

    func testLoadFromDirectoryAndTokenizersLookup() throws {
        let tokenizers = try Tokenizers.load(directory: TestPaths.tokenizerDirectory)
        XCTAssertEqual(tokenizers.encoding(forModel: "gpt-4-0613").name, .cl100k_base)
        XCTAssertEqual(tokenizers.encoding(forModel: "gpt-4o-mini").name, .o200k_base)
        XCTAssertEqual(tokenizers.encoding(.cl100k_base).rankCount, 100_256)
        XCTAssertEqual(tokenizers.encoding(.o200k_base).rankCount, 199_998)
    }

    func testParallelLoadReportsTheMissingFile() {
        let directory = "/nonexistent-\(UUID().uuidString)"
        XCTAssertThrowsError(try Tokenizers.load(directory: directory)) { error in
            XCTAssertEqual(error as? TokenizerError, .missingRankFile(path: directory + "/cl100k_base.tiktoken"))
        }
    }
}
