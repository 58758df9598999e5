import NIOCore
import NIOHTTP1

/// How the mock answers a request that carries no `x-mock-*` header: the command-line defaults.
struct MockBehaviour: Sendable {
    /// Completion tokens per choice before `max_tokens` caps them.
    var completionTokens: Int
    /// Pause between two streamed tokens.
    var tokenDelayMilliseconds: Int
    /// Pause before the response head is sent.
    var firstByteDelayMilliseconds: Int
    /// Status to answer with; anything outside 200...299 answers an OpenAI error body.
    var status: Int
    /// Close the connection after this many token chunks (nil: never).
    var dropAfterTokens: Int?
    /// Stop sending after this many token chunks and hold the connection (nil: never).
    var stallAfterTokens: Int?
    /// Largest request body accepted; larger ones get 413.
    var maxBodyBytes: Int
    /// Sent as `retry-after` with every error status (nil: none), as a provider's 429 does.
    var retryAfterSeconds: Int? = nil
    /// The model's context window, in tokens counted as body bytes ÷ 4: a longer request gets OpenAI's
    /// 400 `context_length_exceeded` (nil: no window).
    var contextWindowTokens: Int? = nil
}

/// Bounds on the knobs so that a typo in a test cannot exhaust memory or park a connection for days.
enum MockLimits {
    /// Largest `completion tokens per choice × n` the mock produces for one request.
    static let maximumTotalCompletionTokens = 1_000_000
    /// Largest `n` (OpenAI's own limit).
    static let maximumChoices = 128
    /// Largest delay accepted from a header or flag: one hour.
    static let maximumDelayMilliseconds = 3_600_000
    /// Input tokens a Responses request with `previous_response_id` reports on top of its own input: the
    /// stored conversation the mock pretends to have.
    static let previousResponseInputTokens = 100
}

/// A failure injected into a response.
enum InjectedFault: Sendable, Equatable {
    /// Send this many token chunks, then close the TCP connection without the terminating chunk.
    case dropAfter(tokens: Int)
    /// Send this many token chunks, then send nothing more and keep the connection open.
    case stallAfter(tokens: Int)

    /// Token chunks sent before the fault strikes.
    var tokensBeforeFault: Int {
        switch self {
        case .dropAfter(let tokens), .stallAfter(let tokens): tokens
        }
    }
}

/// The behaviour of one request: the defaults overridden by that request's `x-mock-*` headers.
struct RequestKnobs: Sendable {
    var completionTokens: Int
    var tokenDelay: TimeAmount
    var firstByteDelay: TimeAmount
    var status: Int
    var fault: InjectedFault?
    /// Completion tokens to report in `usage` instead of those sent (an upstream that lies).
    var reportedCompletionTokens: Int?
}

/// A malformed `x-mock-*` header; answered with 400 so that a broken test is loud.
struct RequestKnobError: Error, Sendable {
    let header: String
    let message: String
}

extension RequestKnobs {
    /// Header names of the per-request knobs.
    enum Header {
        static let completionTokens = "x-mock-completion-tokens"
        static let tokenDelay = "x-mock-token-delay-ms"
        static let firstByteDelay = "x-mock-first-byte-delay-ms"
        static let status = "x-mock-status"
        static let dropAfter = "x-mock-drop-after"
        static let stallAfter = "x-mock-stall-after"
        static let reportedCompletionTokens = "x-mock-reported-completion-tokens"
    }

    /// Resolves the knobs of one request.
    /// - Throws: `RequestKnobError` naming the header when a header is present but not a valid number.
    init(headers: HTTPHeaders, defaults: MockBehaviour) throws(RequestKnobError) {
        self.completionTokens = try Self.integer(
            headers, Header.completionTokens, default: defaults.completionTokens,
            range: 0...MockLimits.maximumTotalCompletionTokens)
        self.tokenDelay = .milliseconds(Int64(try Self.integer(
            headers, Header.tokenDelay, default: defaults.tokenDelayMilliseconds,
            range: 0...MockLimits.maximumDelayMilliseconds)))
        self.firstByteDelay = .milliseconds(Int64(try Self.integer(
            headers, Header.firstByteDelay, default: defaults.firstByteDelayMilliseconds,
            range: 0...MockLimits.maximumDelayMilliseconds)))
        self.status = try Self.integer(headers, Header.status, default: defaults.status, range: 200...599)
        self.reportedCompletionTokens = try Self.optionalInteger(headers, Header.reportedCompletionTokens, range: 0...Int.max)
        let dropAfter = try Self.optionalInteger(headers, Header.dropAfter, range: 0...Int.max)
        let stallAfter = try Self.optionalInteger(headers, Header.stallAfter, range: 0...Int.max)
        // A header wins over a command-line default; drop wins over stall when both are asked for.
        if let dropAfter {
            self.fault = .dropAfter(tokens: dropAfter)
        } else if let stallAfter {
            self.fault = .stallAfter(tokens: stallAfter)
        } else if let tokens = defaults.dropAfterTokens {
            self.fault = .dropAfter(tokens: tokens)
        } else if let tokens = defaults.stallAfterTokens {
            self.fault = .stallAfter(tokens: tokens)
        } else {
            self.fault = nil
        }
    }

    private static func integer(
        _ headers: HTTPHeaders, _ name: String, default value: Int, range: ClosedRange<Int>
    ) throws(RequestKnobError) -> Int {
        try optionalInteger(headers, name, range: range) ?? value
    }

    private static func optionalInteger(
        _ headers: HTTPHeaders, _ name: String, range: ClosedRange<Int>
    ) throws(RequestKnobError) -> Int? {
        guard let text = headers.first(name: name) else { return nil }
        guard let value = Int(text.trimmingASCIISpaces()), range.contains(value) else {
            throw RequestKnobError(
                header: name,
                message: "\(name) must be an integer in \(range.lowerBound)...\(range.upperBound), got \"\(text)\"")
        }
        return value
    }
}

extension String {
    fileprivate func trimmingASCIISpaces() -> Substring {
        var slice = Substring(self)
        while slice.first == " " || slice.first == "\t" { slice.removeFirst() }
        while slice.last == " " || slice.last == "\t" { slice.removeLast() }
        return slice
    }
}
