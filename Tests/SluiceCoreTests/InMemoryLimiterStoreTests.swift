import Synchronization
import XCTest
@testable import SluiceCore

/// A clock the test moves by hand.
final class ManualClock: Sendable {
    private let micros = Atomic<Int64>(1_000_000)
    var now: Int64 { micros.load(ordering: .relaxed) }
    func advance(seconds: Double) { micros.add(Int64(seconds * 1_000_000), ordering: .relaxed) }
    var clock: InMemoryLimiterStore.Clock { { [self] in self.now } }
}

final class InMemoryLimiterStoreTests: XCTestCase {
    var clock = ManualClock()
    var store = InMemoryLimiterStore()
    var nextRequestNumber = 0

    override func setUp() {
        clock = ManualClock()
        store = InMemoryLimiterStore(shardCount: 4, clock: clock.clock)
    }

    func request(_ limits: ResolvedLimits, key: String = "k", prompt: Int = 0, output: Int = 0) -> AdmissionRequest {
        nextRequestNumber += 1
        return AdmissionRequest(requestID: "req-\(nextRequestNumber)", keyID: key, limits: limits, model: "gpt-4o-mini", promptTokens: prompt, reservedOutputTokens: output)
    }

    @discardableResult
    func admitted(_ request: AdmissionRequest, file: StaticString = #filePath, line: UInt = #line) async throws -> (Reservation, RateLimitSnapshot) {
        switch try await store.admit(request) {
        case .admitted(let reservation, let snapshot): return (reservation, snapshot)
        case .denied(let denial, _):
            XCTFail("denied: \(denial)", file: file, line: line)
            throw CancellationError()
        }
    }

    func denied(_ request: AdmissionRequest, file: StaticString = #filePath, line: UInt = #line) async throws -> (RateLimitDenial, RateLimitSnapshot) {
        switch try await store.admit(request) {
        case .denied(let denial, let snapshot): return (denial, snapshot)
        case .admitted:
            XCTFail("admitted", file: file, line: line)
            throw CancellationError()
        }
    }

    func testAllOrNothing() async throws {
        let limits = ResolvedLimits(requests: BucketLimit(perMinute: 10), tokens: BucketLimit(perMinute: 100))
        let (_, first) = try await admitted(request(limits, prompt: 50, output: 40))
        XCTAssertEqual(first.remainingRequests, 9)
        XCTAssertEqual(first.remainingTokens, 10)
        let (denial, snapshot) = try await denied(request(limits, prompt: 20))
        XCTAssertEqual(denial.kind, .tokens)
        XCTAssertEqual(denial.limit, 100)
        XCTAssertEqual(denial.used, 90)
        XCTAssertEqual(denial.requested, 20)
        XCTAssertFalse(denial.neverFits)
        // 10 more tokens needed at 100/min: 6 s
        XCTAssertEqual(denial.retryAfterSeconds, 6, accuracy: 1e-9)
        XCTAssertEqual(snapshot.remainingRequests, 9, "the request bucket was not charged for a denied request")
        XCTAssertEqual(snapshot.remainingTokens, 10)
    }

    func testCostsPerBucket() async throws {
        let limits = ResolvedLimits(
            requests: BucketLimit(perMinute: 100), tokens: BucketLimit(perMinute: 1_000),
            inputTokens: BucketLimit(perMinute: 300), outputTokens: BucketLimit(perMinute: 200)
        )
        try await admitted(request(limits, prompt: 250, output: 150))
        // ITPM has 50 left, OTPM 50, TPM 600
        let (input, _) = try await denied(request(limits, prompt: 60, output: 10))
        XCTAssertEqual(input.kind, .inputTokens)
        XCTAssertEqual(input.used, 250)
        let (output, _) = try await denied(request(limits, prompt: 10, output: 60))
        XCTAssertEqual(output.kind, .outputTokens)
        XCTAssertEqual(output.requested, 60)
        try await admitted(request(limits, prompt: 50, output: 50))
    }

    func testConcurrencySlots() async throws {
        let limits = ResolvedLimits(maxConcurrentRequests: 2)
        let (a, _) = try await admitted(request(limits))
        try await admitted(request(limits))
        let (denial, _) = try await denied(request(limits))
        XCTAssertEqual(denial.kind, .concurrency)
        XCTAssertEqual(denial.limit, 2)
        XCTAssertEqual(denial.used, 2)
        XCTAssertEqual(denial.retryAfterSeconds, RateLimitDenial.concurrencyRetryAfterSeconds)
        _ = try await store.settle(a, actualPromptTokens: 0, actualCompletionTokens: 0)
        try await admitted(request(limits))
    }

    func testSettleExactlyOnce() async throws {
        let limits = ResolvedLimits(tokens: BucketLimit(perMinute: 100), maxConcurrentRequests: 2)
        let (a, _) = try await admitted(request(limits, prompt: 50, output: 40))
        try await admitted(request(limits, prompt: 0, output: 0))
        // actual 50 + 10: 30 tokens come back
        let settled = try await store.settle(a, actualPromptTokens: 50, actualCompletionTokens: 10)
        XCTAssertEqual(settled?.remainingTokens, 40)
        let again = try await store.settle(a, actualPromptTokens: 0, actualCompletionTokens: 0)
        XCTAssertNil(again, "second settle is a no-op")
        let snapshot = try await store.snapshot(keyID: "k", limits: limits)
        XCTAssertEqual(snapshot.remainingTokens, 40, "no second refund")
        // one slot is still held by the second request: one more fits, not two
        try await admitted(request(limits))
        let (denial, _) = try await denied(request(limits))
        XCTAssertEqual(denial.kind, .concurrency, "the slot was released once only")
    }

    func testSettleChargesBeyondReservationIntoDebt() async throws {
        let limits = ResolvedLimits(tokens: BucketLimit(perMinute: 1_000))
        let (a, _) = try await admitted(request(limits, prompt: 50, output: 50))
        // produced 2000 instead of 50: 1950 more, 2050 in use on a 1000 bucket
        let settled = try await store.settle(a, actualPromptTokens: 50, actualCompletionTokens: 2_000)
        XCTAssertEqual(settled?.remainingTokens, 0)
        // full again after 2050 × 60 ms = 123 s
        XCTAssertEqual(try XCTUnwrap(settled?.resetTokensSeconds), 123, accuracy: 1e-9)
        let (denial, _) = try await denied(request(limits, prompt: 10))
        // waits for the debt plus its own 10 tokens: 123 + 0.6 − 60
        XCTAssertEqual(denial.retryAfterSeconds, 63.6, accuracy: 1e-9)
        XCTAssertEqual(denial.used, 2_050)
        clock.advance(seconds: 63.6)
        try await admitted(request(limits, prompt: 10))
    }

    func testDenialReportsTheLongestWait() async throws {
        // tokens wait 30 s, requests 1 s → tokens
        let tokensLonger = ResolvedLimits(requests: BucketLimit(perMinute: 60, burst: 1), tokens: BucketLimit(perMinute: 600))
        try await admitted(request(tokensLonger, key: "a", prompt: 600))
        let (first, _) = try await denied(request(tokensLonger, key: "a", prompt: 300))
        XCTAssertEqual(first.kind, .tokens)
        XCTAssertEqual(first.retryAfterSeconds, 30, accuracy: 1e-9)

        // requests wait 60 s, tokens 1 s → requests
        let requestsLonger = ResolvedLimits(requests: BucketLimit(perMinute: 1), tokens: BucketLimit(perMinute: 6_000))
        try await admitted(request(requestsLonger, key: "b", prompt: 100))
        let (second, _) = try await denied(request(requestsLonger, key: "b", prompt: 6_000))
        XCTAssertEqual(second.kind, .requests)
        XCTAssertEqual(second.retryAfterSeconds, 60, accuracy: 1e-9)
    }

    func testTooLargeNeverFitsAndOutranksWaits() async throws {
        let limits = ResolvedLimits(requests: BucketLimit(perMinute: 1), tokens: BucketLimit(perMinute: 1_000))
        let (denial, _) = try await denied(request(limits, prompt: 1_500))
        XCTAssertTrue(denial.neverFits)
        XCTAssertEqual(denial.kind, .tokens)
        XCTAssertEqual(denial.requested, 1_500)
        XCTAssertEqual(denial.burst, 1_000)
        try await admitted(request(limits, prompt: 10))
        // the request bucket now waits 60 s, but a request that can never fit says so
        let (second, _) = try await denied(request(limits, prompt: 1_001))
        XCTAssertTrue(second.neverFits)
        XCTAssertEqual(second.kind, .tokens)
    }

    func testSnapshotHeadersMatchOpenAIExample() async throws {
        let limits = ResolvedLimits(requests: BucketLimit(perMinute: 5_000), tokens: BucketLimit(perMinute: 200_000))
        let (_, snapshot) = try await admitted(request(limits, prompt: 100, output: 0))
        XCTAssertEqual(snapshot.limitRequests, 5_000)
        XCTAssertEqual(snapshot.remainingRequests, 4_999)
        let headers = Dictionary(uniqueKeysWithValues: RateLimitHeaders.render(snapshot))
        XCTAssertEqual(headers["x-ratelimit-reset-requests"], "12ms")
        XCTAssertEqual(headers["x-ratelimit-remaining-tokens"], "199900")
        XCTAssertEqual(headers["x-ratelimit-reset-tokens"], "30ms")
    }

    func testUnlimitedKeyAlwaysAdmitsAndHasNoHeaders() async throws {
        for _ in 0..<100 {
            let (_, snapshot) = try await admitted(request(.unlimited, prompt: 1_000_000, output: 1_000_000))
            XCTAssertEqual(snapshot, .empty)
        }
    }

    func testIdleFullEntriesAreDropped() async throws {
        let limits = ResolvedLimits(requests: BucketLimit(perMinute: 60))
        let (a, _) = try await admitted(request(limits, key: "settled"))
        _ = try await store.settle(a, actualPromptTokens: 0, actualCompletionTokens: 0)
        try await admitted(request(limits, key: "open"))
        XCTAssertEqual(store.trackedKeyCount, 2)
        store.sweep()
        XCTAssertEqual(store.trackedKeyCount, 2, "buckets not full yet")
        clock.advance(seconds: 2)
        store.sweep()
        XCTAssertEqual(store.trackedKeyCount, 1, "the key with an unsettled reservation stays")
    }

    func testConcurrentAdmissionsNeverOvershoot() async throws {
        let limits = ResolvedLimits(requests: BucketLimit(perMinute: 100))
        let store = self.store
        let admittedCount = await withTaskGroup(of: Int.self) { group in
            for index in 0..<400 {
                group.addTask {
                    let request = AdmissionRequest(requestID: "c\(index)", keyID: "shared", limits: limits, model: "m", promptTokens: 0, reservedOutputTokens: 0)
                    if case .admitted = try? await store.admit(request) { return 1 }
                    return 0
                }
            }
            return await group.reduce(0, +)
        }
        XCTAssertEqual(admittedCount, 100)
    }
}

final class RateLimitDenialMappingTests: XCTestCase {
    func testDenialsMapToOpenAIShaped429s() {
        let tokens = RateLimitDenial(kind: .tokens, limit: 200_000, burst: 200_000, used: 130_491, requested: 75_418, retryAfterSeconds: 1.772, neverFits: false)
        let limited = tokens.gatewayError(model: "gpt-4o-mini")
        XCTAssertEqual(limited.status, 429)
        XCTAssertEqual(limited.kind, .rateLimited)
        XCTAssertEqual(limited.message, "Rate limit reached for gpt-4o-mini on tokens per min (TPM): Limit 200000, Used 130491, Requested 75418. Please try again in 1.772s.")
        XCTAssertEqual(limited.retryAfterSeconds, 1.772)

        let tooLarge = RateLimitDenial(kind: .tokens, limit: 30_000, burst: 30_000, used: 0, requested: 34_102, retryAfterSeconds: 0, neverFits: true)
        let error = tooLarge.gatewayError(model: "gpt-4o")
        XCTAssertEqual(error.kind, .requestTooLarge)
        XCTAssertEqual(error.shouldRetry, false)
        XCTAssertTrue(error.message.hasPrefix("Request too large for gpt-4o on tokens per min (TPM): Limit 30000, Requested 34102."), error.message)

        let concurrency = RateLimitDenial(kind: .concurrency, limit: 4, burst: 4, used: 4, requested: 1, retryAfterSeconds: 1, neverFits: false)
        XCTAssertEqual(concurrency.gatewayError(model: "m").kind, .concurrencyLimited)
    }
}
