/// Everything that can go wrong when loading rank files or when counting refuses an input.
///
/// Loading errors carry the path so that a start-up failure names the file to fix; the
/// description of a missing file tells the operator how to fetch the data.
public enum TokenizerError: Error, Sendable, Equatable, CustomStringConvertible {
    /// The rank file does not exist. Rank files are not committed; `scripts/setup` fetches them.
    case missingRankFile(path: String)
    /// The rank file exists but could not be read (`errno` from the failing call).
    case unreadableRankFile(path: String, errno: Int32)
    /// The file's SHA-256 is not the one published for this encoding: a truncated download,
    /// another encoding under this name, or a tampered file. Hashes are lowercase hex.
    case rankFileHashMismatch(path: String, expected: String, actual: String)
    /// A line of the rank file is not `<base64> <rank>` (lines are numbered from 1).
    case malformedRankFile(path: String, line: Int, reason: String)
    /// The input is larger than the caller's limit; refused before any work was done.
    case inputTooLarge(byteCount: Int, limit: Int)

    public var description: String {
        switch self {
        case .missingRankFile(let path):
            return "tokenizer rank file not found at \(path) (run scripts/setup to fetch and verify it)"
        case .unreadableRankFile(let path, let errno):
            return "cannot read tokenizer rank file \(path) (errno \(errno))"
        case .rankFileHashMismatch(let path, let expected, let actual):
            return "tokenizer rank file \(path) has SHA-256 \(actual), expected \(expected) (run scripts/setup to fetch it again)"
        case .malformedRankFile(let path, let line, let reason):
            return "tokenizer rank file \(path), line \(line): \(reason)"
        case .inputTooLarge(let byteCount, let limit):
            return "input of \(byteCount) bytes exceeds the tokenizer limit of \(limit) bytes"
        }
    }
}
