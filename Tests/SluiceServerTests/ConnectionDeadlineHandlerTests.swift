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
