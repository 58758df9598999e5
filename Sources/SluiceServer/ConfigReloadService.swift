import Logging
import ServiceLifecycle
import SluiceCore
import UnixSignals

/// Reloads the config file on SIGHUP: the new file is validated completely and, only if it is
/// valid, its keys, tiers, limits and upstream routing replace the old ones at once (an immutable
/// snapshot swap). An invalid file changes nothing and every problem is logged with its JSON path.
///
/// Sections that shape running machinery (`server`, `tokenizer`, `redis`) need a restart; a change
/// there is reported, not applied.
struct ConfigReloadService: Service {
    let path: String
    let initial: SluiceConfig
    let gateway: Gateway
    let logger: Logger

    func run() async throws {
        let signals = await UnixSignalsSequence(trapping: .sighup)
        await cancelWhenGracefulShutdown {
            var current = initial
            for await _ in signals {
                current = reload(over: current)
            }
        }
    }

    /// Loads and applies the file; returns the config now in force.
    func reload(over current: SluiceConfig) -> SluiceConfig {
        let next: SluiceConfig
        do {
            next = try SluiceConfig.load(path: path)
        } catch {
            // One entry is one line: the problems joined with "; " (the error's description has one
            // per line, the form `check-config` prints).
            logger.error(
                "config reload refused: the file is not valid; the running config stays in force",
                metadata: [
                    "config": "\(path)", "problem_count": "\(error.problems.count)",
                    "problems": "\(error.problems.map(\.description).joined(separator: "; "))",
                ]
            )
            return current
        }
        // Against the config the node started with (`initial`): those sections are never swapped.
        let needsRestart = next.sectionsNeedingRestart(running: initial)
        gateway.replaceSettings(GatewaySettings(config: next))
        logger.notice(
            "config reloaded",
            metadata: ["config": "\(path)", "keys": "\(next.keys.count)", "upstreams": "\(next.upstreams.count)", "tiers": "\(next.tiers.count)"]
        )
        if !needsRestart.isEmpty {
            logger.warning(
                "config reload: changes to these sections take effect only after a restart",
                metadata: ["sections": "\(needsRestart.joined(separator: ","))"]
            )
        }
        return next
    }
}
