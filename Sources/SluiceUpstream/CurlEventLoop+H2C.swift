// Cleartext HTTP/2 by prior knowledge (`.h2c`) on a connection that exchanges share.
//
// libcurl 7.88.1 (Debian 12's) switches a connection to HTTP/2 again for every transfer that wants
// prior knowledge, also when it reuses a connection that already speaks HTTP/2: that transfer fails
// ("Error in the HTTP2 framing layer") and the connection is broken for every later one (curl issue
// #10634, fixed in 8.0). So prior knowledge may only ever open a connection, never reuse one:
//
//   - an *opener* goes by prior knowledge on a connection of its own (`CURLOPT_FRESH_CONNECT`);
//   - a *follower* goes as plain HTTP/2 (`CURL_HTTP_VERSION_2_0`), which reuses an HTTP/2 connection
//     as it is, and waits for one still being opened (`CURLOPT_PIPEWAIT`). Should it get a new
//     connection instead (none left, the last one full or gone), curl would send an HTTP/1.1 upgrade
//     request on it, which an h2c server does not take: its prerequisite callback sees the new
//     connection before anything is sent and refuses it, and the engine sends the transfer again,
//     as an opener. A transfer is sent again at most once.
//
// Which one a transfer is follows what the engine thread knows of the upstream's origin: no
// connection known (the first exchange, or the last opener failed) → opener; an opener on its way
// or a connection known → follower. So a burst of exchanges opens one connection, not one each.

import CCurl

extension CurlEventLoop {
    /// What the engine thread knows of its h2c connections to one origin.
    enum H2COriginState: Sendable, Hashable {
        /// An opener is on its way: followers wait for its connection.
        case opening
        /// An opener got its answer over HTTP/2: the connection is there to share.
        case live
    }

    /// Sets whether an `.h2c` transfer about to start opens a connection (engine thread).
    func assignH2CRole(_ transfer: UpstreamTransfer) {
        guard transfer.request.httpVersion == .h2c else { return }
        let origin = transfer.request.origin
        if h2cOrigins[origin] == nil {
            transfer.opensH2CConnection = true
            h2cOrigins[origin] = .opening
        } else {
            transfer.opensH2CConnection = false
        }
    }

    /// An opener's answer came over HTTP/2: later transfers share its connection.
    func h2cConnectionConfirmed(_ transfer: UpstreamTransfer) {
        guard transfer.opensH2CConnection else { return }
        h2cOrigins[transfer.request.origin] = .live
    }

    /// An opener ended without an answer: the next transfer opens a connection again.
    func h2cOpenerFailed(_ transfer: UpstreamTransfer) {
        guard transfer.opensH2CConnection, h2cOrigins[transfer.request.origin] == .opening else { return }
        h2cOrigins[transfer.request.origin] = nil
    }

    /// A follower refused the new connection it got (see the top of this file): send it again as an
    /// opener. Called for a finished message (outside any curl callback); the transfer keeps its
    /// state, deadlines and continuation.
    func restartAsH2COpener(_ transfer: UpstreamTransfer) {
        guard let handle = transfer.handle else {
            end(transfer, .failure(UpstreamError(kind: .other, detail: "h2c transfer without a handle")))
            return
        }
        _ = curl_multi_remove_handle(multi, handle)
        transfer.handleInMulti = false
        var connects = 0
        if sluice_curl_easy_getinfo_long(handle, CURLINFO_NUM_CONNECTS, &connects) == CURLE_OK {
            counters.connectionsOpened.add(connects, ordering: .relaxed)
        }
        if let list = transfer.requestHeaderList {
            curl_slist_free_all(list)
            transfer.requestHeaderList = nil
        }
        transfer.abortReason = nil
        transfer.reopensAsH2COpener = false
        transfer.opensH2CConnection = true
        h2cOrigins[transfer.request.origin] = .opening
        _ = configureAndAdd(transfer, handle: handle)
    }
}
