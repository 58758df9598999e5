import NIOPosix
import SluiceCore
import Synchronization

/// The circuit breakers of the upstreams, created on first use by name.
///
/// Every request looks its upstream's breaker up: each thread keeps its own map of the (shared)
/// breakers, so the lookup takes no lock all event loops share.
public final class UpstreamBreakers: Sendable {
    private let breakers = Mutex<[String: CircuitBreaker]>([:])
    private let perThread = ThreadSpecificVariable<ThreadBreakers>()

    public init() {}

    /// The breaker of the upstream named `upstream` (made on first use). A configuration other than
    /// the breaker's (a reload changed `circuit_breaker`) replaces it with a new, closed one.
    public func breaker(for upstream: String, configuration: CircuitBreaker.Configuration = CircuitBreaker.Configuration()) -> CircuitBreaker {
        let local = perThread.currentValue ?? {
            let made = ThreadBreakers()
            perThread.currentValue = made
            return made
        }()
        if let breaker = local.byName[upstream], breaker.configuration == configuration { return breaker }
        let breaker = breakers.withLock { breakers in
            if let breaker = breakers[upstream], breaker.configuration == configuration { return breaker }
            let breaker = CircuitBreaker(configuration: configuration)
            breakers[upstream] = breaker
            return breaker
        }
        local.byName[upstream] = breaker
        return breaker
    }
}

/// One thread's view of `UpstreamBreakers`. `@unchecked Sendable`: only reached through its own
/// thread's slot. Bounded by the upstream names the config ever had.
private final class ThreadBreakers: @unchecked Sendable {
    var byName: [String: CircuitBreaker] = [:]
}
