import Crypto

/// A client API key, authenticated: who it is and what it may do.
public struct APIKey: Sendable, Hashable {
    /// The configured id (`[A-Za-z0-9_.-]{1,64}`), used in logs, metrics and limiter keys.
    public let id: String
    public let limits: ResolvedLimits
    /// `nil`: every model some upstream serves.
    public let allowedModels: [ModelMatcher]?
    /// The output reservation of a request that sets no `max_tokens` / `max_completion_tokens`.
    public let defaultOutputTokens: Int
    /// The key's remaining limits are exported as metrics (`"metrics": true` in its config entry).
    public let exportsMetrics: Bool
    /// Input tokens reserved beyond the counted ones for a Responses request continuing a stored
    /// conversation (`previous_response_allowance_tokens`).
    public let previousResponseAllowanceTokens: Int
    /// The subscription plan its requests are priced under (`keys[].plan`); `nil`: none.
    public var plan: String?
    /// Its team and the team's limits (`keys[].team`); `nil`: none.
    public var team: TeamSubject?

    public init(id: String, limits: ResolvedLimits, allowedModels: [ModelMatcher]?, defaultOutputTokens: Int, exportsMetrics: Bool = false,
                previousResponseAllowanceTokens: Int = KeyConfig.defaultPreviousResponseAllowanceTokens) {
        self.id = id
        self.previousResponseAllowanceTokens = previousResponseAllowanceTokens
        self.exportsMetrics = exportsMetrics
        self.limits = limits
        self.allowedModels = allowedModels
        self.defaultOutputTokens = defaultOutputTokens
    }

    /// Whether this key may call `model` (whether an upstream serves it is the router's question).
    public func mayUse(model: String) -> Bool {
        guard let allowedModels else { return true }
        return allowedModels.contains { $0.matches(model) }
    }
}

/// The SHA-256 of a bearer secret as four words: a cheap dictionary key.
struct SecretDigest: Hashable, Sendable {
    let w0: UInt64, w1: UInt64, w2: UInt64, w3: UInt64

    init(_ digest: SHA256.Digest) {
        // Runs per request: accumulate in locals, no array.
        var w0: UInt64 = 0, w1: UInt64 = 0, w2: UInt64 = 0, w3: UInt64 = 0
        for (index, byte) in digest.enumerated() {
            let bits = UInt64(byte) << UInt64(8 * (index % 8))
            switch index / 8 {
            case 0: w0 |= bits
            case 1: w1 |= bits
            case 2: w2 |= bits
            default: w3 |= bits
            }
        }
        (self.w0, self.w1, self.w2, self.w3) = (w0, w1, w2, w3)
    }

    /// Parses 64 hex characters (validated by the config reader); `nil` otherwise.
    init?(hex: String) {
        let bytes = Array(hex.utf8)
        guard bytes.count == 64 else { return nil }
        var words = [UInt64](repeating: 0, count: 4)
        for (index, byte) in bytes.enumerated() {
            let nibble: UInt8
            switch byte {
            case UInt8(ascii: "0")...UInt8(ascii: "9"): nibble = byte - UInt8(ascii: "0")
            case UInt8(ascii: "a")...UInt8(ascii: "f"): nibble = byte - UInt8(ascii: "a") + 10
            case UInt8(ascii: "A")...UInt8(ascii: "F"): nibble = byte - UInt8(ascii: "A") + 10
            default: return nil
            }
            // Byte i of the digest is hex pair i and sits at bit 8 · (i mod 8) of word i / 8,
            // as in init(_: SHA256.Digest).
            let byteIndex = index / 2
            let shift = UInt64(8 * (byteIndex % 8) + (index % 2 == 0 ? 4 : 0))
            words[byteIndex / 8] |= UInt64(nibble) << shift
        }
        (w0, w1, w2, w3) = (words[0], words[1], words[2], words[3])
    }

    /// Compares all 256 bits without an early exit.
    func constantTimeEquals(_ other: SecretDigest) -> Bool {
        ((w0 ^ other.w0) | (w1 ^ other.w1) | (w2 ^ other.w2) | (w3 ^ other.w3)) == 0
    }
}

/// The keys of one configuration, indexed for authentication. An immutable snapshot: a config
/// reload builds a new table and swaps it in whole.
///
/// ## Why hash, look up, then compare in constant time
/// The file holds only SHA-256 digests of the secrets. A presented secret is hashed and the digest
/// looked up in a dictionary: O(1) whatever the number of keys. The lookup's timing depends on the
/// digest, not on the secret, and learning digest bits does not help an attacker find a secret
/// (SHA-256 is preimage resistant), so no secret-dependent timing leaks. The final comparison of the
/// full 256-bit digest is nevertheless done in constant time, so that no step of the check ever
/// exits early on a partial match, whatever the dictionary's equality does.
///
/// ## Expiry
/// A key's `expires_at` ends all its secrets; a previous secret (kept by a rotation) ends at its own
/// `expires_at` or the key's, whichever is first. An expired secret is refused like an unknown one
/// (401), after the same lookup and comparison; the clock is read only for a secret that expires.
public struct KeyTable: Sendable {
    /// One secret's digest, the key it authenticates, and until when.
    private struct Entry: Sendable {
        let digest: SecretDigest
        let key: APIKey
        /// `nil`: never expires.
        let expiresAt: UTCTimestamp?
    }

    /// Longer bearer tokens are rejected without hashing (bounded work per request).
    public static let maximumSecretBytes = 512

    private let keysByDigest: [SecretDigest: Entry]
    private let keysByID: [String: APIKey]
    /// Every key, in file order.
    public let keys: [APIKey]

    /// Builds the table of `config`'s keys (validated configs have unique ids and hashes; should
    /// two entries share a hash anyway, the first wins).
    public init(config: SluiceConfig) {
        var byDigest: [SecretDigest: Entry] = [:]
        var keys: [APIKey] = []
        for keyConfig in config.keys {
            let limits = ResolvedLimits(tier: keyConfig.tier.flatMap { config.tiers[$0] }, own: keyConfig.limits)
            var key = APIKey(id: keyConfig.id, limits: limits, allowedModels: keyConfig.models, defaultOutputTokens: keyConfig.defaultOutputTokens, exportsMetrics: keyConfig.metrics, previousResponseAllowanceTokens: keyConfig.previousResponseAllowanceTokens)
            key.plan = keyConfig.plan
            key.team = keyConfig.team.map { TeamSubject(id: $0, limits: ResolvedLimits(tier: nil, own: config.teams[$0])) }
            keys.append(key)
            if let digest = SecretDigest(hex: keyConfig.secretSHA256), byDigest[digest] == nil {
                byDigest[digest] = Entry(digest: digest, key: key, expiresAt: keyConfig.expiresAt)
            }
            for previous in keyConfig.previousSecrets {
                guard let digest = SecretDigest(hex: previous.secretSHA256), byDigest[digest] == nil else { continue }
                let expiresAt = keyConfig.expiresAt.map { min($0, previous.expiresAt) } ?? previous.expiresAt
                byDigest[digest] = Entry(digest: digest, key: key, expiresAt: expiresAt)
            }
        }
        self.keysByDigest = byDigest
        self.keys = keys
        self.keysByID = Dictionary(keys.map { ($0.id, $0) }, uniquingKeysWith: { first, _ in first })
    }

    /// The key whose secret is `bearerSecret` (the bytes after `Bearer `), or `nil` for an
    /// unknown, empty, oversized or expired secret. `now` (default: the wall clock, read only when
    /// the secret has an expiry) is the instant expiries are compared with.
    public func authenticate(bearerSecret: UnsafeRawBufferPointer, at now: UTCTimestamp? = nil) -> APIKey? {
        guard !bearerSecret.isEmpty, bearerSecret.count <= Self.maximumSecretBytes else { return nil }
        let presented = SecretDigest(SHA256.hash(data: bearerSecret))
        guard let entry = keysByDigest[presented], entry.digest.constantTimeEquals(presented) else { return nil }
        if let expiresAt = entry.expiresAt, (now ?? .now()) >= expiresAt { return nil }
        return entry.key
    }

    /// The key whose secret is `bearerSecret`; see `authenticate(bearerSecret:at:)`.
    public func authenticate(bearerSecret: some Collection<UInt8>, at now: UTCTimestamp? = nil) -> APIKey? {
        if let result = bearerSecret.withContiguousStorageIfAvailable({ authenticate(bearerSecret: UnsafeRawBufferPointer($0), at: now) }) {
            return result
        }
        let bytes = Array(bearerSecret.prefix(Self.maximumSecretBytes + 1))
        return bytes.withUnsafeBytes { authenticate(bearerSecret: $0, at: now) }
    }

    /// The key whose secret is `bearerSecret`; see `authenticate(bearerSecret:at:)`.
    public func authenticate(bearerSecret: String, at now: UTCTimestamp? = nil) -> APIKey? {
        var secret = bearerSecret
        return secret.withUTF8 { authenticate(bearerSecret: UnsafeRawBufferPointer($0), at: now) }
    }

    /// The key with this id, or `nil`.
    public func key(id: String) -> APIKey? {
        keysByID[id]
    }

    /// The lowercase hex SHA-256 of a secret: the value for `secret_sha256` in the config.
    public static func sha256Hex(of secret: String) -> String {
        let digest = SHA256.hash(data: Array(secret.utf8))
        let hexDigits = Array("0123456789abcdef".utf8)
        var out: [UInt8] = []
        out.reserveCapacity(64)
        for byte in digest {
            out.append(hexDigits[Int(byte >> 4)])
            out.append(hexDigits[Int(byte & 0x0f)])
        }
        return String(decoding: out, as: UTF8.self)
    }
}
