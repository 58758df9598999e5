/// A strict, single-pass JSON reader over the request body's bytes that extracts only what the mock acts on
/// and validates the rest without building it.
///
/// Foundation's `JSONSerialization` builds a dictionary of bridged objects for every body, which cost more
/// than the rest of a request together; this reader allocates only the few strings it keeps (the model).
/// It accepts exactly RFC 8259 JSON (nesting bounded by `maximumDepth`).
struct RequestBodyScanner: ~Copyable {
    /// Deepest nesting accepted; deeper bodies are refused rather than risking the stack.
    static let maximumDepth = 64

    /// Why a body could not be read.
    enum Failure: Error {
        /// Not well-formed JSON (or nested too deeply).
        case syntax
        /// Well-formed, but the named top-level field has the wrong type.
        case type(field: String)
    }

    private let bytes: UnsafeRawBufferPointer
    private var index = 0

    init(bytes: UnsafeRawBufferPointer) {
        self.bytes = bytes
    }

    // MARK: Top level

    /// Reads the body as one JSON object, calling `field` for each member with the scanner positioned at
    /// the member's value; `field` must consume the value (or call `skipValue`).
    mutating func readObject(
        _ field: (inout RequestBodyScanner, _ key: [UInt8]) throws(Failure) -> Void
    ) throws(Failure) {
        try readMembers(depth: 0, field)
        skipWhitespace()
        guard index == bytes.count else { throw .syntax }
    }

    /// Reads an object's members; the scanner must be at `{` (after whitespace).
    mutating func readMembers(
        depth: Int, _ field: (inout RequestBodyScanner, _ key: [UInt8]) throws(Failure) -> Void
    ) throws(Failure) {
        guard depth < Self.maximumDepth else { throw .syntax }
        try expect(UInt8(ascii: "{"))
        skipWhitespace()
        if peek() == UInt8(ascii: "}") {
            index += 1
            return
        }
        while true {
            skipWhitespace()
            let key = try readStringBytes()
            skipWhitespace()
            try expect(UInt8(ascii: ":"))
            skipWhitespace()
            try field(&self, key)
            skipWhitespace()
            switch next() {
            case UInt8(ascii: ","): continue
            case UInt8(ascii: "}"): return
            default: throw .syntax
            }
        }
    }

    /// Reads an array's elements; the scanner must be at `[`. `element` must consume each element.
    mutating func readElements(
        depth: Int, _ element: (inout RequestBodyScanner) throws(Failure) -> Void
    ) throws(Failure) {
        guard depth < Self.maximumDepth else { throw .syntax }
        try expect(UInt8(ascii: "["))
        skipWhitespace()
        if peek() == UInt8(ascii: "]") {
            index += 1
            return
        }
        while true {
            skipWhitespace()
            try element(&self)
            skipWhitespace()
            switch next() {
            case UInt8(ascii: ","): continue
            case UInt8(ascii: "]"): return
            default: throw .syntax
            }
        }
    }

    // MARK: Values

    /// The kind of the value at the current position.
    enum ValueKind {
        case object, array, string, number, bool, null
    }

    /// The kind of the next value, judged from its first byte.
    /// - Throws: `.syntax` when no value can start here.
    func peekKind() throws(Failure) -> ValueKind {
        guard let byte = peek() else { throw .syntax }
        switch byte {
        case UInt8(ascii: "{"): return .object
        case UInt8(ascii: "["): return .array
        case UInt8(ascii: "\""): return .string
        case UInt8(ascii: "t"), UInt8(ascii: "f"): return .bool
        case UInt8(ascii: "n"): return .null
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"): return .number
        default: throw .syntax
        }
    }

    /// Reads `true` or `false`.
    mutating func readBool() throws(Failure) -> Bool {
        if try readLiteral("true") { return true }
        if try readLiteral("false") { return false }
        throw .syntax
    }

    /// Reads `null`.
    mutating func readNull() throws(Failure) {
        guard try readLiteral("null") else { throw .syntax }
    }

    /// Reads a number; returns it when it is a whole number (`12`, `12.0`, `1.2e1`: JSON Schema's `integer`,
    /// as OpenAI reads it), saturated to `Int`'s range, nil for a number with a fraction.
    mutating func readNumber() throws(Failure) -> Int? {
        let start = index
        var isInteger = true
        if peek() == UInt8(ascii: "-") { index += 1 }
        guard let first = peek(), isDigit(first) else { throw .syntax }
        index += 1
        if first != UInt8(ascii: "0") {
            while let digit = peek(), isDigit(digit) { index += 1 }
        }
        if peek() == UInt8(ascii: ".") {
            isInteger = false
            index += 1
            guard let digit = peek(), isDigit(digit) else { throw .syntax }
            while let digit = peek(), isDigit(digit) { index += 1 }
        }
        if peek() == UInt8(ascii: "e") || peek() == UInt8(ascii: "E") {
            isInteger = false
            index += 1
            if peek() == UInt8(ascii: "+") || peek() == UInt8(ascii: "-") { index += 1 }
            guard let digit = peek(), isDigit(digit) else { throw .syntax }
            while let digit = peek(), isDigit(digit) { index += 1 }
        }
        guard isInteger, index - start <= 18 else {
            // Like Python's `float.is_integer()` on the parsed value: exact enough for a fake upstream.
            let literal = String(decoding: UnsafeRawBufferPointer(rebasing: bytes[start..<index]), as: UTF8.self)
            guard let value = Double(literal), value == value.rounded() else { return nil }
            if value >= 0x1p63 { return Int.max }
            if value <= -0x1p63 { return Int.min }
            return Int(value)
        }
        var value = 0
        var position = start
        let negative = bytes[position] == UInt8(ascii: "-")
        if negative { position += 1 }
        while position < index {
            value = value * 10 + Int(bytes[position] - UInt8(ascii: "0"))
            position += 1
        }
        return negative ? -value : value
    }

    /// Reads a string and returns its decoded UTF-8 length, without keeping it.
    mutating func readStringLength() throws(Failure) -> Int {
        var length = 0
        try readString { length += $0.count }
        return length
    }

    /// Reads a string and returns its decoded UTF-8 bytes.
    mutating func readStringBytes() throws(Failure) -> [UInt8] {
        var decoded: [UInt8] = []
        try readString { decoded.append(contentsOf: $0) }
        return decoded
    }

    /// Reads a string as a Swift `String` (invalid UTF-8 repaired with U+FFFD).
    mutating func readString() throws(Failure) -> String {
        String(decoding: try readStringBytes(), as: UTF8.self)
    }

    /// Skips one value of any kind, checking that it is well formed.
    mutating func skipValue(depth: Int = 1) throws(Failure) {
        switch try peekKind() {
        case .object: try readMembers(depth: depth) { scanner, _ throws(Failure) in try scanner.skipValue(depth: depth + 1) }
        case .array: try readElements(depth: depth) { scanner throws(Failure) in try scanner.skipValue(depth: depth + 1) }
        case .string: try readString { _ in }
        case .number: _ = try readNumber()
        case .bool: _ = try readBool()
        case .null: try readNull()
        }
    }

    // MARK: Strings

    /// Reads a string, handing its decoded content to `sink` in pieces (runs of plain bytes, and each
    /// escape's UTF-8 encoding). Lone surrogates decode to U+FFFD, as in tiktoken's Python wrapper.
    private mutating func readString(_ sink: (UnsafeRawBufferPointer) -> Void) throws(Failure) {
        try expect(UInt8(ascii: "\""))
        var runStart = index
        while index < bytes.count {
            let byte = bytes[index]
            if byte == UInt8(ascii: "\"") {
                sink(UnsafeRawBufferPointer(rebasing: bytes[runStart..<index]))
                index += 1
                return
            }
            if byte < 0x20 { throw .syntax }
            guard byte == UInt8(ascii: "\\") else {
                index += 1
                continue
            }
            sink(UnsafeRawBufferPointer(rebasing: bytes[runStart..<index]))
            index += 1
            try readEscape(sink)
            runStart = index
        }
        throw .syntax
    }

    private mutating func readEscape(_ sink: (UnsafeRawBufferPointer) -> Void) throws(Failure) {
        let simple: UInt8
        switch next() {
        case UInt8(ascii: "\""): simple = UInt8(ascii: "\"")
        case UInt8(ascii: "\\"): simple = UInt8(ascii: "\\")
        case UInt8(ascii: "/"): simple = UInt8(ascii: "/")
        case UInt8(ascii: "b"): simple = 0x08
        case UInt8(ascii: "f"): simple = 0x0C
        case UInt8(ascii: "n"): simple = 0x0A
        case UInt8(ascii: "r"): simple = 0x0D
        case UInt8(ascii: "t"): simple = 0x09
        case UInt8(ascii: "u"):
            var scalarValue = try readHex4()
            if (0xD800...0xDBFF).contains(scalarValue), peek() == UInt8(ascii: "\\"),
                index + 1 < bytes.count, bytes[index + 1] == UInt8(ascii: "u")
            {
                let saved = index
                index += 2
                let low = try readHex4()
                if (0xDC00...0xDFFF).contains(low) {
                    scalarValue = 0x10000 + ((scalarValue - 0xD800) << 10) + (low - 0xDC00)
                } else {
                    index = saved  // not a pair: the high surrogate stands alone, the next escape is read anew
                }
            }
            let scalar = Unicode.Scalar(scalarValue) ?? "\u{FFFD}"
            var encoded: (UInt8, UInt8, UInt8, UInt8) = (0, 0, 0, 0)
            withUnsafeMutableBytes(of: &encoded) { raw in
                var count = 0
                for byte in UTF8.encode(scalar)! {  // iterate: the encoded buffer's storage is not plain bytes
                    raw[count] = byte
                    count += 1
                }
                sink(UnsafeRawBufferPointer(rebasing: raw[..<count]))
            }
            return
        default:
            throw .syntax
        }
        withUnsafeBytes(of: simple) { sink($0) }
    }

    private mutating func readHex4() throws(Failure) -> UInt32 {
        guard index + 4 <= bytes.count else { throw .syntax }
        var value: UInt32 = 0
        for _ in 0..<4 {
            let byte = bytes[index]
            index += 1
            let digit: UInt8
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): digit = byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): digit = byte - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): digit = byte - UInt8(ascii: "A") + 10
            default: throw .syntax
            }
            value = value << 4 | UInt32(digit)
        }
        return value
    }

    // MARK: Bytes

    private func peek() -> UInt8? {
        index < bytes.count ? bytes[index] : nil
    }

    private mutating func next() -> UInt8? {
        guard index < bytes.count else { return nil }
        defer { index += 1 }
        return bytes[index]
    }

    private mutating func expect(_ byte: UInt8) throws(Failure) {
        guard next() == byte else { throw .syntax }
    }

    private mutating func readLiteral(_ literal: StaticString) throws(Failure) -> Bool {
        let count = literal.utf8CodeUnitCount
        guard index + count <= bytes.count else { return false }
        for offset in 0..<count where bytes[index + offset] != literal.utf8Start[offset] {
            return false
        }
        index += count
        return true
    }

    mutating func skipWhitespace() {
        while index < bytes.count {
            switch bytes[index] {
            case UInt8(ascii: " "), UInt8(ascii: "\n"), UInt8(ascii: "\r"), UInt8(ascii: "\t"): index += 1
            default: return
            }
        }
    }

    private func isDigit(_ byte: UInt8) -> Bool {
        byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9")
    }
}
