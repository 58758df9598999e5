import NIOCore
import NIOHTTP1

/// The OpenAI endpoints the mock answers.
enum MockEndpoint: Sendable, Equatable {
    case chatCompletions
    case completions
    case embeddings
    case models
    /// `POST /v1/responses` (the Responses API).
    case responses
    /// `GET /v1/responses/{id}`: the mock stores nothing and answers a completed response with that id.
    case retrieveResponse(String)
    /// `DELETE /v1/responses/{id}`.
    case deleteResponse(String)

    /// True for the endpoints whose body is read.
    var readsBody: Bool {
        switch self {
        case .chatCompletions, .completions, .embeddings, .responses: true
        case .models, .retrieveResponse, .deleteResponse: false
        }
    }

    /// The endpoint for a method and path (query string already removed), nil for anything else.
    init?(method: HTTPMethod, path: Substring) {
        // Azure OpenAI's form: /openai/deployments/{deployment}/chat/completions (and the others).
        let azurePrefix = "/openai/deployments/"
        if path.hasPrefix(azurePrefix) {
            let rest = path.dropFirst(azurePrefix.count)
            guard let slash = rest.firstIndex(of: "/"), slash > rest.startIndex else { return nil }
            switch (method, rest[slash...]) {
            case (.POST, "/chat/completions"): self = .chatCompletions
            case (.POST, "/completions"): self = .completions
            case (.POST, "/embeddings"): self = .embeddings
            default: return nil
            }
            return
        }
        switch (method, path) {
        case (.POST, "/v1/chat/completions"): self = .chatCompletions
        case (.POST, "/v1/completions"): self = .completions
        case (.POST, "/v1/embeddings"): self = .embeddings
        case (.GET, "/v1/models"): self = .models
        case (.POST, "/v1/responses"): self = .responses
        default:
            let prefix = "/v1/responses/"
            guard path.hasPrefix(prefix), path.count > prefix.count else { return nil }
            let id = String(path.dropFirst(prefix.count))
            switch method {
            case .GET: self = .retrieveResponse(id)
            case .DELETE: self = .deleteResponse(id)
            default: return nil
            }
        }
    }
}

/// The fields of a request body the mock acts on. Everything else in the body is ignored.
struct MockRequestFields: Sendable {
    var model: String?
    var stream = false
    var includeUsage = false
    /// `max_completion_tokens`, else `max_tokens`.
    var maxTokens: Int?
    var choiceCount = 1
    /// Prompt tokens as the mock reports them: an estimate, UTF-8 bytes of the prompt text ÷ 4 rounded up,
    /// plus one per token id when the prompt is given as ids. Sluice counts prompts itself; this number only
    /// has to be plausible.
    var estimatedPromptTokens = 0
    /// Number of inputs of an embeddings request.
    var embeddingInputCount = 0
    /// `encoding_format: "base64"` on an embeddings request.
    var base64Embeddings = false
    /// A Responses request continuing a stored conversation (`previous_response_id`): the mock reports
    /// `MockLimits.previousResponseInputTokens` more input tokens, standing in for the stored context
    /// that the gateway cannot see.
    var continuesPreviousResponse = false
}

/// A request body the mock refuses, answered with 400 and OpenAI's `invalid_request_error`.
struct MockRequestError: Error, Sendable {
    let message: String
    let param: String?
}

extension MockRequestFields {
    /// Reads the fields `endpoint` needs from a JSON body.
    /// - Throws: `MockRequestError` when the body is not a JSON object or a required field is missing or
    ///   of the wrong type, in the same cases where OpenAI answers 400.
    init(endpoint: MockEndpoint, body: ByteBuffer) throws(MockRequestError) {
        guard endpoint.readsBody else { return }
        var seen = SeenFields()
        do {
            try body.withUnsafeReadableBytes { bytes throws(RequestBodyScanner.Failure) in
                var scanner = RequestBodyScanner(bytes: bytes)
                scanner.skipWhitespace()
                guard try scanner.peekKind() == .object else { throw .syntax }
                try scanner.readObject { scanner, key throws(RequestBodyScanner.Failure) in
                    try self.readField(key, endpoint: endpoint, from: &scanner, seen: &seen)
                }
            }
        } catch {
            switch error {
            case .type(let field):
                throw MockRequestError(message: "Invalid type for '\(field)'.", param: field)
            case .syntax:
                throw MockRequestError(
                    message: "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)",
                    param: nil)
            }
        }

        guard model != nil else {
            throw MockRequestError(message: "you must provide a model parameter", param: "model")
        }
        if let maxTokens, maxTokens < 0 {
            throw MockRequestError(message: "max_tokens must be at least 0, got \(maxTokens).", param: "max_tokens")
        }
        guard (1...MockLimits.maximumChoices).contains(choiceCount) else {
            throw MockRequestError(
                message: "n must be an integer between 1 and \(MockLimits.maximumChoices).", param: "n")
        }
        switch endpoint {
        case .chatCompletions where !seen.prompt:
            throw MockRequestError(message: "Missing required parameter: 'messages'.", param: "messages")
        case .completions where !seen.prompt:
            throw MockRequestError(message: "Missing required parameter: 'prompt'.", param: "prompt")
        case .embeddings where !seen.prompt:
            throw MockRequestError(message: "Missing required parameter: 'input'.", param: "input")
        case .responses where !seen.prompt && !continuesPreviousResponse:
            throw MockRequestError(message: "Missing required parameter: 'input'.", param: "input")
        default:
            break
        }
        if continuesPreviousResponse {
            estimatedPromptTokens += MockLimits.previousResponseInputTokens
        }
        if let maxCompletionTokens = seen.maxCompletionTokens {
            maxTokens = maxCompletionTokens  // the newer name wins, as with OpenAI
        }
    }

    /// Bytes ÷ 4, rounded up: the usual rule of thumb for English text.
    static func tokensEstimate(utf8Bytes: Int) -> Int {
        (utf8Bytes + 3) / 4
    }

    /// What was found besides the stored fields.
    private struct SeenFields {
        /// `messages`, `prompt` or `input` (whichever the endpoint requires) was present.
        var prompt = false
        var maxCompletionTokens: Int?
    }

    private mutating func readField(
        _ key: [UInt8], endpoint: MockEndpoint, from scanner: inout RequestBodyScanner, seen: inout SeenFields
    ) throws(RequestBodyScanner.Failure) {
        switch key {
        case Key.model:
            guard try scanner.peekKind() == .string else { throw .type(field: "model") }
            model = try scanner.readString()
        case Key.stream:
            stream = try Self.optionalBool(&scanner, field: "stream") ?? false
        case Key.streamOptions:
            switch try scanner.peekKind() {
            case .null: try scanner.readNull()
            case .object:
                try scanner.readMembers(depth: 1) { scanner, key throws(RequestBodyScanner.Failure) in
                    if key == Key.includeUsage {
                        self.includeUsage = try Self.optionalBool(&scanner, field: "stream_options.include_usage") ?? false
                    } else {
                        try scanner.skipValue(depth: 2)
                    }
                }
            default: throw .type(field: "stream_options")
            }
        case Key.maxTokens:
            maxTokens = try Self.optionalInteger(&scanner, field: "max_tokens")
        case Key.maxCompletionTokens:
            seen.maxCompletionTokens = try Self.optionalInteger(&scanner, field: "max_completion_tokens")
        case Key.n:
            choiceCount = try Self.optionalInteger(&scanner, field: "n") ?? 1
        case Key.messages where endpoint == .chatCompletions:
            guard try scanner.peekKind() == .array else { throw .type(field: "messages") }
            seen.prompt = true
            var textBytes = 0
            try scanner.readElements(depth: 1) { scanner throws(RequestBodyScanner.Failure) in
                guard try scanner.peekKind() == .object else { throw .type(field: "messages") }
                try scanner.readMembers(depth: 2) { scanner, key throws(RequestBodyScanner.Failure) in
                    if key == Key.content {
                        textBytes += try Self.contentBytes(&scanner)
                    } else {
                        try scanner.skipValue(depth: 3)
                    }
                }
            }
            estimatedPromptTokens = Self.tokensEstimate(utf8Bytes: textBytes)
        case Key.prompt where endpoint == .completions, Key.input where endpoint == .embeddings:
            seen.prompt = true
            if endpoint == .completions, try scanner.peekKind() == .null {
                // Nullable, defaulting to the one token `<|endoftext|>`.
                try scanner.readNull()
                estimatedPromptTokens = 1
                return
            }
            let estimate = try Self.promptEstimate(&scanner, field: endpoint == .completions ? "prompt" : "input")
            estimatedPromptTokens = estimate.tokens
            embeddingInputCount = estimate.inputs
        case Key.input where endpoint == .responses:
            seen.prompt = true
            estimatedPromptTokens += Self.tokensEstimate(utf8Bytes: try Self.responsesInputBytes(&scanner))
        case Key.instructions where endpoint == .responses:
            switch try scanner.peekKind() {
            case .null: try scanner.readNull()
            case .string: estimatedPromptTokens += Self.tokensEstimate(utf8Bytes: try scanner.readStringLength())
            default: throw .type(field: "instructions")
            }
        case Key.maxOutputTokens where endpoint == .responses:
            maxTokens = try Self.optionalInteger(&scanner, field: "max_output_tokens")
        case Key.previousResponseID where endpoint == .responses:
            switch try scanner.peekKind() {
            case .null: try scanner.readNull()
            case .string:
                _ = try scanner.readStringLength()
                continuesPreviousResponse = true
            default: throw .type(field: "previous_response_id")
            }
        case Key.encodingFormat where endpoint == .embeddings:
            switch try scanner.peekKind() {
            case .null: try scanner.readNull()
            case .string: base64Embeddings = try scanner.readStringBytes() == Key.base64
            default: throw .type(field: "encoding_format")
            }
        default:
            try scanner.skipValue()
        }
    }

    /// UTF-8 bytes of a message `content`: a string, or an array of parts whose `text` fields count.
    private static func contentBytes(_ scanner: inout RequestBodyScanner) throws(RequestBodyScanner.Failure) -> Int {
        switch try scanner.peekKind() {
        case .string:
            return try scanner.readStringLength()
        case .array:
            var total = 0
            try scanner.readElements(depth: 3) { scanner throws(RequestBodyScanner.Failure) in
                guard try scanner.peekKind() == .object else {
                    try scanner.skipValue(depth: 4)
                    return
                }
                try scanner.readMembers(depth: 4) { scanner, key throws(RequestBodyScanner.Failure) in
                    if key == Key.text, try scanner.peekKind() == .string {
                        total += try scanner.readStringLength()
                    } else {
                        try scanner.skipValue(depth: 5)
                    }
                }
            }
            return total
        default:
            try scanner.skipValue(depth: 3)  // null (assistant tool calls) and the like carry no text
            return 0
        }
    }

    /// UTF-8 bytes of a Responses `input`: a string, or an array of items whose `content` (a string, or
    /// parts with `text`) counts; other item fields (function call output and the like) are ignored.
    private static func responsesInputBytes(_ scanner: inout RequestBodyScanner) throws(RequestBodyScanner.Failure) -> Int {
        switch try scanner.peekKind() {
        case .string:
            return try scanner.readStringLength()
        case .array:
            var total = 0
            try scanner.readElements(depth: 1) { scanner throws(RequestBodyScanner.Failure) in
                guard try scanner.peekKind() == .object else { throw .type(field: "input") }
                try scanner.readMembers(depth: 2) { scanner, key throws(RequestBodyScanner.Failure) in
                    if key == Key.content {
                        total += try Self.contentBytes(&scanner)
                    } else {
                        try scanner.skipValue(depth: 3)
                    }
                }
            }
            return total
        default:
            throw .type(field: "input")
        }
    }

    /// Estimate for a `prompt` / `input`: a string, an array of strings, an array of token ids, or an array
    /// of arrays of token ids. Returns the token estimate and the number of separate inputs.
    private static func promptEstimate(
        _ scanner: inout RequestBodyScanner, field: String
    ) throws(RequestBodyScanner.Failure) -> (tokens: Int, inputs: Int) {
        switch try scanner.peekKind() {
        case .string:
            return (tokensEstimate(utf8Bytes: try scanner.readStringLength()), 1)
        case .array:
            var tokens = 0
            var items = 0
            var tokenIDs = 0
            try scanner.readElements(depth: 1) { scanner throws(RequestBodyScanner.Failure) in
                switch try scanner.peekKind() {
                case .string:
                    items += 1
                    tokens += tokensEstimate(utf8Bytes: try scanner.readStringLength())
                case .number:
                    tokenIDs += 1
                    _ = try scanner.readNumber()
                case .array:
                    items += 1
                    try scanner.readElements(depth: 2) { scanner throws(RequestBodyScanner.Failure) in
                        guard try scanner.peekKind() == .number else { throw .type(field: field) }
                        _ = try scanner.readNumber()
                        tokens += 1
                    }
                default:
                    throw .type(field: field)
                }
            }
            // A flat array of numbers is one input given as token ids.
            if tokenIDs > 0 {
                guard items == 0 else { throw .type(field: field) }
                return (tokenIDs, 1)
            }
            return (tokens, items)
        default:
            throw .type(field: field)
        }
    }

    private static func optionalBool(
        _ scanner: inout RequestBodyScanner, field: String
    ) throws(RequestBodyScanner.Failure) -> Bool? {
        switch try scanner.peekKind() {
        case .bool: return try scanner.readBool()
        case .null:
            try scanner.readNull()
            return nil
        default: throw .type(field: field)
        }
    }

    private static func optionalInteger(
        _ scanner: inout RequestBodyScanner, field: String
    ) throws(RequestBodyScanner.Failure) -> Int? {
        switch try scanner.peekKind() {
        case .number:
            guard let value = try scanner.readNumber() else { throw .type(field: field) }
            return value
        case .null:
            try scanner.readNull()
            return nil
        default: throw .type(field: field)
        }
    }

    /// Member names, as bytes to compare with the scanner's keys.
    private enum Key {
        static let model = Array("model".utf8)
        static let stream = Array("stream".utf8)
        static let streamOptions = Array("stream_options".utf8)
        static let includeUsage = Array("include_usage".utf8)
        static let maxTokens = Array("max_tokens".utf8)
        static let maxCompletionTokens = Array("max_completion_tokens".utf8)
        static let n = Array("n".utf8)
        static let messages = Array("messages".utf8)
        static let content = Array("content".utf8)
        static let text = Array("text".utf8)
        static let prompt = Array("prompt".utf8)
        static let input = Array("input".utf8)
        static let encodingFormat = Array("encoding_format".utf8)
        static let base64 = Array("base64".utf8)
        static let instructions = Array("instructions".utf8)
        static let maxOutputTokens = Array("max_output_tokens".utf8)
        static let previousResponseID = Array("previous_response_id".utf8)
    }
}
