/// Well-formedness of UTF-8 per the Unicode Standard, Table 3-7 (no overlong forms, no
/// surrogates, nothing above U+10FFFF).
public enum UTF8Validation {
    /// Whether `bytes` is well-formed UTF-8. Runs of ASCII are checked eight bytes at a time.
    public static func isValid(_ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        guard let base = bytes.baseAddress else { return true }
        let count = bytes.count
        let raw = UnsafeRawPointer(base)
        var index = 0
        while index < count {
            if index + 8 <= count
                && raw.loadUnaligned(fromByteOffset: index, as: UInt64.self) & 0x8080_8080_8080_8080 == 0
            {
                index += 8
                continue
            }
            let lead = base[index]
            if lead < 0x80 {
                index += 1
                continue
            }
            let length: Int
            var secondLow: UInt8 = 0x80
            var secondHigh: UInt8 = 0xBF
            switch lead {
            case 0xC2...0xDF: length = 2
            case 0xE0: length = 3; secondLow = 0xA0
            case 0xE1...0xEC, 0xEE...0xEF: length = 3
            case 0xED: length = 3; secondHigh = 0x9F
            case 0xF0: length = 4; secondLow = 0x90
            case 0xF1...0xF3: length = 4
            case 0xF4: length = 4; secondHigh = 0x8F
            default: return false
            }
            guard index + length <= count else { return false }
            let second = base[index + 1]
            guard second >= secondLow && second <= secondHigh else { return false }
            var continuation = 2
            while continuation < length {
                guard base[index + continuation] & 0xC0 == 0x80 else { return false }
                continuation += 1
            }
            index += length
        }
        return true
    }
}
