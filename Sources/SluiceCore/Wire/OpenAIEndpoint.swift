import SluiceTokenizer

/// The OpenAI endpoints whose requests Sluice reads, counts and limits.
public enum OpenAIEndpoint: String, Sendable, Hashable, CaseIterable {
    /// `POST /v1/chat/completions`: prompt in `messages` (+ `tools`, …); may stream.
    case chatCompletions
    /// `POST /v1/completions` (legacy): prompt in `prompt`; may stream.
    case completions
    /// `POST /v1/embeddings`: input tokens only, never streams.
    case embeddings
    /// `POST /v1/responses` (the Responses API): input in `instructions`, `input`, `tools`; may stream
    /// (`response.*` events, usage in the final `response.completed`).
    case responses

    /// The path below the API version, e.g. `/chat/completions`: what an upstream's `base_url`
    /// (which ends in the version, `…/v1`) is followed by. The one place the paths are spelled.
    public var pathBelowVersion: String {
        switch self {
        case .chatCompletions: "/chat/completions"
        case .completions: "/completions"
        case .embeddings: "/embeddings"
        case .responses: "/responses"
        }
    }

    /// The request path clients use, e.g. `/v1/chat/completions`.
    public var path: String { "/v1" + pathBelowVersion }

    /// The endpoint served at `path` (exact match, no query string), or nil.
    public init?(path: String) {
        guard let endpoint = Self.allCases.first(where: { $0.path == path }) else { return nil }
        self = endpoint
    }

    /// True when the endpoint accepts `stream` / `stream_options` and produces output tokens.
    public var producesCompletion: Bool { self != .embeddings }
}

/// What a request asks the model to read, in the form the prompt counter needs.
public enum PromptInput: Sendable, Equatable {
    /// A chat request's messages, tools and other prompt-side JSON.
    case chat(ChatPrompt)
    /// Completions `prompt` or embeddings `input` given as one or more strings.
    case texts([String])
    /// `prompt` / `input` given as token-id arrays: the number of ids, already the token count.
    case tokenCount(Int)
}
