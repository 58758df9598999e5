/// An event framed by `SSEParser`.
public struct SSEEvent: Sendable, Equatable {
    /// How many bytes of the stream the event occupied, including its fields, comments and the
    /// blank line that ended it. Consecutive events tile the stream exactly.
    public var rawByteCount: Int
    /// True when the event had at least one `data:` field (the payload is `SSEParser.eventData`).
    public var hasData: Bool
    /// The `event:` field's value, when there was one.
    public var name: String?
}

/// Why `SSEParser` gave up.
public enum SSEParseError: Error, Sendable, Equatable {
    /// One event grew past the parser's limit (`maxEventBytes`).
    case eventTooLarge(limit: Int)
}

/// An incremental Server-Sent Events parser (WHATWG HTML, "event stream interpretation").
///
/// Feed it chunks split anywhere; it frames events and collects their `data:` lines. Lines may
/// end in LF, CRLF or CR; lines starting with `:` are comments; `data` values lose one leading
/// space and multiple `data:` lines are joined with LF. Memory is bounded: an event (all its
/// lines) may not exceed `maxEventBytes`, after which the parser stays failed.
///
/// Pull style, so callers can act on each event between calls without closures:
/// ```
/// var offset = 0
/// while let event = try parser.nextEvent(in: chunk, from: &offset) { use(event, parser.eventData) }
/// ```
public struct SSEParser: Sendable {
    /// The default bound on one event's size (4 MiB).
    public static let defaultMaxEventBytes = 4 << 20

    public let maxEventBytes: Int

    /// Payload of the event most recently returned by `nextEvent`/`finish` (its `data:` values
    /// joined by LF). Valid until the next call.
    public internal(set) var eventData: [UInt8] = []

    private var eventName: [UInt8]?
    private var hasData = false
    /// Raw bytes of the current event consumed so far.
    private var eventBytes = 0
    /// The current line's content when it spans chunks.
    private var lineBuffer: [UInt8] = []
    /// The current line ended in a CR that was the last byte of a chunk: a leading LF in the
    /// next chunk belongs to the same line ending.
    private var pendingCR = false
    /// The last call returned an event: clear its fields before framing the next one.
    private var returnedEvent = false
    private var failed = false

    public init(maxEventBytes: Int = SSEParser.defaultMaxEventBytes) {
        self.maxEventBytes = maxEventBytes
    }

    /// Frames the next complete event from `chunk`, starting at `offset`.
    /// - Returns: the event (and `offset` moved past it), or nil when `chunk` is used up
    ///   (`offset == chunk.count`) and the bytes so far were remembered for the next chunk.
    /// - Throws: `SSEParseError.eventTooLarge` once an event exceeds `maxEventBytes`.
    public mutating func nextEvent(in chunk: UnsafeRawBufferPointer, from offset: inout Int) throws(SSEParseError) -> SSEEvent? {
        if failed { throw .eventTooLarge(limit: maxEventBytes) }
        if returnedEvent { startNextEvent() }
        var index = offset
        if pendingCR {
            guard index < chunk.count else { return nil }
            pendingCR = false
            var terminatorLength = 1
            if chunk[index] == UInt8(ascii: "\n") {
                terminatorLength = 2
                index += 1
            }
            if let completed = try processBufferedLine(terminatorLength: terminatorLength) {
                offset = index
                return completed
            }
        }
        var lineStart = index
        while index < chunk.count {
            let byte = chunk[index]
            guard byte == UInt8(ascii: "\n") || byte == UInt8(ascii: "\r") else {
                index += 1
                continue
            }
            var terminatorLength = 1
            if byte == UInt8(ascii: "\r") {
                if index + 1 == chunk.count {
                    try remember(UnsafeRawBufferPointer(rebasing: chunk[lineStart..<index]), consumedTerminator: 1)
                    pendingCR = true
                    offset = chunk.count
                    return nil
                }
                if chunk[index + 1] == UInt8(ascii: "\n") { terminatorLength = 2 }
            }
            let content = UnsafeRawBufferPointer(rebasing: chunk[lineStart..<index])
            let completed: SSEEvent?
            if lineBuffer.isEmpty {
                completed = try processLine(content, terminatorLength: terminatorLength)
            } else {
                lineBuffer.append(contentsOf: content)
                completed = try processBufferedLine(terminatorLength: terminatorLength)
            }
            index += terminatorLength
            lineStart = index
            if let completed {
                offset = index
                return completed
            }
        }
        try remember(UnsafeRawBufferPointer(rebasing: chunk[lineStart..<chunk.count]))
        offset = chunk.count
        return nil
    }

    /// The end of the stream: an unterminated last line or event is completed as if a blank
    /// line followed (lenient: some upstreams omit the final blank line).
    /// - Returns: that event, or nil when the stream ended on an event boundary.
    public mutating func finish() -> SSEEvent? {
        if failed { return nil }
        if returnedEvent { startNextEvent() }
        if pendingCR || !lineBuffer.isEmpty {
            let terminatorLength = pendingCR ? 1 : 0
            pendingCR = false
            // Whether or not this line was blank, the event is completed just below.
            _ = try? processBufferedLine(terminatorLength: terminatorLength)
        }
        guard !failed, eventBytes > 0 else { return nil }
        returnedEvent = true
        return SSEEvent(rawByteCount: eventBytes, hasData: hasData, name: eventName.map { String(decoding: $0, as: UTF8.self) })
    }

    /// Clears the state of the event just returned.
    private mutating func startNextEvent() {
        returnedEvent = false
        eventData.removeAll(keepingCapacity: true)
        eventName = nil
        hasData = false
        eventBytes = 0
    }

    /// Keeps the start of a line that continues in the next chunk. `consumedTerminator` is 1 when
    /// the line's CR was consumed already (an LF may follow in the next chunk): it counts now, as
    /// for a complete line, so that `finish()` cannot take the event past the limit.
    private mutating func remember(_ partialLine: UnsafeRawBufferPointer, consumedTerminator: Int = 0) throws(SSEParseError) {
        guard eventBytes + lineBuffer.count + partialLine.count + consumedTerminator <= maxEventBytes else {
            failed = true
            throw .eventTooLarge(limit: maxEventBytes)
        }
        lineBuffer.append(contentsOf: partialLine)
    }

    /// Applies the line held in `lineBuffer` and empties it (keeping its capacity).
    private mutating func processBufferedLine(terminatorLength: Int) throws(SSEParseError) -> SSEEvent? {
        var line: [UInt8] = []
        swap(&line, &lineBuffer)
        defer {
            line.removeAll(keepingCapacity: true)
            swap(&line, &lineBuffer)
        }
        let result: Result<SSEEvent?, SSEParseError> = line.withUnsafeBytes { content in
            do throws(SSEParseError) {
                return .success(try processLine(content, terminatorLength: terminatorLength))
            } catch {
                return .failure(error)
            }
        }
        return try result.get()
    }

    /// Applies one line; returns the event when the line was blank (the event's end).
    private mutating func processLine(_ line: UnsafeRawBufferPointer, terminatorLength: Int) throws(SSEParseError) -> SSEEvent? {
        eventBytes += line.count + terminatorLength
        guard eventBytes <= maxEventBytes else {
            failed = true
            throw .eventTooLarge(limit: maxEventBytes)
        }
        if line.isEmpty {
            returnedEvent = true
            return SSEEvent(rawByteCount: eventBytes, hasData: hasData, name: eventName.map { String(decoding: $0, as: UTF8.self) })
        }
        if line[0] == UInt8(ascii: ":") { return nil }
        let colon = line.firstIndex(of: UInt8(ascii: ":")) ?? line.count
        var valueStart = min(colon + 1, line.count)
        if valueStart < line.count, line[valueStart] == UInt8(ascii: " ") { valueStart += 1 }
        let name = UnsafeRawBufferPointer(rebasing: line[..<colon])
        let value = UnsafeRawBufferPointer(rebasing: line[valueStart...])
        if name.elementsEqual("data".utf8) {
            if hasData { eventData.append(UInt8(ascii: "\n")) }
            eventData.append(contentsOf: value)
            hasData = true
        } else if name.elementsEqual("event".utf8) {
            eventName = Array(value)
        }
        // `id`, `retry` and unknown fields do not matter to a relay.
        return nil
    }
}
