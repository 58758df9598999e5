import XCTest
@testable import SluiceCore

/// `keys[].previous_response_allowance_tokens`: what a Responses request continuing a stored
/// conversation reserves on top of Sluice's count.
final class ConfigResponsesTests: XCTestCase {
    private func parse(_ key: String) throws -> SluiceConfig {
        let json = #"{"upstreams": [{"name": "u", "base_url": "http://h/v1", "models": ["*"]}], "tiers": {"t": {"requests_per_minute": 10}}, "keys": [{"id": "k", "secret_sha256": "\#(String(repeating: "a", count: 64))", "tier": "t""# + key + "}]}"
        return try SluiceConfig.parse(bytes: Array(json.utf8), environment: [:])
    }

    private func problems(_ key: String) -> [String] {
        do {
            _ = try parse(key)
            return []
        } catch {
            return (error as? ConfigError)?.problems.map(\.description) ?? ["\(error)"]
        }
    }

    func testDefaultAndExplicitAllowance() throws {
        XCTAssertEqual(try parse("").keys[0].previousResponseAllowanceTokens, 4096)
        XCTAssertEqual(try parse(#", "previous_response_allowance_tokens": 0"#).keys[0].previousResponseAllowanceTokens, 0)
        let config = try parse(#", "previous_response_allowance_tokens": 20000"#)
        XCTAssertEqual(config.keys[0].previousResponseAllowanceTokens, 20000)
        XCTAssertEqual(KeyTable(config: config).keys.first?.previousResponseAllowanceTokens, 20000)
    }

    func testInvalidAllowanceIsReported() {
        XCTAssertEqual(problems(#", "previous_response_allowance_tokens": -1"#).count, 1)
        XCTAssertTrue(problems(#", "previous_response_allowance_tokens": -1"#).first?.contains("$.keys[0].previous_response_allowance_tokens") ?? false)
        XCTAssertEqual(problems(#", "previous_response_allowance_tokens": "lots""#).count, 1)
    }
}
