import Foundation
import SluiceCore

/// What `/readyz` says about the config in force, so an operator can check that every node runs the
/// same file: its SHA-256, when it was loaded, and how the last reload went (a refused reload leaves
/// the hash and the time of the config still in force).
public struct ConfigStatus: Sendable, Equatable {
    public enum LastReload: String, Sendable {
        /// No reload since start.
        case none
        case ok
        case refused
    }

    /// Of the file's bytes, lowercase hex (see `ConfigFileContents`).
    public var sha256: String
    public var loadedAt: Date
    public var lastReload: LastReload

    public init(sha256: String, loadedAt: Date = Date(), lastReload: LastReload = .none) {
        self.sha256 = sha256
        self.loadedAt = loadedAt
        self.lastReload = lastReload
    }

    /// `{"sha256":"<first 12 hex>","loaded_at":"<RFC 3339, UTC>","last_reload":"ok"}`: every value
    /// is hex, a timestamp or a fixed word, so none needs escaping.
    var json: String {
        let loadedAt = loadedAt.formatted(Date.ISO8601FormatStyle(includingFractionalSeconds: true))
        return #"{"sha256":"\#(sha256.prefix(12))","loaded_at":"\#(loadedAt)","last_reload":"\#(lastReload.rawValue)"}"#
    }
}
