import Foundation
import XCTest
@testable import SluiceTokenizer

/// Locations the tokenizer tests read from, derived from this file's path so that tests run
/// from any working directory.
enum TestPaths {
    static let testsDirectory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    static let repositoryRoot = testsDirectory.deletingLastPathComponent().deletingLastPathComponent()
    static let fixtures = testsDirectory.appendingPathComponent("Fixtures")

    /// `SLUICE_TOKENIZER_DIR`, else `<repo>/.cache/tokenizer` (filled by scripts/setup).
    static var tokenizerDirectory: String {
        if let directory = ProcessInfo.processInfo.environment["SLUICE_TOKENIZER_DIR"], !directory.isEmpty {
            return directory
        }
        return repositoryRoot.appendingPathComponent(".cache/tokenizer").path
    }

    static func fixture(_ name: String) throws -> Data {
        try Data(contentsOf: fixtures.appendingPathComponent(name))
    }
}

/// Rank tables are loaded once per test process: both take tens of milliseconds in release
/// builds but far longer in debug builds.
enum LoadedRankTables {
    static let cl100k: Result<RankTable, TokenizerError> = load(.cl100k_base)
    static let o200k: Result<RankTable, TokenizerError> = load(.o200k_base)

    static func table(_ name: EncodingName) throws -> RankTable {
        switch name {
        case .cl100k_base: return try cl100k.get()
        case .o200k_base: return try o200k.get()
        }
    }

    private static func load(_ name: EncodingName) -> Result<RankTable, TokenizerError> {
        let path = TestPaths.tokenizerDirectory + "/" + name.fileName
        do throws(TokenizerError) {
            return .success(try RankTable.load(path: path, expectedSHA256: name.expectedSHA256))
        } catch {
            return .failure(error)
        }
    }
}

/// The shape of `Fixtures/encode-vectors.json` (written by scripts/gen-tokenizer-fixtures).
struct EncodeVectors: Decodable {
    struct Text: Decodable {
        var name: String
        var text: String
        var cl100k_base: [UInt32]
        var o200k_base: [UInt32]
        func ids(_ encoding: EncodingName) -> [UInt32] { encoding == .cl100k_base ? cl100k_base : o200k_base }
    }
    struct IllFormed: Decodable {
        var name: String
        var base64: String
        var replacementCount: Int
        var cl100k_base: [UInt32]
        var o200k_base: [UInt32]
        func ids(_ encoding: EncodingName) -> [UInt32] { encoding == .cl100k_base ? cl100k_base : o200k_base }
    }
    struct Piece: Decodable {
        var base64: String
        var cl100k_base: [UInt32]?
        var o200k_base: [UInt32]?
        func ids(_ encoding: EncodingName) -> [UInt32]? { encoding == .cl100k_base ? cl100k_base : o200k_base }
    }
    var texts: [Text]
    var illFormedUTF8: [IllFormed]
    var pieces: [Piece]

    static func load() throws -> EncodeVectors {
        try JSONDecoder().decode(EncodeVectors.self, from: TestPaths.fixture("encode-vectors.json"))
    }
}
