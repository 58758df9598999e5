import Foundation
import Logging
import SluiceCore
import Synchronization

/// The shared limiter: every key's limits live in Redis, so any number of Sluice nodes enforce
/// one limit together. Same semantics as `InMemoryLimiterStore` (see `LimiterStore`), plus the
/// daily and monthly token quotas, usage aggregates and an optional per-request usage stream.
///
/// Each key's whole limiter state is one hash (``RedisKeyLayout``), changed only by batch.lua, in
/// one function library with the shared `gcra.lua` (see `RedisFunction`), on Redis' clock. Each
/// key's admissions and settlements made on this node go through its ``KeyLane``: batched, at most
/// one call in flight per key, and — for hot keys (``LeaseMode``) — admitted locally against slices
/// of the buckets the lane holds. Usage records are counted here and flushed by ``maintain()``.
/// Errors are `RedisError`s from the client (bounded in time); what to do when Redis is
/// unreachable is the caller's policy.
public final class RedisLimiterStore: LimiterStore {
    /// Lifetimes, sizes and delays.
    public struct Options: Sendable, Hashable {
        /// How long a concurrency slot is held if its request is never settled and its node stops
        /// renewing it (the node died): ``maintain()`` renews the slots of requests in flight every
        /// third of this.
        public static let defaultLeaseTTLMillis = 30_000
        /// How long a key's state hash outlives its last call at least (and so how long a node's
        /// sequence number is remembered: a lost call is resolved well within it).
        public static let defaultStateTTLMillis = 900_000
        public static let defaultUsageTTLDays = 40
        public static let defaultUsageStreamMaxLength = 10_000

        public var leaseTTLMillis: Int
        public var stateTTLMillis: Int
        /// How long the daily usage hashes and the usage stream are kept.
        public var usageTTLDays: Int
        /// Approximate length the usage stream is trimmed to (`XADD MAXLEN ~`).
        public var usageStreamMaxLength: Int
        /// Whether each settled request is also appended to the key's usage stream (one `XADD`
        /// per request, at the usage flush); the daily aggregates are always kept.
        public var usageStream: Bool
        /// How long a settlement waits for an admission of its key to ride with.
        public var settleDelayMicros: Int64
        /// A lease no request used for this long is given back.
        public var leaseIdleMicros: Int64
        /// How often a lane retries what Redis did not take.
        public var retryIntervalMicros: Int64

        public init(
            leaseTTLMillis: Int = Options.defaultLeaseTTLMillis,
            stateTTLMillis: Int = Options.defaultStateTTLMillis,
            usageTTLDays: Int = Options.defaultUsageTTLDays,
            usageStreamMaxLength: Int = Options.defaultUsageStreamMaxLength,
            usageStream: Bool = false,
            settleDelayMicros: Int64 = 2_000,
            leaseIdleMicros: Int64 = 200_000,
            retryIntervalMicros: Int64 = 1_000_000
        ) {
            self.leaseTTLMillis = max(leaseTTLMillis, 1_000)
            self.stateTTLMillis = max(stateTTLMillis, self.leaseTTLMillis)
            self.usageTTLDays = max(usageTTLDays, 1)
            self.usageStreamMaxLength = max(usageStreamMaxLength, 1)
            self.usageStream = usageStream
            self.settleDelayMicros = max(settleDelayMicros, 0)
            self.leaseIdleMicros = max(leaseIdleMicros, 1_000)
            self.retryIntervalMicros = max(retryIntervalMicros, 1_000)
        }
    }

    /// The limiter's entry points, loaded from the module's `Scripts` resources as one function
    /// library (see ``RedisFunction``).
    public struct Scripts: Sendable {
        public let batch: RedisFunction
        public let snapshot: RedisFunction
        public let usage: RedisFunction

        public static func load() throws(RedisScriptLoadError) -> Scripts {
            let functions = try RedisScriptFiles.limiterFunctions(named: ["batch", "snapshot", "usage"])
            return Scripts(batch: functions["batch"]!, snapshot: functions["snapshot"]!, usage: functions["usage"]!)
        }
    }

    /// A model's usage on one day, as recorded by `settle`.
    public struct ModelUsage: Sendable, Hashable {
        public var promptTokens: Int
        public var completionTokens: Int
        public var requests: Int
        /// The known costs of those requests, summed exactly (nano-dollars).
        public var cost: USDAmount
        /// Those of them whose cost was unknown (no price): `cost` leaves them out.
        public var unknownCostRequests: Int

        public init(promptTokens: Int = 0, completionTokens: Int = 0, requests: Int = 0, cost: USDAmount = .zero, unknownCostRequests: Int = 0) {
            self.promptTokens = promptTokens
            self.completionTokens = completionTokens
            self.requests = requests
            self.cost = cost
            self.unknownCostRequests = unknownCostRequests
        }
    }

    /// Model names longer than this are cut in usage records (they come from client requests).
    static let maximumModelNameBytes = 256

    public let nodeID: String
    private let client: RedisClient
    private let scripts: Scripts
    private let options: Options
    private let logger: Logger
    /// Redis' clock minus this node's wall clock, in µs, as last seen in a reply (`Int64.min`
    /// before the first): what turns "the caller gives up in 250 ms" into a deadline on Redis'
    /// clock, whatever the skew between the two.
    private let clockOffsetMicros = Atomic<Int64>(.min)
    /// The last call sequence number used (see ``KeyLane/Context/nextSequence``).
    private let sequence = Atomic<Int64>(0)
    private let lanes = Mutex<[String: KeyLane]>([:])
    private let ledger = Mutex(UsageLedger())
    private let currentDay = Mutex((days: -1, text: ""))
    /// What the lanes did (for the metrics).
    public let statistics: LimiterStatistics

    /// - Parameter nodeID: names this node's entries in the keys' state (random by default; two
    ///   live processes must never share one).
    /// - Throws: `RedisScriptLoadError` when the Lua resources are missing (a broken install).
    public init(
        client: RedisClient, options: Options = Options(), nodeID: String? = nil,
        statistics: LimiterStatistics = LimiterStatistics(),
        logger: Logger = Logger(label: "sluice.redis.limiter")
    ) throws(RedisScriptLoadError) {
        self.client = client
        self.statistics = statistics
        self.scripts = try Scripts.load()
        self.options = options
        self.logger = logger
        var generator = SystemRandomNumberGenerator()
        self.nodeID = nodeID ?? "node-" + String(generator.next(), radix: 36)
    }

    /// The lanes' names: a key in a team has its lane per team (its state lives by the team's).
    private static func laneName(_ keyID: String, team: String?) -> String {
        team.map { keyID + "\u{1}" + $0 } ?? keyID
    }

    private func lane(_ keyID: String, team: String? = nil) -> KeyLane {
        let name = Self.laneName(keyID, team: team)
        return lanes.withLock { lanes in
            if let lane = lanes[name] { return lane }
            let context = KeyLane.Context(
                client: client, function: scripts.batch, options: options, nodeID: nodeID, logger: logger,
                deadline: { [weak self] in
                    guard let self else { throw RedisError.shutDown }
                    return try await self.admissionDeadline()
                },
                observeRedisClock: { [weak self] redisMicros in
                    self?.clockOffsetMicros.store(redisMicros - Self.wallClockMicros(), ordering: .relaxed)
                },
                statistics: statistics,
                nextSequence: { [weak self] in (self?.sequence.add(1, ordering: .relaxed).newValue) ?? .max }
            )
            let lane = KeyLane(keyID: keyID, team: team, context: context)
            lanes[name] = lane
            return lane
        }
    }

    // MARK: LimiterStore

    public func admit(_ request: AdmissionRequest) async throws -> AdmissionDecision {
        try await lane(request.keyID, team: request.team?.id).admit(request)
    }

    /// Settles through the key's lane: carried by the next call for the key, or sent after
    /// `settleDelayMicros`. Returns the key's state afterwards; nil when the reservation is not
    /// held here (already settled, or its admission failed) or when Redis did not take it yet —
    /// then the lane keeps it and retries: it is never lost and never applied twice.
    public func settle(_ reservation: Reservation, actualPromptTokens: Int, actualCompletionTokens: Int) async throws -> RateLimitSnapshot? {
        let lane = lane(reservation.keyID, team: reservation.team?.id)
        guard let held = lane.release(reservation) else {
            logger.debug("settle found no reservation (already settled, or its admission failed)", metadata: [
                "key_id": "\(reservation.keyID)", "reservation_id": "\(reservation.requestID)",
            ])
            return nil
        }
        let prompt = max(actualPromptTokens, 0)
        let completion = max(actualCompletionTokens, 0)
        recordUsage(reservation, promptTokens: prompt, completionTokens: completion)
        if reservation.limits.isUnlimited, reservation.team?.limits.isUnlimited ?? true, reservation.monthTokensBefore == nil { return .empty }
        if let taken = held.leased {
            // Against this node's lease when it holds one: only usage beyond it goes to Redis.
            switch lane.settleAgainstLease(taken, reservation, slotEpoch: held.slotEpoch, prompt: prompt, completion: completion) {
            case .settled(let snapshot): return snapshot
            case .charge(let extra): return await lane.settle(extra, limits: reservation.limits)
            case .noLease: break
            }
        }
        var values = SettlementValues(
            reservedPrompt: reservation.promptTokens, reservedOutput: reservation.reservedOutputTokens,
            actualPrompt: prompt, actualCompletion: completion,
            quotaDay: held.quotaDay, quotaMonth: held.quotaMonth, slotEpoch: held.slotEpoch
        )
        // The budgets: corrected from the reservation to the request's cost (unknown: kept as reserved).
        values.reservedCost = reservation.reservedCostNanos
        values.actualCost = reservation.settledCostNanos
        values.tracksMonthTokens = reservation.monthTokensBefore != nil
        return await lane.settle(values, limits: reservation.limits, teamLimits: reservation.team?.limits)
    }

    /// A key's quota and budget counters of the current UTC day and month (node's wall clock), read
    /// from its state hash (one `HMGET`, charging nothing). A key's counters are read from its
    /// state outside a team (`sluice:{k}:state`); a team's from the team's state.
    public func periodUsage(_ subject: LimitSubject) async throws -> PeriodUsage {
        let key: String
        switch subject {
        case .key(let keyID, let team): key = RedisKeyLayout(keyID: keyID, team: team).state
        case .team(let team): key = RedisKeyLayout.teamState(team)
        }
        let reply = try await client.send(["HMGET", key, "qd", "qdu", "qm", "qmu", "bd", "bdu", "bm", "bmu"], routedBy: key)
        guard let elements = reply.array, elements.count == 8 else { throw RedisError.unexpectedReply("HMGET of a state hash: \(reply)") }
        let values = elements.map { $0.string.flatMap { Int64($0) } }
        let calendar = BudgetCalendar(seconds: Int64(Self.wallClockMicros() / 1_000_000))
        func inPeriod(_ period: Int64?, _ value: Int64?, _ current: Int64) -> Int64 { period == current ? (value ?? 0) : 0 }
        return PeriodUsage(
            tokensToday: Int(inPeriod(values[0], values[1], calendar.day)),
            tokensThisMonth: Int(inPeriod(values[2], values[3], calendar.month)),
            spentToday: USDAmount(nanos: inPeriod(values[4], values[5], calendar.day)),
            spentThisMonth: USDAmount(nanos: inPeriod(values[6], values[7], calendar.month))
        )
    }

    /// The key's slot in a Redis Cluster (its state lives on that slot's primary; a key in a team
    /// on its team's), else 0.
    public func failureDomain(keyID: String, team: String?) -> Int {
        // One Redis is one domain: no key name built on every admission and settlement.
        guard client.isCluster else { return 0 }
        return client.failureDomain(ofKey: RedisKeyLayout(keyID: keyID, team: team).state)
    }

    public func snapshot(keyID: String, team: String?, limits: ResolvedLimits) async throws -> RateLimitSnapshot {
        guard limits.requests != nil || limits.tokens != nil else { return .empty }
        var arguments: [String] = []
        for limit in [limits.requests, limits.tokens] {
            if let limit { arguments += [String(limit.perMinute), String(limit.burst)] } else { arguments += ["0", "0"] }
        }
        let reply = try await client.call(scripts.snapshot, keys: [RedisKeyLayout(keyID: keyID, team: team).state], arguments: arguments)
        let values = try Self.integers(reply, count: 5, script: "snapshot")
        if values[0] != 0 {
            logger.warning("corrupt limiter state in Redis was discarded and reset", metadata: ["key_id": "\(keyID)", "script": "snapshot"])
        }
        // Capacity this node holds in a lease is still this key's to use.
        if let lane = lanes.withLock({ $0[Self.laneName(keyID, team: team)] }) { return lane.snapshot(limits, redisValues: values[1...4]) }
        return RateLimitSnapshot(
            limits: limits, requestsRemaining: values[1], requestsResetMicros: values[2],
            tokensRemaining: values[3], tokensResetMicros: values[4]
        )
    }

    // MARK: upkeep

    /// Concurrency slots held by requests running here.
    public var leasesInFlight: Int { lanes.withLock { $0.values.reduce(0) { $0 + $1.slotsHeld } } }

    /// Lanes alive (one per key used lately).
    var laneCount: Int { lanes.withLock { $0.count } }

    /// Settlements Redis has not taken yet: queued, or in a call whose reply was lost.
    public var owedSettlements: Int { lanes.withLock { $0.values.reduce(0) { $0 + $1.owedSettlements } } }

    /// A lane that held nothing for this long is forgotten (it is created again when needed).
    static let laneIdleMicros: Int64 = 60_000_000

    /// How often ``maintain()`` should run.
    public static let maintenanceIntervalMillis = 100

    /// Periodic upkeep of every lane: leases no request used lately are given back, the slots of
    /// requests still running renewed (every third of the lease TTL), calls that failed retried;
    /// lanes that hold nothing are forgotten. Run it every ``maintenanceIntervalMillis``.
    public func maintain() {
        maintain(now: MonotonicClock.microseconds())
    }

    func maintain(now: Int64) {
        // The lanes' own locks are taken outside the store's, which every admission takes.
        let current = lanes.withLock { Array($0.values) }
        var idle: [KeyLane] = []
        for lane in current {
            if lane.isIdle(since: now - Self.laneIdleMicros) { idle.append(lane) } else { lane.maintain(now: now) }
        }
        guard !idle.isEmpty else { return }
        lanes.withLock { lanes in
            // Checked again under the store's lock: no admission can reach a lane once it is gone.
            for lane in idle where lanes[Self.laneName(lane.keyID, team: lane.teamID)] === lane && lane.isIdle(since: now - Self.laneIdleMicros) {
                lanes[Self.laneName(lane.keyID, team: lane.teamID)] = nil
            }
        }
    }

    /// At shutdown: sends every settlement still owed and waits until Redis took them, or until
    /// `timeout` (Redis unreachable: the slots they hold expire by themselves). Returns the
    /// settlements still owed.
    public func finishOutstanding(timeout: Duration = .seconds(2)) async -> Int {
        let deadline = ContinuousClock.now + timeout
        let current = lanes.withLock { Array($0.values) }
        for lane in current { lane.flushNow() }
        while ContinuousClock.now < deadline, current.contains(where: \.isBusy) {
            try? await Task.sleep(for: .milliseconds(5))
            for lane in current { lane.flushNow() }
        }
        return owedSettlements
    }

    /// When an admission sent now stops mattering, on Redis' clock: the caller stops waiting for its
    /// reply after the command timeout, and answers the request without it (the failure policy). A
    /// call Redis runs later — it sat in the socket of a frozen or overloaded server — must not
    /// take a concurrency slot for a request long answered, so batch.lua refuses to run past this
    /// deadline. The first call learns the clock offset with `TIME`.
    func admissionDeadline() async throws -> Int64 {
        var offset = clockOffsetMicros.load(ordering: .relaxed)
        if offset == .min {
            let sent = Self.wallClockMicros()
            let reply = try await client.send(["TIME"])
            guard let parts = reply.array, parts.count == 2,
                  let seconds = parts[0].integer, let micros = parts[1].integer
            else { throw RedisError.unexpectedReply("TIME returned \(reply)") }
            offset = seconds * 1_000_000 + micros - (sent + Self.wallClockMicros()) / 2
            clockOffsetMicros.store(offset, ordering: .relaxed)
        }
        return Self.wallClockMicros() + offset + Int64(client.options.commandTimeoutMillis) * 1_000
    }

    static func wallClockMicros() -> Int64 {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Int64(now.tv_sec) * 1_000_000 + Int64(now.tv_nsec) / 1_000
    }

    // MARK: usage

    private func recordUsage(_ reservation: Reservation, promptTokens: Int, completionTokens: Int) {
        let model = reservation.model.utf8.count <= Self.maximumModelNameBytes
            ? reservation.model
            : String(decoding: reservation.model.utf8.prefix(Self.maximumModelNameBytes), as: UTF8.self)
        let day = UsageLedger.Day(keyID: reservation.keyID, day: today())
        let entry = options.usageStream ? UsageLedger.StreamEntry(
            requestID: reservation.requestID, model: model, promptTokens: promptTokens, completionTokens: completionTokens,
            reservedPromptTokens: reservation.promptTokens, reservedOutputTokens: reservation.reservedOutputTokens
        ) : nil
        var usage = ModelUsage(promptTokens: promptTokens, completionTokens: completionTokens, requests: 1)
        switch reservation.settledCost {
        case .known(let amount)?: usage.cost = amount
        case .unknown?: usage.unknownCostRequests = 1
        case nil: break
        }
        ledger.withLock { $0.record(day, model: model, usage: usage, entry: entry) }
    }

    /// Today's `YYYY-MM-DD` (UTC), formatted once a day rather than once per settlement.
    private func today() -> String {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        let days = Int(now.tv_sec) / 86_400
        return currentDay.withLock { current in
            if current.days != days { current = (days, UTCDay(daysSinceEpoch: days).text) }
            return current.text
        }
    }

    /// Usage records dropped because Redis did not take them for too long.
    public var droppedUsageRecords: Int { ledger.withLock { $0.dropped } }

    /// Writes the usage recorded since the last flush: one call per key and day (`HINCRBY` per
    /// model and field, `XADD` per request when the stream is on). What Redis does not take is kept
    /// for the next flush. Returns the calls that failed (0: all flushed).
    @discardableResult
    public func flushUsage() async -> Int {
        let taken = ledger.withLock { $0.take() }
        guard !taken.isEmpty else { return 0 }
        var failed = 0
        for day in Set(taken.totals.keys).union(taken.entries.keys) {
            let totals = taken.totals[day] ?? [:]
            let entries = taken.entries[day] ?? []
            let layout = RedisKeyLayout(keyID: day.keyID)
            var arguments = RedisArguments(capacity: 256 + totals.count * 64 + entries.count * 128)
            arguments.append(layout.usage(day: day.day))
            arguments.append(layout.usageStream)
            arguments.append(options.usageTTLDays * 86_400_000)
            arguments.append(options.usageStreamMaxLength)
            arguments.append(entries.count)
            arguments.append(totals.count)
            for (model, usage) in totals {
                arguments.append(model)
                arguments.append(usage.promptTokens)
                arguments.append(usage.completionTokens)
                arguments.append(usage.requests)
                arguments.append(Int(usage.cost.nanos))
                arguments.append(usage.unknownCostRequests)
            }
            for entry in entries {
                arguments.append(entry.requestID)
                arguments.append(entry.model)
                arguments.append(entry.promptTokens)
                arguments.append(entry.completionTokens)
                arguments.append(entry.reservedPromptTokens)
                arguments.append(entry.reservedOutputTokens)
            }
            do {
                let reply = try await client.call(scripts.usage, RedisScriptCall(keyCount: 2, arguments: arguments, routingKey: layout.usageStream))
                if reply.integer == 1 {
                    logger.warning("corrupt usage record in Redis was replaced", metadata: ["key_id": "\(day.keyID)"])
                }
            } catch {
                failed += 1
                ledger.withLock { $0.restore(day, totals: totals, entries: entries) }
            }
        }
        return failed
    }

    /// The usage recorded for a key on one UTC day, by model (empty when nothing was recorded or
    /// the record expired).
    /// - Parameter day: `YYYY-MM-DD`, e.g. `UTCDay(Date()).text`.
    public func usage(keyID: String, day: String) async throws(RedisError) -> [String: ModelUsage] {
        let key = RedisKeyLayout(keyID: keyID).usage(day: day)
        let reply = try await client.send(["HGETALL", key], routedBy: key)
        guard let elements = reply.array, elements.count % 2 == 0 else {
            throw .unexpectedReply("HGETALL of a usage hash: \(reply)")
        }
        var usage: [String: ModelUsage] = [:]
        for index in stride(from: 0, to: elements.count, by: 2) {
            guard let field = elements[index].string, let value = elements[index + 1].integer,
                  let separator = field.lastIndex(of: ":") else { continue }
            let model = String(field[..<separator])
            let amount = Int(clamping: value)
            switch field[field.index(after: separator)...] {
            case "prompt": usage[model, default: ModelUsage()].promptTokens = amount
            case "completion": usage[model, default: ModelUsage()].completionTokens = amount
            case "requests": usage[model, default: ModelUsage()].requests = amount
            case "cost_nanos": usage[model, default: ModelUsage()].cost = USDAmount(nanos: value)
            case "cost_unknown": usage[model, default: ModelUsage()].unknownCostRequests = amount
            default: continue
            }
        }
        return usage
    }

    // MARK: helpers

    private static func integers(_ reply: RedisReply, count: Int, script: String) throws(RedisError) -> [Int64] {
        guard let elements = reply.array, elements.count == count else {
            throw .unexpectedReply("\(script).lua returned \(reply)")
        }
        var values: [Int64] = []
        values.reserveCapacity(count)
        for element in elements {
            guard case .integer(let value) = element else { throw .unexpectedReply("\(script).lua returned \(reply)") }
            values.append(value)
        }
        return values
    }
}
