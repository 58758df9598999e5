import XCTest
@testable import SluiceCore

final class ResolvedLimitsTests: XCTestCase {
    func testLargestAdmissiblePromptIsTheSmallestBucketThatHoldsThePrompt() {
        let limits = ResolvedLimits(
            requests: BucketLimit(perMinute: 5),
            tokens: BucketLimit(perMinute: 20_000, burst: 30_000),
            inputTokens: BucketLimit(perMinute: 25_000)
        )
        // The tokens bucket also holds the output reservation.
        XCTAssertEqual(limits.largestAdmissiblePrompt(reservedOutputTokens: 1_000), 25_000)
        XCTAssertEqual(limits.largestAdmissiblePrompt(reservedOutputTokens: 10_000), 20_000)
        // A reservation larger than the bucket leaves no room at all.
        XCTAssertEqual(limits.largestAdmissiblePrompt(reservedOutputTokens: 40_000), 0)
    }

    func testNoTokenBucketBoundsNothing() {
        XCTAssertNil(ResolvedLimits(requests: BucketLimit(perMinute: 5), outputTokens: BucketLimit(perMinute: 10))
            .largestAdmissiblePrompt(reservedOutputTokens: 1))
        XCTAssertNil(ResolvedLimits.unlimited.largestAdmissiblePrompt(reservedOutputTokens: 0))
    }
}
