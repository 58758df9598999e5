// # The curl engine: threading model
//
// `CurlEngine` runs N engine threads (`CurlEventLoop`, default half the cores, named `sluice-curl-<i>`). Each thread owns, and is
// the only thread ever to touch:
//   - one `CURLM` multi handle; its connection cache is that thread's keep-alive pool
//     (`CURLMOPT_MAX_HOST_CONNECTIONS` per host, `CURLMOPT_MAXCONNECTS` idle), so a host sees at most
//     threads × maxConnectionsPerHost connections; HTTP/2 exchanges are multiplexed
//     (`CURLPIPE_MULTIPLEX`, `CURLOPT_PIPEWAIT`), up to `maxConcurrentStreams` per connection, so an
//     HTTP/2 upstream usually sees one connection per engine thread;
//   - the easy handles of its transfers and a free list of idle easy handles for reuse;
//   - an epoll set (level-triggered) holding curl's sockets, a timerfd for curl's timer, a second
//     timerfd for the engine's own first-byte and stall deadlines, and an eventfd for wakeups.
// The thread loops on `epoll_wait` and calls `curl_multi_socket_action` for ready sockets and for the
// curl timer (the `ephiperfifo.c` design); after each round it reads finished transfers with
// `curl_multi_info_read`.
//
// Other threads never call curl. They only put a `CurlEventLoop.Command` (start, resume, cancel,
// shutdown) into the loop's locked inbox and write the eventfd; the engine thread takes the whole batch
// at once. `execute` picks a thread round-robin and awaits the response head; the head and the body
// chunks cross back as Sendable values (`UpstreamResponse`, NIO `ByteBuffer`s through an
// `NIOThrowingAsyncSequenceProducer`), whose demand signals (`produceMore`, `didTerminate`) again
// become resume/cancel commands.
//
// Each transfer (`UpstreamTransfer`, driven by `UpstreamTransferStateMachine`) is held strongly by its
// loop's registry from `curl_multi_add_handle` until after `curl_multi_remove_handle`, so the raw
// pointers given to curl callbacks stay valid. Handles are removed, reset and cleaned up only on their
// own thread, never from inside a curl callback.

import CCurl
import Glibc
import Logging
import NIOCore
import Synchronization

/// The libcurl client engine for upstream requests: HTTP/1.1 on pooled keep-alive connections, or
/// HTTP/2 with many exchanges multiplexed on one connection per engine thread and upstream;
/// streaming with backpressure, cancellation, timeouts. Call ``start()`` before use and ``shutdown()`` at the end.
public final class CurlEngine: Sendable {
    /// How often each engine thread checks first-byte and stall deadlines (the timers' resolution).
    public static let deadlineCheckIntervalMs = 50

    private enum RunState {
        case notStarted
        case running([CurlEventLoop])
        case stopped
    }

    private let configuration: Configuration
    private let logger: Logger
    private let counters = CurlEngineCounters()
    private let runState = Mutex(RunState.notStarted)
    private let nextLoop = Atomic<Int>(0)

    public init(configuration: Configuration, logger: Logger) {
        self.configuration = configuration
        self.logger = logger
    }

    /// Starts the engine threads. Throws if the configuration is invalid or the threads' resources
    /// (fds, multi handles, threads) cannot be created; calling it twice is an error.
    public func start() throws(CurlEngineStartError) {
        try configuration.validate()
        try CurlGlobal.initializeOnce()
        let loops = try runState.withLock { state throws(CurlEngineStartError) -> [CurlEventLoop] in
            guard case .notStarted = state else { throw CurlEngineStartError(detail: "the engine was already started") }
            var loops: [CurlEventLoop] = []
            for index in 0..<configuration.threads {
                loops.append(try CurlEventLoop(index: index, configuration: configuration, counters: counters, logger: logger))
            }
            state = .running(loops)
            return loops
        }
        do {
            for loop in loops { try loop.startThread() }
        } catch {
            // Leave nothing running: the threads that did start stop on their own (detached).
            runState.withLock { $0 = .stopped }
            for loop in loops { loop.stopWithoutJoining() }
            throw error
        }
        logger.info("curl engine started", metadata: ["threads": "\(configuration.threads)", "libcurl": "\(CurlGlobal.version)"])
    }

    /// Ends every in-flight transfer with `.shuttingDown` (pending `execute` calls throw it, open bodies
    /// finish with it), cleans up all handles on their own threads and joins the threads. Later
    /// `execute` calls throw `.shuttingDown`. Safe to call more than once.
    public func shutdown() async {
        let loops = runState.withLock { state -> [CurlEventLoop] in
            defer { state = .stopped }
            if case .running(let loops) = state { return loops }
            return []
        }
        for loop in loops {
            await loop.shutdownAndJoin()
        }
        if !loops.isEmpty { logger.info("curl engine stopped") }
    }

    /// Sends the request and returns once the final response head (status + headers) arrived; the body
    /// chunks follow through `response.body`. Cancelling the calling task cancels the transfer.
    ///
    /// - Throws: ``UpstreamError`` — connect/first-byte failures and timeouts, `.cancelled`,
    ///   `.tooManyTransfers`, `.shuttingDown`, or `.other` for a malformed request.
    public func execute(_ request: UpstreamRequest) async throws(UpstreamError) -> UpstreamResponse {
        try UpstreamRequestValidator.validate(request)
        guard case .running(let loops) = runState.withLock({ $0 }) else {
            throw UpstreamError(kind: .shuttingDown, detail: "the upstream engine is not running")
        }
        guard counters.inFlight.add(1, ordering: .relaxed).newValue <= configuration.maxInFlightTransfers else {
            counters.inFlight.subtract(1, ordering: .relaxed)
            throw UpstreamError(kind: .tooManyTransfers, detail: "more than \(configuration.maxInFlightTransfers) upstream transfers in flight")
        }
        guard !Task.isCancelled else {
            counters.inFlight.subtract(1, ordering: .relaxed)
            counters.cancelled.add(1, ordering: .relaxed)
            throw UpstreamError(kind: .cancelled, detail: "the calling task was cancelled")
        }
        let loop = loops[(nextLoop.add(1, ordering: .relaxed).newValue & Int.max) % loops.count]
        let transfer = UpstreamTransfer(request: request, loop: loop)

        let result = await withTaskCancellationHandler {
            await withCheckedContinuation { (continuation: CurlEventLoop.HeadContinuation) in
                if !loop.enqueue(.start(transfer, continuation)) {
                    counters.inFlight.subtract(1, ordering: .relaxed)
                    continuation.resume(returning: .failure(UpstreamError(kind: .shuttingDown, detail: "the upstream engine is shutting down")))
                }
            }
        } onCancel: {
            loop.enqueue(.cancel(transfer))
        }
        return try result.get()
    }

    /// A snapshot of the engine's counters (each read atomically, not all at one instant).
    public var stats: CurlEngineStats {
        CurlEngineStats(
            transfersStarted: counters.started.load(ordering: .relaxed),
            transfersCompleted: counters.completed.load(ordering: .relaxed),
            transfersFailed: counters.failed.load(ordering: .relaxed),
            transfersCancelled: counters.cancelled.load(ordering: .relaxed),
            connectionsOpened: counters.connectionsOpened.load(ordering: .relaxed),
            activeTransfers: counters.active.load(ordering: .relaxed),
            bufferedBodyBytes: counters.bufferedBodyBytes.load(ordering: .relaxed)
        )
    }
}

extension CurlEngine {
    /// Engine settings. Every default is a named constant.
    public struct Configuration: Sendable, Hashable {
        /// Engine threads, each with its own multi handle and connection pool. Default: half the online
        /// cores, rounded up.
        public var threads: Int
        /// Per thread and host (`CURLMOPT_MAX_HOST_CONNECTIONS`); more transfers queue inside curl, and that
        /// wait counts against their first-byte deadline.
        public var maxConnectionsPerHost: Int
        /// Idle connections kept per thread (`CURLMOPT_MAXCONNECTS`).
        public var maxIdleConnections: Int
        /// A pooled connection older than this is not reused (`CURLOPT_MAXAGE_CONN`); keep it below the
        /// upstream's idle timeout.
        public var maxConnectionAgeSeconds: Int
        /// A body stream holding this many unread bytes pauses its transfer...
        public var highWatermarkBytes: Int
        /// ...and resumes it once the consumer drained below this.
        public var lowWatermarkBytes: Int
        /// `execute` throws `.tooManyTransfers` beyond this many transfers in flight (whole engine).
        public var maxInFlightTransfers: Int
        /// HTTP/2 streams per connection at most (`CURLMOPT_MAX_CONCURRENT_STREAMS`); the server's
        /// `SETTINGS_MAX_CONCURRENT_STREAMS` caps it further. More exchanges open another connection.
        public var maxConcurrentStreams: Int

        public static let defaultMaxConnectionsPerHost = 128
        /// For a caller that limits connections itself (the gateway's ``UpstreamPool``s): above any
        /// pool's capacity (`max_connections` is at most 100,000) and the in-flight limit.
        public static let uncappedConnectionsPerHost = 1_000_000
        public static let defaultMaxIdleConnections = 256
        public static let defaultMaxConnectionAgeSeconds = 50
        public static let defaultHighWatermarkBytes = 256 * 1024
        public static let defaultLowWatermarkBytes = 64 * 1024
        public static let defaultMaxInFlightTransfers = 10_000
        /// libcurl's own default, and the least RFC 9113 asks a server to allow; servers commonly
        /// allow 100–256 (nginx 128), which caps it anyway. One TCP connection carries them all, so a
        /// lost packet stalls them all: more streams per connection is not free.
        public static let defaultMaxConcurrentStreams = 100
        /// `CURL_MAX_WRITE_SIZE`: the most bytes one write callback (one body chunk) carries.
        public static let maxCurlWriteBytes = Int(CURL_MAX_WRITE_SIZE)

        /// Half the cores, rounded up — NIO's count, which follows a container's CPU limit (cgroup
        /// quota, cpuset) as the event loops' default does, not the host's processors. Why not one per
        /// core: an engine thread does about a third of a request's work in the gateway (the event
        /// loops the rest), so half as many engine threads as event loops keep up, and each one batches
        /// more commands and socket events per wake-up. Measured on 2 cores: one engine thread served
        /// the embedded row 5–30 % faster than two in 8 of 10 alternating runs (README, performance).
        public static var defaultThreads: Int { (max(1, System.coreCount) + 1) / 2 }

        public init(
            threads: Int = Configuration.defaultThreads,
            maxConnectionsPerHost: Int = Configuration.defaultMaxConnectionsPerHost,
            maxIdleConnections: Int = Configuration.defaultMaxIdleConnections,
            maxConnectionAgeSeconds: Int = Configuration.defaultMaxConnectionAgeSeconds,
            highWatermarkBytes: Int = Configuration.defaultHighWatermarkBytes,
            lowWatermarkBytes: Int = Configuration.defaultLowWatermarkBytes,
            maxInFlightTransfers: Int = Configuration.defaultMaxInFlightTransfers,
            maxConcurrentStreams: Int = Configuration.defaultMaxConcurrentStreams
        ) {
            self.threads = threads
            self.maxConnectionsPerHost = maxConnectionsPerHost
            self.maxIdleConnections = maxIdleConnections
            self.maxConnectionAgeSeconds = maxConnectionAgeSeconds
            self.highWatermarkBytes = highWatermarkBytes
            self.lowWatermarkBytes = lowWatermarkBytes
            self.maxInFlightTransfers = maxInFlightTransfers
            self.maxConcurrentStreams = maxConcurrentStreams
        }

        func validate() throws(CurlEngineStartError) {
            func require(_ condition: Bool, _ message: String) throws(CurlEngineStartError) {
                if !condition { throw CurlEngineStartError(detail: "invalid curl engine configuration: \(message)") }
            }
            try require((1...256).contains(threads), "threads must be 1...256, got \(threads)")
            try require(maxConnectionsPerHost >= 1, "maxConnectionsPerHost must be at least 1")
            try require(maxIdleConnections >= 1, "maxIdleConnections must be at least 1")
            try require(maxConnectionAgeSeconds >= 1, "maxConnectionAgeSeconds must be at least 1")
            try require(lowWatermarkBytes >= 0, "lowWatermarkBytes must not be negative")
            try require(highWatermarkBytes > lowWatermarkBytes, "highWatermarkBytes must exceed lowWatermarkBytes")
            // The pause logic relies on one curl write (at most 16 KiB) never reaching the high watermark alone.
            try require(highWatermarkBytes > Self.maxCurlWriteBytes, "highWatermarkBytes must exceed \(Self.maxCurlWriteBytes)")
            try require(maxInFlightTransfers >= 1, "maxInFlightTransfers must be at least 1")
            try require(maxConcurrentStreams >= 1, "maxConcurrentStreams must be at least 1")
        }
    }
}

/// Engine counters for metrics. Cumulative except `activeTransfers` and `bufferedBodyBytes`.
///
/// Every `execute` call that passed validation and the in-flight limit ends in exactly one of
/// completed, failed or cancelled; `transfersStarted` counts only those that reached curl.
public struct CurlEngineStats: Sendable, Hashable {
    /// Transfers handed to curl.
    public let transfersStarted: Int
    /// Transfers that delivered a complete response (any HTTP status).
    public let transfersCompleted: Int
    /// Transfers that ended with an error other than cancellation or shutdown.
    public let transfersFailed: Int
    /// Transfers cancelled by the caller or by shutdown.
    public let transfersCancelled: Int
    /// New upstream connections (sum of `CURLINFO_NUM_CONNECTS`); low relative to transfers = pool works.
    public let connectionsOpened: Int
    /// Transfers currently attached to a multi handle.
    public let activeTransfers: Int
    /// Body bytes received from upstreams and not yet read by consumers.
    public let bufferedBodyBytes: Int
}

/// Why ``CurlEngine/start()`` failed.
public struct CurlEngineStartError: Error, Sendable, Hashable, CustomStringConvertible {
    public let detail: String
    public var description: String { "CurlEngineStartError: \(detail)" }
}

/// Shared by all engine threads of one engine.
final class CurlEngineCounters: Sendable {
    let started = Atomic<Int>(0)
    let completed = Atomic<Int>(0)
    let failed = Atomic<Int>(0)
    let cancelled = Atomic<Int>(0)
    let connectionsOpened = Atomic<Int>(0)
    let active = Atomic<Int>(0)
    let inFlight = Atomic<Int>(0)
    let bufferedBodyBytes = Atomic<Int>(0)

    func countEnd(_ kind: UpstreamError.Kind) {
        switch kind {
        case .cancelled, .shuttingDown: cancelled.add(1, ordering: .relaxed)
        default: failed.add(1, ordering: .relaxed)
        }
    }
}

/// Process-wide libcurl setup, done once before any engine thread exists.
enum CurlGlobal {
    private static let initResult: CURLcode = {
        // libcurl (and OpenSSL) may write to sockets the peer closed; that must be an EPIPE error, not a
        // process-killing signal. CURLOPT_NOSIGNAL covers curl's own timeouts.
        signal(SIGPIPE, SIG_IGN)
        return curl_global_init(Int(CURL_GLOBAL_DEFAULT))
    }()

    static func initializeOnce() throws(CurlEngineStartError) {
        guard initResult == CURLE_OK else {
            throw CurlEngineStartError(detail: "curl_global_init failed: \(initResult.rawValue)")
        }
    }

    static var version: String { String(cString: curl_version()) }

    /// libcurl's built-in CA bundle and CA directory (`CURLINFO_CAINFO`, `CURLINFO_CAPATH`: the
    /// defaults it was built with, e.g. Debian's `/etc/ssl/certs/ca-certificates.crt` and
    /// `/etc/ssl/certs`); nil when it has none. Set back on a handle after a transfer that used a
    /// CA file of its own.
    static let defaultCAFile: String? = builtInString(CURLINFO_CAINFO)
    static let defaultCAPath: String? = builtInString(CURLINFO_CAPATH)

    private static func builtInString(_ info: CURLINFO) -> String? {
        guard initResult == CURLE_OK, let handle = curl_easy_init() else { return nil }
        defer { curl_easy_cleanup(handle) }
        var value: UnsafeMutableRawPointer?
        guard sluice_curl_easy_getinfo_pointer(handle, info, &value) == CURLE_OK, let value else { return nil }
        return String(cString: value.assumingMemoryBound(to: CChar.self))
    }
}

/// Rejects requests that could not be sent safely (header injection, non-HTTP URLs, absurd sizes)
/// before they reach an engine thread.
enum UpstreamRequestValidator {
    static let maxHeaderFields = 256
    static let maxURLBytes = 16 * 1024

    static func validate(_ request: UpstreamRequest) throws(UpstreamError) {
        func fail(_ detail: String) -> UpstreamError { UpstreamError(kind: .other, detail: "invalid upstream request: \(detail)") }
        let url = request.url.utf8
        guard url.count <= maxURLBytes else { throw fail("URL longer than \(maxURLBytes) bytes") }
        guard request.url.hasPrefix("http://") || request.url.hasPrefix("https://") else { throw fail("URL must be http or https") }
        switch request.httpVersion {
        case .http2 where !request.isTLS:
            throw fail("HTTP/2 (.http2) is negotiated by TLS: it needs an https URL (.h2c for cleartext)")
        case .h2c where request.isTLS:
            throw fail("cleartext HTTP/2 (.h2c) needs an http URL (.http2 or .auto over TLS)")
        default:
            break
        }
        guard !url.contains(where: { $0 <= 0x20 || $0 == 0x7F }) else { throw fail("URL contains whitespace or control bytes") }
        guard !request.method.isEmpty, request.method.utf8.allSatisfy(isTokenByte) else { throw fail("method is not an HTTP token") }
        guard request.headers.count <= maxHeaderFields else { throw fail("more than \(maxHeaderFields) header fields") }
        for header in request.headers {
            guard !header.name.isEmpty, header.name.utf8.allSatisfy(isTokenByte) else {
                throw fail("header name is not an HTTP token")
            }
            guard !header.value.utf8.contains(where: { ($0 < 0x20 && $0 != 0x09) || $0 == 0x7F }) else {
                throw fail("header \(header.name) contains control bytes")
            }
        }
        if request.timeouts.connectMs <= 0 || request.timeouts.firstByteMs <= 0 || request.timeouts.stallMs <= 0
            || (request.timeouts.totalMs.map { $0 <= 0 } ?? false)
        {
            throw fail("timeouts must be positive")
        }
    }

    private static func isTokenByte(_ byte: UInt8) -> Bool {
        switch byte {
        case UInt8(ascii: "a")...UInt8(ascii: "z"), UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "0")...UInt8(ascii: "9"):
            return true
        default:
            return "!#$%&'*+-.^_`|~".utf8.contains(byte)
        }
    }
}
