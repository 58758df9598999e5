import NIOCore
import SluiceCore
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

    func testEveryNameOfAKeyCarriesItsHashTag() {
        let layout = RedisKeyLayout(keyID: "team-a")
        for name in [layout.state, layout.usage(day: "2026-12-03"), layout.usageStream] {
            XCTAssertTrue(name.hasPrefix("sluice:{team-a}:"), name)
        }
    }

    /// The positions batch.lua reads its arguments from (its header comment): the state key, then
    /// ARGV 1…46 fixed, then lost admissions, lost and new settlements, admissions.
    func testBatchCallArgumentsFollowBatchLua() {
        var limits = ResolvedLimits(requests: BucketLimit(perMinute: 60, burst: 10), tokens: BucketLimit(perMinute: 1_000), maxConcurrentRequests: 3, tokensPerDay: 500)
        limits.usdPerMonth = 5_000_000_000
        var settlement = SettlementValues(reservedPrompt: 1, reservedOutput: 2, actualPrompt: 3, actualCompletion: 4, quotaDay: 5, quotaMonth: -1, slotEpoch: 6)
        settlement.reservedCost = 16
        settlement.actualCost = 17
        var request = AdmissionRequest(requestID: "r", keyID: "team-a", limits: limits, model: "m", promptTokens: 7, reservedOutputTokens: 8)
        request.reservedCostNanos = 18
        request.tracksMonthTokens = true
        let lost = LostCall(sequence: 4, admissions: [(prompt: 9, output: 10, cost: 19, tracks: false)], settlements: [settlement], firstResolution: nil)
        var call = LaneCall(sequence: 5, limits: limits, admissions: [request], settlements: [settlement], lost: lost)
        call.leaseWanted = [11, 12, 0, 0]
        call.leaseReturned[1] = (end: 13, tailStart: 14)
        call.slotsWanted = 2
        call.slotsReturned = 1
        call.slotsEpoch = 77
        call.leaseLeast = [1, 15, 0, 0]
        let arguments = call.arguments(stateKey: "sluice:{team-a}:state", nodeID: "node-x", deadline: 99, options: .init(leaseTTLMillis: 30_000, stateTTLMillis: 900_000))
        var expected = ["sluice:{team-a}:state", "node-x", "5", "99", "60", "10", "1000", "1000", "0", "0", "0", "0", "3", "500", "0", "30000", "900000", "1000000"]
        expected += ["4", "5", "1", "1", "1", "1"]            // lost seq, first resolution (this call), counts
        expected += ["11", "12", "0", "0"]                    // lease wanted
        expected += ["0", "0", "13", "14", "0", "0", "0", "0"] // lease returned
        expected += ["2", "1", "77"]                          // slots wanted, returned, their epoch
        expected += ["1", "15", "0", "0"]                     // the least worth taking
        expected += ["0", "0"]                                // slots the lost call gave back
        expected += ["0", "5000000000"]                       // the budgets per day and month (n$)
        expected += ["1"]                                     // some request tracks the month's tokens
        expected += ["9", "10", "19", "0"]                    // the lost admission
        expected += ["1", "2", "3", "4", "5", "-1", "6", "16", "17", "0"] // the lost settlement
        expected += ["1", "2", "3", "4", "5", "-1", "6", "16", "17", "0"] // the settlement
        expected += ["7", "8", "18", "1"]                     // the admission
        XCTAssertEqual(arguments, RedisArguments(expected))
    }
}
