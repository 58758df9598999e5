/// Reads an image's pixel size from the header of a base64 `data:` URL (PNG, GIF, WebP, JPEG),
/// decoding only a bounded prefix. The prompt counter uses the size for `detail: high` tiles;
/// when it is unknown (remote URL, other format, damaged header) it assumes the worst case.
enum ImageHeaderReader {
    /// At most this many base64 characters are decoded (JPEG headers can follow large EXIF blocks).
    static let maximumBase64Prefix = 96 * 1024

    static func dimensions(ofDataURL url: String) -> (width: Int, height: Int)? {
        var utf8 = url.utf8[...]
        guard utf8.starts(with: "data:".utf8), let comma = utf8.firstIndex(of: UInt8(ascii: ",")) else { return nil }
        let header = utf8[..<comma]
        guard header.count < 256, String(decoding: header, as: UTF8.self).lowercased().hasSuffix(";base64") else { return nil }
        utf8 = utf8[utf8.index(after: comma)...]
        let bytes = decodeBase64Prefix(utf8.prefix(maximumBase64Prefix))
        return png(bytes) ?? gif(bytes) ?? webp(bytes) ?? jpeg(bytes)
    }

    /// Decodes base64 until the first character outside the alphabet (padding included).
    static func decodeBase64Prefix(_ text: Substring.UTF8View.SubSequence) -> [UInt8] {
        var output: [UInt8] = []
        output.reserveCapacity(text.count * 3 / 4)
        var accumulator: UInt32 = 0
        var bits = 0
        for character in text {
            let value: UInt32
            switch character {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"): value = UInt32(character - UInt8(ascii: "A"))
            case UInt8(ascii: "a")...UInt8(ascii: "z"): value = UInt32(character - UInt8(ascii: "a") + 26)
            case UInt8(ascii: "0")...UInt8(ascii: "9"): value = UInt32(character - UInt8(ascii: "0") + 52)
            case UInt8(ascii: "+"), UInt8(ascii: "-"): value = 62
            case UInt8(ascii: "/"), UInt8(ascii: "_"): value = 63
            default: return output
            }
            accumulator = accumulator << 6 | value
            bits += 6
            if bits >= 8 {
                bits -= 8
                output.append(UInt8(truncatingIfNeeded: accumulator >> UInt32(bits)))
            }
        }
        return output
    }

    private static func bigEndian(_ b: [UInt8], _ at: Int, _ count: Int) -> Int {
        var value = 0
        for k in 0..<count { value = value << 8 | Int(b[at + k]) }
        return value
    }

    private static func littleEndian(_ b: [UInt8], _ at: Int, _ count: Int) -> Int {
        var value = 0
        for k in (0..<count).reversed() { value = value << 8 | Int(b[at + k]) }
        return value
    }

    private static func valid(_ width: Int, _ height: Int) -> (width: Int, height: Int)? {
        width > 0 && height > 0 ? (width, height) : nil
    }

    private static func png(_ b: [UInt8]) -> (width: Int, height: Int)? {
        guard b.count >= 24, b.starts(with: [0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A, 0x1A, 0x0A]),
              b[12...15].elementsEqual("IHDR".utf8) else { return nil }
        return valid(bigEndian(b, 16, 4), bigEndian(b, 20, 4))
    }

    private static func gif(_ b: [UInt8]) -> (width: Int, height: Int)? {
        guard b.count >= 10, b.starts(with: "GIF87a".utf8) || b.starts(with: "GIF89a".utf8) else { return nil }
        return valid(littleEndian(b, 6, 2), littleEndian(b, 8, 2))
    }

    private static func webp(_ b: [UInt8]) -> (width: Int, height: Int)? {
        guard b.count >= 30, b.starts(with: "RIFF".utf8), b[8...11].elementsEqual("WEBP".utf8) else { return nil }
        let chunk = String(decoding: b[12...15], as: UTF8.self)
        switch chunk {
        case "VP8 ":
            guard b[23] == 0x9D, b[24] == 0x01, b[25] == 0x2A else { return nil }
            return valid(littleEndian(b, 26, 2) & 0x3FFF, littleEndian(b, 28, 2) & 0x3FFF)
        case "VP8L":
            guard b[20] == 0x2F else { return nil }
            let bits = littleEndian(b, 21, 4)
            return valid((bits & 0x3FFF) + 1, (bits >> 14 & 0x3FFF) + 1)
        case "VP8X":
            return valid(littleEndian(b, 24, 3) + 1, littleEndian(b, 27, 3) + 1)
        default:
            return nil
        }
    }

    private static func jpeg(_ b: [UInt8]) -> (width: Int, height: Int)? {
        guard b.count >= 4, b[0] == 0xFF, b[1] == 0xD8 else { return nil }
        var index = 2
        while index + 3 < b.count {
            guard b[index] == 0xFF else { return nil }
            let marker = b[index + 1]
            if marker == 0xFF { index += 1; continue } // fill byte
            if marker == 0x01 || (0xD0...0xD9).contains(marker) { index += 2; continue } // no length
            let length = bigEndian(b, index + 2, 2)
            guard length >= 2 else { return nil }
            let isStartOfFrame = (0xC0...0xCF).contains(marker) && marker != 0xC4 && marker != 0xC8 && marker != 0xCC
            if isStartOfFrame {
                guard index + 8 < b.count else { return nil }
                return valid(bigEndian(b, index + 7, 2), bigEndian(b, index + 5, 2))
            }
            index += 2 + length
        }
        return nil
    }
}
