import CCurl

/// Turns an ``UpstreamRequest`` into easy-handle options. Engine thread only.
///
/// Handles are reused without `curl_easy_reset` (which frees and re-copies every option, and
/// reparses the allowed protocols): options that never change are set once when the handle is made,
/// and every option a transfer sets is set again, or cleared, for the next one.
enum CurlRequestConfigurator {
    /// A new handle with the options every transfer shares, or the error naming what curl refused.
    static func makeHandle(loop: CurlEventLoop, configuration: CurlEngine.Configuration) -> Result<UnsafeMutableRawPointer, UpstreamError> {
        guard let handle = curl_easy_init() else { return .failure(UpstreamError(kind: .other, detail: "curl_easy_init failed")) }
        var options = OptionSetter(handle)
        options.set(CURLOPT_PROTOCOLS_STR, string: "http,https", "PROTOCOLS_STR")
        options.set(CURLOPT_NOSIGNAL, 1, "NOSIGNAL")
        options.set(CURLOPT_HTTP_VERSION, Int(CURL_HTTP_VERSION_1_1), "HTTP_VERSION")
        options.set(CURLOPT_TCP_KEEPALIVE, 1, "TCP_KEEPALIVE")
        options.set(CURLOPT_TCP_NODELAY, 1, "TCP_NODELAY")
        options.set(CURLOPT_MAXAGE_CONN, configuration.maxConnectionAgeSeconds, "MAXAGE_CONN")
        if options.failedOption == nil, sluice_curl_easy_setopt_write_function(handle, CURLOPT_WRITEFUNCTION, upstreamWriteCallback) != CURLE_OK {
            options.failedOption = "WRITEFUNCTION"
        }
        if options.failedOption == nil, sluice_curl_easy_setopt_write_function(handle, CURLOPT_HEADERFUNCTION, upstreamHeaderCallback) != CURLE_OK {
            options.failedOption = "HEADERFUNCTION"
        }
        // The engine thread learns of closed sockets (its epoll bookkeeping depends on it).
        if options.failedOption == nil, sluice_curl_easy_setopt_closesocket_function(handle, curlCloseSocketCallback) != CURLE_OK {
            options.failedOption = "CLOSESOCKETFUNCTION"
        }
        options.set(CURLOPT_CLOSESOCKETDATA, pointer: Unmanaged.passUnretained(loop).toOpaque(), "CLOSESOCKETDATA")
        if let failedOption = options.failedOption {
            curl_easy_cleanup(handle)
            // PROTOCOLS_STR is the one option a supported system's libcurl might lack (added in 7.85).
            let hint = failedOption == "PROTOCOLS_STR" ? " (libcurl older than 7.85?)" : ""
            return .failure(UpstreamError(kind: .other, detail: "curl rejected option \(failedOption) on a new handle\(hint)"))
        }
        return .success(handle)
    }

    /// Sets every option of one transfer. Returns the failure, or nil when the handle is ready to add.
    static func configure(
        _ handle: UnsafeMutableRawPointer,
        for transfer: UpstreamTransfer,
        configuration: CurlEngine.Configuration
    ) -> UpstreamError? {
        let request = transfer.request
        var options = OptionSetter(handle)

        let context = Unmanaged.passUnretained(transfer).toOpaque()
        options.set(CURLOPT_URL, string: request.url, "URL")
        options.set(CURLOPT_CONNECTTIMEOUT_MS, max(request.timeouts.connectMs, 1), "CONNECTTIMEOUT_MS")
        // 0: no total timeout (also clears the previous transfer's).
        options.set(CURLOPT_TIMEOUT_MS, request.timeouts.totalMs.map { max($0, 1) } ?? 0, "TIMEOUT_MS")
        transfer.errorBuffer.pointee = 0
        options.set(CURLOPT_ERRORBUFFER, pointer: transfer.errorBuffer, "ERRORBUFFER")
        options.set(CURLOPT_PRIVATE, pointer: context, "PRIVATE")
        options.set(CURLOPT_WRITEDATA, pointer: context, "WRITEDATA")
        options.set(CURLOPT_HEADERDATA, pointer: context, "HEADERDATA")

        // The method: back to a plain GET first, whatever the handle's last transfer was.
        options.set(CURLOPT_HTTPGET, 1, "HTTPGET")
        options.set(CURLOPT_CUSTOMREQUEST, pointer: nil, "CUSTOMREQUEST")
        switch request.method {
        case "GET":
            break
        case "HEAD":
            options.set(CURLOPT_NOBODY, 1, "NOBODY")
        default:
            if request.method != "POST" {
                options.set(CURLOPT_CUSTOMREQUEST, string: request.method, "CUSTOMREQUEST")
            }
            if request.method == "POST" || !request.body.isEmpty {
                // Size first: COPYPOSTFIELDS copies exactly POSTFIELDSIZE bytes (binary-safe).
                options.set(CURLOPT_POSTFIELDSIZE_LARGE, offset: request.body.count, "POSTFIELDSIZE_LARGE")
                if request.body.isEmpty {
                    options.set(CURLOPT_COPYPOSTFIELDS, string: "", "COPYPOSTFIELDS")
                } else {
                    request.body.withUnsafeBytes { options.set(CURLOPT_COPYPOSTFIELDS, pointer: $0.baseAddress, "COPYPOSTFIELDS") }
                }
            }
        }

        guard let headerList = makeHeaderList(request.headers) else {
            return UpstreamError(kind: .other, detail: "could not build the request header list")
        }
        transfer.requestHeaderList = headerList
        options.set(CURLOPT_HTTPHEADER, pointer: headerList, "HTTPHEADER")

        if let failedOption = options.failedOption {
            return UpstreamError(kind: .other, detail: "curl rejected option \(failedOption)")
        }
        return nil
    }

    /// After a transfer, before the handle goes back to the idle list: forgets what belonged to the
    /// transfer (its context, error buffer and header list are freed with it) and frees the copy of
    /// its body, so an idle handle holds no request's memory.
    static func clearTransferOptions(_ handle: UnsafeMutableRawPointer) {
        var options = OptionSetter(handle)
        for option in [CURLOPT_PRIVATE, CURLOPT_WRITEDATA, CURLOPT_HEADERDATA, CURLOPT_ERRORBUFFER, CURLOPT_HTTPHEADER] {
            options.set(option, pointer: nil, "")
        }
        // A null COPYPOSTFIELDS frees curl's copy of the last body.
        options.set(CURLOPT_COPYPOSTFIELDS, pointer: nil, "")
    }

    /// Sets options until one fails, remembering the first that did.
    private struct OptionSetter {
        let handle: UnsafeMutableRawPointer
        var failedOption: String?

        init(_ handle: UnsafeMutableRawPointer) { self.handle = handle }

        mutating func set(_ option: CURLoption, _ value: Int, _ name: String) {
            if failedOption == nil, sluice_curl_easy_setopt_long(handle, option, value) != CURLE_OK { failedOption = name }
        }

        mutating func set(_ option: CURLoption, pointer: UnsafeRawPointer?, _ name: String) {
            if failedOption == nil, sluice_curl_easy_setopt_pointer(handle, option, pointer) != CURLE_OK { failedOption = name }
        }

        mutating func set(_ option: CURLoption, string: String, _ name: String) {
            // libcurl copies string options.
            string.withCString { set(option, pointer: $0, name) }
        }

        mutating func set(_ option: CURLoption, offset: Int, _ name: String) {
            if failedOption == nil, sluice_curl_easy_setopt_off_t(handle, option, curl_off_t(offset)) != CURLE_OK { failedOption = name }
        }
    }

    /// The request's header fields plus an empty `Expect:` (which stops curl from sending
    /// `Expect: 100-continue` and waiting a round trip) unless the caller set one.
    private static func makeHeaderList(_ headers: [(name: String, value: String)]) -> UnsafeMutablePointer<curl_slist>? {
        var list: UnsafeMutablePointer<curl_slist>?
        var hasExpect = false
        func append(_ line: String) -> Bool {
            guard let extended = line.withCString({ curl_slist_append(list, $0) }) else {
                curl_slist_free_all(list)
                list = nil
                return false
            }
            list = extended
            return true
        }
        for header in headers {
            if header.name.caseInsensitiveEquals("expect") { hasExpect = true }
            // "Name:" would make curl drop the field; "Name;" is curl's spelling of an empty value.
            let line = header.value.isEmpty ? "\(header.name);" : "\(header.name): \(header.value)"
            guard append(line) else { return nil }
        }
        if !hasExpect {
            guard append("Expect:") else { return nil }
        }
        return list
    }
}
