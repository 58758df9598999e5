import Crypto
import Foundation

/// A Lua script with its SHA-1, ready for `EVALSHA` (and `EVAL` when the server lost it).
public struct RedisScript: Sendable, Hashable {
    /// For logs: the file the script came from, e.g. `admit`.
    public let name: String
    /// The full source sent with `EVAL`.
    public let source: [UInt8]
    /// Lowercase hex SHA-1 of `source`, the name `EVALSHA` and `SCRIPT LOAD` use.
    public let sha1: String

    public init(name: String, source: [UInt8]) {
        self.name = name
        self.source = source
        self.sha1 = Insecure.SHA1.hash(data: source).map { byte in
            let hex = String(byte, radix: 16)
            return byte < 16 ? "0" + hex : hex
        }.joined()
    }

    public init(name: String, source: String) {
        self.init(name: name, source: Array(source.utf8))
    }
}

/// A script resource that could not be loaded.
public struct RedisScriptLoadError: Error, Sendable, Hashable, CustomStringConvertible {
    public let fileName: String
    public let reason: String
    public var description: String { "cannot load Lua script \(fileName): \(reason)" }
}

/// The `.lua` files shipped in this module's `Scripts` resource folder.
public enum RedisScriptFiles {
    /// The directory holding the `.lua` files (inside the `Sluice_SluiceRedis.resources` bundle
    /// that SwiftPM places next to the executable).
    public static var directory: URL? {
        Bundle.module.resourceURL?.appendingPathComponent("Scripts", isDirectory: true)
    }

    /// The bytes of `Scripts/<fileName>`.
    public static func read(_ fileName: String) throws(RedisScriptLoadError) -> [UInt8] {
        guard let directory else { throw RedisScriptLoadError(fileName: fileName, reason: "resource bundle not found") }
        let url = directory.appendingPathComponent(fileName)
        do {
            return Array(try Data(contentsOf: url))
        } catch {
            throw RedisScriptLoadError(fileName: fileName, reason: "\(error)")
        }
    }

    /// A script made of the shared library `gcra.lua` followed by `<name>.lua`, so that the bucket
    /// math exists once in Lua as it exists once in Swift (`GCRABucket`).
    public static func limiterScript(named name: String) throws(RedisScriptLoadError) -> RedisScript {
        let library = try read("gcra.lua")
        let body = try read("\(name).lua")
        return RedisScript(name: name, source: library + Array("\n".utf8) + body)
    }
}
