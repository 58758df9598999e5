import NIOCore

/// One streamed completion as OpenAI sends it, as a sequence of SSE events, and how far it has got.
///
/// Event order (`n` choices, `N` tokens per choice):
/// chat only: one role chunk per choice (`delta.role`, empty content); then `N × n` token chunks, the
/// choices interleaved per position; one finish chunk per choice; the usage chunk (`"choices":[]`) only
/// when the request set `stream_options.include_usage`; `data: [DONE]`.
struct CompletionStream {
    /// Chat completions (`chat.completion.chunk`, `delta.content`) or legacy completions
    /// (`text_completion`, `text`).
    enum Kind: Sendable {
        case chat
        case text
        /// The Responses API (`response.*` events, see `ResponsesEventWriter`).
        case responses
    }

    let kind: Kind
    let choices: Int
    let tokensPerChoice: Int
    let finishReason: FinishReason
    let includeUsage: Bool
    let usage: MockUsage
    /// `data: {"id":…,"model":…,"choices":[` — the same for every chunk of this stream, built once.
    private let chunkPrefix: ByteBuffer
    /// `chunkPrefix` + `{"index":`, the start of every token chunk.
    private let tokenChunkHead: ByteBuffer
    /// Per word, everything of a token chunk after the choice index (shared, built once per process).
    private let tokenChunkTails: [[UInt8]]

    /// The Responses API's events, for `.responses`.
    private var responsesEvents: ResponsesEventWriter?

    /// Index of the next event to write.
    private(set) var nextEvent = 0
    /// Token chunks written so far.
    private(set) var tokensSent = 0

    init(
        kind: Kind, identity: ResponseIdentity, choices: Int, tokensPerChoice: Int, finishReason: FinishReason,
        includeUsage: Bool, usage: MockUsage, allocator: ByteBufferAllocator
    ) {
        self.kind = kind
        self.choices = choices
        self.tokensPerChoice = tokensPerChoice
        self.finishReason = finishReason
        self.includeUsage = includeUsage
        self.usage = usage
        var prefix = allocator.buffer(capacity: 160 + identity.model.utf8.count)
        prefix.writeStaticString("data: {\"id\":")
        prefix.writeJSONString(identity.id)
        switch kind {
        case .chat: prefix.writeStaticString(",\"object\":\"chat.completion.chunk\",\"created\":")
        case .text, .responses: prefix.writeStaticString(",\"object\":\"text_completion\",\"created\":")
        }
        prefix.writeDecimal(identity.created)
        prefix.writeStaticString(",\"model\":")
        prefix.writeJSONString(identity.model)
        switch kind {
        case .chat: prefix.writeStaticString(",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_sluice_mock\",\"choices\":[")
        case .text, .responses: prefix.writeStaticString(",\"system_fingerprint\":\"fp_sluice_mock\",\"choices\":[")
        }
        self.chunkPrefix = prefix
        var head = prefix
        head.writeStaticString("{\"index\":")
        self.tokenChunkHead = head
        switch (kind, includeUsage) {
        case (.chat, false): self.tokenChunkTails = TokenChunkTails.chat
        case (.chat, true): self.tokenChunkTails = TokenChunkTails.chatWithUsageNull
        case (.text, false): self.tokenChunkTails = TokenChunkTails.text
        case (.text, true): self.tokenChunkTails = TokenChunkTails.textWithUsageNull
        case (.responses, _): self.tokenChunkTails = []
        }
    }

    /// A streamed Responses API answer: one output message of `textTokens` tokens.
    init(responses writer: ResponsesEventWriter, allocator: ByteBufferAllocator) {
        self.init(
            kind: .responses, identity: writer.identity, choices: 1, tokensPerChoice: writer.textTokens,
            finishReason: writer.incompleteBecauseOfLength ? .length : .stop, includeUsage: false,
            usage: MockUsage(promptTokens: writer.usage.inputTokens, completionTokens: writer.usage.outputTokens),
            allocator: allocator)
        self.responsesEvents = writer
    }

    // MARK: Where the stream is

    private var roleEvents: Int {
        switch kind {
        case .chat: choices
        case .text: 0
        case .responses: ResponsesEventWriter.leadingEvents
        }
    }
    /// Token chunks in the whole stream.
    var tokenEvents: Int { choices * tokensPerChoice }
    private var totalEvents: Int {
        if kind == .responses { return roleEvents + tokenEvents + ResponsesEventWriter.trailingEvents }
        return roleEvents + tokenEvents + choices + (includeUsage ? 1 : 0) + 1
    }

    /// All events, `[DONE]` included, are written.
    var isFinished: Bool { nextEvent >= totalEvents }

    /// The next event is a token chunk.
    var nextIsToken: Bool { nextEvent >= roleEvents && nextEvent < roleEvents + tokenEvents }

    private func nextIsTokenEvent(_ event: Int) -> Bool { event >= roleEvents && event < roleEvents + tokenEvents }

    /// The role chunks are behind us: the next event is a token, finish, usage or `[DONE]`.
    var isPastRoleChunks: Bool { nextEvent >= roleEvents }

    // MARK: Writing

    /// Appends the next event to `buffer` and advances. Must not be called once `isFinished`.
    mutating func writeNextEvent(into buffer: inout ByteBuffer) {
        precondition(!isFinished, "CompletionStream: no event after [DONE]")
        let event = nextEvent
        nextEvent += 1
        if let responsesEvents {
            if nextIsTokenEvent(event) { tokensSent += 1 }
            responsesEvents.write(event: event, into: &buffer)
            return
        }
        if event < roleEvents {
            writeChunkStart(into: &buffer)
            buffer.writeStaticString("{\"index\":")
            buffer.writeDecimal(event)
            buffer.writeStaticString(",\"delta\":{\"role\":\"assistant\",\"content\":\"\",\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}]")
            writeChunkEnd(into: &buffer)
            return
        }
        let tokenEvent = event - roleEvents
        if tokenEvent < tokenEvents {
            tokensSent += 1
            // The hot path: three writes per token chunk.
            var head = tokenChunkHead
            buffer.writeBuffer(&head)
            buffer.writeDecimal(tokenEvent % choices)
            buffer.writeBytes(tokenChunkTails[(tokenEvent / choices) % MockText.words.count])
            return
        }
        let finishEvent = tokenEvent - tokenEvents
        if finishEvent < choices {
            writeFinish(index: finishEvent, into: &buffer)
            return
        }
        if includeUsage && finishEvent == choices {
            writeChunkStart(into: &buffer)
            buffer.writeStaticString("],\"usage\":")
            switch kind {
            case .chat: usage.writeChat(into: &buffer)
            case .text, .responses: usage.writePlain(into: &buffer)
            }
            buffer.writeStaticString("}\n\n")
            return
        }
        buffer.writeStaticString("data: [DONE]\n\n")
    }

    private func writeChunkStart(into buffer: inout ByteBuffer) {
        var prefix = chunkPrefix
        buffer.writeBuffer(&prefix)
    }

    /// Closes the `choices` array's chunk; OpenAI adds `"usage":null` to every chunk when usage was asked for.
    private func writeChunkEnd(into buffer: inout ByteBuffer) {
        if includeUsage {
            buffer.writeStaticString(",\"usage\":null}\n\n")
        } else {
            buffer.writeStaticString("}\n\n")
        }
    }

    /// A choice's last chunk: no text, the finish reason.
    private func writeFinish(index: Int, into buffer: inout ByteBuffer) {
        writeChunkStart(into: &buffer)
        buffer.writeStaticString("{\"index\":")
        buffer.writeDecimal(index)
        switch kind {
        case .chat: buffer.writeStaticString(",\"delta\":{},\"logprobs\":null,\"finish_reason\":")
        case .text, .responses: buffer.writeStaticString(",\"text\":\"\",\"logprobs\":null,\"finish_reason\":")
        }
        buffer.writeStaticString(finishReason.quoted)
        buffer.writeStaticString("}]")
        writeChunkEnd(into: &buffer)
    }
}

/// The end of a token chunk after its choice index, per word of `MockText`, for each chunk flavour.
private enum TokenChunkTails {
    static let chat = MockText.words.map { tail(chatWord: $0, usageNull: false) }
    static let chatWithUsageNull = MockText.words.map { tail(chatWord: $0, usageNull: true) }
    static let text = MockText.words.map { tail(textWord: $0, usageNull: false) }
    static let textWithUsageNull = MockText.words.map { tail(textWord: $0, usageNull: true) }

    private static func tail(chatWord word: [UInt8], usageNull: Bool) -> [UInt8] {
        Array(",\"delta\":{\"content\":\"".utf8) + word
            + Array("\"},\"logprobs\":null,\"finish_reason\":null}]".utf8) + end(usageNull)
    }

    private static func tail(textWord word: [UInt8], usageNull: Bool) -> [UInt8] {
        Array(",\"text\":\"".utf8) + word + Array("\",\"logprobs\":null,\"finish_reason\":null}]".utf8)
            + end(usageNull)
    }

    private static func end(_ usageNull: Bool) -> [UInt8] {
        Array((usageNull ? ",\"usage\":null}\n\n" : "}\n\n").utf8)
    }
}
