import Foundation
import NIOCore
import NIOHTTP1

/// The OpenAI endpoints the mock answers.
enum MockEndpoint: Sendable {
    case chatCompletions
    case completions
    case embeddings
    case models

    /// The endpoint for a method and path (query string already removed), nil for anything else.
    init?(method: HTTPMethod, path: Substring) {
        switch (method, path) {
        case (.POST, "/v1/chat/completions"): self = .chatCompletions
        case (.POST, "/v1/completions"): self = .completions
        case (.POST, "/v1/embeddings"): self = .embeddings
        case (.GET, "/v1/models"): self = .models
        default: return nil
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
        guard endpoint != .models else { return }
        let object: [String: Any]
        do {
            let parsed = try JSONSerialization.jsonObject(with: Data(body.readableBytesView))
            guard let dictionary = parsed as? [String: Any] else {
                throw MockRequestError(message: "The request body must be a JSON object.", param: nil)
            }
            object = dictionary
        } catch let error as MockRequestError {
            throw error
        } catch {
            throw MockRequestError(
                message: "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON.)",
                param: nil)
        }

        guard let model = object["model"] as? String else {
            throw MockRequestError(message: "you must provide a model parameter", param: "model")
        }
        self.model = model
        self.stream = Self.bool(object["stream"]) ?? false
        if let options = object["stream_options"] as? [String: Any] {
            self.includeUsage = Self.bool(options["include_usage"]) ?? false
        }
        self.maxTokens = Self.integer(object["max_completion_tokens"]) ?? Self.integer(object["max_tokens"])
        if let maxTokens, maxTokens < 1 {
            throw MockRequestError(message: "max_tokens must be at least 1, got \(maxTokens).", param: "max_tokens")
        }
        if object["n"] != nil, !(object["n"] is NSNull) {
            guard let n = Self.integer(object["n"]), (1...MockLimits.maximumChoices).contains(n) else {
                throw MockRequestError(
                    message: "n must be an integer between 1 and \(MockLimits.maximumChoices).", param: "n")
            }
            self.choiceCount = n
        }

        switch endpoint {
        case .chatCompletions:
            guard let messages = object["messages"] as? [Any] else {
                throw MockRequestError(message: "Missing required parameter: 'messages'.", param: "messages")
            }
            var textBytes = 0
            for case let message as [String: Any] in messages {
                textBytes += Self.contentBytes(message["content"])
            }
            self.estimatedPromptTokens = Self.tokensEstimate(utf8Bytes: textBytes)
        case .completions:
            guard let prompt = object["prompt"] else {
                throw MockRequestError(message: "Missing required parameter: 'prompt'.", param: "prompt")
            }
            self.estimatedPromptTokens = Self.promptEstimate(prompt).tokens
        case .embeddings:
            guard let input = object["input"] else {
                throw MockRequestError(message: "Missing required parameter: 'input'.", param: "input")
            }
            let estimate = Self.promptEstimate(input)
            self.estimatedPromptTokens = estimate.tokens
            self.embeddingInputCount = estimate.inputs
            self.base64Embeddings = (object["encoding_format"] as? String) == "base64"
        case .models:
            break
        }
    }

    /// Bytes ÷ 4, rounded up: the usual rule of thumb for English text.
    static func tokensEstimate(utf8Bytes: Int) -> Int {
        (utf8Bytes + 3) / 4
    }

    /// UTF-8 bytes of a message `content`: a string, or an array of parts whose `text` fields count.
    private static func contentBytes(_ content: Any?) -> Int {
        if let text = content as? String {
            return text.utf8.count
        }
        var total = 0
        if let parts = content as? [Any] {
            for case let part as [String: Any] in parts {
                if let text = part["text"] as? String {
                    total += text.utf8.count
                }
            }
        }
        return total
    }

    /// Estimate for a `prompt` / `input`: a string, an array of strings, an array of token ids, or an array
    /// of arrays of token ids. Returns the token estimate and the number of separate inputs.
    private static func promptEstimate(_ value: Any) -> (tokens: Int, inputs: Int) {
        if let text = value as? String {
            return (tokensEstimate(utf8Bytes: text.utf8.count), 1)
        }
        guard let items = value as? [Any] else { return (0, 1) }
        if !items.isEmpty, items.allSatisfy({ !($0 is String) && !($0 is [Any]) }) {
            return (items.count, 1)  // one input given as token ids
        }
        var tokens = 0
        for item in items {
            if let text = item as? String {
                tokens += tokensEstimate(utf8Bytes: text.utf8.count)
            } else if let ids = item as? [Any] {
                tokens += ids.count
            }
        }
        return (tokens, items.count)
    }

    private static func bool(_ value: Any?) -> Bool? {
        value as? Bool
    }

    private static func integer(_ value: Any?) -> Int? {
        guard let value else { return nil }
        if let integer = value as? Int { return integer }
        if let double = value as? Double, double.rounded() == double, abs(double) < 1e15 { return Int(double) }
        return nil
    }
}
