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
        let client = RedisClient(config: server.config, options: testClientOptions)
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
    private func admitted(_ request: AdmissionRequest, file: StaticString = #filePath, line: UInt = #line) async throws -> (Reservation, RateLimitSnapshot) {
        switch try await limiter.admit(request) {
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

        let layout = RedisKeyLayout(keyID: key)
        let leases = try await redis.send(["ZCARD", layout.leases]).integer
        XCTAssertEqual(leases, 0, "the late admission took a concurrency slot")
        let reservation = try await redis.send(["EXISTS", layout.reservation(requestID: late.requestID)]).integer
        XCTAssertEqual(reservation, 0, "the late admission left a reservation")
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
        for _ in 0..<5 {
            try await Task.sleep(for: .milliseconds(300))
            let renewed = try await shortLeases.renewLeases()
            XCTAssertEqual(renewed, 1)
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
        let renewedAfter = try await shortLeases.renewLeases()
        XCTAssertEqual(renewedAfter, 0)
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

    func testSettleRecordsDailyUsageAndTheStream() async throws {
        let limits = ResolvedLimits(tokens: BucketLimit(perMinute: 10_000))
        let (first, _) = try await admitted(request("usage", limits, prompt: 100, output: 50, model: "gpt-4o"))
        let (second, _) = try await admitted(request("usage", limits, prompt: 30, output: 50, model: "gpt-4o"))
        let (third, _) = try await admitted(request("usage", limits, prompt: 7, output: 5, model: "o3:mini"))
        _ = try await limiter.settle(first, actualPromptTokens: 100, actualCompletionTokens: 20)
        _ = try await limiter.settle(second, actualPromptTokens: 30, actualCompletionTokens: 70)
        _ = try await limiter.settle(third, actualPromptTokens: 7, actualCompletionTokens: 1)
        let replay = try await limiter.settle(first, actualPromptTokens: 100, actualCompletionTokens: 20)
        XCTAssertNil(replay)

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
        let limits = ResolvedLimits(
            requests: BucketLimit(perMinute: 10), tokens: BucketLimit(perMinute: 1_000),
            inputTokens: BucketLimit(perMinute: 1_000), outputTokens: BucketLimit(perMinute: 1_000),
            maxConcurrentRequests: 5, tokensPerDay: 10_000, tokensPerMonth: 100_000
        )
        let (settledOne, _) = try await admitted(request("ttl", limits, prompt: 100, output: 100))
        let (open, _) = try await admitted(request("ttl", limits, prompt: 100, output: 100))
        _ = try await limiter.settle(settledOne, actualPromptTokens: 100, actualCompletionTokens: 10)
        let listed = try await redis.send(["KEYS", "sluice:{ttl}:*"])
        let keys = try XCTUnwrap(listed.array).compactMap(\.string)
        let layout = RedisKeyLayout(keyID: "ttl")
        XCTAssertEqual(Set(keys), [
            layout.requests, layout.tokens, layout.inputTokens, layout.outputTokens, layout.leases, layout.quota,
            layout.usage(day: UTCDay(Date()).text), layout.usageStream,
            layout.reservation(requestID: open.requestID),
        ])
        for key in keys {
            let ttl = try await redis.send(["PTTL", key]).integer ?? -3
            XCTAssertGreaterThan(ttl, 0, "\(key) must expire")
        }
    }

    // MARK: state the scripts did not write

    func testGarbageAndWrongTypesAreResetNotFatal() async throws {
        let limits = ResolvedLimits(
            requests: BucketLimit(perMinute: 10), tokens: BucketLimit(perMinute: 100),
            inputTokens: BucketLimit(perMinute: 100), outputTokens: BucketLimit(perMinute: 100),
            maxConcurrentRequests: 2, tokensPerDay: 1_000
        )
        let layout = RedisKeyLayout(keyID: "junk")
        _ = try await redis.send(["SET", layout.requests, "not a number"])
        _ = try await redis.send(["SET", layout.tokens, "nan"])
        _ = try await redis.send(["SET", layout.inputTokens, "1e300"])  // a TAT centuries ahead: a debt that never ends
        _ = try await redis.send(["RPUSH", layout.outputTokens, "wrong type"])
        _ = try await redis.send(["SET", layout.leases, "wrong type"])
        _ = try await redis.send(["HSET", layout.quota, "day", "x", "day_used", "-5"])
        let (reservation, snapshot) = try await admitted(request("junk", limits, prompt: 10, output: 10))
        XCTAssertEqual(snapshot.remainingRequests, 9, "the garbage TAT counts as a full bucket")
        XCTAssertEqual(snapshot.remainingTokens, 80)

        _ = try await redis.send(["SET", layout.usage(day: UTCDay(Date()).text), "wrong type"])
        _ = try await redis.send(["SET", layout.usageStream, "wrong type"])
        let afterSettle = try await limiter.settle(reservation, actualPromptTokens: 10, actualCompletionTokens: 0)
        XCTAssertEqual(afterSettle?.remainingTokens, 90)
        let usage = try await limiter.usage(keyID: "junk", day: UTCDay(Date()).text)
        XCTAssertEqual(usage["gpt-4o"], .init(promptTokens: 10, completionTokens: 0, requests: 1))

        // A usage field that is not an integer is replaced.
        let (next, _) = try await admitted(request("junk", limits, prompt: 1))
        _ = try await redis.send(["HSET", layout.usage(day: UTCDay(Date()).text), "gpt-4o:prompt", "abc"])
        _ = try await limiter.settle(next, actualPromptTokens: 1, actualCompletionTokens: 0)
        let replaced = try await limiter.usage(keyID: "junk", day: UTCDay(Date()).text)
        XCTAssertEqual(replaced["gpt-4o"]?.promptTokens, 1)
        XCTAssertEqual(replaced["gpt-4o"]?.requests, 2)
    }

    func testCorruptReservationIsNotSettled() async throws {
        let limits = ResolvedLimits(tokens: BucketLimit(perMinute: 100), maxConcurrentRequests: 1)
        let (reservation, _) = try await admitted(request("res", limits, prompt: 10, output: 50))
        let key = RedisKeyLayout(keyID: "res").reservation(requestID: reservation.requestID)
        // The reservation's fields: prompt, output, lease, quota cost, quota day, quota month.
        _ = try await redis.send(["SET", key, "garbage NaN 1 x y z", "PX", "60000"])
        let snapshot = try await limiter.settle(reservation, actualPromptTokens: 10, actualCompletionTokens: 0)
        XCTAssertEqual(snapshot?.remainingTokens, 40, "amounts unreadable: no refund, but the settle happens")
        try await admitted(request("res", limits))  // the lease was released

        let (other, _) = try await admitted(request("res-2", limits, prompt: 10))
        _ = try await redis.send(["DEL", RedisKeyLayout(keyID: "res-2").reservation(requestID: other.requestID)])
        _ = try await redis.send(["RPUSH", RedisKeyLayout(keyID: "res-2").reservation(requestID: other.requestID), "wrong type"])
        let none = try await limiter.settle(other, actualPromptTokens: 10, actualCompletionTokens: 0)
        XCTAssertNil(none)
    }

    func testALeaseScoredBeyondAnyTTLDoesNotHoldASlot() async throws {
        let limits = ResolvedLimits(tokens: BucketLimit(perMinute: 1_000), maxConcurrentRequests: 1)
        _ = try await redis.send(["ZADD", RedisKeyLayout(keyID: "far").leases, "99999999999999", "stuck"])
        let (first, _) = try await admitted(request("far", limits))
        guard case .denied = try await limiter.admit(request("far", limits)) else {
            return XCTFail("the one real lease holds the only slot")
        }
        _ = try await limiter.settle(first, actualPromptTokens: 1, actualCompletionTokens: 0)
        try await admitted(request("far", limits))
    }

    func testFlushedDatabaseMidRun() async throws {
        let limits = ResolvedLimits(requests: BucketLimit(perMinute: 2), tokens: BucketLimit(perMinute: 100), maxConcurrentRequests: 1)
        let (reservation, _) = try await admitted(request("flush", limits, prompt: 90))
        _ = try await redis.send(["FLUSHALL"])
        _ = try await redis.send(["FUNCTION", "FLUSH"])
        let settled = try await limiter.settle(reservation, actualPromptTokens: 90, actualCompletionTokens: 0)
        XCTAssertNil(settled, "no reservation left: nothing to settle")
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
