import FuzzSupport
import SluiceCore

/// `SSEParser` and `StreamRelayFilter` (with `OpenAIStreamChunk` and `Usage` behind it) on
/// arbitrary upstream streams, fed whole and cut into chunks.
///
/// Input: a flags byte (bit 0: drop the usage chunk; bit 1: a small event limit, to reach the
/// pass-through path), a seed byte for the cut points (0: one byte at a time), then the stream.
///
/// Properties:
/// - the parser's events, payloads and names do not depend on where the stream was cut, and the
///   events tile the stream exactly unless it gave up on an oversize event;
/// - the filter's output, usage, generated text and flags do not depend on where the stream was
///   cut, nor on which `consume` (array or buffer) was used;
/// - nothing but a dropped usage chunk is ever removed: the output is the input when nothing was
///   dropped, and a subsequence of it otherwise;
/// - reported usage counts are non-negative.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = fuzzInput(data, size)
    guard input.count >= 2 else { return 0 }
    let flags = input[0]
    let stream = Array(input[2...])
    let dropsUsage = flags & 1 != 0
    let maxEventBytes = flags & 2 != 0 ? 64 + Int(flags >> 2) : SSEParser.defaultMaxEventBytes
    let pieces = splitRanges(count: stream.count, seed: input[1])

    // The parser alone.
    let wholeEvents = parse([0..<stream.count], of: stream, maxEventBytes: maxEventBytes)
    let cutEvents = parse(pieces, of: stream, maxEventBytes: maxEventBytes)
    require(wholeEvents.events == cutEvents.events && wholeEvents.failed == cutEvents.failed,
            "parser: cutting the stream changed its events (whole \(wholeEvents.events.count), cut \(cutEvents.events.count))")
    if !wholeEvents.failed {
        let tiled = wholeEvents.events.reduce(0) { $0 + $1.rawByteCount }
        require(tiled == stream.count, "parser: events cover \(tiled) of \(stream.count) bytes")
    }

    // The relay filter.
    let whole = relay([0..<stream.count], of: stream, dropsUsage: dropsUsage, maxEventBytes: maxEventBytes, arrays: false)
    let cut = relay(pieces, of: stream, dropsUsage: dropsUsage, maxEventBytes: maxEventBytes, arrays: false)
    let cutArrays = relay(pieces, of: stream, dropsUsage: dropsUsage, maxEventBytes: maxEventBytes, arrays: true)
    require(whole == cut, "filter: cutting the stream changed the outcome\nwhole: \(whole)\ncut:   \(cut)")
    require(cut == cutArrays, "filter: array and buffer consume differ\nbuffer: \(cut)\narray:  \(cutArrays)")
    if !whole.droppedUsageChunk {
        require(whole.output == stream, "filter: output differs from the input although nothing was dropped")
    } else {
        require(dropsUsage, "filter: dropped a chunk without being asked to")
        require(whole.output.count < stream.count && isSubsequence(whole.output, of: stream),
                "filter: output is not the input minus dropped events")
    }
    if let usage = whole.usage {
        require(usage.promptTokens >= 0 && usage.completionTokens >= 0 && usage.totalTokens >= 0, "negative usage \(usage)")
    }
    return 0
}

private struct ParsedEvent: Equatable {
    var rawByteCount: Int
    var hasData: Bool
    var name: String?
    var data: [UInt8]
}

private func parse(_ pieces: [Range<Int>], of stream: [UInt8], maxEventBytes: Int) -> (events: [ParsedEvent], failed: Bool) {
    var parser = SSEParser(maxEventBytes: maxEventBytes)
    var events: [ParsedEvent] = []
    for piece in pieces {
        let failed: Bool = withExactCopy(of: stream[piece]) { chunk in
            var offset = 0
            do {
                while let event = try parser.nextEvent(in: chunk, from: &offset) {
                    events.append(ParsedEvent(rawByteCount: event.rawByteCount, hasData: event.hasData, name: event.name, data: parser.eventData))
                    require(offset <= chunk.count, "parser: offset \(offset) past the chunk's \(chunk.count) bytes")
                }
                require(offset == chunk.count, "parser: returned nil before the chunk's end (\(offset) of \(chunk.count))")
                return false
            } catch {
                return true
            }
        }
        if failed { return (events, true) }
    }
    if let event = parser.finish() {
        events.append(ParsedEvent(rawByteCount: event.rawByteCount, hasData: event.hasData, name: event.name, data: parser.eventData))
    }
    return (events, false)
}

private struct RelayOutcome: Equatable, CustomStringConvertible {
    var output: [UInt8] = []
    var usage: Usage?
    var text: [UInt8] = []
    var sawDone = false
    var sawErrorEvent = false
    var droppedUsageChunk = false
    var passedThrough = false

    var description: String {
        "\(output.count) bytes out, usage \(usage.map { "\($0)" } ?? "nil"), text \(text.count) bytes, done \(sawDone), "
            + "error \(sawErrorEvent), dropped \(droppedUsageChunk), pass-through \(passedThrough)"
    }
}

private func relay(_ pieces: [Range<Int>], of stream: [UInt8], dropsUsage: Bool, maxEventBytes: Int, arrays: Bool) -> RelayOutcome {
    var filter = StreamRelayFilter(dropsUsageChunk: dropsUsage, maxEventBytes: maxEventBytes)
    var outcome = RelayOutcome()
    for piece in pieces {
        if arrays {
            outcome.output += filter.consume(Array(stream[piece]))
        } else {
            outcome.output += withExactCopy(of: stream[piece]) { filter.consume($0) }
        }
    }
    outcome.passedThrough = filter.state == .passThrough
    outcome.output += filter.finish()
    require(filter.state == .finished, "filter: not finished after finish()")
    outcome.usage = filter.usage
    outcome.text = filter.streamedTextUTF8
    outcome.sawDone = filter.sawDone
    outcome.sawErrorEvent = filter.sawErrorEvent
    outcome.droppedUsageChunk = filter.droppedUsageChunk
    return outcome
}
