import XCTest
@testable import SluiceCore

/// Cost arithmetic against hand calculations (each expected value worked out in the comment above it).
final class PricingTests: XCTestCase {
    func price(_ text: String) -> TokenPrice { TokenPrice(dollarsPerMtok: text)! }

    var miniPrice: ModelPrice {
        ModelPrice(prices: TokenPrices(input: price("0.15"), cachedInput: price("0.075"), output: price("0.6")))
    }

    // MARK: amounts

    func testDollarAmountsAreExactDecimals() {
        XCTAssertEqual(USDAmount(decimal: "5")?.nanos, 5_000_000_000)
        XCTAssertEqual(USDAmount(decimal: "0.0000315")?.nanos, 31_500)
        XCTAssertEqual(USDAmount(decimal: "12.000000001")?.nanos, 12_000_000_001)
        XCTAssertEqual(USDAmount(decimal: "1e-06")?.nanos, 1_000, "Swift's shortest text of 0.000001")
        XCTAssertEqual(USDAmount(decimal: "2.5E+2")?.nanos, 250_000_000_000)
        XCTAssertNil(USDAmount(decimal: "0.0000000001"), "a tenth of a nano-dollar cannot be held")
        XCTAssertNil(USDAmount(decimal: "1.2.3"))
        XCTAssertNil(USDAmount(decimal: ""))
        XCTAssertNil(USDAmount(decimal: "abc"))
        XCTAssertNil(USDAmount(decimal: "99999999999"), "beyond Int64 nano-dollars")
        XCTAssertEqual(USDAmount(nanos: 31_500).description, "0.0000315")
        XCTAssertEqual(USDAmount(nanos: 5_000_000_000).description, "5")
        XCTAssertEqual(USDAmount(nanos: 0).description, "0")
        XCTAssertEqual(USDAmount(nanos: -250_000_000).description, "-0.25")
        XCTAssertEqual(USDAmount(nanos: 1).description, "0.000000001")
    }

    func testTokenPricesHaveSixDigitsPerMtok() {
        XCTAssertEqual(price("0.075").picodollarsPerToken, 75_000)
        XCTAssertEqual(price("2.5").picodollarsPerToken, 2_500_000)
        XCTAssertEqual(price("0.000001").picodollarsPerToken, 1)
        XCTAssertEqual(price("100000").picodollarsPerToken, 100_000_000_000)
        XCTAssertNil(TokenPrice(dollarsPerMtok: "0.0000001"))
        XCTAssertNil(TokenPrice(dollarsPerMtok: "100000.000001"))
        XCTAssertNil(TokenPrice(dollarsPerMtok: "-1"))
        XCTAssertEqual(price("0.075").dollarsPerMtok, "0.075")
    }

    // MARK: flat prices

    func testFlatPriceWithCachedInput() {
        // 600 uncached × $0.15/M = $0.00009; 400 cached × $0.075/M = $0.00003; 500 out × $0.60/M = $0.0003
        // total $0.00042 = 420,000 n$.
        let cost = miniPrice.cost(BilledTokens(inputTokens: 1000, cachedInputTokens: 400, outputTokens: 500))
        XCTAssertEqual(cost?.nanos, 420_000)
        XCTAssertEqual(cost?.description, "0.00042")
    }

    func testCachedTokensAreClampedToThePrompt() {
        // 10 prompt tokens, all cached (a report of 50 is bounded by the prompt): 10 × 0.075 µ$ = 750 n$;
        // 0 output.
        XCTAssertEqual(miniPrice.cost(BilledTokens(inputTokens: 10, cachedInputTokens: 50, outputTokens: 0))?.nanos, 750)
    }

    func testCachedPriceDefaultsToInputPrice() {
        let plain = ModelPrice(prices: TokenPrices(input: price("1"), output: price("2")))
        // 100 × $1/M (cached or not) + 10 × $2/M = 100,000 + 20,000 n$.
        XCTAssertEqual(plain.cost(BilledTokens(inputTokens: 100, cachedInputTokens: 60, outputTokens: 10))?.nanos, 120_000)
    }

    func testPerRequestPriceIsAdded() {
        var withFee = miniPrice
        withFee.perRequest = USDAmount(decimal: "0.001")!
        // $0.001 + 1 × $0.15/M ($0.00000015) = 1,000,150 n$.
        XCTAssertEqual(withFee.cost(BilledTokens(inputTokens: 1, outputTokens: 0))?.nanos, 1_000_150)
        // Nothing but the fee for an empty request.
        XCTAssertEqual(withFee.cost(BilledTokens(inputTokens: 0, outputTokens: 0))?.nanos, 1_000_000)
    }

    func testOneRoundingUpPerRequest() {
        let tiny = ModelPrice(prices: TokenPrices(input: price("0.000333"), output: price("0.000001")))
        // 3 × 333 p$ = 999 p$ → 1 n$; one more output token: 1,000 p$ = exactly 1 n$; two: 1,001 → 2 n$.
        XCTAssertEqual(tiny.cost(BilledTokens(inputTokens: 3, outputTokens: 0))?.nanos, 1)
        XCTAssertEqual(tiny.cost(BilledTokens(inputTokens: 3, outputTokens: 1))?.nanos, 1)
        XCTAssertEqual(tiny.cost(BilledTokens(inputTokens: 3, outputTokens: 2))?.nanos, 2)
        XCTAssertEqual(tiny.cost(BilledTokens(inputTokens: 0, outputTokens: 0))?.nanos, 0)
    }

    func testLargestRequestDoesNotOverflow() {
        let dear = ModelPrice(prices: TokenPrices(input: price("100000"), output: price("100000")), perRequest: USDAmount(dollars: 1_000_000))
        let most = Usage.maximumTokenCount
        // (2 × 2,147,483,647 tokens × 10¹¹ p$) / 1000 + 10¹⁵ n$ = 429,496,729,400,000,000 + 10¹⁵.
        XCTAssertEqual(dear.cost(BilledTokens(inputTokens: most, outputTokens: most))?.nanos, 429_496_729_400_000_000 + 1_000_000_000_000_000)
    }

    // MARK: volume tiers

    var tieredPrice: ModelPrice {
        ModelPrice(
            prices: TokenPrices(input: price("2.5"), output: price("10")),
            volumeTiers: [
                VolumeTier(afterTokens: 1_000_000, prices: TokenPrices(input: price("2"), output: price("8"))),
                VolumeTier(afterTokens: 2_000_000, prices: TokenPrices(input: price("1"), output: price("4"))),
            ]
        )
    }

    func testVolumeTierSplitsARequestAtItsBreak() {
        // Month before: 999,000. Input 999,000..<1,000,500: 1,000 × $2.5/M = $0.0025, 500 × $2/M = $0.001;
        // output 1,000,500..<1,001,500 at $8/M: $0.008. Total $0.0115.
        let cost = tieredPrice.cost(BilledTokens(inputTokens: 1_500, outputTokens: 1_000), monthTokensBefore: 999_000)
        XCTAssertEqual(cost?.nanos, 11_500_000)
    }

    func testVolumeTierPriceAppliesFromItsPosition() {
        // Before the break: 100 × $2.5/M + 100 × $10/M = 250,000 + 1,000,000 n$.
        XCTAssertEqual(tieredPrice.cost(BilledTokens(inputTokens: 100, outputTokens: 100), monthTokensBefore: 0)?.nanos, 1_250_000)
        // Exactly at the first break: 100 × $2/M + 100 × $8/M = 200,000 + 800,000.
        XCTAssertEqual(tieredPrice.cost(BilledTokens(inputTokens: 100, outputTokens: 100), monthTokensBefore: 1_000_000)?.nanos, 1_000_000)
        // Past the second: 100 × $1/M + 100 × $4/M.
        XCTAssertEqual(tieredPrice.cost(BilledTokens(inputTokens: 100, outputTokens: 100), monthTokensBefore: 5_000_000)?.nanos, 500_000)
    }

    func testVolumeTierCrossingTwoBreaksInOneRequest() {
        // Month before 999,900; input 1,000,200 tokens: 100 at $2.5/M ($0.00025), 1,000,000 at $2/M ($2),
        // 100 at $1/M ($0.0001); output 10 at $4/M ($0.00004). Total $2.00039.
        let cost = tieredPrice.cost(BilledTokens(inputTokens: 1_000_200, outputTokens: 10), monthTokensBefore: 999_900)
        XCTAssertEqual(cost?.nanos, 2_000_390_000)
    }

    func testPositionDependentCostIsUnknownWithoutThePosition() {
        XCTAssertNil(tieredPrice.cost(BilledTokens(inputTokens: 1, outputTokens: 1)))
        XCTAssertNil(miniPrice.cost(BilledTokens(inputTokens: 1, outputTokens: 1), plan: SubscriptionPlan(monthlyFee: .zero, includedTokens: 10)))
        XCTAssertNotNil(miniPrice.cost(BilledTokens(inputTokens: 1, outputTokens: 1)), "a flat price needs no position")
    }

    // MARK: subscription plans

    func testPlanIncludedTokensAreFreeThenOverage() {
        let plan = SubscriptionPlan(monthlyFee: USDAmount(dollars: 20), includedTokens: 1_000_000)
        // Month before 999,800: input 200 free, 300 × $0.15/M = $0.000045; output 100 × $0.6/M = $0.00006.
        // Total $0.000105 (the fee is not part of a request's cost).
        XCTAssertEqual(miniPrice.cost(BilledTokens(inputTokens: 500, outputTokens: 100), monthTokensBefore: 999_800, plan: plan)?.nanos, 105_000)
        // Wholly inside the included tokens: nothing.
        XCTAssertEqual(miniPrice.cost(BilledTokens(inputTokens: 500, outputTokens: 100), monthTokensBefore: 0, plan: plan)?.nanos, 0)
    }

    func testPlanOverageUsesTheVolumeTiers() {
        let plan = SubscriptionPlan(monthlyFee: USDAmount(dollars: 20), includedTokens: 1_500_000)
        // Included up to 1,500,000; the $2/$8 tier applies from 1,000,000 (inside the plan: free),
        // $1/$4 from 2,000,000. Month before 1,499,000: input 1,000 free; output 1,000 at $8/M = $0.008.
        XCTAssertEqual(tieredPrice.cost(BilledTokens(inputTokens: 1_000, outputTokens: 1_000), monthTokensBefore: 1_499_000, plan: plan)?.nanos, 8_000_000)
        // Month before 1,999,500: input 500 at $2/M ($0.001), 500 at $1/M ($0.0005); output 1,000 at $4/M ($0.004).
        XCTAssertEqual(tieredPrice.cost(BilledTokens(inputTokens: 1_000, outputTokens: 1_000), monthTokensBefore: 1_999_500, plan: plan)?.nanos, 5_500_000)
    }

    func testPlanFeeStillChargesPerRequestPrice() {
        var withFee = miniPrice
        withFee.perRequest = USDAmount(decimal: "0.0001")!
        let plan = SubscriptionPlan(monthlyFee: USDAmount(dollars: 5), includedTokens: 1_000)
        XCTAssertEqual(withFee.cost(BilledTokens(inputTokens: 10, outputTokens: 10), monthTokensBefore: 0, plan: plan)?.nanos, 100_000)
    }

    // MARK: reservations

    func testMaximumCostTakesTheDearestBand() {
        // Dearest input $2.5/M, output $10/M: 1,000 × 2.5 µ$ + 500 × 10 µ$ = $0.0025 + $0.005.
        XCTAssertEqual(tieredPrice.maximumCost(inputTokens: 1_000, outputTokens: 500).nanos, 7_500_000)
        // A cached price above the input price (some providers charge cache writes more) bounds the input.
        let dearCache = ModelPrice(prices: TokenPrices(input: price("1"), cachedInput: price("1.25"), output: price("2")), perRequest: USDAmount(nanos: 7))
        XCTAssertEqual(dearCache.maximumCost(inputTokens: 1_000, outputTokens: 0).nanos, 1_250_007)
        // The actual cost never exceeds it.
        for cached in [0, 500, 1_000] {
            XCTAssertLessThanOrEqual(dearCache.cost(BilledTokens(inputTokens: 1_000, cachedInputTokens: cached, outputTokens: 0))!, dearCache.maximumCost(inputTokens: 1_000, outputTokens: 0))
        }
    }

    // MARK: lookup

    func testLookupPrefersExactThenLongestPrefix() {
        let a = ModelPrice(prices: TokenPrices(input: price("1"), output: price("1")))
        let b = ModelPrice(prices: TokenPrices(input: price("2"), output: price("2")))
        let c = ModelPrice(prices: TokenPrices(input: price("3"), output: price("3")))
        let d = ModelPrice(prices: TokenPrices(input: price("4"), output: price("4")))
        let pricing = Pricing(models: [.prefix("gpt-4o"): a, .prefix("gpt-4o-mini"): b, .exact("gpt-4o-mini"): c, .prefix(""): d])
        XCTAssertEqual(pricing.price(for: "gpt-4o-mini")?.price, c)
        XCTAssertEqual(pricing.price(for: "gpt-4o-mini")?.pattern, .exact("gpt-4o-mini"))
        XCTAssertEqual(pricing.price(for: "gpt-4o-mini-2024-07-18")?.price, b)
        XCTAssertEqual(pricing.price(for: "gpt-4o-2024-08-06")?.pattern, .prefix("gpt-4o"))
        XCTAssertEqual(pricing.price(for: "o3")?.price, d, "\"*\" prices everything else")
        XCTAssertNil(Pricing(models: [.exact("gpt-4o"): a]).price(for: "gpt-4o-mini"))
    }
}

extension PricingTests {
    func testRequestCostIsUnknownNeverZero() {
        let pricing = Pricing(
            models: [.exact("gpt-4o-mini"): miniPrice, .prefix("gpt-4o"): tieredPrice],
            plans: ["starter": SubscriptionPlan(monthlyFee: USDAmount(dollars: 20), includedTokens: 1_000)]
        )
        let tokens = BilledTokens(inputTokens: 1000, cachedInputTokens: 400, outputTokens: 500)
        XCTAssertEqual(pricing.cost(model: "gpt-4o-mini", planName: nil, tokens: tokens), .known(USDAmount(nanos: 420_000)))
        XCTAssertEqual(pricing.cost(model: "gpt-4o-mini", planName: nil, tokens: tokens).description, "0.00042")
        XCTAssertEqual(pricing.cost(model: "o3", planName: nil, tokens: tokens), .unknown, "no price")
        XCTAssertEqual(pricing.cost(model: "o3", planName: nil, tokens: tokens).description, "unknown")
        XCTAssertEqual(pricing.cost(model: "gpt-4o", planName: nil, tokens: tokens), .unknown, "tiers without the month position")
        XCTAssertEqual(pricing.cost(model: "gpt-4o-mini", planName: "starter", tokens: tokens), .unknown, "a plan without the month position")
        // With the position: 1,000 included (free) then 500 output × $0.6/M = $0.0003.
        XCTAssertEqual(pricing.cost(model: "gpt-4o-mini", planName: "starter", tokens: tokens, monthTokensBefore: 0), .known(USDAmount(nanos: 300_000)))
        XCTAssertEqual(RequestCost.known(.zero).description, "0", "a known zero (a free model) is 0, not unknown")
    }
}
