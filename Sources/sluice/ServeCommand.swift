import ArgumentParser
import Foundation
import Logging
import SluiceCore
import SluiceServer

struct ServeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "serve",
        abstract: "Run the gateway."
    )

    @Option(name: .long, help: "Path to the JSON config file.")
    var config: String = "Config/sluice.json"

    @Option(name: .long, help: "Log level: trace, debug, info, notice, warning, error, critical.")
    var logLevel: String = ProcessInfo.processInfo.environment["SLUICE_LOG_LEVEL"] ?? "info"

    func run() async throws {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var handler = LogLineHandler(label: label)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "sluice")
        let loaded = try loadConfigFileOrExit(config)
        let node: SluiceNode
        do {
            node = try SluiceNode(config: loaded.config, configPath: config, configFile: loaded.file, version: SluiceVersion.current, logger: logger)
        } catch {
            logger.critical("cannot start", metadata: ["error": "\(error)"])
            throw ExitCode(1)
        }
        try await node.run(logger: logger)
    }
}
