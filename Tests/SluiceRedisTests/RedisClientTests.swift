import Foundation
import Logging
import NIOCore
import NIOPosix
import Synchronization
import XCTest
import SluiceCore
@testable import SluiceRedis

final class RedisClientTests: XCTestCase {
    var server: RedisServerProcess?
    var clients: [RedisClient] = []

    override func tearDown() {
        for client in clients { client.shutdown() }
        clients = []
        server?.stop()
    }

    private func startServer(_ extraArguments: [String] = []) throws -> RedisServerProcess {
        let started = try RedisServerProcess(extraArguments: extraArguments)
        server = started
        return started
    }

    private func makeClient(_ config: RedisConfig, options: RedisClientOptions = testClientOptions) -> RedisClient {
        // Only TLS files can fail a client's creation, and these configs are plain redis://.
        let client = try! RedisClient(config: config, options: options)
        clients.append(client)
        return client
    }

    /// The replies of 50 concurrent calls (they share pipelined rounds).
    private func fiftyAtOnce(_ call: @escaping @Sendable () async throws -> RedisReply) async throws -> [RedisReply] {
        try await withThrowingTaskGroup(of: RedisReply.self) { group in
            for _ in 0..<50 { group.addTask { try await call() } }
            var collected: [RedisReply] = []
            for try await reply in group { collected.append(reply) }
            return collected
        }
    }

    private func expectError(_ body: () async throws(RedisError) -> Void, file: StaticString = #filePath, line: UInt = #line) async -> RedisError? {
        do {
            try await body()
            XCTFail("expected an error", file: file, line: line)
            return nil
        } catch {
            return error
        }
    }

    func testEveryReplyTypeIsCopiedOut() async throws {
        let client = makeClient(try startServer().config)
        let binary: [UInt8] = [0, 1, 0xFF, 0x0D, 0x0A, 0x80, 0]
        let reply1 = try await client.send([Array("SET".utf8), Array("bin".utf8), binary])
        XCTAssertEqual(reply1, .status("OK"))
        let reply2 = try await client.send(["GET", "bin"])
        XCTAssertEqual(reply2, .bulkString(binary))
        let reply3 = try await client.send(["GET", "missing"])
        XCTAssertEqual(reply3, .null)
        let reply4 = try await client.send(["INCRBY", "counter", "41"])
        XCTAssertEqual(reply4, .integer(41))
        let reply5 = try await client.send(["RPUSH", "list", "a", "", "c"])
        XCTAssertEqual(reply5, .integer(3))
        let reply6 = try await client.send(["LRANGE", "list", "0", "-1"])
        XCTAssertEqual(reply6, .array([.bulkString(Array("a".utf8)), .bulkString([]), .bulkString(Array("c".utf8))]))
        let reply7 = try await client.send(["EVAL", "return {1, {2, 'x'}, redis.error_reply('E nested')}", "0"])
        XCTAssertEqual(reply7, .array([.integer(1), .array([.integer(2), .bulkString(Array("x".utf8))]), .error("E nested")]))
        let error = await expectError { () throws(RedisError) in _ = try await client.send(["INCR", "list"]) }
        guard case .server(let message)? = error else { return XCTFail("expected a server error, got \(String(describing: error))") }
        XCTAssertTrue(message.hasPrefix("WRONGTYPE"), message)
        XCTAssertFalse(error?.outcomeUnknown ?? true)
        let empty = await expectError { () throws(RedisError) in _ = try await client.send([String]()) }
        XCTAssertEqual(empty, .invalidCommand("no arguments"))
    }

    func testConcurrentCommandsArePipelinedAndAnsweredInOrder() async throws {
        let client = makeClient(try startServer().config)
        let count = 2_000
        let results = try await withThrowingTaskGroup(of: Int64.self) { group in
            for _ in 0..<count {
                group.addTask { try await client.send(["INCR", "pipelined"]).integer ?? -1 }
            }
            var collected: [Int64] = []
            for try await value in group { collected.append(value) }
            return collected
        }
        // Each INCR's reply went to its own caller: every value from 1 to count exactly once.
        XCTAssertEqual(results.sorted(), (1...Int64(count)).map { $0 })
        XCTAssertTrue(client.isConnected)
        XCTAssertEqual(client.connectedCount, testClientOptions.connectionCount)
    }

    func testAuthAndSelectOnConnect() async throws {
        let server = try startServer(["--requirepass", "s3cret"])
        var config = server.config
        config.password = Secret("s3cret")
        config.database = 3
        let client = makeClient(config)
        _ = try await client.send(["SET", "where", "db3"])
        var databaseZero = server.config
        databaseZero.password = Secret("s3cret")
        let other = makeClient(databaseZero)
        let reply8 = try await other.send(["GET", "where"])
        XCTAssertEqual(reply8, .null)
        let reply9 = try await client.send(["GET", "where"]).string
        XCTAssertEqual(reply9, "db3")

        var wrong = server.config
        wrong.password = Secret("nope")
        let refused = makeClient(wrong)
        let error = await expectError { () throws(RedisError) in _ = try await refused.send(["PING"]) }
        switch error {
        case .handshakeFailed(let message)?, .notConnected(let message)?:
            XCTAssertFalse(message.contains("nope"), "the password never appears in errors")
        default:
            XCTFail("expected a handshake failure, got \(String(describing: error))")
        }
        XCTAssertFalse(refused.isConnected)

        let anonymous = makeClient(server.config)
        let noAuth = await expectError { () throws(RedisError) in _ = try await anonymous.send(["GET", "where"]) }
        guard case .server(let message)? = noAuth else { return XCTFail("expected NOAUTH, got \(String(describing: noAuth))") }
        XCTAssertTrue(message.hasPrefix("NOAUTH"), message)
    }

    func testRefusedConnectionFailsFast() async throws {
        let port = try RedisServerProcess.freePort()
        let client = makeClient(RedisConfig(host: "127.0.0.1", port: port))
        for _ in 0..<5 {
            let started = Date()
            let error = await expectError { () throws(RedisError) in _ = try await client.send(["PING"]) }
            XCTAssertLessThan(Date().timeIntervalSince(started), 0.5)
            switch error {
            case .connectFailed?, .notConnected?: break
            default: XCTFail("expected a connect failure, got \(String(describing: error))")
            }
            XCTAssertFalse(error?.outcomeUnknown ?? true)
        }
        XCTAssertFalse(client.isConnected)
        XCTAssertNotNil(client.lastError)
    }

    func testUnresponsiveServerTimesOut() async throws {
        let silent = try LoopbackListener()
        let options = RedisClientOptions(connectionCount: 1, connectTimeoutMillis: 200, commandTimeoutMillis: 250, initialBackoffMillis: 10, maximumBackoffMillis: 100)
        let client = makeClient(RedisConfig(host: "127.0.0.1", port: silent.port), options: options)
        let started = Date()
        let error = await expectError { () throws(RedisError) in _ = try await client.send(["PING"]) }
        let elapsed = Date().timeIntervalSince(started)
        XCTAssertEqual(error, .timedOut)
        XCTAssertTrue(error?.outcomeUnknown ?? false)
        XCTAssertGreaterThanOrEqual(elapsed, 0.2)
        XCTAssertLessThan(elapsed, 1.0)
        withExtendedLifetime(silent) {}
    }

    func testReconnectsAfterServerRestart() async throws {
        let first = try startServer()
        let client = makeClient(first.config)
        let reply10 = try await client.send(["PING"])
        XCTAssertEqual(reply10, .status("PONG"))
        first.stop()
        let error = await expectError { () throws(RedisError) in _ = try await client.send(["PING"]) }
        XCTAssertNotNil(error)
        let second = try RedisServerProcess(port: first.port)
        server = second
        await eventually(5) { (try? await client.send(["PING"])) == .status("PONG") }
        await eventually(5) { client.connectedCount == testClientOptions.connectionCount }
    }

    func testAConnectionClosedBeforeAnyReplyBacksOff() async throws {
        // A proxy with no Redis behind it: every connection is accepted, then closed at once.
        let closing = try ClosingListener()
        let options = RedisClientOptions(connectionCount: 1, initialBackoffMillis: 10, maximumBackoffMillis: 100)
        let client = makeClient(RedisConfig(host: "127.0.0.1", port: closing.port), options: options)
        let started = Date()
        while Date().timeIntervalSince(started) < 1.0 {
            let error = await expectError { () throws(RedisError) in _ = try await client.send(["PING"]) }
            XCTAssertNotNil(error)
            try await Task.sleep(nanoseconds: 20_000_000)
        }
        // With the backoff (10, 20, 40, 80, then 100 ms) about 13 connections in a second; without
        // it, the connection reconnected as soon as it was closed: thousands.
        let accepted = closing.stop()
        XCTAssertGreaterThan(accepted, 3)
        XCTAssertLessThan(accepted, 40, "reconnects without backoff to a server that closes at once")
    }

    func testAReadOnlyReplyMakesTheConnectionReconnect() async throws {
        // The server the connection reaches becomes a replica (a failover demoted it): writes get
        // READONLY, and the connection is opened again (a managed endpoint would now lead to the
        // new primary; here it is the same server, promoted again below).
        let primary = try startServer()
        let other = try RedisServerProcess()
        defer { other.stop() }
        let options = RedisClientOptions(connectionCount: 1, initialBackoffMillis: 10, maximumBackoffMillis: 100)
        let client = makeClient(primary.config, options: options)
        let before = try await client.send(["CLIENT", "ID"])
        _ = try await client.send(["REPLICAOF", "127.0.0.1", String(other.port)])
        let error = await expectError { () throws(RedisError) in _ = try await client.send(["SET", "k", "v"]) }
        guard case .server(let message)? = error else { return XCTFail("expected READONLY, got \(String(describing: error))") }
        XCTAssertTrue(message.hasPrefix("READONLY"), message)
        let after = try await client.send(["CLIENT", "ID"])
        XCTAssertNotEqual(after, before, "the connection was not opened again after READONLY")
        _ = try await client.send(["REPLICAOF", "NO", "ONE"])
        let written = try await client.send(["SET", "k", "v"])
        XCTAssertEqual(written, .status("OK"))
    }

    func testEvalScriptFallsBackToEvalAfterScriptFlush() async throws {
        let client = makeClient(try startServer().config)
        let script = RedisScript(name: "echo", source: "return {KEYS[1], ARGV[1]}")
        XCTAssertEqual(script.sha1.count, 40)
        let expected = RedisReply.array([.bulkString(Array("k".utf8)), .bulkString(Array("v".utf8))])
        // Not cached yet: EVALSHA fails with NOSCRIPT, EVAL runs it.
        let reply11 = try await client.evalScript(script, keys: ["k"], arguments: ["v"])
        XCTAssertEqual(reply11, expected)
        let cached = try await client.send(["SCRIPT", "EXISTS", script.sha1])
        XCTAssertEqual(cached, .array([.integer(1)]), "EVAL cached the script under the SHA-1 we computed")
        _ = try await client.send(["SCRIPT", "FLUSH"])
        // Many at once: each pipelined EVALSHA falls back on its own.
        let replies = try await fiftyAtOnce { try await client.evalScript(script, keys: ["k"], arguments: ["v"]) }
        XCTAssertEqual(replies, Array(repeating: expected, count: 50))
    }

    func testFunctionsAreLoadedOnDemandAndAgainAfterAFlush() async throws {
        let client = makeClient(try startServer().config)
        let functions = RedisFunction.library(
            prelude: Array("local function pair(a, b) return {a, b} end".utf8),
            bodies: [("echo", Array("return pair(KEYS[1], ARGV[1])".utf8)), ("count", Array("return #ARGV".utf8))]
        )
        let echo = try XCTUnwrap(functions["echo"])
        let count = try XCTUnwrap(functions["count"])
        XCTAssertTrue(echo.name.hasPrefix("sluice_echo_"))
        XCTAssertEqual(echo.librarySource, count.librarySource, "one library holds both")
        let expected = RedisReply.array([.bulkString(Array("k".utf8)), .bulkString(Array("v".utf8))])
        // Not loaded yet: FCALL fails, the library is loaded, the call runs.
        let first = try await client.call(echo, keys: ["k"], arguments: ["v"])
        XCTAssertEqual(first, expected)
        let listed = try await client.send(["FUNCTION", "LIST"])
        XCTAssertEqual(listed.array?.count, 1)
        let counted = try await client.call(count, keys: [], arguments: ["a", "b", "c"])
        XCTAssertEqual(counted, .integer(3))
        // The same code as a plain script gives the same answer (the path for Redis < 7).
        let scripted = try await client.evalScript(echo.script, keys: ["k"], arguments: ["v"])
        XCTAssertEqual(scripted, expected)
        _ = try await client.send(["FUNCTION", "FLUSH"])
        // Many at once after the flush: each call loads the library if it has to.
        let replies = try await fiftyAtOnce { try await client.call(echo, keys: ["k"], arguments: ["v"]) }
        XCTAssertEqual(replies, Array(repeating: expected, count: 50))
    }

    func testShutdownFailsLaterCalls() async throws {
        let client = makeClient(try startServer().config)
        let reply12 = try await client.send(["PING"])
        XCTAssertEqual(reply12, .status("PONG"))
        client.shutdown()
        let error = await expectError { () throws(RedisError) in _ = try await client.send(["PING"]) }
        XCTAssertEqual(error, .shutDown)
        XCTAssertFalse(client.isConnected)
    }

    /// A connection whose loops are gone (its client shut down) answers a late command at once with
    /// `.shutDown`: a cluster client's background topology refresh sends one after the shutdown. Before,
    /// the command was handed to the dead loop, NIO dropped it ("Cannot schedule tasks on an EventLoop
    /// that has already shut down") and the call waited for ever.
    func testACommandAfterTheLoopsAreGoneFailsAtOnce() async throws {
        let server = try startServer()
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let connection = RedisConnection(config: server.config, tls: nil, options: testClientOptions, logger: Logger(label: "test"),
                                         name: "late", eventLoop: group.next())
        connection.start()
        let pong = await connection.send(RedisArguments(["PING"]))
        XCTAssertEqual(try pong.get(), RedisReply.status("PONG"))
        connection.shutdown()
        try await group.shutdownGracefully()
        connection.shutdown()  // a second shutdown touches nothing either
        // Polled, not awaited: the old behaviour never returned, and the test must fail, not hang.
        let answer = Mutex<Result<RedisReply, RedisError>?>(nil)
        let sender = Task { let result = await connection.send(RedisArguments(["PING"])); answer.withLock { $0 = result } }
        let deadline = ContinuousClock.now + .seconds(5)
        while answer.withLock({ $0 }) == nil, ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(10)) }
        let late = answer.withLock { $0 }
        if late != nil { await sender.value }
        guard case .failure(let error)? = late else { return XCTFail("the late command did not fail at once: \(String(describing: late))") }
        XCTAssertEqual(error, .shutDown)
    }

    // MARK: Host names

    func testAHostNameIsLookedUpAndConnected() throws {
        let addresses = try RedisConnection.lookUpHost("localhost", port: 6379)
        XCTAssertTrue(addresses.contains { $0.ipAddress == "127.0.0.1" && $0.port == 6379 }, "\(addresses)")
        XCTAssertThrowsError(try RedisConnection.lookUpHost("sluice-no-such-host.invalid", port: 6379))
    }

    /// A name with several addresses (IPv6 and IPv4, say) where only the last one serves: it is
    /// reached after the others refuse.
    func testAHostNameConnectsToTheFirstOfItsAddressesThatAccepts() async throws {
        let server = try startServer()
        let refusing = try RedisServerProcess.freePort()
        var config = server.config
        config.host = "redis.test"
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let connection = RedisConnection(config: config, tls: nil, options: testClientOptions, logger: Logger(label: "test"), name: "named",
                                         eventLoop: group.next(), lookUpHost: { host, port in
            XCTAssertEqual(host, "redis.test")
            return [try SocketAddress(ipAddress: "127.0.0.1", port: refusing), try SocketAddress(ipAddress: "127.0.0.1", port: port)]
        })
        connection.start()
        let pong = await connection.send(RedisArguments(["PING"]))
        XCTAssertEqual(try pong.get(), RedisReply.status("PONG"))
        connection.shutdown()
        try await group.shutdownGracefully()
    }

    func testAHostNameThatCannotBeLookedUpFailsTheConnectWithTheReason() async throws {
        var config = try startServer().config
        config.host = "redis.test"
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let connection = RedisConnection(config: config, tls: nil, options: testClientOptions, logger: Logger(label: "test"), name: "unknown",
                                         eventLoop: group.next(), lookUpHost: { _, _ in throw RedisConnection.HostLookupError(message: "Name or service not known") })
        connection.start()
        guard case .failure(.connectFailed(let message)) = await connection.send(RedisArguments(["PING"])) else { return XCTFail("connected") }
        XCTAssertEqual(message, "cannot look up redis.test: Name or service not known")
        connection.shutdown()
        try await group.shutdownGracefully()
    }

    /// A connection shut down while its host name is being looked up hands nothing to its loop
    /// afterwards: neither while the loop runs (it does not connect) nor once the loop is gone. NIO's
    /// resolver, used before, posted its answer to the loop whatever happened meanwhile: a client
    /// shut down mid-lookup (its loops shut down right after) had it post to a loop already gone,
    /// which crashed the test process under SWIFTNIO_STRICT in a CI run (RedisTLSTests, a client
    /// named by `localhost` reconnecting as the test ended).
    func testAConnectionShutDownDuringItsHostLookupHandsNothingToItsLoop() async throws {
        for loopGoneFirst in [false, true] {
            let listener = try LoopbackListener()
            let config = RedisConfig(host: "redis.test", port: listener.port)
            let lookup = BlockedLookup()
            let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
            let connection = RedisConnection(config: config, tls: nil, options: testClientOptions, logger: Logger(label: "test"), name: "mid-lookup",
                                             eventLoop: group.next(), lookUpHost: { _, port in
                lookup.entered.signal()
                lookup.release.wait()
                defer { lookup.returned.signal() }
                return [try SocketAddress(ipAddress: "127.0.0.1", port: port)]
            })
            connection.start()
            XCTAssertEqual(lookup.entered.wait(timeout: .now() + 5), .success)
            connection.shutdown()
            if loopGoneFirst { try await group.shutdownGracefully() }
            lookup.release.signal()
            XCTAssertEqual(lookup.returned.wait(timeout: .now() + 5), .success)
            try await Task.sleep(for: .milliseconds(200))
            XCTAssertFalse(listener.hasPendingConnection, "the connection was opened after its shutdown (loop gone first: \(loopGoneFirst))")
            if !loopGoneFirst { try await group.shutdownGracefully() }
        }
    }
}

/// A lookup held until the test lets it go.
private final class BlockedLookup: Sendable {
    let entered = DispatchSemaphore(value: 0)
    let release = DispatchSemaphore(value: 0)
    let returned = DispatchSemaphore(value: 0)
}
