import Foundation
import Logging
import SluiceCore
import Synchronization

/// The shared limiter: every key's limits live in Redis, so any number of Sluice nodes enforce
/// one limit together. Same semantics as `InMemoryLimiterStore` (see `LimiterStore`), plus the
/// daily and monthly token quotas, usage aggregates and a per-request usage stream.
///
/// Each operation is one Lua function (`Scripts/admit.lua`, `settle.lua`, `snapshot.lua` in one
/// library with the shared `gcra.lua`, see `RedisFunction`) run with `FCALL` on Redis' clock
/// (`EVALSHA` of the same code on Redis < 7); see `RedisKeyLayout` for the
/// keys. Errors are `RedisError`s from the client (bounded in time); what to do when Redis is
/// unreachable is the caller's policy.
public final class RedisLimiterStore: LimiterStore {
    /// Lifetimes and sizes of what the scripts write.
    public struct Options: Sendable, Hashable {
        /// How long a concurrency slot is held if its request is never settled and its node stops
        /// renewing it (the node died): the node renews the leases of its requests in flight every
        /// third of this (``RedisLimiterStore/renewLeases()``).
        public static let defaultLeaseTTLMillis = 30_000
        /// How long an unsettled reservation can still be settled; longer than the lease.
        public static let defaultReservationTTLMillis = 900_000
        public static let defaultUsageTTLDays = 40
        public static let defaultUsageStreamMaxLength = 10_000

        public var leaseTTLMillis: Int
        public var reservationTTLMillis: Int
        /// How long the daily usage hashes and the usage stream are kept.
        public var usageTTLDays: Int
        /// Approximate length the usage stream is trimmed to (`XADD MAXLEN ~`).
        public var usageStreamMaxLength: Int

        public init(
            leaseTTLMillis: Int = Options.defaultLeaseTTLMillis,
            reservationTTLMillis: Int = Options.defaultReservationTTLMillis,
            usageTTLDays: Int = Options.defaultUsageTTLDays,
            usageStreamMaxLength: Int = Options.defaultUsageStreamMaxLength
        ) {
            self.leaseTTLMillis = max(leaseTTLMillis, 1_000)
            self.reservationTTLMillis = max(reservationTTLMillis, self.leaseTTLMillis)
            self.usageTTLDays = max(usageTTLDays, 1)
            self.usageStreamMaxLength = max(usageStreamMaxLength, 1)
        }
    }

    /// The three limiter entry points, loaded from the module's `Scripts` resources as one
    /// function library (see ``RedisFunction``).
    public struct Scripts: Sendable {
        public let admit: RedisFunction
        public let settle: RedisFunction
        public let snapshot: RedisFunction
        public let renew: RedisFunction

        public static func load() throws(RedisScriptLoadError) -> Scripts {
            let functions = try RedisScriptFiles.limiterFunctions(named: ["admit", "settle", "snapshot", "renew"])
            return Scripts(admit: functions["admit"]!, settle: functions["settle"]!, snapshot: functions["snapshot"]!, renew: functions["renew"]!)
        }
    }

    /// A model's usage on one day, as recorded by `settle`.
    public struct ModelUsage: Sendable, Hashable {
        public var promptTokens: Int
        public var completionTokens: Int
        public var requests: Int

        public init(promptTokens: Int = 0, completionTokens: Int = 0, requests: Int = 0) {
            self.promptTokens = promptTokens
            self.completionTokens = completionTokens
            self.requests = requests
        }
    }

    /// Model names longer than this are cut in usage records (they come from client requests).
    static let maximumModelNameBytes = 256

    private let client: RedisClient
    private let scripts: Scripts
    private let options: Options
    private let logger: Logger
    /// Redis' clock minus this node's wall clock, in µs, as last seen in an admission's reply
    /// (`Int64.min` before the first): what turns "the caller gives up in 250 ms" into a deadline
    /// on Redis' clock, whatever the skew between the two.
    private let clockOffsetMicros = Atomic<Int64>(.min)
    /// The requests admitted here that hold a concurrency lease, by API key: renewed until settled.
    private let leased = Mutex<[String: Set<String>]>([:])

    /// - Throws: `RedisScriptLoadError` when the Lua resources are missing (a broken install).
    public init(client: RedisClient, options: Options = Options(), logger: Logger = Logger(label: "sluice.redis.limiter")) throws(RedisScriptLoadError) {
        self.client = client
        self.scripts = try Scripts.load()
        self.options = options
        self.logger = logger
    }

    // MARK: LimiterStore

    public func admit(_ request: AdmissionRequest) async throws -> AdmissionDecision {
        let layout = RedisKeyLayout(keyID: request.keyID)
        let limits = request.limits
        var arguments = RedisArguments(capacity: 512)
        layout.appendLimiterKeys(requestID: request.requestID, to: &arguments)
        arguments.append(request.requestID)
        for kind in RateLimitKind.buckets {
            if let limit = limits.bucket(kind) {
                arguments.append(limit.perMinute)
                arguments.append(limit.burst)
                arguments.append(Self.exact(request.cost(kind)))
            } else {
                for _ in 0..<3 { arguments.append(0) }
            }
        }
        arguments.append(limits.maxConcurrentRequests ?? 0)
        arguments.append(limits.tokensPerDay ?? 0)
        arguments.append(limits.tokensPerMonth ?? 0)
        arguments.append(Self.exact(request.cost(.dailyTokens)))
        arguments.append(Self.exact(request.promptTokens))
        arguments.append(Self.exact(request.reservedOutputTokens))
        arguments.append(options.leaseTTLMillis)
        arguments.append(options.reservationTTLMillis)
        arguments.append(Int(try await admissionDeadline()))
        arguments.append(Int(RateLimitDenial.concurrencyRetryAfterSeconds * 1_000_000))
        let call = RedisScriptCall(keyCount: RedisKeyLayout.limiterKeyCount, arguments: arguments)
        let values = try Self.integers(try await client.call(scripts.admit, call), count: 14, script: "admit")
        clockOffsetMicros.store(values[13] - Self.wallClockMicros(), ordering: .relaxed)
        if values[0] == 2 {
            // Ran after its deadline (it waited in a stalled server): it changed nothing.
            throw RedisError.timedOut
        }
        reportCorruption(values[1], keyID: request.keyID, script: "admit")
        let snapshot = Self.snapshot(limits, values[2...5])
        if values[0] == 1 {
            if limits.maxConcurrentRequests != nil {
                leased.withLock { _ = $0[request.keyID, default: []].insert(request.requestID) }
            }
            return .admitted(Reservation(admitting: request), snapshot)
        }
        guard let kind = RateLimitKind(code: Int(values[6])) else {
            throw RedisError.unexpectedReply("admit.lua returned denial kind \(values[6])")
        }
        let denial = RateLimitDenial(
            kind: kind, limit: Int(values[7]), burst: Int(values[8]), used: Int(values[9]), requested: Int(values[10]),
            retryAfterSeconds: Double(values[11]) / 1_000_000, neverFits: values[12] == 1
        )
        return .denied(denial, snapshot)
    }

    /// Requests in flight here that hold a concurrency lease.
    public var leasesInFlight: Int { leased.withLock { $0.values.reduce(0) { $0 + $1.count } } }

    /// Extends the leases of this node's requests in flight by the lease TTL, one call per API key.
    /// A lease therefore outlives its request only if its node stops (died, or cut off from Redis),
    /// and then by one TTL at most. Call it at least every third of the TTL. Returns the leases
    /// renewed; throws the first Redis error (the rest wait for the next call).
    @discardableResult
    public func renewLeases() async throws -> Int {
        let byKey = leased.withLock { $0 }
        var renewed = 0
        for (keyID, requestIDs) in byKey where !requestIDs.isEmpty {
            var arguments = RedisArguments(capacity: 64 + requestIDs.count * 40)
            arguments.append(RedisKeyLayout(keyID: keyID).leases)
            arguments.append(options.leaseTTLMillis)
            for requestID in requestIDs { arguments.append(requestID) }
            let reply = try await client.call(scripts.renew, RedisScriptCall(keyCount: 1, arguments: arguments))
            renewed += Int(reply.integer ?? 0)
        }
        return renewed
    }

    /// How often ``renewLeases()`` must run.
    public var leaseRenewalIntervalMillis: Int { options.leaseTTLMillis / 3 }

    /// When an admission sent now stops mattering, on Redis' clock: the caller stops waiting for its
    /// reply after the command timeout, and answers the request without it (the failure policy). An
    /// admission Redis runs later — it sat in the socket of a frozen or overloaded server — must
    /// not take a concurrency slot or a reservation for a request long answered, so the script
    /// refuses to run past this deadline. The first admission learns the clock offset with `TIME`.
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

    public func settle(_ reservation: Reservation, actualPromptTokens: Int, actualCompletionTokens: Int) async throws -> RateLimitSnapshot? {
        if reservation.limits.maxConcurrentRequests != nil {
            // Not renewed any more, whatever the outcome: a settle that fails is the caller's to retry,
            // and the lease expires within its TTL if it never lands.
            leased.withLock { leased in
                leased[reservation.keyID]?.remove(reservation.requestID)
                if leased[reservation.keyID]?.isEmpty == true { leased[reservation.keyID] = nil }
            }
        }
        let layout = RedisKeyLayout(keyID: reservation.keyID)
        let limits = reservation.limits
        var arguments = RedisArguments(capacity: 512)
        layout.appendLimiterKeys(requestID: reservation.requestID, to: &arguments)
        layout.appendUsageKeys(day: UTCDay(Date()).text, to: &arguments)
        arguments.append(reservation.requestID)
        for kind in RateLimitKind.buckets {
            if let limit = limits.bucket(kind) {
                arguments.append(limit.perMinute)
                arguments.append(limit.burst)
            } else {
                arguments.append(0)
                arguments.append(0)
            }
        }
        arguments.append(Self.exact(actualPromptTokens))
        arguments.append(Self.exact(actualCompletionTokens))
        if reservation.model.utf8.count <= Self.maximumModelNameBytes {
            arguments.append(reservation.model)
        } else {
            arguments.append(String(decoding: reservation.model.utf8.prefix(Self.maximumModelNameBytes), as: UTF8.self))
        }
        arguments.append(options.usageTTLDays * 86_400_000)
        arguments.append(options.usageStreamMaxLength)
        let call = RedisScriptCall(keyCount: RedisKeyLayout.limiterKeyCount + RedisKeyLayout.usageKeyCount, arguments: arguments)
        let values = try Self.integers(try await client.call(scripts.settle, call), count: 6, script: "settle")
        reportCorruption(values[1], keyID: reservation.keyID, script: "settle")
        guard values[0] == 1 else {
            logger.debug("settle found no reservation (already settled, expired or flushed)", metadata: [
                "key_id": "\(reservation.keyID)", "reservation_id": "\(reservation.requestID)",
            ])
            return nil
        }
        return Self.snapshot(limits, values[2...5])
    }

    public func snapshot(keyID: String, limits: ResolvedLimits) async throws -> RateLimitSnapshot {
        guard limits.requests != nil || limits.tokens != nil else { return .empty }
        let layout = RedisKeyLayout(keyID: keyID)
        var arguments: [String] = []
        for limit in [limits.requests, limits.tokens] {
            if let limit { arguments += [String(limit.perMinute), String(limit.burst)] } else { arguments += ["0", "0"] }
        }
        let reply = try await client.call(scripts.snapshot, keys: [layout.requests, layout.tokens], arguments: arguments)
        let values = try Self.integers(reply, count: 5, script: "snapshot")
        reportCorruption(values[0], keyID: keyID, script: "snapshot")
        return Self.snapshot(limits, values[1...4])
    }

    // MARK: usage

    /// The usage recorded for a key on one UTC day, by model (empty when nothing was recorded or
    /// the record expired).
    /// - Parameter day: `YYYY-MM-DD`, e.g. `UTCDay(Date()).text`.
    public func usage(keyID: String, day: String) async throws(RedisError) -> [String: ModelUsage] {
        let reply = try await client.send(["HGETALL", RedisKeyLayout(keyID: keyID).usage(day: day)])
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
            default: continue
            }
        }
        return usage
    }

    // MARK: helpers

    /// Amounts sent to Lua stay below 2^52 (exact as doubles) and non-negative.
    private static func exact(_ amount: Int) -> Int {
        min(max(amount, 0), LimitSet.maximumQuota)
    }

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

    /// The snapshot from a script's four header values (requests remaining, reset µs, tokens
    /// remaining, reset µs).
    private static func snapshot(_ limits: ResolvedLimits, _ values: ArraySlice<Int64>) -> RateLimitSnapshot {
        let start = values.startIndex
        return RateLimitSnapshot(
            limits: limits, requestsRemaining: values[start], requestsResetMicros: values[start + 1],
            tokensRemaining: values[start + 2], tokensResetMicros: values[start + 3]
        )
    }

    private func reportCorruption(_ flag: Int64, keyID: String, script: String) {
        guard flag != 0 else { return }
        logger.warning("corrupt limiter state in Redis was discarded and reset", metadata: ["key_id": "\(keyID)", "script": "\(script)"])
    }
}
