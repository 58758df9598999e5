import Foundation
import XCTest
@testable import SluiceCore

/// One fixture per bad-config case (Fixtures/config/<case>.json), each checked for the exact
/// problems it must report, plus the valid fixtures' parsed values.
final class ConfigTests: XCTestCase {
    static let fixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/config")
    static let environment = ["MOCK_API_KEY": "upstream-secret-value"]

    func load(_ name: String, environment: [String: String] = ConfigTests.environment) throws -> SluiceConfig {
        try SluiceConfig.load(path: Self.fixtures.appendingPathComponent("\(name).json").path, environment: environment)
    }

    /// The problems of fixture `name`, as "path: message" lines.
    func problems(_ name: String, file: StaticString = #filePath, line: UInt = #line) -> [String] {
        do {
            _ = try load(name)
            XCTFail("\(name).json was accepted", file: file, line: line)
            return []
        } catch let error as ConfigError {
            return error.problems.map(\.description)
        } catch {
            XCTFail("unexpected error \(error)", file: file, line: line)
            return []
        }
    }

    // MARK: valid

    func testValidConfigParsesEveryField() throws {
        let config = try load("valid")
        XCTAssertEqual(config.server.host, "0.0.0.0")
        XCTAssertEqual(config.server.port, 8081)
        XCTAssertEqual(config.server.maxBodyBytes, 1_048_576)
        XCTAssertEqual(config.server.eventLoopThreads, 2)
        XCTAssertEqual(config.server.upstreamThreads, 3)
        XCTAssertFalse(config.server.watchConfig)
        XCTAssertEqual(config.server.headerTimeoutMs, ServerConfig.defaultHeaderTimeoutMs)
        XCTAssertEqual(config.tokenizer.directory, "/opt/rank-files")
        XCTAssertEqual(config.tokenizer.modelEncodings, ["my-model": "cl100k_base"])
        XCTAssertNil(config.tokenizer.maxPromptBytes)

        XCTAssertEqual(config.upstreams.map(\.name), ["mock", "other"])
        let mock = config.upstreams[0]
        XCTAssertEqual(mock.baseURL, "http://127.0.0.1:9000/v1", "trailing slash removed")
        XCTAssertEqual(mock.apiKey?.revealed, "upstream-secret-value")
        XCTAssertEqual(mock.apiKeyEnvironmentVariable, "MOCK_API_KEY")
        XCTAssertEqual(mock.maxConnections, 8)
        XCTAssertEqual(mock.queueTimeoutMs, 2500)
        XCTAssertEqual(config.upstreams[1].queueTimeoutMs, UpstreamConfig.defaultQueueTimeoutMs)
        XCTAssertEqual(config.upstreams.map(\.httpVersion), [.h2c, .http2])
        XCTAssertEqual(mock.connectTimeoutMs, UpstreamConfig.defaultConnectTimeoutMs)
        XCTAssertEqual(mock.models, [.exact("gpt-4o-mini"), .exact("gpt-4o"), .prefix("gpt-4.1")])
        XCTAssertTrue(mock.serves(model: "gpt-4.1-nano"))
        XCTAssertTrue(mock.serves(model: "gpt-4o"))
        XCTAssertFalse(mock.serves(model: "gpt-4o-2024"))
        XCTAssertNil(config.upstreams[1].apiKey)
        XCTAssertEqual(config.upstream(serving: "my-model")?.name, "other")
        XCTAssertNil(config.upstream(serving: "claude"))

        XCTAssertEqual(config.tiers["standard"], LimitSet(requestsPerMinute: 600, tokensPerMinute: 200_000, maxConcurrentRequests: 20))
        XCTAssertEqual(config.tiers["small"], LimitSet(requestsPerMinute: 60, tokensPerMinute: 10_000, tokensBurst: 5_000))
        XCTAssertEqual(config.keys.map(\.id), ["demo", "small.team-1"])
        XCTAssertEqual(config.keys[0].defaultOutputTokens, KeyConfig.defaultDefaultOutputTokens)
        XCTAssertNil(config.keys[0].models)
        XCTAssertEqual(config.keys[1].defaultOutputTokens, 256)
        XCTAssertEqual(config.keys[1].limits, LimitSet(tokensPerMinute: 20_000, outputTokensPerMinute: 3_000))
        XCTAssertNil(config.redis)
    }

    func testRedisSectionParses() throws {
        let redis = try XCTUnwrap(try load("valid_redis").redis)
        XCTAssertEqual(redis.host, "redis.internal")
        XCTAssertEqual(redis.port, 6380)
        XCTAssertEqual(redis.database, 2)
        XCTAssertNil(redis.username)
        XCTAssertEqual(redis.password?.revealed, "s3cr@t", "percent-escapes decoded")
        XCTAssertEqual(redis.onFailure, .closed)
        XCTAssertEqual(redis.fallbackNodeCount, 4)
        XCTAssertEqual(redis.redactedURL, "redis://:<redacted>@redis.internal:6380/2")
    }

    func testUpstreamThreadsDefaultToAutomatic() throws {
        let server = try load("valid_redis").server
        XCTAssertEqual(server.upstreamThreads, 0, "absent: the engine picks half the cores")
    }

    func testTokenizerDirectoryEnvironmentOverride() throws {
        var environment = Self.environment
        environment["SLUICE_TOKENIZER_DIR"] = "/srv/tok"
        XCTAssertEqual(try load("valid", environment: environment).tokenizer.directory, "/srv/tok")
    }

    func testMinimalConfigTakesDefaults() throws {
        let json = #"{"upstreams": [{"name": "u", "base_url": "http://h/v1", "models": ["*"]}], "keys": []}"#
        let config = try SluiceConfig.parse(bytes: Array(json.utf8), environment: [:])
        XCTAssertEqual(config.server, ServerConfig())
        XCTAssertEqual(config.server.port, 8080)
        XCTAssertEqual(config.server.maxBodyBytes, 32 * 1024 * 1024)
        XCTAssertTrue(config.server.watchConfig, "the file is watched unless turned off")
        XCTAssertEqual(config.tokenizer.directory, ".cache/tokenizer")
        XCTAssertTrue(config.upstreams[0].serves(model: "anything"))
        XCTAssertEqual(config.upstreams[0].maxConnections, 2048, "an upstream pool sized for thousands of streams per node")
        XCTAssertEqual(config.upstreams[0].queueTimeoutMs, 10_000)
        XCTAssertTrue(config.keys.isEmpty)
        XCTAssertTrue(config.tiers.isEmpty)
    }

    func testRedisClusterSeeds() throws {
        func parse(_ redis: String) throws -> SluiceConfig {
            let json = #"{"upstreams": [{"name": "u", "base_url": "http://h/v1", "models": ["*"]}], "keys": [], "redis": "# + redis + "}"
            return try SluiceConfig.parse(bytes: Array(json.utf8), environment: [:])
        }
        func problems(_ redis: String) -> [String] {
            do {
                _ = try parse(redis)
                return []
            } catch {
                return (error as? ConfigError)?.problems.map(\.description) ?? ["\(error)"]
            }
        }
        let redis = try XCTUnwrap(try parse(#"{"cluster_nodes": ["redis://app:pw@10.0.0.1:7000", "redis://app:pw@10.0.0.2:7000"], "on_failure": "closed"}"#).redis)
        XCTAssertEqual(redis.clusterNodes.map { "\($0.host):\($0.port)" }, ["10.0.0.1:7000", "10.0.0.2:7000"])
        XCTAssertEqual(redis.host, "10.0.0.1", "the first seed stands for the cluster")
        XCTAssertEqual(redis.clusterNodes[1].username, "app")
        XCTAssertEqual(redis.onFailure, .closed)
        XCTAssertEqual(redis.redactedTarget, "cluster redis://app:<redacted>@10.0.0.1:7000/0,redis://app:<redacted>@10.0.0.2:7000/0")

        XCTAssertEqual(problems(#"{"url": "redis://h", "cluster_nodes": ["redis://h:7000"]}"#),
                       ["$.redis.url: give either url (one Redis) or cluster_nodes (a Redis Cluster), not both"])
        XCTAssertEqual(problems(#"{"cluster_nodes": []}"#),
                       ["$.redis.cluster_nodes: list 1 to 64 seed URLs (any nodes of the cluster; Sluice finds the rest), found 0"])
        XCTAssertEqual(problems(#"{"cluster_nodes": ["redis://h:7000/1"]}"#),
                       ["$.redis.cluster_nodes[0]: a Redis Cluster has only database 0; remove /1"])
        XCTAssertEqual(problems(#"{"cluster_nodes": ["redis://a:1@h:7000", "redis://b:2@h:7001"]}"#),
                       ["$.redis.cluster_nodes[1]: every seed must use the same scheme and credentials as the first (they are one cluster)"])
        XCTAssertEqual(problems(#"{"cluster_nodes": ["redis://h:7000", "redis://h:7000"]}"#), ["$.redis.cluster_nodes[1]: listed twice"])
        XCTAssertEqual(problems(#"{"cluster_nodes": [7000, "http://h"]}"#), [
            "$.redis.cluster_nodes[0]: expected a redis:// or rediss:// URL string, found an integer",
            "$.redis.cluster_nodes[1]: must look like redis://[[user]:password@]host[:port][/db] (rediss:// for TLS)",
        ])
        XCTAssertEqual(problems(#"{"cluster_nodes": "redis://h"}"#), ["$.redis.cluster_nodes: expected an array, found a string"])
        XCTAssertEqual(problems(#"{"cluster_nodes": ["rediss://h:7000", "redis://h:7001"]}"#),
                       ["$.redis.cluster_nodes[1]: every seed must use the same scheme and credentials as the first (they are one cluster)"])

        // TLS settings and a password from the environment reach every seed (and so every node).
        let json = #"""
        {"upstreams": [{"name": "u", "base_url": "http://h/v1", "models": ["*"]}], "keys": [],
         "redis": {"cluster_nodes": ["rediss://app@h1:7000", "rediss://app@h2:7000"], "password_env": "REDIS_PW",
                   "tls": {"server_name": "redis.internal", "verify": false}}}
        """#
        let secured = try XCTUnwrap(try SluiceConfig.parse(bytes: Array(json.utf8), environment: ["REDIS_PW": "s3cret"]).redis)
        for seed in secured.clusterNodes {
            XCTAssertEqual(seed.password?.revealed, "s3cret")
            XCTAssertEqual(seed.username, "app")
            XCTAssertEqual(seed.tls?.serverName, "redis.internal")
            XCTAssertEqual(seed.tls?.verifyCertificate, false)
        }
    }

    func testLogFormat() throws {
        func parse(_ log: String) throws -> SluiceConfig {
            let json = #"{"upstreams": [{"name": "u", "base_url": "http://h/v1", "models": ["*"]}], "keys": [], "log": "# + log + "}"
            return try SluiceConfig.parse(bytes: Array(json.utf8), environment: [:])
        }
        XCTAssertEqual(try parse(#"{"format": "json"}"#).log.format, .json)
        XCTAssertEqual(try parse(#"{}"#).log.format, .text)
        XCTAssertEqual(try parse("null").log.format, .text)
        XCTAssertThrowsError(try parse(#"{"format": "yaml"}"#)) { error in
            XCTAssertEqual((error as? ConfigError)?.problems.map(\.description), [#"$.log.format: unknown log format "yaml" (known: text, json)"#])
        }
        XCTAssertThrowsError(try parse(#"{"level": "debug"}"#))
        var changed = try parse(#"{"format": "json"}"#)
        XCTAssertEqual(changed.sectionsNeedingRestart(running: try parse("{}")), ["log"])
        changed.log.format = .text
        XCTAssertEqual(changed.sectionsNeedingRestart(running: try parse("{}")), [])
    }

    func testLeaseModeAndUsageStream() throws {
        let json = #"""
        {"upstreams": [{"name": "u", "base_url": "http://h/v1", "models": ["*"]}],
         "redis": {"url": "redis://127.0.0.1:6379", "usage_stream": true},
         "tiers": {"hot": {"requests_per_minute": 1000, "lease": "always"}, "plain": {"requests_per_minute": 10}},
         "keys": []}
        """#
        let config = try SluiceConfig.parse(bytes: Array(json.utf8), environment: [:])
        XCTAssertEqual(config.tiers["hot"]?.lease, .always)
        XCTAssertNil(config.tiers["plain"]?.lease)
        XCTAssertEqual(ResolvedLimits(tier: config.tiers["plain"], own: nil).lease, .auto, "auto unless set")
        XCTAssertEqual(ResolvedLimits(tier: config.tiers["hot"], own: LimitSet(lease: .off)).lease, .off, "a key overrides its tier")
        XCTAssertEqual(config.redis?.usageStream, true)

        let wrong = #"{"upstreams": [{"name": "u", "base_url": "http://h/v1", "models": ["*"]}], "tiers": {"t": {"lease": "sometimes"}}, "keys": []}"#
        XCTAssertThrowsError(try SluiceConfig.parse(bytes: Array(wrong.utf8), environment: [:])) { error in
            XCTAssertEqual((error as? ConfigError)?.problems.map(\.description),
                           [#"$.tiers.t.lease: unknown lease mode "sometimes" (known: "auto", "off", "always")"#])
        }
    }

    func testSecretNeverPrints() throws {
        let config = try load("valid")
        let key = try XCTUnwrap(config.upstreams[0].apiKey)
        XCTAssertEqual("\(key)", "<redacted>")
        XCTAssertEqual(String(reflecting: key), "<redacted>")
        var dumped = ""
        dump(config.upstreams[0], to: &dumped)
        XCTAssertFalse(dumped.contains("upstream-secret-value"), dumped)
        XCTAssertFalse("\(config.upstreams[0])".contains("upstream-secret-value"))
    }

    // MARK: one fixture per bad case

    func testDuplicateKeyID() {
        XCTAssertEqual(problems("duplicate_key_id"), [#"$.keys[2].id: duplicate key id "demo" (also at $.keys[0].id)"#])
    }

    func testDuplicateSecretHash() {
        XCTAssertEqual(problems("duplicate_secret_hash"), ["$.keys[1].secret_sha256: duplicate secret hash (also at $.keys[0].secret_sha256): two keys would share one secret"])
    }

    func testUnknownTier() {
        XCTAssertEqual(problems("unknown_tier"), [#"$.keys[1].tier: unknown tier "gold" (known: small, standard)"#])
    }

    func testMisspelledField() {
        XCTAssertEqual(problems("misspelled_field"), [#"$.tiers.standard.request_per_minute: unknown field "request_per_minute" (did you mean "requests_per_minute"?)"#])
    }

    func testWrongTypes() {
        XCTAssertEqual(problems("wrong_type"), [
            "$.server.port: expected an integer, found a string",
            "$.upstreams[0].models: expected an array, found a string",
            "$.keys[0].default_output_tokens: expected an integer, found 1.5",
        ])
    }

    func testZeroAndNegativeLimits() {
        XCTAssertEqual(problems("non_positive_limit"), [
            "$.tiers.small.requests_per_minute: must be between 1 and 150000000, found -5 (leave it out or use null for no limit)",
            "$.tiers.standard.tokens_per_minute: must be between 1 and 150000000, found 0 (leave it out or use null for no limit)",
        ])
    }

    func testLimitAboveMaximum() {
        XCTAssertEqual(problems("limit_too_large"), ["$.tiers.standard.tokens_per_minute: must be between 1 and 150000000, found 150000001"])
    }

    func testPortOutOfRange() {
        XCTAssertEqual(problems("port_out_of_range"), ["$.server.port: must be between 1 and 65535, found 70000"])
    }

    func testUpstreamThreadsOutOfRange() {
        XCTAssertEqual(problems("upstream_threads_out_of_range"), ["$.server.upstream_threads: must be between 0 and 256, found 257"])
    }

    func testQueueTimeoutAndMaxConnectionsRanges() {
        func problems(_ upstreamFields: String) -> [String] {
            let json = #"{"upstreams": [{"name": "u", "base_url": "http://h/v1", "models": ["*"], "# + upstreamFields + #"}], "keys": []}"#
            do {
                _ = try SluiceConfig.parse(bytes: Array(json.utf8), environment: [:])
                return []
            } catch let error as ConfigError {
                return error.problems.map(\.description)
            } catch {
                return ["\(error)"]
            }
        }
        XCTAssertEqual(problems(#""queue_timeout_ms": -1"#), ["$.upstreams[0].queue_timeout_ms: must be between 0 and 3600000, found -1"])
        XCTAssertEqual(problems(#""queue_timeout_ms": 0, "max_connections": 1"#), [])
        XCTAssertEqual(problems(#""max_connections": 0"#), ["$.upstreams[0].max_connections: must be between 1 and 100000, found 0"])
    }

    /// `problems` of an inline document (no fixture file): `upstreams` and `routing` as JSON text.
    private func documentProblems(upstreams: String, routing: String? = nil) -> [String] {
        let json = #"{"upstreams": "# + upstreams + (routing.map { #", "routing": "# + $0 } ?? "") + #", "keys": []}"#
        do {
            _ = try SluiceConfig.parse(bytes: Array(json.utf8), environment: [:])
            return []
        } catch {
            return error.problems.map(\.description)
        }
    }

    func testDeploymentFields() throws {
        let json = #"""
            {"upstreams": [
              {"name": "azure", "base_url": "https://x.openai.azure.com/openai/deployments/d", "models": ["gpt-4o"], "weight": 5,
               "model_map": {"gpt-4o": "prod-4o"}, "api_key_header": "API-Key", "query_params": {"api-version": "2024-10-21"},
               "circuit_breaker": {"failure_threshold": 2, "open_ms": 1500}},
              {"name": "openai", "base_url": "https://api.openai.com/v1", "models": ["gpt-4o", "gpt-4o-mini"]}],
             "routing": {"max_attempts": 4, "retry_budget_ms": 5000, "backoff_initial_ms": 100, "backoff_max_ms": 800, "max_retry_after_ms": 2000,
                         "fallbacks": {"gpt-4o": ["gpt-4o-mini"]}, "context_window_fallbacks": {"gpt-4o-mini": ["gpt-4o"]}},
             "keys": []}
            """#
        let config = try SluiceConfig.parse(bytes: Array(json.utf8), environment: [:])
        let azure = config.upstreams[0], openai = config.upstreams[1]
        XCTAssertEqual(azure.weight, 5)
        XCTAssertEqual(azure.upstreamModel(for: "gpt-4o"), "prod-4o")
        XCTAssertEqual(azure.apiKeyHeader, "api-key", "header names are case-insensitive: kept lowercased")
        XCTAssertEqual(azure.queryParameters.map(\.name), ["api-version"])
        XCTAssertEqual(azure.queryParameters.map(\.value), ["2024-10-21"])
        XCTAssertEqual(azure.circuitBreaker, CircuitBreaker.Configuration(failureThreshold: 2, openMillis: 1500))
        XCTAssertEqual(openai.weight, 1)
        XCTAssertEqual(openai.apiKeyHeader, "authorization")
        XCTAssertEqual(openai.upstreamModel(for: "gpt-4o"), "gpt-4o")
        XCTAssertEqual(openai.circuitBreaker, CircuitBreaker.Configuration())
        XCTAssertEqual(config.routing.maxAttempts, 4)
        XCTAssertEqual(config.routing.retryBudgetMs, 5000)
        XCTAssertEqual(config.routing.backoffInitialMs, 100)
        XCTAssertEqual(config.routing.backoffMaxMs, 800)
        XCTAssertEqual(config.routing.maxRetryAfterMs, 2000)
        XCTAssertEqual(config.routing.fallbacks, ["gpt-4o": ["gpt-4o-mini"]])
        XCTAssertEqual(config.routing.contextWindowFallbacks, ["gpt-4o-mini": ["gpt-4o"]])
        let defaults = RoutingConfig()
        XCTAssertEqual([defaults.maxAttempts, defaults.retryBudgetMs, defaults.maxRetryAfterMs], [3, 30_000, 10_000])
    }

    func testBadDeploymentFields() {
        let base = #""name": "u", "base_url": "http://h/v1", "models": ["gpt-4o"]"#
        XCTAssertEqual(documentProblems(upstreams: "[{\(base), \"weight\": 0}]"), ["$.upstreams[0].weight: must be between 1 and 1000, found 0"])
        XCTAssertEqual(documentProblems(upstreams: "[{\(base), \"model_map\": {\"gpt-*\": \"x\", \"gpt-4o\": 3}}]"), [
            #"$.upstreams[0].model_map["gpt-*"]: the public name must be an exact model name (not a prefix), 1 to 256 bytes"#,
            #"$.upstreams[0].model_map.gpt-4o: expected the deployment's model name (a string), found an integer"#,
        ])
        XCTAssertEqual(documentProblems(upstreams: "[{\(base), \"api_key_header\": \"content-type\"}]"), [
            #"$.upstreams[0].api_key_header: "content-type" is a header Sluice writes itself; name the one the provider reads the key from ("authorization" sends Bearer, "api-key" for Azure)"#,
        ])
        XCTAssertEqual(documentProblems(upstreams: "[{\(base), \"api_key_header\": \"api key\"}]"), [
            #"$.upstreams[0].api_key_header: expected an HTTP header name (letters, digits and -, at most 64 characters), e.g. "api-key""#,
        ])
        XCTAssertEqual(documentProblems(upstreams: "[{\(base), \"query_params\": {\"api-version\": 2024}}]"), [
            "$.upstreams[0].query_params.api-version: expected a string, found an integer",
        ])
        XCTAssertEqual(documentProblems(upstreams: "[{\(base), \"circuit_breaker\": {\"failure_threshold\": 0, \"open\": 5}}]"), [
            #"$.upstreams[0].circuit_breaker.open: unknown field "open" (known: failure_threshold, open_ms)"#,
            "$.upstreams[0].circuit_breaker.failure_threshold: must be between 1 and 1000, found 0",
        ])
    }

    func testDeploymentLimits() throws {
        let json = #"{"upstreams": [{"name": "tier-1", "base_url": "http://h/v1", "models": ["gpt-4o"], "limits": {"requests_per_minute": 500, "tokens_per_minute": 30000, "tokens_burst": 5000}}], "keys": []}"#
        let upstream = try SluiceConfig.parse(bytes: Array(json.utf8), environment: [:]).upstreams[0]
        XCTAssertEqual(upstream.limits, LimitSet(requestsPerMinute: 500, tokensPerMinute: 30000, tokensBurst: 5000))
        XCTAssertEqual(upstream.limiterKeyID, "upstream~tier-1")
        XCTAssertFalse(KeyConfig.isValidID(upstream.limiterKeyID), "no key can share the deployment's buckets")
        XCTAssertEqual(documentProblems(upstreams: #"[{"name": "u", "base_url": "http://h/v1", "models": ["gpt-4o"], "limits": {"tokens_per_day": 5, "max_concurrent_requests": 2, "tokens_burst": 9}}]"#), [
            "$.upstreams[0].limits.max_concurrent_requests: not a deployment limit: a provider's limits are per-minute rates (requests, tokens, input and output tokens) and their bursts",
            "$.upstreams[0].limits.tokens_per_day: not a deployment limit: a provider's limits are per-minute rates (requests, tokens, input and output tokens) and their bursts",
            "$.upstreams[0].limits.tokens_burst: a burst needs a rate: tokens_per_minute is not set",
        ])
        XCTAssertEqual(documentProblems(upstreams: #"[{"name": "my upstream", "base_url": "http://h/v1", "models": ["gpt-4o"], "limits": {"requests_per_minute": 5}}]"#), [
            "$.upstreams[0].name: an upstream with limits must have a name matching [A-Za-z0-9_.-]{1,64} (its limits are kept under it in the shared store)",
        ])
    }

    func testBadRouting() {
        let upstreams = #"[{"name": "u", "base_url": "http://h/v1", "models": ["gpt-4o", "gpt-4o-mini"]}]"#
        XCTAssertEqual(documentProblems(upstreams: upstreams, routing: #"{"max_attempts": 0, "backoff_initial_ms": 500, "backoff_max_ms": 100}"#), [
            "$.routing.max_attempts: must be between 1 and 10, found 0",
            "$.routing.backoff_max_ms: must be at least backoff_initial_ms (500)",
        ])
        XCTAssertEqual(documentProblems(upstreams: upstreams, routing: #"{"fallbacks": {"gpt-4o": ["gpt-4o", "gpt-4o-mini", "gpt-4o-mini", "claude", "gpt-*"]}}"#), [
            #"$.routing.fallbacks.gpt-4o[0]: "gpt-4o" is already tried before this fallback"#,
            #"$.routing.fallbacks.gpt-4o[2]: "gpt-4o-mini" is already tried before this fallback"#,
            #"$.routing.fallbacks.gpt-4o[3]: no upstream serves "claude": this fallback could never be tried"#,
            "$.routing.fallbacks.gpt-4o[4]: expected an exact model name (a string, not a prefix)",
        ])
        XCTAssertEqual(documentProblems(upstreams: upstreams, routing: #"{"retries": 2}"#).count, 1)
    }

    func testWatchConfigNotABoolean() {
        XCTAssertEqual(problems("watch_config_not_a_boolean"), [#"$.server.watch_config: expected true or false, found a string"#])
    }

    /// The hash a node reports is `sha256sum`'s, of the bytes behind any symlinks.
    func testConfigFileContentsHashTheFileThroughItsSymlink() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-contents-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        try Data("abc".utf8).write(to: directory.appendingPathComponent("target.json"))
        let link = directory.appendingPathComponent("sluice.json")
        try FileManager.default.createSymbolicLink(atPath: link.path, withDestinationPath: "target.json")
        let contents = try ConfigFileContents.read(path: link.path)
        XCTAssertEqual(contents.bytes, Array("abc".utf8))
        XCTAssertEqual(contents.sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        XCTAssertThrowsError(try ConfigFileContents.read(path: directory.appendingPathComponent("missing.json").path))
    }

    func testBadBaseURLs() {
        XCTAssertEqual(problems("bad_base_url"), [
            #"$.upstreams[0].base_url: must be an http:// or https:// URL with a host, found "ftp://127.0.0.1:9000/v1""#,
            #"$.upstreams[1].base_url: must be an http:// or https:// URL with a host, found "llm.example.com/v1""#,
        ])
    }

    func testInlineUpstreamSecret() {
        let found = problems("inline_upstream_secret")
        XCTAssertEqual(found, [#"$.upstreams[1].api_key: inline secrets are not allowed: put the upstream key in an environment variable and give its name in "api_key_env""#])
        XCTAssertFalse(found.joined().contains("sk-live-123"), "the secret is never echoed")
    }

    func testInlineKeySecret() {
        let found = problems("inline_key_secret")
        XCTAssertEqual(found, [#"$.keys[0].secret: the secret itself must not be in the file: put its SHA-256 in "secret_sha256" (`sluice keys new` prints both)"#])
    }

    func testBadSecretHash() {
        XCTAssertEqual(problems("bad_secret_hash"), ["$.keys[0].secret_sha256: must be the SHA-256 of the secret as 64 lowercase hex characters, found 6 characters"])
    }

    func testMissingEnvironmentVariable() {
        XCTAssertEqual(problems("missing_env_var"), ["$.upstreams[0].api_key_env: environment variable SLUICE_TEST_UNSET_VARIABLE is not set (or empty)"])
    }

    func testBadRedisURL() {
        XCTAssertEqual(problems("bad_redis_url"), ["$.redis.url: must look like redis://[[user]:password@]host[:port][/db] (rediss:// for TLS)"])
        XCTAssertEqual(problems("bad_redis_port"), [#"$.redis.url: port must be between 1 and 65535, found "99999""#])
    }

    func testUnknownEncoding() {
        XCTAssertEqual(problems("unknown_encoding"), [#"$.tokenizer.model_encodings.legacy: unknown encoding "p50k_base" (known: cl100k_base, o200k_base)"#])
    }

    func testUnknownFailurePolicy() {
        XCTAssertEqual(problems("unknown_failure_policy"), [#"$.redis.on_failure: unknown policy "retry" (known: local, open, closed)"#])
    }

    func testBurstWithoutRate() {
        XCTAssertEqual(problems("burst_without_rate"), ["$.tiers.small.input_tokens_burst: a burst needs a rate: input_tokens_per_minute is not set"])
    }

    func testKeyWithoutTierOrLimits() {
        XCTAssertEqual(problems("key_without_limits"), [#"$.keys[0]: needs "tier" or "limits" (for a key without limits, use a tier that sets none)"#])
    }

    func testBadKeyID() {
        XCTAssertEqual(problems("bad_key_id"), ["$.keys[0].id: is not a valid key id ([A-Za-z0-9_.-]{1,64}), found 9 characters (the value is not shown: it may be a secret)"])
    }

    // MARK: a secret in the wrong field is never echoed

    /// The problems of `name`, checked to contain none of `secrets`, in the form `check-config`
    /// prints and the reload logs.
    func problemsShowingNone(of secrets: [String], in name: String, file: StaticString = #filePath, line: UInt = #line) -> [String] {
        let found = problems(name, file: file, line: line)
        var printed = ""
        do { _ = try load(name) } catch { printed = "\(error)" }
        for secret in secrets {
            XCTAssertFalse(found.joined(separator: "\n").contains(secret), "\(secret) echoed: \(found)", file: file, line: line)
            XCTAssertFalse(printed.contains(secret), "\(secret) echoed: \(printed)", file: file, line: line)
        }
        return found
    }

    func testAKeyInAPIKeyEnvIsNotEchoed() {
        XCTAssertEqual(problemsShowingNone(of: ["sk-proj-abc123XYZ789pastedSecretValue0000", "abc123XYZ789"], in: "api_key_env_holds_a_secret"), [
            "$.upstreams[0].api_key_env: must name an environment variable (letters, digits and underscores, not starting with a digit, at most 128 characters); the value given looks like a secret and is not shown",
        ])
    }

    /// A key that happens to be a valid variable name is not set as one: the "not set" problem
    /// names only variables of the usual form.
    func testAKeyShapedLikeAVariableNameIsNotEchoed() {
        XCTAssertEqual(problemsShowingNone(of: ["sk_live_51HxYzAbCdEf0123456789pastedSecret", String(repeating: "a", count: 64)], in: "api_key_env_secret_shaped_name"), [
            "$.upstreams[0].api_key_env: the environment variable it names is not set (or empty); the name is not shown: it is not in the usual form (A-Z, 0-9 and _, at most 64 characters) and may be a secret",
            "$.upstreams[1].api_key_env: must name an environment variable (letters, digits and underscores, not starting with a digit, at most 128 characters); the value given looks like a secret and is not shown",
        ])
    }

    /// A key's bearer secret used as an id would be written to every log line and metric.
    func testAnIDThatIsASecretIsRefusedWithoutEchoingIt() {
        XCTAssertEqual(problemsShowingNone(of: ["sk-sluice-pastedAsTheId0123456789", "sk-sluice-otherKeysSecret0123456789"], in: "key_id_is_a_secret"), [
            "$.keys[0].id: is this key's own secret (its SHA-256 is that key's secret_sha256), and ids appear in logs and metrics: choose another id, and replace the secret, which is now in the file (the id is not shown)",
            "$.keys[1].id: is the secret of $.keys[2] (its SHA-256 is that key's secret_sha256), and ids appear in logs and metrics: choose another id, and replace the secret, which is now in the file (the id is not shown)",
        ])
    }

    func testABaseURLWithACredentialIsNotEchoed() {
        XCTAssertEqual(problemsShowingNone(of: ["sk-live-querySecret0000", "sk-live-passwordSecret0000"], in: "base_url_with_a_secret"), [
            #"$.upstreams[0].base_url: must not have a query or fragment (not shown: it may hold a key; name an environment variable in "api_key_env" instead)"#,
            "$.upstreams[1].base_url: must be an http:// or https:// URL with a host, found a value not shown here (it may hold a credential)",
        ])
    }

    func testKeyModelNotServed() {
        XCTAssertEqual(problems("model_not_served"), [#"$.keys[1].models[1]: model "gpt-5-nano" is not served by any upstream"#])
    }

    func testBadModelPattern() {
        XCTAssertEqual(problems("bad_model_pattern"), [#"$.upstreams[0].models[0]: "gpt-*-mini" is not a model name or a prefix ending in "*""#])
    }

    func testDuplicateUpstreamName() {
        XCTAssertEqual(problems("duplicate_upstream_name"), [#"$.upstreams[1].name: duplicate upstream name "mock" (also at $.upstreams[0].name)"#])
    }

    func testNoUpstreams() {
        XCTAssertEqual(problems("no_upstreams"), ["$.upstreams: at least one upstream is required"])
    }

    func testMalformedJSON() {
        XCTAssertThrowsError(try load("not_json")) { error in
            guard case .malformedJSON = error as? ConfigError else { return XCTFail("\(error)") }
        }
        XCTAssertThrowsError(try load("not_an_object")) { error in
            XCTAssertEqual(error as? ConfigError, .malformedJSON(reason: "the top level must be an object"))
        }
        XCTAssertThrowsError(try load("no_such_file")) { error in
            guard case .unreadable = error as? ConfigError else { return XCTFail("\(error)") }
        }
    }

    func testEveryProblemOfAFileIsReported() {
        XCTAssertEqual(problems("many_problems"), [
            #"$.server.idle_timeout: unknown field "idle_timeout" (did you mean "idle_timeout_ms"?)"#,
            "$.server.port: must be between 1 and 65535, found 0",
            #"$.upstreams[1].base_url: must be an http:// or https:// URL with a host, found "ftp://x""#,
            "$.tiers.standard.tokens_per_minute: must be between 1 and 150000000, found -1 (leave it out or use null for no limit)",
            #"$.keys[0].tier: unknown tier "gold" (known: small, standard)"#,
            "$.keys[1].secret_sha256: must be the SHA-256 of the secret as 64 lowercase hex characters, found 6 characters",
            #"$.keys[2].id: duplicate key id "demo" (also at $.keys[0].id)"#,
            "$.redis.url: missing host",
        ])
    }

    // MARK: pieces

    func testDidYouMeanOnlySuggestsCloseNames() {
        XCTAssertEqual(ConfigWalker.closest(to: "prot", among: ["port", "host"]), "port")
        XCTAssertNil(ConfigWalker.closest(to: "banana", among: ["port", "host"]))
        XCTAssertEqual(ConfigWalker.editDistance("kitten", "sitting"), 3)
    }

    func testModelMatcherPatterns() {
        XCTAssertEqual(ModelMatcher(pattern: "gpt-4o"), .exact("gpt-4o"))
        XCTAssertEqual(ModelMatcher(pattern: "gpt-4.1*"), .prefix("gpt-4.1"))
        XCTAssertEqual(ModelMatcher(pattern: "*"), .prefix(""))
        XCTAssertNil(ModelMatcher(pattern: ""))
        XCTAssertNil(ModelMatcher(pattern: "a*b"))
        XCTAssertNil(ModelMatcher(pattern: "a**"))
    }

    func testRedisURLForms() throws {
        let plain = try RedisURL.parse("redis://localhost").get()
        XCTAssertEqual([plain.host, "\(plain.port)", "\(plain.database)"], ["localhost", "6379", "0"])
        let acl = try RedisURL.parse("redis://app:pw@[::1]:7000/3").get()
        XCTAssertEqual(acl.host, "::1")
        XCTAssertEqual(acl.port, 7000)
        XCTAssertEqual(acl.database, 3)
        XCTAssertEqual(acl.username, "app")
        XCTAssertEqual(acl.password?.revealed, "pw")
        XCTAssertEqual(acl.redactedURL, "redis://app:<redacted>@[::1]:7000/3")
        let tls = try RedisURL.parse("rediss://app:pw@h:6380/2").get()
        XCTAssertEqual(tls.tls, RedisTLSConfig(), "rediss://: TLS with the defaults until redis.tls says otherwise")
        XCTAssertEqual([tls.host, "\(tls.port)", "\(tls.database)", tls.username], ["h", "6380", "2", "app"])
        XCTAssertEqual(tls.redactedURL, "rediss://app:<redacted>@h:6380/2")
        XCTAssertNil(acl.tls)
        let userOnly = try RedisURL.parse("redis://app@h").get()
        XCTAssertEqual(userOnly.username, "app", "a user whose password comes from password_env")
        XCTAssertNil(userOnly.password)
        XCTAssertThrowsError(try RedisURL.parse("redis:/h").get())
        XCTAssertThrowsError(try RedisURL.parse("redisss://h").get())
        XCTAssertThrowsError(try RedisURL.parse("redis://h/x").get())
        XCTAssertThrowsError(try RedisURL.parse("redis://h?timeout=1").get())
    }
}
