import CCurl
import SluiceCore
import NIOCore
import Synchronization

/// One transfer's context: the request, its state machine, its easy handle and the C callbacks'
/// target.
///
/// Ownership: everything except ``request``, ``loop`` and ``hasEnded`` belongs to the engine thread
/// of ``loop`` and is touched only there (in commands, timers and curl callbacks). The loop's registry
/// holds a strong reference from `curl_multi_add_handle` until after `curl_multi_remove_handle`, so the
/// unretained pointer given to curl (`CURLOPT_PRIVATE`, `WRITEDATA`, `HEADERDATA`) is always valid.
final class UpstreamTransfer: @unchecked Sendable {
    /// Bounds on the response head (bad upstreams must not grow memory without limit).
    static let maxResponseHeadBytes = 64 * 1024
    static let maxResponseHeaderFields = 256

    let request: UpstreamRequest
    let loop: CurlEventLoop
    private let ended = Atomic<Bool>(false)

    /// True once the transfer reached a terminal state (readable from any thread).
    var hasEnded: Bool { ended.load(ordering: .acquiring) }

    // MARK: Engine thread only

    var machine = UpstreamTransferStateMachine()
    var handle: UnsafeMutableRawPointer?
    var handleInMulti = false
    var requestHeaderList: UnsafeMutablePointer<curl_slist>?
    var headContinuation: CurlEventLoop.HeadContinuation?
    var bodySource: UpstreamBody.Producer.Source?
    var bodyAccount: BodyBufferAccount?
    private var responseHeaders: [(name: String, value: String)] = []
    private var responseHeadBytes = 0
    var startedAtNs: UInt64 = 0
    var firstByteAtNs: UInt64?
    var lastByteAtNs: UInt64 = 0
    /// Set when a callback made curl fail on purpose; overrides curl's own error classification.
    var abortReason: UpstreamError?
    /// `.h2c` only: this transfer opens a connection by prior knowledge (else it shares one as plain
    /// HTTP/2); see `CurlEventLoop+H2C.swift`.
    var opensH2CConnection = false
    /// `.h2c` only: the prerequisite callback refused the new connection this follower got; the
    /// engine sends it again as an opener.
    var reopensAsH2COpener = false
    /// `CURLOPT_ERRORBUFFER`: curl writes its human-readable message here.
    let errorBuffer: UnsafeMutablePointer<CChar>

    init(request: UpstreamRequest, loop: CurlEventLoop) {
        self.request = request
        self.loop = loop
        errorBuffer = .allocate(capacity: Int(CURL_ERROR_SIZE))
        errorBuffer.initialize(to: 0)
    }

    deinit {
        errorBuffer.deallocate()
    }

    func markEnded() {
        ended.store(true, ordering: .releasing)
    }

    var curlErrorMessage: String? {
        errorBuffer.pointee == 0 ? nil : String(cString: errorBuffer)
    }

    // MARK: curl callbacks (engine thread, from inside libcurl: never call back into the multi handle)

    /// One response header line including its line ending. Returns false to make curl abort.
    func receiveHeaderLine(_ line: UnsafeRawBufferPointer) -> Bool {
        let now = MonotonicClock.nanoseconds()
        if firstByteAtNs == nil { firstByteAtNs = now }
        lastByteAtNs = now
        // Trailers of a chunked body also come through here: only the head matters.
        guard machine.state == .started else { return true }

        responseHeadBytes += line.count
        guard responseHeadBytes <= Self.maxResponseHeadBytes else {
            abortReason = UpstreamError(kind: .other, detail: "upstream response head exceeds \(Self.maxResponseHeadBytes) bytes")
            return false
        }
        var end = line.count
        while end > 0, line[end - 1] == UInt8(ascii: "\n") || line[end - 1] == UInt8(ascii: "\r") { end -= 1 }
        let content = UnsafeRawBufferPointer(rebasing: line[0..<end])

        if content.isEmpty {
            return endOfHead()
        }
        if content.starts(with: "HTTP/".utf8) {
            // Status line of a new head (the final one after any interim 1xx): start over.
            responseHeaders.removeAll(keepingCapacity: true)
            return true
        }
        if content[0] == UInt8(ascii: " ") || content[0] == UInt8(ascii: "\t") {
            // Obsolete line folding: continuation of the previous field's value.
            if let last = responseHeaders.indices.last {
                responseHeaders[last].value += " " + String(decoding: trimmed(content), as: UTF8.self)
            }
            return true
        }
        guard let colon = content.firstIndex(of: UInt8(ascii: ":")), colon > 0 else { return true }
        guard responseHeaders.count < Self.maxResponseHeaderFields else {
            abortReason = UpstreamError(kind: .other, detail: "upstream response head has more than \(Self.maxResponseHeaderFields) fields")
            return false
        }
        let name = String(decoding: trimmed(UnsafeRawBufferPointer(rebasing: content[0..<colon])), as: UTF8.self)
        let value = String(decoding: trimmed(UnsafeRawBufferPointer(rebasing: content[(colon + 1)...])), as: UTF8.self)
        responseHeaders.append((name: name, value: value))
        return true
    }

    private func endOfHead() -> Bool {
        guard let handle else { return false }
        var status = 0
        _ = sluice_curl_easy_getinfo_long(handle, CURLINFO_RESPONSE_CODE, &status)
        if (100..<200).contains(status) {
            // Interim head (e.g. 103 Early Hints); the final head follows.
            responseHeaders.removeAll(keepingCapacity: true)
            responseHeadBytes = 0
            return true
        }
        guard machine.headReceived() == .deliverHead else { return true }
        deliverHead(status: status)
        return true
    }

    private func deliverHead(status: Int) {
        let account = BodyBufferAccount(engineTotal: loop.counters)
        let strategy = BodyBytesWatermarkStrategy(
            account: account,
            lowWatermarkBytes: loop.configuration.lowWatermarkBytes,
            highWatermarkBytes: loop.configuration.highWatermarkBytes
        )
        let made = UpstreamBody.Producer.makeSequence(
            backPressureStrategy: strategy,
            finishOnDeinit: true,
            delegate: UpstreamBodyDelegate(transfer: self)
        )
        bodySource = made.source
        bodyAccount = account
        var connectMicroseconds: curl_off_t = 0
        var connects = 0
        var version = 0
        if let handle {
            _ = sluice_curl_easy_getinfo_off_t(handle, CURLINFO_CONNECT_TIME_T, &connectMicroseconds)
            _ = sluice_curl_easy_getinfo_long(handle, CURLINFO_NUM_CONNECTS, &connects)
            _ = sluice_curl_easy_getinfo_long(handle, CURLINFO_HTTP_VERSION, &version)
        }
        let httpVersion = Self.httpVersion(curlValue: version)
        if httpVersion == .http2 { loop.h2cConnectionConfirmed(self) }
        let response = UpstreamResponse(
            status: status,
            headers: responseHeaders,
            body: UpstreamBody(producer: made.sequence, account: account),
            connection: UpstreamConnectionInfo(
                newConnection: connects > 0, connectMicroseconds: Int64(connectMicroseconds),
                httpVersion: httpVersion
            )
        )
        responseHeaders = []
        if let headContinuation {
            loop.headReceived(response, continuation: headContinuation)
        }
        headContinuation = nil
    }

    /// `CURLINFO_HTTP_VERSION`'s value as a version; nil for 0 (not known).
    static func httpVersion(curlValue: Int) -> UpstreamConnectionInfo.HTTPVersion? {
        switch curlValue {
        case Int(CURL_HTTP_VERSION_1_0): .http1_0
        case Int(CURL_HTTP_VERSION_1_1): .http1_1
        case Int(CURL_HTTP_VERSION_2_0): .http2
        case Int(CURL_HTTP_VERSION_3): .http3
        default: nil
        }
    }

    /// The connection is up and nothing was sent yet (`CURLOPT_PREREQFUNCTION`, set for `.http2`
    /// and `.h2c`). False makes curl end the transfer without sending it:
    ///   - `.http2`: a TLS connection on which the server did not choose h2 by ALPN, so the request
    ///     never goes out over HTTP/1.1;
    ///   - `.h2c`: a follower that got a new connection (it would send an HTTP/1.1 upgrade request on
    ///     it): the engine sends it again as an opener (`CurlEventLoop+H2C.swift`).
    func connectionReady() -> Bool {
        guard let handle else { return true }
        switch request.httpVersion {
        case .http2:
            // -1: cannot tell (a TLS backend other than OpenSSL): let it go; the access log shows what was used.
            guard sluice_curl_tls_alpn_is_h2(handle) == 0 else { return true }
            abortReason = UpstreamError(
                kind: .connectFailed,
                detail: "the upstream did not agree to HTTP/2 on its TLS connection (ALPN), which http_version \"2\" requires (\"auto\" allows HTTP/1.1)"
            )
            return false
        case .h2c where !opensH2CConnection:
            var connects = 0
            guard sluice_curl_easy_getinfo_long(handle, CURLINFO_NUM_CONNECTS, &connects) == CURLE_OK, connects > 0 else { return true }
            reopensAsH2COpener = true
            abortReason = UpstreamError(kind: .connectFailed, detail: "h2c: a new connection must be opened by prior knowledge")
            return false
        case .auto, .http1_1, .h2c:
            return true
        }
    }

    /// Body bytes (at most `CURL_MAX_WRITE_SIZE`, 16 KiB). Returns the count accepted; anything else
    /// makes curl abort the transfer with `CURLE_WRITE_ERROR`.
    func receiveBody(_ bytes: UnsafeRawBufferPointer) -> Int {
        lastByteAtNs = MonotonicClock.nanoseconds()
        switch machine.bodyReceived() {
        case .deliver:
            break
        case .holdBack:
            return sluice_curl_writefunc_pause()
        case .refuse:
            if abortReason == nil {
                abortReason = UpstreamError(kind: .other, detail: "upstream sent body bytes without a response head")
            }
            return 0
        }
        guard let bodySource, let bodyAccount, let handle else { return 0 }
        let chunk = loop.allocator.buffer(bytes: bytes)
        bodyAccount.produced(bytes.count)
        switch bodySource.yield(chunk) {
        case .produceMore:
            break
        case .stopProducing:
            // Accept these bytes, then stop reading: the stream buffers at most one chunk past the
            // high watermark. Pausing from inside the write callback is allowed by libcurl.
            if machine.consumerFellBehind() == .pause {
                _ = curl_easy_pause(handle, CURLPAUSE_RECV)
            }
        case .dropped:
            bodyAccount.consumed(bytes.count)
            abortReason = UpstreamError(kind: .cancelled, detail: "the body consumer stopped reading")
            return 0
        }
        return bytes.count
    }
}

private func trimmed(_ bytes: UnsafeRawBufferPointer) -> UnsafeRawBufferPointer {
    var start = 0
    var end = bytes.count
    while start < end, bytes[start] == UInt8(ascii: " ") || bytes[start] == UInt8(ascii: "\t") { start += 1 }
    while end > start, bytes[end - 1] == UInt8(ascii: " ") || bytes[end - 1] == UInt8(ascii: "\t") { end -= 1 }
    return UnsafeRawBufferPointer(rebasing: bytes[start..<end])
}

/// `CURLOPT_HEADERFUNCTION`; the context is the unretained ``UpstreamTransfer``.
func upstreamHeaderCallback(
    _ data: UnsafeMutablePointer<CChar>?, _ size: Int, _ count: Int, _ context: UnsafeMutableRawPointer?
) -> Int {
    guard let data, let context else { return 0 }
    let transfer = Unmanaged<UpstreamTransfer>.fromOpaque(context).takeUnretainedValue()
    let length = size * count
    return transfer.receiveHeaderLine(UnsafeRawBufferPointer(start: data, count: length)) ? length : 0
}

/// `CURLOPT_PREREQFUNCTION`; the context is the unretained ``UpstreamTransfer``.
func upstreamPrereqCallback(
    _ context: UnsafeMutableRawPointer?, _ primaryIP: UnsafeMutablePointer<CChar>?, _ localIP: UnsafeMutablePointer<CChar>?,
    _ primaryPort: Int32, _ localPort: Int32
) -> Int32 {
    guard let context else { return CURL_PREREQFUNC_OK }
    let transfer = Unmanaged<UpstreamTransfer>.fromOpaque(context).takeUnretainedValue()
    return transfer.connectionReady() ? CURL_PREREQFUNC_OK : CURL_PREREQFUNC_ABORT
}

/// `CURLOPT_WRITEFUNCTION`; the context is the unretained ``UpstreamTransfer``.
func upstreamWriteCallback(
    _ data: UnsafeMutablePointer<CChar>?, _ size: Int, _ count: Int, _ context: UnsafeMutableRawPointer?
) -> Int {
    guard let data, let context else { return 0 }
    let transfer = Unmanaged<UpstreamTransfer>.fromOpaque(context).takeUnretainedValue()
    return transfer.receiveBody(UnsafeRawBufferPointer(start: data, count: size * count))
}
