import CCurl

/// Turns an ``UpstreamRequest`` into easy-handle options. Engine thread only; the handle is fresh from
/// `curl_easy_init` or `curl_easy_reset`.
enum CurlRequestConfigurator {
    /// Sets every option of one transfer. Returns the failure, or nil when the handle is ready to add.
    static func configure(
        _ handle: UnsafeMutableRawPointer,
        for transfer: UpstreamTransfer,
        configuration: CurlEngine.Configuration
    ) -> UpstreamError? {
        let request = transfer.request
        var failedOption: String?
        func set(_ option: CURLoption, _ value: Int, _ name: String) {
            if failedOption == nil, sluice_curl_easy_setopt_long(handle, option, value) != CURLE_OK { failedOption = name }
        }
        func set(_ option: CURLoption, pointer: UnsafeRawPointer?, _ name: String) {
            if failedOption == nil, sluice_curl_easy_setopt_pointer(handle, option, pointer) != CURLE_OK { failedOption = name }
        }
        func set(_ option: CURLoption, string: String, _ name: String) {
            // libcurl copies string options.
            string.withCString { set(option, pointer: $0, name) }
        }
        func set(_ option: CURLoption, offset: Int, _ name: String) {
            if failedOption == nil, sluice_curl_easy_setopt_off_t(handle, option, curl_off_t(offset)) != CURLE_OK { failedOption = name }
        }

        let context = Unmanaged.passUnretained(transfer).toOpaque()
        set(CURLOPT_URL, string: request.url, "URL")
        set(CURLOPT_PROTOCOLS_STR, string: "http,https", "PROTOCOLS_STR")
        set(CURLOPT_NOSIGNAL, 1, "NOSIGNAL")
        set(CURLOPT_HTTP_VERSION, Int(CURL_HTTP_VERSION_1_1), "HTTP_VERSION")
        set(CURLOPT_TCP_KEEPALIVE, 1, "TCP_KEEPALIVE")
        set(CURLOPT_TCP_NODELAY, 1, "TCP_NODELAY")
        set(CURLOPT_MAXAGE_CONN, configuration.maxConnectionAgeSeconds, "MAXAGE_CONN")
        set(CURLOPT_CONNECTTIMEOUT_MS, max(request.timeouts.connectMs, 1), "CONNECTTIMEOUT_MS")
        if let totalMs = request.timeouts.totalMs {
            set(CURLOPT_TIMEOUT_MS, max(totalMs, 1), "TIMEOUT_MS")
        }
        transfer.errorBuffer.pointee = 0
        set(CURLOPT_ERRORBUFFER, pointer: transfer.errorBuffer, "ERRORBUFFER")
        set(CURLOPT_PRIVATE, pointer: context, "PRIVATE")
        if failedOption == nil, sluice_curl_easy_setopt_write_function(handle, CURLOPT_WRITEFUNCTION, upstreamWriteCallback) != CURLE_OK {
            failedOption = "WRITEFUNCTION"
        }
        set(CURLOPT_WRITEDATA, pointer: context, "WRITEDATA")
        if failedOption == nil, sluice_curl_easy_setopt_write_function(handle, CURLOPT_HEADERFUNCTION, upstreamHeaderCallback) != CURLE_OK {
            failedOption = "HEADERFUNCTION"
        }
        set(CURLOPT_HEADERDATA, pointer: context, "HEADERDATA")
        // The engine thread learns of closed sockets (its epoll bookkeeping depends on it).
        if failedOption == nil, sluice_curl_easy_setopt_closesocket_function(handle, curlCloseSocketCallback) != CURLE_OK {
            failedOption = "CLOSESOCKETFUNCTION"
        }
        set(CURLOPT_CLOSESOCKETDATA, pointer: Unmanaged.passUnretained(transfer.loop).toOpaque(), "CLOSESOCKETDATA")

        switch request.method {
        case "GET":
            set(CURLOPT_HTTPGET, 1, "HTTPGET")
        case "HEAD":
            set(CURLOPT_NOBODY, 1, "NOBODY")
        default:
            if request.method != "POST" {
                set(CURLOPT_CUSTOMREQUEST, string: request.method, "CUSTOMREQUEST")
            }
            if request.method == "POST" || !request.body.isEmpty {
                // Size first: COPYPOSTFIELDS copies exactly POSTFIELDSIZE bytes (binary-safe).
                set(CURLOPT_POSTFIELDSIZE_LARGE, offset: request.body.count, "POSTFIELDSIZE_LARGE")
                if request.body.isEmpty {
                    set(CURLOPT_COPYPOSTFIELDS, string: "", "COPYPOSTFIELDS")
                } else {
                    request.body.withUnsafeBytes { set(CURLOPT_COPYPOSTFIELDS, pointer: $0.baseAddress, "COPYPOSTFIELDS") }
                }
            }
        }

        guard let headerList = makeHeaderList(request.headers) else {
            return UpstreamError(kind: .other, detail: "could not build the request header list")
        }
        transfer.requestHeaderList = headerList
        set(CURLOPT_HTTPHEADER, pointer: headerList, "HTTPHEADER")

        if let failedOption {
            return UpstreamError(kind: .other, detail: "curl rejected option \(failedOption)")
        }
        return nil
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
