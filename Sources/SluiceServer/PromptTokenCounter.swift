import NIOPosix
import SluiceCore
import SluiceTokenizer

/// The prompt-token count the gateway charges for a request: shared by the pipeline's count step
/// and `sluice tokens --chat`, so the CLI always agrees with the gateway.
public struct PromptTokenCounter: Sendable {
    public let tokenizers: Tokenizers
    public let maxPromptBytes: Int
    /// Per-thread token-count caches (one per encoding): requests run on their connection's event
    /// loop thread, so each loop reuses the counts of the conversations it serves, with no lock.
    private let caches = ThreadSpecificVariable<ThreadCaches>()
    private let cacheBudgetBytes: Int
    /// The longest token of either encoding (128 bytes for both): fixed at load, so the bound takes
    /// no lookup per request.
    let longestTokenBytes: Int

    public init(tokenizers: Tokenizers, maxPromptBytes: Int = ChatPromptCounter.defaultMaxPromptBytes, cacheBudgetBytes: Int = TokenCountCache.defaultBudgetBytes) {
        self.tokenizers = tokenizers
        self.maxPromptBytes = maxPromptBytes
        self.cacheBudgetBytes = cacheBudgetBytes
        longestTokenBytes = max(tokenizers.encoding(.cl100k_base).longestTokenBytes, tokenizers.encoding(.o200k_base).longestTokenBytes)
    }

    /// This thread's cache for `encoding` (created on first use).
    func cache(for encoding: BPEEncoding) -> TokenCountCache {
        let threadCaches = caches.valueForThisThread(orMake: ThreadCaches.init)
        if let cache = threadCaches.byEncoding[ObjectIdentifier(encoding)] { return cache }
        let cache = TokenCountCache(encoding: encoding, budgetBytes: cacheBudgetBytes)
        threadCaches.byEncoding[ObjectIdentifier(encoding)] = cache
        return cache
    }

    /// UTF-8 bytes the count of `request` reads (O(1) per string): what its cost in CPU follows.
    public func promptBytes(_ request: OpenAIRequest) -> Int {
        switch request.prompt {
        case .chat(let prompt): return ChatPromptCounter.utf8ByteCount(of: prompt)
        case .texts(let texts): return texts.reduce(0) { $0 + $1.utf8.count }
        case .tokenCount: return 0
        }
    }

    /// The fewest tokens a prompt of `promptBytes` bytes can have, whatever its model: no token of
    /// any loaded encoding is longer than ``longestTokenBytes``.
    public func minimumTokens(promptBytes: Int) -> Int {
        (promptBytes + longestTokenBytes - 1) / longestTokenBytes
    }

    /// Exact prompt tokens of `request` for its model: OpenAI's chat framing for chat requests, the
    /// plain text (or the given token ids) for completions and embeddings.
    ///
    /// With `stoppingAbove`, the count stops once it passes that many tokens and returns some number
    /// above it: enough to refuse a prompt that can never fit, at a bounded cost.
    public func count(_ request: OpenAIRequest, stoppingAbove limit: Int? = nil) throws(GatewayError) -> Int {
        do {
            switch request.prompt {
            case .chat(let prompt):
                let counter = tokenizers.chatPromptCounter(forModel: request.model, maxPromptBytes: maxPromptBytes)
                return try counter.count(prompt, cache: cache(for: counter.encoding), stoppingAbove: limit)
            case .texts(let texts):
                let encoding = tokenizers.encoding(forModel: request.model)
                let bytes = texts.reduce(0) { $0 + $1.utf8.count }
                guard bytes <= maxPromptBytes else { throw TokenizerError.inputTooLarge(byteCount: bytes, limit: maxPromptBytes) }
                var total = 0
                for text in texts {
                    if let limit {
                        if total > limit { break }
                        total += encoding.countOrdinary(text, stoppingAbove: limit - total)
                    } else {
                        total += encoding.countOrdinary(text)
                    }
                }
                return total
            case .tokenCount(let count):
                return count
            }
        } catch {
            throw .promptTooLarge(limitBytes: maxPromptBytes)
        }
    }
}

/// One thread's token-count caches. `@unchecked Sendable`: an instance is only ever reached through
/// its own thread's slot of a `ThreadSpecificVariable`, never shared.
private final class ThreadCaches: @unchecked Sendable {
    var byEncoding: [ObjectIdentifier: TokenCountCache] = [:]
}
