/// What a look at the config path found: the content's SHA-256, or that the file could not be read.
enum ConfigFileState: Hashable, Sendable, CustomStringConvertible {
    case content(sha256: String)
    case unreadable

    /// The first 12 hex digits (enough to tell configs apart in logs), or `unreadable`.
    var description: String {
        switch self {
        case .content(let sha256): String(sha256.prefix(12))
        case .unreadable: "unreadable"
        }
    }
}

/// Decides, from successive looks at the config file, when its content has changed and then stayed
/// the same for `settleDelay`: the debounce that keeps a half-written file or an editor's several
/// writes from being loaded midway. Pure (the caller brings the instants), so its tests need no
/// clock and no files.
///
/// Only the content counts: the same bytes written again, a touch, or a symlink swap to an
/// identical file are no change.
struct ConfigChangeDetector {
    let settleDelay: Duration
    /// The content last loaded or refused; seeing it again is no change.
    private(set) var baseline: ConfigFileState
    /// A content other than the baseline, and when it was first seen.
    private(set) var candidate: (state: ConfigFileState, since: ContinuousClock.Instant)?

    init(baseline: ConfigFileState, settleDelay: Duration) {
        self.baseline = baseline
        self.settleDelay = settleDelay
    }

    /// Records a look at the file made at `now`.
    /// - Returns: the new content once it has been seen unchanged for `settleDelay` (it becomes the
    ///   baseline and is returned once), else `nil`.
    mutating func observe(_ state: ConfigFileState, at now: ContinuousClock.Instant) -> ConfigFileState? {
        guard state != baseline else {
            // Back to what is loaded before settling: nothing happened.
            candidate = nil
            return nil
        }
        guard let candidate, candidate.state == state else {
            // A new content, or another change during the settle delay: the delay starts again.
            self.candidate = (state, now)
            return nil
        }
        guard now - candidate.since >= settleDelay else { return nil }
        baseline = state
        self.candidate = nil
        return state
    }

    /// The reload service loaded or refused `state` without the detector (on SIGHUP, or a content
    /// newer than the one reported): that is now the content to compare with.
    mutating func rebase(on state: ConfigFileState) {
        baseline = state
        if candidate?.state == state { candidate = nil }
    }

    /// When to look next: when a candidate's settle delay ends, else one poll interval after `now`.
    func nextLook(after now: ContinuousClock.Instant, pollInterval: Duration) -> ContinuousClock.Instant {
        if let candidate { return max(now, candidate.since + settleDelay) }
        return now + pollInterval
    }
}
