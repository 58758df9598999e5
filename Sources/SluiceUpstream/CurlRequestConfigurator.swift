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
        options.set(CURLOPT_TCP_KEEPALIVE, 1, "TCP_KEEPALIVE")
        options.set(CURLOPT_TCP_NODELAY, 1, "TCP_NODELAY")
        options.set(CURLOPT_MAXAGE_CONN, configuration.maxConnectionAgeSeconds, "MAXAGE_CONN")
        // A request's own CA file is parsed once and kept by the multi handle for new connections:
        // for a minute, not curl's default day, so a CA file replaced in place is read again soon.
        options.set(CURLOPT_CA_CACHE_TIMEOUT, Self.caCacheSeconds, "CA_CACHE_TIMEOUT")
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

        // The HTTP version, and what comes with it: multiplexing, the h2 check, the trust roots.
        let overTLS = request.isTLS
        let opensH2C = request.httpVersion == .h2c && transfer.opensH2CConnection
        options.set(CURLOPT_HTTP_VERSION, curlHTTPVersion(request.httpVersion, opensConnection: opensH2C), "HTTP_VERSION")
        options.set(CURLOPT_PIPEWAIT, request.httpVersion.mayMultiplex(overTLS: overTLS) ? 1 : 0, "PIPEWAIT")
        // An h2c opener never reuses a connection (see CurlEventLoop+H2C.swift); 0 for every other transfer.
        options.set(CURLOPT_FRESH_CONNECT, opensH2C ? 1 : 0, "FRESH_CONNECT")
        if request.httpVersion == .http2 || request.httpVersion == .h2c {
            if options.failedOption == nil, sluice_curl_easy_setopt_prereq_function(handle, upstreamPrereqCallback) != CURLE_OK {
                options.failedOption = "PREREQFUNCTION"
            }
            options.set(CURLOPT_PREREQDATA, pointer: context, "PREREQDATA")
        } else if options.failedOption == nil, sluice_curl_easy_setopt_prereq_function(handle, nil) != CURLE_OK {
            options.failedOption = "PREREQFUNCTION"
        }
        if overTLS {
            // Set for every TLS transfer (the handle may have served another upstream): the
            // request's CA file alone, or curl's defaults back. curl reuses a connection only for a
            // transfer with the same trust settings.
            if let caFile = request.caFile {
                options.set(CURLOPT_CAINFO, string: caFile, "CAINFO")
                options.set(CURLOPT_CAPATH, pointer: nil, "CAPATH")
            } else {
                options.set(CURLOPT_CAINFO, optionalString: CurlGlobal.defaultCAFile, "CAINFO")
                options.set(CURLOPT_CAPATH, optionalString: CurlGlobal.defaultCAPath, "CAPATH")
            }
        }

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
        for option in [CURLOPT_PRIVATE, CURLOPT_WRITEDATA, CURLOPT_HEADERDATA, CURLOPT_PREREQDATA, CURLOPT_ERRORBUFFER, CURLOPT_HTTPHEADER] {
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

        /// nil sets the option to NULL.
        mutating func set(_ option: CURLoption, optionalString: String?, _ name: String) {
            if let string = optionalString {
                set(option, string: string, name)
            } else {
                set(option, pointer: nil, name)
            }
        }

        mutating func set(_ option: CURLoption, offset: Int, _ name: String) {
            if failedOption == nil, sluice_curl_easy_setopt_off_t(handle, option, curl_off_t(offset)) != CURLE_OK { failedOption = name }
        }
    }

    /// How long an engine thread keeps a parsed CA file (`CURLOPT_CA_CACHE_TIMEOUT`).
    static let caCacheSeconds = 60

    /// `opensConnection`: for `.h2c`, whether the transfer is an opener (prior knowledge) or a
    /// follower (plain HTTP/2, which reuses an HTTP/2 connection as it is).
    static func curlHTTPVersion(_ version: UpstreamHTTPVersion, opensConnection: Bool = false) -> Int {
        switch version {
        case .auto: Int(CURL_HTTP_VERSION_2TLS)
        case .http1_1: Int(CURL_HTTP_VERSION_1_1)
        // Over TLS 2_0 and 2TLS are the same (ALPN offers h2 and http/1.1); the prerequisite
        // callback refuses a connection that did not choose h2.
        case .http2: Int(CURL_HTTP_VERSION_2_0)
        case .h2c: Int(opensConnection ? CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE : CURL_HTTP_VERSION_2_0)
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
