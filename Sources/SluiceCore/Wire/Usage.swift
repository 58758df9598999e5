/// Token usage as an OpenAI response reports it (`usage` object). Detail objects
/// (`prompt_tokens_details`, `completion_tokens_details`) are ignored.
public struct Usage: Sendable, Equatable, Hashable {
    public var promptTokens: Int
    public var completionTokens: Int
    public var totalTokens: Int

    /// `totalTokens` defaults to the sum of the other two.
    public init(promptTokens: Int, completionTokens: Int, totalTokens: Int? = nil) {
        self.promptTokens = promptTokens
        self.completionTokens = completionTokens
        self.totalTokens = totalTokens ?? promptTokens + completionTokens
    }

    /// Reads a `usage` object. Needs a non-negative integer `prompt_tokens`;
    /// `completion_tokens` defaults to 0 (embeddings have none), `total_tokens` to the sum.
    /// - Returns: nil when the object does not look like usage.
    public init?(_ object: JSONObject) {
        func count(_ name: String) -> Int?? {
            guard let value = object[name], !value.isNull else { return .some(nil) }
            guard case .number(let number) = value, let integer = number.intValue, integer >= 0 else { return nil }
            return .some(integer)
        }
        guard let prompt = count("prompt_tokens"), let promptTokens = prompt,
              let completion = count("completion_tokens"), let total = count("total_tokens") else { return nil }
        self.init(promptTokens: promptTokens, completionTokens: completion ?? 0, totalTokens: total)
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
                    guard case .object(let object) = try JSONReader.readValue(&scanner) else { return nil }
                    return Usage(object)
                }
                try scanner.skipValue()
            }
            return nil
        } catch {
            return nil
        }
    }

    /// The top-level `usage` of a non-streamed response body held in an array.
    public static func fromResponseBody(_ body: [UInt8]) -> Usage? {
        body.withUnsafeBytes { fromResponseBody($0) }
    }
}
