/// The relay's view of an OpenAI SSE stream (chat or completions), as a state machine fed the
/// upstream's bytes in whatever chunks they arrive.
///
/// Every byte is forwarded unchanged and in order, except the usage-only event (`"choices": []`
/// with `usage`) when `dropsUsageChunk` is set — Sluice added `include_usage` itself and the
/// client must not see it. Meanwhile it records the reported `usage` and accumulates the
/// generated text (`streamedText`), so completion tokens can be counted when the upstream
/// never reports usage.
///
/// Bytes are released per complete event: a partial event is held until its blank line arrives
/// (clients cannot act on half an event anyway). An event larger than `maxEventBytes` switches
/// the filter to `.passThrough`: from then on everything is forwarded verbatim, unread.
public struct StreamRelayFilter: Sendable {
    public enum State: Sendable, Equatable {
        /// Reading events.
        case relaying
        /// Gave up reading (an oversize event); forwarding bytes verbatim.
        case passThrough
        /// `finish()` was called.
        case finished
    }

    /// Whether the usage-only event is removed from the client's stream.
    public let dropsUsageChunk: Bool
    /// The stream is a Responses API stream (`response.*` events): usage is read from the final
    /// `response.completed` (or `.incomplete` / `.failed`) event's `response.usage`, text from the
    /// `*.delta` events, and nothing is dropped.
    public let isResponsesStream: Bool
    public private(set) var state = State.relaying
    /// The last valid `usage` the upstream reported (kept even when its event was dropped).
    public private(set) var usage: Usage?
    /// UTF-8 of the generated text seen so far, all choices and tool-call arguments concatenated.
    public private(set) var streamedTextUTF8: [UInt8] = []
    /// The stream's `data: [DONE]` arrived.
    public private(set) var sawDone = false
    /// An `{"error": …}` event arrived mid-stream.
    public private(set) var sawErrorEvent = false
    /// The usage event was removed from the client's stream.
    public private(set) var droppedUsageChunk = false
    /// `streamedTextUTF8` reached `maxStreamedTextBytes` and stopped growing (a runaway upstream
    /// must not grow Sluice's memory without bound; counting the cap is then a lower bound).
    public private(set) var streamedTextTruncated = false
    /// The most generated text kept for counting (default 16 MiB, far above any model's output).
    public let maxStreamedTextBytes: Int
    public static let defaultMaxStreamedTextBytes = 16 << 20

    private var parser: SSEParser
    /// Stream bytes after the last complete event (the event being received).
    private var held: [UInt8] = []
    /// Ranges of `held + chunk` to forward, reused between calls.
    private var forwardRanges: [Range<Int>] = []

    /// - Parameters:
    ///   - dropsUsageChunk: pass `OpenAIRequest.sluiceAddedUsage`.
    ///   - maxEventBytes: the largest event still read (default 4 MiB).
    ///   - maxStreamedTextBytes: the most generated text kept (default 16 MiB).
    public init(dropsUsageChunk: Bool, isResponsesStream: Bool = false, maxEventBytes: Int = SSEParser.defaultMaxEventBytes,
                maxStreamedTextBytes: Int = StreamRelayFilter.defaultMaxStreamedTextBytes) {
        self.dropsUsageChunk = dropsUsageChunk && !isResponsesStream
        self.isResponsesStream = isResponsesStream
        self.maxStreamedTextBytes = maxStreamedTextBytes
        self.parser = SSEParser(maxEventBytes: maxEventBytes)
    }

    /// The generated text seen so far (invalid UTF-8 repaired).
    public var streamedText: String { String(decoding: streamedTextUTF8, as: UTF8.self) }

    /// Feeds the next chunk from upstream.
    /// - Returns: the bytes to send to the client now (possibly empty). When nothing is dropped
    ///   or held back, this is `chunk` itself, without copying.
    public mutating func consume(_ chunk: [UInt8]) -> [UInt8] {
        if state == .passThrough { return chunk }
        let heldBefore = held.count
        let (decided, droppedAny) = chunk.withUnsafeBytes { frame($0) }
        if state == .relaying, heldBefore == 0, !droppedAny, decided == chunk.count { return chunk }
        return chunk.withUnsafeBytes { release(decided: decided, chunk: $0) }
    }

    /// Feeds the next chunk from upstream (e.g. a `ByteBuffer`'s readable bytes).
    /// - Returns: the bytes to send to the client now (possibly empty).
    public mutating func consume(_ chunk: UnsafeRawBufferPointer) -> [UInt8] {
        if state == .passThrough { return Array(chunk) }
        let (decided, _) = frame(chunk)
        return release(decided: decided, chunk: chunk)
    }

    /// Feeds the next chunk from upstream, for a caller that holds it in a buffer of its own (a
    /// `ByteBuffer`): nil when the whole chunk is to be sent as it came (the usual case: nothing
    /// dropped or held back), so the caller sends its buffer without a copy; else the bytes to send
    /// now (possibly empty), as ``consume(_:)-([UInt8])`` returns them.
    public mutating func consumeUnlessUnchanged(_ chunk: UnsafeRawBufferPointer) -> [UInt8]? {
        if state == .passThrough { return nil }
        let heldBefore = held.count
        let (decided, droppedAny) = frame(chunk)
        if state == .relaying, heldBefore == 0, !droppedAny, decided == chunk.count { return nil }
        return release(decided: decided, chunk: chunk)
    }

    /// The upstream's stream ended: decides the last, unterminated event (if any).
    /// - Returns: the remaining bytes to send to the client.
    public mutating func finish() -> [UInt8] {
        defer { state = .finished }
        guard state == .relaying else { return [] }
        var rest: [UInt8] = []
        swap(&rest, &held)
        if let event = parser.finish(), !shouldForward(event) { return [] }
        return rest
    }

    // MARK: Framing

    /// Frames the events completed by `chunk` and decides each one.
    /// - Returns: how many bytes of `held + chunk` are decided, and whether any was dropped.
    private mutating func frame(_ chunk: UnsafeRawBufferPointer) -> (decided: Int, droppedAny: Bool) {
        forwardRanges.removeAll(keepingCapacity: true)
        var decided = 0
        var droppedAny = false
        var offset = 0
        do {
            while let event = try parser.nextEvent(in: chunk, from: &offset) {
                let range = decided..<(decided + event.rawByteCount)
                if shouldForward(event) {
                    if let last = forwardRanges.last, last.upperBound == range.lowerBound {
                        forwardRanges[forwardRanges.count - 1] = last.lowerBound..<range.upperBound
                    } else {
                        forwardRanges.append(range)
                    }
                } else {
                    droppedAny = true
                }
                decided = range.upperBound
            }
        } catch {
            // Oversize event: forward everything undecided verbatim from now on.
            state = .passThrough
            let total = held.count + chunk.count
            if decided < total { forwardRanges.append(decided..<total) }
            decided = total
        }
        return (decided, droppedAny)
    }

    /// Builds the output from `forwardRanges` over `held + chunk`, and keeps the undecided tail.
    private mutating func release(decided: Int, chunk: UnsafeRawBufferPointer) -> [UInt8] {
        var output: [UInt8] = []
        output.reserveCapacity(forwardRanges.reduce(0) { $0 + $1.count })
        let heldCount = held.count
        for range in forwardRanges {
            if range.lowerBound < heldCount {
                output.append(contentsOf: held[range.lowerBound..<min(range.upperBound, heldCount)])
            }
            if range.upperBound > heldCount {
                let lower = max(range.lowerBound, heldCount) - heldCount
                output.append(contentsOf: UnsafeRawBufferPointer(rebasing: chunk[lower..<(range.upperBound - heldCount)]))
            }
        }
        if decided <= heldCount {
            held.removeFirst(decided)
            held.append(contentsOf: chunk)
        } else {
            held.removeAll(keepingCapacity: true)
            held.append(contentsOf: UnsafeRawBufferPointer(rebasing: chunk[(decided - heldCount)...]))
        }
        return output
    }

    // MARK: Deciding

    /// Reads one complete event; false when it must not reach the client.
    private mutating func shouldForward(_ event: SSEEvent) -> Bool {
        guard event.hasData else { return true }
        var payload: [UInt8] = []
        // Borrow the parser's payload buffer; it is handed back untouched below.
        swap(&payload, &parser.eventData)
        defer { swap(&payload, &parser.eventData) }
        if isResponsesStream {
            guard let event = payload.withUnsafeBytes({ ResponsesStreamEvent.read($0, appendingTextTo: &streamedTextUTF8) }) else {
                return true
            }
            if streamedTextUTF8.count > maxStreamedTextBytes {
                streamedTextUTF8.removeSubrange(maxStreamedTextBytes...)
                streamedTextTruncated = true
            }
            if event.isFinal { sawDone = true }
            if event.isError { sawErrorEvent = true }
            if let reported = event.usage { usage = reported }
            return true
        }
        guard let chunk = payload.withUnsafeBytes({ OpenAIStreamChunk.read($0, appendingTextTo: &streamedTextUTF8) }) else {
            return true
        }
        if streamedTextUTF8.count > maxStreamedTextBytes {
            streamedTextUTF8.removeSubrange(maxStreamedTextBytes...)
            streamedTextTruncated = true
        }
        if chunk.isDone { sawDone = true }
        if chunk.isError { sawErrorEvent = true }
        if let reported = chunk.usage { usage = reported }
        if dropsUsageChunk && chunk.isUsageOnly {
            droppedUsageChunk = true
            return false
        }
        return true
    }
}
