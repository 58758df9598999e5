// A transfer's life on the engine thread: start, resume after a pause, end (exactly once), the
// completion messages from curl, and the first-byte and stall deadlines.

import CCurl
import SluiceCore
import Glibc

extension CurlEventLoop {
    // MARK: Lifecycle

    func resume(_ transfer: UpstreamTransfer) {
        // A demand signal can be stale: raised before the yield that paused the transfer, processed
        // after it. Resuming on it would push chunks past the high watermark. A current signal always
        // finds the buffer below the high watermark (it was raised at or below the low watermark, or at
        // an empty buffer, and a paused transfer adds nothing), so skipping the stale one loses no demand:
        // the stream raises a fresh one when the consumer drains.
        guard transfer.machine.state == .paused,
            (transfer.bodyAccount?.buffered ?? 0) < configuration.highWatermarkBytes
        else { return }
        guard transfer.machine.consumerCaughtUp() == .resume, let handle = transfer.handle else { return }
        // Time spent paused for a slow consumer is not an upstream stall.
        transfer.lastByteAtNs = MonotonicClock.nanoseconds()
        _ = curl_easy_pause(handle, CURLPAUSE_CONT)
    }

    func start(_ transfer: UpstreamTransfer, _ continuation: HeadContinuation) {
        switch transfer.machine.start() {
        case .reject(let kind):
            // Ended (cancelled) before it started: it never counted as started or active.
            counters.inFlight.subtract(1, ordering: .relaxed)
            counters.countEnd(kind)
            transfer.markEnded()
            continuation.resume(returning: .failure(UpstreamError(kind: kind, detail: "the transfer ended before it started")))
            return
        case .attach:
            break
        }
        transfer.headContinuation = continuation
        counters.started.add(1, ordering: .relaxed)
        counters.active.add(1, ordering: .relaxed)
        transfers[ObjectIdentifier(transfer)] = transfer
        let now = MonotonicClock.nanoseconds()
        transfer.startedAtNs = now
        transfer.lastByteAtNs = now

        let handle: UnsafeMutableRawPointer
        if let idle = idleHandles.popLast() {
            handle = idle
        } else {
            switch CurlRequestConfigurator.makeHandle(loop: self, configuration: configuration) {
            case .success(let made): handle = made
            case .failure(let error):
                end(transfer, .failure(error))
                return
            }
        }
        transfer.handle = handle
        assignH2CRole(transfer)
        guard configureAndAdd(transfer, handle: handle) else { return }
        armDeadlineTimer()
    }

    /// Sets the transfer's options on `handle` and adds it to the multi handle; a failure ends the
    /// transfer (false).
    func configureAndAdd(_ transfer: UpstreamTransfer, handle: UnsafeMutableRawPointer) -> Bool {
        if let failure = CurlRequestConfigurator.configure(handle, for: transfer, configuration: configuration) {
            end(transfer, .failure(failure))
            return false
        }
        let rc = curl_multi_add_handle(multi, handle)
        guard rc == CURLM_OK else {
            end(transfer, .failure(UpstreamError(kind: .other, detail: "curl_multi_add_handle failed: \(rc.rawValue)")))
            return false
        }
        transfer.handleInMulti = true
        return true
    }

    /// Ends a transfer exactly once: detaches and recycles its handle, updates the counters and reports
    /// the outcome to whoever waits (the `execute` call or the body stream).
    func end(_ transfer: UpstreamTransfer, _ outcome: Result<Void, UpstreamError>) {
        let action: UpstreamTransferStateMachine.EndAction
        switch outcome {
        case .success: action = transfer.machine.transferSucceeded()
        case .failure(let error): action = transfer.machine.transferFailed(error.kind)
        }
        if action == .none { return }

        detachHandle(of: transfer)
        transfers.removeValue(forKey: ObjectIdentifier(transfer))
        counters.active.subtract(1, ordering: .relaxed)
        counters.inFlight.subtract(1, ordering: .relaxed)
        transfer.markEnded()

        let failure: UpstreamError?
        if case .failure(let error) = outcome { failure = error } else { failure = nil }
        switch action {
        case .failHead(let kind):
            h2cOpenerFailed(transfer)
            counters.countEnd(kind)
            let error = failure ?? UpstreamError(kind: kind, detail: "upstream transfer completed without a final response head")
            transfer.headContinuation?.resume(returning: .failure(error))
        case .finishBody:
            counters.completed.add(1, ordering: .relaxed)
            transfer.bodySource?.finish()
        case .failBody(let kind):
            counters.countEnd(kind)
            transfer.bodySource?.finish(failure ?? UpstreamError(kind: kind, detail: "upstream transfer failed"))
        case .none:
            break
        }
        // Break the cycle transfer → source → stream storage → delegate → transfer.
        transfer.headContinuation = nil
        transfer.bodySource = nil
    }

    private func detachHandle(of transfer: UpstreamTransfer) {
        defer {
            // After the removal: curl no longer reads the list.
            if let list = transfer.requestHeaderList {
                curl_slist_free_all(list)
                transfer.requestHeaderList = nil
            }
        }
        guard let handle = transfer.handle else { return }
        if transfer.handleInMulti {
            // Removing an unfinished transfer closes its HTTP/1.1 connection instead of returning it to
            // the pool; on a shared HTTP/2 connection it resets only its own stream.
            _ = curl_multi_remove_handle(multi, handle)
            transfer.handleInMulti = false
        }
        var connects = 0
        if sluice_curl_easy_getinfo_long(handle, CURLINFO_NUM_CONNECTS, &connects) == CURLE_OK {
            counters.connectionsOpened.add(connects, ordering: .relaxed)
        }
        CurlRequestConfigurator.clearTransferOptions(handle)
        transfer.handle = nil
        if idleHandles.count < Self.maxIdleEasyHandles {
            idleHandles.append(handle)
        } else {
            curl_easy_cleanup(handle)
        }
    }

    func collectCompletedTransfers() {
        var queued: Int32 = 0
        while let message = curl_multi_info_read(multi, &queued) {
            guard message.pointee.msg == CURLMSG_DONE, let handle = message.pointee.easy_handle else { continue }
            // Copy out before removing the handle: the message does not survive the removal.
            let code = message.pointee.data.result
            var context: UnsafeMutableRawPointer?
            guard sluice_curl_easy_getinfo_pointer(handle, CURLINFO_PRIVATE, &context) == CURLE_OK, let context else {
                continue
            }
            let transfer = Unmanaged<UpstreamTransfer>.fromOpaque(context).takeUnretainedValue()
            if code != CURLE_OK, transfer.reopensAsH2COpener, transfers[ObjectIdentifier(transfer)] != nil {
                restartAsH2COpener(transfer)
                continue
            }
            if code == CURLE_OK {
                end(transfer, .success(()))
            } else {
                end(transfer, .failure(classify(code, transfer)))
            }
        }
    }

    private func classify(_ code: CURLcode, _ transfer: UpstreamTransfer) -> UpstreamError {
        if let reason = transfer.abortReason { return reason }
        let detail = transfer.curlErrorMessage ?? String(cString: curl_easy_strerror(code))
        switch code {
        case CURLE_COULDNT_RESOLVE_HOST, CURLE_COULDNT_RESOLVE_PROXY, CURLE_COULDNT_CONNECT,
            CURLE_SSL_CONNECT_ERROR, CURLE_PEER_FAILED_VERIFICATION, CURLE_SSL_CACERT_BADFILE,
            CURLE_SSL_CERTPROBLEM, CURLE_UNSUPPORTED_PROTOCOL:
            return UpstreamError(kind: .connectFailed, detail: detail)
        case CURLE_OPERATION_TIMEDOUT:
            // curl times out for exactly two reasons here: the connect timeout or the total timeout.
            let elapsedMs = Int((MonotonicClock.nanoseconds() - transfer.startedAtNs) / 1_000_000)
            if let totalMs = transfer.request.timeouts.totalMs, elapsedMs >= totalMs {
                return UpstreamError(kind: .totalTimeout, detail: detail)
            }
            return UpstreamError(kind: .connectTimeout, detail: detail)
        case CURLE_RECV_ERROR, CURLE_SEND_ERROR, CURLE_PARTIAL_FILE, CURLE_GOT_NOTHING:
            return UpstreamError(kind: .connectionDropped, detail: detail)
        default:
            return UpstreamError(kind: .other, detail: detail)
        }
    }

    func failAll(_ error: UpstreamError) {
        for transfer in Array(transfers.values) {
            end(transfer, .failure(error))
        }
    }

    // MARK: Deadlines (first byte, stall)

    private func armDeadlineTimer() {
        guard !deadlineTimerArmed else { return }
        deadlineTimerArmed = true
        let interval = timespec(tv_sec: 0, tv_nsec: CurlEngine.deadlineCheckIntervalMs * 1_000_000)
        var spec = itimerspec(it_interval: interval, it_value: interval)
        _ = timerfd_settime(deadlineTimerFD, 0, &spec, nil)
    }

    private func disarmDeadlineTimer() {
        guard deadlineTimerArmed else { return }
        deadlineTimerArmed = false
        var spec = itimerspec()
        _ = timerfd_settime(deadlineTimerFD, 0, &spec, nil)
    }

    func enforceDeadlines() {
        guard !transfers.isEmpty else {
            disarmDeadlineTimer()
            return
        }
        let now = MonotonicClock.nanoseconds()
        var expired: [(UpstreamTransfer, UpstreamError)] = []
        for transfer in transfers.values {
            let timeouts = transfer.request.timeouts
            if transfer.firstByteAtNs == nil {
                if now >= transfer.startedAtNs + UInt64(max(timeouts.firstByteMs, 0)) * 1_000_000 {
                    expired.append((transfer, UpstreamError(kind: .firstByteTimeout, detail: "no response from the upstream within \(timeouts.firstByteMs) ms")))
                }
            } else if transfer.machine.state != .paused,
                now >= transfer.lastByteAtNs + UInt64(max(timeouts.stallMs, 0)) * 1_000_000
            {
                expired.append((transfer, UpstreamError(kind: .stallTimeout, detail: "the upstream sent nothing for \(timeouts.stallMs) ms")))
            }
        }
        for (transfer, error) in expired {
            end(transfer, .failure(error))
        }
    }
}
