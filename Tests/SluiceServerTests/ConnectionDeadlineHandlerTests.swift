import NIOCore
import NIOEmbedded
import NIOHTTP1
import XCTest
@testable import SluiceServer

/// Deterministic tests of the connection deadlines on an `EmbeddedChannel` with a manual clock.
final class ConnectionDeadlineHandlerTests: XCTestCase {
    private func makeChannel() throws -> EmbeddedChannel {
        let channel = EmbeddedChannel()
        try channel.pipeline.syncOperations.addHandler(
            ConnectionDeadlineHandler(idleTimeout: .seconds(10), bodyTimeout: .seconds(2))
        )
        try channel.connect(to: SocketAddress(ipAddress: "127.0.0.1", port: 1)).wait()
        return channel
    }

    private func head() -> HTTPServerRequestPart {
        .head(HTTPRequestHead(version: .http1_1, method: .POST, uri: "/v1/chat/completions"))
    }

    func testIdleConnectionIsClosedAfterIdleTimeout() throws {
        let channel = try makeChannel()
        channel.embeddedEventLoop.advanceTime(by: .seconds(9))
        XCTAssertTrue(channel.isActive)
        channel.embeddedEventLoop.advanceTime(by: .seconds(2))
        XCTAssertFalse(channel.isActive)
    }

    func testStalledBodyGets408ThenClose() throws {
        let channel = try makeChannel()
        try channel.writeInbound(head())
        try channel.writeInbound(HTTPServerRequestPart.body(ByteBuffer(string: "{\"model\":")))
        channel.embeddedEventLoop.advanceTime(by: .seconds(3))
        guard case .head(let response) = try channel.readOutbound(as: HTTPServerResponsePart.self) else {
            return XCTFail("expected a response head")
        }
        XCTAssertEqual(response.status, .requestTimeout)
        guard case .body(.byteBuffer(let body)) = try channel.readOutbound(as: HTTPServerResponsePart.self) else {
            return XCTFail("expected a body")
        }
        XCTAssertTrue(String(buffer: body).contains("\"error\""))
        XCTAssertFalse(channel.isActive)
    }

    /// The deadlines are checked lazily (no timer per phase change): a body deadline that starts late
    /// in an idle period still fires on time, not at the next idle check.
    func testBodyDeadlineStartedLateInAnIdlePeriodFiresOnTime() throws {
        let channel = try makeChannel()
        channel.embeddedEventLoop.advanceTime(by: .seconds(9))
        try channel.writeInbound(head())
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(1_900))
        XCTAssertNil(try channel.readOutbound(as: HTTPServerResponsePart.self), "not yet: 1.9 s of the 2 s")
        XCTAssertTrue(channel.isActive)
        channel.embeddedEventLoop.advanceTime(by: .milliseconds(200))
        guard case .head(let response) = try channel.readOutbound(as: HTTPServerResponsePart.self) else {
            return XCTFail("expected the 408 head")
        }
        XCTAssertEqual(response.status, .requestTimeout)
        XCTAssertFalse(channel.isActive)
    }

    /// Requests that keep coming keep a connection open however long it lives.
    func testBusyKeepAliveConnectionStaysOpen() throws {
        let channel = try makeChannel()
        for _ in 0..<10 {
            channel.embeddedEventLoop.advanceTime(by: .seconds(8))
            try channel.writeInbound(head())
            try channel.writeInbound(HTTPServerRequestPart.end(nil))
            channel.embeddedEventLoop.advanceTime(by: .seconds(1))
            try channel.writeOutbound(HTTPServerResponsePart.head(HTTPResponseHead(version: .http1_1, status: .ok)))
            try channel.writeOutbound(HTTPServerResponsePart.end(nil))
            XCTAssertTrue(channel.isActive)
        }
        channel.embeddedEventLoop.advanceTime(by: .seconds(10))
        XCTAssertFalse(channel.isActive, "idle for the idle timeout after the last response")
    }

    func testLongResponseIsNotIdle() throws {
        let channel = try makeChannel()
        try channel.writeInbound(head())
        try channel.writeInbound(HTTPServerRequestPart.end(nil))
        // The request is complete; producing the response can take far longer than any timeout.
        channel.embeddedEventLoop.advanceTime(by: .seconds(600))
        XCTAssertTrue(channel.isActive)
        // After the response ends, the idle clock starts.
        try channel.writeOutbound(HTTPServerResponsePart.head(HTTPResponseHead(version: .http1_1, status: .ok)))
        try channel.writeOutbound(HTTPServerResponsePart.end(nil))
        channel.embeddedEventLoop.advanceTime(by: .seconds(11))
        XCTAssertFalse(channel.isActive)
    }
}
