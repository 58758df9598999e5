import SluiceCore
import SluiceUpstream
import XCTest
@testable import SluiceServer

final class GatewaySettingsTests: XCTestCase {
    /// The metrics' `model` label is an entry of the config: the exact name when one is listed (even
    /// after a prefix that also matches), else the first matching pattern; never the client's name.
    func testModelLabelIsTheConfigEntryThatRoutedTheRequest() {
        let config = SluiceConfig(
            upstreams: [
                UpstreamConfig(name: "a", baseURL: "http://127.0.0.1:1/v1", models: [.prefix("gpt-4o"), .exact("gpt-4o-mini"), .prefix("gpt-4")]),
                UpstreamConfig(name: "b", baseURL: "http://127.0.0.1:2/v1", models: [.exact("o3"), .prefix("")]),
            ],
            keys: []
        )
        let settings = GatewaySettings(config: config)
        XCTAssertEqual(settings.metricLabel(forModel: "gpt-4o-mini"), "gpt-4o-mini")
        XCTAssertEqual(settings.metricLabel(forModel: "gpt-4o-made-up-\u{1B}[31m"), "gpt-4o*")
        XCTAssertEqual(settings.metricLabel(forModel: "gpt-4.1"), "gpt-4*")
        XCTAssertEqual(settings.metricLabel(forModel: "o3"), "o3")
        XCTAssertEqual(settings.metricLabel(forModel: "anything else"), "*")
        let exactOnly = GatewaySettings(config: SluiceConfig(
            upstreams: [UpstreamConfig(name: "a", baseURL: "http://127.0.0.1:1/v1", models: [.exact("gpt-4o")])], keys: []
        ))
        XCTAssertEqual(exactOnly.metricLabel(forModel: "no longer served after a reload"), "other")
    }

    /// `http_version` and `tls.ca_file` reach the engine's requests in its own terms.
    func testRoutesCarryTheHTTPVersionAndTheCAFile() {
        func route(_ version: UpstreamConfig.HTTPVersion, _ baseURL: String, caFile: String? = nil) -> UpstreamRoute {
            var upstream = UpstreamConfig(name: "u", baseURL: baseURL, models: [.exact("m")])
            upstream.httpVersion = version
            upstream.tls = caFile.map { UpstreamTLSConfig(caFile: $0) }
            return UpstreamRoute(config: upstream)
        }
        XCTAssertEqual(route(.auto, "https://h/v1").httpVersion, .auto)
        XCTAssertEqual(route(.http1_1, "https://h/v1").httpVersion, .http1_1)
        XCTAssertEqual(route(.http2, "https://h/v1", caFile: "/etc/ca.pem").httpVersion, .http2)
        XCTAssertEqual(route(.http2, "https://h/v1", caFile: "/etc/ca.pem").caFile, "/etc/ca.pem")
        XCTAssertEqual(route(.h2c, "http://h/v1").httpVersion, .h2c)
        XCTAssertNil(route(.h2c, "http://h/v1").caFile)
    }
}
