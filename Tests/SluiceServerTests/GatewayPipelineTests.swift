import Foundation
import Logging
import NIOCore
import NIOEmbedded
import NIOHTTP1
import SluiceCore
import SluiceTokenizer
import SluiceUpstream
import Synchronization
import Tracing
import XCTest
@testable import SluiceServer

/// The request's walk from authenticate to settle, in process: the in-memory limiter (recording what
/// it is asked), a scripted upstream and a real `ResponseWriter` over a testing channel that captures
/// every response part. Each test checks what the client sees, what the upstream got, and what was
/// reserved and settled — exactly once for every admitted request.
final class GatewayPipelineTests: XCTestCase {
    static let secret = "sk-pipeline-test-0123456789"
    static let smallSecret = "sk-pipeline-small-0123456789"
    /// May use `gpt-4o` only.
    static let narrowSecret = "sk-pipeline-narrow-0123456789"
    /// A key with a $0.00001 (10,000 n$) daily budget.
    static let budgetSecret = "sk-pipeline-budget-0123456789"

    private var harness: PipelineHarness!

    override func setUp() async throws {
        harness = try PipelineHarness()
    }

    override func tearDown() async throws {
        // Every admitted request was settled, exactly once.
        let admitted = harness.limiter.admittedIDs
        let settled = harness.limiter.settledIDs
        XCTAssertEqual(settled.sorted(), admitted.sorted(), "each admission settled exactly once")
    }

    private func chat(_ extra: String = "", stream: Bool = false, model: String = "gpt-4o-mini", content: String = "Hello!") -> String {
        #"{"model":"\#(model)","messages":[{"role":"user","content":"\#(content)"}]"# + (stream ? #","stream":true"# : "") + extra + "}"
    }

    // MARK: refusals before admission

    func testMissingAndInvalidKeysAre401AndReachNothing() async throws {
        var response = try await harness.send(body: chat(), secret: nil)
        XCTAssertEqual(response.status, 401)
        response = try await harness.send(body: chat(), secret: "sk-not-a-key-0123456789")
        XCTAssertEqual(response.status, 401)
        XCTAssertTrue(response.body.contains("invalid_api_key"), response.body)
        XCTAssertEqual(harness.limiter.admittedIDs, [])
        XCTAssertEqual(harness.upstream.requestCount, 0)
    }

    func testMalformedBodiesAre400AndReachNothing() async throws {
        for body in [#"{"model":"gpt-4o-mini""#, #"{"messages":[]}"#, #"{"model":"gpt-4o-mini","messages":[{"role":"user"}]}"#, #"{"model":"gpt-4o-mini","messages":"hi"}"#] {
            let response = try await harness.send(body: body)
            XCTAssertEqual(response.status, 400, body)
            XCTAssertTrue(response.body.contains("\"error\""), response.body)
        }
        let notUTF8 = try await harness.send(bytes: Array(#"{"model":"gpt-4o-mini","messages":[{"role":"user","content":""#.utf8) + [0xFF, 0xFE] + Array(#""}]}"#.utf8))
        XCTAssertEqual(notUTF8.status, 400)
        XCTAssertTrue(notUTF8.body.contains("UTF-8"), notUTF8.body)
        XCTAssertEqual(harness.limiter.admittedIDs, [])
        XCTAssertEqual(harness.upstream.requestCount, 0)
    }

    func testUnknownModelIs404AndReachesNothing() async throws {
        let response = try await harness.send(body: chat(model: "no-such-model"))
        XCTAssertEqual(response.status, 404)
        XCTAssertTrue(response.body.contains("model_not_found"), response.body)
        // A model an upstream serves, but this key may not use: the same 404.
        let notAllowed = try await harness.send(body: chat(model: "gpt-4o-mini"), secret: Self.narrowSecret)
        XCTAssertEqual(notAllowed.status, 404)
        XCTAssertEqual(harness.limiter.admittedIDs, [])
        XCTAssertEqual(harness.upstream.requestCount, 0)
    }

    // MARK: admission

    func testRateLimitedRequestIs429WithHeadersAndReachesNothing() async throws {
        harness.upstream.script(.ok(), .ok())
        for _ in 0..<2 {
            let admitted = try await harness.send(body: chat(#","max_tokens":10"#), secret: Self.smallSecret)
            XCTAssertEqual(admitted.status, 200)
        }
        let refused = try await harness.send(body: chat(#","max_tokens":10"#), secret: Self.smallSecret)
        XCTAssertEqual(refused.status, 429)
        XCTAssertEqual(refused.headers.first(name: "x-ratelimit-limit-requests"), "2")
        XCTAssertEqual(refused.headers.first(name: "x-ratelimit-remaining-requests"), "0")
        XCTAssertNotNil(refused.headers.first(name: "retry-after-ms"))
        XCTAssertEqual(harness.upstream.requestCount, 2)
        XCTAssertEqual(harness.limiter.admittedIDs.count, 2)
    }

    func testPromptThatCanNeverFitIs429WithoutRetry() async throws {
        let huge = String(repeating: "lorem ipsum ", count: 2_000)
        let refused = try await harness.send(body: chat(content: huge), secret: Self.smallSecret)
        XCTAssertEqual(refused.status, 429)
        XCTAssertEqual(refused.headers.first(name: "x-should-retry"), "false")
        XCTAssertTrue(refused.body.contains("Request too large"), refused.body)
        XCTAssertEqual(harness.upstream.requestCount, 0)
        // It still cost one request (the charge is settled at once).
        XCTAssertEqual(harness.limiter.admittedIDs.count, 1)
        XCTAssertEqual(harness.limiter.settlements.first?.promptTokens, 0)
    }

    func testReservationIsMaxTokensTimesNAndTheKeysDefaultWithoutMaxTokens() async throws {
        harness.upstream.script(.ok(), .ok(), .ok())
        _ = try await harness.send(body: chat(#","max_tokens":10,"n":3"#))
        _ = try await harness.send(body: chat(#","max_completion_tokens":7,"max_tokens":99"#))
        _ = try await harness.send(body: chat(#","n":2"#))
        XCTAssertEqual(harness.limiter.admissions.map(\.reservedOutputTokens), [30, 7, 2 * 500])
        XCTAssertTrue(harness.limiter.admissions.allSatisfy { $0.promptTokens > 0 })
    }

    func testEmbeddingsReserveNoOutput() async throws {
        harness.upstream.script(.ok(body: #"{"object":"list","data":[],"model":"text-embedding-3-small","usage":{"prompt_tokens":2,"total_tokens":2}}"#))
        let response = try await harness.send(path: "/v1/embeddings", body: #"{"model":"text-embedding-3-small","input":"hello world"}"#)
        XCTAssertEqual(response.status, 200)
        XCTAssertEqual(harness.limiter.admissions.map(\.reservedOutputTokens), [0])
        XCTAssertEqual(harness.limiter.admissions.first?.promptTokens, 2)
    }

    // MARK: forward and relay

    func testAnsweredRequestIsRelayedAndSettledWithTheReportedUsage() async throws {
        harness.upstream.script(.ok(completionTokens: 5))
        let response = try await harness.send(body: chat(#","max_tokens":50"#))
        XCTAssertEqual(response.status, 200)
        XCTAssertTrue(response.ended)
        XCTAssertTrue(response.body.contains("chatcmpl-scripted"), response.body)
        XCTAssertNotNil(response.headers.first(name: "x-ratelimit-remaining-tokens"))
        let sent = try XCTUnwrap(harness.upstream.requests.first)
        XCTAssertEqual(sent.url, "http://upstream.test/v1/chat/completions")
        XCTAssertEqual(sent.httpVersion, .auto, "http_version's default")
        XCTAssertNil(sent.caFile)
        XCTAssertFalse(sent.headers.contains { $0.name.lowercased() == "authorization" && $0.value.contains(Self.secret) }, "the caller's key is never forwarded")
        let settled = try XCTUnwrap(harness.limiter.settlements.first)
        XCTAssertEqual(settled.completionTokens, 5)
        XCTAssertEqual(settled.promptTokens, harness.limiter.admissions.first?.promptTokens)
    }

    func testUpstreamFailureBeforeAnyByteIsAnErrorAndRefunded() async throws {
        harness = try PipelineHarness(routing: #"{"max_attempts": 1}"#)
        harness.upstream.script(.fail(.connectTimeout), .ok(status: 500, body: #"{"error":{"message":"boom"}}"#))
        let timedOut = try await harness.send(body: chat())
        XCTAssertEqual(timedOut.status, 504)
        XCTAssertTrue(timedOut.body.contains("\"error\""), timedOut.body)
        let failed = try await harness.send(body: chat())
        XCTAssertEqual(failed.status, 500)
        XCTAssertEqual(harness.limiter.settlements.map(\.promptTokens), [0, 0], "a request the model never answered is refunded")
        XCTAssertEqual(harness.limiter.settlements.map(\.completionTokens), [0, 0])
    }

    func testRefusedConnectIsRetriedOnceAndOnlyThat() async throws {
        harness.upstream.script(.fail(.connectFailed), .ok(), .fail(.connectionDropped))
        let retried = try await harness.send(body: chat())
        XCTAssertEqual(retried.status, 200)
        XCTAssertEqual(harness.upstream.requestCount, 2)
        let dropped = try await harness.send(body: chat())
        XCTAssertEqual(dropped.status, 502)
        XCTAssertEqual(harness.upstream.requestCount, 3, "a request that may have reached the model is never sent again")
    }

    func testStreamIsRelayedEventByEvent() async throws {
        harness.upstream.script(.stream(events: ["Hello", " world"]))
        let response = try await harness.send(body: chat(stream: true))
        XCTAssertEqual(response.status, 200)
        XCTAssertTrue(response.ended)
        XCTAssertTrue(response.body.contains("data: [DONE]"), response.body)
        XCTAssertEqual(harness.limiter.settlements.first?.completionTokens, 2, "counted from what was relayed (no usage reported)")
    }

    func testStreamCutByTheUpstreamIsCutForTheClientAndChargesWhatWasRelayed() async throws {
        harness.upstream.script(.stream(events: ["one", " two", " three"], thenFail: .connectionDropped))
        let response = try await harness.send(body: chat(stream: true))
        XCTAssertEqual(response.status, 200)
        XCTAssertFalse(response.ended, "a cut stream must never look complete")
        XCTAssertFalse(response.body.contains("[DONE]"))
        XCTAssertTrue(response.closed, "the connection is closed so the client sees the cut")
        let settled = try XCTUnwrap(harness.limiter.settlements.first)
        XCTAssertEqual(settled.completionTokens, 3)
        XCTAssertGreaterThan(settled.promptTokens, 0)
    }

    func testClientGoneMidStreamCancelsTheUpstreamAndSettles() async throws {
        harness.upstream.script(.stream(events: ["partial"], thenHang: true))
        let response = try await harness.send(body: chat(stream: true), leaveAfterFirstChunk: true)
        XCTAssertEqual(response.status, 200)
        XCTAssertFalse(response.ended)
        XCTAssertTrue(harness.upstream.sawCancellation, "the upstream exchange was cancelled")
        let settled = try XCTUnwrap(harness.limiter.settlements.first)
        XCTAssertEqual(settled.completionTokens, 1)
    }

    func testClientGoneBeforeTheAnswerCancelsTheUpstreamAndChargesThePrompt() async throws {
        harness.upstream.script(.hang)
        let response = try await harness.send(body: chat(), leaveWhenUpstreamAsked: true)
        XCTAssertEqual(response.status, 0, "nothing was written")
        XCTAssertTrue(harness.upstream.sawCancellation)
        let settled = try XCTUnwrap(harness.limiter.settlements.first)
        XCTAssertGreaterThan(settled.promptTokens, 0)
        XCTAssertEqual(settled.completionTokens, 0)
    }

    func testCircuitOpensAfterFiveDownFailuresAndAnswers503AtOnce() async throws {
        // One attempt per request: each failure is one request's (retries: GatewayForwardTests).
        harness = try PipelineHarness(routing: #"{"max_attempts": 1}"#)
        harness.upstream.script(.fail(.connectTimeout), .fail(.connectTimeout), .fail(.connectTimeout), .fail(.connectTimeout), .fail(.connectTimeout))
        for _ in 0..<5 {
            let response = try await harness.send(body: chat())
            XCTAssertEqual(response.status, 504)
        }
        let refused = try await harness.send(body: chat())
        XCTAssertEqual(refused.status, 503)
        XCTAssertNotNil(refused.headers.first(name: "retry-after"))
        XCTAssertEqual(harness.upstream.requestCount, 5, "an open circuit does not ask the upstream")
        XCTAssertEqual(harness.limiter.settlements.last?.promptTokens, 0)
    }

    func testImplausibleUsageIsChargedAtTheRequestsBound() async throws {
        harness.upstream.script(.ok(completionTokens: 2_000_000_000))
        let response = try await harness.send(body: chat(#","max_tokens":40,"n":2"#))
        XCTAssertEqual(response.status, 200)
        XCTAssertEqual(harness.limiter.settlements.first?.completionTokens, 80)
    }
}

// MARK: - Requests OpenAI's API accepts (issue 22)

extension GatewayPipelineTests {
    /// Valid requests Sluice used to refuse itself reach the upstream byte for byte, with the
    /// reservation they ask for.
    func testValuesTheSpecAllowsAreForwardedAsTheyAre() async throws {
        let cases: [(path: String, body: String, reservedOutput: Int)] = [
            ("/v1/chat/completions", #"{"model":"gpt-4o-mini","messages":[{"role":"function","name":"f","content":null}]}"#, 500),
            ("/v1/completions", #"{"model":"gpt-4o-mini","prompt":null,"max_tokens":1}"#, 1),
            ("/v1/completions", #"{"model":"gpt-4o-mini","prompt":"Say this","max_tokens":0,"echo":true,"logprobs":0}"#, 0),
            ("/v1/chat/completions", chat(#","n":2.0,"max_tokens":228.0"#), 456),
            ("/v1/completions", #"{"model":"gpt-4o-mini","prompt":[[1,-2],[3]],"max_completion_tokens":1e1}"#, 10),
        ]
        for (path, body, _) in cases {
            harness.upstream.script(.ok(completionTokens: 0))
            let response = try await harness.send(path: path, body: body)
            XCTAssertEqual(response.status, 200, "\(body): \(response.body)")
        }
        XCTAssertEqual(harness.upstream.requests.map { String(decoding: $0.body, as: UTF8.self) }, cases.map(\.body))
        XCTAssertEqual(harness.limiter.admissions.map(\.reservedOutputTokens), cases.map(\.reservedOutput))
        XCTAssertEqual(harness.limiter.admissions.dropFirst().first?.promptTokens, 1, "a null prompt is `<|endoftext|>`: one token")
    }

    /// A `max_tokens` beyond what a reservation uses is reserved at the bound: forwarded for a key
    /// without token limits, "Request too large" (never worth a retry) for one with them.
    func testOutputLimitAboveTheBoundIsReservedAtTheBound() async throws {
        let body = #"{"model":"gpt-4o","messages":[{"role":"user","content":"x"}],"max_tokens":99999999999}"#
        harness.upstream.script(.ok())
        let forwarded = try await harness.send(body: body, secret: Self.narrowSecret)
        XCTAssertEqual(forwarded.status, 200, forwarded.body)
        XCTAssertEqual(harness.limiter.admissions.map(\.reservedOutputTokens), [Int(Int32.max)])
        let limited = try await harness.send(body: body)
        XCTAssertEqual(limited.status, 429, limited.body)
        XCTAssertTrue(limited.body.contains("Request too large"), limited.body)
        XCTAssertEqual(limited.headers.first(name: "x-should-retry"), "false")
        XCTAssertEqual(harness.upstream.requestCount, 1)
    }

    /// On the API's paths a request needs a valid key before "no such route" (as from OpenAI's own
    /// endpoints Sluice does not serve); elsewhere no key is asked for.
    func testUnroutableAPIPathsCheckTheKeyFirst() async throws {
        let table: [(HTTPMethod, String, String?, Int)] = [
            (.POST, "/v1/audio/speech", nil, 401), (.POST, "/v1/audio/speech", "sk-not-a-key-0123456789", 401),
            (.POST, "/v1/audio/speech", Self.secret, 404), (.GET, "/v1/chat/completions", nil, 401),
            (.GET, "/v1/chat/completions", Self.secret, 405), (.GET, "/v1", nil, 401), (.GET, "/nowhere", nil, 404),
        ]
        for (method, path, secret, status) in table {
            let response = try await harness.send(method, path: path, secret: secret)
            XCTAssertEqual(response.status, status, "\(method) \(path) key \(secret ?? "none"): \(response.body)")
        }
    }

    /// `/v1/models/{id}` decodes the id, and answers HEAD like `/v1/models` does.
    func testRetrieveModelDecodesTheIDAndAnswersHEAD() async throws {
        let found = try await harness.send(.GET, path: "/v1/models/gpt-4o%2Dmini")
        XCTAssertEqual(found.status, 200, found.body)
        XCTAssertTrue(found.body.contains(#""id":"gpt-4o-mini""#), found.body)
        let missing = try await harness.send(.GET, path: "/v1/models/no%2Dsuch%2Dmodel")
        XCTAssertEqual(missing.status, 404)
        XCTAssertTrue(missing.body.contains("`no-such-model`"), missing.body)
        for path in ["/v1/models", "/v1/models/gpt-4o-mini"] {
            let get = try await harness.send(.GET, path: path)
            let head = try await harness.send(.HEAD, path: path)
            XCTAssertEqual(head.status, 200, path)
            // The head only (a body would be read as the start of the next response), with the
            // length the body would have had.
            XCTAssertTrue(head.ended && head.body.isEmpty, head.body)
            XCTAssertEqual(head.headers.first(name: "content-length"), String(get.body.utf8.count), path)
        }
        let headWithoutKey = try await harness.send(.HEAD, path: "/v1/models/gpt-4o-mini", secret: nil)
        XCTAssertEqual(headWithoutKey.status, 401)
    }
}

// MARK: - The harness

/// A gateway wired to the in-memory limiter and a scripted upstream.
final class PipelineHarness: Sendable {
    let gateway: Gateway
    let upstream = ScriptedUpstream()
    let limiter = RecordingLimiter()

    static let defaultUpstreams = """
        [{"name": "scripted", "base_url": "http://upstream.test/v1",
          "models": ["gpt-4o-mini", "gpt-4o*", "text-embedding-3-small"]}]
        """

    /// - Parameters:
    ///   - upstreams: the config's `upstreams` array (JSON).
    ///   - routing: the config's `routing` object (JSON), if any.
    ///   - environment: where `api_key_env` names are read.
    ///   - pricing: the config's `pricing` section (JSON), if any.
    ///   - teams: the config's `teams` section (JSON), if any.
    ///   - extraKeys: more entries of `keys` (JSON objects), e.g. keys in those teams.
    init(tracer: (any Tracer)? = nil, upstreams: String = PipelineHarness.defaultUpstreams, routing: String? = nil, environment: [String: String] = [:], pricing: String? = nil,
         teams: String? = nil, extraKeys: [String] = []) throws {
        let config = try SluiceConfig.parse(bytes: Array("""
        {
          "server": {"host": "127.0.0.1", "port": 8080},
          "tokenizer": {"directory": "\(PipelineHarness.tokenizerDirectory)"},
          \(routing.map { "\"routing\": \($0)," } ?? "")
          "upstreams": \(upstreams),
          "tiers": {"small": {"requests_per_minute": 2, "tokens_per_minute": 1000}},
          "keys": [
            {"id": "main", "secret_sha256": "\(sha256(GatewayPipelineTests.secret))", "default_output_tokens": 500,
             "limits": {"requests_per_minute": 1000, "tokens_per_minute": 1000000}},
            {"id": "small", "secret_sha256": "\(sha256(GatewayPipelineTests.smallSecret))", "tier": "small", "metrics": true},
            {"id": "narrow", "secret_sha256": "\(sha256(GatewayPipelineTests.narrowSecret))", "models": ["gpt-4o"], "limits": {"requests_per_minute": 100}},
            {"id": "budget", "secret_sha256": "\(sha256(GatewayPipelineTests.budgetSecret))", "limits": {"usd_per_day": 0.00001}}\(extraKeys.map { ",\n" + $0 }.joined())
          ]\(pricing.map { ", \"pricing\": " + $0 } ?? "")\(teams.map { ", \"teams\": " + $0 } ?? "")
        }
        """.utf8), environment: environment)
        let tokenizers = try Self.tokenizers.get()
        gateway = Gateway(
            settings: GatewaySettings(config: config), tokenizers: tokenizers, limiter: limiter, engine: upstream,
            metrics: GatewayMetrics(), tracer: tracer, logger: Logger(label: "pipeline-test", factory: { _ in SwiftLogNoOpLogHandler() })
        )
    }

    /// Loaded once for all tests (the rank files take a while).
    static let tokenizers = Result { try Tokenizers.load(directory: tokenizerDirectory) }

    /// `SLUICE_TOKENIZER_DIR`, else `<repo>/.cache/tokenizer` (filled by scripts/setup).
    static var tokenizerDirectory: String {
        if let directory = ProcessInfo.processInfo.environment["SLUICE_TOKENIZER_DIR"], !directory.isEmpty { return directory }
        return URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent(".cache/tokenizer").path
    }

    func send(_ method: HTTPMethod = .POST, path: String = "/v1/chat/completions", body: String = "", secret: String? = GatewayPipelineTests.secret,
              headers: [(String, String)] = [], leaveAfterFirstChunk: Bool = false, leaveWhenUpstreamAsked: Bool = false) async throws -> CapturedResponse {
        try await send(method, path: path, bytes: Array(body.utf8), secret: secret, headers: headers, leaveAfterFirstChunk: leaveAfterFirstChunk, leaveWhenUpstreamAsked: leaveWhenUpstreamAsked)
    }

    /// Runs one request through the gateway and captures every response part written. With one of
    /// the `leave…` flags, the client goes away at that point (as the connection handler reports it:
    /// the task is cancelled and the writer told the channel closed).
    func send(_ method: HTTPMethod = .POST, path: String = "/v1/chat/completions", bytes: [UInt8], secret: String? = GatewayPipelineTests.secret,
              headers: [(String, String)] = [], leaveAfterFirstChunk: Bool = false, leaveWhenUpstreamAsked: Bool = false) async throws -> CapturedResponse {
        let channel = NIOAsyncTestingChannel()
        try await channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1))
        var head = HTTPRequestHead(version: .http1_1, method: method, uri: path)
        head.headers.add(name: "content-type", value: "application/json")
        if let secret { head.headers.add(name: "authorization", value: "Bearer \(secret)") }
        for (name, value) in headers { head.headers.add(name: name, value: value) }
        let request = HTTPRequest(head: head, body: ByteBuffer(bytes: bytes))
        let writer = ResponseWriter(channel: channel, keepAlive: true, bodyless: method == .HEAD)
        let gateway = self.gateway
        let asked = upstream.requestCount
        let task = Task { await gateway.handle(request, writer: writer) }

        var captured = CapturedResponse(requestMethod: method)
        if leaveWhenUpstreamAsked {
            while upstream.requestCount == asked { try await Task.sleep(for: .milliseconds(5)) }
            task.cancel()
            writer.channelClosed()
        } else if leaveAfterFirstChunk {
            while captured.body.isEmpty {
                try captured.take(try await channel.waitForOutboundWrite(as: ByteBuffer.self))
            }
            task.cancel()
            writer.channelClosed()
        }
        await task.value
        while let bytes = try await channel.readOutbound(as: ByteBuffer.self) { try captured.take(bytes) }
        captured.closed = !channel.isActive
        return captured
    }
}

/// What a client would have received: the bytes a `ResponseWriter` wrote, read by NIO's HTTP/1
/// response decoder (so the tests also check the wire format against a parser Sluice did not write).
struct CapturedResponse {
    var status = 0
    var headers = HTTPHeaders()
    var body = ""
    var ended = false
    var closed = false
    private let requestMethod: HTTPMethod
    private var received = ByteBuffer()

    init(requestMethod: HTTPMethod = .POST) {
        self.requestMethod = requestMethod
    }

    /// Takes the next bytes written; fails on bytes that are not a well-formed HTTP/1.1 response.
    ///
    /// Everything received so far is decoded again each time, on a decoder made here: an
    /// `EmbeddedChannel` must stay on one thread, and an async test moves between threads.
    mutating func take(_ bytes: ByteBuffer) throws {
        received.writeImmutableBuffer(bytes)
        let decoder = EmbeddedChannel(handler: ByteToMessageHandler(HTTPResponseDecoder()))
        // The decoder pairs each response with a request it saw leave (a response to HEAD has no body).
        try decoder.writeOutbound(HTTPClientRequestPart.head(HTTPRequestHead(version: .http1_1, method: requestMethod, uri: "/")))
        try decoder.writeInbound(received)
        (status, headers, body, ended) = (0, HTTPHeaders(), "", false)
        while let part = try decoder.readInbound(as: HTTPClientResponsePart.self) {
            switch part {
            case .head(let head):
                status = Int(head.status.code)
                headers = head.headers
            case .body(let buffer):
                body += String(buffer: buffer)
            case .end:
                ended = true
            }
        }
    }
}

/// The upstream, scripted answer by answer; records what it was sent and whether an exchange was
/// cancelled.
final class ScriptedUpstream: UpstreamClient {
    enum Answer: Sendable {
        case fail(UpstreamError.Kind)
        case whole(status: Int, body: String)
        case wholeWithHeaders(status: Int, body: String, headers: [(name: String, value: String)])
        case events([String], thenFail: UpstreamError.Kind?, thenHang: Bool)
        case hang

        static func ok(status: Int = 200, completionTokens: Int = 1, body: String? = nil) -> Answer {
            .whole(status: status, body: body ?? #"{"id":"chatcmpl-scripted","object":"chat.completion","model":"gpt-4o-mini","choices":[{"index":0,"message":{"role":"assistant","content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":9,"completion_tokens":\#(completionTokens),"total_tokens":\#(9 + completionTokens)}}"#)
        }

        static func stream(events: [String], thenFail: UpstreamError.Kind? = nil, thenHang: Bool = false) -> Answer {
            .events(events, thenFail: thenFail, thenHang: thenHang)
        }
    }

    private struct State {
        var answers: [Answer] = []
        /// Answers for requests to one host (`script(host:_:)`), before the shared ones.
        var answersByHost: [String: [Answer]] = [:]
        var requests: [UpstreamRequest] = []
        var cancelled = false
    }
    private let state = Mutex(State())

    var requestCount: Int { state.withLock { $0.requests.count } }
    var requests: [UpstreamRequest] { state.withLock { $0.requests } }
    var sawCancellation: Bool { state.withLock { $0.cancelled } }

    /// Every answer came on a pooled HTTP/1.1 connection.
    static let connection = UpstreamConnectionInfo(newConnection: false, connectMicroseconds: 0, httpVersion: .http1_1)

    func script(_ answers: Answer...) {
        state.withLock { $0.answers.append(contentsOf: answers) }
    }

    /// Answers for requests whose URL is on `host` (e.g. `a.test`), taken before the shared ones.
    func script(host: String, _ answers: Answer...) {
        state.withLock { $0.answersByHost[host, default: []].append(contentsOf: answers) }
    }

    /// The hosts the requests went to, in order.
    var hosts: [String] { requests.map { Self.host(of: $0.url) } }

    static func host(of url: String) -> String {
        let afterScheme = url.range(of: "://").map { url[$0.upperBound...] } ?? url[...]
        return String(afterScheme.prefix { $0 != "/" && $0 != ":" && $0 != "?" })
    }

    func execute(_ request: UpstreamRequest) async throws(UpstreamError) -> UpstreamResponse {
        let answer = state.withLock { state -> Answer? in
            state.requests.append(request)
            let host = Self.host(of: request.url)
            if var own = state.answersByHost[host], !own.isEmpty {
                let answer = own.removeFirst()
                state.answersByHost[host] = own
                return answer
            }
            return state.answers.isEmpty ? nil : state.answers.removeFirst()
        }
        guard let answer else { throw UpstreamError(kind: .other, detail: "no scripted answer left") }
        switch answer {
        case .fail(let kind):
            throw UpstreamError(kind: kind, detail: "scripted")
        case .hang:
            try? await Task.sleep(for: .seconds(30))
            state.withLock { $0.cancelled = Task.isCancelled }
            throw UpstreamError(kind: .cancelled, detail: "scripted: cancelled while waiting")
        case .whole(let status, let body):
            let stream = AsyncThrowingStream<ByteBuffer, any Error> { continuation in
                continuation.yield(ByteBuffer(string: body))
                continuation.finish()
            }
            return UpstreamResponse(status: status, headers: [("content-type", "application/json")], body: UpstreamBody(chunks: stream), connection: Self.connection)
        case .wholeWithHeaders(let status, let body, let headers):
            let stream = AsyncThrowingStream<ByteBuffer, any Error> { continuation in
                continuation.yield(ByteBuffer(string: body))
                continuation.finish()
            }
            return UpstreamResponse(status: status, headers: [("content-type", "application/json")] + headers, body: UpstreamBody(chunks: stream), connection: Self.connection)
        case .events(let events, let failure, let hang):
            let stream = AsyncThrowingStream<ByteBuffer, any Error> { continuation in
                for text in events {
                    continuation.yield(ByteBuffer(string: #"data: {"id":"chatcmpl-scripted","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"\#(text)"},"finish_reason":null}]}"# + "\n\n"))
                }
                if let failure {
                    continuation.finish(throwing: UpstreamError(kind: failure, detail: "scripted"))
                } else if hang {
                    continuation.onTermination = { [weak self] termination in
                        if case .cancelled = termination { self?.state.withLock { $0.cancelled = true } }
                    }
                } else {
                    continuation.yield(ByteBuffer(string: "data: [DONE]\n\n"))
                    continuation.finish()
                }
            }
            return UpstreamResponse(status: 200, headers: [("content-type", "text/event-stream")], body: UpstreamBody(chunks: stream), connection: Self.connection)
        }
    }
}

/// The in-memory limiter, recording every admission and settlement.
final class RecordingLimiter: LimiterStore {
    struct Settlement: Sendable {
        var requestID: String
        var promptTokens: Int
        var completionTokens: Int
        var cost: RequestCost?
    }

    private let inner = InMemoryLimiterStore()
    private let log = Mutex<(admissions: [AdmissionRequest], admitted: [String], settlements: [Settlement])>(([], [], []))

    var admissions: [AdmissionRequest] { log.withLock { state in state.admissions.filter { state.admitted.contains($0.requestID) } } }
    var admittedIDs: [String] { log.withLock { $0.admitted } }
    var settledIDs: [String] { log.withLock { $0.settlements.map(\.requestID) } }
    var settlements: [Settlement] { log.withLock { $0.settlements } }

    func admit(_ request: AdmissionRequest) async throws -> AdmissionDecision {
        let decision = try await inner.admit(request)
        log.withLock { state in
            state.admissions.append(request)
            if case .admitted = decision { state.admitted.append(request.requestID) }
        }
        return decision
    }

    func settle(_ reservation: Reservation, actualPromptTokens: Int, actualCompletionTokens: Int) async throws -> RateLimitSnapshot? {
        log.withLock { $0.settlements.append(Settlement(requestID: reservation.requestID, promptTokens: actualPromptTokens, completionTokens: actualCompletionTokens, cost: reservation.settledCost)) }
        return try await inner.settle(reservation, actualPromptTokens: actualPromptTokens, actualCompletionTokens: actualCompletionTokens)
    }

    func snapshot(keyID: String, team: String?, limits: ResolvedLimits) async throws -> RateLimitSnapshot {
        try await inner.snapshot(keyID: keyID, team: team, limits: limits)
    }

    func periodUsage(_ subject: LimitSubject) async throws -> PeriodUsage {
        try await inner.periodUsage(subject)
    }
}

func sha256(_ text: String) -> String {
    KeyTable.sha256Hex(of: text)
}
