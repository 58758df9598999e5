import Foundation
import XCTest
import SluiceCore
@testable import SluiceRedis

/// gcra.lua against its oracles: `GCRABucket` for the bucket math, Foundation's calendar for the
/// quota periods. The library is run by EVAL with a small harness appended.
final class LimiterScriptMathTests: XCTestCase {
    var server: RedisServerProcess?
    var client: RedisClient?

    override func setUpWithError() throws {
        let server = try RedisServerProcess()
        self.server = server
        client = try RedisClient(config: server.config, options: testClientOptions)
    }

    override func tearDown() {
        client?.shutdown()
        server?.stop()
    }

    private func runLibrary(_ harness: String, _ arguments: [String]) async throws -> [Int64] {
        guard let client else { throw RedisTestError("no client") }
        let source = try RedisScriptFiles.read("gcra.lua") + Array("\n".utf8) + Array(harness.utf8)
        var command: [[UInt8]] = [Array("EVAL".utf8), source, Array("0".utf8)]
        command += arguments.map { Array($0.utf8) }
        let reply = try await client.send(command)
        guard let elements = reply.array else { throw RedisTestError("not an array: \(reply)") }
        return try elements.map { element in
            guard case .integer(let value) = element else { throw RedisTestError("not an integer: \(element)") }
            return value
        }
    }

    func testBucketMathMatchesGCRABucket() async throws {
        let harness = """
        local out = {}
        for i = 1, #ARGV, 5 do
          local bucket = newBucket(tonumber(ARGV[i]), tonumber(ARGV[i + 1]))
          local d, cost, amount = tonumber(ARGV[i + 2]), tonumber(ARGV[i + 3]), tonumber(ARGV[i + 4])
          local verdict, value = bucketAdmit(bucket, cost, d)
          local code = 3
          if verdict == 'allowed' then code = 1 elseif verdict == 'denied' then code = 2 end
          for _, v in ipairs({ bucket.tau, code, value, bucketRefund(bucket, amount, d), bucketCharge(bucket, amount, d),
                               bucketRemaining(bucket, d), bucketUsed(bucket, d) }) do
            out[#out + 1] = v
          end
        end
        return out
        """
        var generator = SystemRandomNumberGenerator()
        let now: Int64 = 1_700_000_000_000_000
        let maximum = LimitSet.maximumValue
        func value() -> Int {
            // Half small, half anywhere up to the maximum, plus the edges.
            switch Int.random(in: 0..<10, using: &generator) {
            case 0: return 1
            case 1: return maximum
            case 2...5: return Int.random(in: 1...1_000, using: &generator)
            default: return Int.random(in: 1...maximum, using: &generator)
            }
        }
        var cases: [(rate: Int, burst: Int, d: Int64, cost: Int64, amount: Int64)] = []
        while cases.count < 3_000 {
            let bucket = GCRABucket(ratePerMinute: value(), burst: value())
            let tau = bucket.toleranceMicros
            // States a live limiter can hold: from long full to τ plus some debt.
            let d = Int64.random(in: -2 * tau...(tau + Int64.random(in: 0...2_678_400_000_000, using: &generator)), using: &generator)
            let cost = Int64.random(in: 0...(2 * bucket.burst), using: &generator)
            let amount = Int64.random(in: 0...(2 * bucket.burst), using: &generator)
            // Lua's doubles are exact below 2^53; the limiter never stores states beyond that.
            guard max(d, 0) + bucket.refillMicros(forCost: max(cost, amount)) < (1 << 53) else { continue }
            cases.append((Int(bucket.ratePerMinute), Int(bucket.burst), d, cost, amount))
        }
        for chunk in stride(from: 0, to: cases.count, by: 500) {
            let slice = cases[chunk..<min(chunk + 500, cases.count)]
            let arguments = slice.flatMap { [String($0.rate), String($0.burst), String($0.d), String($0.cost), String($0.amount)] }
            let results = try await runLibrary(harness, arguments)
            XCTAssertEqual(results.count, slice.count * 7)
            for (index, testCase) in slice.enumerated() {
                let bucket = GCRABucket(ratePerMinute: testCase.rate, burst: testCase.burst)
                let tat = now + testCase.d
                let lua = Array(results[(index * 7)..<(index * 7 + 7)])
                let expectedAdmission: [Int64]
                switch bucket.admit(cost: testCase.cost, tat: tat, now: now) {
                case .allowed(let newTAT): expectedAdmission = [1, newTAT - now]
                case .denied(let retryAfter): expectedAdmission = [2, retryAfter]
                case .tooLarge: expectedAdmission = [3, 0]
                }
                let expected: [Int64] = [bucket.toleranceMicros] + expectedAdmission + [
                    bucket.refund(testCase.amount, tat: tat, now: now) - now,
                    bucket.charge(testCase.amount, tat: tat, now: now) - now,
                    bucket.remaining(tat: tat, now: now),
                    bucket.used(tat: tat, now: now),
                ]
                XCTAssertEqual(lua, expected, "rate \(testCase.rate) burst \(testCase.burst) d \(testCase.d) cost \(testCase.cost) amount \(testCase.amount)")
            }
        }
    }

    func testQuotaPeriodsMatchTheGregorianCalendar() async throws {
        let harness = """
        local out = {}
        for i = 1, #ARGV do
          local today, month, nextDay, nextMonthDay = quotaPeriods(tonumber(ARGV[i]))
          local y, m, d = civilFromDays(today)
          for _, v in ipairs({ today, month, nextDay, nextMonthDay, y, m, d, daysFromCivil(y, m, d) }) do out[#out + 1] = v end
        end
        return out
        """
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = TimeZone(identifier: "UTC")!
        // Month and year edges, a leap day, plus random instants from 1970 to 2200.
        var instants: [Int64] = [0, 951_782_399, 951_782_400, 951_868_800, 1_709_164_800, 1_735_689_599, 1_735_689_600, 4_102_444_800]
        for _ in 0..<500 { instants.append(Int64.random(in: 0...7_258_118_400)) }
        let results = try await runLibrary(harness, instants.map(String.init))
        XCTAssertEqual(results.count, instants.count * 8)
        for (index, seconds) in instants.enumerated() {
            let lua = Array(results[(index * 8)..<(index * 8 + 8)])
            let date = Date(timeIntervalSince1970: TimeInterval(seconds))
            let parts = calendar.dateComponents([.year, .month, .day], from: date)
            let startOfMonth = calendar.date(from: DateComponents(year: parts.year, month: parts.month, day: 1))!
            let nextMonth = calendar.date(byAdding: .month, value: 1, to: startOfMonth)!
            let today = seconds / 86_400
            let expected: [Int64] = [
                today, Int64(parts.year! * 12 + parts.month! - 1), today + 1,
                Int64(nextMonth.timeIntervalSince1970 / 86_400),
                Int64(parts.year!), Int64(parts.month!), Int64(parts.day!), today,
            ]
            XCTAssertEqual(lua, expected, "at \(seconds)")
            let day = UTCDay(date)
            XCTAssertEqual([day.year, day.month, day.day], [parts.year!, parts.month!, parts.day!])
        }
        XCTAssertEqual(UTCDay(daysSinceEpoch: 0).text, "1970-01-01")
        XCTAssertEqual(UTCDay(Date(timeIntervalSince1970: 1_709_164_800)).text, "2024-02-29")
        XCTAssertEqual(UTCDay(daysSinceEpoch: -1).text, "1969-12-31")
    }

    func testScriptFilesAreLoadedAndHashed() throws {
        let scripts = try RedisLimiterStore.Scripts.load()
        for function in [scripts.batch, scripts.snapshot, scripts.usage] {
            XCTAssertEqual(function.script.sha1.count, 40)
            XCTAssertTrue(String(decoding: function.script.source, as: UTF8.self).hasPrefix("-- Shared library of the limiter scripts"))
            let library = String(decoding: function.librarySource, as: UTF8.self)
            XCTAssertTrue(library.hasPrefix("#!lua name=sluice_"))
            XCTAssertTrue(library.contains("redis.register_function('\(function.name)'"))
        }
        XCTAssertEqual(Set([scripts.batch.script.sha1, scripts.snapshot.script.sha1, scripts.usage.script.sha1]).count, 3)
        XCTAssertEqual(Set([scripts.batch.name, scripts.snapshot.name, scripts.usage.name]).count, 3)
        // A known vector: SHA-1 of the empty string.
        XCTAssertEqual(RedisScript(name: "empty", source: "").sha1, "da39a3ee5e6b4b0d3255bfef95601890afd80709")
        XCTAssertThrowsError(try RedisScriptFiles.read("missing.lua"))
    }
}
