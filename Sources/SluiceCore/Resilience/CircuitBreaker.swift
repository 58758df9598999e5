import Synchronization

/// Keeps a failing dependency from costing every request a timeout: after `failureThreshold`
/// consecutive failures the circuit opens and requests are refused at once for `openMillis`; then
/// one probe is let through, and its outcome closes or reopens the circuit. Any success closes it.
///
/// One type for both dependencies that can fail under Sluice: each upstream (5 failures that say it
/// is down — connect failures and timeouts, 502/503/504 — open it for 5 s; a 400 or a 429 is the
/// upstream working as designed) and the shared limiter store (`FailoverLimiterStore`: one failure
/// opens it for a second, a heartbeat that answers closes it).
public final class CircuitBreaker: Sendable {
    public struct Configuration: Sendable, Hashable {
        public static let defaultFailureThreshold = 5
        public static let defaultOpenMillis = 5_000

        public var failureThreshold: Int
        public var openMillis: Int

        public init(failureThreshold: Int = defaultFailureThreshold, openMillis: Int = defaultOpenMillis) {
            self.failureThreshold = max(1, failureThreshold)
            self.openMillis = max(1, openMillis)
        }
    }

    /// What to do with the next request.
    public enum Decision: Sendable, Equatable {
        /// Send it (the circuit is closed).
        case allow
        /// Send it as the one probe of a half-open circuit; report its outcome with `record`.
        case probe
        /// Refuse it without trying; the circuit may let a probe through after this many seconds.
        case reject(retryAfterSeconds: Double)
    }

    enum State: Equatable {
        case closed(consecutiveFailures: Int)
        case open(untilMillis: Int64)
        case halfOpen
    }

    public let configuration: Configuration
    private let clock: @Sendable () -> Int64
    private let state = Mutex(State.closed(consecutiveFailures: 0))
    /// True exactly when `state` is `.closed(consecutiveFailures: 0)`, the healthy state. Every
    /// request of every event loop asks and reports; in the healthy state that is one atomic load each
    /// instead of a lock all cores share. Written only under the lock.
    private let healthy = Atomic<Bool>(true)

    /// - Parameter clock: monotonic milliseconds (injectable for tests).
    public init(configuration: Configuration = Configuration(), clock: @escaping @Sendable () -> Int64 = MonotonicClock.milliseconds) {
        self.configuration = configuration
        self.clock = clock
    }

    /// Whether the circuit is refusing work now (for metrics and readiness).
    public var isOpen: Bool {
        if healthy.load(ordering: .acquiring) { return false }
        return state.withLock { if case .closed = $0 { false } else { true } }
    }

    /// Whether `acquire` would refuse now: open and not yet due for a probe, or a probe in flight.
    /// (Routing skips such a deployment; one due for a probe is still offered one.)
    public var refusesNow: Bool { refusalSeconds != nil }

    /// When `acquire` would refuse now, the seconds until a probe may go; nil when it would not.
    /// Takes no probe.
    public var refusalSeconds: Double? {
        if healthy.load(ordering: .acquiring) { return nil }
        let now = clock()
        return state.withLock { state in
            switch state {
            case .closed: nil
            case .open(let until): now < until ? Double(until - now) / 1000 : nil
            case .halfOpen: 1
            }
        }
    }

    public func acquire() -> Decision {
        if healthy.load(ordering: .acquiring) { return .allow }
        let now = clock()
        return state.withLock { state in
            switch state {
            case .closed:
                return .allow
            case .open(let until) where now < until:
                return .reject(retryAfterSeconds: Double(until - now) / 1000)
            case .open:
                state = .halfOpen
                return .probe
            case .halfOpen:
                // A probe is in flight: the others wait for its verdict.
                return .reject(retryAfterSeconds: 1)
            }
        }
    }

    /// A change of the circuit that a `record` made.
    public enum Transition: Sendable, Equatable {
        /// It was closed and is open now.
        case opened
        /// It was open (or probing) and is closed now.
        case closed
    }

    /// Reports an outcome: of a request that `acquire` allowed (or probed), or any other sign of
    /// the dependency's health (a heartbeat). Returns the change it made to the circuit, if any.
    @discardableResult
    public func record(upstreamDown: Bool) -> Transition? {
        if !upstreamDown && healthy.load(ordering: .acquiring) { return nil }
        let now = clock()
        return state.withLock { state -> Transition? in
            defer { healthy.store(state == .closed(consecutiveFailures: 0), ordering: .releasing) }
            let wasClosed: Bool
            if case .closed = state { wasClosed = true } else { wasClosed = false }
            switch (state, upstreamDown) {
            case (_, false):
                state = .closed(consecutiveFailures: 0)
                return wasClosed ? nil : .closed
            case (.closed(let failures), true):
                let opens = failures + 1 >= configuration.failureThreshold
                state = opens ? .open(untilMillis: now + Int64(configuration.openMillis)) : .closed(consecutiveFailures: failures + 1)
                return opens ? .opened : nil
            case (.halfOpen, true), (.open, true):
                state = .open(untilMillis: now + Int64(configuration.openMillis))
                return nil
            }
        }
    }
}
