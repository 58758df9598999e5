import InMemoryTracing
import Logging
import NIOHTTP1
import SluiceCore
import Tracing
import XCTest
@testable import SluiceServer

/// Traces: the span tree and attributes one request makes (with an in-memory tracer), and the W3C
/// trace context taken from the client and handed to the upstream (with swift-otel's tracer).
final class GatewayTracingTests: XCTestCase {
    private func chat(stream: Bool = false, model: String = "gpt-4o-mini") -> String {
        #"{"model":"\#(model)","max_tokens":10,"messages":[{"role":"user","content":"Hello!"}]"# + (stream ? #","stream":true"# : "") + "}"
    }

    private func spans(_ tracer: InMemoryTracer) -> [String: FinishedInMemorySpan] {
        Dictionary(tracer.finishedSpans.map { ($0.operationName, $0) }, uniquingKeysWith: { first, _ in first })
    }

    func testAnsweredRequestMakesTheSpanTree() async throws {
        let tracer = InMemoryTracer()
        let harness = try PipelineHarness(tracer: tracer)
        harness.upstream.script(.ok(completionTokens: 7))
        let response = try await harness.send(body: chat(), headers: [("x-request-id", "req-trace-1")])
        XCTAssertEqual(response.status, 200)

        let byName = spans(tracer)
        XCTAssertEqual(Set(byName.keys), ["POST /v1/chat/completions", "count", "admit", "upstream", "relay", "settle"])
        let root = try XCTUnwrap(byName["POST /v1/chat/completions"])
        XCTAssertEqual(root.kind, .server)
        XCTAssertNil(root.parentSpanID)
        for name in ["count", "admit", "upstream", "relay", "settle"] {
            let child = try XCTUnwrap(byName[name])
            XCTAssertEqual(child.parentSpanID, root.spanID, "\(name) is a child of the request span")
            XCTAssertEqual(child.traceID, root.traceID)
        }
        XCTAssertEqual(byName["upstream"]?.kind, .client)

        let attributes = root.attributes
        XCTAssertEqual(attributes.get("gen_ai.operation.name"), .string("chat"))
        XCTAssertEqual(attributes.get("gen_ai.request.model"), .string("gpt-4o-mini"))
        XCTAssertEqual(attributes.get("gen_ai.response.model"), .string("gpt-4o-mini"))
        XCTAssertEqual(attributes.get("gen_ai.response.finish_reasons"), .stringArray(["stop"]))
        XCTAssertEqual(attributes.get("gen_ai.usage.output_tokens"), .int64(7))
        let counted = try XCTUnwrap(byName["count"]?.attributes.get("sluice.prompt_tokens"))
        XCTAssertEqual(attributes.get("gen_ai.usage.input_tokens"), counted, "input tokens are Sluice's own count")
        XCTAssertEqual(attributes.get("sluice.key"), .string("main"))
        XCTAssertEqual(attributes.get("sluice.request_id"), .string("req-trace-1"))
        XCTAssertEqual(attributes.get("sluice.attempts"), .int64(1))
        XCTAssertEqual(attributes.get("sluice.limit.requests"), .int64(1000))
        XCTAssertNotNil(attributes.get("sluice.remaining.requests"))
        XCTAssertEqual(attributes.get("http.response.status_code"), .int64(200))
        XCTAssertNil(root.status)
        XCTAssertEqual(byName["upstream"]?.events.map(\.name), ["first_byte"], "the scripted engine reports no connection")

        // No prompt or completion text anywhere.
        for span in tracer.finishedSpans {
            span.attributes.forEach { name, value in
                XCTAssertFalse("\(value)".contains("Hello!"), "\(span.operationName) \(name)")
                XCTAssertFalse("\(value)".contains("\"hi\""), "\(span.operationName) \(name)")
            }
        }
    }

    func testStreamedAnswerRecordsFinishReasonAndModel() async throws {
        let tracer = InMemoryTracer()
        let harness = try PipelineHarness(tracer: tracer)
        harness.upstream.script(.stream(events: ["a", "b"]))
        let response = try await harness.send(body: chat(stream: true))
        XCTAssertEqual(response.status, 200)
        let byName = spans(tracer)
        XCTAssertEqual(byName["relay"]?.attributes.get("sluice.stream"), .bool(true))
        XCTAssertNotNil(byName["POST /v1/chat/completions"]?.attributes.get("gen_ai.usage.output_tokens"))
    }

    func testDenialIsOnTheRequestSpan() async throws {
        let tracer = InMemoryTracer()
        let harness = try PipelineHarness(tracer: tracer)
        harness.upstream.script(.ok(), .ok())
        for _ in 0..<2 { _ = try await harness.send(body: chat(), secret: GatewayPipelineTests.smallSecret) }
        tracer.clearFinishedSpans()
        let denied = try await harness.send(body: chat(), secret: GatewayPipelineTests.smallSecret)
        XCTAssertEqual(denied.status, 429)
        let byName = spans(tracer)
        XCTAssertEqual(Set(byName.keys), ["POST /v1/chat/completions", "count", "admit"])
        XCTAssertEqual(byName["POST /v1/chat/completions"]?.attributes.get("sluice.denial.kind"), .string("requests"))
        XCTAssertEqual(byName["POST /v1/chat/completions"]?.attributes.get("http.response.status_code"), .int64(429))
        XCTAssertEqual(byName["admit"]?.attributes.get("sluice.admit.result"), .string("denied"))
        XCTAssertNil(byName["POST /v1/chat/completions"]?.status, "a 429 is not an error of Sluice's")
    }

    func testUpstreamFailureMarksTheSpansAsErrors() async throws {
        let tracer = InMemoryTracer()
        let harness = try PipelineHarness(tracer: tracer, routing: #"{"max_attempts": 1}"#)
        harness.upstream.script(.fail(.connectFailed), .fail(.connectFailed))
        let response = try await harness.send(body: chat())
        XCTAssertEqual(response.status, 502)
        let byName = spans(tracer)
        XCTAssertEqual(byName["POST /v1/chat/completions"]?.status?.code, .error)
        XCTAssertEqual(byName["upstream"]?.status?.code, .error)
        XCTAssertEqual(byName["upstream"]?.events.map(\.name), ["retry"])
        XCTAssertEqual(byName["POST /v1/chat/completions"]?.attributes.get("sluice.attempts"), .int64(2))
    }

    // MARK: W3C trace context, with swift-otel's tracer (nothing exported: its service never runs)

    private static let incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"

    private func otelHarness() throws -> PipelineHarness {
        let telemetry = try XCTUnwrap(Telemetry.make(TelemetryConfig(otlpEndpoint: "http://127.0.0.1:9"), logger: Logger(label: "t", factory: { _ in SwiftLogNoOpLogHandler() })))
        return try PipelineHarness(tracer: telemetry.tracer)
    }

    private func upstreamHeader(_ harness: PipelineHarness, _ name: String) -> [String] {
        (harness.upstream.requests.last?.headers ?? []).filter { $0.name.lowercased() == name }.map(\.value)
    }

    func testIncomingTraceparentIsContinuedUpstream() async throws {
        let harness = try otelHarness()
        harness.upstream.script(.ok())
        _ = try await harness.send(body: chat(), headers: [("traceparent", Self.incoming), ("tracestate", "vendor=abc")])
        let sent = upstreamHeader(harness, "traceparent")
        XCTAssertEqual(sent.count, 1, "exactly one traceparent upstream: Sluice's, not the client's as well")
        let parts = try XCTUnwrap(sent.first).split(separator: "-")
        XCTAssertEqual(parts.count, 4)
        XCTAssertEqual(parts[0], "00")
        XCTAssertEqual(parts[1], "0af7651916cd43dd8448eb211c80319c", "same trace")
        XCTAssertNotEqual(parts[2], "b7ad6b7169203331", "the parent upstream is Sluice's span")
        XCTAssertEqual(parts[3], "01", "sampled, as the client's")
        XCTAssertEqual(upstreamHeader(harness, "tracestate"), ["vendor=abc"])
    }

    func testMalformedTraceparentStartsANewTrace() async throws {
        let harness = try otelHarness()
        for bad in ["garbage", String(repeating: "0", count: 5000), "00-00000000000000000000000000000000-b7ad6b7169203331-01", "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01"] {
            harness.upstream.script(.ok())
            let response = try await harness.send(body: chat(), headers: [("traceparent", bad)])
            XCTAssertEqual(response.status, 200, "a bad traceparent is never an error")
            let sent = upstreamHeader(harness, "traceparent")
            XCTAssertEqual(sent.count, 1)
            XCTAssertNotNil(TraceContextHeaders.traceParent(sent[0]), "a valid one of Sluice's own")
            XCTAssertFalse(sent[0].contains("0af7651916cd43dd8448eb211c80319c"))
            XCTAssertNotEqual(sent[0], bad)
        }
    }

    func testWithoutTelemetryTraceHeadersPassThroughUntouched() async throws {
        let harness = try PipelineHarness()
        harness.upstream.script(.ok())
        _ = try await harness.send(body: chat(), headers: [("traceparent", Self.incoming)])
        XCTAssertEqual(upstreamHeader(harness, "traceparent"), [Self.incoming])
    }
}

/// `traceparent` / `tracestate` as accepted from a client.
final class TraceContextHeadersTests: XCTestCase {
    func testValidTraceparent() {
        let valid = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        XCTAssertEqual(TraceContextHeaders.traceParent(valid), valid)
        XCTAssertEqual(TraceContextHeaders.traceParent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"), "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00")
        // Flags beyond "sampled" are not passed on.
        XCTAssertEqual(TraceContextHeaders.traceParent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03"), valid)
        // A later version is read as 00 (its extra fields dropped).
        XCTAssertEqual(TraceContextHeaders.traceParent("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra"), valid)
        XCTAssertEqual(TraceContextHeaders.traceParent("cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"), valid)
    }

    func testInvalidTraceparents() {
        for bad in [
            "", "00", "garbage",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-", // version 00 has exactly 55 bytes
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-1", // short flags
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", // version ff
            "00-00000000000000000000000000000000-b7ad6b7169203331-01", // zero trace id
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01", // zero span id
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01", // upper case
            "00-0af7651916cd43dd8448eb211c80319g-b7ad6b7169203331-01", // not hex
            "00_0af7651916cd43dd8448eb211c80319c_b7ad6b7169203331_01",
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x", // later version without a dash after 55
            "01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-" + String(repeating: "a", count: 300), // too long
        ] {
            XCTAssertNil(TraceContextHeaders.traceParent(bad), bad)
        }
    }

    func testAcceptedFromHeaders() throws {
        let valid = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        var headers = HTTPHeaders([("traceparent", valid), ("tracestate", "a=1"), ("TraceState", "b=2")])
        let accepted = try XCTUnwrap(TraceContextHeaders.accepted(from: headers))
        XCTAssertEqual(accepted.traceParent, valid)
        XCTAssertEqual(accepted.traceState, "a=1,b=2")
        headers.add(name: "traceparent", value: valid)
        XCTAssertNil(TraceContextHeaders.accepted(from: headers), "two traceparents: neither is taken")
        XCTAssertNil(TraceContextHeaders.accepted(from: HTTPHeaders([("tracestate", "a=1")])))
        let long = try XCTUnwrap(TraceContextHeaders.accepted(from: HTTPHeaders([("traceparent", valid), ("tracestate", String(repeating: "a", count: 600))])))
        XCTAssertNil(long.traceState, "an oversized tracestate is dropped, the traceparent kept")
    }
}

final class ResponseFieldScannerTests: XCTestCase {
    private func scan(_ pieces: [String]) -> ResponseFieldScanner {
        var scanner = ResponseFieldScanner()
        for piece in pieces { Array(piece.utf8).withUnsafeBytes { scanner.consume($0) } }
        return scanner
    }

    func testWholeAnswer() {
        let scanner = scan([#"{"id":"x","model":"gpt-4o-2024-08-06","choices":[{"message":{"content":"say \"model\": \"no\""},"finish_reason":"stop"},{"finish_reason":"length"}]}"#])
        XCTAssertEqual(scanner.model, "gpt-4o-2024-08-06")
        XCTAssertEqual(scanner.finishReasons, ["stop", "length"])
    }

    func testPiecesSplitAnywhere() {
        let text = "data: {\"model\": \"m-1\",\"choices\":[{\"finish_reason\":null}]}\n\ndata: {\"model\":\"m-1\",\"choices\":[{\"finish_reason\" : \"stop\"}]}\n\n"
        let bytes = Array(text.utf8)
        for split in 1..<bytes.count {
            let scanner = scan([String(decoding: bytes[..<split], as: UTF8.self), String(decoding: bytes[split...], as: UTF8.self)])
            XCTAssertEqual(scanner.model, "m-1", "split at \(split)")
            XCTAssertEqual(scanner.finishReasons, ["stop"], "split at \(split)")
        }
    }
}

final class LogThrottleTests: XCTestCase {
    func testOneLinePerIntervalWithTheCountLeftOut() {
        let throttle = LogThrottle(interval: .seconds(60))
        let start = ContinuousClock.now
        XCTAssertEqual(throttle.admit(now: start), 0)
        XCTAssertNil(throttle.admit(now: start + .seconds(1)))
        XCTAssertNil(throttle.admit(now: start + .seconds(59)))
        XCTAssertEqual(throttle.admit(now: start + .seconds(60)), 2)
        XCTAssertNil(throttle.admit(now: start + .seconds(61)))
    }
}
