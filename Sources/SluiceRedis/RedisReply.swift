/// One Redis reply, copied out of hiredis' memory (which is freed as soon as it was read), so it
/// can cross threads and outlive the connection.
public enum RedisReply: Sendable, Hashable {
    /// A bulk string (binary-safe).
    case bulkString([UInt8])
    /// A simple status such as `OK` or `PONG`.
    case status(String)
    /// An integer.
    case integer(Int64)
    /// The null bulk string or null array (`GET` of a missing key, a Lua `nil`/`false`).
    case null
    /// An array (nested replies, e.g. a Lua table or `HGETALL`).
    case array([RedisReply])
    /// An error reply nested in an array (top-level errors are thrown as `RedisError.server`).
    case error(String)

    /// The value as text: bulk strings decoded as UTF-8 (lossy), statuses as they are; `nil` for
    /// other kinds.
    public var string: String? {
        switch self {
        case .bulkString(let bytes): String(decoding: bytes, as: UTF8.self)
        case .status(let text): text
        default: nil
        }
    }

    /// The value as an integer: integer replies, and bulk strings that are a decimal integer
    /// (`GET` of a counter); `nil` otherwise.
    public var integer: Int64? {
        switch self {
        case .integer(let value): value
        case .bulkString(let bytes): Int64(String(decoding: bytes, as: UTF8.self))
        default: nil
        }
    }

    /// The elements of an array reply; `nil` for other kinds.
    public var array: [RedisReply]? {
        if case .array(let elements) = self { return elements }
        return nil
    }

    /// Whether this is the null reply.
    public var isNull: Bool {
        if case .null = self { return true }
        return false
    }
}
