import Foundation
import Synchronization
import XCTest
import SluiceCore
@testable import SluiceRedis

/// The lanes' promises, checked against a real redis-server: a call whose reply is lost is resolved
/// exactly once, requests of one key share calls, and leased admissions never exceed the bucket.
final class KeyLaneTests: XCTestCase {
    var server: RedisServerProcess?
    var client: RedisClient?

    override func setUpWithError() throws {
        let server = try RedisServerProcess()
        self.server = server
        client = try RedisClient(config: server.config, options: testClientOptions)
    }

    override func tearDown() {
        client?.shutdown()
        server?.stop()
    }

    private var redis: RedisClient { get throws { try XCTUnwrap(client) } }

    private func request(_ key: String, _ limits: ResolvedLimits, prompt: Int = 0, output: Int = 0) -> AdmissionRequest {
        Self.makeRequest(key, limits, prompt: prompt, output: output)
    }

    private static func makeRequest(_ key: String, _ limits: ResolvedLimits, prompt: Int = 0, output: Int = 0) -> AdmissionRequest {
        AdmissionRequest(requestID: UUID().uuidString, keyID: key, limits: limits, model: "gpt-4o", promptTokens: prompt, reservedOutputTokens: output)
    }

    /// Redis' own count of the commands it ran (scripts' commands included).
    private func commandsRun() async throws -> (total: Int, fcall: Int) {
        let info = try await redis.send(["INFO", "commandstats"]).string ?? ""
        var total = 0
        var fcall = 0
        for line in info.split(whereSeparator: \.isNewline) where line.hasPrefix("cmdstat_") {
            guard let calls = line.split(separator: ",").first?.split(separator: "=").last, let count = Int(calls) else { continue }
            total += count
            if line.hasPrefix("cmdstat_fcall:") { fcall = count }
        }
        return (total, fcall)
    }

    // MARK: lost calls, in batch.lua

    private func call(_ call: LaneCall, key: String, node: String = "node-test") async throws -> LaneReply {
        let scripts = try RedisLimiterStore.Scripts.load()
        let arguments = call.arguments(stateKey: RedisKeyLayout(keyID: key).state, nodeID: node, deadline: 0, options: .init())
        return try LaneReply(try await redis.call(scripts.batch, RedisScriptCall(keyCount: 1, arguments: arguments, routingKey: nil)), admissions: call.admissions.count)
    }

    private func teamCall(_ call: LaneCall, key: String, team: String, node: String = "node-test") async throws -> LaneReply {
        let scripts = try RedisLimiterStore.Scripts.load()
        let arguments = call.arguments(stateKey: RedisKeyLayout(keyID: key, team: team).state, teamKey: RedisKeyLayout.teamState(team), keyID: key, nodeID: node, deadline: 0, options: .init())
        return try LaneReply(try await redis.call(scripts.batch, RedisScriptCall(keyCount: 2, arguments: arguments, routingKey: nil)), admissions: call.admissions.count, team: team)
    }

    /// A lost call of a key in a team that ran: its resolution releases what it charged the team too
    /// (budget, concurrency slot), once.
    func testALostCallOfAKeyInATeamIsReleasedFromTheTeamToo() async throws {
        var teamLimits = ResolvedLimits(maxConcurrentRequests: 1)
        teamLimits.usdPerDay = 1_000
        let keyLimits = ResolvedLimits(requests: BucketLimit(perMinute: 10))
        var first = request("lost-a", keyLimits, prompt: 1)
        first.team = TeamSubject(id: "lost-team", limits: teamLimits)
        first.reservedCostNanos = 300
        var admitting = LaneCall(sequence: 1, limits: keyLimits, admissions: [first, first], settlements: [], lost: nil)
        admitting.teamLimits = teamLimits
        let ran = try await teamCall(admitting, key: "lost-a", team: "lost-team")
        XCTAssertEqual(ran.admissions.map(\.admitted), [true, false], "the team's one slot: the second is denied")
        XCTAssertEqual(ran.admissions[1].denial?.kind, .concurrency)
        XCTAssertEqual(ran.admissions[1].denial?.team, "lost-team")
        let spent = try await redis.send(["HGET", RedisKeyLayout.teamState("lost-team"), "bdu"]).string
        XCTAssertEqual(spent, "300")

        // Another key of the team, on another node: the team's slot is taken.
        var other = request("lost-b", keyLimits)
        other.team = first.team
        var otherCall = LaneCall(sequence: 1, limits: keyLimits, admissions: [other], settlements: [], lost: nil)
        otherCall.teamLimits = teamLimits
        let blocked = try await teamCall(otherCall, key: "lost-b", team: "lost-team", node: "node-other")
        XCTAssertEqual(blocked.admissions.first?.denial?.kind, .concurrency)

        let lost = LostCall(sequence: 1, admissions: [(1, 0, 300, false), (1, 0, 300, false)], settlements: [], firstResolution: nil)
        var resolving = LaneCall(sequence: 2, limits: keyLimits, admissions: [], settlements: [], lost: lost)
        resolving.teamLimits = teamLimits
        let resolution = try await teamCall(resolving, key: "lost-a", team: "lost-team")
        XCTAssertEqual(resolution.lostResolution, 1, "it ran")
        let refunded = try await redis.send(["HGET", RedisKeyLayout.teamState("lost-team"), "bdu"]).string
        XCTAssertEqual(refunded, "0", "the team's budget got the admitted one back, only it")
        otherCall.sequence = 2
        let freed = try await teamCall(otherCall, key: "lost-b", team: "lost-team", node: "node-other")
        XCTAssertEqual(freed.admissions.map(\.admitted), [true], "the team's slot was released")

        var retried = lost
        retried.firstResolution = 2
        var again = LaneCall(sequence: 3, limits: keyLimits, admissions: [], settlements: [], lost: retried)
        again.teamLimits = teamLimits
        let repeated = try await teamCall(again, key: "lost-a", team: "lost-team")
        XCTAssertEqual(repeated.lostResolution, 2)
        let after = try await redis.send(["HGET", RedisKeyLayout.teamState("lost-team"), "bdu"]).string
        XCTAssertEqual(after, "0", "released once")
    }

    /// A lost call of a key in a team whose admission tracked the month's tokens: they were counted on
    /// the team's hash (`pm pmu`; the key's hash counts none), and the resolution gives them back there.
    func testALostTrackedAdmissionOfAKeyInATeamGivesTheTeamsMonthTokensBack() async throws {
        let keyLimits = ResolvedLimits(requests: BucketLimit(perMinute: 10))
        let team = TeamSubject(id: "month-lost-team", limits: ResolvedLimits())
        var tracked = request("month-lost-a", keyLimits, prompt: 7, output: 5)
        tracked.team = team
        tracked.tracksMonthTokens = true
        var admitting = LaneCall(sequence: 1, limits: keyLimits, admissions: [tracked], settlements: [], lost: nil)
        admitting.teamLimits = team.limits
        let ran = try await teamCall(admitting, key: "month-lost-a", team: team.id)
        XCTAssertEqual(ran.admissions.map(\.admitted), [true])
        XCTAssertEqual(ran.admissions.first?.monthTokensBefore, 0)
        let counted = try await redis.send(["HGET", RedisKeyLayout.teamState(team.id), "pmu"]).string
        XCTAssertEqual(counted, "12")
        let keysOwn = try await redis.send(["HGET", RedisKeyLayout(keyID: "month-lost-a", team: team.id).state, "pmu"]).string
        XCTAssertNil(keysOwn, "the key's hash counts no month of its own")

        // Another key of the team, on another node, starts after it.
        var other = request("month-lost-b", keyLimits, prompt: 1, output: 1)
        other.team = team
        other.tracksMonthTokens = true
        var otherCall = LaneCall(sequence: 1, limits: keyLimits, admissions: [other], settlements: [], lost: nil)
        otherCall.teamLimits = team.limits
        let second = try await teamCall(otherCall, key: "month-lost-b", team: team.id, node: "node-other")
        XCTAssertEqual(second.admissions.first?.monthTokensBefore, 12)

        let lost = LostCall(sequence: 1, admissions: [(7, 5, 0, true)], settlements: [], firstResolution: nil)
        var resolving = LaneCall(sequence: 2, limits: keyLimits, admissions: [], settlements: [], lost: lost)
        resolving.teamLimits = team.limits
        let resolution = try await teamCall(resolving, key: "month-lost-a", team: team.id)
        XCTAssertEqual(resolution.lostResolution, 1, "it ran")
        let released = try await redis.send(["HGET", RedisKeyLayout.teamState(team.id), "pmu"]).string
        XCTAssertEqual(released, "2", "the lost admission's 12 tokens given back to the team, the other key's 2 kept")
    }

    /// A call that ran but whose reply was lost: the next call releases what it admitted, once.
    func testALostCallThatRanIsReleasedOnce() async throws {
        let limits = ResolvedLimits(requests: BucketLimit(perMinute: 10), tokens: BucketLimit(perMinute: 10, burst: 100), maxConcurrentRequests: 1)
        let admitting = LaneCall(sequence: 1, limits: limits, admissions: [request("lost", limits, prompt: 30), request("lost", limits, prompt: 30)], settlements: [], lost: nil)
        let ran = try await call(admitting, key: "lost")
        XCTAssertEqual(ran.admissions.map(\.admitted), [true, false], "one slot: the second is denied")
        XCTAssertEqual(Array(ran.headerValues), [9, ran.headerValues[ran.headerValues.startIndex + 1], 70, ran.headerValues[ran.headerValues.startIndex + 3]])

        let lost = LostCall(sequence: 1, admissions: [(30, 0, 0, false), (30, 0, 0, false)], settlements: [], firstResolution: nil)
        let resolution = try await call(LaneCall(sequence: 2, limits: limits, admissions: [], settlements: [], lost: lost), key: "lost")
        XCTAssertEqual(resolution.lostResolution, 1, "it ran")
        XCTAssertEqual(resolution.headerValues.first, 10, "its admission was released")
        XCTAssertEqual(resolution.headerValues[resolution.headerValues.startIndex + 2], 100, "only the admitted one was refunded")
        let entry = try await redis.send(["HGET", RedisKeyLayout(keyID: "lost").state, "n:node-test"]).string
        XCTAssertEqual(entry?.split(separator: " ").first, "0", "its slot was released")

        // The resolution's own reply lost too: the retry finds it applied and changes nothing.
        var retried = lost
        retried.firstResolution = 2
        let again = try await call(LaneCall(sequence: 3, limits: limits, admissions: [], settlements: [], lost: retried), key: "lost")
        XCTAssertEqual(again.lostResolution, 2)
        XCTAssertEqual(again.headerValues.first, 10)
        XCTAssertEqual(again.headerValues[again.headerValues.startIndex + 2], 100)
    }

    /// A call that never ran: the next call applies its settlements, and the lost call can never
    /// run afterwards (it arrives stale).
    func testALostCallThatNeverRanHasItsSettlementsAppliedOnce() async throws {
        let limits = ResolvedLimits(tokens: BucketLimit(perMinute: 10, burst: 100))
        let admitted = try await call(LaneCall(sequence: 1, limits: limits, admissions: [request("never", limits, prompt: 10, output: 40)], settlements: [], lost: nil), key: "never")
        XCTAssertEqual(admitted.headerValues[admitted.headerValues.startIndex + 2], 50)
        let settlement = SettlementValues(reservedPrompt: 10, reservedOutput: 40, actualPrompt: 10, actualCompletion: 0, quotaDay: -1, quotaMonth: -1, slotEpoch: 0)
        let lostCall = LaneCall(sequence: 2, limits: limits, admissions: [], settlements: [settlement], lost: nil)
        // Call 2 is lost on the way: call 3 resolves it.
        let lost = LostCall(sequence: 2, admissions: [], settlements: [settlement], firstResolution: nil)
        let resolution = try await call(LaneCall(sequence: 3, limits: limits, admissions: [], settlements: [], lost: lost), key: "never")
        XCTAssertEqual(resolution.lostResolution, 0, "it never ran")
        XCTAssertEqual(resolution.headerValues[resolution.headerValues.startIndex + 2], 90, "its refund applied now")
        let late = try await call(lostCall, key: "never")
        XCTAssertEqual(late.status, .stale, "the lost call arrives after its resolution: refused")
        let after = try await call(LaneCall(sequence: 4, limits: limits, admissions: [], settlements: [], lost: nil), key: "never")
        XCTAssertEqual(after.headerValues[after.headerValues.startIndex + 2], 90, "the refund applied once")
    }

    /// Parked slots are never leaked by a lost call: slots a lost call parked on the node are taken
    /// back if it ran, slots it gave back are given back again if it did not.
    func testALostCallNeverLeaksParkedSlots() async throws {
        let limits = ResolvedLimits(maxConcurrentRequests: 10, lease: .always)
        let entry = { () async throws -> String? in
            try await self.redis.send(["HGET", RedisKeyLayout(keyID: "parked").state, "n:node-test"]).string
        }
        var granting = LaneCall(sequence: 1, limits: limits, admissions: [request("parked", limits)], settlements: [], lost: nil)
        granting.slotsWanted = 3
        let ran = try await call(granting, key: "parked")
        XCTAssertEqual(ran.slotsGranted, 3)
        let held = try await entry()
        XCTAssertEqual(held?.split(separator: " ").first, "4", "one in use, three parked")
        // Its reply was lost: the resolution takes back the admission's slot and the parked ones.
        let lost = LostCall(sequence: 1, admissions: [(0, 0, 0, false)], settlements: [], firstResolution: nil)
        let resolution = try await call(LaneCall(sequence: 2, limits: limits, admissions: [], settlements: [], lost: lost), key: "parked")
        XCTAssertEqual(resolution.lostResolution, 1)
        let released = try await entry()
        XCTAssertEqual(released?.split(separator: " ").first, "0")

        // Two slots parked, then a call giving them back is lost without running: given back once.
        var parking = LaneCall(sequence: 3, limits: limits, admissions: [request("parked", limits)], settlements: [], lost: nil)
        parking.slotsWanted = 2
        let parked = try await call(parking, key: "parked")
        let epoch = parked.slotEpoch
        let settlement = SettlementValues(reservedPrompt: 0, reservedOutput: 0, actualPrompt: 0, actualCompletion: 0, quotaDay: -1, quotaMonth: -1, slotEpoch: epoch)
        let neverRan = LostCall(sequence: 4, admissions: [], settlements: [settlement], firstResolution: nil, slotsReturned: 2, slotsEpoch: epoch)
        let resolved = try await call(LaneCall(sequence: 5, limits: limits, admissions: [], settlements: [], lost: neverRan), key: "parked")
        XCTAssertEqual(resolved.lostResolution, 0)
        let empty = try await entry()
        XCTAssertEqual(empty?.split(separator: " ").first, "0", "the settled slot and the two parked ones are free")
    }

    /// Slots taken after a call without admissions created the node's entry (a settlement first,
    /// e.g. after Redis came back empty) carry a real epoch, so they are released: before, they got
    /// epoch 0 — "no slot" to the node — and were never given back.
    func testSlotsTakenAfterASettlementFirstAreReleased() async throws {
        let limits = ResolvedLimits(maxConcurrentRequests: 2, lease: .off)
        let settlement = SettlementValues(reservedPrompt: 0, reservedOutput: 0, actualPrompt: 0, actualCompletion: 0, quotaDay: -1, quotaMonth: -1, slotEpoch: 12345)
        _ = try await call(LaneCall(sequence: 1, limits: limits, admissions: [], settlements: [settlement], lost: nil), key: "epoch")
        let admitted = try await call(LaneCall(sequence: 2, limits: limits, admissions: [request("epoch", limits)], settlements: [], lost: nil), key: "epoch")
        XCTAssertEqual(admitted.admissions.first?.admitted, true)
        XCTAssertNotEqual(admitted.slotEpoch, 0, "a slot under epoch 0 could never be released")
        let release = SettlementValues(reservedPrompt: 0, reservedOutput: 0, actualPrompt: 0, actualCompletion: 0, quotaDay: -1, quotaMonth: -1, slotEpoch: admitted.slotEpoch)
        _ = try await call(LaneCall(sequence: 3, limits: limits, admissions: [], settlements: [release], lost: nil), key: "epoch")
        let entry = try await redis.send(["HGET", RedisKeyLayout(keyID: "epoch").state, "n:node-test"]).string
        XCTAssertEqual(entry?.split(separator: " ").first, "0", "the slot was released")
    }

    /// Through the store: a settlement sent to a frozen Redis is lost, and applied exactly once
    /// when Redis is back, ahead of the next admission.
    func testASettlementLostToAFrozenRedisIsAppliedOnceAfterwards() async throws {
        let server = try XCTUnwrap(self.server)
        let store = try RedisLimiterStore(client: redis, options: .init(settleDelayMicros: 0))
        let limits = ResolvedLimits(tokens: BucketLimit(perMinute: 10, burst: 100), maxConcurrentRequests: 1)
        guard case .admitted(let reservation, let snapshot) = try await store.admit(request("frozen", limits, prompt: 10, output: 40)) else {
            return XCTFail("denied")
        }
        XCTAssertEqual(snapshot.remainingTokens, 50)
        server.freeze()
        let settled = try await store.settle(reservation, actualPromptTokens: 10, actualCompletionTokens: 5)
        XCTAssertNil(settled, "Redis did not answer: the settlement is owed")
        XCTAssertEqual(store.owedSettlements, 1)
        server.thaw()
        try await Task.sleep(for: .milliseconds(100))
        guard case .admitted(let next, let after) = try await store.admit(request("frozen", limits, prompt: 1)) else {
            return XCTFail("the slot of the settled request is still held")
        }
        XCTAssertEqual(after.remainingTokens, 84, "35 unused tokens came back once, 1 taken")
        XCTAssertEqual(store.owedSettlements, 0)
        _ = try await store.settle(next, actualPromptTokens: 1, actualCompletionTokens: 0)
    }

    /// A lane forgotten after a quiet minute is created again: its calls continue the node's
    /// sequence, so Redis does not take them for stale ones.
    func testAForgottenLaneComesBackWithoutStaleCalls() async throws {
        let store = try RedisLimiterStore(client: redis)
        let limits = ResolvedLimits(requests: BucketLimit(perMinute: 100), maxConcurrentRequests: 5)
        for _ in 0..<3 {
            guard case .admitted(let reservation, _) = try await store.admit(request("forgotten", limits)) else { return XCTFail("denied") }
            _ = try await store.settle(reservation, actualPromptTokens: 0, actualCompletionTokens: 0)
        }
        XCTAssertEqual(store.laneCount, 1)
        try await Task.sleep(for: .milliseconds(20))  // the lane's last call ends
        store.maintain(now: MonotonicClock.microseconds() + 2 * RedisLimiterStore.laneIdleMicros)
        XCTAssertEqual(store.laneCount, 0, "the idle lane is forgotten")
        guard case .admitted(let reservation, let snapshot) = try await store.admit(request("forgotten", limits)) else { return XCTFail("denied") }
        XCTAssertEqual(snapshot.remainingRequests, 96)
        let settled = try await store.settle(reservation, actualPromptTokens: 0, actualCompletionTokens: 0)
        XCTAssertNotNil(settled)
    }

    /// A key without limits costs Redis nothing per request; its usage is still recorded.
    func testAnUnlimitedKeyMakesNoCalls() async throws {
        let store = try RedisLimiterStore(client: redis)
        let before = try await commandsRun()
        for _ in 0..<3 {
            guard case .admitted(let reservation, let snapshot) = try await store.admit(request("free", .unlimited, prompt: 5)) else { return XCTFail("denied") }
            XCTAssertEqual(snapshot, .empty)
            let settled = try await store.settle(reservation, actualPromptTokens: 5, actualCompletionTokens: 2)
            XCTAssertEqual(settled, .empty)
            let again = try await store.settle(reservation, actualPromptTokens: 5, actualCompletionTokens: 2)
            XCTAssertNil(again, "settled once")
        }
        let after = try await commandsRun()
        XCTAssertEqual(after.total - before.total, 1, "only the INFO that counts")
        await store.flushUsage()
        let usage = try await store.usage(keyID: "free", day: UTCDay(Date()).text)
        XCTAssertEqual(usage["gpt-4o"], .init(promptTokens: 15, completionTokens: 6, requests: 3))
    }

    // MARK: batching

    /// Requests of one key that arrive together share calls: Redis runs far fewer than four
    /// commands per request (counted by Redis itself), every limit kind configured.
    func testConcurrentRequestsOfAKeyShareCalls() async throws {
        let store = try RedisLimiterStore(client: redis)
        let limits = ResolvedLimits(
            requests: BucketLimit(perMinute: 100_000), tokens: BucketLimit(perMinute: 1_000_000),
            inputTokens: BucketLimit(perMinute: 1_000_000), outputTokens: BucketLimit(perMinute: 1_000_000),
            maxConcurrentRequests: 1_000, tokensPerDay: 10_000_000, tokensPerMonth: 100_000_000
        )
        _ = try await store.snapshot(keyID: "batch", limits: limits)  // loads the functions
        let before = try await commandsRun()
        let requests = 64
        let reservations = try await withThrowingTaskGroup(of: Reservation?.self) { group in
            for _ in 0..<requests {
                group.addTask {
                    guard case .admitted(let reservation, _) = try await store.admit(Self.makeRequest("batch", limits, prompt: 10, output: 10)) else { return nil }
                    return reservation
                }
            }
            return try await group.reduce(into: [Reservation]()) { list, element in if let element { list.append(element) } }
        }
        XCTAssertEqual(reservations.count, requests)
        await withTaskGroup(of: Void.self) { group in
            for reservation in reservations {
                group.addTask { _ = try? await store.settle(reservation, actualPromptTokens: 10, actualCompletionTokens: 5) }
            }
        }
        let after = try await commandsRun()
        let perRequest = Double(after.total - before.total - 1) / Double(requests)  // INFO itself counts
        XCTAssertLessThanOrEqual(perRequest, 4, "commands per request")
        XCTAssertLessThan(after.fcall - before.fcall, requests / 4, "calls were shared")
        XCTAssertEqual(store.leasesInFlight, 0)
    }

    // MARK: leasing

    /// Two nodes leasing one key admit, together, never more than the bucket allows, and most
    /// admissions need no call at all.
    func testLeasedNodesNeverAdmitBeyondTheBucket() async throws {
        let limits = ResolvedLimits(requests: BucketLimit(perMinute: 600, burst: 20), lease: .always)
        let nodes = [try RedisLimiterStore(client: redis, nodeID: "a"), try RedisLimiterStore(client: redis, nodeID: "b")]
        _ = try await nodes[0].snapshot(keyID: "leased", limits: limits)
        let before = try await commandsRun()
        let started = Date()
        let seconds = 2.0
        let admitted = try await withThrowingTaskGroup(of: Int.self) { group in
            for node in nodes {
                group.addTask {
                    var count = 0
                    while Date().timeIntervalSince(started) < seconds {
                        if case .admitted(let reservation, _) = try await node.admit(Self.makeRequest("leased", limits)) {
                            count += 1
                            _ = try await node.settle(reservation, actualPromptTokens: 0, actualCompletionTokens: 0)
                        }
                    }
                    return count
                }
            }
            return try await group.reduce(0, +)
        }
        let elapsed = Date().timeIntervalSince(started)
        let allowed = 20 + 600.0 / 60 * elapsed
        XCTAssertLessThanOrEqual(Double(admitted), allowed + 1, "admitted beyond burst + rate × time")
        XCTAssertGreaterThanOrEqual(Double(admitted), 0.8 * allowed, "leases parked most of the capacity")
        let after = try await commandsRun()
        XCTAssertLessThan(after.fcall - before.fcall, 200, "denials and slices only")
    }

    /// Concurrency leased as parked slots: never more requests in flight across the nodes than the
    /// limit, and most admissions and releases need no call.
    func testLeasedSlotsNeverExceedTheConcurrencyLimit() async throws {
        let limits = ResolvedLimits(requests: BucketLimit(perMinute: 1_000_000), maxConcurrentRequests: 16, lease: .always)
        let nodes = [try RedisLimiterStore(client: redis, nodeID: "a"), try RedisLimiterStore(client: redis, nodeID: "b")]
        _ = try await nodes[0].snapshot(keyID: "slots", limits: limits)
        let before = try await commandsRun()
        let inFlight = InFlightCounter()
        let started = Date()
        let admitted = try await withThrowingTaskGroup(of: Int.self) { group in
            for index in 0..<24 {
                let node = nodes[index % 2]
                group.addTask {
                    var count = 0
                    while Date().timeIntervalSince(started) < 1.5 {
                        guard case .admitted(let reservation, _) = try await node.admit(Self.makeRequest("slots", limits)) else {
                            try await Task.sleep(for: .milliseconds(1))
                            continue
                        }
                        inFlight.enter()
                        count += 1
                        try await Task.sleep(for: .milliseconds(2))
                        inFlight.leave()
                        _ = try await node.settle(reservation, actualPromptTokens: 0, actualCompletionTokens: 0)
                    }
                    return count
                }
            }
            return try await group.reduce(0, +)
        }
        XCTAssertLessThanOrEqual(inFlight.maximum, 16, "more requests in flight than the limit")
        XCTAssertGreaterThanOrEqual(inFlight.maximum, 8, "parked slots kept the requests out")
        let after = try await commandsRun()
        XCTAssertLessThan(after.fcall - before.fcall, admitted / 2, "admitted and released mostly without a call")
        for node in nodes { _ = await node.finishOutstanding() }
        XCTAssertEqual(nodes[0].leasesInFlight + nodes[1].leasesInFlight, 0)
    }

    /// Two leased nodes saturating a token bucket both keep getting its rate: a slice smaller than
    /// a request (the crumbs a saturated bucket has left) is never taken, since it would admit
    /// nothing and keep the capacity from the other node.
    func testLeasedNodesDoNotStarveASaturatedTokenBucket() async throws {
        let limits = ResolvedLimits(tokens: BucketLimit(perMinute: 6_000, burst: 300), lease: .always)
        let nodes = [try RedisLimiterStore(client: redis, nodeID: "a"), try RedisLimiterStore(client: redis, nodeID: "b")]
        let started = Date()
        let seconds = 3.0
        let admitted = try await withThrowingTaskGroup(of: Int.self) { group in
            for node in nodes {
                group.addTask {
                    var count = 0
                    while Date().timeIntervalSince(started) < seconds {
                        if case .admitted(let reservation, _) = try await node.admit(Self.makeRequest("saturated", limits, prompt: 40, output: 10)) {
                            count += 1
                            _ = try await node.settle(reservation, actualPromptTokens: 40, actualCompletionTokens: 10)
                        } else {
                            try await Task.sleep(for: .milliseconds(5))
                        }
                    }
                    return count
                }
            }
            return try await group.reduce(0, +)
        }
        let allowed = (300 + 100 * Date().timeIntervalSince(started)) / 50
        XCTAssertLessThanOrEqual(Double(admitted), allowed + 1, "admitted beyond the bucket")
        XCTAssertGreaterThanOrEqual(Double(admitted), 0.7 * allowed, "the bucket was starved by slices too small to use")
    }

    /// A lease nobody uses goes back to the bucket; admissions against it make no call.
    func testAnIdleLeaseIsGivenBack() async throws {
        let limits = ResolvedLimits(requests: BucketLimit(perMinute: 60, burst: 20), lease: .always)
        let node = try RedisLimiterStore(client: redis, options: .init(leaseIdleMicros: 50_000), nodeID: "a")
        let other = try RedisLimiterStore(client: redis, nodeID: "b")
        guard case .admitted = try await node.admit(request("idle", limits)) else { return XCTFail("denied") }
        let before = try await commandsRun()
        guard case .admitted = try await node.admit(request("idle", limits)) else { return XCTFail("denied") }
        let after = try await commandsRun()
        XCTAssertEqual(after.fcall, before.fcall, "admitted against the lease, without a call")
        let held = try await other.snapshot(keyID: "idle", limits: limits)
        XCTAssertLessThan(held.remainingRequests ?? 0, 18, "the rest of the slice is parked on the first node")
        try await Task.sleep(for: .milliseconds(80))
        node.maintain()
        try await Task.sleep(for: .milliseconds(100))
        let returned = try await other.snapshot(keyID: "idle", limits: limits)
        XCTAssertEqual(returned.remainingRequests, 18, "two used, the rest given back")
    }
}

/// How many requests are between admission and settlement, and the most there ever were.
final class InFlightCounter: Sendable {
    private let state = Mutex((now: 0, maximum: 0))

    func enter() { state.withLock { $0.now += 1; $0.maximum = max($0.maximum, $0.now) } }
    func leave() { state.withLock { $0.now -= 1 } }
    var maximum: Int { state.withLock { $0.maximum } }
}
