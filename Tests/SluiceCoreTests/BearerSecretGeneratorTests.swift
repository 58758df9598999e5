import XCTest
@testable import SluiceCore

final class BearerSecretGeneratorTests: XCTestCase {
    func testFormatAndUniformAlphabet() {
        var generator = SplitMix64(seed: 42)
        var seen = Set<UInt8>()
        for _ in 0..<200 {
            let secret = BearerSecretGenerator.generate(using: &generator)
            XCTAssertTrue(secret.hasPrefix("sk-sluice-"))
            let body = secret.utf8.dropFirst("sk-sluice-".utf8.count)
            XCTAssertEqual(body.count, 43)
            for byte in body {
                XCTAssertTrue((48...57).contains(byte) || (65...90).contains(byte) || (97...122).contains(byte), "not base62: \(byte)")
                seen.insert(byte)
            }
        }
        XCTAssertEqual(seen.count, 62, "every base62 character occurs")
    }

    func testSystemSecretsDifferAndAuthenticate() throws {
        let first = BearerSecretGenerator.generate()
        let second = BearerSecretGenerator.generate()
        XCTAssertNotEqual(first, second)
        let json = """
            {"upstreams": [{"name": "u", "base_url": "http://h/v1", "models": ["*"]}],
             "tiers": {"t": {}},
             "keys": [{"id": "new", "secret_sha256": "\(KeyTable.sha256Hex(of: first))", "tier": "t"}]}
            """
        let table = KeyTable(config: try SluiceConfig.parse(bytes: Array(json.utf8), environment: [:]))
        XCTAssertEqual(table.authenticate(bearerSecret: first)?.id, "new")
        XCTAssertNil(table.authenticate(bearerSecret: second))
    }
}
