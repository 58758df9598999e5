/// Which encoding tokenizes a model's prompts: tiktoken's table for OpenAI model names, plus
/// per-model overrides from the configuration (for deployments with custom names).
public struct ModelEncodings: Sendable, Equatable {
    /// Exact model names mapped to an encoding; consulted before the built-in rules.
    public var overrides: [String: EncodingName]

    /// Models whose names are not recognised (and not overridden) use this encoding: every
    /// current OpenAI chat model uses o200k_base.
    public static let fallback = EncodingName.o200k_base

    public init(overrides: [String: EncodingName] = [:]) {
        self.overrides = overrides
    }

    /// The encoding for `model`: an override if present, else tiktoken's exact names and
    /// prefixes (`ft:` fine-tunes included), else `ModelEncodings.fallback`.
    public func encodingName(forModel model: String) -> EncodingName {
        if let override = overrides[model] { return override }
        if let exact = Self.exactNames[model] { return exact }
        for (prefix, encoding) in Self.prefixes where model.hasPrefix(prefix) {
            return encoding
        }
        return Self.fallback
    }

    /// Exact names from tiktoken's `MODEL_TO_ENCODING` (the chat and embedding models).
    private static let exactNames: [String: EncodingName] = [
        "o1": .o200k_base, "o3": .o200k_base, "o4-mini": .o200k_base,
        "gpt-5": .o200k_base, "gpt-4.1": .o200k_base, "gpt-4o": .o200k_base,
        "gpt-4": .cl100k_base, "gpt-3.5-turbo": .cl100k_base, "gpt-3.5": .cl100k_base,
        "gpt-35-turbo": .cl100k_base,
        "text-embedding-ada-002": .cl100k_base,
        "text-embedding-3-small": .cl100k_base, "text-embedding-3-large": .cl100k_base,
    ]

    /// Prefixes from tiktoken's `MODEL_PREFIX_TO_ENCODING`, checked in order. The order matters:
    /// "ft:gpt-4o" before "ft:gpt-4". ("gpt-4o-" and "gpt-4-" cannot both match.)
    private static let prefixes: [(String, EncodingName)] = [
        ("o1-", .o200k_base), ("o3-", .o200k_base), ("o4-mini-", .o200k_base),
        ("gpt-5", .o200k_base), ("gpt-4.5-", .o200k_base), ("gpt-4.1-", .o200k_base),
        ("chatgpt-4o-", .o200k_base), ("gpt-4o-", .o200k_base),
        ("gpt-4-", .cl100k_base), ("gpt-3.5-turbo-", .cl100k_base), ("gpt-35-turbo-", .cl100k_base),
        ("ft:gpt-4o", .o200k_base), ("ft:gpt-4", .cl100k_base), ("ft:gpt-3.5-turbo", .cl100k_base),
        ("ft:davinci-002", .cl100k_base), ("ft:babbage-002", .cl100k_base),
    ]
}
