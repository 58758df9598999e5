import ArgumentParser
import Foundation
import SluiceCore

/// A config file that a `keys` command reads and may replace: its text and the config it holds.
///
/// Upstream API key variables need not be set here (the command only edits the file); everything
/// else must be valid before and after an edit. A replacement is validated with the config loader,
/// written to a temporary file in the same directory, flushed, and renamed over the file, so a
/// node reloading at any moment reads either the old file or the new one, whole.
struct EditableConfigFile {
    let path: String
    let text: [UInt8]
    let config: SluiceConfig

    /// Reads and validates `path`, or exits with status 2 after printing every problem.
    init(path: String) throws {
        self.path = path
        guard let data = FileManager.default.contents(atPath: path) else {
            FileHandle.standardError.write(Data("sluice: cannot read \(path)\n".utf8))
            throw ExitCode(2)
        }
        text = Array(data)
        do {
            config = try SluiceConfig.parse(bytes: text, requireMachineSecrets: false)
        } catch {
            FileHandle.standardError.write(Data("sluice: \(path) is not a valid config:\n\(error)\n".utf8))
            throw ExitCode(2)
        }
    }

    /// The editor over the file's text, or exits with status 1 when the text cannot be mapped.
    func editor(_ text: [UInt8]? = nil) throws -> ConfigKeysEditor {
        do {
            return try ConfigKeysEditor(text: text ?? self.text)
        } catch {
            fail("cannot edit \(path): \(error)")
        }
    }

    /// Validates `newText` and atomically replaces the file with it (keeping its permissions); a
    /// symbolic link is followed and its target replaced. Exits with status 1 when the result is
    /// not a valid config (the file is left unchanged).
    func replace(with newText: [UInt8]) throws {
        do {
            _ = try SluiceConfig.parse(bytes: newText, requireMachineSecrets: false)
        } catch {
            fail("the edited config would not be valid; \(path) is unchanged:\n\(error)")
        }
        let target = URL(fileURLWithPath: path).resolvingSymlinksInPath().path
        let directory = (target as NSString).deletingLastPathComponent
        let temporary = (directory.isEmpty ? "." : directory) + "/." + (target as NSString).lastPathComponent + ".sluice-\(getpid()).tmp"
        var status = stat()
        let mode = stat(target, &status) == 0 ? status.st_mode & 0o7777 : 0o644
        let descriptor = open(temporary, O_WRONLY | O_CREAT | O_EXCL, mode)
        guard descriptor >= 0 else { fail("cannot create \(temporary): \(String(cString: strerror(errno)))") }
        var written = 0
        let ok = newText.withUnsafeBytes { buffer -> Bool in
            while written < buffer.count {
                let result = write(descriptor, buffer.baseAddress! + written, buffer.count - written)
                if result < 0 {
                    if errno == EINTR { continue }
                    return false
                }
                written += result
            }
            return fsync(descriptor) == 0
        }
        let reason = String(cString: strerror(errno))
        close(descriptor)
        guard ok, rename(temporary, target) == 0 else {
            unlink(temporary)
            fail("cannot write \(target): \(reason)")
        }
    }

    /// The index in `keys` of the key `id`, or exits with status 1.
    func indexOfKey(_ id: String) -> Int {
        guard let index = config.keys.firstIndex(where: { $0.id == id }) else {
            fail("no key \"\(id)\" in \(path)")
        }
        return index
    }
}

/// Prints `message` on standard error and exits with status 1.
func fail(_ message: String) -> Never {
    FileHandle.standardError.write(Data("sluice: \(message)\n".utf8))
    Foundation.exit(1)
}

/// The reminder printed after a command changed a config file.
func reloadReminder(_ path: String) -> String {
    "\(path) updated. Running nodes apply it on reload: send SIGHUP to each (kill -HUP <pid>)."
}
