import Foundation
import XCTest
@testable import SluiceCore

final class GatewayErrorTests: XCTestCase {
    private func renderedError(_ error: GatewayError) throws -> [String: Any] {
        let body = error.responseBody()
        let object = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(body)) as? [String: Any])
        XCTAssertEqual(object.count, 1)
        return try XCTUnwrap(object["error"] as? [String: Any])
    }

    private func header(_ error: GatewayError, _ name: String) -> String? {
        error.headers.first { $0.0 == name }?.1
    }

    func testEveryKindRendersValidJSONInOpenAIKeyOrder() throws {
        let samples: [GatewayError] = [
            .invalidRequest(message: "Bad \"quote\" \\ and \n newline \u{1}", param: "messages[0].content", code: "invalid_type"),
            .invalidJSON(JSONParseError(.trailingData, at: 3)), .invalidJSON(),
            .bodyTooLarge(limitBytes: 1_048_576), .missingAPIKey(), .invalidAPIKey(presented: "sk-sluice-0123456789abcdemo"),
            .modelNotFound("gpt-5\"x"), .routeNotFound(method: "GET", path: "/v1/nope"),
            .methodNotAllowed(method: "GET", path: "/v1/chat/completions", allowed: ["POST"]),
            .rateLimited(limit: .tokens, model: "gpt-4o-mini", limitValue: 200_000, used: 130_491, requested: 75_418, retryAfterSeconds: 1.772),
            .requestTooLarge(limit: .tokens, model: "gpt-4o-mini", limitValue: 30_000, requested: 34_102),
            .quotaExceeded(limit: .dailyTokens, limitValue: 1000, used: 1000), .concurrencyLimited(model: "m", limitValue: 4),
            .upstreamUnavailable(status: 503), .upstreamTimeout(), .upstreamConnectFailed(logDetail: "ECONNREFUSED"),
            .upstreamProtocolError(), .serviceUnavailable(), .internal(logDetail: "bug"), .requestTimeout(),
            .malformedHTTP("invalid request line"), .headersTooLarge(limitBytes: 65_536, maxFields: 1000), .httpVersionNotSupported(),
        ]
        XCTAssertEqual(Set(samples.map(\.kind)), Set(GatewayError.Kind.allCases), "every kind is covered")
        for error in samples {
            let object = try renderedError(error)
            XCTAssertEqual(object["message"] as? String, error.message)
            XCTAssertEqual(object["type"] as? String, error.type)
            if let param = error.param { XCTAssertEqual(object["param"] as? String, param) } else { XCTAssertTrue(object["param"] is NSNull) }
            if let code = error.code { XCTAssertEqual(object["code"] as? String, code) } else { XCTAssertTrue(object["code"] is NSNull) }
            let text = String(decoding: error.responseBody(), as: UTF8.self)
            XCTAssertTrue(text.hasPrefix(#"{"error":{"message":"#), text)
            let order = ["\"message\":", "\"type\":", "\"param\":", "\"code\":"].map { text.range(of: $0)!.lowerBound }
            XCTAssertEqual(order, order.sorted(), text)
            XCTAssertFalse(error.logDetail.map { text.contains($0) } ?? false, "log detail never reaches the client")
        }
    }

    func testRateLimitedMatchesOpenAI() throws {
        let error = GatewayError.rateLimited(limit: .tokens, model: "gpt-4o-mini", limitValue: 200_000, used: 130_491,
                                             requested: 75_418, retryAfterSeconds: 1.772)
        // The body OpenAI documents (notes/openai-surface.md), byte for byte.
        XCTAssertEqual(String(decoding: error.responseBody(), as: UTF8.self),
                       #"{"error":{"message":"Rate limit reached for gpt-4o-mini on tokens per min (TPM): Limit 200000, Used 130491, Requested 75418. Please try again in 1.772s.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}"#)
        XCTAssertEqual(error.status, 429)
        XCTAssertEqual(header(error, "retry-after"), "2")
        XCTAssertEqual(header(error, "retry-after-ms"), "1772")
        XCTAssertNil(header(error, "x-should-retry"))

        let requests = GatewayError.rateLimited(limit: .requests, model: "m", limitValue: 60, used: 60, requested: 1, retryAfterSeconds: 0.0004)
        XCTAssertEqual(requests.type, "requests")
        XCTAssertTrue(requests.message.contains("on requests per min (RPM)"))
        XCTAssertTrue(requests.message.hasSuffix("Please try again in 1ms."))
        XCTAssertEqual(header(requests, "retry-after"), "1", "never below one second")
        XCTAssertEqual(header(requests, "retry-after-ms"), "1")
        XCTAssertEqual(GatewayError.rateLimited(limit: .inputTokens, model: "m", limitValue: 1, used: 1, requested: 1, retryAfterSeconds: 1).type, "input_tokens")
        XCTAssertEqual(GatewayError.rateLimited(limit: .outputTokens, model: "m", limitValue: 1, used: 1, requested: 1, retryAfterSeconds: 1).type, "output_tokens")
    }

    func testRequestTooLargeAndQuotaAreNotRetryable() {
        let tooLarge = GatewayError.requestTooLarge(limit: .tokens, model: "gpt-4o-mini", limitValue: 30_000, requested: 34_102)
        XCTAssertEqual(tooLarge.message, "Request too large for gpt-4o-mini on tokens per min (TPM): Limit 30000, Requested 34102. The input or output tokens must be reduced in order to run successfully.")
        XCTAssertEqual(tooLarge.status, 429)
        XCTAssertEqual(tooLarge.code, "rate_limit_exceeded")
        XCTAssertEqual(header(tooLarge, "x-should-retry"), "false")

        let quota = GatewayError.quotaExceeded(limit: .monthlyTokens, limitValue: 10, used: 11, renewsInSeconds: 3600.2)
        XCTAssertEqual(quota.type, "insufficient_quota")
        XCTAssertEqual(quota.code, "insufficient_quota")
        XCTAssertEqual(header(quota, "x-should-retry"), "false")
        XCTAssertEqual(header(quota, "retry-after"), "3601")
    }

    func testStatusesAndTypes() {
        let expectations: [(GatewayError, Int, String)] = [
            (.invalidJSON(), 400, "invalid_request_error"), (.bodyTooLarge(limitBytes: 10), 413, "invalid_request_error"),
            (.missingAPIKey(), 401, "invalid_request_error"), (.invalidAPIKey(presented: "x"), 401, "invalid_request_error"),
            (.modelNotFound("m"), 404, "invalid_request_error"), (.routeNotFound(method: "GET", path: "/"), 404, "invalid_request_error"),
            (.methodNotAllowed(method: "PUT", path: "/v1/models", allowed: ["GET"]), 405, "invalid_request_error"),
            (.upstreamUnavailable(), 502, "server_error"), (.upstreamUnavailable(status: 503), 503, "server_error"),
            (.upstreamTimeout(), 504, "server_error"), (.upstreamConnectFailed(), 502, "server_error"),
            (.upstreamProtocolError(), 502, "server_error"), (.serviceUnavailable(), 503, "server_error"), (.internal(), 500, "server_error"),
        ]
        for (error, status, type) in expectations {
            XCTAssertEqual(error.status, status, "\(error.kind)")
            XCTAssertEqual(error.type, type, "\(error.kind)")
        }
        XCTAssertEqual(GatewayError.bodyTooLarge(limitBytes: 1_048_576).message, "The request body is too large: the limit is 1048576 bytes.")
        XCTAssertEqual(GatewayError.modelNotFound("gpt-9").message, "The model `gpt-9` does not exist or you do not have access to it.")
        XCTAssertEqual(GatewayError.modelNotFound("gpt-9").code, "model_not_found")
        XCTAssertEqual(GatewayError.routeNotFound(method: "POST", path: "/v1/foo").message, "Invalid URL (POST /v1/foo)")
        XCTAssertEqual(header(.methodNotAllowed(method: "PUT", path: "/v1/models", allowed: ["GET", "HEAD"]), "allow"), "GET, HEAD")
        XCTAssertEqual(header(.serviceUnavailable(), "retry-after"), "1")
    }

    func testAPIKeysAreMaskedNeverEchoed() {
        let secret = "sk-sluice-0123456789abcdemo"
        let error = GatewayError.invalidAPIKey(presented: secret)
        XCTAssertEqual(error.code, "invalid_api_key")
        XCTAssertTrue(error.message.hasPrefix("Incorrect API key provided: sk-***demo."), error.message)
        XCTAssertFalse(String(decoding: error.responseBody(), as: UTF8.self).contains("sluice-0123"))
        XCTAssertEqual(GatewayError.maskedAPIKey("sk-shortkey"), nil, "short keys are not shown at all")
        XCTAssertEqual(GatewayError.invalidAPIKey(presented: "sk-shortkey").message, "Incorrect API key provided. Ask your Sluice administrator for a valid key.")
        XCTAssertNil(GatewayError.maskedAPIKey("sk-0123456789abcdef\u{7}ghij"), "non-printable keys are not shown")
        XCTAssertNil(GatewayError.maskedAPIKey("sk-0123456789abcdéfghij"))
        XCTAssertEqual(GatewayError.maskedAPIKey("abcdefghijklmnop"), "abc***mnop")
    }

    func testRetryDelayUsesOpenAIDurationStyle() {
        // Examples from OpenAI's responses and headers (notes/openai-surface.md).
        let cases: [(Double, String)] = [
            (1.772, "1.772s"), (0.12, "120ms"), (0.012, "12ms"), (360, "6m0s"), (172.8, "2m52.8s"), (33.023, "33.023s"),
            (0, "0s"), (-1, "0s"), (.nan, "0s"), (1, "1s"), (3723.5, "1h2m3.5s"), (0.0001, "1ms"),
        ]
        for (seconds, expected) in cases {
            XCTAssertEqual(GatewayError.formatRetryDelay(seconds: seconds), expected, "\(seconds)")
        }
    }
}
