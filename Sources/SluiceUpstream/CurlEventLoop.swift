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
final class CurlEventLoop: @unchecked Sendable {
    typealias HeadContinuation = CheckedContinuation<Result<UpstreamResponse, UpstreamError>, Never>

    /// What other threads ask the engine thread to do.
    enum Command: Sendable {
        /// Attach the transfer; resume the continuation with the head or the failure.
        case start(UpstreamTransfer, HeadContinuation)
        /// The body consumer drained below the low watermark.
        case resume(UpstreamTransfer)
        /// The caller gave up (task cancelled, body dropped). Harmless if already over.
        case cancel(UpstreamTransfer)
        /// End every transfer with `.shuttingDown`, clean up all handles, exit the thread.
        case shutdown
    }

    private struct Inbox {
        var commands: [Command] = []
        var accepting = false
    }

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

    private let inbox = Mutex(Inbox())
    private let exitState = Mutex(ExitState())
    private let thread = Mutex<pthread_t?>(nil)

    /// Written by any thread to wake the engine thread; closed in `deinit` (never while an enqueuer
    /// could still write to it).
    private let wakeFD: Int32
    // Created here, closed by the engine thread when it exits.
    private let epollFD: Int32
    private let curlTimerFD: Int32
    private let deadlineTimerFD: Int32
    private let multi: UnsafeMutableRawPointer

    // MARK: Engine thread only

    private var transfers: [ObjectIdentifier: UpstreamTransfer] = [:]
    private var idleHandles: [UnsafeMutableRawPointer] = []
    /// Response heads received during this turn of the loop, handed over at its end (see
    /// ``handOverHeads()``).
    private var receivedHeads: [(HeadContinuation, UpstreamResponse)] = []
    /// The epoll registration of every socket in the epoll set: what curl wants (nil: curl is done
    /// with it for now, see ``watchSocket(_:_:)``) and the events registered.
    private var watchedSockets: [Int32: (wanted: UInt32?, registered: UInt32)] = [:]
    private var deadlineTimerArmed = false
    /// When the curl timer fd fires next (CLOCK_MONOTONIC ns), or nil when it is not armed.
    private var curlTimerArmedNs: UInt64?
    /// When curl wants its timeout (its latest timer call), or nil for none.
    private var curlTimeoutWantedNs: UInt64?
    /// curl asked for a timeout of 0 ms: run it right after the current batch of events.
    private var curlTimeoutDue = false
    private var stopping = false

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
        // HTTP/1.1 only: never pipeline or multiplex several transfers onto one connection.
        ok = ok && sluice_curl_multi_setopt_long(multi, CURLMOPT_PIPELINING, Int(CURLPIPE_NOTHING)) == CURLM_OK
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

    /// Hands a command to the engine thread. Returns false once the loop stopped accepting (shutdown,
    /// or never started); the caller then owns the consequences (e.g. fails its own continuation).
    @discardableResult
    func enqueue(_ command: Command) -> Bool {
        let (accepted, mustWake) = inbox.withLock { inbox -> (Bool, Bool) in
            guard inbox.accepting else { return (false, false) }
            if case .shutdown = command { inbox.accepting = false }
            inbox.commands.append(command)
            // Only the first command of a batch needs a wakeup; the loop takes the whole batch.
            return (true, inbox.commands.count == 1)
        }
        if mustWake {
            var one: UInt64 = 1
            _ = write(wakeFD, &one, MemoryLayout<UInt64>.size)
        }
        return accepted
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

    private func runCommands() {
        let batch = inbox.withLock { inbox -> [Command] in
            var taken: [Command] = []
            swap(&taken, &inbox.commands)
            return taken
        }
        for command in batch {
            switch command {
            case .start(let transfer, let continuation):
                start(transfer, continuation)
            case .resume(let transfer):
                resume(transfer)
            case .cancel(let transfer):
                end(transfer, .failure(UpstreamError(kind: .cancelled, detail: "cancelled by the caller")))
            case .shutdown:
                stopping = true
                failAll(UpstreamError(kind: .shuttingDown, detail: "the upstream engine is shutting down"))
            }
        }
    }

    private func resume(_ transfer: UpstreamTransfer) {
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
        transfer.lastByteAtNs = monotonicNanoseconds()
        _ = curl_easy_pause(handle, CURLPAUSE_CONT)
    }

    private func socketAction(_ fd: curl_socket_t, _ mask: Int32) {
        var running: Int32 = 0
        let rc = curl_multi_socket_action(multi, fd, mask, &running)
        if rc != CURLM_OK, rc != CURLM_BAD_SOCKET {
            logger.warning("curl_multi_socket_action failed", metadata: ["code": "\(rc.rawValue)", "thread": "\(index)"])
        }
    }

    private func start(_ transfer: UpstreamTransfer, _ continuation: HeadContinuation) {
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
        let now = monotonicNanoseconds()
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
        if let failure = CurlRequestConfigurator.configure(handle, for: transfer, configuration: configuration) {
            end(transfer, .failure(failure))
            return
        }
        let rc = curl_multi_add_handle(multi, handle)
        guard rc == CURLM_OK else {
            end(transfer, .failure(UpstreamError(kind: .other, detail: "curl_multi_add_handle failed: \(rc.rawValue)")))
            return
        }
        transfer.handleInMulti = true
        armDeadlineTimer()
    }

    /// Ends a transfer exactly once: detaches and recycles its handle, updates the counters and reports
    /// the outcome to whoever waits (the `execute` call or the body stream).
    private func end(_ transfer: UpstreamTransfer, _ outcome: Result<Void, UpstreamError>) {
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
            // Removing an unfinished transfer closes its connection instead of returning it to the pool.
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

    private func collectCompletedTransfers() {
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
            let elapsedMs = Int((monotonicNanoseconds() - transfer.startedAtNs) / 1_000_000)
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

    private func failAll(_ error: UpstreamError) {
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

    private func enforceDeadlines() {
        guard !transfers.isEmpty else {
            disarmDeadlineTimer()
            return
        }
        let now = monotonicNanoseconds()
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
    private func unwantedSocketEvent(_ fd: Int32) {
        watchedSockets[fd] = nil
        _ = epollControl(EPOLL_CTL_DEL, fd, 0)
    }

    private func epollControl(_ operation: Int32, _ fd: Int32, _ events: UInt32) -> Int32 {
        var event = epoll_event()
        event.events = events
        event.data.fd = fd
        return epoll_ctl(epollFD, operation, fd, &event)
    }

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
        let wanted = monotonicNanoseconds() + UInt64(timeoutMs) * 1_000_000
        curlTimeoutWantedNs = wanted
        if let armed = curlTimerArmedNs, armed <= wanted { return }
        setCurlTimerFD(to: wanted)
    }

    private func curlTimerFired() {
        curlTimerArmedNs = nil
        guard let wanted = curlTimeoutWantedNs else { return }
        if monotonicNanoseconds() >= wanted {
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

private func curlSocketCallback(
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

private func curlTimerCallback(_ multi: UnsafeMutableRawPointer?, _ timeoutMs: Int, _ context: UnsafeMutableRawPointer?) -> Int32 {
    guard let context else { return -1 }
    Unmanaged<CurlEventLoop>.fromOpaque(context).takeUnretainedValue().armCurlTimer(timeoutMs)
    return 0
}

/// CLOCK_MONOTONIC in nanoseconds (the clock of the engine's deadlines).
func monotonicNanoseconds() -> UInt64 {
    var now = timespec()
    clock_gettime(CLOCK_MONOTONIC, &now)
    return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
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
