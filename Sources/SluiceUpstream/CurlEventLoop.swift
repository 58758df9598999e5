import CCurl
import Glibc
import Logging
import NIOCore
import Synchronization

/// One engine thread: owns one `CURLM`, its easy handles, an epoll set and three timer/event fds, and
/// drives them with `curl_multi_socket_action`. See ``CurlEngine`` for the threading model.
///
/// Cross-thread surface: ``enqueue(_:)`` (any thread) and ``waitForExit()``. Everything marked
/// "engine thread only" is touched by ``run()`` and the curl callbacks it triggers, nothing else.
///
/// This file holds the type, its state, the thread and the run loop; the rest is in extensions by
/// concern: `+Inbox` (commands from other threads and the wakeup), `+Sockets` (curl's sockets in the
/// epoll set), `+CurlTimer` (curl's timer on the timerfd), `+Transfers` (start, pause/resume, end,
/// deadlines), `+H2C` (cleartext HTTP/2 connections shared despite libcurl 7.88's prior-knowledge bug).
final class CurlEventLoop: @unchecked Sendable {
    typealias HeadContinuation = CheckedContinuation<Result<UpstreamResponse, UpstreamError>, Never>

    private struct ExitState {
        var exited = false
        var waiters: [CheckedContinuation<Void, Never>] = []
    }

    /// Easy handles kept for reuse per thread; more than this many idle ones are cleaned up.
    static let maxIdleEasyHandles = 256
    private static let maxEventsPerWait: Int32 = 256

    let index: Int
    let configuration: CurlEngine.Configuration
    let counters: CurlEngineCounters
    let logger: Logger
    let allocator = ByteBufferAllocator()

    let inbox = Mutex(Inbox())
    private let exitState = Mutex(ExitState())
    private let thread = Mutex<pthread_t?>(nil)

    /// Written by any thread to wake the engine thread; closed in `deinit` (never while an enqueuer
    /// could still write to it).
    let wakeFD: Int32
    // Created here, closed by the engine thread when it exits.
    let epollFD: Int32
    let curlTimerFD: Int32
    let deadlineTimerFD: Int32
    let multi: UnsafeMutableRawPointer

    // MARK: Engine thread only

    var transfers: [ObjectIdentifier: UpstreamTransfer] = [:]
    var idleHandles: [UnsafeMutableRawPointer] = []
    /// Response heads received during this turn of the loop, handed over at its end (see
    /// ``handOverHeads()``).
    private var receivedHeads: [(HeadContinuation, UpstreamResponse)] = []
    /// The epoll registration of every socket in the epoll set: what curl wants (nil: curl is done
    /// with it for now, see ``watchSocket(_:_:)``) and the events registered.
    var watchedSockets: [Int32: (wanted: UInt32?, registered: UInt32)] = [:]
    var deadlineTimerArmed = false
    /// By origin (`http://host:port`): what this thread knows of its h2c connections (`+H2C`).
    var h2cOrigins: [String: H2COriginState] = [:]
    /// When the curl timer fd fires next (CLOCK_MONOTONIC ns), or nil when it is not armed.
    var curlTimerArmedNs: UInt64?
    /// When curl wants its timeout (its latest timer call), or nil for none.
    var curlTimeoutWantedNs: UInt64?
    /// curl asked for a timeout of 0 ms: run it right after the current batch of events.
    var curlTimeoutDue = false
    var stopping = false

    /// Creates the fds and the multi handle; the thread starts with ``startThread()``.
    init(index: Int, configuration: CurlEngine.Configuration, counters: CurlEngineCounters, logger: Logger) throws(CurlEngineStartError) {
        self.index = index
        self.configuration = configuration
        self.counters = counters
        self.logger = logger

        var opened: [Int32] = []
        func check(_ fd: Int32, _ what: String) throws(CurlEngineStartError) -> Int32 {
            guard fd >= 0 else {
                let code = errno
                opened.forEach { _ = close($0) }
                throw CurlEngineStartError(detail: "\(what) failed: errno \(code)")
            }
            opened.append(fd)
            return fd
        }
        epollFD = try check(epoll_create1(Int32(EPOLL_CLOEXEC)), "epoll_create1")
        wakeFD = try check(eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC)), "eventfd")
        curlTimerFD = try check(timerfd_create(CLOCK_MONOTONIC, Int32(TFD_NONBLOCK | TFD_CLOEXEC)), "timerfd_create")
        deadlineTimerFD = try check(timerfd_create(CLOCK_MONOTONIC, Int32(TFD_NONBLOCK | TFD_CLOEXEC)), "timerfd_create")
        for fd in [wakeFD, curlTimerFD, deadlineTimerFD] {
            var event = epoll_event()
            event.events = EPOLLIN.rawValue
            event.data.fd = fd
            guard epoll_ctl(epollFD, EPOLL_CTL_ADD, fd, &event) == 0 else {
                let code = errno
                opened.forEach { _ = close($0) }
                throw CurlEngineStartError(detail: "epoll_ctl(ADD) failed: errno \(code)")
            }
        }
        guard let multi = curl_multi_init() else {
            opened.forEach { _ = close($0) }
            throw CurlEngineStartError(detail: "curl_multi_init failed")
        }
        self.multi = multi

        let context = Unmanaged.passUnretained(self).toOpaque()
        var ok = sluice_curl_multi_setopt_socket_function(multi, curlSocketCallback) == CURLM_OK
        ok = ok && sluice_curl_multi_setopt_pointer(multi, CURLMOPT_SOCKETDATA, context) == CURLM_OK
        ok = ok && sluice_curl_multi_setopt_timer_function(multi, curlTimerCallback) == CURLM_OK
        ok = ok && sluice_curl_multi_setopt_pointer(multi, CURLMOPT_TIMERDATA, context) == CURLM_OK
        ok = ok && sluice_curl_multi_setopt_long(multi, CURLMOPT_MAX_HOST_CONNECTIONS, configuration.maxConnectionsPerHost) == CURLM_OK
        ok = ok && sluice_curl_multi_setopt_long(multi, CURLMOPT_MAXCONNECTS, configuration.maxIdleConnections) == CURLM_OK
        // HTTP/2 transfers to one upstream share connections (HTTP/1.1 is never pipelined: libcurl
        // dropped pipelining in 7.62; an HTTP/1.1 connection carries one transfer at a time).
        ok = ok && sluice_curl_multi_setopt_long(multi, CURLMOPT_PIPELINING, Int(CURLPIPE_MULTIPLEX)) == CURLM_OK
        ok = ok && sluice_curl_multi_setopt_long(multi, CURLMOPT_MAX_CONCURRENT_STREAMS, configuration.maxConcurrentStreams) == CURLM_OK
        guard ok else {
            curl_multi_cleanup(multi)
            opened.forEach { _ = close($0) }
            throw CurlEngineStartError(detail: "curl_multi_setopt failed")
        }
    }

    deinit {
        _ = close(wakeFD)
    }

    // MARK: Cross-thread

    /// `sluice-curl-<index>`: at most 15 bytes for indices up to 256 (the kernel's limit for a name).
    var threadName: String { "sluice-curl-\(index)" }

    func startThread() throws(CurlEngineStartError) {
        inbox.withLock { $0.accepting = true }
        let context = Unmanaged.passRetained(self).toOpaque()
        var tid = pthread_t()
        let rc = pthread_create(&tid, nil, { context in
            let loop = Unmanaged<CurlEventLoop>.fromOpaque(context!).takeRetainedValue()
            // Named so that `top -H`, `ps -L` and profilers tell the engine threads apart (a thread
            // inherits its creator's name otherwise, often a Swift concurrency pool thread's).
            nameThisThread(loop.threadName)
            loop.run()
            return nil
        }, context)
        guard rc == 0 else {
            Unmanaged<CurlEventLoop>.fromOpaque(context).release()
            inbox.withLock { $0.accepting = false }
            throw CurlEngineStartError(detail: "pthread_create failed: \(rc)")
        }
        thread.withLock { $0 = tid }
    }


    /// Asks the loop to shut down (if it runs) and returns once its thread finished and was joined.
    func shutdownAndJoin() async {
        let wasRunning = enqueue(.shutdown)
        if wasRunning || thread.withLock({ $0 != nil }) {
            await waitForExit()
        }
        if let tid = thread.withLock({ state -> pthread_t? in defer { state = nil }; return state }) {
            pthread_join(tid, nil)
        }
    }

    /// For a failed engine start: asks a running thread to exit and detaches it instead of joining.
    func stopWithoutJoining() {
        enqueue(.shutdown)
        if let tid = thread.withLock({ state -> pthread_t? in defer { state = nil }; return state }) {
            pthread_detach(tid)
        }
    }

    private func waitForExit() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let exitedAlready = exitState.withLock { state -> Bool in
                if state.exited { return true }
                state.waiters.append(continuation)
                return false
            }
            if exitedAlready { continuation.resume() }
        }
    }

    // MARK: Engine thread

    private func run() {
        var events = [epoll_event](repeating: epoll_event(), count: Int(Self.maxEventsPerWait))
        while !stopping {
            // A due curl timeout is handled without sleeping (and without a timerfd round trip).
            let waitMs: Int32 = curlTimeoutDue ? 0 : -1
            let ready = events.withUnsafeMutableBufferPointer {
                epoll_wait(epollFD, $0.baseAddress, Self.maxEventsPerWait, waitMs)
            }
            if ready < 0 {
                if errno == EINTR { continue }
                logger.critical("curl engine thread: epoll_wait failed", metadata: ["errno": "\(errno)", "thread": "\(index)"])
                failAll(UpstreamError(kind: .other, detail: "engine event loop failed"))
                break
            }
            for slot in 0..<Int(ready) {
                let fd = events[slot].data.fd
                let flags = events[slot].events
                switch fd {
                case wakeFD:
                    drain(wakeFD)
                    runCommands()
                case curlTimerFD:
                    drain(curlTimerFD)
                    curlTimerFired()
                case deadlineTimerFD:
                    drain(deadlineTimerFD)
                    enforceDeadlines()
                default:
                    guard watchedSockets[fd]?.wanted != nil else {
                        unwantedSocketEvent(fd)
                        continue
                    }
                    var mask: Int32 = 0
                    if flags & EPOLLIN.rawValue != 0 { mask |= CURL_CSELECT_IN }
                    if flags & EPOLLOUT.rawValue != 0 { mask |= CURL_CSELECT_OUT }
                    if flags & (EPOLLERR.rawValue | EPOLLHUP.rawValue) != 0 { mask |= CURL_CSELECT_ERR }
                    socketAction(fd, mask)
                }
            }
            if curlTimeoutDue {
                curlTimeoutDue = false
                socketAction(CURL_SOCKET_TIMEOUT, 0)
            }
            collectCompletedTransfers()
            handOverHeads()
        }
        tearDown()
    }

    /// A head received by a transfer's callback: resumed at the end of this turn of the loop.
    func headReceived(_ response: UpstreamResponse, continuation: HeadContinuation) {
        receivedHeads.append((continuation, response))
    }

    /// Resumes the waiters of the heads received during this turn. Why not at once: a small answer's
    /// head, body and end usually arrive in one read. Resumed at once, the waiting task would wake on
    /// its event loop, find the body not there yet, sleep, and be woken again for the body and again for
    /// its end: three cross-thread wake-ups. Resumed after the turn, it finds the whole body buffered.
    private func handOverHeads() {
        guard !receivedHeads.isEmpty else { return }
        for (continuation, response) in receivedHeads {
            continuation.resume(returning: .success(response))
        }
        receivedHeads.removeAll(keepingCapacity: true)
    }

    private func drain(_ fd: Int32) {
        var value: UInt64 = 0
        _ = read(fd, &value, MemoryLayout<UInt64>.size)
    }

    private func tearDown() {
        handOverHeads()
        // Nothing accepted may be left unanswered: after an abnormal exit the inbox can still hold work.
        let leftover = inbox.withLock { inbox -> [Command] in
            inbox.accepting = false
            var taken: [Command] = []
            swap(&taken, &inbox.commands)
            return taken
        }
        for case .start(let transfer, let continuation) in leftover {
            _ = transfer.machine.transferFailed(.shuttingDown)
            counters.inFlight.subtract(1, ordering: .relaxed)
            counters.countEnd(.shuttingDown)
            transfer.markEnded()
            continuation.resume(returning: .failure(UpstreamError(kind: .shuttingDown, detail: "the upstream engine stopped")))
        }
        for handle in idleHandles { curl_easy_cleanup(handle) }
        idleHandles.removeAll()
        // May call the socket and timer callbacks while closing pooled connections: fds still open.
        curl_multi_cleanup(multi)
        _ = close(curlTimerFD)
        _ = close(deadlineTimerFD)
        _ = close(epollFD)
        let waiters = exitState.withLock { state -> [CheckedContinuation<Void, Never>] in
            state.exited = true
            defer { state.waiters = [] }
            return state.waiters
        }
        waiters.forEach { $0.resume() }
    }
}


/// Sets the calling thread's name (what `/proc/<pid>/task/<tid>/comm` shows). Glibc's
/// `pthread_setname_np` is not visible to Swift without `_GNU_SOURCE`; the kernel's own interface for the
/// same thing is this file. A name that cannot be set is only cosmetic, so failures are ignored.
func nameThisThread(_ name: String) {
    let fd = open("/proc/thread-self/comm", O_WRONLY | O_CLOEXEC)
    guard fd >= 0 else { return }
    defer { close(fd) }
    let bytes = Array(name.utf8.prefix(15))
    _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
}
