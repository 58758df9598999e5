/// The names of Sluice's state in Redis. Every name of a key's limiter state carries the API key id
/// as hash tag (`sluice:{<keyId>}:…`), so one script touches one slot and works on Redis Cluster too.
/// Key ids are `[A-Za-z0-9_.-]{1,64}` (validated by the config), so they never contain braces. Names
/// tied to no API key are statics (``nodes``); a script that takes one takes no other key.
///
/// | name | type | content | expires |
/// |---|---|---|---|
/// | `sluice:{k}:rpm`, `:tpm`, `:itpm`, `:otpm` | string | GCRA TAT, µs of Redis' clock | when the bucket is full again |
/// | `sluice:{k}:leases` | zset | member request id, score lease expiry (ms; renewed by the node while the request runs) | lease TTL + 1 s after the last admission or renewal |
/// | `sluice:{k}:quota` | hash | `day`, `day_used`, `month`, `month_used` (UTC day index, year·12+month−1) | a day after the period ends |
/// | `sluice:{k}:res:<requestId>` | string | six integers: prompt, output, lease 1\|0, quota cost, quota day, quota month | reservation TTL; taken by settle (`GETDEL`) |
/// | `sluice:{k}:usage:<YYYY-MM-DD>` | hash | `<model>:prompt`, `<model>:completion`, `<model>:requests` | usage TTL (40 days) |
/// | `sluice:{k}:usage-stream` | stream | one entry per settled request | usage TTL after the last entry |
/// | `sluice:nodes` | zset | member node id, score its expiry (ms of Redis' clock: three heartbeat intervals after its beat; expired members go at the next heartbeat) | ten times that after the last heartbeat |
public struct RedisKeyLayout: Sendable {
    public let keyID: String
    /// `sluice:{<keyId>}:`, the start of every name of the key's state.
    let prefix: String

    /// The live nodes' heartbeats (heartbeat.lua, ``NodeHeartbeat``).
    static let nodes = "sluice:nodes"

    public init(keyID: String) {
        self.keyID = keyID
        self.prefix = "sluice:{\(keyID)}:"
    }

    public var requests: String { prefix + Name.requests }
    public var tokens: String { prefix + Name.tokens }
    public var inputTokens: String { prefix + Name.inputTokens }
    public var outputTokens: String { prefix + Name.outputTokens }
    public var leases: String { prefix + Name.leases }
    public var quota: String { prefix + Name.quota }
    public var usageStream: String { prefix + Name.usageStream }

    public func reservation(requestID: String) -> String { prefix + Name.reservation + requestID }

    /// - Parameter day: `YYYY-MM-DD` (UTC).
    public func usage(day: String) -> String { prefix + Name.usage + day }

    /// How many keys ``appendLimiterKeys(requestID:to:)`` appends.
    static let limiterKeyCount = 7
    /// How many keys ``appendUsageKeys(day:to:)`` appends.
    static let usageKeyCount = 2

    /// Appends the keys admit.lua and settle.lua take first, in their `KEYS` order: the four
    /// buckets, the leases, the quota, the reservation. Written from their parts, without building
    /// the names as strings first.
    func appendLimiterKeys(requestID: String, to arguments: inout RedisArguments) {
        for name in [Name.requests, Name.tokens, Name.inputTokens, Name.outputTokens, Name.leases, Name.quota] {
            arguments.append(prefix, name)
        }
        arguments.append(prefix, Name.reservation, requestID)
    }

    /// Appends the keys settle.lua takes after the limiter keys: the day's usage and the stream.
    func appendUsageKeys(day: String, to arguments: inout RedisArguments) {
        arguments.append(prefix, Name.usage, day)
        arguments.append(prefix, Name.usageStream)
    }

    private enum Name {
        static let requests = "rpm"
        static let tokens = "tpm"
        static let inputTokens = "itpm"
        static let outputTokens = "otpm"
        static let leases = "leases"
        static let quota = "quota"
        static let usageStream = "usage-stream"
        static let reservation = "res:"
        static let usage = "usage:"
    }
}
