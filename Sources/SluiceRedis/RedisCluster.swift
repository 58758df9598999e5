import Logging
import NIOCore
import SluiceCore
import Synchronization

/// Which primary serves which slots, as `CLUSTER SLOTS` tells (replicas are not used: every call
/// Sluice makes writes).
struct RedisClusterTopology: Equatable, Sendable, CustomStringConvertible {
    struct Shard: Equatable, Sendable {
        var slots: ClosedRange<Int>
        var host: String
        var port: Int
        var address: String { RedisServerPool.address(host: host, port: port) }
    }

    var shards: [Shard]

    /// - Parameter askedHost: the host of the server that answered: a primary that does not know
    ///   its own address reports an empty host, meaning "the one you asked".
    static func parse(_ reply: RedisReply, askedHost: String) throws(RedisError) -> RedisClusterTopology {
        guard let ranges = reply.array else { throw .unexpectedReply("CLUSTER SLOTS returned \(reply)") }
        var shards: [Shard] = []
        for range in ranges {
            guard let parts = range.array, parts.count >= 3,
                  let start = parts[0].integer, let end = parts[1].integer,
                  0 <= start, start <= end, end < RedisClusterSlot.count,
                  let primary = parts[2].array, primary.count >= 2,
                  let host = primary[0].string, let port = primary[1].integer, (1...65_535).contains(port)
            else { throw .unexpectedReply("CLUSTER SLOTS returned a range Sluice cannot read: \(range)") }
            shards.append(Shard(slots: Int(start)...Int(end), host: host.isEmpty || host == "?" ? askedHost : host, port: Int(port)))
        }
        return RedisClusterTopology(shards: shards.sorted { $0.slots.lowerBound < $1.slots.lowerBound })
    }

    var description: String {
        shards.map { "\($0.slots.lowerBound)-\($0.slots.upperBound)→\($0.address)" }.joined(separator: " ")
    }
}

/// A `MOVED` or `ASK` error reply: the slot is served (for good, or for this one command while it
/// migrates) by another server.
struct RedisClusterRedirect: Equatable {
    enum Kind { case moved, ask }
    var kind: Kind
    var slot: Int
    var host: String
    var port: Int

    init(kind: Kind, slot: Int, host: String, port: Int) {
        self.kind = kind
        self.slot = slot
        self.host = host
        self.port = port
    }

    /// `MOVED 3999 127.0.0.1:6381`, `ASK 3999 [::1]:6381`; an empty host means the server asked.
    init?(_ message: String, askedHost: String) {
        let words = message.split(separator: " ")
        guard words.count == 3, let slot = Int(words[1]), (0..<RedisClusterSlot.count).contains(slot) else { return nil }
        switch words[0] {
        case "MOVED": kind = .moved
        case "ASK": kind = .ask
        default: return nil
        }
        let address = words[2]
        guard let colon = address.lastIndex(of: ":"), let port = Int(address[address.index(after: colon)...]),
              (1...65_535).contains(port) else { return nil }
        var host = address[..<colon]
        if host.hasPrefix("["), host.hasSuffix("]") { host = host.dropFirst().dropLast() }
        self.slot = slot
        self.host = host.isEmpty ? askedHost : String(host)
        self.port = port
    }
}

/// Routes commands to the primaries of a Redis Cluster by their key's slot.
///
/// The slot map comes from `CLUSTER SLOTS`, asked of a known server at start, every
/// `refreshIntervalMillis`, and whenever a server failed or answered `MOVED` (a failover or a
/// resharding), at most once per `minimumRefreshGapMillis`. A `MOVED` also corrects the slot at
/// once and the command is resent there; an `ASK` (a slot halfway through a migration) resends that
/// one command, preceded by `ASKING`, to the importing server; `TRYAGAIN` (keys of one call split
/// between the two ends of a migration) waits a moment and resends. A command that failed on its
/// connection is not resent: its outcome is unknown, and the caller decides (`RedisError`).
///
/// Each primary gets a `RedisServerPool`: one connection per event loop. Servers that no longer own
/// a slot are closed a few seconds after the map stopped naming them (the commands sent to them
/// have answered or timed out by then); the seeds stay, to ask for the map when every primary is gone.
final class RedisClusterRouter: Sendable {
    static let maximumRedirects = 5
    static let refreshIntervalMillis: Int64 = 2_000
    static let minimumRefreshGapMillis: Int64 = 100
    static let retireDelay = TimeAmount.seconds(5)

    private struct State {
        var owners: [RedisServerPool?] = Array(repeating: nil, count: RedisClusterSlot.count)
        var pools: [String: RedisServerPool] = [:]
        var topology: RedisClusterTopology?
        var refresh: Task<Void, Never>?
        var lastRefreshStart: NIODeadline?
        var shutDown = false
        /// Pools no shard uses any more, shut down `retireDelay` after they left (or at the client's
        /// shutdown, if that comes first).
        var retiring: [ObjectIdentifier: RedisServerPool] = [:]
    }

    /// Credentials, TLS and database of every server (the first seed's; discovered servers differ
    /// only in host and port).
    private let template: RedisConfig
    private let seedAddresses: Set<String>
    /// The client's TLS context (`rediss://` seeds), shared by every server's connections.
    private let tls: RedisTLS?
    private let options: RedisClientOptions
    private let group: any EventLoopGroup
    private let logger: Logger
    private let state = Mutex(State())
    private let periodicRefresh = Mutex<RepeatedTask?>(nil)

    init(seeds: [RedisConfig], tls: RedisTLS?, options: RedisClientOptions, group: any EventLoopGroup, logger: Logger) {
        precondition(!seeds.isEmpty, "a cluster needs at least one seed")
        template = seeds[0]
        self.tls = tls
        seedAddresses = Set(seeds.map { RedisServerPool.address(host: $0.host, port: $0.port) })
        self.options = options
        self.group = group
        self.logger = logger
        for seed in seeds { _ = pool(host: seed.host, port: seed.port) }
        requestRefresh()
        let task = group.next().scheduleRepeatedTask(
            initialDelay: .milliseconds(Self.refreshIntervalMillis), delay: .milliseconds(Self.refreshIntervalMillis)
        ) { [weak self] _ in self?.requestRefresh() }
        periodicRefresh.withLock { $0 = task }
    }

    // MARK: Pools

    /// The pool of a server, made on first use.
    func pool(host: String, port: Int) -> RedisServerPool {
        let address = RedisServerPool.address(host: host, port: port)
        return state.withLock { state in
            if let pool = state.pools[address] { return pool }
            var config = template
            config.host = host
            config.port = port
            // After shutdown (a topology refresh still finishing) the pool is never started: the
            // client's loops may be gone, and starting would hand them work. Its calls fail at once.
            let pool = RedisServerPool(config: config, tls: tls, options: options, group: group, logger: logger,
                                       name: "sluice-redis-\(address)", start: !state.shutDown)
            if state.shutDown { pool.shutdown() } else { state.pools[address] = pool }
            return pool
        }
    }

    func owner(ofSlot slot: Int) -> RedisServerPool? {
        state.withLock { $0.owners[slot] }
    }

    /// Every pool of a server that owns a slot.
    var primaries: [RedisServerPool] {
        state.withLock { state in
            var seen = Set<String>()
            return state.owners.compactMap { $0 }.filter { seen.insert($0.address).inserted }
        }
    }

    /// A pool for a command tied to no key: a connected primary, else any server known.
    func anyPool() -> RedisServerPool? {
        let candidates = primaries
        if let connected = candidates.first(where: \.isConnected) { return connected }
        return candidates.first ?? state.withLock { $0.pools.values.first }
    }

    var topology: RedisClusterTopology? { state.withLock { $0.topology } }

    /// Pools of servers that left the slot map, waiting out `retireDelay` (tests).
    var retiringPools: Int { state.withLock { $0.retiring.count } }

    func shutdown() {
        periodicRefresh.withLock { $0?.cancel() }
        let (pools, refresh) = state.withLock { state in
            state.shutDown = true
            defer { state.pools = [:]; state.owners = []; state.retiring = [:] }
            return (Array(state.pools.values) + Array(state.retiring.values), state.refresh)
        }
        refresh?.cancel()
        for pool in pools { pool.shutdown() }
    }

    // MARK: Sending

    /// Sends a command to the primary of `key`'s slot (any primary without a key), following
    /// redirections.
    func send(_ command: RedisArguments, key: String?) async -> Result<RedisReply, RedisError> {
        let slot = key.map(RedisClusterSlot.of)
        var redirected: RedisServerPool?
        var asking = false
        for attempt in 0...Self.maximumRedirects {
            let pool: RedisServerPool
            if let redirected {
                pool = redirected
            } else if let slot {
                if let owner = owner(ofSlot: slot) {
                    pool = owner
                } else {
                    await refreshed()
                    guard let owner = owner(ofSlot: slot) else {
                        return .failure(.notConnected("no redis cluster primary serves slot \(slot) (the cluster is down, starting, or has uncovered slots)"))
                    }
                    pool = owner
                }
            } else {
                if state.withLock({ $0.topology == nil }) { await refreshed() }
                guard let any = anyPool() else { return .failure(.shutDown) }
                pool = any
            }
            let result = await pool.send(command, asking: asking)
            redirected = nil
            asking = false
            switch result {
            case .failure(let error):
                // The server may be gone for good (a failover): learn who serves its slots now.
                if error != .shutDown { requestRefresh() }
                return result
            case .success(.error(let message)):
                if let redirect = RedisClusterRedirect(message, askedHost: pool.config.host) {
                    let target = self.pool(host: redirect.host, port: redirect.port)
                    switch redirect.kind {
                    case .moved:
                        state.withLock { if !$0.shutDown { $0.owners[redirect.slot] = target } }
                        requestRefresh()
                    case .ask:
                        asking = true
                    }
                    redirected = target
                    continue
                }
                if message.hasPrefix("TRYAGAIN") {
                    try? await Task.sleep(for: .milliseconds(5 * (attempt + 1)))
                    continue
                }
                if message.hasPrefix("CLUSTERDOWN") { requestRefresh() }
                return result
            case .success:
                return result
            }
        }
        return .failure(.server("redis cluster redirected the command more than \(Self.maximumRedirects) times (slots moving?)"))
    }

    // MARK: The slot map

    /// Starts a refresh of the slot map unless one runs or one started less than
    /// `minimumRefreshGapMillis` ago.
    func requestRefresh() {
        _ = startRefresh()
    }

    /// Waits for the refresh under way, or for a new one (if the last is not too recent).
    func refreshed() async {
        await startRefresh()?.value
    }

    private func startRefresh() -> Task<Void, Never>? {
        let now = NIODeadline.now()
        return state.withLock { state -> Task<Void, Never>? in
            if state.shutDown { return nil }
            if let running = state.refresh { return running }
            if let last = state.lastRefreshStart, now - last < .milliseconds(Self.minimumRefreshGapMillis) { return nil }
            state.lastRefreshStart = now
            let task = Task { await self.refresh() }
            state.refresh = task
            return task
        }
    }

    private func refresh() async {
        defer { state.withLock { $0.refresh = nil } }
        // Servers that served slots and answer first, then the seeds, then the rest.
        let (owners, all) = state.withLock { state in (state.topology?.shards.map(\.address) ?? [], state.pools) }
        var order = owners.compactMap { all[$0] }.filter(\.isConnected)
        order += seedAddresses.sorted().compactMap { all[$0] }
        order += all.values.sorted { $0.address < $1.address }
        var asked = Set<String>()
        var failures: [String] = []
        for pool in order where asked.insert(pool.address).inserted {
            switch await pool.send(RedisArguments(["CLUSTER", "SLOTS"])) {
            case .success(let reply):
                do throws(RedisError) {
                    if case .error(let message) = reply { throw RedisError.server(message) }
                    let topology = try RedisClusterTopology.parse(reply, askedHost: pool.config.host)
                    guard !topology.shards.isEmpty else { throw RedisError.unexpectedReply("no slot is assigned") }
                    apply(topology)
                    return
                } catch {
                    failures.append("\(pool.address): \(error)")
                }
            case .failure(let error):
                failures.append("\(pool.address): \(error)")
            }
        }
        logger.warning("no redis cluster node told the slot map; keeping the last one", metadata: ["errors": "\(failures.joined(separator: "; "))"])
    }

    private func apply(_ topology: RedisClusterTopology) {
        var pools: [String: RedisServerPool] = [:]
        for shard in topology.shards where pools[shard.address] == nil {
            pools[shard.address] = pool(host: shard.host, port: shard.port)
        }
        let group = self.group
        let previous = state.withLock { state -> RedisClusterTopology? in
            guard !state.shutDown else { return state.topology }
            let previous = state.topology
            state.topology = topology
            var owners = [RedisServerPool?](repeating: nil, count: RedisClusterSlot.count)
            for shard in topology.shards {
                let pool = pools[shard.address]
                for slot in shard.slots { owners[slot] = pool }
            }
            state.owners = owners
            let retired = state.pools.values.filter { pools[$0.address] == nil && !seedAddresses.contains($0.address) }
            for pool in retired {
                state.pools[pool.address] = nil
                state.retiring[ObjectIdentifier(pool)] = pool
            }
            // Scheduled under the lock: shutdown() cannot have run yet (so the event loops are still
            // there; scheduling on a group already shut down crashes under SWIFTNIO_STRICT), and a
            // shutdown() after this takes the retiring pools itself. Commands already sent there
            // answer or time out long before the delay.
            if !retired.isEmpty {
                group.next().scheduleTask(in: Self.retireDelay) { [weak self] in
                    let due = self?.state.withLock { state in retired.compactMap { state.retiring.removeValue(forKey: ObjectIdentifier($0)) } }
                    for pool in due ?? [] { pool.shutdown() }
                }
            }
            return previous
        }
        if previous != topology {
            let metadata: Logger.Metadata = ["slots": "\(topology)", "primaries": "\(pools.count)"]
            if previous == nil {
                logger.info("redis cluster slot map loaded", metadata: metadata)
            } else {
                logger.notice("redis cluster slot map changed (failover or resharding)", metadata: metadata)
            }
        }
    }
}
