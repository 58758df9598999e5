import NIOCore
import NIOEmbedded
import NIOHTTP1
import SluiceCore
import SluiceRedis
import SluiceUpstream
import XCTest
@testable import SluiceServer

/// The metrics as a scrape sees them: only on the admin listener, every family with HELP text,
/// label values snake_case, the contract's families recorded where the pipeline knows the values.
final class GatewayMetricsTests: XCTestCase {
    private var harness: PipelineHarness!

    override func setUp() async throws {
        harness = try PipelineHarness()
    }

    private func chat(stream: Bool = false) -> String {
        #"{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Hello!"}],"max_tokens":10"# + (stream ? #","stream":true"# : "") + "}"
    }

    /// One request to the admin listener's handler.
    private func admin(_ path: String, method: HTTPMethod = .GET) async throws -> CapturedResponse {
        let channel = NIOAsyncTestingChannel()
        try await channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1))
        let request = HTTPRequest(head: HTTPRequestHead(version: .http1_1, method: method, uri: path), body: ByteBuffer())
        let writer = ResponseWriter(channel: channel, keepAlive: true, bodyless: method == .HEAD)
        await AdminHandler(gateway: harness.gateway).handle(request, writer: writer)
        var captured = CapturedResponse(requestMethod: method)
        while let bytes = try await channel.readOutbound(as: ByteBuffer.self) { try captured.take(bytes) }
        return captured
    }

    func testPublicPortAnswers404ForMetricsAndTheAdminListenerServesThem() async throws {
        let public404 = try await harness.send(.GET, path: "/metrics", body: "", secret: nil)
        XCTAssertEqual(public404.status, 404)
        XCTAssertTrue(public404.body.contains(#""type":"invalid_request_error""#), public404.body)
        let scrape = try await admin("/metrics")
        XCTAssertEqual(scrape.status, 200)
        XCTAssertTrue(scrape.headers.first(name: "content-type")?.hasPrefix("text/plain; version=0.0.4") ?? false)
        XCTAssertTrue(scrape.body.contains("sluice_ready 1"), scrape.body)
        let health = try await admin("/healthz"), ready = try await admin("/readyz")
        let notAdmin = try await admin("/v1/models"), posted = try await admin("/metrics", method: .POST)
        XCTAssertEqual([health.status, ready.status, notAdmin.status, posted.status], [200, 200, 404, 405])
        harness.gateway.beginDraining()
        let draining = try await admin("/readyz"), drainingScrape = try await admin("/metrics")
        XCTAssertEqual(draining.status, 503)
        XCTAssertTrue(drainingScrape.body.contains("sluice_ready 0"), drainingScrape.body)
    }

    func testEveryFamilyHasHelpAndATypeAndLabelValuesAreSnakeCase() async throws {
        harness.upstream.script(.ok(completionTokens: 3), .stream(events: ["Hello", " world"]), .fail(.connectTimeout), .ok(status: 503, body: "{}"), .ok(), .ok())
        _ = try await harness.send(body: chat())
        _ = try await harness.send(body: chat(stream: true))
        _ = try await harness.send(body: chat())
        _ = try await harness.send(body: chat())
        for _ in 0..<3 { _ = try await harness.send(body: chat(), secret: GatewayPipelineTests.smallSecret) }
        let text = try await admin("/metrics").body
        let lines = text.split(separator: "\n").map(String.init)
        let typed = Set(lines.filter { $0.hasPrefix("# TYPE ") }.map { $0.split(separator: " ")[2] })
        let helped = Set(lines.filter { $0.hasPrefix("# HELP ") }.map { $0.split(separator: " ")[2] })
        XCTAssertFalse(typed.isEmpty)
        XCTAssertEqual(typed, helped, "every family has HELP text")
        for family in MetricFamily.allCases where ![.limiterAdmissions, .limiterCalls, .configInfo, .limiterMode, .implausibleUsage, .limiterCallFailures, .modelFallbacks, .spend, .spendUnknown].contains(family) {
            XCTAssertTrue(typed.contains(Substring(family.name)), "\(family.name) missing")
        }
        for name in ["process_resident_memory_bytes", "process_cpu_seconds_total", "process_open_fds", "process_max_fds", "process_start_time_seconds"] {
            XCTAssertTrue(typed.contains(Substring(name)), "\(name) missing")
        }
        // The words the dashboard and the alerts match on.
        XCTAssertTrue(text.contains(#"sluice_upstream_errors_total{upstream="scripted",kind="timeout"} 1"#), text)
        XCTAssertTrue(text.contains(#"sluice_upstream_errors_total{upstream="scripted",kind="http_5xx"} 1"#), text)
        XCTAssertTrue(text.contains(#"sluice_upstream_request_duration_seconds_count{upstream="scripted",outcome="ok"} 4"#), text)
        XCTAssertTrue(text.contains(#"sluice_upstream_time_to_first_byte_seconds_count{upstream="scripted"} 5"#), text)
        XCTAssertTrue(text.contains(#"sluice_upstream_responses_total{upstream="scripted",http_version="1.1"} 5"#), text)
        XCTAssertTrue(text.contains(#"sluice_rate_limited_total{limit="requests",key="small"} 1"#), text)
        XCTAssertTrue(text.contains(#"sluice_key_remaining{key="small",limit="requests"} 0"#), text)
        XCTAssertFalse(text.contains(#"sluice_key_remaining{key="main""#), "keys opt in")
        XCTAssertTrue(text.contains(#"sluice_added_latency_seconds_count{route="/v1/chat/completions"} 7"#), text)
        XCTAssertTrue(text.contains(#"gen_ai_client_token_usage_count{gen_ai_operation_name="chat",gen_ai_request_model="gpt-4o-mini",gen_ai_token_type="output"} 4"#), text)
        XCTAssertTrue(text.contains(#"gen_ai_server_time_to_first_token_seconds_count{gen_ai_operation_name="chat",gen_ai_request_model="gpt-4o-mini"} 1"#), text)
        XCTAssertTrue(text.contains(#"sluice_upstream_circuit_open{upstream="scripted"} 0"#), text)
        XCTAssertTrue(text.contains(#"sluice_upstream_queued_requests{upstream="scripted"} 0"#), text)
        XCTAssertTrue(text.contains(#"sluice_upstream_queue_wait_seconds_count{upstream="scripted"} "#), text)
        // Every value of the enumerated labels is a snake_case word.
        let snake = try Regex(#"^[a-z0-9]+(_[a-z0-9]+)*$"#)
        let labelValue = try Regex(#"(kind|outcome|limit|reason|mode|result|path|gen_ai_token_type|gen_ai_operation_name)="([^"]*)""#)
        for line in lines where !line.hasPrefix("#") {
            for match in line.matches(of: labelValue) {
                let value = String(match.output[2].substring ?? "")
                XCTAssertNotNil(value.wholeMatch(of: snake), "\(line)")
            }
        }
    }

    func testEnumeratedLabelValuesAreSnakeCase() throws {
        let snake = try Regex(#"^[a-z0-9]+(_[a-z0-9]+)*$"#)
        let values = RateLimitKind.allCases.map(\.metricLabel) + UpstreamOutcome.allCases.map(\.rawValue)
            + LimiterCallFailure.allCases.map(\.rawValue) + OpenAIEndpoint.allCases.map(\.genAIOperationName)
        for value in values { XCTAssertNotNil(value.wholeMatch(of: snake), value) }
        XCTAssertEqual(RateLimitKind.dailyTokens.metricLabel, "tokens_per_day")
        XCTAssertEqual(UpstreamOutcome(.connectFailed), .connectFailed)
        XCTAssertEqual(UpstreamOutcome(.firstByteTimeout).rawValue, "timeout")
        XCTAssertEqual(UpstreamOutcome(.stallTimeout).rawValue, "stalled")
        XCTAssertEqual(UpstreamOutcome(status: 429).rawValue, "http_429")
        XCTAssertEqual(UpstreamOutcome(status: 404).rawValue, "http_4xx")
        XCTAssertEqual(UpstreamOutcome(status: 502).rawValue, "http_5xx")
        XCTAssertEqual(LimiterCallFailure(.timedOut).rawValue, "timeout")
        XCTAssertEqual(LimiterCallFailure(.connectionLost("reset")).rawValue, "connection_lost")
        XCTAssertEqual(LimiterCallFailure(.notConnected("down")).rawValue, "not_connected")
        XCTAssertEqual(LimiterCallFailure(.server("ERR")).rawValue, "server_error")
    }

    func testLimiterCallsAreTimedAndFailuresCountedByReason() {
        let metrics = GatewayMetrics(processMetrics: false)
        metrics.limiterCall(micros: 1_500, failure: nil)
        metrics.limiterCall(micros: 250_000, failure: .timeout)
        let text = String(decoding: metrics.exposition(), as: UTF8.self)
        XCTAssertTrue(text.contains("sluice_limiter_call_duration_seconds_count 2"), text)
        XCTAssertTrue(text.contains(#"sluice_limiter_call_failures_total{reason="timeout"} 1"#), text)
        XCTAssertTrue(text.contains(#"sluice_build_info{version="unknown"} 1"#), text)
    }

    /// Spend in USD per key (keys that opted in to metrics; the others summed under key="") and
    /// model; requests of unknown cost counted apart.
    func testSpendIsCountedInDollarsAndUnknownCostsApart() {
        let metrics = GatewayMetrics(processMetrics: false)
        metrics.spend(keyID: "team-a", exportsMetrics: true, model: "gpt-4o-mini", cost: .known(USDAmount(nanos: 420_000)))
        metrics.spend(keyID: "team-a", exportsMetrics: true, model: "gpt-4o-mini", cost: .known(USDAmount(nanos: 80_000)))
        metrics.spend(keyID: "quiet", exportsMetrics: false, model: "gpt-4o-mini", cost: .known(USDAmount(dollars: 2)))
        metrics.spend(keyID: "team-a", exportsMetrics: true, model: "o3", cost: .unknown)
        let text = String(decoding: metrics.exposition(), as: UTF8.self)
        XCTAssertTrue(text.contains(#"sluice_spend_usd_total{key="team-a",model="gpt-4o-mini"} 0.0005"#), text)
        XCTAssertTrue(text.contains(#"sluice_spend_usd_total{key="",model="gpt-4o-mini"} 2.0"#), text)
        XCTAssertFalse(text.contains(#"key="quiet""#), "a key without metrics on is not a label value")
        XCTAssertTrue(text.contains(#"sluice_spend_unknown_requests_total{key="team-a",model="o3"} 1"#), text)
        XCTAssertFalse(text.contains(#"sluice_spend_usd_total{key="team-a",model="o3"}"#), "an unknown cost is not a cost of 0")
    }

    /// With a shared limiter every reason's series exists from the start, at 0, so that the first
    /// failures already show as a rate (a series born at its first failure has no rate for it).
    func testEveryLimiterFailureReasonStartsAtZeroWithASharedLimiter() {
        let metrics = GatewayMetrics(processMetrics: false)
        XCTAssertFalse(String(decoding: metrics.exposition(), as: UTF8.self).contains("sluice_limiter_call_failures_total{"))
        metrics.sharedLimiterConfigured()
        let text = String(decoding: metrics.exposition(), as: UTF8.self)
        for reason in LimiterCallFailure.allCases {
            XCTAssertTrue(text.contains(#"sluice_limiter_call_failures_total{reason="\#(reason.rawValue)"} 0"#), "\(reason): \(text)")
        }
    }

    // MARK: process metrics

    func testProcessMetricsParseProcFiles() throws {
        // A command name with spaces and parentheses: the fields count from the last ")".
        let stat = "4242 (sluice (x) y) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 9 0 123456 700000000 15000 18446744073709551615"
        let status = "Name:\tsluice\nVmSize:\t  683648 kB\nVmRSS:\t   62216 kB\nThreads:\t9\n"
        let limits = """
        Limit                     Soft Limit           Hard Limit           Units
        Max open files            20000                1048576              files
        """
        let parsed = try XCTUnwrap(ProcessMetrics.parse(stat: stat, status: status, bootTime: 1_700_000_000, limits: limits, openFDs: 31, ticksPerSecond: 100))
        XCTAssertEqual(parsed.cpuSeconds, 3.0, accuracy: 1e-9)
        XCTAssertEqual(parsed.startTimeSeconds, 1_700_001_234.56, accuracy: 1e-6)
        XCTAssertEqual(parsed.residentMemoryBytes, 62216 * 1024)
        XCTAssertEqual(parsed.virtualMemoryBytes, 683_648 * 1024)
        XCTAssertEqual(parsed.openFDs, 31)
        XCTAssertEqual(parsed.maxFDs, 20000)
        XCTAssertEqual(ProcessMetrics.bootTime(procStat: "cpu 1 2 3\nbtime 1700000000\nprocesses 5\n"), 1_700_000_000)
        XCTAssertNil(ProcessMetrics.maxOpenFiles(limits: "Max open files            unlimited            unlimited            files"))
        let text = parsed.exposition()
        XCTAssertTrue(text.contains("# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 3\n"), text)
        XCTAssertTrue(text.contains("process_resident_memory_bytes 63709184\n"), text)
        XCTAssertTrue(text.contains("# HELP process_open_fds "), text)
    }

    func testProcessMetricsOfThisProcess() throws {
        #if os(Linux)
        let own = try XCTUnwrap(ProcessMetrics.read())
        XCTAssertGreaterThan(own.residentMemoryBytes, 1_000_000)
        XCTAssertGreaterThan(own.openFDs, 2)
        XCTAssertGreaterThan(own.startTimeSeconds, 1_600_000_000)
        #endif
    }
}
