import NIOCore

// MARK: - Writing JSON fragments straight into a ByteBuffer

extension ByteBuffer {
    /// Writes `value` as a quoted JSON string literal, escaping quotes, backslashes and control characters.
    mutating func writeJSONString(_ value: String) {
        self.writeInteger(UInt8(ascii: "\""))
        var value = value
        value.withUTF8 { bytes in
            var runStart = 0
            for index in bytes.indices {
                let byte = bytes[index]
                guard byte < 0x20 || byte == UInt8(ascii: "\"") || byte == UInt8(ascii: "\\") else { continue }
                if runStart < index {
                    self.writeBytes(UnsafeRawBufferPointer(UnsafeBufferPointer(rebasing: bytes[runStart..<index])))
                }
                self.writeJSONEscape(byte)
                runStart = index + 1
            }
            if runStart < bytes.count {
                self.writeBytes(UnsafeRawBufferPointer(UnsafeBufferPointer(rebasing: bytes[runStart...])))
            }
        }
        self.writeInteger(UInt8(ascii: "\""))
    }

    /// Writes `value` as a quoted JSON string, or `null` when it is nil.
    mutating func writeJSONString(orNull value: String?) {
        if let value {
            self.writeJSONString(value)
        } else {
            self.writeStaticString("null")
        }
    }

    /// Writes `value` as a JSON integer, or `null` when it is nil.
    mutating func writeDecimal(orNull value: Int?) {
        if let value {
            self.writeDecimal(value)
        } else {
            self.writeStaticString("null")
        }
    }

    /// Writes the decimal digits of `value` (ASCII, without going through `String`).
    mutating func writeDecimal(_ value: Int) {
        if value < 0 {
            self.writeInteger(UInt8(ascii: "-"))
        }
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)  // 24 bytes hold the 20 digits of UInt64.max
        var count = 0
        var rest = value.magnitude
        withUnsafeMutableBytes(of: &digits) { scratch in
            repeat {
                scratch[scratch.count - 1 - count] = UInt8(ascii: "0") + UInt8(rest % 10)
                rest /= 10
                count += 1
            } while rest > 0
            self.writeBytes(UnsafeRawBufferPointer(rebasing: scratch[(scratch.count - count)...]))
        }
    }

    /// Writes `true` or `false`.
    mutating func writeJSONBool(_ value: Bool) {
        if value {
            self.writeStaticString("true")
        } else {
            self.writeStaticString("false")
        }
    }

    private mutating func writeJSONEscape(_ byte: UInt8) {
        switch byte {
        case UInt8(ascii: "\""): self.writeStaticString("\\\"")
        case UInt8(ascii: "\\"): self.writeStaticString("\\\\")
        case UInt8(ascii: "\n"): self.writeStaticString("\\n")
        case UInt8(ascii: "\r"): self.writeStaticString("\\r")
        case UInt8(ascii: "\t"): self.writeStaticString("\\t")
        default:
            self.writeStaticString("\\u00")
            self.writeInteger(hexDigit(byte >> 4))
            self.writeInteger(hexDigit(byte & 0x0F))
        }
    }
}

private func hexDigit(_ nibble: UInt8) -> UInt8 {
    nibble < 10 ? UInt8(ascii: "0") + nibble : UInt8(ascii: "a") + nibble - 10
}
