import NIOCore
import XCTest

@testable import SluiceRedis

final class RedisArgumentsTests: XCTestCase {
    private func wire(_ arguments: RedisArguments) -> String {
        var buffer = ByteBuffer()
        arguments.write(into: &buffer)
        XCTAssertLessThanOrEqual(buffer.readableBytes, arguments.encodedSize)
        return String(decoding: buffer.readableBytesView, as: UTF8.self)
    }

    func testTextsAndBytesAreBulkStrings() {
        var arguments = RedisArguments(["SET", "clé"])
        arguments.append(bytes: [0, 13, 10, 255])
        arguments.append("")
        XCTAssertEqual(arguments.count, 4)
        XCTAssertEqual(wire(arguments), "*4\r\n$3\r\nSET\r\n$4\r\nclé\r\n$4\r\n\u{0}\r\n\u{FFFD}\r\n$0\r\n\r\n")
        XCTAssertEqual(RedisArguments([Array("GET".utf8), Array("k".utf8)]), RedisArguments(["GET", "k"]))
    }

    func testIntegersAreDecimal() {
        var arguments = RedisArguments()
        for value in [0, 7, 10, -1, 1_234_567_890, Int.max, Int.min] { arguments.append(value) }
        var expected = RedisArguments()
        for value in [0, 7, 10, -1, 1_234_567_890, Int.max, Int.min] { expected.append(String(value)) }
        XCTAssertEqual(arguments, expected)
        XCTAssertEqual(wire(arguments).split(separator: "\r\n").filter { !$0.hasPrefix("$") && !$0.hasPrefix("*") },
                       ["0", "7", "10", "-1", "1234567890", "9223372036854775807", "-9223372036854775808"])
    }

    func testPartsMakeOneArgument() {
        var arguments = RedisArguments()
        arguments.append("sluice:{k}:", "rpm")
        arguments.append("sluice:{k}:", "res:", "req_1")
        XCTAssertEqual(arguments, RedisArguments(["sluice:{k}:rpm", "sluice:{k}:res:req_1"]))
    }

    func testAppendingArgumentsKeepsOrderAndCount() {
        var head = RedisArguments(["FCALL", "f"])
        head.append(contentsOf: RedisArguments(["k", "a"]))
        XCTAssertEqual(head.count, 4)
        XCTAssertEqual(head, RedisArguments(["FCALL", "f", "k", "a"]))
        let call = RedisScriptCall(keys: ["k1", "k2"], arguments: ["a"])
        XCTAssertEqual(call.command("FCALL", name: "f".utf8), RedisArguments(["FCALL", "f", "2", "k1", "k2", "a"]))
    }

    func testLimiterKeysFollowTheLayout() {
        let layout = RedisKeyLayout(keyID: "team-a")
        var arguments = RedisArguments()
        layout.appendLimiterKeys(requestID: "req_9", to: &arguments)
        XCTAssertEqual(arguments.count, RedisKeyLayout.limiterKeyCount)
        layout.appendUsageKeys(day: "2026-12-03", to: &arguments)
        XCTAssertEqual(arguments.count, RedisKeyLayout.limiterKeyCount + RedisKeyLayout.usageKeyCount)
        XCTAssertEqual(arguments, RedisArguments([
            layout.requests, layout.tokens, layout.inputTokens, layout.outputTokens, layout.leases, layout.quota,
            layout.reservation(requestID: "req_9"), layout.usage(day: "2026-12-03"), layout.usageStream,
        ]))
    }
}
