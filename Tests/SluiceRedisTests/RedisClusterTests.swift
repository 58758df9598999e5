import Foundation
import XCTest
import SluiceCore
@testable import SluiceRedis

#if canImport(Glibc)
import Glibc
#endif

/// The pieces of Redis Cluster support that need no server: the slot function, `CLUSTER SLOTS`
/// and the redirections.
final class RedisClusterRoutingTests: XCTestCase {
    func testSlotsAreRedisCRC16OfTheHashTag() {
        // Vectors of the Redis Cluster specification.
        XCTAssertEqual(RedisClusterSlot.of("123456789"), 0x31C3)
        XCTAssertEqual(RedisClusterSlot.of("foo"), 12_182)
        XCTAssertEqual(RedisClusterSlot.of("{user1000}.following"), RedisClusterSlot.of("{user1000}.followers"))
        XCTAssertEqual(RedisClusterSlot.of("{user1000}.following"), RedisClusterSlot.of("user1000"))
        // An empty tag hashes the whole key; only the first {…} counts.
        XCTAssertEqual(RedisClusterSlot.of("foo{}{bar}"), RedisClusterSlot.of("foo{}{bar}"))
        XCTAssertNotEqual(RedisClusterSlot.of("foo{}{bar}"), RedisClusterSlot.of("bar"))
        XCTAssertEqual(RedisClusterSlot.of("foo{{bar}}zap"), RedisClusterSlot.of("{bar"))
        XCTAssertEqual(RedisClusterSlot.of("foo{bar}{zap}"), RedisClusterSlot.of("bar"))
        // Every name of a key's state is in one slot.
        let layout = RedisKeyLayout(keyID: "team-a")
        XCTAssertEqual(RedisClusterSlot.of(layout.state), RedisClusterSlot.of(layout.usage(day: "2026-12-06")))
        XCTAssertEqual(RedisClusterSlot.of(layout.state), RedisClusterSlot.of(layout.usageStream))
    }

    func testClusterSlotsReplyIsReadIntoPrimariesBySlotRange() throws {
        func node(_ host: String, _ port: Int64) -> RedisReply { .array([.bulkString(Array(host.utf8)), .integer(port), .bulkString(Array("id".utf8))]) }
        let reply = RedisReply.array([
            .array([.integer(5461), .integer(10922), node("10.0.0.2", 7001), node("10.0.0.5", 7004)]),
            .array([.integer(0), .integer(5460), node("", 7000), node("10.0.0.4", 7003)]),
            .array([.integer(10923), .integer(16383), node("10.0.0.3", 7002)]),
        ])
        let topology = try RedisClusterTopology.parse(reply, askedHost: "10.0.0.1")
        XCTAssertEqual(topology.shards.map(\.address), ["10.0.0.1:7000", "10.0.0.2:7001", "10.0.0.3:7002"])
        XCTAssertEqual(topology.shards.map(\.slots), [0...5460, 5461...10922, 10923...16383])

        XCTAssertThrowsError(try RedisClusterTopology.parse(.array([.array([.integer(0), .integer(16384), node("h", 1)])]), askedHost: "x"))
        XCTAssertThrowsError(try RedisClusterTopology.parse(.status("OK"), askedHost: "x"))
    }

    func testRedirectionsAreParsed() {
        XCTAssertEqual(RedisClusterRedirect("MOVED 3999 127.0.0.1:6381", askedHost: "x"),
                       RedisClusterRedirect(kind: .moved, slot: 3999, host: "127.0.0.1", port: 6381))
        XCTAssertEqual(RedisClusterRedirect("ASK 1 [::1]:7000", askedHost: "x"),
                       RedisClusterRedirect(kind: .ask, slot: 1, host: "::1", port: 7000))
        XCTAssertEqual(RedisClusterRedirect("MOVED 12 :7000", askedHost: "10.1.1.1")?.host, "10.1.1.1")
        XCTAssertNil(RedisClusterRedirect("MOVED 16384 h:1", askedHost: "x"))
        XCTAssertNil(RedisClusterRedirect("ERR MOVED 1 h:1", askedHost: "x"))
        XCTAssertNil(RedisClusterRedirect("MOVED 1 h:0", askedHost: "x"))
    }
}

/// Sluice against a real Redis Cluster on loopback (3 primaries, 3 replicas): routing by slot,
/// functions on every primary, `MOVED` and `ASK` while a slot migrates, a primary killed and
/// replaced by its replica, and the failure policy applied per shard.
final class RedisClusterTests: XCTestCase {
    var cluster: RedisClusterProcess?
    var client: RedisClient?

    override func setUpWithError() throws {
        let cluster = try RedisClusterProcess()
        self.cluster = cluster
        client = try RedisClient(config: cluster.config, options: testClientOptions)
    }

    override func tearDown() {
        client?.shutdown()
        cluster = nil
    }

    private var redis: RedisClient { get throws { try XCTUnwrap(client) } }
    private var servers: RedisClusterProcess { get throws { try XCTUnwrap(cluster) } }

    private func request(_ key: String, _ limits: ResolvedLimits) -> AdmissionRequest {
        AdmissionRequest(requestID: UUID().uuidString, keyID: key, limits: limits, model: "gpt-4o", promptTokens: 0, reservedOutputTokens: 0)
    }

    /// Key ids whose state lives on `count` different primaries (one each).
    private func keysOnDistinctShards(_ count: Int) throws -> [(keyID: String, port: Int)] {
        var found: [(String, Int)] = []
        var ports = Set<Int>()
        for index in 0..<1_000 where found.count < count {
            let keyID = "key-\(index)"
            let port = try servers.owner(ofSlot: RedisClusterSlot.of(RedisKeyLayout(keyID: keyID).state))
            if ports.insert(port).inserted { found.append((keyID, port)) }
        }
        return found
    }

    func testSlotsAgreeWithTheServer() async throws {
        for key in ["a", "sluice:{team-a}:state", "sluice:nodes", "{}x", "x{y}z", "ünïcode"] {
            let reply = try await redis.send(["CLUSTER", "KEYSLOT", key])
            XCTAssertEqual(reply.integer.map(Int.init), RedisClusterSlot.of(key), key)
        }
    }

    func testEveryCommandReachesThePrimaryOfItsSlot() async throws {
        let client = try redis
        for index in 0..<300 {
            let key = "k\(index)"
            _ = try await client.send(["SET", key, String(index)], routedBy: key)
        }
        for index in 0..<300 {
            let key = "k\(index)"
            let value = try await client.send(["GET", key], routedBy: key).string
            XCTAssertEqual(value, String(index))
        }
        // Each key sits on its slot's primary, and the three primaries share them.
        var perPrimary: [Int: Int] = [:]
        for port in try servers.primaries() {
            perPrimary[port] = Int(try servers.cli(port, "DBSIZE").trimmingCharacters(in: .whitespacesAndNewlines)) ?? -1
        }
        XCTAssertEqual(perPrimary.values.reduce(0, +), 300, "\(perPrimary)")
        XCTAssertEqual(perPrimary.count, 3)
        XCTAssertTrue(perPrimary.values.allSatisfy { $0 > 50 }, "\(perPrimary)")
        XCTAssertEqual(client.clusterTopology?.shards.count, 3)
        XCTAssertEqual(client.clusterTopology?.shards.reduce(0) { $0 + $1.slots.count }, RedisClusterSlot.count)
    }

    func testTheLimiterRunsOnEveryPrimary() async throws {
        let store = try RedisLimiterStore(client: try redis, options: .init(), nodeID: "node-a")
        let limits = ResolvedLimits(requests: BucketLimit(perMinute: 2), lease: .off)
        for (keyID, _) in try keysOnDistinctShards(3) {
            for _ in 0..<2 {
                guard case .admitted = try await store.admit(request(keyID, limits)) else { return XCTFail("\(keyID) denied within its limit") }
            }
            guard case .denied = try await store.admit(request(keyID, limits)) else { return XCTFail("\(keyID) admitted past its limit") }
        }
        // The function library was loaded on each primary when first called there.
        for port in try servers.primaries() {
            XCTAssertTrue(try servers.cli(port, "FUNCTION", "LIST").contains("sluice"), "no library on \(port)")
        }
    }

    /// Keys whose own states would live on three different primaries, in one team: their states move
    /// to the team's slot, so each admission (key and team in one call) stays in one slot, and the
    /// team's limit holds across them.
    func testATeamsKeysLiveInItsSlotAndShareItsLimits() async throws {
        let store = try RedisLimiterStore(client: try redis, options: .init(), nodeID: "node-a")
        let team = TeamSubject(id: "squad", limits: ResolvedLimits(requests: BucketLimit(perMinute: 2)))
        let keys = try keysOnDistinctShards(3).map(\.keyID)
        XCTAssertEqual(Set(keys.map { store.failureDomain(keyID: $0) }).count, 3, "alone, the keys are on three shards")
        XCTAssertEqual(Set(keys.map { store.failureDomain(keyID: $0, team: team.id) }), [RedisClusterSlot.of(RedisKeyLayout.teamState(team.id))])
        var results: [Bool] = []
        for keyID in keys {
            var admission = request(keyID, ResolvedLimits(requests: BucketLimit(perMinute: 10), lease: .always))
            admission.team = team
            switch try await store.admit(admission) {
            case .admitted: results.append(true)
            case .denied(let denial, _):
                XCTAssertEqual(denial.team, team.id)
                results.append(false)
            }
        }
        XCTAssertEqual(results, [true, true, false], "the team's 2 requests a minute, across its keys")
        let owner = try servers.owner(ofSlot: RedisClusterSlot.of(RedisKeyLayout.teamState(team.id)))
        for keyID in keys.prefix(2) {
            XCTAssertEqual(try servers.cli(owner, "EXISTS", RedisKeyLayout(keyID: keyID, team: team.id).state).trimmingCharacters(in: .whitespacesAndNewlines), "1")
        }
    }

    /// A slot moved while the client holds the old map: `ASK` during the migration (the key is
    /// already on the target), `MOVED` after it; neither loses or repeats a command.
    func testASKDuringAMigrationAndMOVEDAfterIt() async throws {
        let cluster = try servers
        let client = try redis
        let key = "{migrating}:counter"
        let slot = RedisClusterSlot.of(key)
        _ = try await client.send(["INCR", key], routedBy: key)
        let source = try cluster.owner(ofSlot: slot)
        let target = try XCTUnwrap(try cluster.primaries().first { $0 != source })
        let sourceID = try cluster.cli(source, "CLUSTER", "MYID").trimmingCharacters(in: .whitespacesAndNewlines)
        let targetID = try cluster.cli(target, "CLUSTER", "MYID").trimmingCharacters(in: .whitespacesAndNewlines)
        try cluster.cli(target, "CLUSTER", "SETSLOT", String(slot), "IMPORTING", sourceID)
        try cluster.cli(source, "CLUSTER", "SETSLOT", String(slot), "MIGRATING", targetID)
        try cluster.cli(source, "MIGRATE", "127.0.0.1", String(target), "", "0", "5000", "KEYS", key)

        // The source no longer has the key: it answers ASK, and the target takes the command once
        // ASKING comes first.
        let asked = try await client.send(["INCR", key], routedBy: key).integer
        XCTAssertEqual(asked, 2)
        let script = RedisScript(name: "incr", source: "return redis.call('INCR', KEYS[1])")
        let scripted = try await client.evalScript(script, keys: [key], arguments: []).integer
        XCTAssertEqual(scripted, 3)
        XCTAssertEqual(client.clusterTopology?.shards.first { $0.slots.contains(slot) }?.port, source, "ASK must not change the map")

        for port in cluster.servers.map(\.port) {
            _ = try? cluster.cli(port, "CLUSTER", "SETSLOT", String(slot), "NODE", targetID)
        }
        let moved = try await client.send(["INCR", key], routedBy: key).integer
        XCTAssertEqual(moved, 4)
        await eventually(5) { client.clusterTopology?.shards.first { $0.slots.contains(slot) }?.port == target }
        XCTAssertEqual(try cluster.cli(target, "GET", key).trimmingCharacters(in: .whitespacesAndNewlines), "4")
    }

    /// A primary killed: its replica takes over within a few seconds and the client follows; keys
    /// on the other shards never see an error meanwhile.
    func testAPrimaryKilledIsReplacedByItsReplicaAndOtherShardsKeepAnswering() async throws {
        let cluster = try servers
        let client = try redis
        // The victim is not the seed the client was given: its pool is one the slot map made.
        let seedPort = cluster.config.port
        let keys = try keysOnDistinctShards(3).sorted { ($0.port == seedPort ? 1 : 0) < ($1.port == seedPort ? 1 : 0) }
            .map { RedisKeyLayout(keyID: $0.keyID).state }
        for key in keys { _ = try await client.send(["SET", key, "0"], routedBy: key) }
        let victimPort = try cluster.owner(ofSlot: RedisClusterSlot.of(keys[0]))
        XCTAssertNotEqual(victimPort, seedPort)
        try cluster.cli(victimPort, "WAIT", "1", "1000")  // the replica has the keys
        try XCTUnwrap(cluster.server(port: victimPort)).stop()

        var healthyFailures: [String] = []
        var recoveredAfter: Double?
        let killed = Date()
        while Date().timeIntervalSince(killed) < 20, recoveredAfter == nil {
            for key in keys.dropFirst() {
                do { _ = try await client.send(["INCR", key], routedBy: key) } catch { healthyFailures.append("\(error)") }
            }
            if (try? await client.send(["INCR", keys[0]], routedBy: keys[0])) != nil { recoveredAfter = Date().timeIntervalSince(killed) }
            try await Task.sleep(for: .milliseconds(20))
        }
        var lastError = ""
        do { _ = try await client.send(["INCR", keys[0]], routedBy: keys[0]) } catch { lastError = "\(error)" }
        let recovered = try XCTUnwrap(recoveredAfter, "the killed primary's slots never answered again: \(lastError); cluster: \((try? cluster.primaries()) ?? []), owner \((try? cluster.owner(ofSlot: RedisClusterSlot.of(keys[0]))) ?? 0); client's map: \(client.clusterTopology.map(String.init(describing:)) ?? "none")")
        print("failover: the killed primary's keys answered again after \(String(format: "%.1f", recovered)) s")
        XCTAssertEqual(healthyFailures, [], "keys on healthy shards failed during the failover")
        XCTAssertNotEqual(try cluster.owner(ofSlot: RedisClusterSlot.of(keys[0])), victimPort)
        let kept = try await client.send(["GET", keys[0]], routedBy: keys[0]).string
        XCTAssertNotNil(kept, "the promoted replica lost the key")
        // The dead primary left the slot map: its pool waits out the retire delay, and a shutdown
        // meanwhile takes it too instead of leaving it to a timer on event loops that may be gone
        // by then (before, it was never shut down if the loops went first).
        XCTAssertEqual(client.retiringClusterPools, 1)
        client.shutdown()
        XCTAssertEqual(client.retiringClusterPools, 0)
    }

    /// One shard frozen: its keys go to the failure policy, the others stay shared (exact).
    func testTheFailurePolicyAppliesPerShard() async throws {
        let cluster = try servers
        let store = try RedisLimiterStore(client: try redis, options: .init(), nodeID: "node-a")
        let failover = FailoverLimiterStore(shared: store, policy: .closed, fallbackNodeCount: 1)
        let keys = try keysOnDistinctShards(3)
        let limits = ResolvedLimits(requests: BucketLimit(perMinute: 1_000), lease: .off)
        for (keyID, _) in keys { _ = try await failover.admit(request(keyID, limits)) }
        XCTAssertEqual(failover.mode, .shared)

        let frozen = try XCTUnwrap(cluster.server(port: keys[0].port))
        frozen.freeze()
        defer { frozen.thaw() }
        do {
            _ = try await failover.admit(request(keys[0].keyID, limits))
            XCTFail("an admission on the frozen shard must fall to the closed policy")
        } catch is FailoverLimiterStore.SharedStoreUnavailable {}
        XCTAssertEqual(failover.failedDomainCount, 1)
        XCTAssertEqual(failover.mode, .closed)
        for (keyID, port) in keys.dropFirst() {
            guard case .admitted = try await failover.admit(request(keyID, limits)) else { return XCTFail("\(keyID) denied") }
            let state = try cluster.cli(port, "HGET", RedisKeyLayout(keyID: keyID).state, "n:node-a")
            XCTAssertTrue(state.contains(" "), "the admission of \(keyID) did not reach its shard: \(state)")
        }
        XCTAssertEqual(failover.failedDomainCount, 1, "a healthy shard's key went to the failure policy")
    }
}
