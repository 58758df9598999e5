import XCTest
@testable import SluiceTokenizer

final class TokenCountCacheTests: XCTestCase {
    private func encoding(_ name: EncodingName = .o200k_base) throws -> BPEEncoding {
        BPEEncoding(name: name, ranks: try LoadedRankTables.table(name))
    }

    private static let longText = String(repeating: "The quick brown fox jumps over the lazy dog. ", count: 4)

    func testRepeatedTextIsCountedOnceAndAgreesWithCounting() throws {
        let encoding = try encoding()
        let cache = TokenCountCache(encoding: encoding)
        let expected = encoding.countOrdinary(Self.longText)
        XCTAssertEqual(cache.countOrdinary(Self.longText), expected)
        XCTAssertEqual(cache.countOrdinary(Self.longText), expected)
        XCTAssertEqual(cache.countOrdinary(String(Self.longText.reversed().reversed())), expected)
        XCTAssertEqual(cache.misses, 1)
        XCTAssertEqual(cache.hits, 2)
    }

    func testShortTextsAreCountedWithoutBeingKept() throws {
        let encoding = try encoding()
        let cache = TokenCountCache(encoding: encoding)
        let short = "hello there"
        XCTAssertEqual(cache.countOrdinary(short), encoding.countOrdinary(short))
        XCTAssertEqual(cache.countOrdinary(short), encoding.countOrdinary(short))
        XCTAssertEqual(cache.hits + cache.misses, 0)
        XCTAssertEqual(cache.heldBytes, 0)
    }

    /// "é" precomposed and "e" + combining acute are equal Swift strings but different bytes with
    /// different token counts: the cache must not answer one with the other's count.
    func testCanonicallyEquivalentSpellingsAreDifferentKeys() throws {
        let encoding = try encoding()
        let cache = TokenCountCache(encoding: encoding)
        let padding = String(repeating: "x", count: 70)
        let composed = padding + "caf\u{E9} caf\u{E9} caf\u{E9}"
        let decomposed = padding + "cafe\u{301} cafe\u{301} cafe\u{301}"
        XCTAssertEqual(composed, decomposed)  // Swift's == is canonical equivalence
        XCTAssertNotEqual(encoding.countOrdinary(composed), encoding.countOrdinary(decomposed))
        XCTAssertEqual(cache.countOrdinary(composed), encoding.countOrdinary(composed))
        XCTAssertEqual(cache.countOrdinary(decomposed), encoding.countOrdinary(decomposed))
        XCTAssertEqual(cache.misses, 2)
    }

    func testMemoryStaysWithinTheBudgetAndRecentTextsSurvive() throws {
        let encoding = try encoding()
        let budget = 64 << 10
        let cache = TokenCountCache(encoding: encoding, budgetBytes: budget)
        let kept = Self.longText + "kept"
        _ = cache.countOrdinary(kept)
        for i in 0..<2_000 {
            _ = cache.countOrdinary(Self.longText + "\(i)")
            XCTAssertLessThanOrEqual(cache.heldBytes, budget)
            // Used every "turn", like a conversation's system prompt: never evicted.
            if i % 100 == 0 { _ = cache.countOrdinary(kept) }
        }
        let missesBefore = cache.misses
        XCTAssertEqual(cache.countOrdinary(kept), encoding.countOrdinary(kept))
        XCTAssertEqual(cache.misses, missesBefore, "a text used every turn stays cached")
        // An early text that was never used again has been dropped.
        _ = cache.countOrdinary(Self.longText + "0")
        XCTAssertEqual(cache.misses, missesBefore + 1)
    }

    func testChatPromptCountsAreTheSameWithTheCache() throws {
        let encoding = try encoding(.cl100k_base)
        let counter = ChatPromptCounter(encoding: encoding)
        let cache = TokenCountCache(encoding: encoding)
        var messages = [ChatMessage(role: "system", content: [.text("You are terse. " + Self.longText)])]
        for turn in 0..<5 {
            messages.append(ChatMessage(role: "user", content: [.text("Question \(turn): " + Self.longText)]))
            let prompt = ChatPrompt(messages: messages)
            XCTAssertEqual(try counter.count(prompt, cache: cache), try counter.count(prompt))
            messages.append(ChatMessage(role: "assistant", content: [.text("Answer \(turn): " + Self.longText)]))
        }
        // Each turn counts only what is new (its question, the previous answer); the rest of the
        // history comes from the cache. Roles are too short to be kept.
        XCTAssertEqual(cache.misses, 2 + 4 * 2)
        XCTAssertEqual(cache.hits, 2 + 4 + 6 + 8)
    }

    func testACacheOfAnotherEncodingIsNotUsed() throws {
        let cl100k = try encoding(.cl100k_base)
        let counter = ChatPromptCounter(encoding: try encoding(.o200k_base))
        let foreign = TokenCountCache(encoding: cl100k)
        let prompt = ChatPrompt(messages: [ChatMessage(role: "user", content: [.text(Self.longText)])])
        XCTAssertEqual(try counter.count(prompt, cache: foreign), try counter.count(prompt))
        XCTAssertEqual(foreign.hits + foreign.misses, 0)
    }
}
