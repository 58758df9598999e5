import SluiceCore

/// The usage records a node has not flushed to Redis yet: per API key and UTC day, each model's
/// totals, and (with the usage stream on) one entry per settled request. Flushed by
/// ``RedisLimiterStore/flushUsage()`` in one call per key and day instead of writes per request.
struct UsageLedger: Sendable {
    struct Day: Sendable, Hashable {
        var keyID: String
        /// `YYYY-MM-DD` (UTC).
        var day: String
    }

    struct StreamEntry: Sendable, Hashable {
        var requestID: String
        var model: String
        var promptTokens: Int
        var completionTokens: Int
        var reservedPromptTokens: Int
        var reservedOutputTokens: Int
    }

    /// Most (key, day, model) totals and stream entries held between flushes; beyond, records are
    /// dropped and counted (Redis unreachable for long: the limits themselves are unaffected).
    static let maximumTotals = 10_000
    static let maximumEntries = 100_000

    private(set) var totals: [Day: [String: RedisLimiterStore.ModelUsage]] = [:]
    private(set) var entries: [Day: [StreamEntry]] = [:]
    private(set) var totalCount = 0
    private(set) var entryCount = 0
    private(set) var dropped = 0

    var isEmpty: Bool { totals.isEmpty && entries.isEmpty }

    mutating func record(_ day: Day, model: String, usage: RedisLimiterStore.ModelUsage, entry: StreamEntry?) {
        if totals[day]?[model] == nil {
            guard totalCount < Self.maximumTotals else {
                dropped += 1
                return
            }
            totalCount += 1
        }
        totals[day, default: [:]][model, default: RedisLimiterStore.ModelUsage()].add(usage)
        if let entry {
            guard entryCount < Self.maximumEntries else {
                dropped += 1
                return
            }
            entries[day, default: []].append(entry)
            entryCount += 1
        }
    }

    /// Takes everything recorded so far, leaving the ledger empty.
    mutating func take() -> UsageLedger {
        defer { self = UsageLedger(dropped: dropped) }
        return self
    }

    /// Puts back what a failed flush took (its totals add to what was recorded meanwhile).
    mutating func restore(_ day: Day, totals models: [String: RedisLimiterStore.ModelUsage], entries dayEntries: [StreamEntry]) {
        for (model, usage) in models {
            record(day, model: model, usage: usage, entry: nil)
        }
        for entry in dayEntries where entryCount < Self.maximumEntries {
            entries[day, default: []].append(entry)
            entryCount += 1
        }
    }

    init() {}

    private init(dropped: Int) {
        self.dropped = dropped
    }
}

extension RedisLimiterStore.ModelUsage {
    /// Adds `other`'s counts and costs to these.
    public mutating func add(_ other: Self) {
        promptTokens += other.promptTokens
        completionTokens += other.completionTokens
        requests += other.requests
        cost += other.cost
        unknownCostRequests += other.unknownCostRequests
    }
}
