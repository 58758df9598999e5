/// A parsed JSON value (RFC 8259), as produced by `JSONReader`.
///
/// Numbers keep their literal text so nothing is lost (huge integers, exact decimals) and
/// re-serialization writes them back verbatim. Objects keep their members in document order.
public enum JSONValue: Sendable, Equatable {
    case null
    case bool(Bool)
    case number(JSONNumber)
    case string(String)
    case array([JSONValue])
    case object(JSONObject)

    /// The string payload, or nil when this is not a string.
    public var stringValue: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    /// The object payload, or nil when this is not an object.
    public var objectValue: JSONObject? {
        if case .object(let o) = self { return o }
        return nil
    }

    /// The array payload, or nil when this is not an array.
    public var arrayValue: [JSONValue]? {
        if case .array(let a) = self { return a }
        return nil
    }

    /// True for the literal `null`.
    public var isNull: Bool {
        if case .null = self { return true }
        return false
    }

    /// The JSON type with its article, as OpenAI names it in "expected …, but got … instead"
    /// messages: "a string", "a boolean", "an integer", "a decimal number", "an array", "an object", "null".
    public var typeDescription: String {
        switch self {
        case .null: "null"
        case .bool: "a boolean"
        case .number(let n): n.isIntegerLiteral ? "an integer" : "a decimal number"
        case .string: "a string"
        case .array: "an array"
        case .object: "an object"
        }
    }
}

/// A JSON number, kept as its literal text (already validated against the RFC 8259 grammar).
public struct JSONNumber: Sendable, Hashable, CustomStringConvertible {
    /// The literal as it appeared in the document, e.g. `-12`, `3.5e10`.
    public let literal: String

    /// Wraps a literal that the caller guarantees is a valid JSON number.
    public init(validatedLiteral: String) { self.literal = validatedLiteral }

    /// Creates the number for an integer.
    public init(_ value: Int) { self.literal = String(value) }

    /// True when the literal has neither a fraction nor an exponent (`12`, `-0`), whatever its size.
    public var isIntegerLiteral: Bool {
        !literal.utf8.contains(where: { $0 == UInt8(ascii: ".") || $0 == UInt8(ascii: "e") || $0 == UInt8(ascii: "E") })
    }

    /// The value as an `Int` when the literal is an integer literal that fits; nil otherwise.
    public var intValue: Int? { isIntegerLiteral ? Int(literal) : nil }

    /// The value when it is a whole number, whatever its spelling (`12`, `12.0`, `1.2e1`, `-0.0`):
    /// JSON Schema's `integer`, which OpenAI's API follows. Exact (decided on the digits, never
    /// through a `Double`); values beyond `Int`'s range saturate to `Int.min` / `Int.max`. Nil when
    /// the number has a non-zero fraction (`1.5`, `1e-3`).
    public var wholeValue: Int? {
        if let exact = intValue { return exact }
        let bytes = Array(literal.utf8)
        let zero = UInt8(ascii: "0")
        func isDigit(_ byte: UInt8) -> Bool { byte >= zero && byte <= UInt8(ascii: "9") }
        var index = 0
        let negative = bytes.first == UInt8(ascii: "-")
        if negative { index += 1 }
        var digits: [UInt8] = []
        while index < bytes.count, isDigit(bytes[index]) { digits.append(bytes[index] - zero); index += 1 }
        var integerDigits = digits.count
        if index < bytes.count, bytes[index] == UInt8(ascii: ".") {
            index += 1
            while index < bytes.count, isDigit(bytes[index]) { digits.append(bytes[index] - zero); index += 1 }
        }
        if index < bytes.count, bytes[index] == UInt8(ascii: "e") || bytes[index] == UInt8(ascii: "E") {
            index += 1
            let negativeExponent = index < bytes.count && bytes[index] == UInt8(ascii: "-")
            if index < bytes.count, bytes[index] == UInt8(ascii: "-") || bytes[index] == UInt8(ascii: "+") { index += 1 }
            // Capped: a longer shift than the literal has digits decides nothing more.
            var exponent = 0
            while index < bytes.count, isDigit(bytes[index]) {
                exponent = min(exponent * 10 + Int(bytes[index] - zero), 1 << 20)
                index += 1
            }
            integerDigits += negativeExponent ? -exponent : exponent
        }
        // Whole when no non-zero digit lies after the decimal point (as shifted by the exponent).
        guard let lastNonZero = digits.lastIndex(where: { $0 != 0 }) else { return 0 }
        guard lastNonZero < integerDigits else { return nil }
        var magnitude = 0
        for position in 0..<integerDigits {
            let digit = position < digits.count ? Int(digits[position]) : 0
            let (shifted, overflowA) = magnitude.multipliedReportingOverflow(by: 10)
            let (sum, overflowB) = shifted.addingReportingOverflow(digit)
            if overflowA || overflowB { return negative ? Int.min : Int.max }
            magnitude = sum
        }
        return negative ? -magnitude : magnitude
    }

    /// The value as a `Double` (may be ±infinity for out-of-range literals).
    public var doubleValue: Double { Double(literal) ?? .nan }

    public var description: String { literal }
}

/// One member of a JSON object: its key, its value and where the value's bytes lie in the
/// document it was parsed from (so callers can splice the original body without re-serializing).
public struct JSONMember: Sendable {
    public var key: String
    public var value: JSONValue
    /// Byte offsets of the value's text in the parsed document (empty for values built in code).
    public var valueRange: Range<Int>

    public init(key: String, value: JSONValue, valueRange: Range<Int> = 0..<0) {
        self.key = key
        self.value = value
        self.valueRange = valueRange
    }
}

extension JSONMember: Equatable {
    /// Members are equal when key and value are; where they came from does not matter.
    public static func == (lhs: JSONMember, rhs: JSONMember) -> Bool {
        lhs.key == rhs.key && lhs.value == rhs.value
    }
}

/// A JSON object with its members in document order. Duplicate keys are kept; lookups return
/// the LAST occurrence, like Python's `json` module (and therefore OpenAI's API) does.
public struct JSONObject: Sendable, Equatable {
    public var members: [JSONMember]

    public init(members: [JSONMember] = []) { self.members = members }

    /// The value of the last member named `key`, or nil when there is none.
    public subscript(key: String) -> JSONValue? {
        var index = members.endIndex
        while index > members.startIndex {
            index -= 1
            if members[index].key == key { return members[index].value }
        }
        return nil
    }

    /// The last member named `key`, or nil when there is none.
    public func member(named key: String) -> JSONMember? {
        var index = members.endIndex
        while index > members.startIndex {
            index -= 1
            if members[index].key == key { return members[index] }
        }
        return nil
    }

    public var isEmpty: Bool { members.isEmpty }
    public var count: Int { members.count }
}
