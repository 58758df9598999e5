import Foundation
import XCTest
@testable import SluiceCore

/// `rediss://` with `redis.tls`, and `redis.password_env` (an ACL user's password from the
/// environment).
extension ConfigTests {
    /// A config whose only interesting part is `redisJSON`, the `redis` section.
    func parseRedisSection(_ redisJSON: String, environment: [String: String] = [:]) throws -> RedisConfig {
        let json = #"{"upstreams": [{"name": "u", "base_url": "http://h/v1", "models": ["*"]}], "keys": [], "redis": "# + redisJSON + "}"
        let config = try SluiceConfig.parse(bytes: Array(json.utf8), environment: environment)
        return try XCTUnwrap(config.redis)
    }

    /// The problems of the `redis` section `redisJSON`.
    func redisSectionProblems(_ redisJSON: String, environment: [String: String] = [:], file: StaticString = #filePath, line: UInt = #line) -> [String] {
        do {
            _ = try parseRedisSection(redisJSON, environment: environment)
            XCTFail("accepted: \(redisJSON)", file: file, line: line)
            return []
        } catch {
            return (error as? ConfigError)?.problems.map(\.description) ?? ["\(error)"]
        }
    }

    /// Three empty files standing for a CA bundle, a client certificate and its key (the loader
    /// checks only that they are readable files; the Redis client parses them).
    func temporaryTLSFiles() throws -> (directory: URL, ca: String, certificate: String, key: String) {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-config-tls-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: directory) }
        let paths = ["ca.pem", "client.pem", "client.key"].map { directory.appendingPathComponent($0).path }
        for path in paths { XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data())) }
        return (directory, paths[0], paths[1], paths[2])
    }

    // MARK: TLS

    func testRedissURLAloneUsesTheDefaults() throws {
        let redis = try parseRedisSection(#"{"url": "rediss://redis.example.com:6380/1"}"#)
        XCTAssertEqual(redis.tls, RedisTLSConfig(), "system trust roots, no client certificate, verified")
        XCTAssertEqual(redis.tls?.verifyCertificate, true)
        XCTAssertEqual(redis.tlsServerName, "redis.example.com", "the URL's host by default")
        XCTAssertEqual(redis.redactedURL, "rediss://redis.example.com:6380/1")
    }

    func testTLSObjectParsesEveryField() throws {
        let files = try temporaryTLSFiles()
        let redis = try parseRedisSection("""
            {"url": "rediss://app:pw@10.0.0.5:6380", "tls": {"ca_file": "\(files.ca)", "cert_file": "\(files.certificate)",
             "key_file": "\(files.key)", "server_name": "redis.internal", "verify": false}}
            """)
        XCTAssertEqual(redis.tls, RedisTLSConfig(caFile: files.ca, certificateFile: files.certificate, keyFile: files.key, serverName: "redis.internal", verifyCertificate: false))
        XCTAssertEqual(redis.tlsServerName, "redis.internal")
        XCTAssertEqual(redis.host, "10.0.0.5")
        XCTAssertEqual(redis.redactedURL, "rediss://app:<redacted>@10.0.0.5:6380/0")
    }

    func testPlainURLHasNoTLS() throws {
        let redis = try parseRedisSection(#"{"url": "redis://redis.example.com", "tls": null}"#)
        XCTAssertNil(redis.tls)
        XCTAssertNil(redis.tlsServerName)
        XCTAssertEqual(redis.redactedURL, "redis://redis.example.com:6379/0")
    }

    func testTLSObjectWithAPlainURL() {
        XCTAssertEqual(problems("redis_tls_with_plain_url"), [
            #"$.redis.tls: TLS settings given, but $.redis.url is a plain redis:// URL: write rediss:// to connect with TLS, or remove "tls""#,
        ])
    }

    func testMissingTLSFilesAreNamed() {
        XCTAssertEqual(problems("redis_tls_files_missing"), [
            #"$.redis.tls.ca_file: file "/nonexistent/sluice-tls/ca.pem" does not exist"#,
            #"$.redis.tls.cert_file: file "/nonexistent/sluice-tls/client.pem" does not exist"#,
            #"$.redis.tls.key_file: "/" is a directory, not a PEM file"#,
        ])
    }

    func testUnreadableTLSFileIsNamed() throws {
        guard getuid() != 0 else { throw XCTSkip("root reads every file: no unreadable file to test with") }
        let files = try temporaryTLSFiles()
        try FileManager.default.setAttributes([.posixPermissions: 0o000], ofItemAtPath: files.key)
        XCTAssertEqual(redisSectionProblems(#"{"url": "rediss://h", "tls": {"cert_file": "\#(files.certificate)", "key_file": "\#(files.key)"}}"#), [
            #"$.redis.tls.key_file: file "\#(files.key)" is not readable by this process"#,
        ])
    }

    func testCertificateAndKeyGoTogether() throws {
        XCTAssertEqual(problems("redis_tls_cert_without_key"), [
            "$.redis.tls.key_file: missing: cert_file and key_file go together (the client certificate for mutual TLS and its private key)",
        ])
        let files = try temporaryTLSFiles()
        XCTAssertEqual(redisSectionProblems(#"{"url": "rediss://h", "tls": {"key_file": "\#(files.key)"}}"#), [
            "$.redis.tls.cert_file: missing: key_file and cert_file go together (the client certificate for mutual TLS and its private key)",
        ])
    }

    func testBadTLSFields() {
        XCTAssertEqual(problems("redis_tls_bad_fields"), [
            #"$.redis.tls.ca: unknown field "ca" (known: ca_file, cert_file, key_file, server_name, verify)"#,
            #"$.redis.tls.server_name: must be a host name, found the IP address "10.0.0.5": to check a certificate for an IP address, put that address in the URL and leave server_name out"#,
            "$.redis.tls.verify: expected true or false, found a string",
        ])
        XCTAssertEqual(redisSectionProblems(#"{"url": "rediss://h", "tls": {"server_name": "bad name"}}"#), [
            #"$.redis.tls.server_name: must be a host name (letters, digits, '-' and '.', at most 253 characters), found "bad name""#,
        ])
        XCTAssertEqual(redisSectionProblems(#"{"url": "rediss://h", "tls": {"ca_file": ""}}"#), ["$.redis.tls.ca_file: must not be empty"])
        XCTAssertEqual(redisSectionProblems(#"{"url": "rediss://h", "tls": true}"#), ["$.redis.tls: expected an object, found a boolean"])
    }

    func testEditingCommandsNeedNoTLSFiles() throws {
        let json = #"{"upstreams": [{"name": "u", "base_url": "http://h/v1", "models": ["*"]}], "keys": [], "redis": {"url": "rediss://h", "tls": {"ca_file": "/nonexistent/ca.pem"}}}"#
        let config = try SluiceConfig.parse(bytes: Array(json.utf8), environment: [:], requireMachineSecrets: false)
        XCTAssertEqual(config.redis?.tls?.caFile, "/nonexistent/ca.pem")
    }

    func testTLSChangeNeedsARestart() throws {
        let plain = try SluiceConfig.parse(bytes: Array(#"{"upstreams": [{"name": "u", "base_url": "http://h/v1", "models": ["*"]}], "keys": [], "redis": {"url": "rediss://h"}}"#.utf8), environment: [:])
        let unverified = try SluiceConfig.parse(bytes: Array(#"{"upstreams": [{"name": "u", "base_url": "http://h/v1", "models": ["*"]}], "keys": [], "redis": {"url": "rediss://h", "tls": {"verify": false}}}"#.utf8), environment: [:])
        XCTAssertEqual(unverified.sectionsNeedingRestart(running: plain), ["redis"])
        XCTAssertEqual(plain.sectionsNeedingRestart(running: plain), [])
    }

    func testUnverifiedTLSIsAWarning() throws {
        let unverified = try SluiceConfig.parse(bytes: Array(#"{"upstreams": [{"name": "u", "base_url": "http://h/v1", "models": ["*"]}], "keys": [], "redis": {"url": "rediss://h", "tls": {"verify": false}}}"#.utf8), environment: [:])
        XCTAssertEqual(unverified.redisTLSFindings().map(\.description), [
            "warning: $.redis.tls.verify: false: the server's certificate is not checked, so anyone on the path can pose as Redis (and receive its password)",
        ])
        let verified = try SluiceConfig.parse(bytes: Array(#"{"upstreams": [{"name": "u", "base_url": "http://h/v1", "models": ["*"]}], "keys": [], "redis": {"url": "rediss://h"}}"#.utf8), environment: [:])
        XCTAssertEqual(verified.redisTLSFindings(), [])
    }

    // MARK: password_env

    func testPasswordFromTheEnvironment() throws {
        let redis = try parseRedisSection(#"{"url": "rediss://sluice@h:6380", "password_env": "REDIS_PASSWORD"}"#, environment: ["REDIS_PASSWORD": "from-the-env"])
        XCTAssertEqual(redis.username, "sluice")
        XCTAssertEqual(redis.password?.revealed, "from-the-env")
        XCTAssertEqual(redis.redactedURL, "rediss://sluice:<redacted>@h:6380/0")
        XCTAssertFalse("\(redis)".contains("from-the-env"), "never printed")

        let defaultUser = try parseRedisSection(#"{"url": "redis://h", "password_env": "REDIS_PASSWORD"}"#, environment: ["REDIS_PASSWORD": "pw"])
        XCTAssertNil(defaultUser.username)
        XCTAssertEqual(defaultUser.password?.revealed, "pw")
    }

    func testPasswordEnvironmentVariableMustBeSet() {
        XCTAssertEqual(problems("redis_password_env_unset"), [
            "$.redis.password_env: environment variable SLUICE_TEST_UNSET_REDIS_PASSWORD is not set (or empty)",
        ])
        XCTAssertEqual(redisSectionProblems(#"{"url": "redis://h", "password_env": "REDIS_PASSWORD"}"#, environment: ["REDIS_PASSWORD": ""]), [
            "$.redis.password_env: environment variable REDIS_PASSWORD is not set (or empty)",
        ])
        let problems = redisSectionProblems(#"{"url": "redis://h", "password_env": "hunter2-pasted-here"}"#)
        XCTAssertEqual(problems, [
            "$.redis.password_env: must name an environment variable (letters, digits and underscores, not starting with a digit, at most 128 characters); the value given looks like a secret and is not shown",
        ])
    }

    func testPasswordInTheURLAndTheEnvironmentIsAmbiguous() throws {
        let path = Self.fixtures.appendingPathComponent("redis_password_twice.json").path
        XCTAssertThrowsError(try SluiceConfig.load(path: path, environment: Self.environment.merging(["SLUICE_TEST_REDIS_PASSWORD": "from-the-env"]) { $1 })) { error in
            let problems = (error as? ConfigError)?.problems.map(\.description) ?? []
            XCTAssertEqual(problems, ["$.redis.password_env: $.redis.url holds a password too: give the password in one place only (the URL's is not shown)"])
            XCTAssertFalse(problems.joined().contains("in-the-url"))
            XCTAssertFalse(problems.joined().contains("from-the-env"))
        }
    }

    func testUserWithoutAnyPassword() {
        XCTAssertEqual(problems("redis_user_without_password"), [
            #"$.redis.url: names an ACL user but no password: write user:password@, or name the environment variable holding the password in "password_env""#,
        ])
    }

    func testInlinePasswordFieldIsRefused() {
        XCTAssertEqual(problems("redis_inline_password"), [
            #"$.redis.password: the password must not be a field of its own: name the environment variable holding it in "password_env" (or put it in the URL)"#,
        ])
    }

    func testEditingCommandsNeedNoPasswordVariable() throws {
        let json = #"{"upstreams": [{"name": "u", "base_url": "http://h/v1", "models": ["*"]}], "keys": [], "redis": {"url": "redis://app@h", "password_env": "REDIS_PASSWORD"}}"#
        let config = try SluiceConfig.parse(bytes: Array(json.utf8), environment: [:], requireMachineSecrets: false)
        XCTAssertEqual(config.redis?.username, "app")
        XCTAssertNil(config.redis?.password)
    }
}
