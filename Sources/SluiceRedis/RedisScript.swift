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

    /// The limiter's entry points (`admit`, `settle`, `snapshot`) as one function library.
    public static func limiterFunctions(named names: [String]) throws(RedisScriptLoadError) -> [String: RedisFunction] {
        let library = try read("gcra.lua")
        var bodies: [(String, [UInt8])] = []
        for name in names { bodies.append((name, try read("\(name).lua"))) }
        return RedisFunction.library(prelude: library, bodies: bodies)
    }
}

/// One entry point of a Redis function library (Redis ≥ 7), with the same code as a plain script
/// for servers without functions.
///
/// Why functions: `EVALSHA` runs the whole script every call, including the shared `gcra.lua`
/// prelude that only defines helpers; measured here, that prelude alone costs several times a
/// trivial script. A library runs its prelude once, at `FUNCTION LOAD`, and each `FCALL` runs only
/// its function's body.
///
/// Versioning: the library and function names carry a hash of the code, so nodes of different
/// Sluice versions sharing one Redis never call each other's functions.
public struct RedisFunction: Sendable, Hashable {
    /// The name `FCALL` uses, e.g. `sluice_admit_1a2b3c4d5e6f`.
    public let name: String
    /// The library holding it, for `FUNCTION LOAD REPLACE` when the server does not know it.
    public let librarySource: [UInt8]
    /// The same code as a script, for `EVALSHA` on servers older than Redis 7.
    public let script: RedisScript

    /// A library of `prelude` (shared helpers; its `corrupt` flag, if it declares one, is reset at
    /// the start of every call) and one function per body. Bodies are written as
    /// scripts (reading `KEYS` and `ARGV`, ending in `return`); in the library they become function
    /// bodies whose `KEYS`/`ARGV` are the library's locals, set from the call's arguments.
    static func library(prelude: [UInt8], bodies: [(name: String, source: [UInt8])]) -> [String: RedisFunction] {
        var everything = prelude
        for (name, body) in bodies { everything += Array(name.utf8) + body }
        let version = String(RedisScript(name: "", source: everything).sha1.prefix(12))
        var source = Array("#!lua name=sluice_\(version)\nlocal KEYS, ARGV, corrupt = {}, {}, 0\n".utf8) + prelude
        for (name, body) in bodies {
            source += Array("\nredis.register_function('sluice_\(name)_\(version)', function(keys, args)\nKEYS, ARGV, corrupt = keys, args, 0\n".utf8)
            source += body
            source += Array("\nend)\n".utf8)
        }
        var functions: [String: RedisFunction] = [:]
        for (name, body) in bodies {
            functions[name] = RedisFunction(
                name: "sluice_\(name)_\(version)",
                librarySource: source,
                script: RedisScript(name: name, source: prelude + Array("\n".utf8) + body)
            )
        }
        return functions
    }
}
