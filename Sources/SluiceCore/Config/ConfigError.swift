/// One thing wrong with a configuration file, located by its JSON path.
public struct ConfigProblem: Sendable, Hashable, CustomStringConvertible {
    /// Where the problem is, e.g. `$.keys[2].tier` (`$` is the document root).
    public let path: String
    /// What is wrong, for a human, e.g. `unknown tier "gold" (known: small, standard)`.
    public let message: String

    public init(path: String, message: String) {
        self.path = path
        self.message = message
    }

    /// `path: message`, the form `sluice check-config` prints one per line.
    public var description: String { "\(path): \(message)" }
}

/// Why a configuration could not be loaded.
public enum ConfigError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The file could not be read (missing, unreadable, or larger than `SluiceConfig.maximumFileBytes`).
    case unreadable(path: String, reason: String)
    /// The document is not valid JSON, or its top level is not an object.
    case malformedJSON(reason: String)
    /// The document is JSON but breaks the format: every problem found, in document order.
    case invalid([ConfigProblem])

    /// The problems one per line, as `sluice check-config` prints them.
    public var description: String {
        switch self {
        case .unreadable(let path, let reason): "cannot read \(path): \(reason)"
        case .malformedJSON(let reason): "$: not valid JSON: \(reason)"
        case .invalid(let problems): problems.map(\.description).joined(separator: "\n")
        }
    }

    /// Every problem, also for the two cases that are not a list (as a single problem at `$`).
    public var problems: [ConfigProblem] {
        switch self {
        case .unreadable(let path, let reason): [ConfigProblem(path: "$", message: "cannot read \(path): \(reason)")]
        case .malformedJSON(let reason): [ConfigProblem(path: "$", message: "not valid JSON: \(reason)")]
        case .invalid(let problems): problems
        }
    }
}
