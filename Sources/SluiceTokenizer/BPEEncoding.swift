import Foundation

/// A byte-pair encoding loaded from its rank file: tiktoken's `encode_ordinary` and its count.
///
/// "Ordinary" means special-token text such as `<|endoftext|>` is encoded as plain text, which
/// is what a prompt's user-supplied strings must be. Thread-safe: every call uses its own
/// scratch memory.
public final class BPEEncoding: Sendable {
    public let name: EncodingName
    let ranks: RankTable

    /// UTF-8 bytes of the encoding's longest token (128 for cl100k and o200k): a text of `n` bytes
    /// has at least `n / longestTokenBytes` tokens, known before counting any.
    public var longestTokenBytes: Int { max(ranks.longestToken, 1) }
    let preTokenizer: PreTokenizer

    init(name: EncodingName, ranks: RankTable) {
        self.name = name
        self.ranks = ranks
        self.preTokenizer = PreTokenizer(name.preTokenizerKind)
    }

    /// Loads `<directory>/<name>.tiktoken`, verifying its SHA-256 before parsing it.
    public static func load(_ name: EncodingName, directory: String) throws(TokenizerError) -> BPEEncoding {
        let separator = directory.hasSuffix("/") || directory.isEmpty ? "" : "/"
        let path = directory + separator + name.fileName
        return BPEEncoding(name: name, ranks: try RankTable.load(path: path, expectedSHA256: name.expectedSHA256))
    }

    /// Number of tokens in the rank table (special tokens excluded).
    public var rankCount: Int { ranks.count }

    // MARK: Encoding

    /// The token ids of `text`, identical to tiktoken's `encode_ordinary`.
    public func encodeOrdinary(_ text: String) -> [UInt32] {
        var text = text
        return text.withUTF8 { encode(validUTF8: $0) }
    }

    /// The token ids of UTF-8 bytes; ill-formed sequences are first replaced by U+FFFD (see
    /// `countOrdinary(utf8:)`).
    public func encodeOrdinary(utf8 bytes: UnsafeBufferPointer<UInt8>) -> [UInt32] {
        if UTF8Validation.isValid(bytes) { return encode(validUTF8: bytes) }
        return encodeOrdinary(String(decoding: bytes, as: UTF8.self))
    }

    // MARK: Counting

    /// The number of tokens `encodeOrdinary(text)` would return, without building the ids.
    public func countOrdinary(_ text: String) -> Int {
        var text = text
        return text.withUTF8 { count(validUTF8: $0, scratch: MergeScratch()) }
    }

    /// Like `countOrdinary(_:)`, but throws `.inputTooLarge` without tokenizing anything when
    /// `text` has more than `limit` UTF-8 bytes.
    public func countOrdinary(_ text: String, limit: Int) throws(TokenizerError) -> Int {
        let byteCount = text.utf8.count
        guard byteCount <= limit else { throw .inputTooLarge(byteCount: byteCount, limit: limit) }
        return countOrdinary(text)
    }

    /// The number of tokens in UTF-8 bytes, as tiktoken counts `bytes.decode("utf-8", "replace")`.
    ///
    /// Well-formed input is tokenized in place (no copy). Ill-formed input is first repaired
    /// with Swift's `String(decoding:as:)`, which replaces each maximal ill-formed subpart with
    /// one U+FFFD (the Unicode "best practice"); Python's `"replace"` error handler does the
    /// same, so the counts agree (the fixtures check truncated, overlong, surrogate and stray
    /// continuation bytes).
    public func countOrdinary(utf8 bytes: UnsafeBufferPointer<UInt8>) -> Int {
        countOrdinary(utf8: bytes, scratch: MergeScratch())
    }

    /// Like `countOrdinary(utf8:)`, but throws `.inputTooLarge` without tokenizing anything when
    /// there are more than `limit` bytes.
    public func countOrdinary(utf8 bytes: UnsafeBufferPointer<UInt8>, limit: Int) throws(TokenizerError) -> Int {
        guard bytes.count <= limit else { throw .inputTooLarge(byteCount: bytes.count, limit: limit) }
        return countOrdinary(utf8: bytes)
    }

    /// Counting that reuses the caller's scratch across many strings (one prompt's parts).
    func countOrdinary(utf8 bytes: UnsafeBufferPointer<UInt8>, scratch: MergeScratch) -> Int {
        if UTF8Validation.isValid(bytes) { return count(validUTF8: bytes, scratch: scratch) }
        var repaired = String(decoding: bytes, as: UTF8.self)
        return repaired.withUTF8 { count(validUTF8: $0, scratch: scratch) }
    }

    func countOrdinary(_ text: String, scratch: MergeScratch) -> Int {
        var text = text
        return text.withUTF8 { count(validUTF8: $0, scratch: scratch) }
    }

    /// `countOrdinary(text)` when it is at most `limit`; otherwise some number above `limit`,
    /// found without tokenizing the rest of `text` (the work is bounded by `limit` tokens, not by
    /// the text's size).
    public func countOrdinary(_ text: String, stoppingAbove limit: Int) -> Int {
        countOrdinary(text, stoppingAbove: limit, scratch: MergeScratch())
    }

    func countOrdinary(_ text: String, stoppingAbove limit: Int, scratch: MergeScratch) -> Int {
        var text = text
        return text.withUTF8 { bytes in
            guard let base = bytes.baseAddress, !bytes.isEmpty else { return 0 }
            let ranks = self.ranks
            var total = 0
            preTokenizer.forEachPieceWhile(in: bytes, { piece in
                total += ranks.tokenCount(ofPiece: base + piece.lowerBound, count: piece.count, scratch: scratch)
                return total <= limit
            })
            return total
        }
    }

    // MARK: Core loops over pre-tokenized pieces

    private func count(validUTF8 bytes: UnsafeBufferPointer<UInt8>, scratch: MergeScratch) -> Int {
        guard let base = bytes.baseAddress, !bytes.isEmpty else { return 0 }
        let ranks = self.ranks
        var total = 0
        preTokenizer.forEachPiece(in: bytes) { piece in
            total += ranks.tokenCount(ofPiece: base + piece.lowerBound, count: piece.count, scratch: scratch)
        }
        return total
    }

    private func encode(validUTF8 bytes: UnsafeBufferPointer<UInt8>) -> [UInt32] {
        guard let base = bytes.baseAddress, !bytes.isEmpty else { return [] }
        let ranks = self.ranks
        let scratch = MergeScratch()
        var tokens: [UInt32] = []
        tokens.reserveCapacity(bytes.count / 4 + 1)
        preTokenizer.forEachPiece(in: bytes) { piece in
            ranks.appendTokens(ofPiece: base + piece.lowerBound, count: piece.count, scratch: scratch, to: &tokens)
        }
        return tokens
    }
}

extension EncodingName {
    var preTokenizerKind: PreTokenizerKind {
        switch self {
        case .cl100k_base: return .cl100k
        case .o200k_base: return .o200k
        }
    }
}

/// Collects the two parallel loads' results.
private final class LoadResults: @unchecked Sendable {
    private let lock = NSLock()
    private var results: [Result<BPEEncoding, TokenizerError>?] = [nil, nil]

    func store(_ result: Result<BPEEncoding, TokenizerError>, at index: Int) {
        lock.withLock { results[index] = result }
    }

    /// Call after both loads finished.
    func take() -> (Result<BPEEncoding, TokenizerError>, Result<BPEEncoding, TokenizerError>) {
        lock.withLock { (results[0]!, results[1]!) }
    }
}

/// Both encodings, loaded once at start and shared by every request.
public struct Tokenizers: Sendable {
    public let cl100k: BPEEncoding
    public let o200k: BPEEncoding
    /// Model name → encoding, including the configuration's overrides.
    public var modelEncodings: ModelEncodings

    public init(cl100k: BPEEncoding, o200k: BPEEncoding, modelEncodings: ModelEncodings = ModelEncodings()) {
        precondition(cl100k.name == .cl100k_base && o200k.name == .o200k_base, "encodings passed in the wrong slots")
        self.cl100k = cl100k
        self.o200k = o200k
        self.modelEncodings = modelEncodings
    }

    /// Loads (and hash-checks) both rank files from `directory`, in parallel (start-up time).
    /// When both fail, the cl100k_base error is thrown.
    public static func load(directory: String, modelEncodings: ModelEncodings = ModelEncodings()) throws(TokenizerError) -> Tokenizers {
        let results = LoadResults()
        DispatchQueue.concurrentPerform(iterations: 2) { index in
            let name: EncodingName = index == 0 ? .cl100k_base : .o200k_base
            let result: Result<BPEEncoding, TokenizerError>
            do throws(TokenizerError) {
                result = .success(try BPEEncoding.load(name, directory: directory))
            } catch {
                result = .failure(error)
            }
            results.store(result, at: index)
        }
        let (cl100k, o200k) = results.take()
        return Tokenizers(cl100k: try cl100k.get(), o200k: try o200k.get(), modelEncodings: modelEncodings)
    }

    /// The loaded encoding called `name`.
    public func encoding(_ name: EncodingName) -> BPEEncoding {
        switch name {
        case .cl100k_base: return cl100k
        case .o200k_base: return o200k
        }
    }

    /// The encoding that tokenizes `model`'s prompts (see `ModelEncodings`).
    public func encoding(forModel model: String) -> BPEEncoding {
        encoding(modelEncodings.encodingName(forModel: model))
    }
}
