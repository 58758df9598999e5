import NIOCore
import NIOHTTP1
import SluiceCore

/// `GET /v1/sluice/key`: what the calling key (authenticated by itself) may do and what remains of
/// it now, so a client can check before it sends — its limits and its team's, the per-minute buckets'
/// remaining values, and the quotas' and budgets' use in the current UTC day and month.
extension Gateway {
    func keyState(_ request: HTTPRequest, requestID: String, writer: ResponseWriter) async -> RequestOutcome {
        let key: APIKey
        switch authenticate(request.head, keys: settings.keys) {
        case .success(let found): key = found
        case .failure(let error): return await writeError(writer, error, requestID: requestID)
        }
        let snapshot = await snapshotWithBudgets(key) ?? .empty
        let used = (try? await limiter.periodUsage(.key(key.id, team: key.team?.id))) ?? PeriodUsage()
        var body = #"{"object":"sluice.key","id":"# + Self.jsonString(key.id)
        body += #","limits":"# + Self.limitsJSON(key.limits)
        body += #","remaining":"# + Self.remainingJSON(key.limits, snapshot: snapshot, used: used)
        body += #","used":"# + Self.usedJSON(used, limits: key.limits)
        if let team = key.team {
            let teamUsed = (try? await limiter.periodUsage(.team(team.id))) ?? PeriodUsage()
            body += #","team":{"id":"# + Self.jsonString(team.id) + #","limits":"# + Self.limitsJSON(team.limits)
            body += #","remaining":"# + Self.remainingJSON(team.limits, snapshot: nil, used: teamUsed)
            body += #","used":"# + Self.usedJSON(teamUsed, limits: team.limits) + "}"
        } else {
            body += #","team":null"#
        }
        body += "}"
        var headers = HTTPHeaders()
        headers.add(name: "content-type", value: "application/json")
        headers.add(name: "x-request-id", value: requestID)
        for (name, value) in RateLimitHeaders.render(snapshot) { headers.add(name: name, value: value) }
        let buffer = ByteBuffer(string: body)
        return await write(writer, requestID: requestID, keyID: key.id) {
            try await writer.writeResponse(status: .ok, headers: headers, body: buffer)
        }
    }

    /// The key's state for an answer that skips admission (`GET /v1/models`, `GET /v1/sluice/key`),
    /// with the budget headers of the key and of its team, as a proxied answer has them. A store's
    /// snapshot may lack them (the Redis one reads only the buckets): they are then made from what the
    /// key and its team spent in the current UTC day and month (one read each). `nil`: the limiter
    /// could not say.
    func snapshotWithBudgets(_ key: APIKey) async -> RateLimitSnapshot? {
        guard var snapshot = try? await limiter.snapshot(keyID: key.id, team: key.team?.id, limits: key.limits) else { return nil }
        let calendar = BudgetCalendar(seconds: InMemoryLimiterStore.wallClockSeconds())
        func budget(_ limits: ResolvedLimits, _ subject: LimitSubject) async -> BudgetState? {
            guard limits.hasBudget, let used = try? await limiter.periodUsage(subject) else { return nil }
            return BudgetState(limits, spentToday: used.spentToday?.nanos ?? 0, spentThisMonth: used.spentThisMonth?.nanos ?? 0, calendar: calendar)
        }
        if snapshot.budget == nil { snapshot.budget = await budget(key.limits, .key(key.id, team: key.team?.id)) }
        if let team = key.team, snapshot.teamBudget == nil { snapshot.teamBudget = await budget(team.limits, .team(team.id)) }
        return snapshot
    }

    private static func jsonString(_ text: String) -> String {
        String(decoding: JSONWriter.stringLiteral(text), as: UTF8.self)
    }

    private static func number(_ value: Int?) -> String { value.map(String.init) ?? "null" }
    private static func dollars(_ nanos: Int64?) -> String { nanos.map { USDAmount(nanos: $0).description } ?? "null" }
    private static func dollars(_ amount: USDAmount?) -> String { amount.map(\.description) ?? "null" }

    /// The limits under the config's field names (`null`: unlimited); dollars as exact decimals.
    static func limitsJSON(_ limits: ResolvedLimits) -> String {
        let fields: [(String, String)] = [
            ("requests_per_minute", number(limits.requests?.perMinute)), ("requests_burst", number(limits.requests?.burst)),
            ("tokens_per_minute", number(limits.tokens?.perMinute)), ("tokens_burst", number(limits.tokens?.burst)),
            ("input_tokens_per_minute", number(limits.inputTokens?.perMinute)), ("input_tokens_burst", number(limits.inputTokens?.burst)),
            ("output_tokens_per_minute", number(limits.outputTokens?.perMinute)), ("output_tokens_burst", number(limits.outputTokens?.burst)),
            ("max_concurrent_requests", number(limits.maxConcurrentRequests)),
            ("tokens_per_day", number(limits.tokensPerDay)), ("tokens_per_month", number(limits.tokensPerMonth)),
            ("usd_per_day", dollars(limits.usdPerDay)), ("usd_per_month", dollars(limits.usdPerMonth)),
        ]
        return "{" + fields.map { #"""# + $0.0 + #"":"# + $0.1 }.joined(separator: ",") + "}"
    }

    /// What is left now: the per-minute buckets (a key's, from `snapshot`), and of each quota and
    /// budget what its use leaves (`null`: not limited, or not known to this limiter).
    static func remainingJSON(_ limits: ResolvedLimits, snapshot: RateLimitSnapshot?, used: PeriodUsage) -> String {
        func left(_ limit: Int?, _ used: Int?) -> String {
            guard let limit, let used else { return "null" }
            return String(max(limit - used, 0))
        }
        func leftDollars(_ limit: Int64?, _ used: USDAmount?) -> String {
            guard let limit, let used else { return "null" }
            return USDAmount(nanos: max(limit - used.nanos, 0)).description
        }
        let fields: [(String, String)] = [
            ("requests", number(snapshot?.remainingRequests)), ("tokens", number(snapshot?.remainingTokens)),
            ("tokens_today", left(limits.tokensPerDay, used.tokensToday)), ("tokens_this_month", left(limits.tokensPerMonth, used.tokensThisMonth)),
            ("usd_today", leftDollars(limits.usdPerDay, used.spentToday)), ("usd_this_month", leftDollars(limits.usdPerMonth, used.spentThisMonth)),
        ]
        return "{" + fields.map { #"""# + $0.0 + #"":"# + $0.1 }.joined(separator: ",") + "}"
    }

    /// What the quotas and budgets used in the current periods; `null` for a period no quota or
    /// budget counts (nothing keeps it), or that this limiter does not keep.
    static func usedJSON(_ used: PeriodUsage, limits: ResolvedLimits) -> String {
        let fields: [(String, String)] = [
            ("tokens_today", limits.tokensPerDay == nil ? "null" : number(used.tokensToday)),
            ("tokens_this_month", limits.tokensPerMonth == nil ? "null" : number(used.tokensThisMonth)),
            ("usd_today", limits.usdPerDay == nil ? "null" : dollars(used.spentToday)),
            ("usd_this_month", limits.usdPerMonth == nil ? "null" : dollars(used.spentThisMonth)),
        ]
        return "{" + fields.map { #"""# + $0.0 + #"":"# + $0.1 }.joined(separator: ",") + "}"
    }
}
