import Foundation
import XCTest
@testable import SluiceCore

/// `Config/sluice.schema.json` is what editors check a config against: every section the loader
/// reads must list exactly the fields the loader accepts, so a field added to one is not forgotten
/// in the other.
final class ConfigSchemaTests: XCTestCase {
    static let schemaURL = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("Config/sluice.schema.json")

    private func schema() throws -> [String: Any] {
        try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: Self.schemaURL)) as? [String: Any])
    }

    /// The property names of the object schema at `path` (keys of nested objects; `items` for arrays;
    /// `$ref`s into `$defs` followed).
    private func properties(_ path: [String]) throws -> Set<String> {
        let root = try schema()
        var node: [String: Any] = root
        for step in path {
            if let ref = node["$ref"] as? String, ref.hasPrefix("#/$defs/") {
                node = try XCTUnwrap((root["$defs"] as? [String: Any])?[String(ref.dropFirst("#/$defs/".count))] as? [String: Any])
            }
            node = try XCTUnwrap(node[step] as? [String: Any], "no \(step) in \(path)")
        }
        if let ref = node["$ref"] as? String, ref.hasPrefix("#/$defs/") {
            node = try XCTUnwrap((root["$defs"] as? [String: Any])?[String(ref.dropFirst("#/$defs/".count))] as? [String: Any])
        }
        return Set(try XCTUnwrap(node["properties"] as? [String: Any], "no properties at \(path)").keys)
    }

    func testEverySectionListsTheFieldsTheLoaderAccepts() throws {
        typealias Reader = ConfigDocumentReader
        let sections: [([String], [String])] = [
            ([], Reader.topLevelFields),
            (["properties", "server"], Reader.serverFields),
            (["properties", "tokenizer"], Reader.tokenizerFields),
            (["properties", "upstreams", "items"], Reader.upstreamFields),
            (["properties", "upstreams", "items", "properties", "circuit_breaker"], Reader.circuitBreakerFields),
            (["properties", "upstreams", "items", "properties", "tls"], Reader.upstreamTLSFields),
            (["properties", "upstreams", "items", "properties", "limits"], Reader.deploymentLimitFields),
            (["properties", "routing"], Reader.routingFields),
            (["$defs", "limits"], Reader.limitFields),
            (["properties", "keys", "items"], Reader.keyFields),
            (["properties", "redis"], Reader.redisFields),
            (["properties", "redis", "properties", "tls"], Reader.redisTLSFields),
            (["properties", "telemetry"], Reader.telemetryFields),
            (["properties", "log"], Reader.logFields),
            (["properties", "pricing"], Reader.pricingFields),
            (["$defs", "model_price"], Reader.modelPriceFields),
            (["$defs", "model_price", "properties", "volume_tiers", "items"], Reader.volumeTierFields),
            (["properties", "pricing", "properties", "plans", "additionalProperties"], Reader.planFields),
            (["properties", "teams", "additionalProperties"], Reader.limitFields),
        ]
        for (path, fields) in sections {
            XCTAssertEqual(try properties(path), Set(fields), "schema at \(path.joined(separator: "."))")
        }
    }
}
