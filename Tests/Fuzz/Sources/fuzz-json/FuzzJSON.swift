import Foundation
import FuzzSupport
import SluiceCore

/// `JSONReader` (and so `JSONScanner`) on arbitrary bytes.
///
/// Properties:
/// - the buffer and array entry points agree (value or error);
/// - an error's offset lies within the input;
/// - an accepted document survives `JSONWriter` and a second parse unchanged;
/// - every member's `valueRange` holds exactly that member's value (the request reader splices
///   the original body by these ranges);
/// - `JSONReader` and Foundation's `JSONSerialization` agree on what is JSON, apart from
///   `JSONReader`'s documented choices (it refuses a byte-order mark and nesting beyond its
///   limit; it reads a lone surrogate escape as U+FFFD, and keeps a number beyond `Double`'s
///   range as its literal, as Python does, where Foundation refuses both). Not
///   compared, for Foundation's leniency on Linux: invalid UTF-8, input with a NUL byte
///   (Foundation stops reading at one: `0<NUL>garbage` is accepted) and a comma before `]` or `}`
///   (accepted: `[1,]`).
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let input = fuzzInput(data, size)
    let fromBuffer = Result { () throws(JSONParseError) in try JSONReader.parse(input) }
    let fromArray = Result { () throws(JSONParseError) in try JSONReader.parse(Array(input)) }
    require(fromBuffer == fromArray, "buffer and array parses differ: \(fromBuffer) vs \(fromArray)")

    let comparable = !input.contains(0) && !hasCommaBeforeClose(input) && String(validating: input, as: UTF8.self) != nil
    let foundationAccepts = { (try? JSONSerialization.jsonObject(with: Data(input), options: [.fragmentsAllowed])) != nil }
    switch fromBuffer {
    case .failure(let error):
        require(error.offset >= 0 && error.offset <= input.count, "error offset \(error.offset) outside 0...\(input.count)")
        if case .nestingTooDeep = error.reason { return 0 }
        if input.starts(with: [0xEF, 0xBB, 0xBF]) { return 0 }
        if comparable { require(!foundationAccepts(), "JSONSerialization accepts what JSONReader rejects (\(error))") }
    case .success(let value):
        var written: [UInt8] = []
        JSONWriter.appendValue(value, to: &written)
        let reparsed = Result { () throws(JSONParseError) in try JSONReader.parse(written) }
        require(reparsed == .success(value), "written form does not parse back to the same value: \(reparsed)")
        checkValueRanges(value, in: input)
        if comparable && !hasSurrogateEscape(input) && !hasInfiniteNumber(value) { require(foundationAccepts(), "JSONReader accepts what JSONSerialization rejects") }
    }
    return 0
}

/// Every object member's `valueRange`, parsed on its own, is that member's value.
private func checkValueRanges(_ value: JSONValue, in document: UnsafeRawBufferPointer) {
    switch value {
    case .object(let object):
        for member in object.members {
            let range = member.valueRange
            require(range.lowerBound >= 0 && range.upperBound <= document.count, "valueRange \(range) outside the document")
            let slice = UnsafeRawBufferPointer(rebasing: document[range])
            let alone = Result { () throws(JSONParseError) in try JSONReader.parse(slice, maxDepth: JSONReader.maximumMaxDepth) }
            require(alone == .success(member.value), "valueRange \(range) of \"\(member.key)\" does not hold its value: \(alone)")
            checkValueRanges(member.value, in: document)
        }
    case .array(let elements):
        for element in elements { checkValueRanges(element, in: document) }
    default:
        break
    }
}

/// A `,` followed (after whitespace) by `]` or `}`, anywhere, strings included.
private func hasCommaBeforeClose(_ bytes: UnsafeRawBufferPointer) -> Bool {
    var index = 0
    while let comma = bytes[index...].firstIndex(of: UInt8(ascii: ",")) {
        index = comma + 1
        while index < bytes.count, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[index]) { index += 1 }
        if index < bytes.count, bytes[index] == UInt8(ascii: "]") || bytes[index] == UInt8(ascii: "}") { return true }
    }
    return false
}

/// Something like a `\uD800`–`\uDFFF` escape (paired or not) anywhere (an escaped backslash
/// followed by `uD8…` counts too: this only narrows what is compared).
private func hasSurrogateEscape(_ bytes: UnsafeRawBufferPointer) -> Bool {
    guard bytes.count >= 4 else { return false }
    for index in 0..<(bytes.count - 3) where bytes[index] == UInt8(ascii: "\\") && bytes[index + 1] == UInt8(ascii: "u") {
        let third = bytes[index + 3] | 0x20
        if bytes[index + 2] | 0x20 == UInt8(ascii: "d"), third == UInt8(ascii: "8") || third == UInt8(ascii: "9") || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains(third) {
            return true
        }
    }
    return false
}

/// A number that `Double` cannot hold (`1e400`).
private func hasInfiniteNumber(_ value: JSONValue) -> Bool {
    switch value {
    case .number(let number): !number.doubleValue.isFinite
    case .array(let elements): elements.contains(where: hasInfiniteNumber)
    case .object(let object): object.members.contains { hasInfiniteNumber($0.value) }
    default: false
    }
}
