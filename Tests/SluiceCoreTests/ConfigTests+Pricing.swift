import Foundation
import XCTest
@testable import SluiceCore

/// The `pricing` section and `keys[].plan`.
extension ConfigTests {
    func parsePricing(_ pricingJSON: String, keys: String = "[]") throws -> SluiceConfig {
        let json = #"{"upstreams": [{"name": "u", "base_url": "http://h/v1", "models": ["gpt-4o-mini", "gpt-4o*"]}], "tiers": {"t": {}}, "keys": "#
            + keys + #", "pricing": "# + pricingJSON + "}"
        return try SluiceConfig.parse(bytes: Array(json.utf8), environment: [:])
    }

    func pricingProblems(_ pricingJSON: String, keys: String = "[]", file: StaticString = #filePath, line: UInt = #line) -> [String] {
        do {
            _ = try parsePricing(pricingJSON, keys: keys)
            XCTFail("accepted: \(pricingJSON)", file: file, line: line)
            return []
        } catch {
            return (error as? ConfigError)?.problems.map(\.description) ?? ["\(error)"]
        }
    }

    func testPricingIsEmptyWithoutASection() throws {
        let json = #"{"upstreams": [{"name": "u", "base_url": "http://h/v1", "models": ["*"]}], "keys": []}"#
        XCTAssertTrue(try SluiceConfig.parse(bytes: Array(json.utf8), environment: [:]).pricing.isEmpty)
        XCTAssertTrue(try parsePricing("null").pricing.isEmpty)
    }

    func testPricingEveryField() throws {
        let config = try parsePricing(#"""
            {"models": {
                "gpt-4o-mini": {"input_per_mtok": 0.15, "cached_input_per_mtok": 0.075, "output_per_mtok": 0.6},
                "gpt-4o*": {"input_per_mtok": 2.5, "output_per_mtok": 10, "per_request": 0.0001,
                            "volume_tiers": [{"after_tokens": 1000000, "input_per_mtok": 2},
                                             {"after_tokens": 2000000, "output_per_mtok": 4, "cached_input_per_mtok": 0.5}]}},
             "plans": {"starter": {"monthly_fee": 20, "included_tokens": 5000000}}}
            """#, keys: #"[{"id": "k", "secret_sha256": "\#(String(repeating: "a", count: 64))", "tier": "t", "plan": "starter"}]"#)
        let mini = try XCTUnwrap(config.pricing.models[.exact("gpt-4o-mini")])
        XCTAssertEqual(mini.prices.input.picodollarsPerToken, 150_000)
        XCTAssertEqual(mini.prices.cachedInput.picodollarsPerToken, 75_000)
        XCTAssertEqual(mini.prices.output.picodollarsPerToken, 600_000)
        XCTAssertEqual(mini.perRequest, .zero)
        XCTAssertEqual(mini.volumeTiers, [])
        let family = try XCTUnwrap(config.pricing.models[.prefix("gpt-4o")])
        XCTAssertEqual(family.perRequest.nanos, 100_000)
        XCTAssertEqual(family.prices.cachedInput, family.prices.input, "no cache discount given: the input price")
        XCTAssertEqual(family.volumeTiers.map(\.afterTokens), [1_000_000, 2_000_000])
        // A tier's missing fields come from the model's own prices.
        XCTAssertEqual(family.volumeTiers[0].prices, TokenPrices(input: TokenPrice(dollarsPerMtok: "2")!, output: TokenPrice(dollarsPerMtok: "10")!))
        XCTAssertEqual(family.volumeTiers[1].prices, TokenPrices(input: TokenPrice(dollarsPerMtok: "2.5")!, cachedInput: TokenPrice(dollarsPerMtok: "0.5")!, output: TokenPrice(dollarsPerMtok: "4")!))
        XCTAssertEqual(config.pricing.plans["starter"], SubscriptionPlan(monthlyFee: USDAmount(dollars: 20), includedTokens: 5_000_000))
        XCTAssertEqual(config.keys[0].plan, "starter")
        XCTAssertEqual(config.pricing.price(for: "gpt-4o-2024-08-06")?.pattern, .prefix("gpt-4o"))
    }

    func testPricingProblemsNameTheirPaths() {
        XCTAssertEqual(pricingProblems(#"{"models": {"gpt-4o": {"output_per_mtok": 1}}}"#), [
            "$.pricing.models.gpt-4o.input_per_mtok: missing (required): USD per million tokens (0 for a model that has none, such as an embedding model's output)",
        ])
        XCTAssertEqual(pricingProblems(#"{"models": {"gpt-4o": {"input_per_mtok": 0.0000001, "output_per_mtok": -1}}}"#), [
            "$.pricing.models.gpt-4o.input_per_mtok: must be between 0 and 100000 USD per million tokens with at most 6 digits after the point, found 1e-07",
            "$.pricing.models.gpt-4o.output_per_mtok: must be between 0 and 100000 USD per million tokens with at most 6 digits after the point, found -1",
        ])
        XCTAssertEqual(pricingProblems(#"{"models": {"gpt-4o": {"input_per_mtok": "1", "output_per_mtok": 1, "per_request": 0.0000000001}}}"#), [
            "$.pricing.models.gpt-4o.input_per_mtok: expected a number (USD per million tokens), found a string",
            "$.pricing.models.gpt-4o.per_request: must be between 0 and 1000000 USD with at most 9 digits after the point, found 1e-10",
        ])
        XCTAssertEqual(pricingProblems(#"{"models": {"gpt*4o": {"input_per_mtok": 1, "output_per_mtok": 1}, "x": {"input_per_mtok": 1, "output_per_mtok": 1, "outptu_per_mtok": 1}}}"#), [
            #"$.pricing.models["gpt*4o"]: "gpt*4o" is not a model name or a prefix ending in "*""#,
            #"$.pricing.models.x.outptu_per_mtok: unknown field "outptu_per_mtok" (did you mean "output_per_mtok"?)"#,
        ])
        XCTAssertEqual(pricingProblems(#"{"models": {"m": {"input_per_mtok": 1, "output_per_mtok": 1, "volume_tiers": [{"after_tokens": 100}, {"after_tokens": 100}, {"input_per_mtok": 1}, {"after_tokens": 0}]}}}"#), [
            "$.pricing.models.m.volume_tiers[1].after_tokens: must be above the previous tier's (100): list the tiers in ascending order",
            "$.pricing.models.m.volume_tiers[2].after_tokens: missing (required): the tokens of the calendar month after which these prices apply",
            "$.pricing.models.m.volume_tiers[3].after_tokens: must be between 1 and 4503599627370496, found 0",
        ])
        XCTAssertEqual(pricingProblems(#"{"plans": {"p": {"monthly_fee": 20}, "q r": {"monthly_fee": 1, "included_tokens": 1}}, "modles": {}}"#), [
            #"$.pricing.modles: unknown field "modles" (did you mean "models"?)"#,
            "$.pricing.plans.p.included_tokens: missing (required): the tokens of each calendar month the fee covers",
            #"$.pricing.plans["q r"]: plan names must match [A-Za-z0-9_.-]{1,64}"#,
        ])
        XCTAssertEqual(pricingProblems(#"{"plans": {"p": {"monthly_fee": 1, "included_tokens": 1}}}"#, keys: #"[{"id": "k", "secret_sha256": "\#(String(repeating: "a", count: 64))", "tier": "t", "plan": "gold"}]"#), [
            #"$.keys[0].plan: unknown plan "gold" (known: p)"#,
        ])
    }

    func testUnpricedServedModelsAreWarnings() throws {
        let config = try parsePricing(#"{"models": {"gpt-4o-2024-08-06": {"input_per_mtok": 2.5, "output_per_mtok": 10}}}"#)
        XCTAssertEqual(config.unpricedModels().map(\.description), [
            #"warning: $.upstreams[0].models[0]: model "gpt-4o-mini" has no price in pricing.models: its requests' cost is reported as unknown"#,
            #"warning: $.upstreams[0].models[1]: models matching "gpt-4o*" have no price unless pricing.models lists them (or a prefix entry covering "gpt-4o*"): the cost of the others is reported as unknown"#,
        ])
        let covered = try parsePricing(#"{"models": {"gpt-4o*": {"input_per_mtok": 2.5, "output_per_mtok": 10}}}"#)
        XCTAssertEqual(covered.unpricedModels(), [], "the prefix entry prices gpt-4o-mini too")
        let everything = try parsePricing(#"{"models": {"*": {"input_per_mtok": 1, "output_per_mtok": 1}}}"#)
        XCTAssertEqual(everything.unpricedModels(), [])
        let json = #"{"upstreams": [{"name": "u", "base_url": "http://h/v1", "models": ["*"]}], "keys": []}"#
        XCTAssertEqual(try SluiceConfig.parse(bytes: Array(json.utf8), environment: [:]).unpricedModels(), [], "no pricing section: no money, no warning")
    }
}

/// Budgets: `usd_per_day`, `usd_per_month` on tiers and keys.
extension ConfigTests {
    func testBudgetsAreExactDollarsOnTiersAndKeys() throws {
        let json = #"{"upstreams": [{"name": "u", "base_url": "http://h/v1", "models": ["*"]}], "tiers": {"t": {"usd_per_day": 5, "usd_per_month": 100.25}}, "keys": [{"id": "k", "secret_sha256": "\#(String(repeating: "a", count: 64))", "tier": "t", "limits": {"usd_per_day": 0.000000001}}]}"#
        let config = try SluiceConfig.parse(bytes: Array(json.utf8), environment: [:])
        XCTAssertEqual(config.tiers["t"]?.usdPerDay, USDAmount(dollars: 5))
        XCTAssertEqual(config.tiers["t"]?.usdPerMonth?.nanos, 100_250_000_000)
        let limits = ResolvedLimits(tier: config.tiers["t"], own: config.keys[0].limits)
        XCTAssertEqual(limits.usdPerDay, 1, "the key's own value wins")
        XCTAssertEqual(limits.usdPerMonth, 100_250_000_000, "the tier's, field by field")
        XCTAssertTrue(limits.hasBudget)
        XCTAssertFalse(limits.isLeasable, "a budget is decided exactly")
        XCTAssertFalse(limits.isUnlimited)
    }

    func testBudgetProblems() {
        func problems(_ json: String) -> [String] {
            do {
                _ = try SluiceConfig.parse(bytes: Array(json.utf8), environment: [:])
                return []
            } catch {
                return (error as? ConfigError)?.problems.map(\.description) ?? ["\(error)"]
            }
        }
        XCTAssertEqual(problems(#"{"upstreams": [{"name": "u", "base_url": "http://h/v1", "models": ["*"]}], "tiers": {"t": {"usd_per_day": 0, "usd_per_month": 5000000}}, "keys": []}"#), [
            "$.tiers.t.usd_per_day: must be between 0.000000001 and 4503599.627370496 USD with at most 9 digits after the point, found 0",
            "$.tiers.t.usd_per_month: must be between 0.000000001 and 4503599.627370496 USD with at most 9 digits after the point, found 5000000",
        ])
        XCTAssertEqual(problems(#"{"upstreams": [{"name": "u", "base_url": "http://h/v1", "models": ["*"]}], "tiers": {"t": {"usd_per_day": 5}}, "keys": [], "redis": {"url": "redis://127.0.0.1:6379"}}"#), [], "both stores enforce budgets")
    }
}

/// Teams: `teams.<name>` limit sets and `keys[].team`.
extension ConfigTests {
    func testTeamsAreLimitSetsKeysName() throws {
        let json = #"{"upstreams": [{"name": "u", "base_url": "http://h/v1", "models": ["*"]}], "teams": {"red": {"requests_per_minute": 60, "usd_per_day": 5}}, "tiers": {"t": {}}, "keys": [{"id": "k", "secret_sha256": "\#(String(repeating: "a", count: 64))", "tier": "t", "team": "red"}]}"#
        let config = try SluiceConfig.parse(bytes: Array(json.utf8), environment: [:])
        XCTAssertEqual(config.teams["red"]?.requestsPerMinute, 60)
        XCTAssertEqual(config.teams["red"]?.usdPerDay, USDAmount(dollars: 5))
        XCTAssertEqual(config.keys[0].team, "red")
        let key = try XCTUnwrap(KeyTable(config: config).keys.first)
        XCTAssertEqual(key.team?.id, "red")
        XCTAssertEqual(key.team?.limits.requests?.perMinute, 60)
        XCTAssertEqual(key.team?.limits.usdPerDay, 5_000_000_000)
    }

    func testTeamProblems() {
        func problems(_ extra: String) -> [String] {
            let json = #"{"upstreams": [{"name": "u", "base_url": "http://h/v1", "models": ["*"]}], "tiers": {"t": {}}"# + extra + "}"
            do {
                _ = try SluiceConfig.parse(bytes: Array(json.utf8), environment: [:])
                return []
            } catch {
                return (error as? ConfigError)?.problems.map(\.description) ?? ["\(error)"]
            }
        }
        XCTAssertEqual(problems(#", "teams": {"red": {"requests_per_minte": 1}, "b c": {}}, "keys": [{"id": "k", "secret_sha256": "\#(String(repeating: "a", count: 64))", "tier": "t", "team": "blue"}]"#), [
            #"$.teams["b c"]: team names must match [A-Za-z0-9_.-]{1,64}"#,
            #"$.teams.red.requests_per_minte: unknown field "requests_per_minte" (did you mean "requests_per_minute"?)"#,
            #"$.keys[0].team: unknown team "blue" (known: red)"#,
        ])
        // Teams are enforced by the Redis store too: a config with both loads.
        XCTAssertEqual(problems(#", "teams": {"red": {"usd_per_day": 1}}, "keys": [{"id": "k", "secret_sha256": "\#(String(repeating: "a", count: 64))", "tier": "t", "team": "red"}], "redis": {"url": "redis://127.0.0.1:6379"}"#), [])
    }
}

extension ConfigTests {
    func testBudgetWithoutAnyPriceIsAWarning() throws {
        let json = #"{"upstreams": [{"name": "u", "base_url": "http://h/v1", "models": ["*"]}], "tiers": {"t": {"usd_per_month": 5}}, "keys": []}"#
        let config = try SluiceConfig.parse(bytes: Array(json.utf8), environment: [:])
        XCTAssertEqual(config.quotaAndBurstFindings().map(\.description), [
            "warning: $.tiers.t.usd_per_month: no model has a price (pricing.models): every request of a key with this budget is refused",
        ])
        let priced = #"{"upstreams": [{"name": "u", "base_url": "http://h/v1", "models": ["*"]}], "tiers": {"t": {"usd_per_month": 5}}, "keys": [], "pricing": {"models": {"*": {"input_per_mtok": 1, "output_per_mtok": 1}}}}"#
        XCTAssertEqual(try SluiceConfig.parse(bytes: Array(priced.utf8), environment: [:]).quotaAndBurstFindings(), [])
    }

    /// A team's keys share one month of tokens: different plans among them, or a monthly fee named by
    /// several of them, are warnings; one key with the plan (the others none) is the intended shape.
    func testTeamKeysWithDifferentOrRepeatedPlansAreWarnings() throws {
        func config(_ plans: [String?]) throws -> SluiceConfig {
            let hash = String(repeating: "a", count: 64)
            let keys = plans.enumerated().map { index, plan in
                #"{"id": "k\#(index)", "secret_sha256": "\#(hash.dropLast(1))\#(index)", "tier": "t", "team": "squad""#
                    + (plan.map { #", "plan": "\#($0)""# } ?? "") + "}"
            }
            let json = #"{"upstreams": [{"name": "u", "base_url": "http://h/v1", "models": ["gpt-4o-mini"]}], "tiers": {"t": {}}, "teams": {"squad": {}}, "keys": ["#
                + keys.joined(separator: ",") + #"], "pricing": {"models": {"gpt-4o-mini": {"input_per_mtok": 1, "output_per_mtok": 1}}, "plans": {"#
                + #""gold": {"monthly_fee": 20, "included_tokens": 1000}, "free": {"monthly_fee": 0, "included_tokens": 10}}}}"#
            return try SluiceConfig.parse(bytes: Array(json.utf8), environment: [:])
        }
        XCTAssertEqual(try config(["gold", "free"]).teamPlanFindings().map(\.description), [
            #"warning: $.keys[0].plan: the keys of team "squad" name different plans ("free", "gold"): they share one month of tokens, and each is priced under its own plan at the team's position"#,
        ])
        XCTAssertEqual(try config(["gold", nil, "gold"]).teamPlanFindings().map(\.description), [
            #"warning: $.keys[2].plan: 2 keys of team "squad" name plan "gold": the team shares one allowance of included tokens, but sluice usage lists the monthly fee once per key; name the plan on one key"#,
        ])
        XCTAssertEqual(try config(["gold", nil, nil]).teamPlanFindings(), [], "one key pays the team's fee")
        XCTAssertEqual(try config(["free", "free"]).teamPlanFindings(), [], "no fee: nothing is listed twice")
        XCTAssertEqual(try config([nil, nil]).teamPlanFindings(), [])
    }
}
