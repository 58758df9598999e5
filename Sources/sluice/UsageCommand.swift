import ArgumentParser
import Foundation
import Logging
import SluiceCore
import SluiceRedis

/// `sluice usage`: a key's recorded usage per model for one UTC day, read from Redis.
struct UsageCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "usage",
        abstract: "Print a key's usage per model for a day, from Redis.",
        discussion: "Usage is recorded when each request is settled (prompt tokens counted by Sluice, completion tokens reported by the upstream or counted from what was relayed), with its cost at the config's prices (requests of unknown cost counted apart). Days are UTC."
    )

    @Option(help: "Path to the JSON config file (its redis section says where usage is kept).")
    var config: String

    @Option(help: "The key id (as in the config's keys[].id).")
    var key: String

    @Option(help: "The UTC day, YYYY-MM-DD (default: today).")
    var day: String?

    func validate() throws {
        // A day that is not on the calendar (2026-13-04) would name usage keys nothing ever wrote:
        // refused here, instead of printing a table of zeros.
        if let day, UTCDay(parsing: day) == nil {
            throw ValidationError("--day \"\(day)\" is not a day of the calendar; give one as YYYY-MM-DD, e.g. 2026-12-03.")
        }
    }

    func run() async throws {
        let loaded = try loadConfigOrExit(config)
        guard let redisConfig = loaded.redis else {
            throw ValidationError("\(config) has no redis section: usage is recorded only in Redis.")
        }
        guard loaded.keys.contains(where: { $0.id == key }) else {
            throw ValidationError("No key \"\(key)\" in \(config).")
        }
        var logger = Logger(label: "sluice.usage")
        logger.logLevel = .error
        let client = try RedisClient(config: redisConfig, logger: logger)
        defer { client.shutdown() }
        let store = try RedisLimiterStore(client: client, logger: logger)
        let dayText = day ?? UTCDay(Date()).text
        let usage: [String: RedisLimiterStore.ModelUsage]
        do {
            usage = try await store.usage(keyID: key, day: dayText)
        } catch {
            FileHandle.standardError.write(Data("sluice: cannot read usage from \(redisConfig.redactedTarget): \(error)\n".utf8))
            throw ExitCode(1)
        }
        print("usage of key \(key) on \(dayText) (UTC)")
        let header = ["model", "requests", "prompt tokens", "completion tokens", "cost USD"]
        /// The known cost, and how many requests' cost is unknown (left out of it), when any.
        func costCell(_ u: RedisLimiterStore.ModelUsage) -> String {
            u.unknownCostRequests == 0 ? u.cost.description : "\(u.cost) + \(u.unknownCostRequests) unknown"
        }
        var rows = usage.keys.sorted().map { model -> [String] in
            let u = usage[model]!
            return [model, String(u.requests), String(u.promptTokens), String(u.completionTokens), costCell(u)]
        }
        var total = RedisLimiterStore.ModelUsage()
        for u in usage.values {
            total.requests += u.requests
            total.promptTokens += u.promptTokens
            total.completionTokens += u.completionTokens
            total.cost += u.cost
            total.unknownCostRequests += u.unknownCostRequests
        }
        rows.append(["total", String(total.requests), String(total.promptTokens), String(total.completionTokens), costCell(total)])
        let widths = header.indices.map { i in max(header[i].count, rows.map { $0[i].count }.max() ?? 0) }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { i, cell in
                i == 0 ? cell.padding(toLength: widths[i], withPad: " ", startingAt: 0)
                       : String(repeating: " ", count: widths[i] - cell.count) + cell
            }.joined(separator: "  ")
        }
        print(line(header))
        for row in rows { print(line(row)) }
    }
}
