import ArgumentParser
import SluiceCore

/// `sluice keys …`: client key management.
struct KeysCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keys",
        abstract: "Manage client API keys.",
        subcommands: [NewKeyCommand.self]
    )
}

/// `sluice keys new --id NAME [--tier T]`: makes a secret and the config entry that admits it.
struct NewKeyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "new",
        abstract: "Create a client key: print its secret once and the config entry holding only its hash."
    )

    @Option(help: "The key's id ([A-Za-z0-9_.-]{1,64}), unique in the config.")
    var id: String

    @Option(help: "The tier whose limits the key gets.")
    var tier: String?

    func validate() throws {
        guard KeyConfig.isValidID(id) else {
            throw ValidationError("--id must match [A-Za-z0-9_.-]{1,64}")
        }
        if let tier, !KeyConfig.isValidID(tier) {
            throw ValidationError("--tier must match [A-Za-z0-9_.-]{1,64}")
        }
    }

    func run() throws {
        let secret = BearerSecretGenerator.generate()
        let hash = KeyTable.sha256Hex(of: secret)
        // id and tier are validated to [A-Za-z0-9_.-], so they need no JSON escaping.
        var entry = "{\"id\": \"\(id)\", \"secret_sha256\": \"\(hash)\""
        if let tier { entry += ", \"tier\": \"\(tier)\"" }
        entry += "}"
        print("""
            Secret for key "\(id)" (shown once and stored nowhere; give it to the client as its API key):
              \(secret)

            Config entry for the "keys" array (holds only the SHA-256 of the secret):
              \(entry)
            """)
        if tier == nil {
            print("\nNote: add \"tier\" or \"limits\" to the entry; a key needs one of them.")
        }
    }
}
