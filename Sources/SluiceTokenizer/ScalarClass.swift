/// The character classes tiktoken's pre-tokenizer patterns test, one bit each, per Unicode 16.0.
///
/// Bit values must match `scripts/gen-unicode-table`, which writes the per-scalar table. Plain
/// bit operations rather than `OptionSet`: set-algebra defaults such as `isDisjoint(with:)` with
/// array literals are not specialized in the hot loop and cost an allocation per call.
struct ScalarClass: Sendable, Equatable {
    let rawValue: UInt8

    /// `\p{L}`: Lu, Ll, Lt, Lm, Lo.
    static var letter: ScalarClass { ScalarClass(rawValue: 0x01) }
    /// o200k's leading letter run `[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]`.
    static var upperish: ScalarClass { ScalarClass(rawValue: 0x02) }
    /// o200k's trailing letter run `[\p{Ll}\p{Lm}\p{Lo}\p{M}]`.
    static var lowerish: ScalarClass { ScalarClass(rawValue: 0x04) }
    /// `\p{N}`: Nd, Nl, No.
    static var number: ScalarClass { ScalarClass(rawValue: 0x08) }
    /// `\s`: the White_Space property (not U+001C–001F, not U+200B/U+FEFF).
    static var whitespace: ScalarClass { ScalarClass(rawValue: 0x10) }
    /// `[\r\n]`.
    static var lineBreak: ScalarClass { ScalarClass(rawValue: 0x20) }

    /// Whether the scalar has at least one of the bits of `other`.
    @inline(__always) func intersects(_ other: ScalarClass) -> Bool { rawValue & other.rawValue != 0 }

    /// Scalars that may prefix a word: `[^\r\n\p{L}\p{N}]`.
    @inline(__always) var isWordPrefix: Bool {
        rawValue & (Self.letter.rawValue | Self.number.rawValue | Self.lineBreak.rawValue) == 0
    }
    /// `[^\s\p{L}\p{N}]`: punctuation, symbols, marks, controls other than White_Space.
    @inline(__always) var isPunctuation: Bool {
        rawValue & (Self.letter.rawValue | Self.number.rawValue | Self.whitespace.rawValue) == 0
    }
    /// Upperish or lowerish: a scalar o200k's word alternatives can start with.
    @inline(__always) var isCasedWordScalar: Bool {
        rawValue & (Self.upperish.rawValue | Self.lowerish.rawValue) != 0
    }
}

/// The generated Unicode 16.0 class table (data in `UnicodeTable.generated.swift`).
enum ScalarClassTable {}

/// Reads scalars and their classes from a UTF-8 buffer without allocating.
///
/// Decoding trusts the lead byte (the input is valid UTF-8), but every read stays inside the
/// buffer and every scalar is at least one byte long, so malformed input yields odd pieces, never a
/// crash or an endless loop.
struct ScalarClassReader {
    let bytes: UnsafePointer<UInt8>
    let count: Int
    private let blockIndex: UnsafeBufferPointer<UInt8>
    private let blocks: UnsafePointer<UInt8>

    /// Runs `body` with a reader over `utf8`; the table pointers are valid only inside `body`.
    static func withReader<R>(over utf8: UnsafeBufferPointer<UInt8>, _ body: (ScalarClassReader) -> R) -> R? {
        guard let base = utf8.baseAddress, !utf8.isEmpty else { return nil }
        return ScalarClassTable.blockIndex.withUnsafeBufferPointer { blockIndex in
            ScalarClassTable.blocks.withUnsafeBufferPointer { blocks in
                body(ScalarClassReader(bytes: base, count: utf8.count, blockIndex: blockIndex, blocks: blocks.baseAddress!))
            }
        }
    }

    /// The class and UTF-8 length of the scalar starting at byte `i` (`i < count`).
    @inline(__always)
    func scalar(at i: Int) -> (cls: ScalarClass, length: Int) {
        let b0 = bytes[i]
        if b0 < 0x80 {
            // Block 0 holds U+0000–U+007F.
            return (ScalarClass(rawValue: blocks[Int(b0)]), 1)
        }
        return nonASCIIScalar(at: i, lead: b0)
    }

    @inline(__always)
    private func nonASCIIScalar(at i: Int, lead b0: UInt8) -> (cls: ScalarClass, length: Int) {
        let length: Int
        var value: UInt32
        if b0 < 0xE0 {
            length = 2
            value = UInt32(b0 & 0x1F)
        } else if b0 < 0xF0 {
            length = 3
            value = UInt32(b0 & 0x0F)
        } else {
            length = 4
            value = UInt32(b0 & 0x07)
        }
        guard i + length <= count else { return (ScalarClass(rawValue: 0), count - i) }
        for k in 1..<length {
            value = value << 6 | UInt32(bytes[i + k] & 0x3F)
        }
        return (classOf(value), length)
    }

    @inline(__always)
    private func classOf(_ value: UInt32) -> ScalarClass {
        let block = Int(value >> UInt32(ScalarClassTable.blockShift))
        guard block < blockIndex.count else { return ScalarClass(rawValue: 0) }
        let offset = Int(blockIndex[block]) << ScalarClassTable.blockShift
            | Int(value & (1 << UInt32(ScalarClassTable.blockShift) - 1))
        return ScalarClass(rawValue: blocks[offset])
    }
}
