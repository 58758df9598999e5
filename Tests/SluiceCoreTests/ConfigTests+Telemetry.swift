import Foundation
import XCTest
@testable import SluiceCore

/// The `telemetry` section: traces exported over OTLP/HTTP.
extension ConfigTests {
    func parseTelemetrySection(_ telemetryJSON: String?) throws -> SluiceConfig {
        let section = telemetryJSON.map { #", "telemetry": "# + $0 } ?? ""
        let json = #"{"upstreams": [{"name": "u", "base_url": "http://h/v1", "models": ["*"]}], "keys": []"# + section + "}"
        return try SluiceConfig.parse(bytes: Array(json.utf8), environment: [:])
    }

    func telemetrySectionProblems(_ telemetryJSON: String, file: StaticString = #filePath, line: UInt = #line) -> [String] {
        do {
            _ = try parseTelemetrySection(telemetryJSON)
            XCTFail("accepted: \(telemetryJSON)", file: file, line: line)
            return []
        } catch {
            return (error as? ConfigError)?.problems.map(\.description) ?? ["\(error)"]
        }
    }

    func testTelemetryIsOffWithoutASection() throws {
        let telemetry = try parseTelemetrySection(nil).telemetry
        XCTAssertFalse(telemetry.isEnabled)
        XCTAssertNil(telemetry.tracesURL)
        XCTAssertEqual(telemetry, TelemetryConfig())
        XCTAssertFalse(try parseTelemetrySection("null").telemetry.isEnabled)
        XCTAssertFalse(try parseTelemetrySection("{}").telemetry.isEnabled)
    }

    func testTelemetryEndpointTakesDefaults() throws {
        let telemetry = try parseTelemetrySection(#"{"otlp_endpoint": "http://127.0.0.1:4318"}"#).telemetry
        XCTAssertTrue(telemetry.isEnabled)
        XCTAssertEqual(telemetry.otlpEndpoint, "http://127.0.0.1:4318")
        XCTAssertEqual(telemetry.tracesURL, "http://127.0.0.1:4318/v1/traces")
        XCTAssertEqual(telemetry.samplingRatio, 1.0)
        XCTAssertEqual(telemetry.serviceName, "sluice")
    }

    func testTelemetryEveryField() throws {
        let telemetry = try parseTelemetrySection(#"{"otlp_endpoint": "https://collector.example:4318/", "sampling_ratio": 0.25, "service_name": "sluice-eu"}"#).telemetry
        XCTAssertEqual(telemetry.tracesURL, "https://collector.example:4318/v1/traces")
        XCTAssertEqual(telemetry.samplingRatio, 0.25)
        XCTAssertEqual(telemetry.serviceName, "sluice-eu")
        // A URL that already names the traces path is used as it is; 0 and 1 are ratios too.
        XCTAssertEqual(try parseTelemetrySection(#"{"otlp_endpoint": "http://c:4318/v1/traces", "sampling_ratio": 0}"#).telemetry.tracesURL, "http://c:4318/v1/traces")
        XCTAssertEqual(try parseTelemetrySection(#"{"otlp_endpoint": "http://c:4318", "sampling_ratio": 1}"#).telemetry.samplingRatio, 1.0)
    }

    func testTelemetryProblems() {
        XCTAssertEqual(telemetrySectionProblems(#"{"otlp_endpoint": "127.0.0.1:4318"}"#),
                       [#"$.telemetry.otlp_endpoint: expected an http:// or https:// URL of an OTLP/HTTP collector (e.g. http://127.0.0.1:4318), found "127.0.0.1:4318""#])
        XCTAssertEqual(telemetrySectionProblems(#"{"otlp_endpoint": "grpc://c:4317"}"#).count, 1)
        XCTAssertEqual(telemetrySectionProblems(#"{"otlp_endpoint": "http://"}"#).count, 1)
        XCTAssertEqual(telemetrySectionProblems(#"{"otlp_endpoint": "http://c:4318", "sampling_ratio": 1.5}"#),
                       ["$.telemetry.sampling_ratio: must be between 0 and 1, found 1.5"])
        XCTAssertEqual(telemetrySectionProblems(#"{"otlp_endpoint": "http://c:4318", "sampling_ratio": -1}"#),
                       ["$.telemetry.sampling_ratio: must be between 0 and 1, found -1.0"])
        XCTAssertEqual(telemetrySectionProblems(#"{"otlp_endpoint": "http://c:4318", "sampling_ratio": "all"}"#),
                       ["$.telemetry.sampling_ratio: expected a number between 0 and 1, found a string"])
        XCTAssertEqual(telemetrySectionProblems(#"{"otlp_endpoint": 4318}"#).count, 1)
        XCTAssertEqual(telemetrySectionProblems(#"{"otlp_endpoint": "http://c:4318", "service_name": ""}"#).count, 1)
        XCTAssertEqual(telemetrySectionProblems(#"{"endpoint": "http://c:4318"}"#).count, 1, "unknown fields are refused")
        XCTAssertEqual(telemetrySectionProblems(#""http://c:4318""#).count, 1)
    }

    func testTelemetryChangeNeedsARestart() throws {
        let running = try parseTelemetrySection(nil)
        let next = try parseTelemetrySection(#"{"otlp_endpoint": "http://c:4318"}"#)
        XCTAssertEqual(next.sectionsNeedingRestart(running: running), ["telemetry"])
        XCTAssertEqual(running.sectionsNeedingRestart(running: running), [])
    }

    func testTelemetrySettingsWithoutEndpointAreWarnedAbout() throws {
        let config = try parseTelemetrySection(#"{"sampling_ratio": 0.5, "service_name": "x"}"#)
        XCTAssertFalse(config.telemetry.isEnabled)
        XCTAssertEqual(config.telemetryFindings().map(\.description), [
            "warning: $.telemetry.sampling_ratio: has no effect: traces are off without telemetry.otlp_endpoint",
            "warning: $.telemetry.service_name: has no effect: traces are off without telemetry.otlp_endpoint",
        ])
        XCTAssertEqual(try parseTelemetrySection(#"{"otlp_endpoint": "http://c:4318", "sampling_ratio": 0.5}"#).telemetryFindings().count, 0)
    }
}
