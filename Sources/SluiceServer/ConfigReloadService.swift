import Foundation
import Logging
import ServiceLifecycle
import SluiceCore
import UnixSignals

/// Reloads the config file on SIGHUP and, unless `server.watch_config` is false, when the file's
/// content changes (see `ConfigFileWatcher`): the new file is validated completely and, only if it
/// is valid, its keys, tiers, limits and upstream routing replace the old ones at once (an
/// immutable snapshot swap). An invalid file changes nothing and every problem is logged with its
/// JSON path. Either way the outcome goes to `/readyz` and the `sluice_config_*` metrics.
///
/// Sections that shape running machinery (`server`, `tokenizer`, `redis`) need a restart; a change
/// there is reported, not applied.
struct ConfigReloadService: Service {
    let path: String
    let initial: SluiceConfig
    /// The hash of the bytes `initial` was parsed from, and when.
    let initialStatus: ConfigStatus
    let gateway: Gateway
    /// `nil`: reload on SIGHUP only.
    let watcher: ConfigFileWatcher?
    let logger: Logger

    init(path: String, initial: SluiceConfig, initialStatus: ConfigStatus, gateway: Gateway, watch: Bool, logger: Logger) {
        self.path = path
        self.initial = initial
        self.initialStatus = initialStatus
        self.gateway = gateway
        self.watcher = watch ? ConfigFileWatcher(path: path, baseline: .content(sha256: initialStatus.sha256)) : nil
        self.logger = logger
    }

    /// Why a reload runs.
    enum Trigger: Sendable, Equatable {
        case signal
        /// The watcher saw the content settle on something other than what was loaded.
        case fileChanged
    }

    func run() async throws {
        let signals = await UnixSignalsSequence(trapping: .sighup)
        let (triggers, continuation) = AsyncStream.makeStream(of: Trigger.self)
        await cancelWhenGracefulShutdown {
            await withDiscardingTaskGroup { group in
                group.addTask {
                    for await _ in signals { continuation.yield(.signal) }
                }
                if let watcher {
                    group.addTask {
                        await watcher.run { _ in continuation.yield(.fileChanged) }
                    }
                }
                group.addTask {
                    // One reload at a time, in trigger order, whatever their source.
                    var state = ReloadState(config: initial, attempted: .content(sha256: initialStatus.sha256), status: initialStatus)
                    for await trigger in triggers {
                        handle(trigger, state: &state)
                    }
                }
            }
        }
    }

    /// The reload loop's memory: the config in force, the file content last loaded or refused, and
    /// what `/readyz` shows.
    struct ReloadState {
        var config: SluiceConfig
        var attempted: ConfigFileState
        var status: ConfigStatus
    }

    /// Reads the file once and reloads from those bytes, unless the watcher triggered and the content
    /// is what the last reload already took (a SIGHUP got there first): a file reload happens only
    /// for a content change. A SIGHUP always reloads, as it always has: the operator asked.
    func handle(_ trigger: Trigger, state: inout ReloadState) {
        let file = Result { () throws(ConfigError) in try ConfigFileContents.read(path: path) }
        let seen: ConfigFileState = (try? file.get()).map { .content(sha256: $0.sha256) } ?? .unreadable
        defer {
            state.attempted = seen
            watcher?.rebase(on: seen)
        }
        if trigger == .fileChanged {
            guard seen != state.attempted else { return }
            logger.info("config file changed; reloading", metadata: ["config": "\(path)", "sha256": "\(seen)"])
        }
        if let next = reload(over: state.config, from: file), let contents = try? file.get() {
            state.config = next
            state.status = ConfigStatus(sha256: contents.sha256, loadedAt: Date(), lastReload: .ok)
            gateway.metrics.configInForce(sha256: contents.sha256)
            gateway.metrics.configReloaded(.ok)
        } else {
            state.status.lastReload = .refused
            gateway.metrics.configReloaded(.refused)
        }
        gateway.recordConfigStatus(state.status)
    }

    /// Parses and applies the file's bytes.
    /// - Returns: the config now in force, or `nil` when the file was refused (`current` stays).
    func reload(over current: SluiceConfig, from file: Result<ConfigFileContents, ConfigError>) -> SluiceConfig? {
        let next: SluiceConfig
        do {
            next = try SluiceConfig.parse(bytes: file.get().bytes)
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
            return nil
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
