import ArgumentParser

@main
struct Sluice: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sluice",
        abstract: "An OpenAI-compatible rate-limiting gateway.",
        version: SluiceVersion.current,
        subcommands: [ServeCommand.self, CheckConfigCommand.self, KeysCommand.self, TokensCommand.self, UsageCommand.self, LoadCommand.self]
    )
}
