import XCTest
@testable import SluiceCore

/// The admin listener (`server.admin_host`, `server.admin_port`) and the per-key `metrics` opt-in.
final class ConfigObservabilityTests: XCTestCase {
    private func document(server: String = #""port": 8080"#, key: String = "") -> [UInt8] {
        Array("""
        {
          "server": {\(server)},
          "upstreams": [{"name": "mock", "base_url": "http://127.0.0.1:9000/v1", "models": ["gpt-4o-mini"]}],
          "tiers": {"t": {"requests_per_minute": 60}},
          "keys": [{"id": "k", "secret_sha256": "\(String(repeating: "a", count: 64))", "tier": "t"\(key)}]
        }
        """.utf8)
    }

    private func problems(_ bytes: [UInt8]) -> [String] {
        do {
            _ = try SluiceConfig.parse(bytes: bytes, environment: [:])
            XCTFail("accepted")
            return []
        } catch {
            return error.problems.map(\.description)
        }
    }

    func testAdminListenerDefaultsToLoopback9464() throws {
        let config = try SluiceConfig.parse(bytes: document(), environment: [:])
        XCTAssertEqual(config.server.adminHost, "127.0.0.1")
        XCTAssertEqual(config.server.adminPort, 9464)
        XCTAssertFalse(config.keys[0].metrics, "the per-key series are opt-in")
    }

    func testAdminListenerIsConfigurableAndZeroTurnsItOff() throws {
        var config = try SluiceConfig.parse(bytes: document(server: #""port": 8080, "admin_host": "0.0.0.0", "admin_port": 9100"#), environment: [:])
        XCTAssertEqual(config.server.adminHost, "0.0.0.0")
        XCTAssertEqual(config.server.adminPort, 9100)
        config = try SluiceConfig.parse(bytes: document(server: #""port": 8080, "admin_port": 0"#), environment: [:])
        XCTAssertEqual(config.server.adminPort, 0)
    }

    func testAdminPortMustDifferFromThePublicPortAndBeAPort() {
        XCTAssertEqual(
            problems(document(server: #""port": 9464"#)),
            ["$.server.admin_port: 9464 is also server.port: the admin listener (/metrics) needs a port of its own (0 turns it off)"]
        )
        XCTAssertEqual(problems(document(server: #""port": 8080, "admin_port": 70000"#)).count, 1)
        XCTAssertEqual(problems(document(server: #""port": 8080, "admin_port": "9464""#)).count, 1)
    }

    func testKeyMetricsOptIn() throws {
        let config = try SluiceConfig.parse(bytes: document(key: #", "metrics": true"#), environment: [:])
        XCTAssertTrue(config.keys[0].metrics)
        XCTAssertTrue(KeyTable(config: config).keys.first?.exportsMetrics ?? false)
        XCTAssertEqual(problems(document(key: #", "metrics": "yes""#)), [#"$.keys[0].metrics: expected true or false, found a string"#])
    }

    func testAdminFieldsNeedARestart() throws {
        let running = try SluiceConfig.parse(bytes: document(), environment: [:])
        let next = try SluiceConfig.parse(bytes: document(server: #""port": 8080, "admin_port": 9100"#), environment: [:])
        XCTAssertEqual(next.sectionsNeedingRestart(running: running), ["server"])
    }
}
