import Logging
import NIOCore
import NIOPosix
import SluiceCore
import Synchronization

/// The pipelining connections (`RedisConnection`) to one Redis server, one per event loop of a
/// group: a single Redis has one pool, a Redis Cluster one per primary.
///
/// A call made on one of the group's event loops (the gateway's requests run there) goes to that
/// loop's connection: no thread hop. Other callers take the connections round-robin, preferring a
/// connected one, so one broken socket does not fail every n-th call.
final class RedisServerPool: Sendable {
    /// `host:port`, as the cluster names the server (and as logs show it).
    let address: String
    let config: RedisConfig
    private let connections: [RedisConnection]
    private let connectionOfLoop: [ObjectIdentifier: RedisConnection]
    private let nextConnection = Atomic<Int>(0)

    /// - Parameter tls: the client's TLS context (`rediss://`), for this server's name.
    /// - Parameter start: connect at once; false for a pool made only to be shut down (its client is
    ///   shutting down, and its loops may be gone).
    init(config: RedisConfig, tls: RedisTLS?, options: RedisClientOptions, group: any EventLoopGroup, logger: Logger, name: String, start: Bool = true) {
        self.config = config
        address = Self.address(host: config.host, port: config.port)
        let tls = tls?.forServer(config)
        var connections: [RedisConnection] = []
        for (index, loop) in group.makeIterator().enumerated() {
            connections.append(RedisConnection(config: config, tls: tls, options: options, logger: logger, name: "\(name)-\(index)", eventLoop: loop))
        }
        self.connections = connections
        connectionOfLoop = Dictionary(connections.map { (ObjectIdentifier($0.eventLoop), $0) }, uniquingKeysWith: { first, _ in first })
        if start { for connection in connections { connection.start() } }
    }

    /// `host:port` (IPv6 hosts in brackets), the form `CLUSTER SLOTS` and `MOVED` name servers by.
    static func address(host: String, port: Int) -> String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }

    var isConnected: Bool { connections.contains { $0.isConnected } }

    var connectedCount: Int { connections.reduce(0) { $0 + ($1.isConnected ? 1 : 0) } }

    var lastError: RedisError? { connections.lazy.compactMap(\.lastError).first }

    func shutdown() {
        for connection in connections { connection.shutdown() }
    }

    /// Sends one command; with `asking`, an `ASKING` goes first on the same connection, right
    /// before it (a slot being imported by this server answers only a command so marked).
    func send(_ command: RedisArguments, asking: Bool = false) async -> Result<RedisReply, RedisError> {
        await pickConnection().send(command, precededBy: asking ? Self.askingCommand : nil)
    }

    private static let askingCommand = RedisArguments(["ASKING"])

    private func pickConnection() -> RedisConnection {
        if let loop = MultiThreadedEventLoopGroup.currentEventLoop,
            let own = connectionOfLoop[ObjectIdentifier(loop)], own.isConnected
        {
            return own
        }
        let start = UInt(bitPattern: nextConnection.wrappingAdd(1, ordering: .relaxed).oldValue)
        let count = UInt(connections.count)
        for offset in 0..<count {
            let candidate = connections[Int((start &+ offset) % count)]
            if candidate.isConnected { return candidate }
        }
        return connections[Int(start % count)]
    }
}
