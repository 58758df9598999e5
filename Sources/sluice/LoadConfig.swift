import ArgumentParser
import Foundation
import SluiceCore

/// Loads a config for a command that needs a valid one, or exits with status 2 after printing every
/// problem (with its JSON path) on standard error.
func loadConfigOrExit(_ path: String) throws -> SluiceConfig {
    try loadConfigFileOrExit(path).config
}

/// `loadConfigOrExit`, also returning the bytes the config was parsed from (for their hash).
func loadConfigFileOrExit(_ path: String) throws -> (config: SluiceConfig, file: ConfigFileContents) {
    do {
        let file = try ConfigFileContents.read(path: path)
        return (try SluiceConfig.parse(bytes: file.bytes), file)
    } catch {
        FileHandle.standardError.write(Data("sluice: \(path) is not a valid config:\n\(error)\n".utf8))
        throw ExitCode(2)
    }
}
