import SluiceCore

/// What a settlement sends to batch.lua: the reservation, what was used, and where the reservation
/// was charged (its quota periods, its concurrency slot's epoch).
struct SettlementValues: Sendable, Hashable {
    var reservedPrompt: Int
    var reservedOutput: Int
    var actualPrompt: Int
    var actualCompletion: Int
    var quotaDay: Int64
    var quotaMonth: Int64
    /// The epoch of the concurrency slot to release (0: the request holds none).
    var slotEpoch: Int64
    /// What the budgets reserved, and what the request cost (nano-dollars; equal: nothing to correct).
    var reservedCost: Int64 = 0
    var actualCost: Int64 = 0
    /// Whether the request counts in the key's tokens of the month (its price depends on them).
    var tracksMonthTokens = false
}

/// Where an admitted request's reservation was charged, kept by its lane until it is settled.
struct HeldReservation: Sendable, Hashable {
    var quotaDay: Int64
    var quotaMonth: Int64
    var slotEpoch: Int64
    /// For a request of a leasable key: the µs it took of each bucket's timeline (from a slice or
    /// from the bucket itself), where its unused reservation goes back while this node holds a
    /// lease.
    var leased: [[BucketSlice.Interval]]? = nil
}

/// A call whose reply never came: batch.lua may or may not have run it. The lane's next call
/// resolves it (batch.lua's lost-call section): if it ran, the admissions it made are released;
/// if not, its settlements are applied then — and it can never run afterwards, because that call
/// moves the node's sequence number past it.
struct LostCall: Sendable {
    var sequence: Int64
    /// Prompt, output and reserved cost of each admission it carried, in order.
    var admissions: [(prompt: Int, output: Int, cost: Int64, tracks: Bool)]
    var settlements: [SettlementValues]
    /// The first call that tried to resolve it (its resolution may itself have been lost).
    var firstResolution: Int64?
    /// Parked concurrency slots it gave back, and their epoch: given back again if it never ran.
    var slotsReturned = 0
    var slotsEpoch: Int64 = 0
}

/// One batch.lua call: its arguments and how to read its reply.
struct LaneCall {
    /// Most admissions and settlements one call carries (bounds the arguments and the script's run).
    static let maximumAdmissions = 128
    static let maximumSettlements = 512

    var sequence: Int64
    var limits: ResolvedLimits
    /// The key's team limits, for a lane of a key in a team (batch.lua's KEYS[2]); nil: no team.
    var teamLimits: ResolvedLimits? = nil
    var admissions: [AdmissionRequest]
    var settlements: [SettlementValues]
    var lost: LostCall?
    /// Units wanted of each bucket's slice (RateLimitKind.buckets order; 0: none), and the least
    /// worth taking (a request's cost).
    var leaseWanted: [Int] = [0, 0, 0, 0]
    var leaseLeast: [Int] = [0, 0, 0, 0]
    /// The slices given back: the slice's end and the start of its unused tail, per bucket.
    var leaseReturned: [(end: Int64, tailStart: Int64)] = Array(repeating: (0, 0), count: 4)
    /// Concurrency slots wanted for the lease; parked slots given back, and their epoch.
    var slotsWanted = 0
    var slotsReturned = 0
    var slotsEpoch: Int64 = 0

    /// - Parameter teamKey: the team's state hash, for a lane of a key in a team (then `teamLimits`
    ///   are sent too, as ARGV 48…61); its first key (`stateKey`) is in the same slot.
    func arguments(stateKey: String, teamKey: String? = nil, keyID: String = "", nodeID: String, deadline: Int64, options: RedisLimiterStore.Options) -> RedisArguments {
        var arguments = RedisArguments(capacity: 256 + admissions.count * 16 + settlements.count * 48)
        arguments.append(stateKey)
        if let teamKey { arguments.append(teamKey) }
        arguments.append(nodeID)
        arguments.append(Int(sequence))
        arguments.append(Int(deadline))
        // Rate and burst of each bucket (0, 0: none), for the key's limits and, with a team, the team's.
        func appendBuckets(of limits: ResolvedLimits) {
            for kind in RateLimitKind.buckets {
                let limit = limits.bucket(kind)
                arguments.append(limit?.perMinute ?? 0)
                arguments.append(limit?.burst ?? 0)
            }
        }
        appendBuckets(of: limits)
        arguments.append(limits.maxConcurrentRequests ?? 0)
        arguments.append(limits.tokensPerDay ?? 0)
        arguments.append(limits.tokensPerMonth ?? 0)
        arguments.append(options.leaseTTLMillis)
        arguments.append(options.stateTTLMillis)
        arguments.append(Int(RateLimitDenial.concurrencyRetryAfterSeconds * 1_000_000))
        arguments.append(Int(lost?.sequence ?? 0))
        arguments.append(Int(lost.map { $0.firstResolution ?? sequence } ?? 0))
        arguments.append(lost?.admissions.count ?? 0)
        arguments.append(lost?.settlements.count ?? 0)
        arguments.append(settlements.count)
        arguments.append(admissions.count)
        for units in leaseWanted { arguments.append(units) }
        for returned in leaseReturned {
            arguments.append(Int(returned.end))
            arguments.append(Int(returned.tailStart))
        }
        arguments.append(slotsWanted)
        arguments.append(slotsReturned)
        arguments.append(Int(slotsEpoch))
        for units in leaseLeast { arguments.append(units) }
        arguments.append(lost?.slotsReturned ?? 0)
        arguments.append(Int(lost?.slotsEpoch ?? 0))
        arguments.append(Int(limits.usdPerDay ?? 0))
        arguments.append(Int(limits.usdPerMonth ?? 0))
        let tracking = admissions.contains(where: \.tracksMonthTokens) || settlements.contains(where: \.tracksMonthTokens)
            || (lost.map { $0.admissions.contains(where: \.tracks) || $0.settlements.contains(where: \.tracksMonthTokens) } ?? false)
        arguments.append(tracking ? 1 : 0)
        if teamKey != nil {
            let team = teamLimits ?? ResolvedLimits()
            appendBuckets(of: team)
            arguments.append(team.maxConcurrentRequests ?? 0)
            arguments.append(team.tokensPerDay ?? 0)
            arguments.append(team.tokensPerMonth ?? 0)
            arguments.append(Int(team.usdPerDay ?? 0))
            arguments.append(Int(team.usdPerMonth ?? 0))
            arguments.append(keyID)
        }
        for admission in lost?.admissions ?? [] {
            arguments.append(Self.exact(admission.prompt))
            arguments.append(Self.exact(admission.output))
            arguments.append(Self.exact(admission.cost))
            arguments.append(admission.tracks ? 1 : 0)
        }
        for settlement in (lost?.settlements ?? []) + settlements {
            arguments.append(Self.exact(settlement.reservedPrompt))
            arguments.append(Self.exact(settlement.reservedOutput))
            arguments.append(Self.exact(settlement.actualPrompt))
            arguments.append(Self.exact(settlement.actualCompletion))
            arguments.append(Int(settlement.quotaDay))
            arguments.append(Int(settlement.quotaMonth))
            arguments.append(Int(settlement.slotEpoch))
            arguments.append(Self.exact(settlement.reservedCost))
            arguments.append(Self.exact(settlement.actualCost))
            arguments.append(settlement.tracksMonthTokens ? 1 : 0)
        }
        for admission in admissions {
            arguments.append(Self.exact(admission.promptTokens))
            arguments.append(Self.exact(admission.reservedOutputTokens))
            arguments.append(Self.exact(admission.needsCostReservation ? admission.reservedCostNanos : 0))
            arguments.append(admission.tracksMonthTokens ? 1 : 0)
        }
        return arguments
    }

    /// Amounts sent to Lua stay below 2^52 (exact as doubles) and non-negative.
    static func exact(_ amount: Int) -> Int {
        min(max(amount, 0), LimitSet.maximumQuota)
    }

    /// A cost sent to Lua: at most 2^52 + 1 nano-dollars, more than any budget holds (so a larger
    /// reservation still never fits), exact as a double.
    static func exact(_ amount: Int64) -> Int {
        Int(min(max(amount, 0), LimitSet.maximumBudgetNanos + 1))
    }
}

/// batch.lua's reply.
struct LaneReply: Sendable {
    enum Status: Int64, Sendable {
        case applied = 1
        /// It reached Redis after its deadline: nothing changed.
        case pastDeadline = 2
        /// Its sequence number was already used: nothing changed.
        case stale = 3
    }

    struct Admission: Sendable {
        var admitted: Bool
        var denial: RateLimitDenial?
        var headerValues: ArraySlice<Int64>
        /// Where its charge starts in the tokens, input and output buckets (0: not configured).
        var chargeStarts: [Int64]
        /// The key's tokens of the month before it (-1: not tracked).
        var monthTokensBefore: Int64 = -1
    }

    var status: Status
    var corrupt: Bool
    var redisMicros: Int64
    var slotEpoch: Int64 = 0
    var lostResolution: Int64 = -1
    var quotaDay: Int64 = -1
    var quotaMonth: Int64 = -1
    var headerValues: ArraySlice<Int64> = []
    /// (start, end) of each bucket's new slice; (0, 0): none.
    var slices: [(start: Int64, end: Int64)] = []
    /// Concurrency slots granted to park on this node.
    var slotsGranted = 0
    var admissions: [Admission] = []
    /// The budgets' spend after the call (today, this month; nano-dollars).
    var budgetSpent: (day: Int64, month: Int64) = (0, 0)
    /// The team's budgets' spend after the call, for a lane of a key in a team.
    var teamBudgetSpent: (day: Int64, month: Int64) = (0, 0)

    static let headerCount = 20
    static let perAdmission = 16

    /// - Parameter team: the lane's team: denial kinds 11…19 are its limits'.
    init(_ reply: RedisReply, admissions count: Int, team: String? = nil) throws(RedisError) {
        guard let elements = reply.array, elements.count >= 3 else { throw .unexpectedReply("batch.lua returned \(reply)") }
        var values: [Int64] = []
        values.reserveCapacity(elements.count)
        for element in elements {
            guard case .integer(let value) = element else { throw .unexpectedReply("batch.lua returned \(reply)") }
            values.append(value)
        }
        guard let status = Status(rawValue: values[0]) else { throw .unexpectedReply("batch.lua status \(values[0])") }
        self.status = status
        corrupt = values[1] != 0
        redisMicros = values[2]
        guard status == .applied else { return }
        let trailing = team == nil ? 2 : 4
        guard values.count == Self.headerCount + count * Self.perAdmission + trailing else {
            throw .unexpectedReply("batch.lua returned \(values.count) values for \(count) admissions")
        }
        let spentAt = Self.headerCount + count * Self.perAdmission
        budgetSpent = (values[spentAt], values[spentAt + 1])
        if team != nil { teamBudgetSpent = (values[spentAt + 2], values[spentAt + 3]) }
        slotEpoch = values[3]
        lostResolution = values[4]
        quotaDay = values[5]
        quotaMonth = values[6]
        headerValues = values[7..<11]
        slices = (0..<4).map { (values[11 + $0 * 2], values[12 + $0 * 2]) }
        slotsGranted = Int(values[19])
        for index in 0..<count {
            let base = Self.headerCount + index * Self.perAdmission
            let admitted = values[base] == 1
            var denial: RateLimitDenial?
            if !admitted {
                let code = Int(values[base + 1])
                let byTeam = code > 10 && team != nil
                guard let kind = RateLimitKind(code: byTeam ? code - 10 : code) else {
                    throw .unexpectedReply("batch.lua returned denial kind \(values[base + 1])")
                }
                denial = RateLimitDenial(
                    kind: kind, limit: Int(values[base + 2]), burst: Int(values[base + 3]), used: Int(values[base + 4]),
                    requested: Int(values[base + 5]), retryAfterSeconds: Double(values[base + 6]) / 1_000_000,
                    neverFits: values[base + 7] == 1, team: byTeam ? team : nil
                )
            }
            admissions.append(Admission(
                admitted: admitted, denial: denial, headerValues: values[(base + 8)..<(base + 12)],
                chargeStarts: Array(values[(base + 12)..<(base + 15)]), monthTokensBefore: values[base + 15]
            ))
        }
    }
}
