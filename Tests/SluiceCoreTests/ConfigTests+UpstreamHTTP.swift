import Foundation
import XCTest
@testable import SluiceCore

/// `upstreams[].http_version` and `upstreams[].tls` (issue 21: HTTP/2 to upstreams that speak it).
extension ConfigTests {
    /// A config with one upstream at `baseURL` whose other fields are `upstreamFields` (JSON members,
    /// without braces).
    func parseUpstream(baseURL: String = "http://h/v1", _ upstreamFields: String = "", requireMachineSecrets: Bool = true) throws -> UpstreamConfig {
        let extra = upstreamFields.isEmpty ? "" : ", " + upstreamFields
        let json = #"{"upstreams": [{"name": "u", "base_url": "\#(baseURL)", "models": ["*"]\#(extra)}], "keys": []}"#
        let config = try SluiceConfig.parse(bytes: Array(json.utf8), environment: [:], requireMachineSecrets: requireMachineSecrets)
        return try XCTUnwrap(config.upstreams.first)
    }

    /// The problems of such a config (none: `[]`).
    func upstreamProblems(baseURL: String = "http://h/v1", _ upstreamFields: String, requireMachineSecrets: Bool = true) -> [String] {
        do {
            _ = try parseUpstream(baseURL: baseURL, upstreamFields, requireMachineSecrets: requireMachineSecrets)
            return []
        } catch {
            return (error as? ConfigError)?.problems.map(\.description) ?? ["\(error)"]
        }
    }

    /// A PEM file holding one (syntactically plausible) certificate, in a directory removed after the test.
    func temporaryCAFile(contents: String = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n") throws -> String {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-upstream-ca-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: directory) }
        let path = directory.appendingPathComponent("ca.pem").path
        XCTAssertTrue(FileManager.default.createFile(atPath: path, contents: Data(contents.utf8)))
        return path
    }

    // MARK: http_version

    func testHTTPVersionDefaultsToAutoAndTLSToNone() throws {
        for baseURL in ["http://h/v1", "https://h/v1"] {
            let upstream = try parseUpstream(baseURL: baseURL)
            XCTAssertEqual(upstream.httpVersion, .auto, baseURL)
            XCTAssertNil(upstream.tls, baseURL)
        }
        XCTAssertEqual(try parseUpstream(#""http_version": null"#).httpVersion, .auto, "null is absent")
        XCTAssertEqual(UpstreamConfig.defaultHTTPVersion, .auto)
    }

    func testEveryHTTPVersionParsesWhereItFits() throws {
        XCTAssertEqual(try parseUpstream(baseURL: "http://h/v1", #""http_version": "auto""#).httpVersion, .auto)
        XCTAssertEqual(try parseUpstream(baseURL: "https://h/v1", #""http_version": "auto""#).httpVersion, .auto)
        XCTAssertEqual(try parseUpstream(baseURL: "http://h/v1", #""http_version": "1.1""#).httpVersion, .http1_1)
        XCTAssertEqual(try parseUpstream(baseURL: "https://h/v1", #""http_version": "1.1""#).httpVersion, .http1_1)
        XCTAssertEqual(try parseUpstream(baseURL: "https://h/v1", #""http_version": "2""#).httpVersion, .http2)
        XCTAssertEqual(try parseUpstream(baseURL: "HTTPS://h/v1", #""http_version": "2""#).httpVersion, .http2, "the scheme in any case")
        XCTAssertEqual(try parseUpstream(baseURL: "http://h/v1", #""http_version": "h2c""#).httpVersion, .h2c)
        XCTAssertEqual(UpstreamConfig.HTTPVersion.allCases.map(\.rawValue), ["auto", "1.1", "2", "h2c"])
    }

    func testHTTP2OverCleartextAndH2COverTLSAreErrorsNamingTheOtherOne() {
        XCTAssertEqual(upstreamProblems(baseURL: "http://h/v1", #""http_version": "2""#), [
            #"$.upstreams[0].http_version: "2" is HTTP/2 agreed on by TLS (ALPN), but base_url is a cleartext http:// URL: for cleartext HTTP/2 by prior knowledge write "h2c", or use an https:// base_url"#,
        ])
        XCTAssertEqual(upstreamProblems(baseURL: "https://h/v1", #""http_version": "h2c""#), [
            #"$.upstreams[0].http_version: "h2c" is cleartext HTTP/2, but base_url is an https:// URL: over TLS write "2" (HTTP/2 required) or "auto" (HTTP/2 when the upstream offers it)"#,
        ])
    }

    func testBadHTTPVersionsAreReportedAtTheirPath() {
        XCTAssertEqual(upstreamProblems(#""http_version": "3""#), [#"$.upstreams[0].http_version: unknown HTTP version "3" (known: "auto", "1.1", "2", "h2c")"#])
        XCTAssertEqual(upstreamProblems(#""http_version": "HTTP/2""#), [#"$.upstreams[0].http_version: unknown HTTP version "HTTP/2" (known: "auto", "1.1", "2", "h2c")"#])
        XCTAssertEqual(upstreamProblems(#""http_version": """#), [#"$.upstreams[0].http_version: unknown HTTP version "" (known: "auto", "1.1", "2", "h2c")"#])
        XCTAssertEqual(upstreamProblems(baseURL: "https://h/v1", #""http_version": 2"#), [#"$.upstreams[0].http_version: expected one of "auto", "1.1", "2", "h2c" (a string), found the number 2: write "2""#])
        XCTAssertEqual(upstreamProblems(#""http_version": 1.1"#), [#"$.upstreams[0].http_version: expected one of "auto", "1.1", "2", "h2c" (a string), found the number 1.1: write "1.1""#])
        XCTAssertEqual(upstreamProblems(#""http_version": true"#), [#"$.upstreams[0].http_version: expected one of "auto", "1.1", "2", "h2c", found a boolean"#])
        // The second upstream's problem carries its own index.
        let json = #"{"upstreams": [{"name": "a", "base_url": "http://h/v1", "models": ["a"]}, {"name": "b", "base_url": "http://h/v1", "models": ["b"], "http_version": "2"}], "keys": []}"#
        XCTAssertThrowsError(try SluiceConfig.parse(bytes: Array(json.utf8), environment: [:])) { error in
            XCTAssertEqual((error as? ConfigError)?.problems.map(\.path), ["$.upstreams[1].http_version"])
        }
    }

    // MARK: tls

    func testTLSCAFileParses() throws {
        let ca = try temporaryCAFile()
        let upstream = try parseUpstream(baseURL: "https://llm.internal/v1", #""http_version": "2", "tls": {"ca_file": "\#(ca)"}"#)
        XCTAssertEqual(upstream.tls, UpstreamTLSConfig(caFile: ca))
        XCTAssertEqual(upstream.httpVersion, .http2)
        XCTAssertEqual(try parseUpstream(baseURL: "https://h/v1", #""tls": {}"#).tls, UpstreamTLSConfig(), "an empty object: the system's roots")
        XCTAssertNil(try parseUpstream(baseURL: "https://h/v1", #""tls": null"#).tls)
    }

    func testTLSOnACleartextURLIsAnError() throws {
        let ca = try temporaryCAFile()
        XCTAssertEqual(upstreamProblems(baseURL: "http://h/v1", #""tls": {"ca_file": "\#(ca)"}"#), [
            #"$.upstreams[0].tls: TLS settings given, but base_url is a cleartext http:// URL: write https:// to reach the upstream over TLS, or remove "tls""#,
        ])
    }

    func testBadCAFilesAreReportedAtTheirPath() throws {
        let missing = "/nonexistent/sluice/ca.pem"
        XCTAssertEqual(upstreamProblems(baseURL: "https://h/v1", #""tls": {"ca_file": "\#(missing)"}"#), [
            #"$.upstreams[0].tls.ca_file: file "\#(missing)" does not exist"#,
        ])
        let directory = FileManager.default.temporaryDirectory.path
        XCTAssertEqual(upstreamProblems(baseURL: "https://h/v1", #""tls": {"ca_file": "\#(directory)"}"#), [
            #"$.upstreams[0].tls.ca_file: "\#(directory)" is a directory, not a PEM file"#,
        ])
        let key = try temporaryCAFile(contents: "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n")
        XCTAssertEqual(upstreamProblems(baseURL: "https://h/v1", #""tls": {"ca_file": "\#(key)"}"#), [
            #"$.upstreams[0].tls.ca_file: file "\#(key)" holds no PEM certificate (-----BEGIN CERTIFICATE-----): give the CA certificates the upstream's certificate chains to"#,
        ])
        let empty = try temporaryCAFile(contents: "")
        XCTAssertEqual(upstreamProblems(baseURL: "https://h/v1", #""tls": {"ca_file": "\#(empty)"}"#).map { $0.contains("holds no PEM certificate") }, [true])
        XCTAssertEqual(upstreamProblems(baseURL: "https://h/v1", #""tls": {"ca_file": 7}"#), [#"$.upstreams[0].tls.ca_file: expected a string, found an integer"#])
        XCTAssertEqual(upstreamProblems(baseURL: "https://h/v1", #""tls": {"ca_file": ""}"#), [#"$.upstreams[0].tls.ca_file: must not be empty"#])
        XCTAssertEqual(upstreamProblems(baseURL: "https://h/v1", #""tls": {"verify": false}"#).map { $0.hasPrefix(#"$.upstreams[0].tls.verify: unknown field "verify""#) }, [true])
        XCTAssertEqual(upstreamProblems(baseURL: "https://h/v1", #""tls": "ca.pem""#), [#"$.upstreams[0].tls: expected an object, found a string"#])
    }

    /// The `keys` commands edit files on machines without the deployment's files: a CA file that is
    /// not there is not their problem (serve and check-config report it).
    func testCAFileIsNotCheckedWithoutMachineSecrets() throws {
        let upstream = try parseUpstream(baseURL: "https://h/v1", #""tls": {"ca_file": "/nonexistent/ca.pem"}"#, requireMachineSecrets: false)
        XCTAssertEqual(upstream.tls?.caFile, "/nonexistent/ca.pem")
    }

    /// Config/sluice.schema.json offers exactly the loader's HTTP versions (its fields:
    /// `ConfigSchemaTests`).
    func testSchemaListsTheHTTPVersions() throws {
        let schemaURL = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("Config/sluice.schema.json")
        let schema = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: schemaURL)) as? [String: Any])
        let upstreams = try XCTUnwrap((schema["properties"] as? [String: Any])?["upstreams"] as? [String: Any])
        let properties = try XCTUnwrap((upstreams["items"] as? [String: Any])?["properties"] as? [String: Any])
        let versions = try XCTUnwrap((properties["http_version"] as? [String: Any])?["enum"] as? [Any])
        XCTAssertEqual(versions.compactMap { $0 as? String }, UpstreamConfig.HTTPVersion.allCases.map(\.rawValue))
    }
}
