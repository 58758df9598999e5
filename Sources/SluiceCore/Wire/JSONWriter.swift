/// Writes compact JSON (no insignificant whitespace) as UTF-8 bytes.
///
/// Used for error bodies, for spliced request bodies, and for the compact JSON text of schema
/// parts that the prompt counter treats as plain text.
public enum JSONWriter {
    /// Appends `string` as a JSON string literal (quotes included). Escapes `"`, `\` and every
    /// control character below U+0020; everything else is written as raw UTF-8.
    public static func appendString(_ string: String, to output: inout [UInt8]) {
        output.append(UInt8(ascii: "\""))
        let handledContiguously: Void? = string.utf8.withContiguousStorageIfAvailable { appendEscaped($0, to: &output) }
        if handledContiguously == nil { appendEscaped(string.utf8, to: &output) }
        output.append(UInt8(ascii: "\""))
    }

    /// Appends `value` in compact form; object members in their order, numbers as their literals.
    public static func appendValue(_ value: JSONValue, to output: inout [UInt8]) {
        switch value {
        case .null: output.append(contentsOf: "null".utf8)
        case .bool(let flag): output.append(contentsOf: (flag ? "true" : "false").utf8)
        case .number(let number): output.append(contentsOf: number.literal.utf8)
        case .string(let string): appendString(string, to: &output)
        case .array(let elements):
            output.append(UInt8(ascii: "["))
            for (position, element) in elements.enumerated() {
                if position > 0 { output.append(UInt8(ascii: ",")) }
                appendValue(element, to: &output)
            }
            output.append(UInt8(ascii: "]"))
        case .object(let object):
            output.append(UInt8(ascii: "{"))
            for (position, member) in object.members.enumerated() {
                if position > 0 { output.append(UInt8(ascii: ",")) }
                appendString(member.key, to: &output)
                output.append(UInt8(ascii: ":"))
                appendValue(member.value, to: &output)
            }
            output.append(UInt8(ascii: "}"))
        }
    }

    /// `value` as compact JSON text.
    public static func compactText(_ value: JSONValue) -> String {
        var bytes: [UInt8] = []
        appendValue(value, to: &bytes)
        return String(decoding: bytes, as: UTF8.self)
    }

    /// `string` as a JSON string literal (with quotes), as bytes.
    public static func stringLiteral(_ string: String) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.reserveCapacity(string.utf8.count + 2)
        appendString(string, to: &bytes)
        return bytes
    }

    private static let hexDigits: [UInt8] = Array("0123456789abcdef".utf8)

    private static func appendEscaped<Bytes: Collection<UInt8>>(_ bytes: Bytes, to output: inout [UInt8]) {
        for byte in bytes {
            let shortEscape: UInt8
            switch byte {
            case UInt8(ascii: "\""), UInt8(ascii: "\\"): shortEscape = byte
            case 0x0A: shortEscape = UInt8(ascii: "n")
            case 0x0D: shortEscape = UInt8(ascii: "r")
            case 0x09: shortEscape = UInt8(ascii: "t")
            case 0x08: shortEscape = UInt8(ascii: "b")
            case 0x0C: shortEscape = UInt8(ascii: "f")
            case 0x00..<0x20:
                output.append(UInt8(ascii: "\\"))
                output.append(UInt8(ascii: "u"))
                output.append(UInt8(ascii: "0"))
                output.append(UInt8(ascii: "0"))
                output.append(hexDigits[Int(byte >> 4)])
                output.append(hexDigits[Int(byte & 0xF)])
                continue
            default:
                output.append(byte)
                continue
            }
            output.append(UInt8(ascii: "\\"))
            output.append(shortEscape)
        }
    }
}
