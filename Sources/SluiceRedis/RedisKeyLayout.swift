/// The names of Sluice's state in Redis. Every name of a key's state carries the API key id as hash
/// tag (`sluice:{<keyId>}:…`), so one script touches one slot and works on Redis Cluster too.
/// A key in a team (`keys[].team`) has its limiter state tagged by the team instead
/// (`sluice:{team:<team>}:key:<keyId>:state`), next to the team's own (`sluice:{team:<team>}:state`):
/// batch.lua decides a request against both in one call, so all keys of a team live in one slot
/// (one shard of a cluster), and a key moved into or out of a team starts its limiter state over.
/// Usage records stay tagged by the key (they are written and read on their own).
/// Key ids and team names are `[A-Za-z0-9_.-]{1,64}` (validated by the config), so they never
/// contain braces or colons: `{team:…}` never names a key's slot. Names tied to no API key are
/// statics (``nodes``); a script that takes one takes no other key.
///
/// | name | type | content | expires |
/// |---|---|---|---|
/// | `sluice:{k}:state` | hash | every limit of the key: `r` `t` `i` `o` (the TATs of the requests, tokens, input and output buckets, µs of Redis' clock; `0` or past: full), `qd` `qdu` `qm` `qmu` (quota day and month, their usage), `exp` (the expiry last set, ms), and per node `n:<node>` = `slots leaseExpiryMs epoch lastSequence seenMs admitted` (its concurrency slots, counted while the lease runs; see batch.lua) | a state TTL (15 min) after its last TAT, quota period or call, moved only when that passes the expiry last set |
/// | `sluice:{team:t}:key:k:state` | hash | the state of key k in team t, as `sluice:{k}:state` | as `sluice:{k}:state` |
/// | `sluice:{team:t}:state` | hash | team t's limits: the key's bucket, quota and budget fields, `exp`, and per node and key `m:<node>:<key>` = `slots leaseExpiryMs seenMs` (a mirror of the node's slots for that key, counted by the team's concurrency limit) | as `sluice:{k}:state` |
/// | `sluice:{k}:usage:<YYYY-MM-DD>` | hash | `<model>:prompt`, `<model>:completion`, `<model>:requests` (flushed by each node every second) | usage TTL (40 days) |
/// | `sluice:{k}:usage-stream` | stream | one entry per settled request, only with `redis.usage_stream` | usage TTL after the last entry |
/// | `sluice:nodes` | zset | member node id, score its expiry (ms of Redis' clock: three heartbeat intervals after its beat; expired members go at the next heartbeat) | ten times that after the last heartbeat |
public struct RedisKeyLayout: Sendable {
    public let keyID: String
    /// `sluice:{<keyId>}:`, the start of the key's usage names.
    let prefix: String
    /// The key's limiter state hash (tagged by its team when it has one).
    public let state: String

    /// The live nodes' heartbeats (heartbeat.lua, ``NodeHeartbeat``).
    static let nodes = "sluice:nodes"

    /// - Parameter team: the key's team (`keys[].team`), nil for none.
    public init(keyID: String, team: String? = nil) {
        self.keyID = keyID
        self.prefix = "sluice:{\(keyID)}:"
        self.state = team.map { "sluice:{team:\($0)}:key:\(keyID):state" } ?? prefix + "state"
    }

    /// A team's limiter state hash (batch.lua, with its keys' states).
    public static func teamState(_ team: String) -> String { "sluice:{team:\(team)}:state" }
    public var usageStream: String { prefix + "usage-stream" }

    /// - Parameter day: `YYYY-MM-DD` (UTC).
    public func usage(day: String) -> String { prefix + "usage:" + day }
}
