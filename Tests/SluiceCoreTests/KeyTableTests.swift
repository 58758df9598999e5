import Crypto
import XCTest
@testable import SluiceCore

final class KeyTableTests: XCTestCase {
    func table() throws -> KeyTable {
        let url = ConfigTests.fixtures.appendingPathComponent("valid.json")
        return KeyTable(config: try SluiceConfig.load(path: url.path, environment: ConfigTests.environment))
    }

    func testAuthenticatesTheRightSecret() throws {
        let table = try table()
        // The fixture's hashes were made with Python's hashlib.sha256("sk-sluice-demo").
        XCTAssertEqual(table.authenticate(bearerSecret: "sk-sluice-demo")?.id, "demo")
        XCTAssertEqual(table.authenticate(bearerSecret: Array("sk-sluice-small".utf8))?.id, "small.team-1")
        XCTAssertEqual(table.authenticate(bearerSecret: Array("sk-sluice-demo".utf8).lazy.map { $0 })?.id, "demo", "non-contiguous collection path")
    }

    func testRejectsWrongEmptyAndOversizedSecrets() throws {
        let table = try table()
        XCTAssertNil(table.authenticate(bearerSecret: "sk-sluice-dem0"))
        XCTAssertNil(table.authenticate(bearerSecret: "sk-sluice-demo "))
        XCTAssertNil(table.authenticate(bearerSecret: ""))
        XCTAssertNil(table.authenticate(bearerSecret: [UInt8]()))
        XCTAssertNil(table.authenticate(bearerSecret: String(repeating: "x", count: KeyTable.maximumSecretBytes + 1)))
        // the hash itself is not a secret
        XCTAssertNil(table.authenticate(bearerSecret: "1c590839af894cf25f9a5fe06929af05b377f60efbe55508ef93d251887b9213"))
    }

    func testDigestParsingAndConstantTimeComparison() {
        let digest = SHA256.hash(data: Array("sk-sluice-demo".utf8))
        let fromHash = SecretDigest(digest)
        let fromHex = SecretDigest(hex: KeyTable.sha256Hex(of: "sk-sluice-demo"))
        XCTAssertEqual(fromHex, fromHash)
        XCTAssertTrue(fromHash.constantTimeEquals(fromHex!))
        // differing only in the very last bit
        var hex = Array(KeyTable.sha256Hex(of: "sk-sluice-demo").utf8)
        hex[63] = hex[63] == UInt8(ascii: "3") ? UInt8(ascii: "2") : UInt8(ascii: "3")
        let lastBit = SecretDigest(hex: String(decoding: hex, as: UTF8.self))!
        XCTAssertFalse(fromHash.constantTimeEquals(lastBit))
        XCTAssertNil(SecretDigest(hex: "zz"))
        XCTAssertEqual(KeyTable.sha256Hex(of: "sk-sluice-demo"), "1c590839af894cf25f9a5fe06929af05b377f60efbe55508ef93d251887b9213")
    }

    func testResolvedLimitsMergeTierAndKeyFieldByField() throws {
        let table = try table()
        let demo = try XCTUnwrap(table.key(id: "demo"))
        XCTAssertEqual(demo.limits, ResolvedLimits(requests: BucketLimit(perMinute: 600), tokens: BucketLimit(perMinute: 200_000), maxConcurrentRequests: 20))
        XCTAssertEqual(demo.defaultOutputTokens, 1024)
        let small = try XCTUnwrap(table.key(id: "small.team-1"))
        // tier: rpm 60, tpm 10000, tokens_burst 5000; key: tpm 20000, otpm 3000
        XCTAssertEqual(small.limits.requests, BucketLimit(perMinute: 60, burst: 60))
        XCTAssertEqual(small.limits.tokens, BucketLimit(perMinute: 20_000, burst: 5_000))
        XCTAssertEqual(small.limits.outputTokens, BucketLimit(perMinute: 3_000, burst: 3_000))
        XCTAssertNil(small.limits.inputTokens)
        XCTAssertNil(small.limits.maxConcurrentRequests)
        XCTAssertEqual(small.defaultOutputTokens, 256)
    }

    func testAllowedModels() throws {
        let table = try table()
        let small = try XCTUnwrap(table.key(id: "small.team-1"))
        XCTAssertTrue(small.mayUse(model: "gpt-4o-mini"))
        XCTAssertTrue(small.mayUse(model: "gpt-4.1-mini"))
        XCTAssertFalse(small.mayUse(model: "gpt-4o"))
        XCTAssertTrue(try XCTUnwrap(table.key(id: "demo")).mayUse(model: "anything"))
    }
}

/// Expiry: a key's `expires_at` and its previous secrets' (a rotation's old secret).
final class KeyTableExpiryTests: XCTestCase {
    func testExpiredSecretsAreRefusedLikeUnknownOnes() throws {
        let url = ConfigTests.fixtures.appendingPathComponent("valid_key_expiry.json")
        let table = KeyTable(config: try SluiceConfig.load(path: url.path, environment: ConfigTests.environment))
        let beforeAll = UTCTimestamp(rfc3339: "2026-11-30T00:00:00Z")!
        let oldSecretEnd = UTCTimestamp(rfc3339: "2026-12-01T00:00:00.250Z")!
        let keyEnd = UTCTimestamp(rfc3339: "2027-01-31T12:00:00Z")!

        // the current secret and both previous ones authenticate as the same key
        for secret in ["sk-sluice-demo", "sk-sluice-old", "sk-sluice-older"] {
            XCTAssertEqual(table.authenticate(bearerSecret: secret, at: beforeAll)?.id, "demo", secret)
        }
        // the first old secret ends at its own expiry, to the millisecond
        XCTAssertEqual(table.authenticate(bearerSecret: "sk-sluice-old", at: UTCTimestamp(unixMilliseconds: oldSecretEnd.unixMilliseconds - 1))?.id, "demo")
        XCTAssertNil(table.authenticate(bearerSecret: "sk-sluice-old", at: oldSecretEnd))
        XCTAssertEqual(table.authenticate(bearerSecret: "sk-sluice-demo", at: oldSecretEnd)?.id, "demo")
        // the key's expiry ends every secret, also the one whose own expiry is later
        XCTAssertNil(table.authenticate(bearerSecret: "sk-sluice-demo", at: keyEnd))
        XCTAssertNil(table.authenticate(bearerSecret: Array("sk-sluice-older".utf8), at: keyEnd))
        // a key without expiry never expires; the wall clock is the default
        XCTAssertEqual(table.authenticate(bearerSecret: "sk-sluice-small", at: UTCTimestamp(rfc3339: "2999-01-01T00:00:00Z"))?.id, "small")
        XCTAssertEqual(table.authenticate(bearerSecret: "sk-sluice-small")?.id, "small")
        XCTAssertNil(table.authenticate(bearerSecret: "sk-sluice-old"), "expired in 2026 by the wall clock")
    }
}
