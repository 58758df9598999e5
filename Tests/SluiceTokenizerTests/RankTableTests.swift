import Foundation
import XCTest
@testable import SluiceTokenizer

final class RankTableTests: XCTestCase {
    func testLoadsBothEncodingsWithTheirRankCounts() throws {
        for name in EncodingName.allCases {
            let table = try LoadedRankTables.table(name)
            XCTAssertEqual(table.count, name.rankCount, "\(name)")
            XCTAssertEqual(table.longestToken, 128, "\(name)")
        }
    }

    /// Every piece tiktoken's own regex produced, merged alone, gives tiktoken's ids — this checks
    /// the rank table and both merge strategies apart from the pre-tokenizer.
    func testMergingSinglePiecesMatchesTiktoken() throws {
        let vectors = try EncodeVectors.load()
        XCTAssertGreaterThan(vectors.pieces.count, 100)
        for name in EncodingName.allCases {
            let table = try LoadedRankTables.table(name)
            let scratch = MergeScratch()
            var checked = 0
            for piece in vectors.pieces {
                guard let expected = piece.ids(name) else { continue }
                let bytes = try XCTUnwrap(Data(base64Encoded: piece.base64).map(Array.init))
                var ids: [UInt32] = []
                let count = bytes.withUnsafeBufferPointer { buffer in
                    table.appendTokens(ofPiece: buffer.baseAddress!, count: buffer.count, scratch: scratch, to: &ids)
                    return table.tokenCount(ofPiece: buffer.baseAddress!, count: buffer.count, scratch: scratch)
                }
                XCTAssertEqual(ids, expected, "\(name) piece \(piece.base64.prefix(40))")
                XCTAssertEqual(count, expected.count, "\(name) piece \(piece.base64.prefix(40))")
                checked += 1
            }
            XCTAssertGreaterThan(checked, 50, "\(name)")
        }
    }

    // MARK: Loading errors

    func testMissingFileNamesThePathAndSetupScript() {
        let path = "/nonexistent-\(UUID().uuidString)/cl100k_base.tiktoken"
        XCTAssertThrowsError(try RankTable.load(path: path, expectedSHA256: EncodingName.cl100k_base.expectedSHA256)) { error in
            XCTAssertEqual(error as? TokenizerError, .missingRankFile(path: path))
            XCTAssertTrue("\(error)".contains("scripts/setup"))
        }
    }

    func testWrongHashIsRefusedWithBothHashes() throws {
        let directory = try temporaryDirectory()
        let path = directory + "/cl100k_base.tiktoken"
        try Data("YQ== 0\n".utf8).write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try BPEEncoding.load(.cl100k_base, directory: directory)) { error in
            // SHA-256 of "YQ== 0\n", computed with `printf 'YQ== 0\n' | sha256sum`.
            XCTAssertEqual(error as? TokenizerError, .rankFileHashMismatch(
                path: path,
                expected: EncodingName.cl100k_base.expectedSHA256,
                actual: "5cf7e7c1be6c3640f175cc389c7bbfd75f6d8b2d22651f7569723834673737b7"))
        }
    }

    func testMalformedLinesAreReportedWithTheirLineNumber() {
        let allBytes = (0...255).map { byte in "\(Data([UInt8(byte)]).base64EncodedString()) \(byte)" }
        let cases: [(lines: [String], line: Int)] = [
            (allBytes + ["YWI="], 257),  // no rank
            (allBytes + ["YWI= 12x"], 257),  // rank not a number
            (allBytes + ["YWI 300"], 257),  // base64 length not a multiple of 4
            (allBytes + ["Y!I= 300"], 257),  // not base64
            (allBytes + ["YWI= 4294967295"], 257),  // rank equal to the absent sentinel
            (allBytes + ["YWI= 300", "", "YWI= 301"], 259),  // duplicate token (the empty line counts)
            (["YQ== 0", "= 1"], 2),  // empty token
            (Array(allBytes.dropFirst()), 255),  // byte 0x00 is not a token: reported at the end
        ]
        for (lines, line) in cases {
            let text = lines.joined(separator: "\n") + "\n"
            XCTAssertThrowsError(try parse(text)) { error in
                guard case .malformedRankFile(path: "test.tiktoken", line: let reported, reason: _)? = error as? TokenizerError else {
                    return XCTFail("unexpected \(error) for \(lines.last ?? "")")
                }
                XCTAssertEqual(reported, line, "\(lines.last ?? "")")
            }
        }
    }

    func testParsesCRLFAndLongTokens() throws {
        let long = Data("a much longer token than eight bytes".utf8).base64EncodedString()
        let lines = (0...255).map { "\(Data([UInt8($0)]).base64EncodedString()) \($0)" } + ["\(long) 256", "YWI= 257"]
        let table = try parse(lines.joined(separator: "\r\n"))
        XCTAssertEqual(table.count, 258)
        XCTAssertEqual(rank(table, "a much longer token than eight bytes"), 256)
        XCTAssertEqual(rank(table, "a much longer token than eight byteZ"), RankTable.absent)
        XCTAssertEqual(rank(table, "ab"), 257)
        XCTAssertEqual(rank(table, "ba"), RankTable.absent)
        XCTAssertEqual(table.rank(ofByte: 0x61), 0x61)
    }

    func testBase64DecodesPaddingVariants() {
        for (text, expected) in [("YQ==", "a"), ("YWI=", "ab"), ("YWJj", "abc"), ("YWJjZA==", "abcd"), ("+/+/", "\u{FB}\u{FF}\u{BF}")] {
            var output = [UInt8](repeating: 0, count: 8)
            let count = Array(text.utf8).withUnsafeBufferPointer { input in
                output.withUnsafeMutableBufferPointer { Base64.decode(input, into: $0) }
            }
            let expectedBytes = text == "+/+/" ? [0xFB, 0xFF, 0xBF] : Array(expected.utf8)
            XCTAssertEqual(count.map { Array(output[0..<$0]) }, expectedBytes, text)
        }
        for invalid in ["Y", "YQ=", "Y===", "YQ=a", "Y Q=", "é123"] {
            var output = [UInt8](repeating: 0, count: 8)
            let count = Array(invalid.utf8).withUnsafeBufferPointer { input in
                output.withUnsafeMutableBufferPointer { Base64.decode(input, into: $0) }
            }
            XCTAssertNil(count, invalid)
        }
    }

    // MARK: Helpers

    private func parse(_ text: String) throws -> RankTable {
        try Array(text.utf8).withUnsafeBufferPointer { buffer in
            try RankTable.parse(buffer, path: "test.tiktoken")
        }
    }

    private func rank(_ table: RankTable, _ text: String) -> UInt32 {
        Array(text.utf8).withUnsafeBufferPointer { table.rank(of: $0.baseAddress!, count: $0.count) }
    }

    private func temporaryDirectory() throws -> String {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-tokenizer-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: url) }
        return url.path
    }
}
