import ArgumentParser
import SluiceCore
import Foundation
import NIOCore
import NIOPosix

/// `sluice load`: drives a running deployment (one node or several) with chat completions and
/// checks, from the answers alone, that each key's limits hold.
struct LoadCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "load",
        abstract: "Send load to a running deployment and check that its keys' limits hold.",
        discussion: """
        Workers (--concurrency, one keep-alive connection each, spread over the targets in turn) send \
        chat completions, the keys taken in turn request by request, for --duration (at --rate per \
        second on a timetable, or as fast as answers come). Each key's limits are read from the \
        x-ratelimit-limit-requests / -tokens headers of its answers. Per key: sent, admitted (2xx), \
        limited (429, by the kind its body names), errors (other statuses, transport failures), \
        admitted requests and tokens (usage: prompt + completion) per minute, the busiest 1, 5 and 10 s \
        windows of admitted requests and tokens against burst + rate × window (burst: --burst, else \
        the limit, OpenAI's default), and latency percentiles of admitted requests. Exit status 3 when \
        a window exceeds its bound by more than one request, or the error rate exceeds --max-error-rate.

        With --stream --frame-stats it measures streams instead (scripts/bench streams): --concurrency         event-driven workers each hold one stream at a time for the run, timing every server-sent event:         time to first frame and the gaps between frames (p50, p99), streams stalled, frames missing (with         --mock-completion-tokens, against sluice-mock's count), streams without [DONE], errors.
        """
    )

    static let maxConcurrency = 10_000
    static let maxDurationSeconds = 24 * 3600.0
    static let maxPromptTokens = 100_000
    static let maxMaxTokens = 1_000_000
    static let maxRate = 1_000_000.0
    static let maxMockCompletionTokens = 100_000
    static let maxMockTokenDelayMs = 60_000
    /// How long requests still in flight at the end may take before they are abandoned (as errors).
    static let inFlightGraceSeconds = 10.0
    /// The exit status of a run whose limits or error rate failed.
    static let failedExitCode: Int32 = 3

    @Option(name: .customLong("target"), help: "A node's (or load balancer's) URL, http://host:port[/v1]; repeat for several.")
    var targets: [String] = []

    @Option(name: .customLong("key"), help: "An API key to send with; repeat for several (taken in turn).")
    var keys: [String] = []

    @Option(help: "Concurrent workers, one connection each (1–\(maxConcurrency)).")
    var concurrency = 8

    @Option(help: "How long to send: 30s, 500ms, 2m, 1h (at most 24h).")
    var duration = "30s"

    @Option(help: "Requests per second over all workers, e.g. 200/s (default: as fast as answers come).")
    var rate: String?

    @Option(help: "The model of the chat completions.")
    var model = "gpt-4o-mini"

    @Flag(help: "Stream the answers (latency is then the time to the first byte).")
    var stream = false

    @Option(help: "Prompt length in tokens, about (1–\(maxPromptTokens)).")
    var promptTokens = 16

    @Option(help: "max_tokens of each request (0–\(maxMaxTokens)).")
    var maxTokens = 16

    @Option(name: .customLong("burst"), help: "The requests burst of each key, in --key order (one value: every key). Default: the limit.")
    var bursts: [Int] = []

    @Option(help: "A Sluice config to read each key's limits and bursts from (its keys are found by their secrets' hashes), instead of the answers' headers.")
    var config: String?

    @Option(help: "The error rate over which the run fails: 1%, 0.5%, 0 (default 1%).")
    var maxErrorRate = "1%"

    @Option(help: "table or json.")
    var format = "table"

    @Flag(help: ArgumentHelp("With --stream: time every frame (server-sent event) instead of checking limits.",
                             discussion: "Each worker holds one stream at a time for the run (--concurrency streams at once), the workers starting over --ramp-up. Reports time to first frame and inter-frame gaps (p50, p99), streams stalled (a gap over --stall-gap-ms), frames missing, streams without [DONE], errors. Exit status 3 when a frame is missing, a stream stalled or the error rate exceeds --max-error-rate."))
    var frameStats = false

    @Option(help: "Sends x-mock-completion-tokens N (sluice-mock streams N tokens) and max_tokens N; with --frame-stats a complete stream then has N + 4 frames (role, N tokens, finish, usage, [DONE]). 1–\(maxMockCompletionTokens).")
    var mockCompletionTokens: Int?

    @Option(help: "Sends x-mock-token-delay-ms D (sluice-mock paces its tokens D ms apart). 0–\(maxMockTokenDelayMs).")
    var mockTokenDelayMs: Int?

    @Option(help: "With --frame-stats: a gap between two frames over this makes a stream stalled (default 10 × --mock-token-delay-ms, else 1000).")
    var stallGapMs: Int?

    @Option(help: "With --frame-stats: the workers' starts are spread evenly over this (e.g. 1s; at most the --duration).")
    var rampUp = "1s"

    func validate() throws {
        guard !targets.isEmpty else { throw ValidationError("Give at least one --target URL.") }
        for target in targets where LoadTarget(target) == nil {
            throw ValidationError("--target \"\(target)\" is not an http://host:port URL (TLS is not supported).")
        }
        guard !keys.isEmpty else { throw ValidationError("Give at least one --key.") }
        guard (1...Self.maxConcurrency).contains(concurrency) else {
            throw ValidationError("--concurrency must be between 1 and \(Self.maxConcurrency).")
        }
        guard let seconds = Self.parseDuration(duration), seconds > 0, seconds <= Self.maxDurationSeconds else {
            throw ValidationError("--duration \"\(duration)\" is not a duration between 1ms and 24h (e.g. 30s, 2m).")
        }
        if let rate, Self.parseRate(rate) == nil {
            throw ValidationError("--rate \"\(rate)\" is not a rate above 0 and at most \(Int(Self.maxRate))/s (e.g. 200/s).")
        }
        guard (1...Self.maxPromptTokens).contains(promptTokens) else {
            throw ValidationError("--prompt-tokens must be between 1 and \(Self.maxPromptTokens).")
        }
        guard (0...Self.maxMaxTokens).contains(maxTokens) else {
            throw ValidationError("--max-tokens must be between 0 and \(Self.maxMaxTokens).")
        }
        guard bursts.isEmpty || bursts.count == 1 || bursts.count == keys.count else {
            throw ValidationError("Give --burst once (for every key) or once per --key (\(keys.count)).")
        }
        guard bursts.allSatisfy({ $0 >= 1 }) else { throw ValidationError("--burst must be at least 1.") }
        guard Self.parseErrorRate(maxErrorRate) != nil else {
            throw ValidationError("--max-error-rate \"\(maxErrorRate)\" is not a rate between 0 and 100% (e.g. 1%, 0.5%, 0).")
        }
        guard ["table", "json"].contains(format) else { throw ValidationError("--format is table or json.") }
        if let mockCompletionTokens, !(1...Self.maxMockCompletionTokens).contains(mockCompletionTokens) {
            throw ValidationError("--mock-completion-tokens must be between 1 and \(Self.maxMockCompletionTokens).")
        }
        if let mockTokenDelayMs, !(0...Self.maxMockTokenDelayMs).contains(mockTokenDelayMs) {
            throw ValidationError("--mock-token-delay-ms must be between 0 and \(Self.maxMockTokenDelayMs).")
        }
        if frameStats {
            guard stream else { throw ValidationError("--frame-stats times the frames of streams: give --stream too.") }
            guard rate == nil else { throw ValidationError("--frame-stats holds --concurrency streams open; it takes no --rate.") }
            guard targets.count == 1 else { throw ValidationError("--frame-stats takes one --target.") }
            if let stallGapMs, !(1...3_600_000).contains(stallGapMs) {
                throw ValidationError("--stall-gap-ms must be between 1 and 3600000.")
            }
            guard let ramp = Self.parseDuration(rampUp), ramp >= 0, ramp <= Self.parseDuration(duration)! else {
                throw ValidationError("--ramp-up \"\(rampUp)\" is not a duration between 0 and the --duration.")
            }
        } else if stallGapMs != nil {
            throw ValidationError("--stall-gap-ms needs --frame-stats.")
        }
    }

    /// The headers `--mock-*` ask for.
    private var mockHeaders: [(name: String, value: String)] {
        var headers: [(name: String, value: String)] = []
        if let mockCompletionTokens { headers.append(("x-mock-completion-tokens", String(mockCompletionTokens))) }
        if let mockTokenDelayMs { headers.append(("x-mock-token-delay-ms", String(mockTokenDelayMs))) }
        return headers
    }

    func run() async throws {
        if frameStats { return try await runFrameStats() }
        let configuredLimits = try limitsFromConfig()
        let loadTargets = targets.compactMap(LoadTarget.init)
        let durationSeconds = Self.parseDuration(duration)!
        let ratePerSecond = rate.flatMap(Self.parseRate)
        let schedule = LoadSchedule(start: .now, durationSeconds: durationSeconds, rate: ratePerSecond)
        let plan = LoadRequestPlan(keys: keys, model: model, promptTokens: promptTokens,
                                   maxTokens: mockCompletionTokens ?? maxTokens, stream: stream, extraHeaders: mockHeaders)
        let group = MultiThreadedEventLoopGroup.singleton
        let workerCount = concurrency

        var tallies = Array(repeating: LoadKeyTally(), count: keys.count)
        await withTaskGroup(of: [LoadKeyTally]?.self) { tasks in
            for index in 0..<workerCount {
                let worker = LoadWorker(target: loadTargets[index % loadTargets.count], plan: plan, schedule: schedule, group: group)
                tasks.addTask { await worker.run() }
            }
            // The watchdog: answers still missing this long after the end are abandoned.
            tasks.addTask {
                try? await Task.sleep(until: schedule.end + .seconds(Self.inFlightGraceSeconds), clock: .continuous)
                return nil
            }
            var finished = 0
            for await result in tasks {
                if let workerTallies = result {
                    for index in workerTallies.indices { tallies[index].merge(workerTallies[index]) }
                    finished += 1
                    if finished == workerCount { tasks.cancelAll() }
                } else if finished < workerCount {
                    tasks.cancelAll()
                }
            }
        }

        let report = LoadReport(
            tallies: tallies, secrets: keys,
            bursts: keys.indices.map { bursts.isEmpty ? nil : bursts[bursts.count == 1 ? 0 : $0] },
            configured: configuredLimits,
            durationSeconds: durationSeconds, targets: targets, concurrency: concurrency, rate: ratePerSecond,
            stream: stream, maxErrorRate: Self.parseErrorRate(maxErrorRate)!)
        print(format == "json" ? report.json() : report.table())
        if !report.passed { throw ExitCode(Self.failedExitCode) }
    }

    /// `--frame-stats`: `--concurrency` event-driven stream workers (`StreamLoadWorker`), their tallies
    /// merged into one summary.
    private func runFrameStats() async throws {
        let target = LoadTarget(targets[0])!
        let durationSeconds = Self.parseDuration(duration)!
        let rampSeconds = Self.parseDuration(rampUp)!
        let plan = LoadRequestPlan(keys: keys, model: model, promptTokens: promptTokens,
                                   maxTokens: mockCompletionTokens ?? maxTokens, stream: true, extraHeaders: mockHeaders)
        let stallGap = Double(stallGapMs ?? mockTokenDelayMs.map { $0 > 0 ? 10 * $0 : 1000 } ?? 1000) / 1000
        let start = NIODeadline.now()
        let end = start + .nanoseconds(Int64(durationSeconds * 1e9))
        let settings = StreamRunSettings(
            target: target, plan: plan, start: start, end: end,
            giveUp: end + .nanoseconds(Int64(Self.inFlightGraceSeconds * 1e9)), stallGap: stallGap,
            expectedFrames: mockCompletionTokens.map { $0 + 4 }, workerCount: concurrency)
        let group = MultiThreadedEventLoopGroup.singleton
        var futures: [EventLoopFuture<StreamFrameTally>] = []
        futures.reserveCapacity(concurrency)
        for index in 0..<concurrency {
            let eventLoop = group.next()
            let delay = TimeAmount.nanoseconds(Int64(rampSeconds * 1e9 * Double(index) / Double(concurrency)))
            let worker = StreamLoadWorker(settings: settings, index: index, eventLoop: eventLoop)
            futures.append(eventLoop.flatSubmit { worker.run(after: delay) })
        }
        var tally = StreamFrameTally()
        for future in futures { tally.merge(try await future.get()) }
        let report = StreamLoadReport(
            target: targets[0], concurrency: concurrency, durationSeconds: durationSeconds, rampUpSeconds: rampSeconds,
            mockCompletionTokens: mockCompletionTokens, mockTokenDelayMs: mockTokenDelayMs,
            expectedFrames: settings.expectedFrames, maxErrorRate: Self.parseErrorRate(maxErrorRate)!,
            summary: StreamFrameSummary(tally, stallGap: stallGap))
        print(format == "json" ? report.json() : report.table())
        if !report.passed { throw ExitCode(Self.failedExitCode) }
    }

    /// Each `--key`'s limits from `--config` (nil for each without one); a key the config does not
    /// know is an error, not a silent fallback.
    private func limitsFromConfig() throws -> [ResolvedLimits?] {
        guard let config else { return keys.map { _ in nil } }
        let loaded: SluiceConfig
        do {
            loaded = try SluiceConfig.load(path: config, requireMachineSecrets: false)
        } catch {
            throw ValidationError("--config \(config) is not a valid config:\n\(error)")
        }
        let table = KeyTable(config: loaded)
        return try keys.enumerated().map { index, secret in
            guard let key = table.authenticate(bearerSecret: secret) else {
                throw ValidationError("--key number \(index + 1) is not a key of \(config) (or it has expired).")
            }
            return key.limits
        }
    }

    // MARK: - Option values

    /// Seconds of `500ms`, `30s`, `2m`, `1h` or a bare number of seconds; nil when malformed.
    static func parseDuration(_ text: String) -> Double? {
        let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)]
        for (suffix, scale) in units where text.hasSuffix(suffix) {
            guard let value = Double(text.dropLast(suffix.count)), value.isFinite else { return nil }
            return value * scale
        }
        return Double(text).flatMap { $0.isFinite ? $0 : nil }
    }

    /// Requests per second of `200/s` or `200`; nil when malformed or out of bounds.
    static func parseRate(_ text: String) -> Double? {
        let number = text.hasSuffix("/s") ? String(text.dropLast(2)) : text
        guard let value = Double(number), value > 0, value <= maxRate else { return nil }
        return value
    }

    /// The fraction of `1%`, `0.5%` or `0`/`0.01` (a bare number is a fraction); nil when malformed.
    static func parseErrorRate(_ text: String) -> Double? {
        let value: Double?
        if text.hasSuffix("%") { value = Double(text.dropLast()).map { $0 / 100 } } else { value = Double(text) }
        guard let value, value >= 0, value <= 1 else { return nil }
        return value
    }
}
