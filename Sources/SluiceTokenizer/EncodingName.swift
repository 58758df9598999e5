/// The byte-pair encodings Sluice implements, named as tiktoken names them.
public enum EncodingName: String, Sendable, CaseIterable {
    /// gpt-3.5-turbo, gpt-4, gpt-4-turbo, text-embedding-3-*, text-embedding-ada-002.
    case cl100k_base
    /// gpt-4o, gpt-4.1, gpt-4.5, gpt-5, o1, o3, o4-mini and unknown models.
    case o200k_base

    /// The rank file's name inside the tokenizer directory.
    public var fileName: String { "\(rawValue).tiktoken" }

    /// SHA-256 of the rank file as published by OpenAI (lowercase hex). Loading refuses any other file.
    public var expectedSHA256: String {
        switch self {
        case .cl100k_base: return "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7"
        case .o200k_base: return "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d"
        }
    }

    /// The number of mergeable ranks in the rank file (special tokens excluded).
    public var rankCount: Int {
        switch self {
        case .cl100k_base: return 100_256
        case .o200k_base: return 199_998
        }
    }
}
