import Foundation
import SluiceTokenizer

/// Something `sluice check-config` reports about a config that loads: an error (the node would
/// not start, or not as configured) or a warning (it starts, but part of the file has no effect or
/// is surely a mistake).
public struct ConfigFinding: Sendable, Hashable, CustomStringConvertible {
    public enum Severity: String, Sendable, Hashable {
        case error
        case warning
    }

    public let severity: Severity
    public let problem: ConfigProblem

    public init(_ severity: Severity, _ path: String, _ message: String) {
        self.severity = severity
        self.problem = ConfigProblem(path: path, message: message)
    }

    /// `warning: $.path: message`, the form `check-config` prints.
    public var description: String { "\(severity.rawValue): \(problem)" }
}

/// The checks `check-config` runs beyond the format, which the loader does not: they depend on the
/// machine (the tokenizer files), or they are warnings, which must not make a reload refuse a file.
extension SluiceConfig {
    /// A burst more than this many times its per-minute value is reported: a bucket that holds more
    /// than ten minutes of its rate is surely a typo (a burst is normally at most the rate).
    public static let suspiciousBurstFactor = 10

    /// Every finding, in the order of the sections: tokenizer, upstreams, tiers, keys, redis, telemetry.
    /// `environment` tells whether `SLUICE_TOKENIZER_DIR` chose the tokenizer directory.
    public func deploymentFindings(environment: [String: String] = ProcessInfo.processInfo.environment) -> [ConfigFinding] {
        tokenizerFindings(environment: environment) + unreachableUpstreamEntries() + unpricedModels() + teamPlanFindings() + quotaAndBurstFindings() + redisTLSFindings() + telemetryFindings()
    }

    // MARK: tokenizer

    /// Errors for a tokenizer directory or rank file that is missing: `serve` would exit at start.
    /// (Whether a file present is the right one, its SHA-256, is checked when `serve` loads it.)
    func tokenizerFindings(environment: [String: String]) -> [ConfigFinding] {
        let directory = tokenizer.directory
        let path = "$.tokenizer.directory"
        let origin = (environment[TokenizerConfig.directoryEnvironmentVariable].map { !$0.isEmpty } ?? false)
            ? " (from \(TokenizerConfig.directoryEnvironmentVariable))" : ""
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: directory, isDirectory: &isDirectory), isDirectory.boolValue else {
            return [ConfigFinding(.error, path, "directory \"\(directory)\"\(origin) does not exist: serve would not start (scripts/setup fetches the rank files into .cache/tokenizer)")]
        }
        var findings: [ConfigFinding] = []
        for name in EncodingName.allCases {
            let file = (directory as NSString).appendingPathComponent(name.fileName)
            if !FileManager.default.isReadableFile(atPath: file) {
                findings.append(ConfigFinding(.error, path, "rank file \(name.fileName) is missing or unreadable in \"\(directory)\"\(origin): serve would not start"))
            }
        }
        return findings
    }

    // MARK: upstreams

    /// Warnings for parts of the upstreams and routing that no request can reach or that defeat
    /// their purpose: a `model_map` entry for a model its upstream does not serve; fallbacks for a
    /// model no upstream serves; two deployments that are the same endpoint with the same key (each
    /// model served by both spreads over them, but a retry on "the other one" goes to the same place,
    /// and neither is spared when it fails).
    func unreachableUpstreamEntries() -> [ConfigFinding] {
        var findings: [ConfigFinding] = []
        for (index, upstream) in upstreams.enumerated() {
            for name in upstream.modelMap.keys.sorted() where !upstream.serves(model: name) {
                findings.append(ConfigFinding(.warning, ConfigWalker.member("$.upstreams[\(index)].model_map", name), "never used: upstream \"\(upstream.name)\" does not serve \"\(name)\" (its \"models\" do not match it)"))
            }
            if let earlier = upstreams[..<index].firstIndex(where: { $0.isSameEndpoint(as: upstream) }) {
                let shared = upstream.models.filter { later in upstreams[earlier].models.contains { Self.covers($0, later) || Self.covers(later, $0) } }
                if !shared.isEmpty {
                    findings.append(ConfigFinding(.warning, "$.upstreams[\(index)]", "the same endpoint and key as $.upstreams[\(earlier)] (\"\(upstreams[earlier].name)\"), both serving \(shared.map { "\"\($0)\"" }.joined(separator: ", ")): requests spread over the two, but a retry or fallback between them reaches the same provider deployment"))
                }
            }
        }
        for (field, table) in [("fallbacks", routing.fallbacks), ("context_window_fallbacks", routing.contextWindowFallbacks)] {
            for model in table.keys.sorted() where !upstreams.contains(where: { $0.serves(model: model) }) {
                findings.append(ConfigFinding(.warning, ConfigWalker.member("$.routing.\(field)", model), "never used: no upstream serves \"\(model)\", so no request for it is admitted"))
            }
        }
        return findings
    }

    /// Whether every model `later` matches is matched by `earlier`.
    static func covers(_ earlier: ModelMatcher, _ later: ModelMatcher) -> Bool {
        switch (earlier, later) {
        case (.exact(let a), .exact(let b)): a == b
        case (.prefix(let stem), .exact(let name)): name.hasPrefix(stem)
        case (.prefix(let stem), .prefix(let laterStem)): laterStem.hasPrefix(stem)
        case (.exact, .prefix): false
        }
    }

    // MARK: pricing

    /// With a `pricing` section, a warning for every upstream model entry that some served model has
    /// no price for: an exact name without an entry (exact or prefix) that prices it, a prefix
    /// without a prefix entry that covers all of it. Such a model's cost is reported as unknown.
    func unpricedModels() -> [ConfigFinding] {
        guard !pricing.isEmpty else { return [] }
        var findings: [ConfigFinding] = []
        for (index, upstream) in upstreams.enumerated() {
            for (modelIndex, matcher) in upstream.models.enumerated() {
                let path = "$.upstreams[\(index)].models[\(modelIndex)]"
                switch matcher {
                case .exact(let name):
                    if pricing.price(for: name) == nil {
                        findings.append(ConfigFinding(.warning, path, "model \"\(name)\" has no price in pricing.models: its requests' cost is reported as unknown"))
                    }
                case .prefix:
                    let covered = pricing.models.keys.contains { if case .prefix = $0 { Self.covers($0, matcher) } else { false } }
                    if !covered {
                        findings.append(ConfigFinding(.warning, path, "models matching \"\(matcher)\" have no price unless pricing.models lists them (or a prefix entry covering \"\(matcher)\"): the cost of the others is reported as unknown"))
                    }
                }
            }
        }
        return findings
    }

    /// A team's keys count one month of tokens together (volume tiers, a plan's included tokens): a
    /// warning when they name different plans (each key is priced under its own plan at the team's
    /// position, which is seldom what was meant) or when several name a plan with a monthly fee (the
    /// usage report lists a fee per key for the one allowance the team shares).
    func teamPlanFindings() -> [ConfigFinding] {
        var keysByTeam: [String: [(index: Int, plan: String?)]] = [:]
        for (index, key) in keys.enumerated() {
            guard let team = key.team else { continue }
            keysByTeam[team, default: []].append((index, key.plan))
        }
        var findings: [ConfigFinding] = []
        for team in keysByTeam.keys.sorted() {
            let members = keysByTeam[team]!
            let planned = members.filter { $0.plan != nil }
            let plans = Set(planned.compactMap(\.plan))
            if plans.count > 1 {
                let names = plans.sorted().map { "\"\($0)\"" }.joined(separator: ", ")
                findings.append(ConfigFinding(.warning, "$.keys[\(planned[0].index)].plan", "the keys of team \"\(team)\" name different plans (\(names)): they share one month of tokens, and each is priced under its own plan at the team's position"))
            } else if let plan = plans.first, planned.count > 1, (pricing.plans[plan]?.monthlyFee.nanos ?? 0) > 0 {
                findings.append(ConfigFinding(.warning, "$.keys[\(planned[1].index)].plan", "\(planned.count) keys of team \"\(team)\" name plan \"\(plan)\": the team shares one allowance of included tokens, but sluice usage lists the monthly fee once per key; name the plan on one key"))
            }
        }
        return findings
    }

    // MARK: limits

    /// Warnings for quotas without Redis (not enforced) and for bursts above
    /// `suspiciousBurstFactor` times their rate, in tiers (by name) and in keys' own limits (where
    /// the key sets the burst or the rate; a tier's own problem is reported at the tier only).
    func quotaAndBurstFindings() -> [ConfigFinding] {
        var findings: [ConfigFinding] = []
        for name in tiers.keys.sorted() {
            let limits = tiers[name]!
            let path = ConfigWalker.member("$.tiers", name)
            findings += quotaFindings(limits, at: path)
            findings += burstFindings(limits, own: limits, at: path)
        }
        for (index, key) in keys.enumerated() {
            guard let own = key.limits else { continue }
            let path = "$.keys[\(index)].limits"
            findings += quotaFindings(own, at: path)
            let merged = (key.tier.flatMap { tiers[$0] } ?? LimitSet()).overridden(by: own)
            findings += burstFindings(merged, own: own, at: path)
        }
        return findings
    }

    private func quotaFindings(_ limits: LimitSet, at path: String) -> [ConfigFinding] {
        var findings: [ConfigFinding] = []
        if pricing.models.isEmpty {
            for (name, value) in [("usd_per_day", limits.usdPerDay), ("usd_per_month", limits.usdPerMonth)] where value != nil {
                findings.append(ConfigFinding(.warning, "\(path).\(name)", "no model has a price (pricing.models): every request of a key with this budget is refused"))
            }
        }
        guard redis == nil else { return findings }
        return findings + [("tokens_per_day", limits.tokensPerDay), ("tokens_per_month", limits.tokensPerMonth)].compactMap { name, value in
            value.map { _ in
                ConfigFinding(.warning, "\(path).\(name)", "not enforced: quotas need the shared Redis store (a \"redis\" section); the embedded limiter keeps no token quota counters (only budgets)")
            }
        }
    }

    private func burstFindings(_ merged: LimitSet, own: LimitSet, at path: String) -> [ConfigFinding] {
        let pairs: [(burst: Int?, ownBurst: Int?, rate: Int?, ownRate: Int?, burstName: String, rateName: String)] = [
            (merged.requestsBurst, own.requestsBurst, merged.requestsPerMinute, own.requestsPerMinute, "requests_burst", "requests_per_minute"),
            (merged.tokensBurst, own.tokensBurst, merged.tokensPerMinute, own.tokensPerMinute, "tokens_burst", "tokens_per_minute"),
            (merged.inputTokensBurst, own.inputTokensBurst, merged.inputTokensPerMinute, own.inputTokensPerMinute, "input_tokens_burst", "input_tokens_per_minute"),
            (merged.outputTokensBurst, own.outputTokensBurst, merged.outputTokensPerMinute, own.outputTokensPerMinute, "output_tokens_burst", "output_tokens_per_minute"),
        ]
        return pairs.compactMap { pair in
            guard let burst = pair.burst, let rate = pair.rate, burst > Self.suspiciousBurstFactor * rate,
                  pair.ownBurst != nil || pair.ownRate != nil
            else { return nil }
            let name = pair.ownBurst != nil ? pair.burstName : pair.rateName
            return ConfigFinding(.warning, "\(path).\(name)", "\(pair.burstName) \(burst) is more than \(Self.suspiciousBurstFactor) × \(pair.rateName) \(rate): that much may be spent at once (a burst is normally at most the per-minute value)")
        }
    }

    // MARK: redis

    /// A warning for TLS without certificate verification (`redis.tls.verify: false`): the
    /// connection is encrypted, but the server is not authenticated. (Whether the TLS files hold
    /// what they should is checked by `check-config` through the Redis client, which parses them.)
    func redisTLSFindings() -> [ConfigFinding] {
        guard let tls = redis?.tls, !tls.verifyCertificate else { return [] }
        let ignored = tls.caFile != nil ? "; ca_file is not used" : ""
        return [ConfigFinding(.warning, "$.redis.tls.verify", "false: the server's certificate is not checked, so anyone on the path can pose as Redis (and receive its password)\(ignored)")]
    }
}
