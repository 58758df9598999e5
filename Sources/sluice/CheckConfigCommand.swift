import ArgumentParser
import SluiceCore
import SluiceRedis

/// `sluice check-config FILE`: validates a configuration file the way `serve` loads it, then checks
/// what the loader does not (see `SluiceConfig.deploymentFindings`).
struct CheckConfigCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-config",
        abstract: "Validate a configuration file and print every problem with its JSON path.",
        discussion: """
            Each problem is one line, "error: PATH: MESSAGE" or "warning: PATH: MESSAGE". Errors: \
            the file does not load as serve loads it (upstream API keys are resolved from the \
            environment as at start-up, so a missing variable is reported too, as is the Redis \
            password's password_env), or serve would not start with it (a missing tokenizer \
            directory or rank file; a Redis TLS CA, certificate or key file that is missing or not \
            PEM). Warnings: it would run, but not as the file says: daily or monthly quotas without \
            a "redis" section (not enforced), a model_map entry for a model its upstream does not \
            serve or fallbacks for a model no upstream serves (never used), two deployments of the \
            same endpoint and key serving the same models (retries between them gain nothing), a burst more than 10 times its per-minute value, \
            Redis TLS without certificate verification (redis.tls.verify false), telemetry settings \
            without telemetry.otlp_endpoint (traces off), with a pricing section an upstream model \
            entry some of whose models have no price (their cost is unknown), a budget while no \
            model has a price (every request of its keys would be refused), keys of one team naming \
            different plans, or several of them a plan with a monthly fee (the team shares one month \
            of tokens).
            Exit status: 0 ok, 1 errors (warnings may be printed too), 2 warnings only.
            """
    )

    /// The exit status when the file has warnings but no errors.
    static let warningsOnlyStatus: Int32 = 2

    @Argument(help: "The JSON configuration file.")
    var file: String

    func run() throws {
        let config: SluiceConfig
        do {
            config = try SluiceConfig.load(path: file)
        } catch {
            for problem in error.problems { print("error: \(problem)") }
            throw ExitCode.failure
        }
        var findings = config.deploymentFindings()
        if let redis = config.redis {
            do {
                try RedisClient.checkTLSSetup(redis)
            } catch {
                findings.append(ConfigFinding(.error, "$.redis.tls", "\(error): serve would not start"))
            }
        }
        for finding in findings { print(finding) }
        if findings.contains(where: { $0.severity == .error }) {
            throw ExitCode.failure
        }
        let limiter: String
        if let redis = config.redis {
            limiter = "redis \(redis.redactedTarget), on failure: \(redis.onFailure.rawValue)"
        } else {
            limiter = "embedded limiter"
        }
        let summary = "\(config.keys.count) keys, \(config.upstreams.count) upstreams, \(config.tiers.count) tiers (\(limiter))"
            + (config.telemetry.tracesURL.map { ", traces to \($0)" } ?? "")
        if findings.isEmpty {
            print("ok: \(summary)")
        } else {
            print("ok with \(findings.count) warning\(findings.count == 1 ? "" : "s"): \(summary)")
            throw ExitCode(Self.warningsOnlyStatus)
        }
    }
}
