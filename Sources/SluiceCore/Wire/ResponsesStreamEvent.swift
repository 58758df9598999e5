/// What the relay needs from one `data:` payload of a Responses API stream (`response.*` events),
/// read with `JSONScanner` without building a tree.
///
/// The final event — `response.completed`, or `response.incomplete` / `response.failed` — carries
/// the whole `response` object with its `usage`. Text deltas (`response.output_text.delta`,
/// `response.refusal.delta`, `response.function_call_arguments.delta`, reasoning deltas) carry the
/// generated text in `delta`, kept for counting when the stream ends without usage.
struct ResponsesStreamEvent {
    /// The event's `type`.
    var type: String?
    /// `response.usage`, when the event carried a response with a valid usage.
    var usage: Usage?
    /// The event is `error` (a failure mid-stream).
    var isError: Bool { type == "error" }
    /// The event ends the response.
    var isFinal: Bool { type == "response.completed" || type == "response.incomplete" || type == "response.failed" }

    /// Reads `payload`, appending a delta's text to `text`.
    /// - Returns: nil when the payload is not a JSON object; `text` is then unchanged.
    static func read(_ payload: UnsafeRawBufferPointer, appendingTextTo text: inout [UInt8]) -> ResponsesStreamEvent? {
        let textCountBefore = text.count
        var scanner = JSONScanner(payload, maxDepth: JSONReader.defaultMaxDepth)
        var event = ResponsesStreamEvent()
        var delta: [UInt8]?
        do throws(JSONParseError) {
            guard scanner.peekSignificant() == UInt8(ascii: "{") else { return nil }
            try scanner.enterObject()
            var first = true
            while let key = try scanner.nextKey(first: &first) {
                if scanner.string(key, equals: "type"), scanner.peekSignificant() == UInt8(ascii: "\"") {
                    var bytes: [UInt8] = []
                    scanner.appendDecoded(try scanner.scanString(), to: &bytes)
                    event.type = String(decoding: bytes, as: UTF8.self)
                } else if scanner.string(key, equals: "delta"), scanner.peekSignificant() == UInt8(ascii: "\"") {
                    var bytes: [UInt8] = []
                    scanner.appendDecoded(try scanner.scanString(), to: &bytes)
                    delta = bytes
                } else if scanner.string(key, equals: "response"), scanner.peekSignificant() == UInt8(ascii: "{") {
                    try scanner.enterObject()
                    var firstMember = true
                    while let member = try scanner.nextKey(first: &firstMember) {
                        if scanner.string(member, equals: "usage"), scanner.peekSignificant() == UInt8(ascii: "{") {
                            event.usage = try Usage.read(&scanner)
                        } else {
                            try scanner.skipValue()
                        }
                    }
                } else {
                    try scanner.skipValue()
                }
            }
            try scanner.expectEnd()
        } catch {
            text.removeSubrange(textCountBefore...)
            return nil
        }
        // Only generated text: a delta of an event that is not text (audio, say) is not counted.
        if let delta, let type = event.type, type.hasSuffix(".delta"), !type.contains("audio") {
            text.append(contentsOf: delta)
        }
        return event
    }
}
