import Crypto

#if canImport(Darwin)
import Darwin
#elseif canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

// MARK: - Loading `.tiktoken` rank files

extension RankTable {
    /// Rank files are a few MB; anything far larger is not a rank file and is refused unread.
    static let maxRankFileSize = 64 << 20

    /// Reads the rank file at `path`, checks its SHA-256 against `expectedSHA256` (lowercase hex)
    /// and parses it. Throws before parsing when the hash differs.
    static func load(path: String, expectedSHA256: String) throws(TokenizerError) -> RankTable {
        let bytes = try readFile(path)
        let actual = bytes.withUnsafeBytes { sha256Hex($0) }
        guard actual == expectedSHA256 else {
            throw .rankFileHashMismatch(path: path, expected: expectedSHA256, actual: actual)
        }
        return try bytes.withUnsafeBufferPointer { buffer throws(TokenizerError) in
            try parse(buffer, path: path)
        }
    }

    /// Parses `<base64 of the token bytes> <rank>` lines (LF or CRLF; empty lines skipped, like
    /// tiktoken's loader). `path` only names the file in errors.
    static func parse(_ file: UnsafeBufferPointer<UInt8>, path: String) throws(TokenizerError) -> RankTable {
        var lineCount = 0
        for byte in file where byte == UInt8(ascii: "\n") { lineCount += 1 }
        var builder = Builder(expectedCount: lineCount + 1)
        var decoded = [UInt8](repeating: 0, count: RankTable.maxTokenLength + 3)
        var position = 0
        var lineNumber = 0
        let end = file.count
        while position < end {
            lineNumber += 1
            var lineEnd = position
            while lineEnd < end && file[lineEnd] != UInt8(ascii: "\n") { lineEnd += 1 }
            let next = lineEnd + 1
            if lineEnd > position && file[lineEnd - 1] == UInt8(ascii: "\r") { lineEnd -= 1 }
            defer { position = next }
            if lineEnd == position { continue }

            func malformed(_ reason: String) -> TokenizerError {
                .malformedRankFile(path: path, line: lineNumber, reason: reason)
            }
            var space = position
            while space < lineEnd && file[space] != UInt8(ascii: " ") { space += 1 }
            guard space < lineEnd else { throw malformed("expected \"<base64> <rank>\"") }
            let decodedCount = decoded.withUnsafeMutableBufferPointer { output in
                Base64.decode(UnsafeBufferPointer(rebasing: file[position..<space]), into: output)
            }
            guard let decodedCount, decodedCount > 0 else {
                throw malformed("token is not non-empty base64 of at most \(RankTable.maxTokenLength) bytes")
            }
            guard let rank = parseRank(UnsafeBufferPointer(rebasing: file[(space + 1)..<lineEnd])) else {
                throw malformed("rank is not a decimal number below \(RankTable.absent)")
            }
            do {
                try decoded.withUnsafeBufferPointer { buffer throws(Builder.InsertError) in
                    try builder.insert(UnsafeBufferPointer(rebasing: buffer[0..<decodedCount]), rank: rank)
                }
            } catch {
                switch error {
                case .duplicate: throw malformed("duplicate token")
                case .tooLong: throw malformed("token longer than \(RankTable.maxTokenLength) bytes")
                case .arenaFull: throw malformed("tokens exceed \(RankTable.maxArenaSize) bytes in total")
                }
            }
        }
        guard let table = builder.finish() else {
            throw .malformedRankFile(path: path, line: lineNumber, reason: "not every single byte is a token")
        }
        return table
    }

    /// A decimal rank of 1–10 digits that is below the `absent` sentinel.
    private static func parseRank(_ digits: UnsafeBufferPointer<UInt8>) -> UInt32? {
        guard (1...10).contains(digits.count) else { return nil }
        var value: UInt64 = 0
        for digit in digits {
            guard digit >= UInt8(ascii: "0") && digit <= UInt8(ascii: "9") else { return nil }
            value = value * 10 + UInt64(digit - UInt8(ascii: "0"))
        }
        return value < UInt64(RankTable.absent) ? UInt32(value) : nil
    }

    private static func sha256Hex(_ bytes: UnsafeRawBufferPointer) -> String {
        var hasher = SHA256()
        hasher.update(bufferPointer: bytes)
        let hexDigits = Array("0123456789abcdef".utf8)
        var hex: [UInt8] = []
        hex.reserveCapacity(64)
        for byte in hasher.finalize() {
            hex.append(hexDigits[Int(byte >> 4)])
            hex.append(hexDigits[Int(byte & 0x0F)])
        }
        return String(decoding: hex, as: UTF8.self)
    }

    /// Reads a whole file with POSIX calls (no Foundation on this path).
    private static func readFile(_ path: String) throws(TokenizerError) -> [UInt8] {
        let descriptor = open(path, O_RDONLY | O_CLOEXEC)
        guard descriptor >= 0 else {
            let code = errno
            if code == ENOENT || code == ENOTDIR { throw .missingRankFile(path: path) }
            throw .unreadableRankFile(path: path, errno: code)
        }
        defer { close(descriptor) }
        var status = stat()
        guard fstat(descriptor, &status) == 0 else { throw .unreadableRankFile(path: path, errno: errno) }
        let size = Int(status.st_size)
        guard size <= maxRankFileSize else { throw .inputTooLarge(byteCount: size, limit: maxRankFileSize) }
        var bytes = [UInt8](repeating: 0, count: size)
        var filled = 0
        var readError: Int32 = 0
        bytes.withUnsafeMutableBytes { buffer in
            while filled < size {
                let result = read(descriptor, buffer.baseAddress! + filled, size - filled)
                if result < 0 {
                    if errno == EINTR { continue }
                    readError = errno
                    return
                }
                if result == 0 { break }
                filled += result
            }
        }
        if readError != 0 { throw .unreadableRankFile(path: path, errno: readError) }
        // A file that shrank while being read fails the hash check; one that grew is read as sized.
        if filled < size { bytes.removeSubrange(filled...) }
        return bytes
    }
}

/// Standard-alphabet base64 with `=` padding, decoded straight from bytes.
enum Base64 {
    private static let invalid: UInt8 = 0xFF

    /// Value of each ASCII byte in the base64 alphabet; 0xFF for bytes outside it.
    private static let values: [UInt8] = {
        var table = [UInt8](repeating: 0xFF, count: 256)
        for (index, byte) in "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/".utf8.enumerated() {
            table[Int(byte)] = UInt8(index)
        }
        return table
    }()

    /// Decodes `text` into `output`; returns the decoded length, or nil when `text` is not
    /// padded base64 or does not fit `output`.
    static func decode(_ text: UnsafeBufferPointer<UInt8>, into output: UnsafeMutableBufferPointer<UInt8>) -> Int? {
        let length = text.count
        guard length % 4 == 0 else { return nil }
        var padding = 0
        if length >= 4 && text[length - 1] == UInt8(ascii: "=") {
            padding = text[length - 2] == UInt8(ascii: "=") ? 2 : 1
        }
        let decodedLength = length / 4 * 3 - padding
        guard decodedLength <= output.count else { return nil }
        return values.withUnsafeBufferPointer { values -> Int? in
            var written = 0
            var index = 0
            while index < length {
                let isLast = index + 4 == length
                let a = values[Int(text[index])]
                let b = values[Int(text[index + 1])]
                let c = isLast && padding == 2 ? 0 : values[Int(text[index + 2])]
                let d = isLast && padding >= 1 ? 0 : values[Int(text[index + 3])]
                guard (a | b | c | d) & 0xC0 == 0 else { return nil }
                let group = UInt32(a) << 18 | UInt32(b) << 12 | UInt32(c) << 6 | UInt32(d)
                output[written] = UInt8(truncatingIfNeeded: group >> 16)
                if written + 1 < decodedLength { output[written + 1] = UInt8(truncatingIfNeeded: group >> 8) }
                if written + 2 < decodedLength { output[written + 2] = UInt8(truncatingIfNeeded: group) }
                written += 3
                index += 4
            }
            return decodedLength
        }
    }
}
