/// The names of a key's limiter state in Redis. Every name carries the API key id as hash tag
/// (`sluice:{<keyId>}:…`), so one script touches one slot and works on Redis Cluster too. Key ids
/// are `[A-Za-z0-9_.-]{1,64}` (validated by the config), so they never contain braces.
///
/// | name | type | content | expires |
/// |---|---|---|---|
/// | `sluice:{k}:rpm`, `:tpm`, `:itpm`, `:otpm` | string | GCRA TAT, µs of Redis' clock | when the bucket is full again |
/// | `sluice:{k}:leases` | zset | member request id, score lease expiry (ms) | lease TTL + 1 s after the last admission |
/// | `sluice:{k}:quota` | hash | `day`, `day_used`, `month`, `month_used` (UTC day index, year·12+month−1) | a day after the period ends |
/// | `sluice:{k}:res:<requestId>` | hash | `prompt`, `output`, `lease`, `quota_cost`, `quota_day`, `quota_month` | reservation TTL; deleted by settle |
/// | `sluice:{k}:usage:<YYYY-MM-DD>` | hash | `<model>:prompt`, `<model>:completion`, `<model>:requests` | usage TTL (40 days) |
/// | `sluice:{k}:usage-stream` | stream | one entry per settled request | usage TTL after the last entry |
public struct RedisKeyLayout: Sendable {
    public let keyID: String
    private let prefix: String

    public init(keyID: String) {
        self.keyID = keyID
        self.prefix = "sluice:{\(keyID)}:"
    }

    public var requests: String { prefix + "rpm" }
    public var tokens: String { prefix + "tpm" }
    public var inputTokens: String { prefix + "itpm" }
    public var outputTokens: String { prefix + "otpm" }
    public var leases: String { prefix + "leases" }
    public var quota: String { prefix + "quota" }
    public var usageStream: String { prefix + "usage-stream" }

    public func reservation(requestID: String) -> String { prefix + "res:" + requestID }

    /// - Parameter day: `YYYY-MM-DD` (UTC).
    public func usage(day: String) -> String { prefix + "usage:" + day }
}
