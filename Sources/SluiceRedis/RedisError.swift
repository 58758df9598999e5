/// Why a Redis command did not produce a reply.
///
/// `outcomeUnknown` tells whether the command may have run on the server anyway: a command that
/// was written before the connection failed may or may not have been executed.
public enum RedisError: Error, Sendable, Hashable, CustomStringConvertible {
    /// No connection could be opened (refused, unreachable, connect timeout, DNS, a TLS handshake
    /// that failed or did not finish within the connect timeout). The command was not sent.
    case connectFailed(String)
    /// The server refused `AUTH` or `SELECT` on connect. The command was not sent.
    case handshakeFailed(String)
    /// The client's TLS setup could not be built from its files (a CA bundle, certificate or key
    /// that is missing or not PEM): thrown by `RedisClient.init`, never by a command.
    case tlsSetupFailed(String)
    /// The connection is down and waiting to reconnect (backoff); the command failed fast without
    /// being sent. Carries the error that brought the connection down.
    case notConnected(String)
    /// The connection failed while the command was in flight (reset, EOF, protocol error).
    case connectionLost(String)
    /// No reply within the command timeout; the connection was dropped and will be reopened.
    case timedOut
    /// The server answered with an error reply (`ERR …`, `WRONGTYPE …`, a Lua error).
    case server(String)
    /// The reply did not have the shape the caller expected.
    case unexpectedReply(String)
    /// The command cannot be sent as given (no arguments).
    case invalidCommand(String)
    /// The client was shut down.
    case shutDown

    /// Whether the command may have been executed by the server although it failed here.
    public var outcomeUnknown: Bool {
        switch self {
        case .connectionLost, .timedOut: true
        case .connectFailed, .handshakeFailed, .tlsSetupFailed, .notConnected, .server, .unexpectedReply, .invalidCommand, .shutDown: false
        }
    }

    public var description: String {
        switch self {
        case .connectFailed(let message): "redis connect failed: \(message)"
        case .handshakeFailed(let message): "redis AUTH/SELECT failed: \(message)"
        case .tlsSetupFailed(let message): "redis TLS setup failed: \(message)"
        case .notConnected(let message): "redis not connected (reconnecting): \(message)"
        case .connectionLost(let message): "redis connection lost with command in flight: \(message)"
        case .timedOut: "redis command timed out"
        case .server(let message): "redis error reply: \(message)"
        case .unexpectedReply(let message): "unexpected redis reply: \(message)"
        case .invalidCommand(let message): "invalid redis command: \(message)"
        case .shutDown: "redis client shut down"
        }
    }
}
