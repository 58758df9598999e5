import NIOHTTP1
import XCTest
@testable import SluiceServer

final class RouteTests: XCTestCase {
    func testRoutesByMethodAndPath() {
        let table: [(HTTPMethod, String, Route)] = [
            (.POST, "/v1/chat/completions", .proxy(.chatCompletions)),
            (.POST, "/v1/completions", .proxy(.completions)),
            (.POST, "/v1/embeddings", .proxy(.embeddings)),
            (.POST, "/v1/responses", .proxy(.responses)),
            (.GET, "/v1/responses", .methodNotAllowed(allowed: ["POST"])),
            (.GET, "/v1/responses/resp_1", .responseResource(pathBelowVersion: "/responses/resp_1")),
            (.DELETE, "/v1/responses/resp_1", .responseResource(pathBelowVersion: "/responses/resp_1")),
            (.GET, "/v1/responses/resp_1/input_items", .responseResource(pathBelowVersion: "/responses/resp_1/input_items")),
            (.POST, "/v1/responses/resp_1/cancel", .responseResource(pathBelowVersion: "/responses/resp_1/cancel")),
            (.POST, "/v1/responses/resp_1", .methodNotAllowed(allowed: ["GET", "DELETE"])),
            (.GET, "/v1/responses/", .notFound),
            (.GET, "/v1/chat/completions", .methodNotAllowed(allowed: ["POST"])),
            (.GET, "/v1/models", .listModels),
            (.GET, "/v1/sluice/key", .keyState),
            (.POST, "/v1/sluice/key", .methodNotAllowed(allowed: ["GET", "HEAD"])),
            (.GET, "/v1/models/gpt-4o", .retrieveModel("gpt-4o")),
            (.HEAD, "/v1/models/gpt-4o", .retrieveModel("gpt-4o")),
            (.DELETE, "/v1/models/gpt-4o", .methodNotAllowed(allowed: ["GET", "HEAD"])),
            (.GET, "/v1/models/", .notFound),
            (.GET, "/healthz", .health),
            (.GET, "/readyz", .ready),
            // /metrics is the admin listener's alone (`AdminHandler`): not found on the public port.
            (.GET, "/metrics", .notFound),
            (.POST, "/metrics", .notFound),
            (.GET, "/v1/files", .notFound),
            (.GET, "/", .notFound),
        ]
        for (method, path, expected) in table {
            XCTAssertEqual(Route(method: method, path: path), expected, "\(method) \(path)")
        }
    }

    /// The model id in `/v1/models/{id}` is percent-decoded (RFC 3986) before it is looked up; an
    /// escape that cannot be decoded leaves the id as it came.
    func testModelIDIsPercentDecoded() {
        let table: [(String, String)] = [
            ("/v1/models/gpt-4o%2Dmini", "gpt-4o-mini"),
            ("/v1/models/ft%3Agpt-4o-mini%3Aacme%3A%3Aabc", "ft:gpt-4o-mini:acme::abc"),
            ("/v1/models/org%2Fmodel", "org/model"),
            ("/v1/models/caf%C3%A9+x", "café+x"),
            ("/v1/models/bad%2", "bad%2"),
            ("/v1/models/bad%zz", "bad%zz"),
            ("/v1/models/not-utf8%FF", "not-utf8%FF"),
        ]
        for (path, id) in table {
            XCTAssertEqual(Route(method: .GET, path: path), .retrieveModel(id), path)
        }
    }

    func testAPIPathsAreV1AndBelow() {
        for path in ["/v1", "/v1/", "/v1/audio/speech", "/v1/models/x"] { XCTAssertTrue(Route.isAPIPath(path), path) }
        for path in ["/", "/v10", "/healthz", "/metrics", "/v2/models"] { XCTAssertFalse(Route.isAPIPath(path), path) }
    }

    func testMetricLabelsAreBounded() {
        // Unknown paths all share one label, so clients cannot mint label values.
        XCTAssertEqual(Route(method: .GET, path: "/a").metricLabel, Route(method: .GET, path: "/b").metricLabel)
    }
}

final class AdminRouteTests: XCTestCase {
    func testAdminRoutes() {
        let table: [(HTTPMethod, String, AdminHandler.AdminRoute)] = [
            (.GET, "/metrics", .metrics),
            (.HEAD, "/metrics", .metrics),
            (.GET, "/healthz", .health),
            (.GET, "/readyz", .ready),
            (.POST, "/metrics", .methodNotAllowed),
            (.GET, "/v1/models", .notFound),
            (.POST, "/v1/chat/completions", .notFound),
            (.GET, "/", .notFound),
        ]
        for (method, path, expected) in table {
            XCTAssertEqual(AdminHandler.AdminRoute(method: method, path: path), expected, "\(method) \(path)")
        }
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
