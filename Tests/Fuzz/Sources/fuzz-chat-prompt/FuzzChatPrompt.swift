import Foundation
import FuzzSupport
import SluiceCore
import SluiceTokenizer

/// `ChatPromptCounter` (and the BPE tokenizer under it) on chat bodies read by
/// `OpenAIRequest.parse`, and the tokenizer alone on the same bytes as raw text.
///
/// Needs the rank files: `SLUICE_TOKENIZER_DIR`, else `<repo>/.cache/tokenizer` (scripts/setup).
///
/// Properties:
/// - a prompt's count is at least what its messages' framing costs, and the same with and
///   without a `TokenCountCache` (one cache per encoding lives for the whole run, so entries of
///   earlier inputs are there to be confused with);
/// - the size guard (`maxPromptBytes`) refuses a prompt exactly when its strings hold more bytes;
/// - for any bytes, counting gives as many tokens as encoding, on the buffer and on the repaired
///   string alike.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = fuzzInput(data, size)
    let tokenizers = Loaded.tokenizers

    if let request = try? OpenAIRequest.parse(input, endpoint: .chatCompletions), case .chat(let prompt) = request.prompt {
        for (encoding, cache) in [(tokenizers.cl100k, Loaded.cl100kCache), (tokenizers.o200k, Loaded.o200kCache)] {
            let counter = ChatPromptCounter(encoding: encoding)
            do {
                let plain = try counter.count(prompt)
                let cached = try counter.count(prompt, cache: cache)
                let again = try counter.count(prompt, cache: cache)
                require(plain == cached && cached == again, "\(encoding.name): \(plain) without the cache, \(cached) then \(again) with it")
                let framing = ChatPromptCounter.replyPrimerTokens + prompt.messages.count * (ChatPromptCounter.tokensPerMessage + 1)
                require(plain >= framing, "\(encoding.name): \(plain) tokens for \(prompt.messages.count) messages")
            } catch {
                fatalError("property violated: \(encoding.name): a \(input.count)-byte body is too large to count: \(error)")
            }
        }
        // The size guard counts every string the count encodes: refused one byte below the total,
        // counted at the total.
        let bytes = promptBytes(prompt)
        let below = Result { () throws(TokenizerError) in try ChatPromptCounter(encoding: tokenizers.o200k, maxPromptBytes: bytes - 1).count(prompt) }
        require(below == .failure(.inputTooLarge(byteCount: bytes, limit: bytes - 1)), "\(bytes) prompt bytes, limit \(bytes - 1): \(below)")
        let at = Result { () throws(TokenizerError) in try ChatPromptCounter(encoding: tokenizers.o200k, maxPromptBytes: bytes).count(prompt) }
        require((try? at.get()) != nil, "\(bytes) prompt bytes, limit \(bytes): \(at)")
    }

    let bytes = input.assumingMemoryBound(to: UInt8.self)
    let text = String(decoding: bytes, as: UTF8.self)
    for encoding in [tokenizers.cl100k, tokenizers.o200k] {
        let counted = encoding.countOrdinary(utf8: bytes)
        let encoded = encoding.encodeOrdinary(utf8: bytes).count
        let ofString = encoding.countOrdinary(text)
        require(counted == encoded && encoded == ofString,
                "\(encoding.name): \(counted) counted, \(encoded) encoded, \(ofString) counted from the repaired string")
    }
    return 0
}

/// The UTF-8 bytes of every string in `prompt` that the counter encodes.
private func promptBytes(_ prompt: ChatPrompt) -> Int {
    var total = prompt.extraText.reduce(0) { $0 + $1.utf8.count }
    for message in prompt.messages {
        total += message.role.utf8.count + (message.name?.utf8.count ?? 0) + message.otherStrings.reduce(0) { $0 + $1.utf8.count }
        for case .text(let text) in message.content { total += text.utf8.count }
    }
    for tool in prompt.tools {
        total += tool.name.utf8.count + tool.description.utf8.count + (tool.unmodelledSchemaJSON?.utf8.count ?? 0)
        for property in tool.properties {
            total += property.name.utf8.count + property.type.utf8.count + property.description.utf8.count
                + property.enumValues.reduce(0) { $0 + $1.utf8.count }
        }
    }
    return total
}

/// Loaded once per process, before the first input (see main.swift).
enum Loaded {
    static let tokenizers: Tokenizers = {
        let directory = ProcessInfo.processInfo.environment["SLUICE_TOKENIZER_DIR"].flatMap { $0.isEmpty ? nil : $0 }
            ?? URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../../../../.cache/tokenizer").standardized.path
        do {
            return try Tokenizers.load(directory: directory)
        } catch {
            FileHandle.standardError.write(Data("fuzz-chat-prompt: cannot load the tokenizer from \(directory): \(error)\n".utf8))
            exit(2)
        }
    }()
    nonisolated(unsafe) static let cl100kCache = TokenCountCache(encoding: tokenizers.cl100k)
    nonisolated(unsafe) static let o200kCache = TokenCountCache(encoding: tokenizers.o200k)
}
