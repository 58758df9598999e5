import SluiceCore
import Synchronization

/// Notices when the config file's content changes, by reading it and hashing it once a second, and
/// reports a new content once it has been stable for the settle delay (see `ConfigChangeDetector`).
///
/// Why polling and not inotify: reading the path follows every symlink on the way, so a Kubernetes
/// ConfigMap update (the mount's `..data` symlink retargeted atomically), an editor that writes a
/// new file and renames it over the old one, and an in-place write are all seen the same way, on any
/// file system (inotify misses changes on NFS and some bind mounts, and sees nothing when a symlink
/// outside the watched directory is retargeted), with no thread or descriptor to manage. The cost
/// is one open, read and SHA-256 of a file of a few KB per second: tens of microseconds (README,
/// "Configuration reference").
final class ConfigFileWatcher: Sendable {
    static let defaultPollInterval: Duration = .seconds(1)
    static let defaultSettleDelay: Duration = .milliseconds(500)

    let path: String
    let pollInterval: Duration
    private let detector: Mutex<ConfigChangeDetector>

    /// - Parameter baseline: the content loaded at start; only a different one is reported.
    init(path: String, baseline: ConfigFileState, pollInterval: Duration = defaultPollInterval, settleDelay: Duration = defaultSettleDelay) {
        self.path = path
        self.pollInterval = pollInterval
        self.detector = Mutex(ConfigChangeDetector(baseline: baseline, settleDelay: settleDelay))
    }

    /// Looks at the file until the task is cancelled, calling `onChange` with each new content once
    /// it has settled. `onChange` runs on the watching task: it should hand the work on, not do it.
    func run(onChange: @Sendable (ConfigFileState) -> Void) async {
        var next = ContinuousClock.now + pollInterval
        while !Task.isCancelled {
            do { try await Task.sleep(until: next, clock: .continuous) } catch { return }
            let now = ContinuousClock.now
            // A blocking read on the cooperative pool: a few KB from a local file, once a second.
            let state = Self.look(at: path)
            let (settled, nextLook) = detector.withLock { detector in
                (detector.observe(state, at: now), detector.nextLook(after: now, pollInterval: pollInterval))
            }
            if let settled { onChange(settled) }
            next = nextLook
        }
    }

    /// The reload service loaded or refused `state` by other means (see `ConfigChangeDetector.rebase`).
    func rebase(on state: ConfigFileState) {
        detector.withLock { $0.rebase(on: state) }
    }

    /// The file's content as a reload would read it now.
    static func look(at path: String) -> ConfigFileState {
        guard let contents = try? ConfigFileContents.read(path: path) else { return .unreadable }
        return .content(sha256: contents.sha256)
    }
}
