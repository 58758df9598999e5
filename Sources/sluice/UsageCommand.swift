import ArgumentParser
import Foundation
import Logging
import SluiceCore
import SluiceRedis

/// `sluice usage`: recorded usage per key, UTC day and model — requests, tokens and cost — read from
/// Redis, as a table, JSON or CSV.
struct UsageCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "usage",
        abstract: "Print usage per key, day and model (requests, tokens, cost), from Redis.",
        discussion: """
            Usage is recorded when each request is settled (prompt tokens counted by Sluice, completion \
            tokens reported by the upstream or counted from what was relayed), with its cost at the \
            config's prices (requests of unknown cost counted apart, never as 0). Days are UTC; the \
            nodes flush their counts every second and Redis keeps them 40 days. Without --key or \
            --team: every key of the config.
            """
    )

    enum Format: String, ExpressibleByArgument, CaseIterable {
        case table, json, csv
    }

    /// The longest range read at once (Redis keeps 40 days of usage).
    static let maximumDays = 366

    @Option(help: "Path to the JSON config file (its redis section says where usage is kept).")
    var config: String

    @Option(help: "Only this key id (as in the config's keys[].id).")
    var key: String?

    @Option(help: "Only the keys of this team (as in the config's teams).")
    var team: String?

    @Option(help: "One UTC day, YYYY-MM-DD (default: today). Not with --from/--to.")
    var day: String?

    @Option(help: "The first UTC day of a range, YYYY-MM-DD (default: --to, else today).")
    var from: String?

    @Option(help: "The last UTC day of a range, YYYY-MM-DD (default: today).")
    var to: String?

    @Option(help: "table (default), json or csv.")
    var format: Format = .table

    func validate() throws {
        // A day that is not on the calendar (2026-13-04) would name usage keys nothing ever wrote:
        // refused here, instead of printing a table of zeros.
        for (name, value) in [("--day", day), ("--from", from), ("--to", to)] {
            if let value, UTCDay(parsing: value) == nil {
                throw ValidationError("\(name) \"\(value.prefix(32))\" is not a day of the calendar; give one as YYYY-MM-DD, e.g. 2026-12-03.")
            }
        }
        if day != nil, from != nil || to != nil {
            throw ValidationError("Give either --day or --from/--to.")
        }
        if key != nil, team != nil {
            throw ValidationError("Give either --key or --team.")
        }
    }

    /// The days asked for, oldest first.
    func days(today: UTCDay) throws -> [UTCDay] {
        if let day { return [UTCDay(parsing: day)!] }
        let last = to.flatMap(UTCDay.init(parsing:)) ?? today
        let first = from.flatMap(UTCDay.init(parsing:)) ?? last
        let start = first.daysSinceEpoch, end = last.daysSinceEpoch
        guard start <= end else { throw ValidationError("--from \(first) is after --to \(last).") }
        guard end - start < Self.maximumDays else { throw ValidationError("At most \(Self.maximumDays) days at once.") }
        return (start...end).map(UTCDay.init(daysSinceEpoch:))
    }

    /// One row: a key's usage of one model on one day.
    struct Row {
        var key: String
        var day: String
        var model: String
        var usage: RedisLimiterStore.ModelUsage
    }

    func run() async throws {
        let loaded = try loadConfigOrExit(config)
        guard let redisConfig = loaded.redis else {
            throw ValidationError("\(config) has no redis section: usage is recorded only in Redis.")
        }
        var keyIDs = loaded.keys.map(\.id)
        if let key {
            guard keyIDs.contains(key) else { throw ValidationError("No key \"\(key.prefix(64))\" in \(config).") }
            keyIDs = [key]
        } else if let team {
            guard loaded.teams[team] != nil else { throw ValidationError("No team \"\(team.prefix(64))\" in \(config).") }
            keyIDs = loaded.keys.filter { $0.team == team }.map(\.id)
        }
        let days = try days(today: UTCDay(Date()))
        var logger = Logger(label: "sluice.usage")
        logger.logLevel = .error
        let client = try RedisClient(config: redisConfig, logger: logger)
        defer { client.shutdown() }
        let store = try RedisLimiterStore(client: client, logger: logger)
        var rows: [Row] = []
        do {
            for keyID in keyIDs {
                for day in days {
                    let usage = try await store.usage(keyID: keyID, day: day.text)
                    rows += usage.keys.sorted().map { Row(key: keyID, day: day.text, model: $0, usage: usage[$0]!) }
                }
            }
        } catch {
            FileHandle.standardError.write(Data("sluice: cannot read usage from \(redisConfig.redactedTarget): \(error)\n".utf8))
            throw ExitCode(1)
        }
        let total = rows.reduce(into: RedisLimiterStore.ModelUsage()) { $0.add($1.usage) }
        let range = days.count == 1 ? days[0].text : "\(days.first!.text) to \(days.last!.text)"
        switch format {
        case .json: print(Self.json(rows, total: total, from: days.first!.text, to: days.last!.text))
        case .csv: print(Self.csv(rows), terminator: "")
        case .table:
            if keyIDs.count == 1, days.count == 1 {
                // The layout of one key's day, as before (scripts read its "total" row).
                print("usage of key \(keyIDs[0]) on \(range) (UTC)")
                Self.printTable(["model", "requests", "prompt tokens", "completion tokens", "cost USD"],
                                rows.map { [$0.model] + Self.cells($0.usage) } + [["total"] + Self.cells(total)])
            } else {
                print("usage of \(team.map { "team \($0)" } ?? "\(keyIDs.count) keys") on \(range) (UTC)")
                Self.printTable(["key", "day", "model", "requests", "prompt tokens", "completion tokens", "cost USD"],
                                rows.map { [$0.key, $0.day, $0.model] + Self.cells($0.usage) } + [["total", "", ""] + Self.cells(total)])
            }
        }
    }

    /// The known cost, and how many requests' cost is unknown (left out of it), when any.
    static func costCell(_ u: RedisLimiterStore.ModelUsage) -> String {
        u.unknownCostRequests == 0 ? u.cost.description : "\(u.cost) + \(u.unknownCostRequests) unknown"
    }

    static func cells(_ u: RedisLimiterStore.ModelUsage) -> [String] {
        [String(u.requests), String(u.promptTokens), String(u.completionTokens), costCell(u)]
    }

    static func printTable(_ header: [String], _ rows: [[String]]) {
        let textColumns = header.count - 4
        let widths = header.indices.map { i in max(header[i].count, rows.map { $0[i].count }.max() ?? 0) }
        func line(_ cells: [String]) -> String {
            cells.enumerated().map { i, cell in
                i < textColumns ? cell.padding(toLength: widths[i], withPad: " ", startingAt: 0)
                                : String(repeating: " ", count: widths[i] - cell.count) + cell
            }.joined(separator: "  ")
        }
        print(line(header))
        for row in rows { print(line(row)) }
    }

    /// `{"from","to","rows":[{key, day, model, requests, prompt_tokens, completion_tokens, cost_usd,
    /// unknown_cost_requests}],"total":{…}}`; `cost_usd` an exact decimal number (the known costs).
    static func json(_ rows: [Row], total: RedisLimiterStore.ModelUsage, from: String, to: String) -> String {
        func string(_ text: String) -> String { String(decoding: JSONWriter.stringLiteral(text), as: UTF8.self) }
        func counts(_ u: RedisLimiterStore.ModelUsage) -> String {
            #""requests":\#(u.requests),"prompt_tokens":\#(u.promptTokens),"completion_tokens":\#(u.completionTokens),"cost_usd":\#(u.cost),"unknown_cost_requests":\#(u.unknownCostRequests)"#
        }
        let items = rows.map { #"{"key":\#(string($0.key)),"day":"\#($0.day)","model":\#(string($0.model)),\#(counts($0.usage))}"# }
        return #"{"from":"\#(from)","to":"\#(to)","rows":[\#(items.joined(separator: ","))],"total":{\#(counts(total))}}"#
    }

    /// RFC 4180: a header line, then one line per row; fields quoted when they need it.
    static func csv(_ rows: [Row]) -> String {
        func field(_ text: String) -> String {
            text.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" || $0 == "\r" })
                ? "\"" + text.replacingOccurrences(of: "\"", with: "\"\"") + "\"" : text
        }
        var out = "key,day,model,requests,prompt_tokens,completion_tokens,cost_usd,unknown_cost_requests\r\n"
        for row in rows {
            let u = row.usage
            out += [field(row.key), row.day, field(row.model), String(u.requests), String(u.promptTokens), String(u.completionTokens),
                    u.cost.description, String(u.unknownCostRequests)].joined(separator: ",") + "\r\n"
        }
        return out
    }
}
