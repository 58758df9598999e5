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
        client = try RedisClient(config: config, eventLoopGroup: eventLoopGroup, logger: logger)
        var rng = SystemRandomNumberGenerator()
        let nodeID = "node-" + String(rng.next(), radix: 36)
        metrics.sharedLimiterConfigured()
        let statistics = LimiterStatistics(callObserver: { micros, failure in metrics.limiterCall(micros: micros, failure: failure) })
        let store = try RedisLimiterStore(
            client: client, options: .init(usageStream: config.usageStream), nodeID: nodeID, statistics: statistics, logger: logger
        )
        self.store = store
        let redacted = config.redactedTarget
        let policy = config.onFailure
        let isCluster = !config.clusterNodes.isEmpty
        failover = FailoverLimiterStore(shared: store, policy: policy, fallbackNodeCount: config.fallbackNodeCount, onModeChange: { mode, error in
            let name = Self.modeName(mode)
            metrics.limiterMode(name)
            if mode == .shared {
                logger.notice("redis is back: limits are shared again", metadata: ["redis": "\(redacted)", "limiter": "redis"])
            } else {
                logger.warning(
                    isCluster
                        ? "a redis cluster shard is unreachable: enforcing the failure policy for its keys until it answers again (keys on other shards stay shared)"
                        : "redis unreachable: enforcing the failure policy until it answers again",
                    metadata: ["redis": "\(redacted)", "limiter": "\(name)", "policy": "\(policy.rawValue)", "error": "\(error ?? "-")"]
                )
            }
        })
        heartbeat = try NodeHeartbeat(client: client, nodeID: nodeID)
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
            await withTaskGroup(of: Void.self) { group in
                // The heartbeat: live nodes (for the `local` policy) and whether Redis answers.
                // In a cluster it tells about the heartbeat's shard only (its failure domain).
                group.addTask {
                    let domain = heartbeat.failureDomain
                    while !Task.isCancelled {
                        do {
                            let live = try await heartbeat.beat()
                            failover.updateLiveNodeCount(live)
                            failover.sharedStoreAnswered(domain: domain)
                            await failover.retryPendingSettlements()
                        } catch {
                            failover.sharedStoreFailed(error, domain: domain)
                        }
                        try? await Task.sleep(for: .milliseconds(NodeHeartbeat.defaultIntervalMillis))
                    }
                }
                // The limiter's upkeep: idle leases given back, the concurrency slots of requests
                // still running renewed (they expire one TTL after this node stops), failed calls
                // retried; the usage records flushed every second.
                group.addTask {
                    var lastFlush = ContinuousClock.now
                    while !Task.isCancelled {
                        store.maintain()
                        if ContinuousClock.now - lastFlush >= .seconds(1) {
                            lastFlush = ContinuousClock.now
                            let failed = await store.flushUsage()
                            if failed > 0 {
                                logger.warning("flushing usage records to redis failed; kept for the next flush", metadata: ["calls": "\(failed)"])
                            }
                        }
                        try? await Task.sleep(for: .milliseconds(RedisLimiterStore.maintenanceIntervalMillis))
                    }
                }
            }
        }
        // The last requests' settlements and usage that Redis missed get one more chance before the
        // connections close.
        await failover.retryPendingSettlements()
        _ = await store.finishOutstanding()
        await store.flushUsage()
        let owed = failover.pendingSettlements + store.owedSettlements
        if owed > 0 {
            logger.warning("shutdown: settlements Redis did not take are lost; the slots they hold expire by themselves",
                           metadata: ["settlements": "\(owed)"])
        }
        client.shutdown()
    }
}
