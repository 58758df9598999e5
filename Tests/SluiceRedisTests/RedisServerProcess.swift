import Foundation
import XCTest
@testable import SluiceRedis
import SluiceCore
import Synchronization

#if canImport(Glibc)
import Glibc
#endif

/// A private `redis-server` on a free loopback port, for one test. Tests skip (with a clear
/// message) only when `redis-server` is not installed.
final class RedisServerProcess {
    let port: Int
    private let process: Process

    static var executable: URL? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
        for directory in path.split(separator: ":").map(String.init) + ["/usr/sbin", "/usr/local/sbin"] {
            let candidate = URL(fileURLWithPath: directory).appendingPathComponent("redis-server")
            if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
        }
        return nil
    }

    /// Starts a server and waits until it accepts connections.
    /// - Parameters:
    ///   - port: reuse a port (to restart a server); by default a free one.
    ///   - tlsOnly: serve TLS only, on `port` (`--port 0 --tls-port`); `extraArguments` name the
    ///     certificate files. Readiness is then a plain TCP connect to the TLS port.
    init(port: Int? = nil, tlsOnly: Bool = false, extraArguments: [String] = []) throws {
        guard let executable = Self.executable else {
            throw XCTSkip("redis-server is not installed (apt-get install redis-server); skipping the Redis tests")
        }
        self.port = try port ?? Self.freePort()
        process = Process()
        process.executableURL = executable
        let listening = tlsOnly ? ["--port", "0", "--tls-port", String(self.port)] : ["--port", String(self.port)]
        process.arguments = listening + ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no", "--loglevel", "warning"] + extraArguments
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        let deadline = Date().addingTimeInterval(5)
        while !Self.accepts(port: self.port) {
            guard Date() < deadline, process.isRunning else {
                stop()
                throw RedisTestError("redis-server did not start on port \(self.port)")
            }
            usleep(10_000)
        }
    }

    deinit { stop() }

    var isRunning: Bool { process.isRunning }

    /// Kills the server and waits for it to exit. SIGKILL, because a child spawned from a
    /// Dispatch or Swift-concurrency thread inherits that thread's blocked signals, SIGTERM
    /// included, and would never see a terminate().
    func stop() {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }

    /// Stops the server without closing its sockets (SIGSTOP): commands sent meanwhile wait in
    /// its socket buffers and run after ``thaw()``.
    func freeze() { kill(process.processIdentifier, SIGSTOP) }

    func thaw() { kill(process.processIdentifier, SIGCONT) }

    var config: RedisConfig { RedisConfig(host: "127.0.0.1", port: port) }

    /// A port the kernel just handed out (and released).
    static func freePort() throws -> Int {
        let listener = try LoopbackListener()
        return listener.port
    }

    static func accepts(port: Int) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var address = LoopbackListener.loopback(port: port)
        return withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
        }
    }
}

/// A listening loopback socket that never accepts: connects succeed (the kernel's backlog), but
/// nothing is ever answered — an unresponsive Redis.
final class LoopbackListener {
    let port: Int
    private let fd: Int32

    init() throws {
        (fd, port) = try Self.listen(backlog: 16)
    }

    deinit { close(fd) }

    /// Whether a connection waits in the backlog: someone connected.
    var hasPendingConnection: Bool {
        var waiting = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&waiting, 1, 0) == 1
    }

    /// A socket listening on a free loopback port: its descriptor and the port.
    static func listen(backlog: Int32) throws -> (Int32, Int) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw RedisTestError("socket() failed") }
        var address = loopback(port: 0)
        let bound = withUnsafePointer(to: &address) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0, Glibc.listen(fd, backlog) == 0 else {
            close(fd)
            throw RedisTestError("bind/listen failed")
        }
        var assigned = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &assigned) { pointer in
            pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return (fd, Int(UInt16(bigEndian: assigned.sin_port)))
    }

    static func loopback(port: Int) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        return address
    }
}

/// A loopback socket that accepts every connection and closes it at once, counting them: a proxy
/// or load balancer with no Redis behind it.
final class ClosingListener: @unchecked Sendable {
    let port: Int
    private let fd: Int32
    private let accepted = Mutex(0)
    private let done = DispatchSemaphore(value: 0)
    private let stopped = Mutex(false)

    init() throws {
        (fd, port) = try LoopbackListener.listen(backlog: 128)
        Thread.detachNewThread { [self] in
            while true {
                let connection = accept(fd, nil, nil)
                guard connection >= 0 else { break }  // the listener was shut down
                accepted.withLock { $0 += 1 }
                close(connection)
            }
            done.signal()
        }
    }

    /// Stops accepting; returns how many connections were accepted.
    @discardableResult
    func stop() -> Int {
        if !stopped.withLock({ was in defer { was = true }; return was }) {
            shutdown(fd, Int32(SHUT_RDWR))
            done.wait()
            close(fd)
        }
        return accepted.withLock { $0 }
    }

    deinit { stop() }
}

struct RedisTestError: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

/// Options for tests: short backoff so reconnects are quick.
let testClientOptions = RedisClientOptions(connectionCount: 2, initialBackoffMillis: 10, maximumBackoffMillis: 200)

/// Waits until `condition` holds (polling), failing after `seconds`.
func eventually(_ seconds: Double, file: StaticString = #filePath, line: UInt = #line, _ condition: () async -> Bool) async {
    let deadline = Date().addingTimeInterval(seconds)
    while Date() < deadline {
        if await condition() { return }
        try? await Task.sleep(nanoseconds: 20_000_000)
    }
    XCTFail("condition not met within \(seconds) s", file: file, line: line)
}
