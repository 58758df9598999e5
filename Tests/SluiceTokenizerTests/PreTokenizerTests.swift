import Foundation
import XCTest
@testable import SluiceTokenizer

/// Pieces from `Fixtures/pretokenizer-pieces.json`, written by scripts/gen-pretokenizer-fixtures
/// from tiktoken 0.14.0's own patterns (checked against its Rust core).
private struct PreTokenizerFixture: Decodable {
    struct Case: Decodable {
        var text: String
        var cl100k: [String]
        var o200k: [String]
    }
    var cases: [Case]

    static func load() throws -> PreTokenizerFixture {
        let url = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
            .appendingPathComponent("Fixtures/pretokenizer-pieces.json")
        return try JSONDecoder().decode(PreTokenizerFixture.self, from: Data(contentsOf: url))
    }
}

final class PreTokenizerTests: XCTestCase {
    private func pieces(_ kind: PreTokenizerKind, _ bytes: [UInt8]) -> [[UInt8]] {
        var result: [[UInt8]] = []
        bytes.withUnsafeBufferPointer { buffer in
            PreTokenizer(kind).forEachPiece(in: buffer) { range in
                result.append(Array(buffer[range]))
            }
        }
        return result
    }

    private func assertFixturePieces(_ kind: PreTokenizerKind, file: StaticString = #filePath, line: UInt = #line) throws {
        let fixture = try PreTokenizerFixture.load()
        XCTAssertGreaterThan(fixture.cases.count, 500, file: file, line: line)
        var failures = 0
        for testCase in fixture.cases {
            let expectedStrings = kind == .cl100k ? testCase.cl100k : testCase.o200k
            // Compare bytes: Swift String equality would equate "é" and "e\u{301}".
            let expected = expectedStrings.map { Array($0.utf8) }
            let actual = pieces(kind, Array(testCase.text.utf8))
            if actual != expected {
                failures += 1
                let shown = actual.map { String(decoding: $0, as: UTF8.self) }
                XCTFail("\(kind) \(testCase.text.debugDescription): expected \(expectedStrings.debugDescription), got \(shown.debugDescription)",
                        file: file, line: line)
                if failures >= 20 { return }
            }
        }
    }

    func testCL100KMatchesTiktokenPieces() throws {
        try assertFixturePieces(.cl100k)
    }

    func testO200KMatchesTiktokenPieces() throws {
        try assertFixturePieces(.o200k)
    }

    func testEmptyInputHasNoPieces() {
        XCTAssertEqual(pieces(.cl100k, []), [])
        XCTAssertEqual(pieces(.o200k, []), [])
    }

    /// Callers repair invalid UTF-8 first, but a slip must not crash or lose bytes: pieces still
    /// tile the buffer, stay inside it and are non-empty.
    func testMalformedUTF8StillTilesTheBuffer() {
        var generator = SplitMix64(seed: 7)
        let tricky: [UInt8] = [0x80, 0xBF, 0xC0, 0xC5, 0xE0, 0xED, 0xF0, 0xF4, 0xF8, 0xFF, 0x27, 0x20, 0x0A, 0x61, 0x41, 0x31]
        for kind in [PreTokenizerKind.cl100k, .o200k] {
            for length in 0..<300 {
                let bytes = (0..<length).map { _ in
                    generator.next() % 2 == 0 ? tricky[Int(generator.next() % UInt64(tricky.count))] : UInt8(truncatingIfNeeded: generator.next())
                }
                var next = 0
                bytes.withUnsafeBufferPointer { buffer in
                    PreTokenizer(kind).forEachPiece(in: buffer) { range in
                        XCTAssertEqual(range.lowerBound, next)
                        XCTAssertFalse(range.isEmpty)
                        next = range.upperBound
                    }
                }
                XCTAssertEqual(next, bytes.count, "\(kind) \(bytes)")
            }
        }
    }
}

/// A small deterministic generator so failures reproduce.
private struct SplitMix64 {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
