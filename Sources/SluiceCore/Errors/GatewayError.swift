/// The one error type of the gateway: every failure a client can see, with its HTTP status,
/// its OpenAI error object (`message`, `type`, `param`, `code`) and the extra headers it needs.
///
/// Build values with the static factories (one per kind); render them with `responseBody()` and
/// `headers`. The factories own the wording, so messages match OpenAI's wherever OpenAI has one.
public struct GatewayError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The closed set of things that can go wrong.
    public enum Kind: String, Sendable, Equatable, CaseIterable {
        case invalidRequest, invalidJSON, bodyTooLarge, requestTimeout
        case malformedHTTP, headersTooLarge, httpVersionNotSupported
        case missingAPIKey, invalidAPIKey
        case modelNotFound, routeNotFound, methodNotAllowed
        case rateLimited, requestTooLarge, quotaExceeded, concurrencyLimited
        case upstreamUnavailable, upstreamTimeout, upstreamConnectFailed, upstreamProtocolError
        case serviceUnavailable, `internal`
    }

    public let kind: Kind
    /// HTTP status code of the response.
    public let status: Int
    /// OpenAI's `error.type` (`invalid_request_error`, `tokens`, `server_error`, …).
    public let type: String
    /// OpenAI's `error.code`, rendered as `null` when nil.
    public let code: String?
    /// OpenAI's `error.param` (the offending request field), rendered as `null` when nil.
    public let param: String?
    /// The message shown to the client. Never contains a secret.
    public let message: String
    /// When set, `retry-after` (whole seconds, rounded up, at least 1) and `retry-after-ms` are sent.
    public let retryAfterSeconds: Double?
    /// When set, `x-should-retry` is sent with this value (the official SDKs obey it).
    public let shouldRetry: Bool?
    /// Methods sent in an `allow` header (405 only).
    public let allowedMethods: [String]
    /// Detail for logs only (never rendered to the client), e.g. the curl error text.
    public let logDetail: String?

    init(kind: Kind, status: Int, type: String, code: String? = nil, param: String? = nil, message: String,
         retryAfterSeconds: Double? = nil, shouldRetry: Bool? = nil, allowedMethods: [String] = [], logDetail: String? = nil) {
        self.kind = kind
        self.status = status
        self.type = type
        self.code = code
        self.param = param
        self.message = message
        self.retryAfterSeconds = retryAfterSeconds
        self.shouldRetry = shouldRetry
        self.allowedMethods = allowedMethods
        self.logDetail = logDetail
    }

    public var description: String {
        var text = "\(status) \(kind.rawValue): \(message)"
        if let param { text += " (param \(param))" }
        if let logDetail { text += " [\(logDetail)]" }
        return text
    }

    // MARK: Rendering

    /// The response body: `{"error":{"message":…,"type":…,"param":…,"code":…}}`, keys in that order.
    public func responseBody() -> [UInt8] {
        var body: [UInt8] = []
        body.reserveCapacity(message.utf8.count + 96)
        body.append(contentsOf: #"{"error":{"message":"#.utf8)
        JSONWriter.appendString(message, to: &body)
        body.append(contentsOf: #","type":"#.utf8)
        JSONWriter.appendString(type, to: &body)
        body.append(contentsOf: #","param":"#.utf8)
        if let param { JSONWriter.appendString(param, to: &body) } else { body.append(contentsOf: "null".utf8) }
        body.append(contentsOf: #","code":"#.utf8)
        if let code { JSONWriter.appendString(code, to: &body) } else { body.append(contentsOf: "null".utf8) }
        body.append(contentsOf: "}}".utf8)
        return body
    }

    /// Headers this error adds to the response (lower-case names), besides content-type.
    public var headers: [(String, String)] {
        var headers: [(String, String)] = []
        if let retryAfterSeconds {
            let seconds = max(0, retryAfterSeconds)
            // Whole seconds, rounded up and at least 1, so that a client honouring only
            // `retry-after` never comes back before the limiter would admit it.
            let wholeSeconds = max(1, Self.roundedUp(seconds))
            headers.append(("retry-after", String(wholeSeconds)))
            headers.append(("retry-after-ms", String(Self.roundedUp(seconds * 1000))))
        }
        if let shouldRetry { headers.append(("x-should-retry", shouldRetry ? "true" : "false")) }
        if !allowedMethods.isEmpty { headers.append(("allow", allowedMethods.joined(separator: ", "))) }
        return headers
    }

    public static func == (lhs: GatewayError, rhs: GatewayError) -> Bool {
        lhs.kind == rhs.kind && lhs.status == rhs.status && lhs.type == rhs.type && lhs.code == rhs.code
            && lhs.param == rhs.param && lhs.message == rhs.message && lhs.retryAfterSeconds == rhs.retryAfterSeconds
            && lhs.shouldRetry == rhs.shouldRetry && lhs.allowedMethods == rhs.allowedMethods && lhs.logDetail == rhs.logDetail
    }
}

// MARK: - Client errors

extension GatewayError {
    static let invalidRequestType = "invalid_request_error"

    /// 400: the request is well-formed JSON but not a valid request. `param` names the offending
    /// field (`messages[2].content`); `code` is OpenAI's machine-readable reason when there is one
    /// (`missing_required_parameter`, `invalid_type`, `invalid_value`, …).
    public static func invalidRequest(message: String, param: String?, code: String? = nil) -> GatewayError {
        GatewayError(kind: .invalidRequest, status: 400, type: invalidRequestType, code: code, param: param, message: message)
    }

    /// 400: the body is not JSON. The message is OpenAI's, followed by where parsing failed.
    public static func invalidJSON(_ parseError: JSONParseError? = nil) -> GatewayError {
        var message = "We could not parse the JSON body of your request. (HINT: This likely means you aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, but what was sent was not valid JSON."
        if let parseError { message += " The parser reported: \(parseError).)" } else { message += ")" }
        return GatewayError(kind: .invalidJSON, status: 400, type: invalidRequestType, message: message)
    }

    /// 413: the body is larger than the configured limit.
    public static func bodyTooLarge(limitBytes: Int) -> GatewayError {
        GatewayError(kind: .bodyTooLarge, status: 413, type: invalidRequestType, code: "request_too_large",
                     message: "The request body is too large: the limit is \(limitBytes) bytes.", shouldRetry: false)
    }

    /// 408: the client started a request and did not send all of it in time (a stalled body).
    public static func requestTimeout() -> GatewayError {
        GatewayError(kind: .requestTimeout, status: 408, type: invalidRequestType, code: "request_timeout",
                     message: "The request body was not received in time; the connection will be closed.")
    }

    /// 400: what the client sent is not a well-formed HTTP/1.1 request (the request line, a header,
    /// the body's framing). The connection is closed after the answer: where the next request would
    /// start cannot be known. `problem` says what was wrong, in a few words.
    public static func malformedHTTP(_ problem: String) -> GatewayError {
        GatewayError(kind: .malformedHTTP, status: 400, type: invalidRequestType, code: "malformed_http_request",
                     message: "The request is not valid HTTP/1.1: \(problem). The connection will be closed.", shouldRetry: false)
    }

    /// 431: the request line and headers together are larger than `limitBytes`, or have more than
    /// `maxFields` header fields. The connection is closed after the answer.
    public static func headersTooLarge(limitBytes: Int, maxFields: Int) -> GatewayError {
        GatewayError(kind: .headersTooLarge, status: 431, type: invalidRequestType, code: "request_header_fields_too_large",
                     message: "The request's headers are too large: the limit is \(limitBytes) bytes and \(maxFields) header fields. The connection will be closed.",
                     shouldRetry: false)
    }

    /// 505: the request is not HTTP/1.x, e.g. the HTTP/2 connection preface (`PRI * HTTP/2.0`) of a
    /// client speaking HTTP/2 without negotiating it. The connection is closed after the answer.
    public static func httpVersionNotSupported() -> GatewayError {
        GatewayError(kind: .httpVersionNotSupported, status: 505, type: invalidRequestType, code: "http_version_not_supported",
                     message: "Sluice speaks HTTP/1.1 (and HTTP/1.0) only; this connection used another HTTP version, such as HTTP/2. Connect with HTTP/1.1. The connection will be closed.",
                     shouldRetry: false)
    }

    /// 401: no `Authorization: Bearer …` header (OpenAI's wording).
    public static func missingAPIKey() -> GatewayError {
        GatewayError(kind: .missingAPIKey, status: 401, type: invalidRequestType, code: "invalid_api_key",
                     message: "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                     shouldRetry: false)
    }

    /// 401: the presented key is unknown or disabled. The key is masked (see `maskedAPIKey`).
    public static func invalidAPIKey(presented key: String) -> GatewayError {
        let masked = maskedAPIKey(key)
        let message = masked.map { "Incorrect API key provided: \($0). Ask your Sluice administrator for a valid key." }
            ?? "Incorrect API key provided. Ask your Sluice administrator for a valid key."
        return GatewayError(kind: .invalidAPIKey, status: 401, type: invalidRequestType, code: "invalid_api_key",
                            message: message, shouldRetry: false)
    }

    /// Keys shorter than this are never shown, not even in part.
    public static let minimumMaskableKeyLength = 16

    /// `key` as OpenAI shows it in 401 messages: its first 3 and last 4 characters around `***`
    /// (`sk-***demo`), or nil when the key is too short (or not printable ASCII) to show any of it
    /// without giving too much away.
    public static func maskedAPIKey(_ key: String) -> String? {
        let bytes = Array(key.utf8)
        guard bytes.count >= minimumMaskableKeyLength, bytes.allSatisfy({ $0 > 0x20 && $0 < 0x7F }) else { return nil }
        return String(decoding: bytes.prefix(3), as: UTF8.self) + "***" + String(decoding: bytes.suffix(4), as: UTF8.self)
    }

    /// 404: the model is not configured, or this key may not use it (OpenAI's wording).
    public static func modelNotFound(_ model: String) -> GatewayError {
        GatewayError(kind: .modelNotFound, status: 404, type: invalidRequestType, code: "model_not_found",
                     message: "The model `\(model)` does not exist or you do not have access to it.")
    }

    /// 404: no route for this path (OpenAI's wording: "Invalid URL (POST /v1/foo)").
    public static func routeNotFound(method: String, path: String) -> GatewayError {
        GatewayError(kind: .routeNotFound, status: 404, type: invalidRequestType,
                     message: "Invalid URL (\(method) \(path))")
    }

    /// 405: the path exists but not for this method.
    public static func methodNotAllowed(method: String, path: String, allowed: [String]) -> GatewayError {
        GatewayError(kind: .methodNotAllowed, status: 405, type: invalidRequestType,
                     message: "Invalid method for URL (\(method) \(path))", allowedMethods: allowed)
    }
}

// MARK: - Limits

extension GatewayError {
    /// 429: a rate limit is exhausted for now. OpenAI's wording:
    /// "Rate limit reached for gpt-4o-mini on tokens per min (TPM): Limit 200000, Used 130491,
    /// Requested 75418. Please try again in 1.772s."
    public static func rateLimited(limit: RateLimitKind, model: String, limitValue: Int, used: Int, requested: Int,
                                   retryAfterSeconds: Double, team: String? = nil) -> GatewayError {
        let message = "Rate limit reached for \(model) on \(label(limit, team: team)): Limit \(limitValue), Used \(used), Requested \(requested). Please try again in \(formatRetryDelay(seconds: retryAfterSeconds))."
        return rateLimited(type: limit.errorType, message: message, retryAfterSeconds: retryAfterSeconds)
    }

    /// 429 with a caller-worded message (prefer `rateLimited(limit:model:…)`).
    public static func rateLimited(type: String, message: String, retryAfterSeconds: Double) -> GatewayError {
        GatewayError(kind: .rateLimited, status: 429, type: type, code: "rate_limit_exceeded", message: message,
                     retryAfterSeconds: retryAfterSeconds)
    }

    /// 429 that no retry can fix: this one request costs more than the limit's whole burst.
    /// "Request too large for <model> on tokens per min (TPM): Limit 30000, Requested 34102. The
    /// input or output tokens must be reduced in order to run successfully." Sends `x-should-retry: false`.
    /// 400: the body is not UTF-8 (JSON must be).
    public static func bodyNotUTF8() -> GatewayError {
        .invalidRequest(message: "The request body is not valid UTF-8. JSON bodies must be encoded as UTF-8.", param: nil)
    }

    public static func requestTooLarge(limit: RateLimitKind, model: String, limitValue: Int, requested: Int, team: String? = nil) -> GatewayError {
        GatewayError(kind: .requestTooLarge, status: 429, type: limit.errorType, code: "rate_limit_exceeded",
                     message: "Request too large for \(model) on \(label(limit, team: team)): Limit \(limitValue), Requested \(requested). The input or output tokens must be reduced in order to run successfully.",
                     shouldRetry: false)
    }

    /// 429 `insufficient_quota`: a daily/monthly quota or budget is spent. Sends
    /// `x-should-retry: false`, and `retry-after` when the time until the quota renews is given.
    public static func quotaExceeded(limit: RateLimitKind, limitValue: Int, used: Int, renewsInSeconds: Double? = nil, team: String? = nil) -> GatewayError {
        GatewayError(kind: .quotaExceeded, status: 429, type: "insufficient_quota", code: "insufficient_quota",
                     message: "You exceeded your current quota on \(label(limit, team: team)): Limit \(limitValue), Used \(used). Please check your plan or ask your Sluice administrator.",
                     retryAfterSeconds: renewsInSeconds, shouldRetry: false)
    }

    /// 429 `insufficient_quota`: a budget (`usd_per_day`, `usd_per_month`) cannot take the request's
    /// maximum cost. Sends `x-should-retry: false`, and `retry-after` when the period's renewal is given.
    public static func budgetExceeded(limit: RateLimitKind, limitValue: USDAmount, used: USDAmount, requested: USDAmount, renewsInSeconds: Double?, team: String? = nil) -> GatewayError {
        GatewayError(kind: .quotaExceeded, status: 429, type: "insufficient_quota", code: "insufficient_quota",
                     message: "You exceeded your current quota on \(label(limit, team: team)): Limit \(limitValue), Used \(used), Requested up to \(requested). Please check your plan or ask your Sluice administrator.",
                     retryAfterSeconds: renewsInSeconds, shouldRetry: false)
    }

    /// 429 `insufficient_quota`: the key has a budget, and the model has no price to charge it with.
    public static func budgetUnpriced(model: String) -> GatewayError {
        GatewayError(kind: .quotaExceeded, status: 429, type: "insufficient_quota", code: "insufficient_quota",
                     message: "The model \(model) has no price, so it cannot be charged against this key's budget. Please ask your Sluice administrator.",
                     retryAfterSeconds: nil, shouldRetry: false)
    }

    /// 429: the key already has `limitValue` requests in flight.
    public static func concurrencyLimited(model: String, limitValue: Int, retryAfterSeconds: Double = 1, team: String? = nil) -> GatewayError {
        GatewayError(kind: .concurrencyLimited, status: 429, type: RateLimitKind.concurrency.errorType, code: "rate_limit_exceeded",
                     message: "Rate limit reached for \(model) on \(label(RateLimitKind.concurrency, team: team)): Limit \(limitValue). Please try again in \(formatRetryDelay(seconds: retryAfterSeconds)).",
                     retryAfterSeconds: retryAfterSeconds)
    }

    /// The limit's name in a 429: OpenAI's label, and for a team's limit (`keys[].team`) which team's,
    /// so the client knows its own key's limits were not the ones spent.
    static func label(_ limit: RateLimitKind, team: String?) -> String {
        guard let team else { return limit.openAILabel }
        return "\(limit.openAILabel) of team \(team)"
    }

    /// `value` rounded up to an integer, ignoring binary floating-point noise (0.12 × 1000 is
    /// 120.00000000000001 and must give 120, not 121). Non-finite or negative values give 0.
    static func roundedUp(_ value: Double) -> Int {
        guard value.isFinite, value > 0 else { return 0 }
        let clamped = min(value, 1e15)
        let nearest = clamped.rounded()
        if abs(clamped - nearest) <= 1e-9 * max(1, nearest) { return Int(nearest) }
        return Int(clamped.rounded(.up))
    }

    /// The delay in OpenAI's "Please try again in …" style: a Go duration rounded up to the
    /// millisecond (`120ms`, `1.772s`, `6m0s`), the same form as the `x-ratelimit-reset-*` headers.
    public static func formatRetryDelay(seconds: Double) -> String {
        GoDuration.string(seconds: seconds)
    }
}

// MARK: - Upstream and server errors

extension GatewayError {
    static let serverErrorType = "server_error"

    /// 502 or 503: the upstream answered with an error status or is marked down (circuit open).
    public static func upstreamUnavailable(status: Int = 502, logDetail: String? = nil) -> GatewayError {
        GatewayError(kind: .upstreamUnavailable, status: status == 503 ? 503 : 502, type: serverErrorType,
                     message: "The upstream model provider is unavailable. Please try again later.", logDetail: logDetail)
    }

    /// 504: the upstream did not answer in time.
    public static func upstreamTimeout(logDetail: String? = nil) -> GatewayError {
        GatewayError(kind: .upstreamTimeout, status: 504, type: serverErrorType,
                     message: "The upstream model provider did not respond in time. Please try again later.", logDetail: logDetail)
    }

    /// 502: no connection to the upstream could be made.
    public static func upstreamConnectFailed(logDetail: String? = nil) -> GatewayError {
        GatewayError(kind: .upstreamConnectFailed, status: 502, type: serverErrorType,
                     message: "Could not connect to the upstream model provider. Please try again later.", logDetail: logDetail)
    }

    /// 502: the upstream's response was not valid HTTP or not what the endpoint returns.
    public static func upstreamProtocolError(logDetail: String? = nil) -> GatewayError {
        GatewayError(kind: .upstreamProtocolError, status: 502, type: serverErrorType,
                     message: "The upstream model provider sent an invalid response.", logDetail: logDetail)
    }

    /// 503: Sluice itself cannot take the request now (draining for shutdown, limiter store
    /// unreachable under the `closed` policy).
    public static func serviceUnavailable(message: String = "The server is temporarily unable to handle the request. Please try again later.",
                                          retryAfterSeconds: Double? = 1, logDetail: String? = nil) -> GatewayError {
        GatewayError(kind: .serviceUnavailable, status: 503, type: serverErrorType, message: message,
                     retryAfterSeconds: retryAfterSeconds, logDetail: logDetail)
    }

    /// 503: the upstream's circuit is open; a probe may go through after `retryAfterSeconds`.
    public static func upstreamCircuitOpen(upstream: String, retryAfterSeconds: Double) -> GatewayError {
        .serviceUnavailable(message: "The upstream model provider is unavailable. Please try again later.",
                            retryAfterSeconds: max(retryAfterSeconds, 0.001), logDetail: "upstream \(upstream): circuit open")
    }

    /// 503: the rate limiter cannot decide (the `closed` failure policy while Redis is unreachable).
    public static func limiterUnavailable() -> GatewayError {
        .serviceUnavailable(message: "The rate limiter is unavailable. Please retry shortly.")
    }

    /// 503: the node is stopping and no longer takes this work.
    public static func shuttingDown() -> GatewayError {
        .serviceUnavailable(message: "The server is shutting down. Please retry shortly.")
    }

    /// 400: the prompt's text is larger than Sluice counts (`tokenizer.max_prompt_bytes`).
    public static func promptTooLarge(limitBytes: Int) -> GatewayError {
        .invalidRequest(message: "The prompt is too large to process (limit \(limitBytes) bytes).", param: nil)
    }

    /// 500: a bug or an impossible state. The client sees OpenAI's generic wording; the detail goes to logs.
    public static func `internal`(logDetail: String? = nil) -> GatewayError {
        GatewayError(kind: .internal, status: 500, type: serverErrorType,
                     message: "The server had an error while processing your request. Sorry about that!", logDetail: logDetail)
    }
}
