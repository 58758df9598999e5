import NIOHTTP1
import XCTest
@testable import SluiceServer

final class RouteTests: XCTestCase {
    func testRoutesByMethodAndPath() {
        let table: [(HTTPMethod, String, Route)] = [
            (.POST, "/v1/chat/completions", .proxy(.chatCompletions)),
            (.POST, "/v1/completions", .proxy(.completions)),
            (.POST, "/v1/embeddings", .proxy(.embeddings)),
            (.GET, "/v1/chat/completions", .methodNotAllowed(allowed: ["POST"])),
            (.GET, "/v1/models", .listModels),
            (.GET, "/v1/models/gpt-4o", .retrieveModel("gpt-4o")),
            (.DELETE, "/v1/models/gpt-4o", .methodNotAllowed(allowed: ["GET"])),
            (.GET, "/v1/models/", .notFound),
            (.GET, "/healthz", .health),
            (.GET, "/readyz", .ready),
            (.GET, "/metrics", .metrics),
            (.POST, "/metrics", .methodNotAllowed(allowed: ["GET", "HEAD"])),
            (.GET, "/v1/files", .notFound),
            (.GET, "/", .notFound),
        ]
        for (method, path, expected) in table {
            XCTAssertEqual(Route(method: method, path: path), expected, "\(method) \(path)")
        }
    }

    func testMetricLabelsAreBounded() {
        // Unknown paths all share one label, so clients cannot mint label values.
        XCTAssertEqual(Route(method: .GET, path: "/a").metricLabel, Route(method: .GET, path: "/b").metricLabel)
    }
}

final class RequestIDGeneratorTests: XCTestCase {
    func testIDsAreUniqueAndShaped() {
        let generator = RequestIDGenerator()
        var seen = Set<String>()
        for _ in 0..<10_000 {
            let id = generator.next()
            XCTAssertTrue(id.hasPrefix("req_"))
            XCTAssertEqual(id.count, 4 + 16 + 12)
            XCTAssertTrue(seen.insert(id).inserted)
        }
        XCTAssertNotEqual(RequestIDGenerator().next(), RequestIDGenerator().next(), "prefixes differ per process start")
    }
}
