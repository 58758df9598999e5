/// How long a transfer may wait at each phase before it fails.
///
/// All values are milliseconds. The first-byte and stall deadlines are enforced by the engine thread
/// (checked every ``CurlEngine/deadlineCheckIntervalMs``), connect and total by libcurl.
public struct UpstreamTimeouts: Sendable, Hashable {
    /// TCP (and TLS) connect, per attempt (`CURLOPT_CONNECTTIMEOUT_MS`).
    public var connectMs: Int
    /// From the start of the transfer (including any wait inside curl for a connection; the gateway's
    /// ``UpstreamPool`` queue comes before and is bounded on its own) until the first
    /// byte of the response head arrives.
    public var firstByteMs: Int
    /// Longest gap between two received bytes once the response started. Time spent paused because
    /// the consumer is slow does not count.
    public var stallMs: Int
    /// Whole transfer (`CURLOPT_TIMEOUT_MS`); `nil` for streams, which may run as long as bytes flow.
    public var totalMs: Int?

    public static let defaultConnectMs = 5_000
    public static let defaultFirstByteMs = 120_000
    public static let defaultStallMs = 60_000

    public init(
        connectMs: Int = UpstreamTimeouts.defaultConnectMs,
        firstByteMs: Int = UpstreamTimeouts.defaultFirstByteMs,
        stallMs: Int = UpstreamTimeouts.defaultStallMs,
        totalMs: Int? = nil
    ) {
        self.connectMs = connectMs
        self.firstByteMs = firstByteMs
        self.stallMs = stallMs
        self.totalMs = totalMs
    }
}

/// Which HTTP version a request may travel on (`upstreams[].http_version`).
///
/// HTTP/2 exchanges to one upstream share a connection per engine thread (libcurl multiplexes them,
/// up to ``CurlEngine/Configuration/maxConcurrentStreams`` and the server's own limit per
/// connection); HTTP/1.1 takes a connection per exchange in flight.
public enum UpstreamHTTPVersion: Sendable, Hashable {
    /// Over TLS (`https://`): HTTP/2 when the server offers it by ALPN, else HTTP/1.1
    /// (`CURL_HTTP_VERSION_2TLS`). Cleartext (`http://`): HTTP/1.1.
    case auto
    /// HTTP/1.1 only (`CURL_HTTP_VERSION_1_1`).
    case http1_1
    /// HTTP/2 over TLS, required: ALPN offers h2 (and http/1.1, as curl always does), and a
    /// connection on which the server chose anything but h2 fails before the request is sent
    /// (`.connectFailed`). `https://` only.
    case http2
    /// Cleartext HTTP/2 by prior knowledge: no upgrade, a connection starts with HTTP/2's preface
    /// (`CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE`), later exchanges share it; a server that does not
    /// speak it fails the exchange. `http://` only. (How libcurl 7.88 is kept from breaking a shared
    /// connection: `CurlEventLoop+H2C.swift`.)
    case h2c

    /// Whether an exchange may share its connection with others (HTTP/2 possible): such transfers
    /// wait for a connection still being set up to this upstream (`CURLOPT_PIPEWAIT`) instead of
    /// opening one of their own, so a burst of exchanges opens one connection, not one each.
    func mayMultiplex(overTLS: Bool) -> Bool {
        switch self {
        case .auto, .http2: overTLS
        case .h2c: true
        case .http1_1: false
        }
    }
}

/// One request to an upstream. The engine sends it as given (plus an empty `Expect:` so libcurl
/// never waits for `100 Continue`), over the HTTP version ``httpVersion`` allows; it adds no policy of
/// its own.
public struct UpstreamRequest: Sendable {
    /// Absolute `http://` or `https://` URL.
    public var url: String
    /// `"POST"`, `"GET"`, or any other token (sent as a custom method).
    public var method: String
    /// Sent in order. Include `Content-Type` for bodies: without it libcurl sends
    /// `application/x-www-form-urlencoded` on POST. Connection-specific fields (`Connection`,
    /// `Keep-Alive`, `Transfer-Encoding`, `Upgrade`) are not sent over HTTP/2 (libcurl drops them).
    public var headers: [(name: String, value: String)]
    public var body: [UInt8]
    public var timeouts: UpstreamTimeouts
    /// `.http2` needs an `https://` URL and `.h2c` an `http://` one (else the request is invalid).
    public var httpVersion: UpstreamHTTPVersion
    /// PEM file of the CAs an `https://` upstream's certificate must chain to, instead of the system's
    /// trust roots (`CURLOPT_CAINFO`, with no CA directory); nil: the system's. Ignored for `http://`.
    public var caFile: String?

    public init(
        url: String,
        method: String = "POST",
        headers: [(name: String, value: String)] = [],
        body: [UInt8] = [],
        timeouts: UpstreamTimeouts = UpstreamTimeouts(),
        httpVersion: UpstreamHTTPVersion = .auto,
        caFile: String? = nil
    ) {
        self.url = url
        self.method = method
        self.headers = headers
        self.body = body
        self.timeouts = timeouts
        self.httpVersion = httpVersion
        self.caFile = caFile
    }

    /// Whether the URL is `https://` (the validator has checked it is `http://` or `https://`).
    var isTLS: Bool { url.hasPrefix("https://") }

    /// Scheme, host and port: the URL up to its path.
    var origin: String {
        guard let schemeEnd = url.range(of: "://") else { return url }
        let pathStart = url[schemeEnd.upperBound...].firstIndex { $0 == "/" || $0 == "?" || $0 == "#" } ?? url.endIndex
        return String(url[..<pathStart])
    }
}

/// The upstream's response head, available as soon as it arrived; the body follows through ``body``.
public struct UpstreamResponse: Sendable {
    /// The final status code (interim `1xx` heads are skipped).
    public let status: Int
    /// Header fields in arrival order, names as sent. Hop-by-hop fields are included; filter before relaying.
    public let headers: [(name: String, value: String)]
    /// The body chunks. Iterate it or drop it: dropping it cancels the transfer.
    public let body: UpstreamBody
    /// How the transfer reached the upstream (for traces); nil when the engine does not say.
    public var connection: UpstreamConnectionInfo?

    public init(status: Int, headers: [(name: String, value: String)], body: UpstreamBody, connection: UpstreamConnectionInfo? = nil) {
        self.status = status
        self.headers = headers
        self.body = body
        self.connection = connection
    }

    /// The first value of a header field, compared case-insensitively.
    public func headerValue(_ name: String) -> String? {
        headers.first { $0.name.caseInsensitiveEquals(name) }?.value
    }
}

/// Why a transfer did not complete. `detail` is libcurl's message (never request data or secrets).
public struct UpstreamError: Error, Sendable, Hashable, CustomStringConvertible {
    public enum Kind: Sendable, Hashable {
        /// DNS, TCP refused/unreachable, TLS handshake or certificate failure.
        case connectFailed
        /// No connection within `UpstreamTimeouts.connectMs`.
        case connectTimeout
        /// No response byte within `UpstreamTimeouts.firstByteMs` of the start.
        case firstByteTimeout
        /// No byte for `UpstreamTimeouts.stallMs` after the response started.
        case stallTimeout
        /// The whole transfer exceeded `UpstreamTimeouts.totalMs`.
        case totalTimeout
        /// The connection broke or closed before the response was complete.
        case connectionDropped
        /// The caller cancelled: its task was cancelled or it stopped reading the body.
        case cancelled
        /// The engine is shutting down (or was never started).
        case shuttingDown
        /// More than `Configuration.maxInFlightTransfers` transfers were in flight.
        case tooManyTransfers
        /// Anything else, including a malformed request or an oversized response head.
        case other
    }

    public let kind: Kind
    public let detail: String

    public init(kind: Kind, detail: String) {
        self.kind = kind
        self.detail = detail
    }

    public var description: String { "UpstreamError.\(kind): \(detail)" }
}

extension String {
    func caseInsensitiveEquals(_ other: String) -> Bool {
        let lhs = self.utf8
        let rhs = other.utf8
        guard lhs.count == rhs.count else { return false }
        return zip(lhs, rhs).allSatisfy { asciiLowercased($0) == asciiLowercased($1) }
    }
}

@inline(__always)
func asciiLowercased(_ byte: UInt8) -> UInt8 {
    (byte >= 0x41 && byte <= 0x5A) ? byte | 0x20 : byte
}

/// How a transfer reached the upstream, as libcurl reports it when the response head arrives.
public struct UpstreamConnectionInfo: Sendable, Hashable {
    /// The HTTP version of an exchange (`CURLINFO_HTTP_VERSION`), in the form logs and metrics
    /// show it: `1.0`, `1.1`, `2`, `3`.
    public enum HTTPVersion: String, Sendable, Hashable, CaseIterable {
        case http1_0 = "1.0"
        case http1_1 = "1.1"
        case http2 = "2"
        case http3 = "3"
    }

    /// A new connection was made for this transfer (false: a pooled one was reused, or for HTTP/2
    /// another exchange's connection was shared).
    public var newConnection: Bool
    /// From the transfer's start until the TCP connection was up (`CURLINFO_CONNECT_TIME_T`), in
    /// microseconds; 0 for a reused connection.
    public var connectMicroseconds: Int64
    /// The HTTP version the response came on; nil when libcurl did not say.
    public var httpVersion: HTTPVersion?

    public init(newConnection: Bool, connectMicroseconds: Int64, httpVersion: HTTPVersion? = nil) {
        self.newConnection = newConnection
        self.connectMicroseconds = connectMicroseconds
        self.httpVersion = httpVersion
    }
}
