import Foundation
import XCTest
@testable import SluiceRedis
import SluiceCore

#if canImport(Glibc)
import Glibc
#endif

/// A private Redis Cluster on loopback for one test: three primaries and three replicas
/// (`redis-server --cluster-enabled yes`, joined by `redis-cli --cluster create`), a node timeout of
/// one second so a failover takes a few, and `cluster-require-full-coverage no` (what Sluice's
/// documentation recommends: the other shards keep answering while one has no primary).
final class RedisClusterProcess {
    let servers: [RedisServerProcess]
    let directory: URL

    static var cli: URL? {
        ["/usr/bin/redis-cli", "/usr/local/bin/redis-cli"].map(URL.init(fileURLWithPath:))
            .first { FileManager.default.isExecutableFile(atPath: $0.path) }
    }

    init() throws {
        guard Self.cli != nil else { throw XCTSkip("redis-cli is not installed (apt-get install redis-tools)") }
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-redis-cluster-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let base = try Self.freeBasePort()
        var servers: [RedisServerProcess] = []
        for port in base..<(base + 6) {
            servers.append(try RedisServerProcess(port: port, extraArguments: [
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes-\(port).conf", "--cluster-node-timeout", "1000",
                "--cluster-require-full-coverage", "no", "--dir", directory.path,
                // Replicas sync at once (the default waits 5 s for more replicas to share a transfer):
                // a replica that never synced cannot take over.
                "--repl-diskless-sync-delay", "0",
            ]))
        }
        self.servers = servers
        let create = try Self.run(["--cluster", "create"] + servers.map { "127.0.0.1:\($0.port)" } + ["--cluster-replicas", "1", "--cluster-yes"])
        guard create.status == 0 else { throw RedisTestError("redis-cli --cluster create failed: \(create.output)") }
        try waitUntilHealthy()
    }

    deinit {
        for server in servers { server.stop() }
        try? FileManager.default.removeItem(at: directory)
    }

    /// Waits until every live server says `cluster_state:ok` and agrees on one primary per shard.
    func waitUntilHealthy(seconds: Double = 20) throws {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            let live = servers.filter(\.isRunning)
            if live.allSatisfy({ (try? cli($0.port, "CLUSTER", "INFO"))?.contains("cluster_state:ok") == true }),
               let primaries = try? primaries(), primaries.count == 3,
               // Every primary's replica is in sync (only a synced replica can take over).
               primaries.allSatisfy({ (try? cli($0, "INFO", "replication"))?.contains("state=online") == true })
            {
                return
            }
            usleep(50_000)
        }
        throw RedisTestError("the redis cluster did not become healthy within \(seconds) s")
    }

    /// The seeds Sluice is given: the first server only (it finds the rest).
    var config: RedisConfig {
        var config = RedisConfig(host: "127.0.0.1", port: servers[0].port)
        config.clusterNodes = [RedisConfig(host: "127.0.0.1", port: servers[0].port)]
        return config
    }

    /// The ports of the primaries serving slots, as a live server sees them.
    func primaries() throws -> [Int] {
        guard let asked = servers.first(where: \.isRunning) else { return [] }
        return try cli(asked.port, "CLUSTER", "NODES").split(separator: "\n").compactMap { line in
            let fields = line.split(separator: " ")
            guard fields.count >= 9, fields[2].contains("master"), !fields[2].contains("fail") else { return nil }
            return Int(fields[1].split(separator: "@")[0].split(separator: ":").last ?? "")
        }
    }

    /// The port of the primary serving `slot`.
    func owner(ofSlot slot: Int) throws -> Int {
        guard let asked = servers.first(where: \.isRunning) else { throw RedisTestError("no server runs") }
        for line in try cli(asked.port, "CLUSTER", "NODES").split(separator: "\n") {
            let fields = line.split(separator: " ")
            guard fields.count >= 9, fields[2].contains("master"), !fields[2].contains("fail") else { continue }
            for range in fields[8...] where !range.hasPrefix("[") {  // [slot->-node]: a migration under way
                let bounds = range.split(separator: "-").compactMap { Int($0) }
                guard let low = bounds.first, (low...(bounds.last ?? low)).contains(slot) else { continue }
                return Int(fields[1].split(separator: "@")[0].split(separator: ":").last ?? "") ?? 0
            }
        }
        throw RedisTestError("no primary serves slot \(slot)")
    }

    func server(port: Int) -> RedisServerProcess? { servers.first { $0.port == port } }

    /// `redis-cli -p <port> <arguments…>`, its output.
    @discardableResult
    func cli(_ port: Int, _ arguments: String...) throws -> String {
        let result = try Self.run(["-p", String(port)] + arguments)
        guard result.status == 0 else { throw RedisTestError("redis-cli \(arguments) failed: \(result.output)") }
        return result.output
    }

    static func run(_ arguments: [String]) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = cli
        process.arguments = ["-h", "127.0.0.1"] + arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        return (process.terminationStatus, output)
    }

    /// P with P…P+5 and their cluster bus ports (P+10000…) free.
    static func freeBasePort() throws -> Int {
        for _ in 0..<200 {
            let base = Int.random(in: 20_000...50_000)
            let ports = Array(base..<(base + 6)) + Array((base + 10_000)..<(base + 10_006))
            if ports.allSatisfy({ !RedisServerProcess.accepts(port: $0) && canBind($0) }) { return base }
        }
        throw RedisTestError("no free port range for a redis cluster")
    }

    private static func canBind(_ port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = LoopbackListener.loopback(port: port)
        return withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
    }
}
