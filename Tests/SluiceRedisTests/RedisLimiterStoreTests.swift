import Foundation
import XCTest
import SluiceCore
@testable import SluiceRedis

/// What only the Redis store does (quotas, usage records, key expiry) and how its scripts cope
/// with state they did not write: wrong types, garbage numbers, a flushed database.
final class RedisLimiterStoreTests: XCTestCase {
    var server: RedisServerProcess?
    var client: RedisClient?
    var store: RedisLimiterStore?

    override func setUpWithError() throws {
        let server = try RedisServerProcess()
        let client = try RedisClient(config: server.config, options: testClientOptions)
        self.server = server
        self.client = client
        store = try RedisLimiterStore(client: client)
    }

    override func tearDown() {
        client?.shutdown()
        server?.stop()
    }

    private var redis: RedisClient { get throws { try XCTUnwrap(client) } }
    private var limiter: RedisLimiterStore { get throws { try XCTUnwrap(store) } }

    private func request(_ key: String, _ limits: ResolvedLimits, prompt: Int = 0, output: Int = 0, model: String = "gpt-4o") -> AdmissionRequest {
        AdmissionRequest(requestID: UUID().uuidString, keyID: key, limits: limits, model: model, promptTokens: prompt, reservedOutputTokens: output)
    }

    @discardableResult
    private func admitted(_ request: AdmissionRequest, on store: RedisLimiterStore? = nil, file: StaticString = #filePath, line: UInt = #line) async throws -> (Reservation, RateLimitSnapshot) {
        switch try await (store ?? limiter).admit(request) {
        case .admitted(let reservation, let snapshot): return (reservation, snapshot)
        case .denied(let denial, _):
            XCTFail("denied: \(denial)", file: file, line: line)
            throw RedisTestError("unexpected denial")
        }
    }

    private func denied(_ request: AdmissionRequest, file: StaticString = #filePath, line: UInt = #line) async throws -> RateLimitDenial {
        switch try await limiter.admit(request) {
        case .denied(let denial, _): return denial
        case .admitted:
            XCTFail("admitted", file: file, line: line)
            throw RedisTestError("unexpected admission")
        }
    }

    private func secondsUntilNextUTCMidnight() -> Double {
        let now = Date().timeIntervalSince1970
        return (now / 86_400).rounded(.down) * 86_400 + 86_400 - now
    }

    // MARK: a stalled server

    /// An admission sent to a frozen Redis times out (the caller answers without it); when Redis
    /// thaws it runs the command it had buffered. It must change nothing: before, it took a
    /// concurrency slot (10 minutes) and a reservation for a request long answered.
    func testAdmissionThatRunsAfterItsCallerGaveUpChangesNothing() async throws {
        let server = try XCTUnwrap(self.server)
        let limits = ResolvedLimits(requests: BucketLimit(perMinute: 10), maxConcurrentRequests: 1)
        let key = "frozen-\(UUID().uuidString.prefix(8))"
        // The first admission learns Redis' clock; settle it so the key starts empty.
        let (first, _) = try await admitted(request(key, limits))
        _ = try await limiter.settle(first, actualPromptTokens: 0, actualCompletionTokens: 0)

        server.freeze()
        let late = request(key, limits)
        do {
            _ = try await limiter.admit(late)
            XCTFail("an admission to a frozen server answered")
        } catch {}
        try await Task.sleep(for: .milliseconds(600))  // the deadline passes while Redis is stopped
        server.thaw()
        try await Task.sleep(for: .milliseconds(300))

        // The late call was refused by its deadline, and the next call resolved it as never run.
        let entry = try await redis.send(["HGET", RedisKeyLayout(keyID: key).state, "n:" + limiter.nodeID]).string
        XCTAssertEqual(entry?.split(separator: " ").first, "0", "the late admission took a concurrency slot")
        // The bucket was not charged either: the full burst minus the first request is left.
        let (_, snapshot) = try await admitted(request(key, limits))
        XCTAssertEqual(snapshot.remainingRequests, 8)
    }

    /// A concurrency lease lives one TTL past its last renewal: a node renews the leases of its
    /// requests in flight, so a long request keeps its slot, and a dead node's slots come free
    /// within one TTL (before, 10 minutes).
    func testLeasesLiveWhileRenewedAndExpireOneTTLAfter() async throws {
        let client = try redis
        let shortLeases = try RedisLimiterStore(client: client, options: .init(leaseTTLMillis: 1_000))
        let limits = ResolvedLimits(maxConcurrentRequests: 1)
        let key = "renew-\(UUID().uuidString.prefix(8))"
        guard case .admitted(let running, _) = try await shortLeases.admit(request(key, limits)) else { return XCTFail("denied") }
        XCTAssertEqual(shortLeases.leasesInFlight, 1)
        for _ in 0..<15 {
            try await Task.sleep(for: .milliseconds(100))
            shortLeases.maintain()
        }
        // 1.5 s after the admission, the renewed lease still holds the only slot.
        guard case .denied(let denial, _) = try await shortLeases.admit(request(key, limits)) else { return XCTFail("the renewed lease was lost") }
        XCTAssertEqual(denial.kind, .concurrency)

        // The node stops renewing (it died): the slot is free one TTL later.
        try await Task.sleep(for: .milliseconds(1_100))
        guard case .admitted(let next, _) = try await shortLeases.admit(request(key, limits)) else { return XCTFail("the lease outlived its TTL") }
        _ = try await shortLeases.settle(next, actualPromptTokens: 0, actualCompletionTokens: 0)
        _ = try await shortLeases.settle(running, actualPromptTokens: 0, actualCompletionTokens: 0)
        XCTAssertEqual(shortLeases.leasesInFlight, 0, "settled requests are not renewed")
    }

    func testDefaultLeaseLifetimeIsSeconds() {
        XCTAssertLessThanOrEqual(RedisLimiterStore.Options().leaseTTLMillis, 60_000)
    }

    // MARK: quotas

    func testDailyQuotaDeniesUntilMidnightAndIsSettledByActualUsage() async throws {
        let limits = ResolvedLimits(tokensPerDay: 100)
        let (reservation, _) = try await admitted(request("quota", limits, prompt: 10, output: 80))
        let denial = try await denied(request("quota", limits, prompt: 20))
        XCTAssertEqual(denial.kind, .dailyTokens)
        XCTAssertEqual(denial.limit, 100)
        XCTAssertEqual(denial.used, 90)
        XCTAssertEqual(denial.requested, 20)
        XCTAssertFalse(denial.neverFits)
        XCTAssertEqual(denial.retryAfterSeconds, secondsUntilNextUTCMidnight(), accuracy: 2)
        // Only 15 of the 90 reserved tokens were used: 85 are left today.
        _ = try await limiter.settle(reservation, actualPromptTokens: 10, actualCompletionTokens: 5)
        try await admitted(request("quota", limits, prompt: 85))
        let exhausted = try await denied(request("quota", limits, prompt: 1))
        XCTAssertEqual(exhausted.used, 100)
        let tooLarge = try await denied(request("quota-2", limits, prompt: 101))
        XCTAssertTrue(tooLarge.neverFits)
        XCTAssertEqual(tooLarge.kind, .dailyTokens)
        XCTAssertEqual(tooLarge.retryAfterSeconds, 0)
    }

    func testMonthlyQuotaDeniesUntilTheFirstOfNextMonth() async throws {
        let limits = ResolvedLimits(tokens: BucketLimit(perMinute: 1_000), tokensPerMonth: 50)
        try await admitted(request("budget", limits, prompt: 40))
        let denial = try await denied(request("budget", limits, prompt: 20))
        XCTAssertEqual(denial.kind, .monthlyTokens, "the month's wait outranks nothing else here")
        XCTAssertEqual(denial.used, 40)
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        let month = calendar.dateInterval(of: .month, for: Date())!
        XCTAssertEqual(denial.retryAfterSeconds, month.end.timeIntervalSinceNow, accuracy: 2)
    }

    func testQuotaAndBucketDenialsFollowTheSameRankingRule() async throws {
        let limits = ResolvedLimits(tokens: BucketLimit(perMinute: 100), tokensPerDay: 150)
        // Both never fit: neither outranks the other, the first in order (TPM) is kept.
        let tooLarge = try await denied(request("rank", limits, prompt: 200))
        XCTAssertEqual(tooLarge.kind, .tokens)
        XCTAssertTrue(tooLarge.neverFits)
        try await admitted(request("rank", limits, prompt: 100))
        // TPM would pass in 36 s, the day's quota only after midnight: the longer wait is reported.
        let longest = try await denied(request("rank", limits, prompt: 60))
        if secondsUntilNextUTCMidnight() > 60 {
            XCTAssertEqual(longest.kind, .dailyTokens)
            XCTAssertEqual(longest.retryAfterSeconds, secondsUntilNextUTCMidnight(), accuracy: 2)
        }
    }

    // MARK: usage

    /// A budget's spend lives in the key's state hash (bd bdu bm bmu, beside the quotas): another
    /// node, or this one restarted, continues from it.
    func testBudgetSpendIsSharedAndOutlivesTheNode() async throws {
        var limits = ResolvedLimits()
        limits.usdPerDay = 1_000_000
        limits.usdPerMonth = 5_000_000
        var first = request("budgeted", limits)
        first.reservedCostNanos = 700_000
        var (reservation, _) = try await admitted(first)
        reservation.settledCost = .known(USDAmount(nanos: 650_000))
        _ = try await limiter.settle(reservation, actualPromptTokens: 0, actualCompletionTokens: 0)
        let fields = try await redis.send(["HMGET", RedisKeyLayout(keyID: "budgeted").state, "bdu", "bmu"])
        XCTAssertEqual(fields.array?.compactMap(\.string), ["650000", "650000"])
        let otherNode = try RedisLimiterStore(client: redis)
        var second = request("budgeted", limits)
        second.reservedCostNanos = 400_000
        guard case .denied(let denial, _) = try await otherNode.admit(second) else { return XCTFail("admitted past the budget") }
        XCTAssertEqual(denial.kind, .dailyBudget)
        XCTAssertEqual(denial.used, 650_000)
        second.reservedCostNanos = 350_000
        guard case .admitted = try await otherNode.admit(second) else { return XCTFail("denied within the budget") }
    }

    /// The settled costs add up exactly per model and day; unknown costs are counted apart, never as 0.
    func testSettleRecordsCostsInTheDailyUsage() async throws {
        let limits = ResolvedLimits(tokens: BucketLimit(perMinute: 10_000))
        var costs: [RequestCost?] = [.known(USDAmount(nanos: 420_000)), .known(USDAmount(nanos: 1)), .unknown, nil]
        for model in ["gpt-4o-mini", "gpt-4o-mini", "gpt-4o-mini", "o3"] {
            var (reservation, _) = try await admitted(request("spender", limits, prompt: 10, output: 5, model: model))
            reservation.settledCost = costs.removeFirst()
            _ = try await limiter.settle(reservation, actualPromptTokens: 10, actualCompletionTokens: 5)
        }
        await (try limiter).flushUsage()
        // A second flush adds to the first: 420,001 + 420,001 n$ in all, 2 unknown.
        var (again, _) = try await admitted(request("spender", limits, prompt: 10, output: 5, model: "gpt-4o-mini"))
        again.settledCost = .known(USDAmount(nanos: 420_001))
        _ = try await limiter.settle(again, actualPromptTokens: 10, actualCompletionTokens: 5)
        var (unknown, _) = try await admitted(request("spender", limits, prompt: 10, output: 5, model: "gpt-4o-mini"))
        unknown.settledCost = .unknown
        _ = try await limiter.settle(unknown, actualPromptTokens: 10, actualCompletionTokens: 5)
        await (try limiter).flushUsage()
        let usage = try await limiter.usage(keyID: "spender", day: UTCDay(Date()).text)
        XCTAssertEqual(usage["gpt-4o-mini"], .init(promptTokens: 50, completionTokens: 25, requests: 5, cost: USDAmount(nanos: 840_002), unknownCostRequests: 2))
        XCTAssertEqual(usage["o3"], .init(promptTokens: 10, completionTokens: 5, requests: 1), "no pricing: no cost recorded")
    }

    func testSettleRecordsDailyUsageAndTheStream() async throws {
        let limiter = try RedisLimiterStore(client: redis, options: .init(usageStream: true))
        let limits = ResolvedLimits(tokens: BucketLimit(perMinute: 10_000))
        let (first, _) = try await admitted(request("usage", limits, prompt: 100, output: 50, model: "gpt-4o"), on: limiter)
        let (second, _) = try await admitted(request("usage", limits, prompt: 30, output: 50, model: "gpt-4o"), on: limiter)
        let (third, _) = try await admitted(request("usage", limits, prompt: 7, output: 5, model: "o3:mini"), on: limiter)
        _ = try await limiter.settle(first, actualPromptTokens: 100, actualCompletionTokens: 20)
        _ = try await limiter.settle(second, actualPromptTokens: 30, actualCompletionTokens: 70)
        _ = try await limiter.settle(third, actualPromptTokens: 7, actualCompletionTokens: 1)
        let replay = try await limiter.settle(first, actualPromptTokens: 100, actualCompletionTokens: 20)
        XCTAssertNil(replay)
        let before = try await limiter.usage(keyID: "usage", day: UTCDay(Date()).text)
        XCTAssertTrue(before.isEmpty, "usage is counted on the node until it is flushed")
        let failed = await limiter.flushUsage()
        XCTAssertEqual(failed, 0)

        let usage = try await limiter.usage(keyID: "usage", day: UTCDay(Date()).text)
        XCTAssertEqual(usage, [
            "gpt-4o": .init(promptTokens: 130, completionTokens: 90, requests: 2),
            "o3:mini": .init(promptTokens: 7, completionTokens: 1, requests: 1),
        ])
        let none = try await limiter.usage(keyID: "usage", day: "2000-01-01")
        XCTAssertTrue(none.isEmpty)

        let layout = RedisKeyLayout(keyID: "usage")
        let entries = try await redis.send(["XRANGE", layout.usageStream, "-", "+"])
        let records = try XCTUnwrap(entries.array)
        XCTAssertEqual(records.count, 3, "one record per settled request, none for the replay")
        let firstFields = try XCTUnwrap(records.first?.array?.last?.array?.compactMap(\.string))
        XCTAssertEqual(firstFields, [
            "request_id", first.requestID, "model", "gpt-4o", "prompt_tokens", "100", "completion_tokens", "20",
            "reserved_prompt_tokens", "100", "reserved_output_tokens", "50",
        ])
    }

    func testEveryKeyExpires() async throws {
        let limiter = try RedisLimiterStore(client: redis, options: .init(usageStream: true))
        let limits = ResolvedLimits(
            requests: BucketLimit(perMinute: 10), tokens: BucketLimit(perMinute: 1_000),
            inputTokens: BucketLimit(perMinute: 1_000), outputTokens: BucketLimit(perMinute: 1_000),
            maxConcurrentRequests: 5, tokensPerDay: 10_000, tokensPerMonth: 100_000
        )
        let (settledOne, _) = try await admitted(request("ttl", limits, prompt: 100, output: 100), on: limiter)
        try await admitted(request("ttl", limits, prompt: 100, output: 100), on: limiter)
        _ = try await limiter.settle(settledOne, actualPromptTokens: 100, actualCompletionTokens: 10)
        await (try limiter).flushUsage()
        let listed = try await redis.send(["KEYS", "sluice:{ttl}:*"])
        let keys = try XCTUnwrap(listed.array).compactMap(\.string)
        let layout = RedisKeyLayout(keyID: "ttl")
        XCTAssertEqual(Set(keys), [layout.state, layout.usage(day: UTCDay(Date()).text), layout.usageStream])
        for key in keys {
            let ttl = try await redis.send(["PTTL", key]).integer ?? -3
            XCTAssertGreaterThan(ttl, 0, "\(key) must expire")
        }
        // The state lives past the month's quota period (a day after it ends).
        let stateTTL = try await redis.send(["PTTL", layout.state]).integer ?? 0
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        let month = calendar.dateInterval(of: .month, for: Date())!
        XCTAssertGreaterThan(Double(stateTTL) / 1_000, month.end.timeIntervalSinceNow + 86_000)
    }

    // MARK: state the scripts did not write

    func testGarbageAndWrongTypesAreResetNotFatal() async throws {
        let limits = ResolvedLimits(
            requests: BucketLimit(perMinute: 10), tokens: BucketLimit(perMinute: 100),
            inputTokens: BucketLimit(perMinute: 100), outputTokens: BucketLimit(perMinute: 100),
            maxConcurrentRequests: 2, tokensPerDay: 1_000
        )
        let layout = RedisKeyLayout(keyID: "junk")
        _ = try await redis.send([
            "HSET", layout.state, "r", "not a number", "t", "nan",
            "i", "1e300",  // a TAT centuries ahead: a debt that never ends
            "o", "-7", "qd", "x", "qdu", "-5", "exp", "soon", "n:other", "garbage", "n:\(limiter.nodeID)", "1 2 3",
        ])
        let (reservation, snapshot) = try await admitted(request("junk", limits, prompt: 10, output: 10))
        XCTAssertEqual(snapshot.remainingRequests, 9, "the garbage TAT counts as a full bucket")
        XCTAssertEqual(snapshot.remainingTokens, 80)
        let forgotten = try await redis.send(["HEXISTS", layout.state, "n:other"]).integer
        XCTAssertEqual(forgotten, 0, "an unreadable node entry is dropped")
        for field in ["r", "t", "i", "o", "qdu"] {
            let value = try await redis.send(["HGET", layout.state, field]).string
            XCTAssertNotNil(value.flatMap { Int($0) }, "\(field) was rewritten: \(value ?? "nil")")
        }
        let ttl = try await redis.send(["PTTL", layout.state]).integer ?? -3
        XCTAssertGreaterThan(ttl, 0)

        _ = try await redis.send(["SET", layout.usage(day: UTCDay(Date()).text), "wrong type"])
        let afterSettle = try await limiter.settle(reservation, actualPromptTokens: 10, actualCompletionTokens: 0)
        XCTAssertEqual(afterSettle?.remainingTokens, 90)
        await (try limiter).flushUsage()
        let usage = try await limiter.usage(keyID: "junk", day: UTCDay(Date()).text)
        XCTAssertEqual(usage["gpt-4o"], .init(promptTokens: 10, completionTokens: 0, requests: 1))

        // A usage field that is not an integer is replaced.
        let (next, _) = try await admitted(request("junk", limits, prompt: 1))
        _ = try await redis.send(["HSET", layout.usage(day: UTCDay(Date()).text), "gpt-4o:prompt", "abc"])
        _ = try await limiter.settle(next, actualPromptTokens: 1, actualCompletionTokens: 0)
        await (try limiter).flushUsage()
        let replaced = try await limiter.usage(keyID: "junk", day: UTCDay(Date()).text)
        XCTAssertEqual(replaced["gpt-4o"]?.promptTokens, 1)
        XCTAssertEqual(replaced["gpt-4o"]?.requests, 2)

        // The state key of another type: reset, not fatal.
        _ = try await redis.send(["DEL", layout.state])
        _ = try await redis.send(["RPUSH", layout.state, "wrong type"])
        let (_, fresh) = try await admitted(request("junk", limits, prompt: 1))
        XCTAssertEqual(fresh.remainingRequests, 9)
    }

    func testANodeEntryWithAnExpiryBeyondAnyTTLDoesNotHoldASlot() async throws {
        let limits = ResolvedLimits(tokens: BucketLimit(perMinute: 1_000), maxConcurrentRequests: 1)
        _ = try await redis.send(["HSET", RedisKeyLayout(keyID: "far").state, "n:stuck", "1 99999999999999 1 1 99999999999999 - 0"])
        let (first, _) = try await admitted(request("far", limits))
        guard case .denied = try await limiter.admit(request("far", limits)) else {
            return XCTFail("the one real slot holds the only slot")
        }
        _ = try await limiter.settle(first, actualPromptTokens: 1, actualCompletionTokens: 0)
        try await admitted(request("far", limits))
    }

    func testFlushedDatabaseMidRun() async throws {
        let limits = ResolvedLimits(requests: BucketLimit(perMinute: 2), tokens: BucketLimit(perMinute: 100), maxConcurrentRequests: 1)
        let (reservation, _) = try await admitted(request("flush", limits, prompt: 90))
        _ = try await redis.send(["FLUSHALL"])
        _ = try await redis.send(["FUNCTION", "FLUSH"])
        // The node still holds the reservation: settling it against an empty state changes nothing.
        let settled = try await limiter.settle(reservation, actualPromptTokens: 90, actualCompletionTokens: 0)
        XCTAssertEqual(settled?.remainingTokens, 100)
        // The functions are gone too (the client loads the library again) and every limit starts over.
        let (_, snapshot) = try await admitted(request("flush", limits, prompt: 90))
        XCTAssertEqual(snapshot.remainingRequests, 1)
        XCTAssertEqual(snapshot.remainingTokens, 10)
    }

    func testLeasesOfDeadNodesExpire() async throws {
        let shortLeases = try RedisLimiterStore(client: redis, options: .init(leaseTTLMillis: 1_000))
        let limits = ResolvedLimits(maxConcurrentRequests: 1)
        guard case .admitted = try await shortLeases.admit(request("lease", limits)) else { return XCTFail("not admitted") }
        guard case .denied = try await shortLeases.admit(request("lease", limits)) else { return XCTFail("not denied") }
        try await Task.sleep(nanoseconds: 1_100_000_000)
        guard case .admitted = try await shortLeases.admit(request("lease", limits)) else { return XCTFail("the lease did not expire") }
    }

    func testRedisDownSurfacesTypedErrors() async throws {
        server?.stop()
        do {
            _ = try await limiter.admit(request("down", ResolvedLimits(requests: BucketLimit(perMinute: 1))))
            XCTFail("admitted without Redis")
        } catch let error as RedisError {
            XCTAssertNotEqual(error, .shutDown)
        }
    }
}
