import NIOHTTP1
import XCTest
@testable import SluiceServer

final class ClientRequestIDTests: XCTestCase {
    func testWellFormedIDsAreTaken() {
        for id in [
            "a", "req-123", "0f8fad5b-d9cb-469f-a165-70867728950e", "01ARZ3NDEKTSV4RRFFQ69G5FAV",
            "trace:span/1.2_3", "dGhlIGNsaWVudA+/=", String(repeating: "x", count: ClientRequestID.maxBytes),
            RequestIDGenerator().next(),
        ] {
            XCTAssertTrue(ClientRequestID.isWellFormed(id), id)
            XCTAssertEqual(ClientRequestID.accepted(from: HTTPHeaders([("X-Request-Id", id)])), id)
        }
    }

    func testMalformedIDsAreNotTaken() {
        for id in [
            "", String(repeating: "x", count: ClientRequestID.maxBytes + 1), "two words", " padded", "tab\there",
            "line\nbreak", "cr\rlf", "nul\u{0}", "esc\u{1B}[31m", "quote\"d", "semi;colon", "comma,list", "a=b c",
            "percent%20", "key=value&x=y", "brace{k}", "star*", "ünïcödé", "emoji🙂", "back\\slash", "#hash", "@at",
        ] {
            XCTAssertFalse(ClientRequestID.isWellFormed(id), id.debugDescription)
            XCTAssertNil(ClientRequestID.accepted(from: HTTPHeaders([("x-request-id", id)])), id.debugDescription)
        }
    }

    func testOnlyASingleFieldIsTaken() {
        XCTAssertNil(ClientRequestID.accepted(from: HTTPHeaders()))
        XCTAssertNil(ClientRequestID.accepted(from: HTTPHeaders([("x-request-id", "one"), ("x-request-id", "two")])))
        XCTAssertNil(ClientRequestID.accepted(from: HTTPHeaders([("x-request-id", "one"), ("X-Request-ID", "one")])))
        XCTAssertEqual(ClientRequestID.accepted(from: HTTPHeaders([("x-request-idx", "no"), ("x-request-id", "yes")])), "yes")
    }
}
