/// What the relay needs from one `data:` payload of an OpenAI chat/completions stream, read
/// with `JSONScanner` without building a tree (only a `usage` object is materialized).
struct OpenAIStreamChunk {
    /// The payload was `[DONE]`.
    var isDone = false
    /// Number of elements in `choices`, or nil when there was no `choices` array.
    var choiceCount: Int?
    /// The chunk's non-null `usage`, when it had a valid one.
    var usage: Usage?
    /// The chunk carried a `usage` object (valid or not).
    var hasUsageObject = false
    /// The chunk is an error object (`{"error": …}`) sent mid-stream.
    var isError = false

    /// The usage-only chunk that `stream_options.include_usage` adds: `"choices": []` plus `usage`.
    var isUsageOnly: Bool { hasUsageObject && choiceCount == 0 }

    private static let doneMarker = Array("[DONE]".utf8)

    /// Reads `payload`, appending the generated text it carries (`delta.content`, `delta.refusal`,
    /// `delta.reasoning_content`, tool-call names and arguments, completions' `text`) to `text`.
    /// - Returns: nil when the payload is neither `[DONE]` nor a JSON object; `text` is then unchanged.
    static func read(_ payload: UnsafeRawBufferPointer, appendingTextTo text: inout [UInt8]) -> OpenAIStreamChunk? {
        var start = 0
        var end = payload.count
        while start < end, isSpace(payload[start]) { start += 1 }
        while end > start, isSpace(payload[end - 1]) { end -= 1 }
        if end - start == doneMarker.count, payload[start..<end].elementsEqual(doneMarker) {
            return OpenAIStreamChunk(isDone: true)
        }
        let textCountBefore = text.count
        var scanner = JSONScanner(payload, maxDepth: JSONReader.defaultMaxDepth)
        var chunk = OpenAIStreamChunk()
        do throws(JSONParseError) {
            guard scanner.peekSignificant() == UInt8(ascii: "{") else { return nil }
            try scanner.enterObject()
            var first = true
            while let key = try scanner.nextKey(first: &first) {
                if scanner.string(key, equals: "choices"), scanner.peekSignificant() == UInt8(ascii: "[") {
                    chunk.choiceCount = try readChoices(&scanner, text: &text)
                } else if scanner.string(key, equals: "usage"), scanner.peekSignificant() == UInt8(ascii: "{") {
                    chunk.hasUsageObject = true
                    chunk.usage = try Usage.read(&scanner)
                } else {
                    if scanner.string(key, equals: "error") { chunk.isError = true }
                    try scanner.skipValue()
                }
            }
            try scanner.expectEnd()
            return chunk
        } catch {
            text.removeSubrange(textCountBefore...)
            return nil
        }
    }

    private static func isSpace(_ byte: UInt8) -> Bool {
        byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D
    }

    private static func readChoices(_ scanner: inout JSONScanner, text: inout [UInt8]) throws(JSONParseError) -> Int {
        try scanner.enterArray()
        var count = 0
        var first = true
        while try scanner.nextElement(first: &first) {
            count += 1
            guard scanner.peekSignificant() == UInt8(ascii: "{") else {
                try scanner.skipValue()
                continue
            }
            try scanner.enterObject()
            var firstMember = true
            while let key = try scanner.nextKey(first: &firstMember) {
                if scanner.string(key, equals: "delta") || scanner.string(key, equals: "message") {
                    try readDelta(&scanner, text: &text)
                } else if scanner.string(key, equals: "text") {
                    try appendIfString(&scanner, text: &text)
                } else {
                    try scanner.skipValue()
                }
            }
        }
        return count
    }

    /// `delta`: text fields, `tool_calls[].function.{name,arguments}`, legacy `function_call`.
    private static func readDelta(_ scanner: inout JSONScanner, text: inout [UInt8]) throws(JSONParseError) {
        guard scanner.peekSignificant() == UInt8(ascii: "{") else { return try scanner.skipValue() }
        try scanner.enterObject()
        var first = true
        while let key = try scanner.nextKey(first: &first) {
            if scanner.string(key, equals: "content") || scanner.string(key, equals: "refusal")
                || scanner.string(key, equals: "reasoning_content") {
                try appendIfString(&scanner, text: &text)
            } else if scanner.string(key, equals: "tool_calls"), scanner.peekSignificant() == UInt8(ascii: "[") {
                try scanner.enterArray()
                var firstCall = true
                while try scanner.nextElement(first: &firstCall) {
                    try readObject(&scanner) { key, scanner throws(JSONParseError) in
                        if scanner.string(key, equals: "function") {
                            try readFunction(&scanner, text: &text)
                        } else {
                            try scanner.skipValue()
                        }
                    }
                }
            } else if scanner.string(key, equals: "function_call") {
                try readFunction(&scanner, text: &text)
            } else {
                try scanner.skipValue()
            }
        }
    }

    private static func readFunction(_ scanner: inout JSONScanner, text: inout [UInt8]) throws(JSONParseError) {
        try readObject(&scanner) { key, scanner throws(JSONParseError) in
            if scanner.string(key, equals: "name") || scanner.string(key, equals: "arguments") {
                try appendIfString(&scanner, text: &text)
            } else {
                try scanner.skipValue()
            }
        }
    }

    /// Calls `member` for each key of the object at the cursor (which must consume the value);
    /// skips the value when it is not an object.
    private static func readObject(_ scanner: inout JSONScanner,
                                   _ member: (ScannedString, inout JSONScanner) throws(JSONParseError) -> Void) throws(JSONParseError) {
        guard scanner.peekSignificant() == UInt8(ascii: "{") else { return try scanner.skipValue() }
        try scanner.enterObject()
        var first = true
        while let key = try scanner.nextKey(first: &first) { try member(key, &scanner) }
    }

    private static func appendIfString(_ scanner: inout JSONScanner, text: inout [UInt8]) throws(JSONParseError) {
        guard scanner.peekSignificant() == UInt8(ascii: "\"") else { return try scanner.skipValue() }
        scanner.appendDecoded(try scanner.scanString(), to: &text)
    }
}
