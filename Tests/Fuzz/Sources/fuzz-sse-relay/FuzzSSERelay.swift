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
///   cut, nor on which `consume` (array, buffer, or `consumeUnlessUnchanged` with the chunk itself
///   for nil) was used;
/// - the filter does what its rules say with each event the parser framed (`ExpectedStreamChunk`
///   reads every `data` payload with `JSONReader` instead of the scanner): the output is the
///   input without the usage-only events (when asked to drop them), the rest forwarded verbatim
///   after an oversize event; the usage is the last valid one reported; the generated text, the
///   `[DONE]` and error flags are the ones the payloads carry.
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
    let cutUnchanged = relay(pieces, of: stream, dropsUsage: dropsUsage, maxEventBytes: maxEventBytes, arrays: false, unlessUnchanged: true)
    require(whole == cut, "filter: cutting the stream changed the outcome\nwhole: \(whole)\ncut:   \(cut)")
    require(cut == cutArrays, "filter: array and buffer consume differ\nbuffer: \(cut)\narray:  \(cutArrays)")
    require(cut == cutUnchanged, "filter: consumeUnlessUnchanged differs\nbuffer:    \(cut)\nunchanged: \(cutUnchanged)")
    checkAgainstRules(whole, events: wholeEvents.events, stream: stream, dropsUsage: dropsUsage)
    return 0
}

/// The outcome the filter's rules give for `events` (framed by the parser; when it gave up on an
/// oversize event, the bytes after the framed ones are forwarded unread).
private func checkAgainstRules(_ outcome: RelayOutcome, events: [ParsedEvent], stream: [UInt8], dropsUsage: Bool) {
    var expected = RelayOutcome()
    var text = ""
    var offset = 0
    for event in events {
        let raw = stream[offset..<(offset + event.rawByteCount)]
        offset += event.rawByteCount
        guard event.hasData, let chunk = ExpectedStreamChunk(payload: event.data) else {
            expected.output += raw
            continue
        }
        text += chunk.text
        if let usage = chunk.usage { expected.usage = usage }
        if chunk.isDone { expected.sawDone = true }
        if chunk.isError { expected.sawErrorEvent = true }
        if dropsUsage && chunk.isUsageOnly {
            expected.droppedUsageChunk = true
        } else {
            expected.output += raw
        }
    }
    expected.output += stream[offset...]
    require(outcome.output == expected.output, "filter: output differs from the rules' (\(outcome.output.count) vs \(expected.output.count) bytes)")
    require(outcome.usage == expected.usage && outcome.sawDone == expected.sawDone && outcome.sawErrorEvent == expected.sawErrorEvent
            && outcome.droppedUsageChunk == expected.droppedUsageChunk,
            "filter: \(outcome)\nrules:  \(expected)")
    // Text is compared as strings when the stream is valid UTF-8: the filter keeps a string's raw
    // bytes (repaired once, when counted), the tree repairs each string on its own.
    if String(validating: stream, as: UTF8.self) != nil {
        require(String(decoding: outcome.text, as: UTF8.self) == text, "filter: generated text differs from the rules'")
    }
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

private func relay(_ pieces: [Range<Int>], of stream: [UInt8], dropsUsage: Bool, maxEventBytes: Int, arrays: Bool, unlessUnchanged: Bool = false) -> RelayOutcome {
    var filter = StreamRelayFilter(dropsUsageChunk: dropsUsage, maxEventBytes: maxEventBytes)
    var outcome = RelayOutcome()
    for piece in pieces {
        if unlessUnchanged {
            outcome.output += withExactCopy(of: stream[piece]) { filter.consumeUnlessUnchanged($0) } ?? Array(stream[piece])
        } else if arrays {
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
