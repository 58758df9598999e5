/// The pre-tokenizer pattern of an encoding.
public enum PreTokenizerKind: Sendable {
    /// cl100k_base's pattern.
    case cl100k
    /// o200k_base's pattern (splits case runs, keeps contractions on the word).
    case o200k
}

/// Splits text into the pieces BPE merges independently.
///
/// Reproduces the pieces of tiktoken 0.14.0's `pat_str` regexes (leftmost-first, backtracking,
/// Unicode 16.0 classes) with hand-written scanners over Unicode scalars: no regex engine, no
/// allocation. Pieces tile the input: they are contiguous, non-empty and cover every byte.
public struct PreTokenizer: Sendable {
    public let kind: PreTokenizerKind

    public init(_ kind: PreTokenizerKind) {
        self.kind = kind
    }

    /// Calls `body` with the byte range of each piece, in order. `utf8` must be valid UTF-8.
    ///
    /// Invalid UTF-8 is not rejected (callers repair it first); it yields unspecified but still
    /// tiling pieces and never reads outside `utf8`.
    @inline(__always)
    public func forEachPiece(in utf8: UnsafeBufferPointer<UInt8>, _ body: (Range<Int>) -> Void) {
        forEachPieceWhile(in: utf8, { piece in
            body(piece)
            return true
        })
    }

    /// Like `forEachPiece(in:_:)`, but stops after the first piece for which `body` returns false.
    public func forEachPieceWhile(in utf8: UnsafeBufferPointer<UInt8>, _ body: (Range<Int>) -> Bool) {
        _ = ScalarClassReader.withReader(over: utf8) { reader in
            var start = 0
            switch kind {
            case .cl100k:
                let scanner = CL100KPieceScanner(reader: reader)
                while start < reader.count {
                    let end = scanner.pieceEnd(from: start)
                    guard body(start..<end) else { return }
                    start = end
                }
            case .o200k:
                let scanner = O200KPieceScanner(reader: reader)
                while start < reader.count {
                    let end = scanner.pieceEnd(from: start)
                    guard body(start..<end) else { return }
                    start = end
                }
            }
        }
    }
}

// MARK: - Pieces both patterns share

extension ScalarClassReader {
    /// End of a contraction `(?i:'s|'t|'re|'ve|'m|'ll|'d)` starting at `i`, or nil.
    ///
    /// Case-insensitive matching uses simple case folding, under which U+017F LATIN SMALL LETTER
    /// LONG S matches `s`; no other scalar folds to one of these letters.
    @inline(__always)
    func contractionEnd(at i: Int) -> Int? {
        guard i + 1 < count, bytes[i] == UInt8(ascii: "'") else { return nil }
        let first = bytes[i + 1]
        if first == 0xC5 {
            // ſ is C5 BF in UTF-8.
            return i + 2 < count && bytes[i + 2] == 0xBF ? i + 3 : nil
        }
        // `| 0x20` lowercases ASCII letters; no other byte lands on a lowercase letter.
        switch first | 0x20 {
        case UInt8(ascii: "s"), UInt8(ascii: "t"), UInt8(ascii: "m"), UInt8(ascii: "d"):
            return i + 2
        case UInt8(ascii: "l"):
            return i + 2 < count && bytes[i + 2] | 0x20 == UInt8(ascii: "l") ? i + 3 : nil
        case UInt8(ascii: "r"), UInt8(ascii: "v"):
            return i + 2 < count && bytes[i + 2] | 0x20 == UInt8(ascii: "e") ? i + 3 : nil
        default:
            return nil
        }
    }

    /// End of the longest run of scalars of class `cls` starting at `i`.
    @inline(__always)
    func runEnd(from i: Int, while cls: ScalarClass) -> Int {
        var j = i
        while j < count {
            let (c, length) = scalar(at: j)
            if !c.intersects(cls) { break }
            j += length
        }
        return j
    }

    /// End of `[^\s\p{L}\p{N}]+` starting at `i` (the caller checked the first scalar).
    @inline(__always)
    func punctuationRunEnd(from i: Int) -> Int {
        var j = i
        while j < count {
            let (c, length) = scalar(at: j)
            if !c.isPunctuation { break }
            j += length
        }
        return j
    }

    /// End of `\p{N}{1,3}` starting at `i` (the caller checked the first scalar).
    @inline(__always)
    func numberGroupEnd(from i: Int, firstLength: Int) -> Int {
        var j = i + firstLength
        for _ in 0..<2 where j < count {
            let (c, length) = scalar(at: j)
            guard c.intersects(.number) else { break }
            j += length
        }
        return j
    }

    /// The whitespace run starting at `i`: where it ends, where its last scalar starts, and the
    /// end of its last CR or LF (nil if it has none).
    @inline(__always)
    func whitespaceRun(from i: Int) -> (end: Int, lastStart: Int, lineBreakEnd: Int?) {
        var j = i
        var lastStart = i
        var lineBreakEnd: Int?
        while j < count {
            let (c, length) = scalar(at: j)
            if !c.intersects(.whitespace) { break }
            lastStart = j
            j += length
            if c.intersects(.lineBreak) { lineBreakEnd = j }
        }
        return (j, lastStart, lineBreakEnd)
    }
}
