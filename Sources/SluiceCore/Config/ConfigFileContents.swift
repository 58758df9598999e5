import Crypto
import Foundation

/// The bytes of a config file, read once, and their SHA-256: a node parses exactly the bytes it
/// hashed, so the hash it reports (`/readyz`, `sluice_config_info`) is the hash of the config in
/// force, and two nodes with the same hash run the same file.
public struct ConfigFileContents: Sendable, Equatable {
    public let bytes: [UInt8]
    /// Lowercase hex, 64 digits; the same as `sha256sum` prints for the file.
    public let sha256: String

    public init(bytes: [UInt8]) {
        self.bytes = bytes
        self.sha256 = SHA256.hash(data: bytes).map { byte in
            let hex = String(byte, radix: 16)
            return byte < 16 ? "0" + hex : hex
        }.joined()
    }

    /// Reads the file at `path` (following symlinks, as a Kubernetes ConfigMap mount needs).
    /// - Throws: `ConfigError.unreadable` if it is missing, not readable, or larger than
    ///   `SluiceConfig.maximumFileBytes`.
    public static func read(path: String) throws(ConfigError) -> ConfigFileContents {
        // One open and a bounded read, no stat first: `stat` through Foundation does not follow
        // symlinks, and the file may be replaced between a stat and the read.
        let handle: FileHandle
        do {
            handle = try FileHandle(forReadingFrom: URL(fileURLWithPath: path))
        } catch {
            throw .unreadable(path: path, reason: "no such file or not accessible")
        }
        defer { try? handle.close() }
        let data: Data
        do {
            data = try handle.read(upToCount: SluiceConfig.maximumFileBytes + 1) ?? Data()
        } catch {
            throw .unreadable(path: path, reason: error.localizedDescription)
        }
        guard data.count <= SluiceConfig.maximumFileBytes else {
            throw .unreadable(path: path, reason: "larger than the \(SluiceConfig.maximumFileBytes)-byte limit")
        }
        return ConfigFileContents(bytes: Array(data))
    }
}
