import ArgumentParser
import SluiceCore

/// `sluice check-config FILE`: validates a configuration file the way `serve` loads it.
struct CheckConfigCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "check-config",
        abstract: "Validate a configuration file and print every problem with its JSON path.",
        discussion: """
            Upstream API keys are resolved from the environment as at start-up, so a missing \
            variable is reported too. Exits 0 when the file is valid, 1 otherwise.
            """
    )

    @Argument(help: "The JSON configuration file.")
    var file: String

    func run() throws {
        let config: SluiceConfig
        do {
            config = try SluiceConfig.load(path: file)
        } catch {
            // ConfigError.description: one problem per line, or the one reason the file could
            // not be read or parsed.
            print(error.description)
            throw ExitCode.failure
        }
        let limiter: String
        if let redis = config.redis {
            limiter = "redis \(redis.redactedURL), on failure: \(redis.onFailure.rawValue)"
        } else {
            limiter = "embedded limiter"
        }
        print("ok: \(config.keys.count) keys, \(config.upstreams.count) upstreams, \(config.tiers.count) tiers (\(limiter))")
    }
}
