import SluiceCore
import SluiceTokenizer

/// The prompt-token count the gateway charges for a request: shared by the pipeline's count step
/// and `sluice tokens --chat`, so the CLI always agrees with the gateway.
public struct PromptTokenCounter: Sendable {
    public let tokenizers: Tokenizers
    public let maxPromptBytes: Int

    public init(tokenizers: Tokenizers, maxPromptBytes: Int = ChatPromptCounter.defaultMaxPromptBytes) {
        self.tokenizers = tokenizers
        self.maxPromptBytes = maxPromptBytes
    }

    /// Exact prompt tokens of `request` for its model: OpenAI's chat framing for chat requests, the
    /// plain text (or the given token ids) for completions and embeddings.
    public func count(_ request: OpenAIRequest) throws(GatewayError) -> Int {
        do {
            switch request.prompt {
            case .chat(let prompt):
                return try tokenizers.chatPromptCounter(forModel: request.model, maxPromptBytes: maxPromptBytes).count(prompt)
            case .texts(let texts):
                let encoding = tokenizers.encoding(forModel: request.model)
                var total = 0
                for text in texts { total += try encoding.countOrdinary(text, limit: maxPromptBytes) }
                return total
            case .tokenCount(let count):
                return count
            }
        } catch {
            throw .invalidRequest(message: "The prompt is too large to process (limit \(maxPromptBytes) bytes).", param: nil)
        }
    }
}
