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

    @Option(name: .long, help: "Log format, text or json (overrides the config's log.format).")
    var logFormat: String? = ProcessInfo.processInfo.environment["SLUICE_LOG_FORMAT"]

    func run() async throws {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        // The config first: it says how to log (its own problems go to standard error as text).
        let loaded = try loadConfigFileOrExit(config)
        var format = loaded.config.log.format
        if let logFormat {
            guard let chosen = LogConfig.Format(rawValue: logFormat) else {
                FileHandle.standardError.write(Data("sluice: --log-format must be text or json, found \"\(logFormat)\"\n".utf8))
                throw ExitCode(2)
            }
            format = chosen
        }
        LoggingSystem.bootstrap { label in
            var handler = LogLineHandler(label: label, format: format)
            handler.logLevel = level
            return handler
        }
        let logger = Logger(label: "sluice")
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
