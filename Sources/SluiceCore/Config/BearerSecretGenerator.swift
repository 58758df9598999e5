/// Makes new client secrets: `sk-sluice-` followed by 43 base62 characters (256 bits of
/// entropy: 43 × log2 62 ≈ 256.03), drawn from a cryptographically secure generator.
public enum BearerSecretGenerator {
    public static let prefix = "sk-sluice-"
    /// Base62 characters after the prefix.
    public static let randomCharacterCount = 43
    private static let alphabet = Array("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz".utf8)

    /// A fresh secret from the system CSPRNG (`getrandom(2)` on Linux).
    public static func generate() -> String {
        var generator = SystemRandomNumberGenerator()
        return generate(using: &generator)
    }

    /// A secret drawn from `generator`; only tests pass anything but the system CSPRNG.
    public static func generate(using generator: inout some RandomNumberGenerator) -> String {
        var characters: [UInt8] = Array(prefix.utf8)
        characters.reserveCapacity(prefix.utf8.count + randomCharacterCount)
        while characters.count < prefix.utf8.count + randomCharacterCount {
            // Rejection sampling keeps every character uniform: 248 = 4 × 62, so bytes 248…255
            // are drawn again instead of skewing the first 8 characters.
            let byte = UInt8.random(in: 0...255, using: &generator)
            if byte < 248 { characters.append(alphabet[Int(byte % 62)]) }
        }
        return String(decoding: characters, as: UTF8.self)
    }
}
