/// Durations formatted exactly like Go's `time.Duration.String()`, as OpenAI writes its
/// `x-ratelimit-reset-*` headers (`12ms`, `33.023s`, `2m52.8s`, `6m0s`, `1h0m0s`) and as clients
/// parse them back (`time.ParseDuration` in go-openai).
///
/// Sluice first rounds a duration *up* to whole milliseconds — the precision OpenAI shows — so that
/// a client that waits the printed time finds the bucket refilled, never a microsecond short.
/// Go's algorithm on a whole number of milliseconds then reduces to:
/// - 0 → `0s`;
/// - under one second → `<ms>ms`;
/// - otherwise `[<h>h][<m>m]<s>[.<fraction>]s`, where the hours appear only from one hour, the
///   minutes from one minute (also when zero, `1h0m0s`), and the fraction is the milliseconds with
///   trailing zeros removed (`52.8`, `33.023`), absent when zero.
public enum GoDuration {
    /// The Go form of `microseconds` after rounding up to whole milliseconds (negatives → `0s`).
    public static func string(microseconds: Int64) -> String {
        guard microseconds > 0 else { return "0s" }
        let milliseconds = microseconds / 1_000 + (microseconds % 1_000 == 0 ? 0 : 1)
        return string(milliseconds: milliseconds)
    }

    /// The Go form of `seconds` after rounding up to whole milliseconds (negatives and NaN → `0s`).
    public static func string(seconds: Double) -> String {
        guard seconds.isFinite, seconds > 0 else { return seconds == .infinity ? string(milliseconds: Int64.max / 2) : "0s" }
        // Back to whole microseconds first: the value was made from microseconds, and rounding to
        // the nearest one removes the binary-fraction noise (0.012 × 1e6 = 12000.000000000002).
        let microseconds = (seconds * 1_000_000).rounded()
        guard microseconds < 9.0e15 else { return string(milliseconds: Int64.max / 2) }
        return string(microseconds: Int64(microseconds))
    }

    /// The Go form of a whole number of milliseconds.
    public static func string(milliseconds: Int64) -> String {
        guard milliseconds > 0 else { return "0s" }
        if milliseconds < 1_000 { return "\(milliseconds)ms" }
        let totalSeconds = milliseconds / 1_000
        let fraction = milliseconds % 1_000
        let hours = totalSeconds / 3_600
        let minutes = (totalSeconds / 60) % 60
        let seconds = totalSeconds % 60
        var text = ""
        if hours > 0 { text += "\(hours)h" }
        if totalSeconds >= 60 { text += "\(minutes)m" }
        text += "\(seconds)"
        if fraction > 0 {
            var digits = String(fraction)
            digits = String(repeating: "0", count: 3 - digits.count) + digits
            while digits.hasSuffix("0") { digits.removeLast() }
            text += "." + digits
        }
        return text + "s"
    }
}
