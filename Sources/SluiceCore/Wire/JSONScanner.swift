/// A string token located by `JSONScanner`: where its contents (between the quotes) lie and
/// whether they contain escapes (if not, the raw bytes ARE the contents, modulo UTF-8 repair).
struct ScannedString {
    var contents: Range<Int>
    var hasEscapes: Bool
}

/// A forward-only cursor over JSON bytes (RFC 8259) that validates as it goes.
///
/// It is the one place that knows the grammar; `JSONReader` builds values with it, and the hot
/// paths (SSE chunks, response usage) walk a document with it without building a tree: keys are
/// compared in place, unwanted values skipped without allocating. Nesting is bounded by
/// `maxDepth`, which also bounds the recursion of `skipValue()` and of tree building.
struct JSONScanner: ~Copyable {
    let bytes: UnsafeRawBufferPointer
    private(set) var index: Int
    let maxDepth: Int
    private(set) var depth = 0

    init(_ bytes: UnsafeRawBufferPointer, maxDepth: Int) {
        self.bytes = bytes
        self.index = 0
        self.maxDepth = maxDepth
    }

    // MARK: Bytes

    @inline(__always)
    mutating func skipWhitespace() {
        while index < bytes.count {
            switch bytes[index] {
            case 0x20, 0x0A, 0x0D, 0x09: index += 1
            default: return
            }
        }
    }

    /// The next non-whitespace byte, without consuming it; nil at end of input.
    @inline(__always)
    mutating func peekSignificant() -> UInt8? {
        skipWhitespace()
        return index < bytes.count ? bytes[index] : nil
    }

    var isAtEnd: Bool { index >= bytes.count }

    @inline(__always)
    private func error(_ reason: JSONParseError.Reason) -> JSONParseError {
        JSONParseError(reason, at: index)
    }

    @inline(__always)
    private func unexpectedHere() -> JSONParseError {
        index < bytes.count ? error(.unexpectedByte(bytes[index])) : error(.unexpectedEndOfInput)
    }

    @inline(__always)
    mutating func expect(_ byte: UInt8) throws(JSONParseError) {
        skipWhitespace()
        guard index < bytes.count, bytes[index] == byte else { throw unexpectedHere() }
        index += 1
    }

    // MARK: Containers

    /// Consumes `{` and enters the object. Iterate its members with `nextKey(first:)`.
    mutating func enterObject() throws(JSONParseError) {
        try expect(UInt8(ascii: "{"))
        try descend()
    }

    /// Consumes `[` and enters the array. Iterate its elements with `nextElement(first:)`.
    mutating func enterArray() throws(JSONParseError) {
        try expect(UInt8(ascii: "["))
        try descend()
    }

    private mutating func descend() throws(JSONParseError) {
        depth += 1
        if depth > maxDepth { throw JSONParseError(.nestingTooDeep(limit: maxDepth), at: index - 1) }
    }

    /// Reads the next member's key and its `:`; nil (after consuming `}`) when the object ends.
    /// The caller must then consume the value (read it or `skipValue()`).
    mutating func nextKey(first: inout Bool) throws(JSONParseError) -> ScannedString? {
        guard let byte = peekSignificant() else { throw error(.unexpectedEndOfInput) }
        if byte == UInt8(ascii: "}") {
            index += 1
            depth -= 1
            return nil
        }
        if !first {
            guard byte == UInt8(ascii: ",") else { throw error(.unexpectedByte(byte)) }
            index += 1
            guard peekSignificant() == UInt8(ascii: "\"") else { throw unexpectedHere() }
        } else if byte != UInt8(ascii: "\"") {
            throw error(.unexpectedByte(byte))
        }
        first = false
        let key = try scanString()
        try expect(UInt8(ascii: ":"))
        skipWhitespace()
        return key
    }

    /// True when another element follows (the caller must consume it); false after consuming `]`.
    mutating func nextElement(first: inout Bool) throws(JSONParseError) -> Bool {
        guard let byte = peekSignificant() else { throw error(.unexpectedEndOfInput) }
        if byte == UInt8(ascii: "]") {
            index += 1
            depth -= 1
            return false
        }
        if !first {
            guard byte == UInt8(ascii: ",") else { throw error(.unexpectedByte(byte)) }
            index += 1
            skipWhitespace()
            // `[1,]`: a value must follow the comma.
            if index < bytes.count, bytes[index] == UInt8(ascii: "]") { throw unexpectedHere() }
        }
        first = false
        return true
    }

    // MARK: Scalars

    /// Scans a string token starting at the current (significant) byte, validating escapes and
    /// rejecting raw control characters. Invalid UTF-8 is not an error here: decoding repairs it.
    mutating func scanString() throws(JSONParseError) -> ScannedString {
        try expect(UInt8(ascii: "\""))
        let start = index
        var hasEscapes = false
        while index < bytes.count {
            // Skip eight plain bytes at a time (no quote, backslash or control character).
            while index + 8 <= bytes.count, Self.isPlainWord(bytes.loadUnaligned(fromByteOffset: index, as: UInt64.self)) {
                index += 8
            }
            guard index < bytes.count else { break }
            let byte = bytes[index]
            if byte == UInt8(ascii: "\"") {
                let range = start..<index
                index += 1
                return ScannedString(contents: range, hasEscapes: hasEscapes)
            }
            if byte == UInt8(ascii: "\\") {
                hasEscapes = true
                index += 1
                guard index < bytes.count else { throw error(.unexpectedEndOfInput) }
                switch bytes[index] {
                case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"), UInt8(ascii: "b"),
                     UInt8(ascii: "f"), UInt8(ascii: "n"), UInt8(ascii: "r"), UInt8(ascii: "t"):
                    index += 1
                case UInt8(ascii: "u"):
                    guard index + 4 < bytes.count else {
                        index = bytes.count
                        throw error(.unexpectedEndOfInput)
                    }
                    for offset in 1...4 where Self.hexValue(bytes[index + offset]) == nil {
                        index += offset
                        throw error(.invalidUnicodeEscape)
                    }
                    index += 5
                default:
                    throw error(.invalidEscape)
                }
                continue
            }
            if byte < 0x20 { throw error(.controlCharacterInString) }
            index += 1
        }
        throw error(.unexpectedEndOfInput)
    }

    /// Scans a number token (RFC 8259 grammar) and returns its byte range.
    mutating func scanNumber() throws(JSONParseError) -> Range<Int> {
        skipWhitespace()
        let start = index
        if index < bytes.count, bytes[index] == UInt8(ascii: "-") { index += 1 }
        guard index < bytes.count else { throw error(.invalidNumber) }
        if bytes[index] == UInt8(ascii: "0") {
            index += 1
        } else if Self.isDigit(bytes[index]) {
            while index < bytes.count, Self.isDigit(bytes[index]) { index += 1 }
        } else {
            throw error(.invalidNumber)
        }
        if index < bytes.count, bytes[index] == UInt8(ascii: ".") {
            index += 1
            guard index < bytes.count, Self.isDigit(bytes[index]) else { throw error(.invalidNumber) }
            while index < bytes.count, Self.isDigit(bytes[index]) { index += 1 }
        }
        if index < bytes.count, bytes[index] == UInt8(ascii: "e") || bytes[index] == UInt8(ascii: "E") {
            index += 1
            if index < bytes.count, bytes[index] == UInt8(ascii: "+") || bytes[index] == UInt8(ascii: "-") { index += 1 }
            guard index < bytes.count, Self.isDigit(bytes[index]) else { throw error(.invalidNumber) }
            while index < bytes.count, Self.isDigit(bytes[index]) { index += 1 }
        }
        // `01`, `1.5.2`, `-1x`: the number must not run straight into another number-ish byte.
        if index < bytes.count, Self.isDigit(bytes[index]) || bytes[index] == UInt8(ascii: ".") {
            throw error(.invalidNumber)
        }
        return start..<index
    }

    /// Consumes `true`, `false` or `null` and returns which.
    mutating func scanLiteral() throws(JSONParseError) -> JSONValue {
        skipWhitespace()
        guard index < bytes.count else { throw error(.unexpectedEndOfInput) }
        let (literal, value): (StaticString, JSONValue)
        switch bytes[index] {
        case UInt8(ascii: "t"): (literal, value) = ("true", .bool(true))
        case UInt8(ascii: "f"): (literal, value) = ("false", .bool(false))
        case UInt8(ascii: "n"): (literal, value) = ("null", .null)
        default: throw unexpectedHere()
        }
        let count = literal.utf8CodeUnitCount
        for offset in 0..<count {
            guard index < bytes.count else { throw error(.unexpectedEndOfInput) }
            guard bytes[index] == literal.utf8Start[offset] else { throw unexpectedHere() }
            index += 1
        }
        return value
    }

    /// Consumes the next value, whatever it is, validating it without building anything.
    mutating func skipValue() throws(JSONParseError) {
        guard let byte = peekSignificant() else { throw error(.unexpectedEndOfInput) }
        switch byte {
        case UInt8(ascii: "{"):
            try enterObject()
            var first = true
            while try nextKey(first: &first) != nil { try skipValue() }
        case UInt8(ascii: "["):
            try enterArray()
            var first = true
            while try nextElement(first: &first) { try skipValue() }
        case UInt8(ascii: "\""):
            _ = try scanString()
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            _ = try scanNumber()
        default:
            _ = try scanLiteral()
        }
    }

    /// After the top-level value: only whitespace may follow.
    mutating func expectEnd() throws(JSONParseError) {
        skipWhitespace()
        if index < bytes.count { throw error(.trailingData) }
    }

    // MARK: Decoding strings

    /// True when the string's decoded contents equal `literal` (an ASCII key such as "usage").
    func string(_ token: ScannedString, equals literal: StaticString) -> Bool {
        if token.hasEscapes { return decode(token) == String(describing: literal) }
        let count = literal.utf8CodeUnitCount
        guard token.contents.count == count else { return false }
        for offset in 0..<count where bytes[token.contents.lowerBound + offset] != literal.utf8Start[offset] {
            return false
        }
        return true
    }

    /// The string's contents with escapes decoded; lone surrogate escapes and invalid UTF-8
    /// become U+FFFD (tiktoken's behaviour), never an error.
    func decode(_ token: ScannedString) -> String {
        let raw = UnsafeRawBufferPointer(rebasing: bytes[token.contents])
        if !token.hasEscapes { return String(decoding: raw, as: UTF8.self) }
        // Decoded text is never longer than its escaped form, so the raw length is enough capacity.
        return String(unsafeUninitializedCapacity: raw.count) { buffer in
            var written = 0
            Self.unescape(raw) { byte in
                buffer[written] = byte
                written += 1
            }
            return written
        }
    }

    /// Appends the string's decoded UTF-8 (escapes resolved, U+FFFD for lone surrogates) to `output`.
    /// Invalid raw UTF-8 is copied as is; decode the whole buffer with `String(decoding:)` to repair it.
    func appendDecoded(_ token: ScannedString, to output: inout [UInt8]) {
        let raw = UnsafeRawBufferPointer(rebasing: bytes[token.contents])
        if !token.hasEscapes {
            output.append(contentsOf: raw)
            return
        }
        Self.unescape(raw) { output.append($0) }
    }

    /// Walks an already validated string body, emitting decoded UTF-8 bytes.
    @inline(__always)
    private static func unescape(_ raw: UnsafeRawBufferPointer, _ emit: (UInt8) -> Void) {
        var i = 0
        while i < raw.count {
            let byte = raw[i]
            guard byte == UInt8(ascii: "\\") else {
                emit(byte)
                i += 1
                continue
            }
            let kind = raw[i + 1]
            i += 2
            switch kind {
            case UInt8(ascii: "b"): emit(0x08)
            case UInt8(ascii: "f"): emit(0x0C)
            case UInt8(ascii: "n"): emit(0x0A)
            case UInt8(ascii: "r"): emit(0x0D)
            case UInt8(ascii: "t"): emit(0x09)
            case UInt8(ascii: "u"):
                var scalar = hex4(raw, at: i)
                i += 4
                if (0xD800...0xDBFF).contains(scalar) {
                    // A high surrogate counts only when a low surrogate escape follows at once.
                    if i + 1 < raw.count, raw[i] == UInt8(ascii: "\\"), raw[i + 1] == UInt8(ascii: "u") {
                        let low = hex4(raw, at: i + 2)
                        if (0xDC00...0xDFFF).contains(low) {
                            scalar = 0x10000 + ((scalar - 0xD800) << 10) + (low - 0xDC00)
                            i += 6
                        } else {
                            scalar = 0xFFFD
                        }
                    } else {
                        scalar = 0xFFFD
                    }
                } else if (0xDC00...0xDFFF).contains(scalar) {
                    scalar = 0xFFFD
                }
                emitUTF8(scalar, emit)
            default: emit(kind) // `"`, `\`, `/`
            }
        }
    }

    @inline(__always)
    private static func hex4(_ raw: UnsafeRawBufferPointer, at offset: Int) -> UInt32 {
        var value: UInt32 = 0
        for k in 0..<4 { value = value << 4 | UInt32(hexValue(raw[offset + k]) ?? 0) }
        return value
    }

    @inline(__always)
    private static func emitUTF8(_ scalar: UInt32, _ emit: (UInt8) -> Void) {
        switch scalar {
        case 0..<0x80:
            emit(UInt8(scalar))
        case 0x80..<0x800:
            emit(UInt8(0xC0 | scalar >> 6))
            emit(UInt8(0x80 | scalar & 0x3F))
        case 0x800..<0x10000:
            emit(UInt8(0xE0 | scalar >> 12))
            emit(UInt8(0x80 | scalar >> 6 & 0x3F))
            emit(UInt8(0x80 | scalar & 0x3F))
        default:
            emit(UInt8(0xF0 | scalar >> 18))
            emit(UInt8(0x80 | scalar >> 12 & 0x3F))
            emit(UInt8(0x80 | scalar >> 6 & 0x3F))
            emit(UInt8(0x80 | scalar & 0x3F))
        }
    }

    /// True when none of the word's eight bytes is `"`, `\` or below 0x20 (classic SWAR
    /// "has zero byte" tests; bytes ≥ 0x80 count as plain, UTF-8 is checked when decoding).
    @inline(__always)
    static func isPlainWord(_ word: UInt64) -> Bool {
        let quotes = word ^ 0x2222_2222_2222_2222
        let backslashes = word ^ 0x5C5C_5C5C_5C5C_5C5C
        let hasQuote = (quotes &- 0x0101_0101_0101_0101) & ~quotes
        let hasBackslash = (backslashes &- 0x0101_0101_0101_0101) & ~backslashes
        let hasControl = (word &- 0x2020_2020_2020_2020) & ~word
        return (hasQuote | hasBackslash | hasControl) & 0x8080_8080_8080_8080 == 0
    }

    @inline(__always)
    static func isDigit(_ byte: UInt8) -> Bool { byte &- UInt8(ascii: "0") < 10 }

    @inline(__always)
    static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}
