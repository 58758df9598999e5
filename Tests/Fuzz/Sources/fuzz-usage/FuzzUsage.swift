import FuzzSupport
import SluiceCore

/// `Usage.fromResponseBody` (the scanner's fast path over a non-streamed answer) and
/// `CompletionText.fromResponseBody` on arbitrary response bodies; and, structure-aware, the
/// usage reading of answers and stream chunks whose counts are drawn from the input as 64-bit
/// values (byte mutations rarely turn `"prompt_tokens":5` into two 19-digit numbers whose sum
/// overflows, but a bit flip in an integer does).
///
/// Properties:
/// - the buffer and array entry points agree;
/// - counts are non-negative, and the total is the sum when the body gives none;
/// - on a well-formed body with one top-level `usage`, the fast path reads the same usage as
///   the rules applied to `JSONReader`'s tree (an independent reading);
/// - the completion text of a body that is not JSON is empty;
/// - (structured) a usage object read from an answer and from a stream's usage chunk is the one
///   the rules give.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let body = fuzzInput(data, size)
    let usage = Usage.fromResponseBody(body)
    require(usage == Usage.fromResponseBody(Array(body)), "buffer and array reads differ")
    if let usage {
        require(usage.promptTokens >= 0 && usage.completionTokens >= 0 && usage.totalTokens >= 0, "negative counts in \(usage)")
    }

    let document = try? JSONReader.parse(body)
    if case .object(let root)? = document, root.members.filter({ $0.key == "usage" }).count == 1 {
        let expected = expectedUsage(root["usage"]!)
        require(usage == expected, "fast path read \(usage.map { "\($0)" } ?? "nil"), the tree says \(expected.map { "\($0)" } ?? "nil")")
    }

    let text = CompletionText.fromResponseBody(Array(body))
    if document == nil { require(text.isEmpty, "completion text from a body that is not JSON") }

    checkStructured(body)
    return 0
}

/// Builds a `usage` object from the input's first 25 bytes (a byte choosing, per count, absent,
/// null, or the number; then three 64-bit counts) and reads it as an answer and as a stream chunk.
private func checkStructured(_ input: UnsafeRawBufferPointer) {
    guard input.count >= 25 else { return }
    let shape = input[0]
    var members: [String] = []
    for (index, name) in ["prompt_tokens", "completion_tokens", "total_tokens"].enumerated() {
        let value = input.loadUnaligned(fromByteOffset: 1 + 8 * index, as: Int64.self)
        switch shape >> (2 * index) & 3 {
        case 0: continue
        case 1: members.append("\"\(name)\":null")
        case 2: members.append("\"\(name)\":\(value)")
        default: members.append("\"\(name)\":\(value.magnitude)")
        }
    }
    let usageJSON = "{" + members.joined(separator: ",") + "}"

    let answer = Array(#"{"id":"chatcmpl-1","choices":[],"usage":\#(usageJSON)}"#.utf8)
    let read = withExactCopy(of: answer) { Usage.fromResponseBody($0) }
    let expected = expectedUsage(try! JSONReader.parse(usageJSON))
    require(read == expected, "answer: read \(read.map { "\($0)" } ?? "nil") from \(usageJSON), the rules say \(expected.map { "\($0)" } ?? "nil")")

    var filter = StreamRelayFilter(dropsUsageChunk: true)
    let chunk = Array("data: {\"choices\":[],\"usage\":\(usageJSON)}\n\n".utf8)
    let forwarded = withExactCopy(of: chunk) { filter.consume($0) } + filter.finish()
    require(filter.usage == expected, "stream: read \(filter.usage.map { "\($0)" } ?? "nil") from \(usageJSON), the rules say \(expected.map { "\($0)" } ?? "nil")")
    require(forwarded.isEmpty && filter.droppedUsageChunk, "stream: the usage chunk was not dropped")
}
