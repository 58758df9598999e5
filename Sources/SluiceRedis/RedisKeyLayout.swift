/// The names of Sluice's state in Redis. Every name of a key's state carries the API key id as hash
/// tag (`sluice:{<keyId>}:…`), so one script touches one slot and works on Redis Cluster too.
/// Key ids are `[A-Za-z0-9_.-]{1,64}` (validated by the config), so they never contain braces. Names
/// tied to no API key are statics (``nodes``); a script that takes one takes no other key.
///
/// | name | type | content | expires |
/// |---|---|---|---|
/// | `sluice:{k}:state` | hash | every limit of the key: `r` `t` `i` `o` (the TATs of the requests, tokens, input and output buckets, µs of Redis' clock; `0` or past: full), `qd` `qdu` `qm` `qmu` (quota day and month, their usage), `exp` (the expiry last set, ms), and per node `n:<node>` = `slots leaseExpiryMs epoch lastSequence seenMs admitted` (its concurrency slots, counted while the lease runs; see batch.lua) | a state TTL (15 min) after its last TAT, quota period or call, moved only when that passes the expiry last set |
/// | `sluice:{k}:usage:<YYYY-MM-DD>` | hash | `<model>:prompt`, `<model>:completion`, `<model>:requests` (flushed by each node every second) | usage TTL (40 days) |
/// | `sluice:{k}:usage-stream` | stream | one entry per settled request, only with `redis.usage_stream` | usage TTL after the last entry |
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

    /// Every limit of the key, in one hash (batch.lua, snapshot.lua).
    public var state: String { prefix + "state" }
    public var usageStream: String { prefix + "usage-stream" }

    /// - Parameter day: `YYYY-MM-DD` (UTC).
    public func usage(day: String) -> String { prefix + "usage:" + day }
}
