import Foundation
import SluiceCore

/// The outcome of a `sluice load --stream --frame-stats` run: what the streams delivered and how fast.
struct StreamLoadReport: JSONReport {
    var target: String
    var concurrency: Int
    var durationSeconds: Double
    var rampUpSeconds: Double
    var mockCompletionTokens: Int?
    var mockTokenDelayMs: Int?
    var expectedFrames: Int?
    var maxErrorRate: Double
    var summary: StreamFrameSummary

    var errorsOverThreshold: Bool { summary.errorRate > maxErrorRate }
    var passed: Bool { summary.missingFrames == 0 && summary.stalled == 0 && summary.endedWithoutDone == 0 && !errorsOverThreshold }

    private enum CodingKeys: String, CodingKey {
        case target, concurrency, durationSeconds, rampUpSeconds, mockCompletionTokens, mockTokenDelayMs,
             expectedFrames, maxErrorRate, summary, errorsOverThreshold, passed
    }

    func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(target, forKey: .target)
        try container.encode(concurrency, forKey: .concurrency)
        try container.encode(durationSeconds, forKey: .durationSeconds)
        try container.encode(rampUpSeconds, forKey: .rampUpSeconds)
        try container.encodeIfPresent(mockCompletionTokens, forKey: .mockCompletionTokens)
        try container.encodeIfPresent(mockTokenDelayMs, forKey: .mockTokenDelayMs)
        try container.encodeIfPresent(expectedFrames, forKey: .expectedFrames)
        try container.encode(maxErrorRate, forKey: .maxErrorRate)
        try container.encode(summary, forKey: .summary)
        try container.encode(errorsOverThreshold, forKey: .errorsOverThreshold)
        try container.encode(passed, forKey: .passed)
    }

    func table() -> String {
        func ms(_ value: Double?) -> String { value.map { String(format: "%.1f", $0) } ?? "—" }
        let s = summary
        var lines: [String] = []
        lines.append("sluice load --frame-stats: \(target), \(concurrency) concurrent streams, "
            + String(format: "%.1f", durationSeconds) + " s (ramp-up " + String(format: "%.1f", rampUpSeconds) + " s)"
            + (mockCompletionTokens.map { ", \($0) tokens" } ?? "") + (mockTokenDelayMs.map { " \($0) ms apart" } ?? ""))
        lines.append("streams \(s.started), complete \(s.completed), without [DONE] \(s.endedWithoutDone), "
            + "errors \(s.errors) (" + String(format: "%.2f", s.errorRate * 100) + " %)")
        lines.append("frames \(s.frames), missing \(s.missingFrames)" + (expectedFrames.map { " (expected \($0) per stream)" } ?? " (no expected count)")
            + ", stalled streams \(s.stalled) (a gap over \(ms(s.stallGapMs)) ms)")
        lines.append("time to first frame ms   p50 \(ms(s.ttftP50Ms))   p99 \(ms(s.ttftP99Ms))")
        lines.append("gap between frames ms    p50 \(ms(s.gapP50Ms))   p99 \(ms(s.gapP99Ms))   largest \(ms(s.largestGapMs))")
        var failures: [String] = []
        if s.missingFrames > 0 { failures.append("\(s.missingFrames) frames missing") }
        if s.endedWithoutDone > 0 { failures.append("\(s.endedWithoutDone) streams without [DONE]") }
        if s.stalled > 0 { failures.append("\(s.stalled) streams stalled") }
        if errorsOverThreshold { failures.append("error rate over " + String(format: "%.2f", maxErrorRate * 100) + " %") }
        lines.append(failures.isEmpty ? "result: ok (every frame delivered, none stalled, errors within the threshold)"
                                      : "result: FAILED: " + failures.joined(separator: "; "))
        return lines.joined(separator: "\n")
    }
}
