/// Token usage as an OpenAI response reports it (`usage` object), with two details:
/// `prompt_tokens_details.cached_tokens` (`cachedInputTokens`, priced as cached input) and
/// `completion_tokens_details.reasoning_tokens` (`reasoningTokens`; already included in the completion).
///
/// The Responses API's names are read too: `input_tokens` as `promptTokens`, `output_tokens` as
/// `completionTokens`, and its details `input_tokens_details.cached_tokens` and
/// `output_tokens_details.reasoning_tokens` (of the two names of a detail object, the last member counts).
public struct Usage: Sendable, Equatable, Hashable {
    public var promptTokens: Int
    public var completionTokens: Int
    public var totalTokens: Int
    /// Input tokens served from the prompt cache (part of `promptTokens`).
    public var cachedInputTokens: Int?
    /// Reasoning tokens (part of `completionTokens`).
    public var reasoningTokens: Int?

    /// The largest count read from a response (as `OpenAIRequest.maximumOutputTokens`): a larger
    /// one is not a real report, and it would overflow the sums made from it (the default total
    /// here, prompt + completion when settling).
    public static let maximumTokenCount = Int(Int32.max)

    /// `totalTokens` defaults to the sum of the other two.
    public init(promptTokens: Int, completionTokens: Int, totalTokens: Int? = nil) {
        self.promptTokens = promptTokens
        self.completionTokens = completionTokens
        self.totalTokens = totalTokens ?? promptTokens + completionTokens
    }

    /// The top-level `usage` of a non-streamed response body.
    /// - Returns: nil when the body is not a JSON object, has no `usage`, or it is malformed.
    ///   Members other than `usage` are skipped without being decoded.
    public static func fromResponseBody(_ body: UnsafeRawBufferPointer) -> Usage? {
        var scanner = JSONScanner(body, maxDepth: JSONReader.defaultMaxDepth)
        do throws(JSONParseError) {
            guard scanner.peekSignificant() == UInt8(ascii: "{") else { return nil }
            try scanner.enterObject()
            var first = true
            while let key = try scanner.nextKey(first: &first) {
                if scanner.string(key, equals: "usage") {
                    guard scanner.peekSignificant() == UInt8(ascii: "{") else { return nil }
                    return try read(&scanner)
                }
                try scanner.skipValue()
            }
            return nil
        } catch {
            return nil
        }
    }

    /// Reads the `usage` object at the scanner (which must be at its `{`) and consumes all of it,
    /// also when it does not look like usage (then nil). Needs a non-negative integer
    /// `prompt_tokens`; `completion_tokens` defaults to 0 (embeddings have none), `total_tokens` to
    /// the sum; null counts as absent; of duplicate members the last counts; a count above
    /// `maximumTokenCount` makes the usage invalid. Nothing is built: other members (the detail
    /// objects) are skipped.
    static func read(_ scanner: inout JSONScanner) throws(JSONParseError) -> Usage? {
        try scanner.enterObject()
        var prompt = Count.absent, completion = Count.absent, total = Count.absent
        var cached = Count.absent, reasoning = Count.absent
        var first = true
        while let key = try scanner.nextKey(first: &first) {
            if scanner.string(key, equals: "prompt_tokens") || scanner.string(key, equals: "input_tokens") {
                prompt = try readCount(&scanner)
            } else if scanner.string(key, equals: "completion_tokens") || scanner.string(key, equals: "output_tokens") {
                completion = try readCount(&scanner)
            } else if scanner.string(key, equals: "total_tokens") {
                total = try readCount(&scanner)
            } else if scanner.string(key, equals: "prompt_tokens_details") || scanner.string(key, equals: "input_tokens_details") {
                cached = try readDetail(&scanner, named: "cached_tokens")
            } else if scanner.string(key, equals: "completion_tokens_details") || scanner.string(key, equals: "output_tokens_details") {
                reasoning = try readDetail(&scanner, named: "reasoning_tokens")
            } else {
                try scanner.skipValue()
            }
        }
        guard case .value(let promptTokens) = prompt else { return nil }
        guard let completionTokens = completion.orAbsent, let totalTokens = total.orAbsent else { return nil }
        var usage = Usage(promptTokens: promptTokens, completionTokens: completionTokens ?? 0, totalTokens: totalTokens)
        // A malformed detail is ignored: it is informational, the totals are what is charged.
        if case .value(let value) = cached { usage.cachedInputTokens = value }
        if case .value(let value) = reasoning { usage.reasoningTokens = value }
        return usage
    }

    /// One count member: absent or null (no value), a non-negative integer, or anything else.
    private enum Count {
        case absent
        case value(Int)
        case invalid

        /// nil for invalid; .some(nil) for absent or null.
        var orAbsent: Int?? {
            switch self {
            case .absent: .some(nil)
            case .value(let value): .some(value)
            case .invalid: nil
            }
        }
    }

    /// One count inside a detail object (`{"cached_tokens": 3}`); absent when the value is no object.
    private static func readDetail(_ scanner: inout JSONScanner, named name: StaticString) throws(JSONParseError) -> Count {
        guard scanner.peekSignificant() == UInt8(ascii: "{") else {
            try scanner.skipValue()
            return .absent
        }
        try scanner.enterObject()
        var result = Count.absent
        var first = true
        while let key = try scanner.nextKey(first: &first) {
            if scanner.string(key, equals: name) { result = try readCount(&scanner) } else { try scanner.skipValue() }
        }
        return result
    }

    private static func readCount(_ scanner: inout JSONScanner) throws(JSONParseError) -> Count {
        // At the end of the input, `skipValue()` below throws.
        switch scanner.peekSignificant() ?? 0 {
        case UInt8(ascii: "-"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            var digits = try scanner.scanNumber()
            // An integer literal: a fraction or exponent is not a count, and neither is a negative
            // number (`-0` is zero).
            let negative = scanner.bytes[digits.lowerBound] == UInt8(ascii: "-")
            if negative { digits = digits.dropFirst() }
            var value = 0
            for byte in scanner.bytes[digits] {
                guard JSONScanner.isDigit(byte) else { return .invalid }
                value = value * 10 + Int(byte &- UInt8(ascii: "0"))
                // Checked per digit, so the arithmetic above cannot overflow either.
                guard value <= maximumTokenCount else { return .invalid }
            }
            return negative && value != 0 ? .invalid : .value(value)
        case UInt8(ascii: "n"), UInt8(ascii: "t"), UInt8(ascii: "f"):
            return try scanner.scanLiteral() == .null ? .absent : .invalid
        default:
            try scanner.skipValue()
            return .invalid
        }
    }

    /// The top-level `usage` of a non-streamed response body held in an array.
    public static func fromResponseBody(_ body: [UInt8]) -> Usage? {
        body.withUnsafeBytes { fromResponseBody($0) }
    }
}
