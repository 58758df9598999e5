/// Picks the answering model (`"model"`, the first one) and the choices' `"finish_reason"` values
/// out of an upstream answer's bytes, whole or streamed in pieces, without parsing the JSON: for the
/// request span (`gen_ai.response.model`, `gen_ai.response.finish_reasons`), so it runs only when
/// telemetry is on.
///
/// A key is only matched unescaped (`"model"` inside a string value would be written `\"model\"`),
/// with a string value of at most ``maxValueBytes`` bytes without escapes; `null` values are skipped
/// (a stream's chunks carry `"finish_reason":null` until the last).
struct ResponseFieldScanner {
    private(set) var model: String?
    private(set) var finishReasons: [String] = []
    /// The end of the previous piece, in which a key may have started.
    private var carry: [UInt8] = []

    static let maxValueBytes = 64
    static let maxFinishReasons = 16
    static let maxCarryBytes = 128
    private static let modelKey = Array(#""model""#.utf8)
    private static let finishReasonKey = Array(#""finish_reason""#.utf8)

    mutating func consume(_ piece: UnsafeRawBufferPointer) {
        guard !piece.isEmpty else { return }
        let bytes = carry.isEmpty ? Array(piece) : carry + Array(piece)
        var scannedUpTo = 0
        var index = 0
        while index < bytes.count {
            guard bytes[index] == UInt8(ascii: "\"") else { index += 1; continue }
            if model == nil, let (value, end) = Self.value(after: Self.modelKey, in: bytes, at: index) {
                if let value { model = value }
                index = end
                scannedUpTo = end
            } else if finishReasons.count < Self.maxFinishReasons, let (value, end) = Self.value(after: Self.finishReasonKey, in: bytes, at: index) {
                if let value { finishReasons.append(value) }
                index = end
                scannedUpTo = end
            } else {
                index += 1
            }
        }
        let carryStart = max(scannedUpTo, bytes.count - Self.maxCarryBytes)
        carry = carryStart < bytes.count ? Array(bytes[carryStart...]) : []
    }

    /// When `key` starts at `start` and a complete value follows: the value (nil for anything but a
    /// short plain string) and the index after it. nil when there is no such key there, or the value
    /// is not complete in `bytes` yet.
    private static func value(after key: [UInt8], in bytes: [UInt8], at start: Int) -> (String?, Int)? {
        guard bytes.count - start >= key.count, bytes[start..<(start + key.count)].elementsEqual(key) else { return nil }
        var index = start + key.count
        func skipSpaces() {
            while index < bytes.count, bytes[index] == UInt8(ascii: " ") || bytes[index] == UInt8(ascii: "\t") || bytes[index] == UInt8(ascii: "\n") || bytes[index] == UInt8(ascii: "\r") { index += 1 }
        }
        skipSpaces()
        guard index < bytes.count else { return nil }
        guard bytes[index] == UInt8(ascii: ":") else { return (nil, index) }
        index += 1
        skipSpaces()
        guard index < bytes.count else { return nil }
        guard bytes[index] == UInt8(ascii: "\"") else { return (nil, index) }
        let valueStart = index + 1
        var end = valueStart
        while end < bytes.count, bytes[end] != UInt8(ascii: "\"") {
            if bytes[end] == UInt8(ascii: "\\") || end - valueStart >= maxValueBytes { return (nil, end) }
            end += 1
        }
        guard end < bytes.count else { return nil }
        return (String(decoding: bytes[valueStart..<end], as: UTF8.self), end + 1)
    }
}
