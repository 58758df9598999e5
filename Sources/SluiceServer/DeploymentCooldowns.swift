import Synchronization

/// Deployments that answered 429 with a `retry-after`: the provider's own limit is reached there,
/// so this node does not send it requests until then (they go to the model's other deployments).
///
/// Node-local: each node learns it from its own 429s. Every request asks for every deployment it
/// may choose; while nothing cools down that is one atomic load, no lock.
final class DeploymentCooldowns: Sendable {
    private let until = Mutex<[String: Int64]>([:])
    /// Entries in `until` (some possibly expired): 0 means nothing cools down.
    private let entries = Atomic<Int>(0)

    /// Milliseconds until `deployment` may be tried again (0: now).
    func remainingMs(_ deployment: String, nowMs: Int64) -> Int64 {
        guard entries.load(ordering: .acquiring) > 0 else { return 0 }
        return until.withLock { until in
            guard let end = until[deployment] else { return 0 }
            if end <= nowMs {
                until[deployment] = nil
                entries.store(until.count, ordering: .releasing)
                return 0
            }
            return end - nowMs
        }
    }

    /// Skips `deployment` for `ms` from `nowMs` (a later end than one already set wins).
    func coolDown(_ deployment: String, forMs ms: Int64, nowMs: Int64) {
        until.withLock { until in
            until[deployment] = max(until[deployment] ?? 0, nowMs + ms)
            entries.store(until.count, ordering: .releasing)
        }
    }
}
