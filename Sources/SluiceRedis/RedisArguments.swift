import NIOCore

/// The arguments of one Redis command, encoded as RESP bulk strings while they are appended.
///
/// Why not `[String]` or `[[UInt8]]`: the limiter's calls carry some 30 arguments per request
/// (keys, limits, counts). As strings and byte arrays that was two allocations per argument, plus a
/// string per number and per key concatenation; here it is one growing byte array, numbers are
/// written digit by digit and a key is written from its parts.
public struct RedisArguments: Sendable, Equatable {
    /// How many arguments were appended.
    public private(set) var count = 0
    /// `$<length>\r\n<bytes>\r\n` for each argument, in order.
    private(set) var encoded: [UInt8] = []

    public init(capacity: Int = 256) {
        encoded.reserveCapacity(capacity)
    }

    public init(_ arguments: [String]) {
        self.init()
        for argument in arguments { append(argument) }
    }

    public init(_ arguments: [[UInt8]]) {
        self.init(capacity: arguments.reduce(16) { $0 + $1.count + 16 })
        for argument in arguments { append(bytes: argument) }
    }

    public mutating func append(_ text: String) {
        var text = text
        text.withUTF8 { append(bytes: $0) }
    }

    public mutating func append(bytes: some Collection<UInt8>) {
        startArgument(length: bytes.count)
        encoded.append(contentsOf: bytes)
        endArgument()
    }

    /// One argument made of two or three texts, e.g. a key's prefix and its name, without joining
    /// them first.
    public mutating func append(_ first: String, _ second: String, _ third: String = "") {
        var first = first, second = second, third = third
        first.withUTF8 { a in
            second.withUTF8 { b in
                third.withUTF8 { c in
                    startArgument(length: a.count + b.count + c.count)
                    encoded.append(contentsOf: a)
                    encoded.append(contentsOf: b)
                    encoded.append(contentsOf: c)
                    endArgument()
                }
            }
        }
    }

    /// A decimal integer, as Redis reads it.
    public mutating func append(_ value: Int) {
        Self.withDecimal(value) { append(bytes: $0) }
    }

    /// Appends every argument of `other`, in order.
    public mutating func append(contentsOf other: RedisArguments) {
        count += other.count
        encoded.append(contentsOf: other.encoded)
    }

    /// The whole command: `*<count>\r\n` and the arguments.
    func write(into buffer: inout ByteBuffer) {
        buffer.writeInteger(UInt8(ascii: "*"))
        Self.withDecimal(count) { buffer.writeBytes($0) }
        buffer.writeStaticString("\r\n")
        buffer.writeBytes(encoded)
    }

    /// Bytes a command of these arguments takes on the wire.
    var encodedSize: Int { encoded.count + 24 }

    private mutating func startArgument(length: Int) {
        count += 1
        encoded.append(UInt8(ascii: "$"))
        Self.withDecimal(length) { encoded.append(contentsOf: $0) }
        encoded.append(UInt8(ascii: "\r"))
        encoded.append(UInt8(ascii: "\n"))
    }

    private mutating func endArgument() {
        encoded.append(UInt8(ascii: "\r"))
        encoded.append(UInt8(ascii: "\n"))
    }

    /// Calls `body` with the decimal digits of `value` (and its sign), written on the stack.
    private static func withDecimal<Result>(_ value: Int, _ body: (UnsafeRawBufferPointer) -> Result) -> Result {
        var scratch: (UInt64, UInt64, UInt64) = (0, 0, 0)  // 24 bytes hold any Int64 with its sign
        return withUnsafeMutableBytes(of: &scratch) { bytes in
            var magnitude = value.magnitude
            var index = bytes.count
            repeat {
                index -= 1
                bytes[index] = UInt8(ascii: "0") + UInt8(magnitude % 10)
                magnitude /= 10
            } while magnitude != 0
            if value < 0 {
                index -= 1
                bytes[index] = UInt8(ascii: "-")
            }
            return body(UnsafeRawBufferPointer(rebasing: bytes[index...]))
        }
    }
}
