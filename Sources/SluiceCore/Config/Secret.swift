/// A secret value (an upstream API key, a Redis password) that never prints itself.
///
/// `description`, `debugDescription` and reflection all show `<redacted>`, so a secret that ends up
/// in a log line, an error message or a `dump` of the configuration leaks nothing. Read the value
/// only where it is handed to the wire, through `revealed`.
public struct Secret: Sendable, Hashable, CustomStringConvertible, CustomDebugStringConvertible, CustomReflectable {
    /// The secret itself. Use it only to build the outgoing request; never log it.
    public let revealed: String

    public init(_ value: String) {
        self.revealed = value
    }

    public var description: String { "<redacted>" }
    public var debugDescription: String { "<redacted>" }
    public var customMirror: Mirror { Mirror(self, children: [], displayStyle: .struct) }
}
