import Foundation
import SluiceCore

/// The outcome of a `sluice load` run: per key what was sent, admitted, limited and failed, the
/// admitted rates and busiest windows against the key's limits, and the verdict.
struct LoadReport: JSONReport {
    /// The windows every admitted measure is checked over.
    static let windowSeconds = [1, 5, 10]

    struct Limits: Encodable {
        var requestsPerMinute: Int?
        var tokensPerMinute: Int?
        var requestsBurst: Int?
        var tokensBurst: Int?
    }

    /// The busiest window of one length: what was admitted in it against burst + rate × window,
    /// exceeded when over the bound by more than one request (one request's tokens for tokens).
    struct Window: Encodable {
        var measure: String
        var seconds: Int
        var peak: Int
        var bound: Double?
        var exceeded: Bool
    }

    struct Latency: Encodable {
        var p50: Double
        var p95: Double
        var p99: Double
    }

    struct Key: Encodable {
        /// The key's position among the `--key` options, from 0.
        var index: Int
        /// The last four characters of the secret (never the whole of it).
        var label: String
        var sent: Int
        var admitted: Int
        var limited: [String: Int]
        var errors: Int
        var errorStatuses: [String: Int]
        var transportErrors: Int
        var limits: Limits
        var admittedRequestsPerMinute: Double
        var admittedTokensPerMinute: Double
        var promptTokens: Int
        var completionTokens: Int
        var windows: [Window]
        /// Milliseconds, of admitted requests: to the answer's end, or its first byte with `--stream`.
        var latencyMs: Latency?
    }

    var durationSeconds: Double
    var targets: [String]
    var concurrency: Int
    var rate: Double?
    var stream: Bool
    var sent: Int
    var admitted: Int
    var errors: Int
    var requestsPerSecond: Double
    var errorRate: Double
    var maxErrorRate: Double
    var limitExceeded: Bool
    var errorsOverThreshold: Bool
    var keys: [Key]

    var passed: Bool { !limitExceeded && !errorsOverThreshold }

    /// - Parameter configured: each key's limits from `--config` (nil: from the answers' headers, the
    ///   bursts defaulting to the limits unless `bursts` gives them).
    init(tallies: [LoadKeyTally], secrets: [String], bursts: [Int?], configured: [ResolvedLimits?], durationSeconds: Double, targets: [String],
         concurrency: Int, rate: Double?, stream: Bool, maxErrorRate: Double) {
        let minutes = durationSeconds / 60
        keys = tallies.indices.map { index in
            let tally = tallies[index]
            let limits: Limits
            if let known = configured[index] {
                limits = Limits(requestsPerMinute: known.requests?.perMinute, tokensPerMinute: known.tokens?.perMinute,
                                requestsBurst: bursts[index] ?? known.requests?.burst, tokensBurst: known.tokens?.burst)
            } else {
                limits = Limits(requestsPerMinute: tally.limitRequests, tokensPerMinute: tally.limitTokens,
                                requestsBurst: tally.limitRequests.map { bursts[index] ?? $0 },
                                tokensBurst: tally.limitTokens)
            }
            var windows: [Window] = []
            for (measure, timeline, perMinute, burst, slack) in [
                ("requests", tally.admittedRequests, limits.requestsPerMinute, limits.requestsBurst, 1),
                ("tokens", tally.admittedTokens, limits.tokensPerMinute, limits.tokensBurst, tally.admittedTokens.largestWeight),
            ] {
                for seconds in Self.windowSeconds {
                    let peak = timeline.peak(windowSeconds: Double(seconds))
                    var bound: Double?
                    if let perMinute, let burst {
                        bound = AdmissionTimeline.bound(burst: burst, perMinute: perMinute, windowSeconds: Double(seconds))
                    }
                    windows.append(Window(measure: measure, seconds: seconds, peak: peak, bound: bound,
                                          exceeded: bound.map { Double(peak) > $0 + Double(slack) } ?? false))
                }
            }
            let percentiles = LatencyPercentiles(samples: tally.latencies)
            let secret = secrets[index]
            return Key(index: index, label: secret.count >= 16 ? "…" + secret.suffix(4) : "",
                       sent: tally.sent, admitted: tally.admitted, limited: tally.limited, errors: tally.errors,
                       errorStatuses: Dictionary(uniqueKeysWithValues: tally.errorStatuses.map { (String($0.key), $0.value) }),
                       transportErrors: tally.transportErrors, limits: limits,
                       admittedRequestsPerMinute: Double(tally.admitted) / minutes,
                       admittedTokensPerMinute: Double(tally.promptTokens + tally.completionTokens) / minutes,
                       promptTokens: tally.promptTokens, completionTokens: tally.completionTokens, windows: windows,
                       latencyMs: percentiles.map { Latency(p50: $0.p50 * 1000, p95: $0.p95 * 1000, p99: $0.p99 * 1000) })
        }
        self.durationSeconds = durationSeconds
        self.targets = targets
        self.concurrency = concurrency
        self.rate = rate
        self.stream = stream
        self.maxErrorRate = maxErrorRate
        sent = keys.reduce(0) { $0 + $1.sent }
        admitted = keys.reduce(0) { $0 + $1.admitted }
        errors = keys.reduce(0) { $0 + $1.errors }
        requestsPerSecond = Double(sent) / durationSeconds
        errorRate = sent == 0 ? 0 : Double(errors) / Double(sent)
        limitExceeded = keys.contains { $0.windows.contains(where: \.exceeded) }
        errorsOverThreshold = errorRate > maxErrorRate
    }

    private enum CodingKeys: String, CodingKey {
        case durationSeconds, targets, concurrency, rate, stream, sent, admitted, errors, requestsPerSecond, errorRate,
             maxErrorRate, limitExceeded, errorsOverThreshold, passed, keys
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(durationSeconds, forKey: .durationSeconds)
        try container.encode(targets, forKey: .targets)
        try container.encode(concurrency, forKey: .concurrency)
        try container.encodeIfPresent(rate, forKey: .rate)
        try container.encode(stream, forKey: .stream)
        try container.encode(sent, forKey: .sent)
        try container.encode(admitted, forKey: .admitted)
        try container.encode(errors, forKey: .errors)
        try container.encode(requestsPerSecond, forKey: .requestsPerSecond)
        try container.encode(errorRate, forKey: .errorRate)
        try container.encode(maxErrorRate, forKey: .maxErrorRate)
        try container.encode(limitExceeded, forKey: .limitExceeded)
        try container.encode(errorsOverThreshold, forKey: .errorsOverThreshold)
        try container.encode(passed, forKey: .passed)
        try container.encode(keys, forKey: .keys)
    }

    // MARK: - Rendering

    func table() -> String {
        func number(_ value: Double) -> String { String(format: "%.1f", value) }
        func limit(_ value: Int?) -> String { value.map { "limit \($0)" } ?? "no limit header" }
        var lines: [String] = []
        lines.append("sluice load: \(number(durationSeconds)) s, \(targets.count) target(s), \(keys.count) key(s), concurrency \(concurrency)"
            + (rate.map { ", rate \(number($0))/s" } ?? "") + (stream ? ", streamed" : ""))
        lines.append("sent \(sent), admitted \(admitted), errors \(errors) (\(number(errorRate * 100)) %), \(number(requestsPerSecond)) req/s")
        for key in keys {
            lines.append("")
            let limitedText = key.limited.isEmpty ? "0"
                : "\(key.limited.values.reduce(0, +)) (" + key.limited.sorted { $0.key < $1.key }.map { "\($0.key) \($0.value)" }.joined(separator: ", ") + ")"
            var errorParts = key.errorStatuses.sorted { $0.key < $1.key }.map { "status \($0.key): \($0.value)" }
            if key.transportErrors > 0 { errorParts.append("transport: \(key.transportErrors)") }
            lines.append("key \(key.index) \(key.label)  sent \(key.sent)  admitted \(key.admitted)  limited \(limitedText)  errors \(key.errors)"
                + (errorParts.isEmpty ? "" : " (" + errorParts.joined(separator: ", ") + ")"))
            lines.append("  admitted per min   requests \(number(key.admittedRequestsPerMinute)) (\(limit(key.limits.requestsPerMinute)))"
                + "   tokens \(number(key.admittedTokensPerMinute)) (\(limit(key.limits.tokensPerMinute)))")
            for measure in ["requests", "tokens"] {
                let cells = key.windows.filter { $0.measure == measure }.map { window in
                    "\(window.seconds) s: \(window.peak)" + (window.bound.map { " / \(number($0))" } ?? "") + (window.exceeded ? " EXCEEDED" : "")
                }
                lines.append("  busiest \(measure.padding(toLength: 8, withPad: " ", startingAt: 0))  " + cells.joined(separator: "   "))
            }
            if let latency = key.latencyMs {
                lines.append("  latency ms         p50 \(number(latency.p50))   p95 \(number(latency.p95))   p99 \(number(latency.p99))"
                    + (stream ? " (to first byte)" : ""))
            }
        }
        lines.append("")
        var verdict: [String] = []
        if limitExceeded { verdict.append("a limit was exceeded (busiest window over burst + rate × window)") }
        if errorsOverThreshold { verdict.append("error rate \(number(errorRate * 100)) % over \(number(maxErrorRate * 100)) %") }
        lines.append(verdict.isEmpty ? "result: ok (every busiest window within its bound, errors within the threshold)"
                                     : "result: FAILED: " + verdict.joined(separator: "; "))
        return lines.joined(separator: "\n")
    }
}

/// A report `sluice load --format json` prints: snake_case keys, sorted, pretty.
protocol JSONReport: Encodable {}

extension JSONReport {
    func json() -> String {
        let encoder = JSONEncoder()
        encoder.keyEncodingStrategy = .convertToSnakeCase
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        return (try? String(decoding: encoder.encode(self), as: UTF8.self)) ?? "{}"
    }
}
