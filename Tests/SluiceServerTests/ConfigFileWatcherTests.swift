import Foundation
import SluiceCore
import Synchronization
import XCTest
@testable import SluiceServer

/// The watcher against real files in a temporary directory, with short intervals (poll 20 ms,
/// settle 60 ms): every way a config file gets replaced is noticed, and only a content change is.
final class ConfigFileWatcherTests: XCTestCase {
    private var directory: URL!

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("sluice-watch-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: directory)
    }

    func testAnInPlaceWriteIsReported() async throws {
        let file = directory.appendingPathComponent("sluice.json")
        try Data("one".utf8).write(to: file)
        let reported = try await changes(watching: file.path) {
            let handle = try FileHandle(forWritingTo: file)
            try handle.truncate(atOffset: 0)
            try handle.write(contentsOf: Data("two".utf8))
            try handle.close()
        }
        XCTAssertEqual(reported, [.content(sha256: ConfigFileContents(bytes: Array("two".utf8)).sha256)])
    }

    /// What editors do: write a new file beside the old one and rename it over.
    func testANewFileRenamedOverTheOldIsReported() async throws {
        let file = directory.appendingPathComponent("sluice.json")
        try Data("one".utf8).write(to: file)
        let reported = try await changes(watching: file.path) {
            let temporary = directory.appendingPathComponent(".sluice.json.swp")
            try Data("two".utf8).write(to: temporary)
            XCTAssertEqual(rename(temporary.path, file.path), 0)
        }
        XCTAssertEqual(reported, [.content(sha256: ConfigFileContents(bytes: Array("two".utf8)).sha256)])
    }

    /// A Kubernetes ConfigMap mount: `sluice.json -> ..data/sluice.json`, `..data -> ..<timestamp>`;
    /// an update writes a new timestamped directory and retargets `..data` with one rename.
    func testAConfigMapSymlinkSwapIsReported() async throws {
        let fileManager = FileManager.default
        let first = directory.appendingPathComponent("..2026_01_01_00_00_00.1")
        try fileManager.createDirectory(at: first, withIntermediateDirectories: false)
        try Data("one".utf8).write(to: first.appendingPathComponent("sluice.json"))
        try fileManager.createSymbolicLink(atPath: directory.appendingPathComponent("..data").path, withDestinationPath: first.lastPathComponent)
        let file = directory.appendingPathComponent("sluice.json")
        try fileManager.createSymbolicLink(atPath: file.path, withDestinationPath: "..data/sluice.json")
        let reported = try await changes(watching: file.path) {
            let second = directory.appendingPathComponent("..2026_01_01_00_01_00.2")
            try fileManager.createDirectory(at: second, withIntermediateDirectories: false)
            try Data("two".utf8).write(to: second.appendingPathComponent("sluice.json"))
            let link = directory.appendingPathComponent("..data_tmp")
            try fileManager.createSymbolicLink(atPath: link.path, withDestinationPath: second.lastPathComponent)
            XCTAssertEqual(rename(link.path, directory.appendingPathComponent("..data").path), 0)
            try fileManager.removeItem(at: first)
        }
        XCTAssertEqual(reported, [.content(sha256: ConfigFileContents(bytes: Array("two".utf8)).sha256)])
    }

    func testTheSameContentWrittenAgainIsNotReported() async throws {
        let file = directory.appendingPathComponent("sluice.json")
        try Data("one".utf8).write(to: file)
        let reported = try await changes(watching: file.path) {
            try Data("one".utf8).write(to: file, options: .atomic)
        }
        XCTAssertEqual(reported, [])
    }

    func testADeletedFileIsReportedAsUnreadable() async throws {
        let file = directory.appendingPathComponent("sluice.json")
        try Data("one".utf8).write(to: file)
        let reported = try await changes(watching: file.path) {
            try FileManager.default.removeItem(at: file)
        }
        XCTAssertEqual(reported, [.unreadable])
    }

    /// Several writes within the settle delay are one change, to the last content.
    func testWritesInQuickSuccessionAreOneChange() async throws {
        let file = directory.appendingPathComponent("sluice.json")
        try Data("one".utf8).write(to: file)
        let reported = try await changes(watching: file.path, settleDelay: .milliseconds(400)) {
            for step in ["t", "tw", "two"] {
                try Data(step.utf8).write(to: file)
                try await Task.sleep(for: .milliseconds(25))
            }
        }
        XCTAssertEqual(reported, [.content(sha256: ConfigFileContents(bytes: Array("two".utf8)).sha256)])
    }

    /// Starts a watcher on `path` (baseline: its content now), runs `change` once the watcher has
    /// looked at least once, and returns what it reported within the settle delay plus 440 ms.
    private func changes(
        watching path: String, settleDelay: Duration = .milliseconds(60), after change: () async throws -> Void
    ) async throws -> [ConfigFileState] {
        let watcher = ConfigFileWatcher(
            path: path, baseline: ConfigFileWatcher.look(at: path), pollInterval: .milliseconds(20), settleDelay: settleDelay
        )
        let reported = Mutex<[ConfigFileState]>([])
        let task = Task { await watcher.run { state in reported.withLock { $0.append(state) } } }
        try await Task.sleep(for: .milliseconds(50))
        try await change()
        try await Task.sleep(for: settleDelay + .milliseconds(440))
        task.cancel()
        await task.value
        return reported.withLock { $0 }
    }
}
