// curl's sockets in the engine thread's epoll set: socket events handed to curl, and curl's socket
// and close-socket callbacks keeping the set in step.

import CCurl
import Glibc
import Logging

extension CurlEventLoop {
    // MARK: Events to curl (engine thread)

    func socketAction(_ fd: curl_socket_t, _ mask: Int32) {
        var running: Int32 = 0
        let rc = curl_multi_socket_action(multi, fd, mask, &running)
        if rc != CURLM_OK, rc != CURLM_BAD_SOCKET {
            logger.warning("curl_multi_socket_action failed", metadata: ["code": "\(rc.rawValue)", "thread": "\(index)"])
        }
    }

    // MARK: curl multi callbacks (engine thread, from inside libcurl)

    /// curl's socket callback. A pooled keep-alive connection goes through add → modify → remove on
    /// every transfer; each is an `epoll_ctl`. So "remove" only marks the socket unwanted and leaves
    /// it registered: the next transfer on that connection usually wants the same events and costs no
    /// syscall. If an unwanted socket reports an event (the upstream closed the idle connection), it
    /// is deleted from the set then; a socket curl closed has left the epoll set by itself, and its fd
    /// number reused by a new socket is re-added when modifying it fails.
    fileprivate func watchSocket(_ fd: curl_socket_t, _ what: Int32) {
        if what == CURL_POLL_REMOVE {
            watchedSockets[fd]?.wanted = nil
            return
        }
        var events: UInt32 = 0
        if what & CURL_POLL_IN != 0 { events |= EPOLLIN.rawValue }
        if what & CURL_POLL_OUT != 0 { events |= EPOLLOUT.rawValue }
        if let known = watchedSockets[fd] {
            watchedSockets[fd] = (events, events)
            if known.registered == events { return }
            if epollControl(EPOLL_CTL_MOD, fd, events) != 0, errno == ENOENT {
                _ = epollControl(EPOLL_CTL_ADD, fd, events)
            }
        } else {
            watchedSockets[fd] = (events, events)
            if epollControl(EPOLL_CTL_ADD, fd, events) != 0, errno == EEXIST {
                _ = epollControl(EPOLL_CTL_MOD, fd, events)
            }
        }
    }

    /// curl closes a socket (through ``curlCloseSocketCallback``): closing removes it from the epoll
    /// set, so forget its registration.
    fileprivate func socketClosed(_ fd: Int32) {
        watchedSockets[fd] = nil
    }

    /// An event on a socket curl is not watching now: stop reporting it until curl wants it again.
    func unwantedSocketEvent(_ fd: Int32) {
        watchedSockets[fd] = nil
        _ = epollControl(EPOLL_CTL_DEL, fd, 0)
    }

    private func epollControl(_ operation: Int32, _ fd: Int32, _ events: UInt32) -> Int32 {
        var event = epoll_event()
        event.events = events
        event.data.fd = fd
        return epoll_ctl(epollFD, operation, fd, &event)
    }
}

func curlSocketCallback(
    _ easy: UnsafeMutableRawPointer?, _ fd: curl_socket_t, _ what: Int32,
    _ context: UnsafeMutableRawPointer?, _ socketContext: UnsafeMutableRawPointer?
) -> Int32 {
    guard let context else { return -1 }
    Unmanaged<CurlEventLoop>.fromOpaque(context).takeUnretainedValue().watchSocket(fd, what)
    return 0
}

/// `CURLOPT_CLOSESOCKETFUNCTION`; the context is the unretained ``CurlEventLoop`` that owns the
/// connection (curl closes sockets only from inside calls on that loop's thread).
func curlCloseSocketCallback(_ context: UnsafeMutableRawPointer?, _ fd: curl_socket_t) -> Int32 {
    if let context {
        Unmanaged<CurlEventLoop>.fromOpaque(context).takeUnretainedValue().socketClosed(fd)
    }
    return close(fd)
}
