/// A strict RFC 8259 JSON parser over UTF-8 bytes.
///
/// - Nesting is limited (`defaultMaxDepth` = 128): deeper documents are rejected with
///   `.nestingTooDeep`, which also bounds the parser's recursion.
/// - Strings: escapes decoded; a lone surrogate escape (`"\ud83d"`) becomes U+FFFD, as tiktoken
///   does; invalid UTF-8 is replaced by U+FFFD; raw control characters are rejected.
/// - Objects keep member order and duplicates, and record each member's value byte range.
/// - Numbers keep their literal text (`JSONNumber`).
/// - Only whitespace may follow the top-level value; a byte-order mark is rejected (as Python's
///   `json.loads` does).
public enum JSONReader {
    /// The nesting limit used unless the caller asks for another one.
    public static let defaultMaxDepth = 128
    /// Upper bound on any requested nesting limit, so recursion stays far from the stack's end.
    public static let maximumMaxDepth = 1024

    /// Parses a complete document.
    /// - Returns: the top-level value.
    /// - Throws: `JSONParseError` with the byte offset of the first problem.
    public static func parse(_ bytes: UnsafeRawBufferPointer, maxDepth: Int = defaultMaxDepth) throws(JSONParseError) -> JSONValue {
        var scanner = JSONScanner(bytes, maxDepth: min(max(maxDepth, 1), maximumMaxDepth))
        let value = try readValue(&scanner)
        try scanner.expectEnd()
        return value
    }

    /// Parses a complete document held in an array. See `parse(_:maxDepth:)` for the rules.
    public static func parse(_ bytes: [UInt8], maxDepth: Int = defaultMaxDepth) throws(JSONParseError) -> JSONValue {
        let result: Result<JSONValue, JSONParseError> = bytes.withUnsafeBytes { raw in
            do throws(JSONParseError) { return .success(try parse(raw, maxDepth: maxDepth)) } catch { return .failure(error) }
        }
        return try result.get()
    }

    /// Parses a complete document held in a string's UTF-8. See `parse(_:maxDepth:)` for the rules.
    public static func parse(_ text: String, maxDepth: Int = defaultMaxDepth) throws(JSONParseError) -> JSONValue {
        try parse(Array(text.utf8), maxDepth: maxDepth)
    }

    /// Reads the value at the scanner's position (used for whole documents and for sub-values
    /// that hot paths want as a tree, like a `usage` object).
    static func readValue(_ scanner: inout JSONScanner) throws(JSONParseError) -> JSONValue {
        var scratch = Scratch()
        return try readValue(&scanner, &scratch)
    }

    /// Members and elements of the containers being read, as one stack: each container is
    /// copied out once at its end with its exact size, instead of growing its own array.
    /// Room for a chat request's containers from the start: grown from empty, the stack took
    /// seven allocations for one (profiled, issue 19).
    struct Scratch {
        var members: [JSONMember]
        var elements: [JSONValue]

        init() {
            members = []
            members.reserveCapacity(16)
            elements = []
            elements.reserveCapacity(16)
        }
    }

    private static func readValue(_ scanner: inout JSONScanner, _ scratch: inout Scratch) throws(JSONParseError) -> JSONValue {
        guard let byte = scanner.peekSignificant() else {
            throw JSONParseError(.unexpectedEndOfInput, at: scanner.index)
        }
        switch byte {
        case UInt8(ascii: "{"):
            try scanner.enterObject()
            let base = scratch.members.count
            var first = true
            while let key = try scanner.nextKey(first: &first) {
                let name = scanner.decode(key)
                let start = scanner.index
                let value = try readValue(&scanner, &scratch)
                scratch.members.append(JSONMember(key: name, value: value, valueRange: start..<scanner.index))
            }
            let members = Array(scratch.members[base...])
            scratch.members.removeSubrange(base...)
            return .object(JSONObject(members: members))
        case UInt8(ascii: "["):
            try scanner.enterArray()
            let base = scratch.elements.count
            var first = true
            while try scanner.nextElement(first: &first) {
                let element = try readValue(&scanner, &scratch)
                scratch.elements.append(element)
            }
            let elements = Array(scratch.elements[base...])
            scratch.elements.removeSubrange(base...)
            return .array(elements)
        case UInt8(ascii: "\""):
            return .string(scanner.decode(try scanner.scanString()))
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            let range = try scanner.scanNumber()
            let literal = String(decoding: UnsafeRawBufferPointer(rebasing: scanner.bytes[range]), as: UTF8.self)
            return .number(JSONNumber(validatedLiteral: literal))
        default:
            return try scanner.scanLiteral()
        }
    }
}
