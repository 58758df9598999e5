import Synchronization

/// Request ids unique across nodes and restarts: a random 64-bit prefix drawn at start, then a counter.
/// They key reservations (settled exactly once per id), so they are never taken from the client: a
/// client's own `x-request-id` only replaces the id the client meets (`ClientRequestID`).
final class RequestIDGenerator: Sendable {
    private let prefix: String
    private let counter = Atomic<UInt64>(0)

    init() {
        var rng = SystemRandomNumberGenerator()
        prefix = "req_" + Self.hex(rng.next(), width: 16)
    }

    func next() -> String {
        let n = counter.wrappingAdd(1, ordering: .relaxed).newValue
        return prefix + Self.hex(n, width: 12)
    }

    private static func hex(_ value: UInt64, width: Int) -> String {
        let digits = String(value, radix: 16)
        return String(repeating: "0", count: max(0, width - digits.count)) + digits
    }
}
