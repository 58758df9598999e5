import Logging
import NIOCore
import ServiceLifecycle
import SluiceCore
import SluiceRedis

/// The shared limiter of a multi-node deployment: the Redis store behind the failure policy, and
/// this node's heartbeat. As a service it runs the heartbeat and closes the Redis connections after
/// the server has drained (settlements of the last requests still go to Redis).
final class RedisLimiting: Service, Sendable {
    let client: RedisClient
    let store: RedisLimiterStore
    let failover: FailoverLimiterStore
    let heartbeat: NodeHeartbeat
    private let logger: Logger

    /// - Parameter eventLoopGroup: the server's loops; each gets its own Redis connection, so a
    ///   request's limiter calls never leave its thread.
    init(config: RedisConfig, metrics: GatewayMetrics, eventLoopGroup: any EventLoopGroup, logger: Logger) throws {
        self.logger = logger
        client = RedisClient(config: config, eventLoopGroup: eventLoopGroup, logger: logger)
        let store = try RedisLimiterStore(client: client, logger: logger)
        self.store = store
        let redacted = config.redactedURL
        let policy = config.onFailure
        failover = FailoverLimiterStore(shared: store, policy: policy, fallbackNodeCount: config.fallbackNodeCount, onModeChange: { mode, error in
            let name = Self.modeName(mode)
            metrics.limiterMode(name)
            if mode == .shared {
                logger.notice("redis is back: limits are shared again", metadata: ["redis": "\(redacted)", "limiter": "redis"])
            } else {
                logger.warning(
                    "redis unreachable: enforcing the failure policy until it answers again",
                    metadata: ["redis": "\(redacted)", "limiter": "\(name)", "policy": "\(policy.rawValue)", "error": "\(error ?? "-")"]
                )
            }
        })
        var rng = SystemRandomNumberGenerator()
        heartbeat = try NodeHeartbeat(client: client, nodeID: "node-" + String(rng.next(), radix: 36))
    }

    /// `redis` while Redis answers, else the failure policy in force (`local`, `open`, `closed`).
    var modeName: String { Self.modeName(failover.mode) }

    private static func modeName(_ mode: FailoverLimiterStore.Mode) -> String {
        mode == .shared ? "redis" : mode.rawValue
    }

    func run() async throws {
        let failover = self.failover
        let heartbeat = self.heartbeat
        let store = self.store
        let logger = self.logger
        await cancelWhenGracefulShutdown {
            var lastRenewal = ContinuousClock.now
            while !Task.isCancelled {
                do {
                    let live = try await heartbeat.beat()
                    failover.updateLiveNodeCount(live)
                    failover.sharedStoreAnswered()
                    await failover.retryPendingSettlements()
                    // The concurrency leases of requests still running here: they expire by
                    // themselves one TTL after this node stops renewing them.
                    if ContinuousClock.now - lastRenewal >= .milliseconds(store.leaseRenewalIntervalMillis) {
                        lastRenewal = ContinuousClock.now
                        do {
                            try await store.renewLeases()
                        } catch {
                            logger.warning("renewing concurrency leases failed; retried at the next heartbeat", metadata: ["error": "\(error)"])
                        }
                    }
                } catch {
                    failover.sharedStoreFailed(error)
                }
                try? await Task.sleep(for: .milliseconds(NodeHeartbeat.defaultIntervalMillis))
            }
        }
        // The last requests' settlements that Redis missed get one more chance before the connections close.
        await failover.retryPendingSettlements()
        if failover.pendingSettlements > 0 {
            logger.warning("shutdown: settlements Redis did not take are lost; their reservations expire by themselves",
                           metadata: ["settlements": "\(failover.pendingSettlements)"])
        }
        client.shutdown()
    }
}
