import NIOHTTP1

/// A client's own `x-request-id`, taken as the request's id wherever the client can meet it again:
/// the response's `x-request-id`, the `x-request-id` sent upstream, and the log lines' `request_id`.
///
/// It never names the reservation: a client may send the same id twice (a retry does), and the
/// limiter needs an id unique per request (`RequestIDGenerator`'s) for its Redis keys, its lease
/// members and its exactly-once settle.
enum ClientRequestID {
    /// The longest id taken from a client, in bytes.
    static let maxBytes = 128

    /// The request's `x-request-id` when it is well-formed (see ``isWellFormed(_:)``) and the only
    /// one; nil when it is absent, repeated or malformed: the request then gets Sluice's own id.
    static func accepted(from headers: HTTPHeaders) -> String? {
        let values = headers["x-request-id"]
        guard values.count == 1, let value = values.first, isWellFormed(value) else { return nil }
        return value
    }

    /// 1–``maxBytes`` bytes of `A–Z a–z 0–9 . _ : / + = -`: enough for UUIDs, ULIDs, base64 and
    /// `prefix:id` schemes, and nothing that could split a log line or a header, or need escaping.
    static func isWellFormed(_ value: String) -> Bool {
        let bytes = value.utf8
        guard (1...maxBytes).contains(bytes.count) else { return false }
        return bytes.allSatisfy { byte in
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "0")...UInt8(ascii: "9"),
                 UInt8(ascii: "."), UInt8(ascii: "_"), UInt8(ascii: ":"), UInt8(ascii: "/"), UInt8(ascii: "+"),
                 UInt8(ascii: "="), UInt8(ascii: "-"):
                true
            default:
                false
            }
        }
    }
}
