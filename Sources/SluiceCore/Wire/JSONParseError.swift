/// Why a JSON document was rejected, and the byte offset where the problem was found.
public struct JSONParseError: Error, Sendable, Equatable, CustomStringConvertible {
    public enum Reason: Sendable, Equatable {
        /// The document ended inside a value (or was empty).
        case unexpectedEndOfInput
        /// A byte that cannot start or continue the value being read.
        case unexpectedByte(UInt8)
        /// A number that does not follow RFC 8259's grammar (`01`, `1.`, `-`, `1e`).
        case invalidNumber
        /// A backslash followed by something other than `"\/bfnrtu`.
        case invalidEscape
        /// `\u` not followed by four hexadecimal digits.
        case invalidUnicodeEscape
        /// A raw control character (U+0000–U+001F) inside a string.
        case controlCharacterInString
        /// Arrays/objects nested deeper than the reader's limit.
        case nestingTooDeep(limit: Int)
        /// Something other than whitespace after the top-level value.
        case trailingData
    }

    public let reason: Reason
    /// Byte offset into the document.
    public let offset: Int

    public init(_ reason: Reason, at offset: Int) {
        self.reason = reason
        self.offset = offset
    }

    public var description: String {
        let what: String
        switch reason {
        case .unexpectedEndOfInput: what = "unexpected end of input"
        case .unexpectedByte(let byte):
            if byte >= 0x20 && byte < 0x7F {
                what = "unexpected character '\(Character(Unicode.Scalar(byte)))'"
            } else {
                what = "unexpected byte 0x\(String(byte, radix: 16, uppercase: true))"
            }
        case .invalidNumber: what = "invalid number"
        case .invalidEscape: what = "invalid escape sequence in string"
        case .invalidUnicodeEscape: what = "invalid \\u escape in string"
        case .controlCharacterInString: what = "unescaped control character in string"
        case .nestingTooDeep(let limit): what = "nesting deeper than \(limit) levels"
        case .trailingData: what = "unexpected data after the JSON value"
        }
        return "\(what) at byte \(offset)"
    }
}
