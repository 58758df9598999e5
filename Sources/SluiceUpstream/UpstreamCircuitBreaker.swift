import Glibc
import Synchronization

/// Keeps a failing upstream from costing every request a connect timeout: after
/// `failureThreshold` consecutive failures the circuit opens and requests are refused at once for
/// `openMillis`; then one probe is let through, and its outcome closes or reopens the circuit.
///
/// Only failures that say the upstream is down count (connect failures and timeouts, 502/503/504);
/// a 400 or a 429 is the upstream working as designed.
public final class UpstreamCircuitBreaker: Sendable {
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
    public init(configuration: Configuration = Configuration(), clock: @escaping @Sendable () -> Int64 = UpstreamCircuitBreaker.monotonicMillis) {
        self.configuration = configuration
        self.clock = clock
    }

    public static let monotonicMillis: @Sendable () -> Int64 = {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Int64(ts.tv_sec) * 1000 + Int64(ts.tv_nsec) / 1_000_000
    }

    /// Whether the upstream is refusing work now (for metrics and readiness).
    public var isOpen: Bool {
        if healthy.load(ordering: .acquiring) { return false }
        return state.withLock { if case .closed = $0 { false } else { true } }
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

    /// Reports the outcome of a request that `acquire` allowed (or probed).
    public func record(upstreamDown: Bool) {
        if !upstreamDown && healthy.load(ordering: .acquiring) { return }
        let now = clock()
        state.withLock { state in
            defer { healthy.store(state == .closed(consecutiveFailures: 0), ordering: .releasing) }
            switch (state, upstreamDown) {
            case (_, false):
                state = .closed(consecutiveFailures: 0)
            case (.closed(let failures), true):
                state = failures + 1 >= configuration.failureThreshold
                    ? .open(untilMillis: now + Int64(configuration.openMillis))
                    : .closed(consecutiveFailures: failures + 1)
            case (.halfOpen, true), (.open, true):
                state = .open(untilMillis: now + Int64(configuration.openMillis))
            }
        }
    }
}
