import Foundation
import XCTest
import SluiceCore
@testable import SluiceRedis

/// `rediss://` against a real `redis-server` serving TLS only, with a CA and certificates the test
/// makes itself with the `openssl` command line: the right CA connects, a wrong CA or name fails
/// the connect at once with a clear error, a server that never finishes TLS fails within the
/// connect timeout, mutual TLS, and an ACL user over TLS (its password from `password_env`).
final class RedisTLSTests: XCTestCase {
    var servers: [RedisServerProcess] = []
    var clients: [RedisClient] = []

    /// Generous for a debug build on a busy machine; the tests that check a bound set their own.
    static let options = RedisClientOptions(connectionCount: 1, connectTimeoutMillis: 2_000, initialBackoffMillis: 10, maximumBackoffMillis: 200)

    override func tearDown() {
        for client in clients { client.shutdown() }
        clients = []
        for server in servers { server.stop() }
        servers = []
    }

    // MARK: helpers

    private func certificates() throws -> TestCertificates {
        try TestCertificates.made()
    }

    override class func tearDown() {
        TestCertificates.removeAll()
        super.tearDown()
    }

    /// A TLS-only server with the test CA's server certificate for `localhost` and 127.0.0.1 (with
    /// `namedOnly`, the one for `redis.test` alone).
    private func startServer(requireClientCertificates: Bool = false, namedOnly: Bool = false) throws -> RedisServerProcess {
        let files = try certificates()
        let server = try RedisServerProcess(tlsOnly: true, extraArguments: [
            "--tls-cert-file", namedOnly ? files.namedServerCertificate : files.serverCertificate,
            "--tls-key-file", namedOnly ? files.namedServerKey : files.serverKey,
            "--tls-ca-cert-file", files.ca, "--tls-auth-clients", requireClientCertificates ? "yes" : "no",
        ])
        servers.append(server)
        return server
    }

    private func tlsConfig(port: Int, _ tls: RedisTLSConfig) -> RedisConfig {
        RedisConfig(host: "127.0.0.1", port: port, tls: tls)
    }

    private func makeClient(_ config: RedisConfig, options: RedisClientOptions = RedisTLSTests.options) throws -> RedisClient {
        let client = try RedisClient(config: config, options: options)
        clients.append(client)
        return client
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

    /// The message of a failed connect (the first call's error, or the one a backoff repeats).
    private func connectFailure(_ error: RedisError?, file: StaticString = #filePath, line: UInt = #line) -> String {
        switch error {
        case .connectFailed(let message)?, .notConnected(let message)?: return message
        default:
            XCTFail("expected a failed connect, got \(String(describing: error))", file: file, line: line)
            return ""
        }
    }

    // MARK: server authentication

    func testRightCAConnectsAndRunsCommands() async throws {
        let server = try startServer()
        let client = try makeClient(tlsConfig(port: server.port, RedisTLSConfig(caFile: try certificates().ca)))
        let pong = try await client.send(["PING"])
        XCTAssertEqual(pong, .status("PONG"))
        _ = try await client.send(["SET", "tls:key", "over TLS"])
        let value = try await client.send(["GET", "tls:key"]).string
        XCTAssertEqual(value, "over TLS")
        let echo = try XCTUnwrap(RedisFunction.library(prelude: [], bodies: [("echo", Array("return ARGV[1]".utf8))])["echo"])
        let called = try await client.call(echo, keys: ["tls:fn"], arguments: ["through FCALL"]).string
        XCTAssertEqual(called, "through FCALL", "the library is loaded on demand and called, over TLS")
        XCTAssertTrue(client.isConnected)

        // A host name in the URL: SNI and the certificate's DNS name.
        var byName = tlsConfig(port: server.port, RedisTLSConfig(caFile: try certificates().ca))
        byName.host = "localhost"
        let named = try makeClient(byName)
        let namedPong = try await named.send(["PING"])
        XCTAssertEqual(namedPong, .status("PONG"))
    }

    func testWrongCAFailsTheConnectQuicklyWithAClearError() async throws {
        let server = try startServer()
        let client = try makeClient(tlsConfig(port: server.port, RedisTLSConfig(caFile: try certificates().otherCA)))
        let started = Date()
        let message = connectFailure(await expectError { () throws(RedisError) in _ = try await client.send(["PING"]) })
        XCTAssertLessThan(Date().timeIntervalSince(started), 1.5, "refused by the handshake, not by a timeout")
        XCTAssertTrue(message.contains("TLS handshake with 127.0.0.1:\(server.port) failed"), message)
        XCTAssertTrue(message.contains("CERTIFICATE_VERIFY_FAILED"), message)
        XCTAssertFalse(client.isConnected)
        // The backoff: the next call fails at once with the same cause.
        let again = connectFailure(await expectError { () throws(RedisError) in _ = try await client.send(["PING"]) })
        XCTAssertTrue(again.contains("TLS handshake"), again)
    }

    /// Against a certificate that names `redis.test` only (one that also names the address
    /// connected to is accepted for that address whatever the name: swift-nio-ssl's rule).
    func testWrongServerNameFails() async throws {
        let server = try startServer(namedOnly: true)
        let ca = try certificates().ca
        let client = try makeClient(tlsConfig(port: server.port, RedisTLSConfig(caFile: ca, serverName: "redis.example.com")))
        let message = connectFailure(await expectError { () throws(RedisError) in _ = try await client.send(["PING"]) })
        XCTAssertTrue(message.contains("TLS handshake with 127.0.0.1:\(server.port) (server name redis.example.com) failed"), message)
        XCTAssertTrue(message.contains("failedToValidateHostname"), message)

        let byAddress = try makeClient(tlsConfig(port: server.port, RedisTLSConfig(caFile: ca)))
        let addressMessage = connectFailure(await expectError { () throws(RedisError) in _ = try await byAddress.send(["PING"]) })
        XCTAssertTrue(addressMessage.contains("TLS handshake with 127.0.0.1:\(server.port) failed"), addressMessage)

        let right = try makeClient(tlsConfig(port: server.port, RedisTLSConfig(caFile: ca, serverName: "redis.test")))
        let pong = try await right.send(["PING"])
        XCTAssertEqual(pong, .status("PONG"), "the name the certificate carries, at an IP address")
    }

    func testWithoutVerificationAnyCertificateIsAccepted() async throws {
        let server = try startServer()
        let client = try makeClient(tlsConfig(port: server.port, RedisTLSConfig(caFile: try certificates().otherCA, verifyCertificate: false)))
        let pong = try await client.send(["PING"])
        XCTAssertEqual(pong, .status("PONG"))
    }

    func testServerThatNeverFinishesTLSFailsWithinTheConnectTimeout() async throws {
        let files = try certificates()
        let silent = try LoopbackListener()  // accepts TCP (the kernel's backlog), never answers
        let options = RedisClientOptions(connectionCount: 1, connectTimeoutMillis: 300, initialBackoffMillis: 10, maximumBackoffMillis: 200)
        let client = try makeClient(tlsConfig(port: silent.port, RedisTLSConfig(caFile: files.ca)), options: options)
        let started = Date()
        let message = connectFailure(await expectError { () throws(RedisError) in _ = try await client.send(["PING"]) })
        let elapsed = Date().timeIntervalSince(started)
        XCTAssertGreaterThanOrEqual(elapsed, 0.25)
        XCTAssertLessThan(elapsed, 1.5, "bounded by the connect timeout")
        XCTAssertTrue(message.contains("TLS handshake with 127.0.0.1:\(silent.port) not finished within the connect timeout (300 ms)"), message)
        XCTAssertFalse(client.isConnected)
    }

    // MARK: client authentication

    func testMutualTLS() async throws {
        let files = try certificates()
        let server = try startServer(requireClientCertificates: true)
        let anonymous = try makeClient(tlsConfig(port: server.port, RedisTLSConfig(caFile: files.ca)))
        let started = Date()
        let message = connectFailure(await expectError { () throws(RedisError) in _ = try await anonymous.send(["PING"]) })
        XCTAssertLessThan(Date().timeIntervalSince(started), 1.5)
        XCTAssertTrue(message.contains("CERTIFICATE_REQUIRED") || message.contains("HANDSHAKE_FAILURE"), message)
        XCTAssertFalse(anonymous.isConnected)

        let identified = try makeClient(tlsConfig(port: server.port, RedisTLSConfig(caFile: files.ca, certificateFile: files.clientCertificate, keyFile: files.clientKey)))
        let pong = try await identified.send(["PING"])
        XCTAssertEqual(pong, .status("PONG"))
    }

    // MARK: ACL users

    func testACLUserOverTLSWithThePasswordFromTheEnvironment() async throws {
        let files = try certificates()
        let server = try startServer()
        let admin = try makeClient(tlsConfig(port: server.port, RedisTLSConfig(caFile: files.ca)))
        _ = try await admin.send(["ACL", "SETUSER", "sluice", "on", ">tls-acl-password", "~sluice:*", "+@all"])

        // The whole path: the config file's rediss:// URL, redis.tls and password_env.
        let json = """
            {"upstreams": [{"name": "u", "base_url": "http://h/v1", "models": ["*"]}], "keys": [],
             "redis": {"url": "rediss://sluice@127.0.0.1:\(server.port)", "password_env": "SLUICE_TEST_REDIS_PASSWORD",
                       "tls": {"ca_file": "\(files.ca)", "server_name": "localhost"}}}
            """
        let config = try XCTUnwrap(try SluiceConfig.parse(bytes: Array(json.utf8), environment: ["SLUICE_TEST_REDIS_PASSWORD": "tls-acl-password"]).redis)
        XCTAssertEqual(config.redactedURL, "rediss://sluice:<redacted>@127.0.0.1:\(server.port)/0")
        let user = try makeClient(config)
        let whoami = try await user.send(["ACL", "WHOAMI"]).string
        XCTAssertEqual(whoami, "sluice")
        _ = try await user.send(["SET", "sluice:acl", "1"])
        let denied = await expectError { () throws(RedisError) in _ = try await user.send(["SET", "elsewhere", "1"]) }
        guard case .server(let deniedMessage)? = denied else { return XCTFail("expected NOPERM, got \(String(describing: denied))") }
        XCTAssertTrue(deniedMessage.hasPrefix("NOPERM"), deniedMessage)

        var wrong = config
        wrong.password = Secret("not-the-password")
        let refused = try makeClient(wrong)
        let error = await expectError { () throws(RedisError) in _ = try await refused.send(["PING"]) }
        guard case .handshakeFailed(let message)? = error else { return XCTFail("expected the AUTH refusal, got \(String(describing: error))") }
        XCTAssertTrue(message.hasPrefix("WRONGPASS"), message)
        XCTAssertFalse("\(error!)".contains("not-the-password"), "the password never appears in errors")
        XCTAssertFalse(refused.isConnected)
    }

    // MARK: TLS files

    func testUnusableTLSFilesFailTheClientsCreationNamingTheFile() throws {
        let files = try certificates()
        func setupError(_ tls: RedisTLSConfig) -> String {
            do {
                try RedisClient.checkTLSSetup(tlsConfig(port: 6379, tls))
                XCTFail("accepted: \(tls)")
                return ""
            } catch {
                XCTAssertThrowsError(try RedisClient(config: tlsConfig(port: 6379, tls)), "the client refuses the same setup")
                guard case .tlsSetupFailed = error else { XCTFail("\(error)"); return "" }
                return error.description
            }
        }
        let keyAsCA = setupError(RedisTLSConfig(caFile: files.clientKey))
        XCTAssertTrue(keyAsCA.hasPrefix("redis TLS setup failed: ca_file \"\(files.clientKey)\""), keyAsCA)
        XCTAssertFalse(keyAsCA.contains("PRIVATE KEY"), "never the file's content")
        let certificateAsKey = setupError(RedisTLSConfig(caFile: files.ca, certificateFile: files.clientCertificate, keyFile: files.clientCertificate))
        XCTAssertTrue(certificateAsKey.contains("key_file \"\(files.clientCertificate)\""), certificateAsKey)
        let missing = setupError(RedisTLSConfig(caFile: files.directory + "/absent.pem"))
        XCTAssertTrue(missing.contains("ca_file \"\(files.directory)/absent.pem\""), missing)
        let mismatched = setupError(RedisTLSConfig(caFile: files.ca, certificateFile: files.clientCertificate, keyFile: files.serverKey))
        XCTAssertTrue(mismatched.contains("cannot set up TLS for 127.0.0.1:6379"), mismatched)

        XCTAssertNoThrow(try RedisClient.checkTLSSetup(tlsConfig(port: 6379, RedisTLSConfig(caFile: files.ca, certificateFile: files.clientCertificate, keyFile: files.clientKey))))
        XCTAssertNoThrow(try RedisClient.checkTLSSetup(RedisConfig(host: "127.0.0.1")), "nothing to check without TLS")
    }
}

/// A CA, a second CA that signed nothing here, a server certificate for `localhost` and
/// 127.0.0.1, one for `redis.test` only, and a client certificate, made once per test run with the `openssl` command line in
/// a temporary directory (P-256 keys: quick to make and to use).
struct TestCertificates: Sendable {
    let directory: String
    let ca: String
    let otherCA: String
    let serverCertificate: String
    let serverKey: String
    let namedServerCertificate: String
    let namedServerKey: String
    let clientCertificate: String
    let clientKey: String

    private enum Outcome: Sendable {
        case made(TestCertificates)
        case skipped(String)
        case failed(String)
    }

    /// Made on first use, once.
    private static let outcome: Outcome = {
        guard let openssl = executable("openssl") else {
            return .skipped("openssl is not installed (apt-get install openssl); skipping the Redis TLS tests")
        }
        do {
            return .made(try TestCertificates(openssl: openssl))
        } catch {
            return .failed("\(error)")
        }
    }()

    /// The certificates; a skip when `openssl` is missing, for every test that needs them.
    static func made() throws -> TestCertificates {
        switch outcome {
        case .made(let certificates): return certificates
        case .skipped(let reason): throw XCTSkip(reason)
        case .failed(let reason): throw RedisTestError(reason)
        }
    }

    /// Deletes the temporary directory (at the end of the test class).
    static func removeAll() {
        if case .made(let certificates) = outcome { try? FileManager.default.removeItem(atPath: certificates.directory) }
    }

    private init(openssl: URL) throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-redis-tls-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true)
        func file(_ name: String) -> String { folder + "/" + name }
        func run(_ arguments: [String]) throws {
            let process = Process()
            process.executableURL = openssl
            process.arguments = arguments
            process.currentDirectoryURL = URL(fileURLWithPath: folder)
            let errors = Pipe()
            process.standardOutput = FileHandle.nullDevice
            process.standardError = errors
            try process.run()
            let output = errors.fileHandleForReading.readDataToEndOfFile()
            process.waitUntilExit()
            guard process.terminationStatus == 0 else {
                throw RedisTestError("openssl \(arguments.joined(separator: " ")) failed: \(String(decoding: output, as: UTF8.self))")
            }
        }
        let newKey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
        for name in ["ca", "other-ca"] {
            try """
                [req]
                distinguished_name = dn
                prompt = no
                x509_extensions = ca
                [dn]
                CN = Sluice test \(name)
                [ca]
                basicConstraints = critical, CA:TRUE
                keyUsage = critical, keyCertSign, cRLSign
                subjectKeyIdentifier = hash

                """.write(toFile: file("\(name).cnf"), atomically: true, encoding: .utf8)
            try run(["req", "-x509", "-new", "-config", file("\(name).cnf")] + newKey + ["-keyout", file("\(name).key"), "-out", file("\(name).pem"), "-days", "2"])
        }
        let leaves = [
            ("server", "localhost", "serverAuth", "subjectAltName = DNS:localhost, IP:127.0.0.1\n"),
            ("named-server", "redis.test", "serverAuth", "subjectAltName = DNS:redis.test\n"),
            ("client", "sluice-node", "clientAuth", ""),
        ]
        for (serial, (name, commonName, usage, alternativeNames)) in leaves.enumerated() {
            try run(["req", "-new"] + newKey + ["-keyout", file("\(name).key"), "-out", file("\(name).csr"), "-subj", "/CN=\(commonName)"])
            try """
                basicConstraints = CA:FALSE
                keyUsage = critical, digitalSignature
                extendedKeyUsage = \(usage)
                \(alternativeNames)
                """.write(toFile: file("\(name).ext"), atomically: true, encoding: .utf8)
            try run(["x509", "-req", "-in", file("\(name).csr"), "-CA", file("ca.pem"), "-CAkey", file("ca.key"), "-set_serial", String(serial + 1),
                     "-days", "2", "-extfile", file("\(name).ext"), "-out", file("\(name).pem")])
        }
        directory = folder
        ca = file("ca.pem")
        otherCA = file("other-ca.pem")
        serverCertificate = file("server.pem")
        serverKey = file("server.key")
        namedServerCertificate = file("named-server.pem")
        namedServerKey = file("named-server.key")
        clientCertificate = file("client.pem")
        clientKey = file("client.key")
    }

    private static func executable(_ name: String) -> URL? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/local/bin:/usr/bin:/bin"
        for directory in path.split(separator: ":").map(String.init) + ["/usr/bin", "/bin"] {
            let candidate = URL(fileURLWithPath: directory).appendingPathComponent(name)
            if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
        }
        return nil
    }
}
