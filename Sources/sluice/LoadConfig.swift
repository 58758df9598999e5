import ArgumentParser
import Foundation
import SluiceCore

/// Loads a config for a command that needs a valid one, or exits with status 2 after printing every
/// problem (with its JSON path) on standard error.
func loadConfigOrExit(_ path: String) throws -> SluiceConfig {
    do {
        return try SluiceConfig.load(path: path)
    } catch {
        FileHandle.standardError.write(Data("sluice: \(path) is not a valid config:\n\(error)\n".utf8))
        throw ExitCode(2)
    }
}
