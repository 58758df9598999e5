import NIOCore

/// When a connection that holds a server slot without making progress must go:
/// - an idle keep-alive connection (no request started within `idleTimeout` after the last response),
/// - a client that sends a head and then trickles or stalls the body past `bodyTimeout`.
///
/// Never while a response is being produced (a long stream is not idle). The connection handler
/// reports the phases and acts on the expiry (a close; a 408 in the OpenAI envelope, then a close).
///
/// Timer churn: a phase change only records its deadline. The one scheduled check never runs later
/// than the shortest timeout after it was scheduled, so no new deadline can be earlier than it; when
/// it runs before the phase's deadline it is scheduled again (at the deadline, or the shortest timeout
/// from now if sooner). So a request costs no timer scheduling or cancelling at all.
///
/// Event loop only (the connection's), like the handler that owns it.
final class ConnectionDeadlines {
    enum Expiry: Equatable { case idle, requestBody }

    private enum Phase { case idle, readingRequest, responding }

    private let idleTimeout: TimeAmount
    private let bodyTimeout: TimeAmount
    private let eventLoop: any EventLoop
    /// Told once when a deadline passes; the phase is then over (nothing more expires until the next).
    private let onExpiry: (Expiry) -> Void
    private var phase = Phase.idle
    /// When the current phase times out (nil while responding: never).
    private var deadline: NIODeadline?
    private var timer: Scheduled<Void>?

    init(idleTimeout: TimeAmount, bodyTimeout: TimeAmount, eventLoop: any EventLoop, onExpiry: @escaping (Expiry) -> Void) {
        self.idleTimeout = idleTimeout
        self.bodyTimeout = bodyTimeout
        self.eventLoop = eventLoop
        self.onExpiry = onExpiry
    }

    /// The connection is open and waits for its first request.
    func connectionOpened() { arm(.idle) }

    /// A request head arrived: its body must follow within `bodyTimeout`.
    func requestStarted() { arm(.readingRequest) }

    /// The request was read whole: no deadline while it is answered.
    func requestRead() {
        phase = .responding
        deadline = nil
    }

    /// The response ended: the connection may be idle for `idleTimeout`.
    func responseEnded() {
        if phase == .responding { arm(.idle) }
    }

    /// The connection is gone: nothing expires any more.
    func stop() {
        deadline = nil
        timer?.cancel()
        timer = nil
    }

    private func arm(_ phase: Phase) {
        self.phase = phase
        deadline = eventLoop.now + (phase == .readingRequest ? bodyTimeout : idleTimeout)
        if timer == nil { scheduleCheck() }
    }

    private func scheduleCheck() {
        var at = eventLoop.now + min(idleTimeout, bodyTimeout)
        if let deadline, deadline < at { at = deadline }
        // Runs on this loop; the check is cancelled by stop().
        let bound = NIOLoopBound(self, eventLoop: eventLoop)
        timer = eventLoop.scheduleTask(deadline: at) { bound.value.check() }
    }

    private func check() {
        timer = nil
        guard let deadline else { return }
        guard eventLoop.now >= deadline else { return scheduleCheck() }
        self.deadline = nil
        switch phase {
        case .idle: onExpiry(.idle)
        case .readingRequest: onExpiry(.requestBody)
        case .responding: break
        }
    }
}
