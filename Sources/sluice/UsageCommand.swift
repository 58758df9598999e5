import ArgumentParser
import Foundation
import Logging
import SluiceCore
import SluiceRedis

/// `sluice usage`: recorded usage per key, UTC day and model — requests, tokens and cost — read from
/// Redis, as a table, JSON or CSV; and the plan fees (`pricing.plans[].monthly_fee`) of the keys with a
/// plan, for each calendar month the range touches.
struct UsageCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "usage",
        abstract: "Print usage per key, day and model (requests, tokens, cost), from Redis.",
        discussion: """
            Usage is recorded when each request is settled (prompt tokens counted by Sluice, completion \
            tokens reported by the upstream or counted from what was relayed), with its cost at the \
            config's prices (requests of unknown cost counted apart, never as 0). Days are UTC; the \
            nodes flush their counts every second and Redis keeps them 40 days. Without --key or \
            --team: every key of the config. Keys with a plan (keys[].plan) also get a line per \
            calendar month the range touches with the plan's monthly fee (the whole fee, even for a \
            part of the month); request costs never include it, the totals say which sum does.
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

    /// A plan's monthly fee, charged to one key for one calendar month the report touches.
    struct FeeRow: Equatable {
        var key: String
        /// `YYYY-MM`.
        var month: String
        var plan: String
        var fee: USDAmount
    }

    /// The fee rows of `keyIDs` (in that order) that name a plan, one per calendar month among `days`
    /// (oldest first). A fee is the plan's whole `monthly_fee` for every month the range touches, even
    /// partly: a subscription is billed by the month, not by the day. The plan is the config's now
    /// (the records do not say since when a key has it).
    static func feeRows(keyIDs: [String], keys: [KeyConfig], pricing: Pricing, days: [UTCDay]) -> [FeeRow] {
        var months: [String] = []
        for day in days {
            let month = String(day.text.prefix(7))
            if months.last != month { months.append(month) }
        }
        let plans = Dictionary(keys.map { ($0.id, $0.plan) }, uniquingKeysWith: { first, _ in first })
        return keyIDs.flatMap { keyID -> [FeeRow] in
            guard let name = plans[keyID] ?? nil, let plan = pricing.plans[name] else { return [] }
            return months.map { FeeRow(key: keyID, month: $0, plan: name, fee: plan.monthlyFee) }
        }
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
        let fees = Self.feeRows(keyIDs: keyIDs, keys: loaded.keys, pricing: loaded.pricing, days: days)
        let range = days.count == 1 ? days[0].text : "\(days.first!.text) to \(days.last!.text)"
        switch format {
        case .json: print(Self.json(rows, fees: fees, total: total, from: days.first!.text, to: days.last!.text))
        case .csv: print(Self.csv(rows, fees: fees), terminator: "")
        case .table:
            // Costs of requests only; the plan fees, when there are any, follow in their own table.
            let costsSay = fees.isEmpty ? "" : ", request costs without plan fees"
            if keyIDs.count == 1, days.count == 1 {
                // The layout of one key's day, as before (scripts read its "total" row).
                print("usage of key \(keyIDs[0]) on \(range) (UTC)\(costsSay)")
                Self.printTable(["model", "requests", "prompt tokens", "completion tokens", "cost USD"],
                                rows.map { [$0.model] + Self.cells($0.usage) } + [["total"] + Self.cells(total)])
            } else {
                print("usage of \(team.map { "team \($0)" } ?? "\(keyIDs.count) keys") on \(range) (UTC)\(costsSay)")
                Self.printTable(["key", "day", "model", "requests", "prompt tokens", "completion tokens", "cost USD"],
                                rows.map { [$0.key, $0.day, $0.model] + Self.cells($0.usage) } + [["total", "", ""] + Self.cells(total)])
            }
            if !fees.isEmpty { Self.printFees(fees, total: total) }
        }
    }

    /// The fee table after the usage table, and the total that includes the fees.
    static func printFees(_ fees: [FeeRow], total: RedisLimiterStore.ModelUsage) {
        let feeTotal = fees.reduce(USDAmount.zero) { $0 + $1.fee }
        print("")
        print("plan fees (the plan's monthly_fee for each calendar month the range touches)")
        printTable(["key", "month", "plan", "fee USD"], fees.map { [$0.key, $0.month, $0.plan, $0.fee.description] } + [["total", "", "", feeTotal.description]],
                   numericColumns: 1)
        let unknown = total.unknownCostRequests == 0 ? "" : " (+ \(total.unknownCostRequests) requests of unknown cost)"
        print("total with plan fees: \(total.cost + feeTotal) USD\(unknown)")
    }

    /// The known cost, and how many requests' cost is unknown (left out of it), when any.
    static func costCell(_ u: RedisLimiterStore.ModelUsage) -> String {
        u.unknownCostRequests == 0 ? u.cost.description : "\(u.cost) + \(u.unknownCostRequests) unknown"
    }

    static func cells(_ u: RedisLimiterStore.ModelUsage) -> [String] {
        [String(u.requests), String(u.promptTokens), String(u.completionTokens), costCell(u)]
    }

    /// Right-aligns the last `numericColumns` columns (the counts and the cost).
    static func printTable(_ header: [String], _ rows: [[String]], numericColumns: Int = 4) {
        let textColumns = header.count - numericColumns
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
    /// unknown_cost_requests}],"fees":[{key, month, plan, fee_usd}],"total":{…, cost_usd, fees_usd,
    /// cost_with_fees_usd}}`; dollars as exact decimal numbers. `cost_usd` is always the requests'
    /// known costs, without fees; `cost_with_fees_usd` adds `fees_usd`.
    static func json(_ rows: [Row], fees: [FeeRow], total: RedisLimiterStore.ModelUsage, from: String, to: String) -> String {
        func string(_ text: String) -> String { String(decoding: JSONWriter.stringLiteral(text), as: UTF8.self) }
        func counts(_ u: RedisLimiterStore.ModelUsage) -> String {
            #""requests":\#(u.requests),"prompt_tokens":\#(u.promptTokens),"completion_tokens":\#(u.completionTokens),"cost_usd":\#(u.cost),"unknown_cost_requests":\#(u.unknownCostRequests)"#
        }
        let items = rows.map { #"{"key":\#(string($0.key)),"day":"\#($0.day)","model":\#(string($0.model)),\#(counts($0.usage))}"# }
        let feeItems = fees.map { #"{"key":\#(string($0.key)),"month":"\#($0.month)","plan":\#(string($0.plan)),"fee_usd":\#($0.fee)}"# }
        let feeTotal = fees.reduce(USDAmount.zero) { $0 + $1.fee }
        let totals = counts(total) + #","fees_usd":\#(feeTotal),"cost_with_fees_usd":\#(total.cost + feeTotal)"#
        return #"{"from":"\#(from)","to":"\#(to)","rows":[\#(items.joined(separator: ","))],"fees":[\#(feeItems.joined(separator: ","))],"total":{\#(totals)}}"#
    }

    /// RFC 4180: a header line, then one line per usage row, then one per fee row; fields quoted when
    /// they need it. The last column, `plan`, is empty on usage rows; a fee row has the month
    /// (`YYYY-MM`) in `day`, no model, zero counts, the fee in `cost_usd` and the plan's name in
    /// `plan` — so the sum of `cost_usd` includes the fees, that of the rows with an empty `plan`
    /// does not.
    static func csv(_ rows: [Row], fees: [FeeRow]) -> String {
        func field(_ text: String) -> String {
            text.contains(where: { $0 == "," || $0 == "\"" || $0 == "\n" || $0 == "\r" })
                ? "\"" + text.replacingOccurrences(of: "\"", with: "\"\"") + "\"" : text
        }
        var out = "key,day,model,requests,prompt_tokens,completion_tokens,cost_usd,unknown_cost_requests,plan\r\n"
        for row in rows {
            let u = row.usage
            out += [field(row.key), row.day, field(row.model), String(u.requests), String(u.promptTokens), String(u.completionTokens),
                    u.cost.description, String(u.unknownCostRequests), ""].joined(separator: ",") + "\r\n"
        }
        for fee in fees {
            out += [field(fee.key), fee.month, "", "0", "0", "0", fee.fee.description, "0", field(fee.plan)].joined(separator: ",") + "\r\n"
        }
        return out
    }
}
