/// Tuning of a `RedisClient`. Every wait is bounded so that a dead Redis fails fast.
public struct RedisClientOptions: Sendable, Hashable {
    public static let defaultConnectionCount = 2
    public static let defaultConnectTimeoutMillis = 200
    public static let defaultCommandTimeoutMillis = 250
    public static let defaultInitialBackoffMillis = 25
    public static let defaultMaximumBackoffMillis = 2_000

    /// Connections (each on its own event loop) when the client is given no event loop group; with
    /// a group, there is one connection per loop of the group.
    public var connectionCount: Int
    /// Bound on opening a connection: TCP and, for `rediss://`, the TLS handshake, together.
    /// DNS resolution of a host name is not covered by it; use an address or a name the resolver
    /// answers at once.
    public var connectTimeoutMillis: Int
    /// Bound on each socket read and write (hiredis `redisSetTimeout`): a command whose reply
    /// does not start arriving within it fails with `RedisError.timedOut`.
    public var commandTimeoutMillis: Int
    /// First pause after a failed connect; doubles on each further failure up to the maximum.
    public var initialBackoffMillis: Int
    public var maximumBackoffMillis: Int

    public init(
        connectionCount: Int = RedisClientOptions.defaultConnectionCount,
        connectTimeoutMillis: Int = RedisClientOptions.defaultConnectTimeoutMillis,
        commandTimeoutMillis: Int = RedisClientOptions.defaultCommandTimeoutMillis,
        initialBackoffMillis: Int = RedisClientOptions.defaultInitialBackoffMillis,
        maximumBackoffMillis: Int = RedisClientOptions.defaultMaximumBackoffMillis
    ) {
        self.connectionCount = max(connectionCount, 1)
        self.connectTimeoutMillis = max(connectTimeoutMillis, 1)
        self.commandTimeoutMillis = max(commandTimeoutMillis, 1)
        self.initialBackoffMillis = max(initialBackoffMillis, 1)
        self.maximumBackoffMillis = max(maximumBackoffMillis, self.initialBackoffMillis)
    }
}
