/// The W3C trace context headers (`traceparent`, `tracestate`) as Sluice accepts them from a
/// client: checked and bounded before anything else reads them. A header that is malformed, too
/// long or repeated is ignored (the request starts a new trace); it is never an error.
///
/// Only read when telemetry is on.
enum TraceContextHeaders {
    /// `traceparent` is 55 bytes in version 00; a later version may append fields. Anything longer
    /// than this is not looked at.
    static let maxTraceParentBytes = 256
    /// W3C: a vendor should propagate at least 512 characters of `tracestate`; a longer one may be
    /// dropped whole, which is what happens here.
    static let maxTraceStateBytes = 512

    /// The `traceparent` value in version-00 form, or nil when it is not a valid one.
    ///
    /// Accepted: `VV-TRACEID-SPANID-FLAGS`, two, 32, 16 and two lowercase hex digits (upper case is
    /// not hex here, as the specification says), trace id and span id not all zeros, version not `ff`. A version above
    /// 00 is read as 00 when its first 55 characters have that shape and the next one, if any, is `-`
    /// (the specification's rule for future versions); version 00 itself must be exactly 55 long.
    static func traceParent(_ value: some StringProtocol) -> String? {
        let bytes = Array(value.utf8.prefix(maxTraceParentBytes + 1))
        guard bytes.count >= 55, bytes.count <= maxTraceParentBytes else { return nil }
        // Optional whitespace around the value is allowed by HTTP; NIO already trims it.
        guard bytes[2] == dash, bytes[35] == dash, bytes[52] == dash else { return nil }
        guard let version = hexByte(bytes[0], bytes[1]), version != 0xff else { return nil }
        if version == 0 {
            guard bytes.count == 55 else { return nil }
        } else if bytes.count > 55 {
            guard bytes[55] == dash else { return nil }
        }
        var normalized: [UInt8] = [zero, zero, dash]
        normalized.reserveCapacity(55)
        var traceIDNonZero = false
        for index in 3..<35 {
            guard let digit = lowerHex(bytes[index]) else { return nil }
            if digit != zero { traceIDNonZero = true }
            normalized.append(digit)
        }
        normalized.append(dash)
        var spanIDNonZero = false
        for index in 36..<52 {
            guard let digit = lowerHex(bytes[index]) else { return nil }
            if digit != zero { spanIDNonZero = true }
            normalized.append(digit)
        }
        guard traceIDNonZero, spanIDNonZero else { return nil }
        normalized.append(dash)
        guard let flags = hexByte(bytes[53], bytes[54]) else { return nil }
        // Version 00 defines only the sampled bit; other bits are not passed on.
        normalized.append(contentsOf: flags & 1 == 1 ? [zero, UInt8(ascii: "1")] : [zero, zero])
        return String(decoding: normalized, as: UTF8.self)
    }

    /// The `tracestate` value when it is short enough and made only of visible ASCII, spaces and
    /// tabs (its members are checked again when the trace context is built: a bad one drops the
    /// whole header, never the trace); nil otherwise.
    static func traceState(_ value: some StringProtocol) -> String? {
        let utf8 = value.utf8
        guard !utf8.isEmpty, utf8.count <= maxTraceStateBytes else { return nil }
        guard utf8.allSatisfy({ ($0 >= 0x20 && $0 <= 0x7e) || $0 == 0x09 }) else { return nil }
        return String(value)
    }

    /// Both headers from a request's fields: the `traceparent` only when it is there exactly once
    /// and valid; the `tracestate` only with a valid `traceparent` (several `tracestate` fields are
    /// joined with commas, as HTTP allows).
    static func accepted(from fields: some Sequence<(name: String, value: String)>) -> (traceParent: String, traceState: String?)? {
        var parent: String?
        var parents = 0
        var states: [String] = []
        for (name, value) in fields {
            if name.count == 11, name.lowercased() == "traceparent" {
                parents += 1
                parent = value
            } else if name.count == 10, name.lowercased() == "tracestate" {
                states.append(value)
            }
        }
        guard parents == 1, let parent, let normalized = traceParent(parent) else { return nil }
        let state = states.isEmpty ? nil : traceState(states.joined(separator: ","))
        return (normalized, state)
    }

    private static let dash = UInt8(ascii: "-")
    private static let zero = UInt8(ascii: "0")

    private static func lowerHex(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "a")...UInt8(ascii: "f"): byte
        default: nil
        }
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        default: nil
        }
    }

    private static func hexByte(_ high: UInt8, _ low: UInt8) -> UInt8? {
        guard let high = hexValue(high), let low = hexValue(low) else { return nil }
        return high << 4 | low
    }
}
