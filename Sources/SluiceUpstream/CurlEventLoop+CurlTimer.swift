// curl's timer: its timer callback, kept on one timerfd with as few re-arms as possible.

import CCurl
import SluiceCore
import Glibc

extension CurlEventLoop {
    // MARK: curl's timer (engine thread, from inside libcurl)

    /// curl wants `socketAction(CURL_SOCKET_TIMEOUT)` after `timeoutMs` (-1: no timer); each call
    /// replaces the previous one.
    ///
    /// curl changes its timer several times per transfer and each `timerfd_settime` is a syscall. So a
    /// 0 ms timeout runs from the loop right after the current calls returned (never inside them), and
    /// the fd is only re-armed when curl's timeout is due earlier than the fd fires. A fd that fires
    /// before curl's timeout (it moved later, or was cancelled) is re-armed then, or ignored: curl only
    /// calls this when its timeout changes, so the loop must never lose the one it was given.
    fileprivate func armCurlTimer(_ timeoutMs: Int) {
        curlTimeoutDue = timeoutMs == 0
        guard timeoutMs > 0 else {
            curlTimeoutWantedNs = nil
            return
        }
        let wanted = MonotonicClock.nanoseconds() + UInt64(timeoutMs) * 1_000_000
        curlTimeoutWantedNs = wanted
        if let armed = curlTimerArmedNs, armed <= wanted { return }
        setCurlTimerFD(to: wanted)
    }

    func curlTimerFired() {
        curlTimerArmedNs = nil
        guard let wanted = curlTimeoutWantedNs else { return }
        if MonotonicClock.nanoseconds() >= wanted {
            curlTimeoutWantedNs = nil
            curlTimeoutDue = true
        } else {
            setCurlTimerFD(to: wanted)
        }
    }

    private func setCurlTimerFD(to deadlineNs: UInt64) {
        curlTimerArmedNs = deadlineNs
        var spec = itimerspec()
        spec.it_value.tv_sec = Int(deadlineNs / 1_000_000_000)
        spec.it_value.tv_nsec = Int(deadlineNs % 1_000_000_000)
        _ = timerfd_settime(curlTimerFD, Int32(TFD_TIMER_ABSTIME), &spec, nil)
    }
}

func curlTimerCallback(_ multi: UnsafeMutableRawPointer?, _ timeoutMs: Int, _ context: UnsafeMutableRawPointer?) -> Int32 {
    guard let context else { return -1 }
    Unmanaged<CurlEventLoop>.fromOpaque(context).takeUnretainedValue().armCurlTimer(timeoutMs)
    return 0
}
