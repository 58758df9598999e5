import Logging

/// Announces this node in Redis every `interval` and learns how many nodes are live, so that under
/// the `local` failure policy each node can enforce its share (limit ÷ live nodes) of every limit.
public final class NodeHeartbeat: Sendable {
    public static let defaultIntervalMillis = 2_000

    public let nodeID: String
    private let client: RedisClient
    private let script: RedisScript
    private let intervalMillis: Int

    public init(client: RedisClient, nodeID: String, intervalMillis: Int = NodeHeartbeat.defaultIntervalMillis) throws(RedisScriptLoadError) {
        self.client = client
        self.nodeID = nodeID
        self.intervalMillis = intervalMillis
        script = RedisScript(name: "heartbeat", source: try RedisScriptFiles.read("heartbeat.lua"))
    }

    /// The failure domain (`RedisClient.failureDomain(ofKey:)`) the heartbeats go to: what a beat's
    /// success or failure tells about.
    public var failureDomain: Int { client.failureDomain(ofKey: RedisKeyLayout.nodes) }

    /// One heartbeat: returns the number of live nodes (this one included).
    public func beat() async throws(RedisError) -> Int {
        // A node counts as live for three intervals, so one lost heartbeat does not shrink the cluster.
        let reply = try await client.evalScript(script, keys: [RedisKeyLayout.nodes], arguments: [nodeID, String(intervalMillis * 3)])
        guard let count = reply.integer, count > 0 else {
            throw .unexpectedReply("heartbeat returned \(reply)")
        }
        return Int(count)
    }
}
