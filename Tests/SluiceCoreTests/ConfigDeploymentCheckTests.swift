import Foundation
import XCTest
@testable import SluiceCore

/// `check-config`'s checks beyond the format (`SluiceConfig.deploymentFindings`), one fixture per
/// case, each checked for the exact findings.
final class ConfigDeploymentCheckTests: XCTestCase {
    /// The findings of fixture `name` as printed; those about the tokenizer directory are left out
    /// unless asked for (the fixtures name directories that do not exist on this machine).
    func findings(_ name: String, tokenizer: Bool = false, environment: [String: String] = ConfigTests.environment) throws -> [String] {
        let path = ConfigTests.fixtures.appendingPathComponent("\(name).json").path
        let config = try SluiceConfig.load(path: path, environment: environment)
        return config.deploymentFindings(environment: environment)
            .filter { tokenizer || $0.problem.path != "$.tokenizer.directory" }
            .map(\.description)
    }

    func testValidConfigsHaveNoFindingsBeyondTheTokenizer() throws {
        XCTAssertEqual(try findings("valid"), [])
        XCTAssertEqual(try findings("valid_redis"), [])
        XCTAssertEqual(try findings("valid_key_expiry"), [])
    }

    func testMissingTokenizerDirectory() throws {
        XCTAssertEqual(try findings("tokenizer_directory_missing", tokenizer: true), [
            #"error: $.tokenizer.directory: directory "/nonexistent/sluice-rank-files" does not exist: serve would not start (scripts/setup fetches the rank files into .cache/tokenizer)"#,
        ])
        var environment = ConfigTests.environment
        environment["SLUICE_TOKENIZER_DIR"] = "/nonexistent/from-env"
        XCTAssertEqual(try findings("valid", tokenizer: true, environment: environment), [
            #"error: $.tokenizer.directory: directory "/nonexistent/from-env" (from SLUICE_TOKENIZER_DIR) does not exist: serve would not start (scripts/setup fetches the rank files into .cache/tokenizer)"#,
        ])
    }

    func testMissingRankFiles() throws {
        XCTAssertEqual(try findings("tokenizer_files_missing", tokenizer: true), [
            #"error: $.tokenizer.directory: rank file cl100k_base.tiktoken is missing or unreadable in "/": serve would not start"#,
            #"error: $.tokenizer.directory: rank file o200k_base.tiktoken is missing or unreadable in "/": serve would not start"#,
        ])
    }

    func testRankFilesPresent() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-check-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        try Data("x".utf8).write(to: directory.appendingPathComponent("cl100k_base.tiktoken"))
        var environment = ConfigTests.environment
        environment["SLUICE_TOKENIZER_DIR"] = directory.path
        XCTAssertEqual(try findings("valid", tokenizer: true, environment: environment), [
            #"error: $.tokenizer.directory: rank file o200k_base.tiktoken is missing or unreadable in "\#(directory.path)" (from SLUICE_TOKENIZER_DIR): serve would not start"#,
        ])
        try Data("x".utf8).write(to: directory.appendingPathComponent("o200k_base.tiktoken"))
        XCTAssertEqual(try findings("valid", tokenizer: true, environment: environment), [], "present; their content is serve's check")
    }

    func testQuotasWithoutRedisAreNotEnforced() throws {
        let message = #"not enforced: quotas need the shared Redis store (a "redis" section); the embedded limiter keeps no token quota counters (only budgets)"#
        XCTAssertEqual(try findings("quota_without_redis"), [
            "warning: $.tiers.daily.tokens_per_day: \(message)",
            "warning: $.keys[1].limits.tokens_per_month: \(message)",
        ])
    }

    func testUnusedRoutingEntries() throws {
        XCTAssertEqual(try findings("unused_routing_entries"), [
            #"warning: $.upstreams[0].model_map.claude-3: never used: upstream "primary" does not serve "claude-3" (its "models" do not match it)"#,
            #"warning: $.upstreams[2]: the same endpoint and key as $.upstreams[0] ("primary"), both serving "gpt-4o-audio*": requests spread over the two, but a retry or fallback between them reaches the same provider deployment"#,
            #"warning: $.routing.fallbacks.unknown-model: never used: no upstream serves "unknown-model", so no request for it is admitted"#,
        ])
    }

    func testBurstFarAboveItsRate() throws {
        XCTAssertEqual(try findings("burst_far_above_rate"), [
            "warning: $.tiers.small.requests_burst: requests_burst 100000 is more than 10 × requests_per_minute 120: that much may be spent at once (a burst is normally at most the per-minute value)",
            "warning: $.keys[1].limits.tokens_per_minute: tokens_burst 10000 is more than 10 × tokens_per_minute 10: that much may be spent at once (a burst is normally at most the per-minute value)",
        ])
    }

    func testSectionsNeedingRestartAreComparedWithTheRunningConfig() throws {
        let running = try SluiceConfig.load(path: ConfigTests.fixtures.appendingPathComponent("valid.json").path, environment: ConfigTests.environment)
        var next = running
        XCTAssertEqual(next.sectionsNeedingRestart(running: running), [])
        next.server.port = 9999
        next.tokenizer.directory = "/elsewhere"
        next.redis = RedisConfig(host: "redis.internal")
        next.keys = []
        XCTAssertEqual(next.sectionsNeedingRestart(running: running), ["server", "tokenizer", "redis"])
        // set back to the running values (as a second reload would): nothing needs a restart
        next.server.port = running.server.port
        next.tokenizer = running.tokenizer
        next.redis = nil
        XCTAssertEqual(next.sectionsNeedingRestart(running: running), [], "keys are applied by the reload itself")
    }
}
