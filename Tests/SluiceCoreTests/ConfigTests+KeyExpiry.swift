import XCTest
@testable import SluiceCore

/// `keys[].expires_at` and `keys[].previous_secrets` (key rotation).
extension ConfigTests {
    func testKeyExpiryAndPreviousSecretsParse() throws {
        let config = try load("valid_key_expiry")
        let demo = config.keys[0]
        XCTAssertEqual(demo.expiresAt?.rfc3339, "2027-01-31T12:00:00Z")
        XCTAssertEqual(demo.previousSecrets.map(\.secretSHA256), [
            "85d171cc737adcc28c5eccbf9fded551fdf48e9cbf90c20bbdac582946a2d027",
            "abdd617b6e0f8fa1a41943143d5c2bf11d95e7debecd2c3219bf696029b08059",
        ])
        XCTAssertEqual(demo.previousSecrets.map(\.expiresAt.rfc3339), ["2026-12-01T00:00:00.250Z", "2028-01-01T00:00:00Z"])
        XCTAssertNil(config.keys[1].expiresAt, "null: never")
        XCTAssertEqual(config.keys[1].previousSecrets, [])
    }

    func testBadExpiryTimes() {
        XCTAssertEqual(problems("bad_expires_at"), [
            #"$.keys[0].expires_at: expected an RFC 3339 UTC time such as "2027-01-31T00:00:00Z", found "2027-01-31 12:00:00""#,
            #"$.keys[0].previous_secrets[0].expires_at: expected an RFC 3339 UTC time such as "2027-01-31T00:00:00Z", found "2027-01-31T12:00:00+02:00""#,
            #"$.keys[1].expires_at: expected an RFC 3339 UTC time such as "2027-01-31T00:00:00Z", found "2027-02-30T00:00:00Z""#,
        ])
    }

    func testPreviousSecretNeedsAnExpiry() {
        XCTAssertEqual(problems("previous_secret_without_expiry"), [
            "$.keys[0].previous_secrets[0].expires_at: missing (required): when this old secret stops authenticating",
            #"$.keys[0].previous_secrets[1].secret: the secret itself must not be in the file: put its SHA-256 in "secret_sha256" (`sluice keys new` prints both)"#,
            "$.keys[0].previous_secrets[1].expires_at: missing (required): when this old secret stops authenticating",
        ])
    }

    func testPreviousSecretHashIsUniqueAcrossKeys() {
        XCTAssertEqual(problems("previous_secret_duplicate_hash"), [
            "$.keys[1].secret_sha256: duplicate secret hash (also at $.keys[0].previous_secrets[0].secret_sha256): two keys would share one secret",
        ])
    }

    func testRFC3339RoundTrip() throws {
        XCTAssertEqual(UTCTimestamp(rfc3339: "1970-01-01T00:00:00Z")?.unixMilliseconds, 0)
        XCTAssertEqual(UTCTimestamp(rfc3339: "2000-02-29T23:59:59.9991z")?.unixMilliseconds, 951_868_799_999)
        XCTAssertEqual(UTCTimestamp(rfc3339: "2026-12-07t10:20:30Z")?.rfc3339, "2026-12-07T10:20:30Z")
        XCTAssertEqual(UTCTimestamp(unixMilliseconds: 1_796_083_200_123).rfc3339, "2026-12-01T00:00:00.123Z")
        for bad in ["2026-12-07T10:20:30", "2026-12-07T24:00:00Z", "2026-13-01T00:00:00Z", "2025-02-29T00:00:00Z", "2026-12-07T10:20:30.Z", "1969-12-31T23:59:59Z", "2026-12-07T10:20:30+00:00", "now"] {
            XCTAssertNil(UTCTimestamp(rfc3339: bad), bad)
        }
        let now = UTCTimestamp.now()
        XCTAssertEqual(UTCTimestamp(rfc3339: now.rfc3339), now)
    }
}
