import ArgumentParser
import Foundation
import SluiceCore

/// `sluice keys …`: client key management. The commands that change a file (`new --write`,
/// `revoke`, `rotate`) edit only the key's entry; see `EditableConfigFile`.
struct KeysCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "keys",
        abstract: "Manage client API keys.",
        subcommands: [NewKeyCommand.self, ListKeysCommand.self, RevokeKeyCommand.self, RotateKeyCommand.self]
    )
}

/// A time given on the command line: an RFC 3339 UTC time (`2027-01-31T00:00:00Z`) or a duration
/// from now (`90s`, `30m`, `24h`, `7d`).
struct TimeArgument: ExpressibleByArgument {
    let timestamp: UTCTimestamp

    init(timestamp: UTCTimestamp) {
        self.timestamp = timestamp
    }

    init?(argument: String) {
        if let timestamp = UTCTimestamp(rfc3339: argument) {
            self.timestamp = timestamp
            return
        }
        let units: [Character: Int64] = ["s": 1, "m": 60, "h": 3600, "d": 86_400]
        guard let unit = argument.last.flatMap({ units[$0] }), let count = Int64(argument.dropLast()), count >= 0, count <= 36_500 * 86_400 else {
            return nil
        }
        // From the current whole second, so the time written to the file reads cleanly.
        let now = UTCTimestamp.now().unixMilliseconds / 1000 * 1000
        self.timestamp = UTCTimestamp(unixMilliseconds: now).adding(seconds: count * unit)
    }

    static let help = "an RFC 3339 UTC time (2027-01-31T00:00:00Z) or a duration from now (90s, 30m, 24h, 7d)"
}

/// `sluice keys new --id NAME [--tier T] [--config FILE [--write]]`: makes a secret and the config
/// entry that admits it.
struct NewKeyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "new",
        abstract: "Create a client key: print its secret once and the config entry holding only its hash.",
        discussion: """
            With --config, the tier must exist in that file and the id must be new there; with \
            --write too, the entry is added to the file's "keys" array (the rest of the file is kept \
            byte for byte; the result is validated, then replaces the file atomically). The secret \
            itself is printed once and written nowhere. Exits 1 when a check fails.
            """
    )

    @Option(help: "The key's id ([A-Za-z0-9_.-]{1,64}), unique in the config.")
    var id: String

    @Option(help: "The tier whose limits the key gets.")
    var tier: String?

    @Option(name: .customLong("expires-at"), help: ArgumentHelp("When the key stops authenticating: \(TimeArgument.help).", valueName: "TIME"))
    var expiresAt: TimeArgument?

    @Option(help: "A config file to check the tier and id against (upstream key variables need not be set).")
    var config: String?

    @Flag(help: "Add the entry to the --config file.")
    var write = false

    func validate() throws {
        guard KeyConfig.isValidID(id) else {
            throw ValidationError("--id must match [A-Za-z0-9_.-]{1,64}")
        }
        if let tier, !KeyConfig.isValidID(tier) {
            throw ValidationError("--tier must match [A-Za-z0-9_.-]{1,64}")
        }
        if write && config == nil {
            throw ValidationError("--write needs --config FILE")
        }
        if write && tier == nil {
            throw ValidationError("--write needs --tier: a key in the file needs a tier or limits")
        }
    }

    func run() throws {
        let file = try config.map { try EditableConfigFile(path: $0) }
        if let file {
            if let tier, file.config.tiers[tier] == nil {
                let known = file.config.tiers.keys.sorted().joined(separator: ", ")
                fail("unknown tier \"\(tier)\" in \(file.path) (known: \(known.isEmpty ? "none defined" : known))")
            }
            if file.config.keys.contains(where: { $0.id == id }) {
                fail("a key \"\(id)\" already exists in \(file.path)")
            }
        }
        let secret = BearerSecretGenerator.generate()
        let hash = KeyTable.sha256Hex(of: secret)
        var members: [(name: String, json: String)] = [("id", ConfigKeysEditor.quoted(id)), ("secret_sha256", ConfigKeysEditor.quoted(hash))]
        if let tier { members.append(("tier", ConfigKeysEditor.quoted(tier))) }
        if let expiresAt { members.append(("expires_at", ConfigKeysEditor.quoted(expiresAt.timestamp.rfc3339))) }
        let entry = "{" + members.map { "\"\($0.name)\": \($0.json)" }.joined(separator: ", ") + "}"
        if let file, write {
            let editor = try file.editor()
            // Checked for a hash collision too (astronomically unlikely) by the validation.
            if file.config.keys.contains(where: { $0.secretSHA256 == hash || $0.previousSecrets.contains { $0.secretSHA256 == hash } }) {
                fail("the generated secret's hash is already in \(file.path); run the command again")
            }
            try file.replace(with: editor.appendingKey(members))
        }
        print("""
            Secret for key "\(id)" (shown once and stored nowhere; give it to the client as its API key):
              \(secret)
            """)
        if let file, write {
            print("Entry added to the \"keys\" array (holds only the SHA-256 of the secret):\n  \(entry)\n\(reloadReminder(file.path))")
        } else {
            print("Config entry for the \"keys\" array (holds only the SHA-256 of the secret):\n  \(entry)")
        }
        if tier == nil {
            print("\nNote: add \"tier\" or \"limits\" to the entry; a key needs one of them.")
        }
    }
}

/// `sluice keys list --config FILE`: each key's id, tier, expiry and a short prefix of its secret's
/// hash (never a secret, never a whole hash).
struct ListKeysCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "list",
        abstract: "List the keys of a config file: id, tier, expiry, a short hash prefix of each secret.",
        discussion: """
            One line per secret: a key's current secret, then each previous secret a rotation kept \
            (marked "previous"). STATUS is "active" or "expired" (at the time of the command).
            """
    )

    @Option(help: "The config file.")
    var config: String

    func run() throws {
        let file = try EditableConfigFile(path: config)
        let now = UTCTimestamp.now()
        var rows: [[String]] = [["ID", "TIER", "SECRET", "EXPIRES_AT", "STATUS"]]
        for key in file.config.keys {
            let tier = key.tier ?? (key.limits != nil ? "(own limits)" : "-")
            rows.append([key.id, tier, Self.hashPrefix(key.secretSHA256), key.expiresAt?.rfc3339 ?? "never", Self.status(key.expiresAt, now: now)])
            for previous in key.previousSecrets {
                let expiry = key.expiresAt.map { min($0, previous.expiresAt) } ?? previous.expiresAt
                rows.append([key.id, "(previous)", Self.hashPrefix(previous.secretSHA256), expiry.rfc3339, Self.status(expiry, now: now)])
            }
        }
        let widths = rows[0].indices.map { column in rows.map { $0[column].count }.max() ?? 0 }
        for row in rows {
            let padded = row.enumerated().map { column, cell in
                column == row.count - 1 ? cell : cell + String(repeating: " ", count: widths[column] - cell.count)
            }
            print(padded.joined(separator: "  "))
        }
    }

    /// `sha256:1c590839…`: enough to tell secrets apart, too little to be a secret's hash.
    static func hashPrefix(_ hash: String) -> String {
        "sha256:\(hash.prefix(8))…"
    }

    static func status(_ expiry: UTCTimestamp?, now: UTCTimestamp) -> String {
        guard let expiry else { return "active" }
        return now >= expiry ? "expired" : "active"
    }
}

/// `sluice keys revoke ID --config FILE`: removes the key's entry.
struct RevokeKeyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "revoke",
        abstract: "Remove a key (all its secrets) from a config file.",
        discussion: "The rest of the file is kept byte for byte; the result is validated, then replaces the file atomically."
    )

    @Argument(help: "The key's id.")
    var id: String

    @Option(help: "The config file.")
    var config: String

    func run() throws {
        let file = try EditableConfigFile(path: config)
        let index = file.indexOfKey(id)
        try file.replace(with: try file.editor().removingKey(at: index))
        print("Key \"\(id)\" removed.\n\(reloadReminder(file.path))")
    }
}

/// `sluice keys rotate ID --config FILE [--old-valid-until TIME]`: a new secret for the key, the old
/// one still authenticating until TIME, so clients switch with no downtime. Limits and usage stay
/// on the same key id.
struct RotateKeyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "rotate",
        abstract: "Give a key a new secret; the old one keeps working until --old-valid-until.",
        discussion: """
            The key's secret_sha256 becomes the new secret's hash and the old hash moves to its \
            "previous_secrets" with that expiry (previous secrets already expired are dropped). \
            The new secret is printed once and written nowhere. The rest of the file is kept byte for \
            byte; the result is validated, then replaces the file atomically.
            """
    )

    /// How long the old secret keeps working when `--old-valid-until` is not given.
    static let defaultOldSecretSeconds: Int64 = 24 * 3600

    @Argument(help: "The key's id.")
    var id: String

    @Option(help: "The config file.")
    var config: String

    @Option(name: .customLong("old-valid-until"), help: ArgumentHelp("Until when the old secret keeps authenticating: \(TimeArgument.help). Default: 24h.", valueName: "TIME"))
    var oldValidUntil: TimeArgument?

    func run() throws {
        let file = try EditableConfigFile(path: config)
        let index = file.indexOfKey(id)
        let key = file.config.keys[index]
        let now = UTCTimestamp.now()
        let oldExpiry = oldValidUntil?.timestamp ?? now.adding(seconds: Self.defaultOldSecretSeconds)
        let kept = key.previousSecrets.filter { $0.expiresAt > now }
        let previous = kept + [KeyConfig.PreviousSecret(secretSHA256: key.secretSHA256, expiresAt: oldExpiry)]
        let secret = BearerSecretGenerator.generate()
        let hash = KeyTable.sha256Hex(of: secret)

        let previousJSON = "[" + previous.map {
            "{\"secret_sha256\": \(ConfigKeysEditor.quoted($0.secretSHA256)), \"expires_at\": \(ConfigKeysEditor.quoted($0.expiresAt.rfc3339))}"
        }.joined(separator: ", ") + "]"
        let withPrevious = try file.editor().settingMember(ofKeyAt: index, name: "previous_secrets", json: previousJSON, after: "secret_sha256")
        let rotated = try file.editor(withPrevious).settingMember(ofKeyAt: index, name: "secret_sha256", json: ConfigKeysEditor.quoted(hash), after: "id")
        try file.replace(with: rotated)

        print("""
            New secret for key "\(id)" (shown once and stored nowhere; give it to the client as its API key):
              \(secret)
            The old secret keeps authenticating until \(oldExpiry.rfc3339)\(oldExpiry <= now ? " (already passed: it no longer does)" : "").
            """)
        if kept.count < key.previousSecrets.count {
            print("Dropped \(key.previousSecrets.count - kept.count) previous secret(s) that had expired.")
        }
        if let keyExpiry = key.expiresAt, keyExpiry < oldExpiry {
            print("Note: the key itself expires at \(keyExpiry.rfc3339), which ends every secret of it.")
        }
        print(reloadReminder(file.path))
    }
}
