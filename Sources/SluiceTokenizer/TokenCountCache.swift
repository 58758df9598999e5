#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// Token counts of recently counted texts, for one encoding, keyed by their exact UTF-8 bytes.
///
/// Why: chat clients resend the whole conversation every turn, so most of a prompt's messages were
/// counted moments ago. A hit costs one hash of the bytes instead of pre-tokenizing and merging them.
///
/// Exactness: keys compare byte for byte (Swift's `String ==` would equate canonically equivalent
/// spellings, which tokenize differently), so a hit returns what counting would.
///
/// Bounds: only texts of `minimumTextBytes...maximumTextBytes` are kept (short ones are cheaper to
/// count than to look up; huge ones would crowd out the rest). Memory is two generations of at most
/// `budgetBytes / 2` key bytes each: when the young one is full, the old one is dropped and the young
/// one becomes old; a hit in the old generation moves the entry back to the young one. So a text
/// used every turn stays, and the cache never holds more than `budgetBytes` of texts.
///
/// Not thread-safe: each thread owns its own (see `PromptTokenCounter`), so the hot path takes no
/// lock shared between cores.
public final class TokenCountCache {
    public static let defaultBudgetBytes = 2 << 20
    public static let minimumTextBytes = 64
    public static let maximumTextBytes = 256 << 10

    public let encoding: BPEEncoding
    public let budgetBytes: Int
    private var young: [Key: Int] = [:]
    private var old: [Key: Int] = [:]
    private var youngBytes = 0
    private var oldBytes = 0
    /// Reused by every count on this cache's thread (it holds the merge buffers).
    let scratch = MergeScratch()

    /// Lookups answered from the cache, and texts counted (and kept) because they were not.
    public private(set) var hits = 0
    public private(set) var misses = 0

    public init(encoding: BPEEncoding, budgetBytes: Int = TokenCountCache.defaultBudgetBytes) {
        self.encoding = encoding
        self.budgetBytes = max(budgetBytes, 2 * Self.minimumTextBytes)
    }

    /// Bytes of text held now (both generations).
    public var heldBytes: Int { youngBytes + oldBytes }

    /// `encoding.countOrdinary(text)`, from the cache when `text` was counted recently.
    public func countOrdinary(_ text: String) -> Int {
        let size = text.utf8.count
        guard size >= Self.minimumTextBytes, size <= Self.maximumTextBytes else {
            return encoding.countOrdinary(text, scratch: scratch)
        }
        let key = Key(text: text)
        if let count = young[key] {
            hits += 1
            return count
        }
        if let count = old.removeValue(forKey: key) {
            hits += 1
            oldBytes -= size
            insertYoung(key, count, size: size)
            return count
        }
        misses += 1
        let count = encoding.countOrdinary(text, scratch: scratch)
        insertYoung(key, count, size: size)
        return count
    }

    private func insertYoung(_ key: Key, _ count: Int, size: Int) {
        if youngBytes + size > budgetBytes / 2 {
            old = young
            oldBytes = youngBytes
            young = [:]
            youngBytes = 0
        }
        young[key] = count
        youngBytes += size
    }

    /// A text compared and hashed by its UTF-8 bytes.
    struct Key: Hashable {
        let text: String

        static func == (lhs: Key, rhs: Key) -> Bool {
            guard lhs.text.utf8.count == rhs.text.utf8.count else { return false }
            // Native strings are contiguous UTF-8: one memcmp (the UTF8View iterator is far slower).
            let compared = lhs.text.utf8.withContiguousStorageIfAvailable { left in
                rhs.text.utf8.withContiguousStorageIfAvailable { right in
                    left.count == 0 || memcmp(left.baseAddress!, right.baseAddress!, left.count) == 0
                }
            }
            if let compared = compared ?? nil { return compared }
            return lhs.text.utf8.elementsEqual(rhs.text.utf8)
        }

        func hash(into hasher: inout Hasher) {
            var text = text
            text.withUTF8 { hasher.combine(bytes: UnsafeRawBufferPointer($0)) }
        }
    }
}
