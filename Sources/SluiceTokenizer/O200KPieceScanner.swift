/// Finds the pieces of o200k_base's pattern:
///
///     [^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?
///     |[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?
///     |\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+
///
/// "Upperish" is the first bracket (Lu Lt Lm Lo M), "lowerish" the second (Ll Lm Lo M). Each branch
/// below is one alternative in regex order, including the backtracking into the optional prefix:
/// a mark may be that prefix *and* a letter of the word, and which reading wins matters
/// (`"\u{301}ABC"` is `"\u{301}"`, `"ABC"`).
struct O200KPieceScanner {
    let reader: ScalarClassReader

    /// End of the piece that starts at byte `start` (`start < reader.count`).
    @inline(__always)
    func pieceEnd(from start: Int) -> Int {
        let (cls, length) = reader.scalar(at: start)
        let next = start + length
        let hasPrefix = cls.isWordPrefix && next < reader.count

        // Prefix? Upperish* Lowerish+ Contraction?, first with the prefix, then without.
        if hasPrefix, let end = mixedCaseWordEnd(from: next) { return end }
        if cls.isCasedWordScalar, let end = mixedCaseWordEnd(from: start) { return end }

        // Prefix? Upperish+ Lowerish* Contraction?
        if hasPrefix, let end = upperCaseWordEnd(from: next) { return end }
        if cls.intersects(.upperish), let end = upperCaseWordEnd(from: start) { return end }

        // \p{N}{1,3}
        if cls.intersects(.number) { return reader.numberGroupEnd(from: start, firstLength: length) }

        // ' ?[^\s\p{L}\p{N}]+[\r\n/]*'
        if cls.isPunctuation {
            return lineBreakOrSlashRunEnd(from: reader.punctuationRunEnd(from: next))
        }
        if reader.bytes[start] == UInt8(ascii: " "), next < reader.count, reader.scalar(at: next).cls.isPunctuation {
            return lineBreakOrSlashRunEnd(from: reader.punctuationRunEnd(from: next))
        }

        // The scalar is whitespace.
        let run = reader.whitespaceRun(from: start)
        // \s*[\r\n]+ : up to and including the run's last CR or LF.
        if let lineBreakEnd = run.lineBreakEnd { return lineBreakEnd }
        // \s+(?!\S) : the whole run at the end of the text, else all but its last scalar.
        if run.end == reader.count { return run.end }
        if run.lastStart > start { return run.lastStart }
        // \s+
        return run.end
    }

    /// `[Upperish]*[Lowerish]+(contraction)?` at `start`, with the regex's backtracking: if the
    /// greedy upperish run is not followed by a lowerish scalar, the run gives back scalars until
    /// its last one that is lowerish too (Lm, Lo or a mark), which then ends the word.
    @inline(__always)
    private func mixedCaseWordEnd(from start: Int) -> Int? {
        var j = start
        var lastBothEnd: Int?
        while j < reader.count {
            let (cls, length) = reader.scalar(at: j)
            if !cls.intersects(.upperish) {
                if cls.intersects(.lowerish) {
                    return contractionTail(at: reader.runEnd(from: j + length, while: .lowerish))
                }
                break
            }
            j += length
            if cls.intersects(.lowerish) { lastBothEnd = j }
        }
        guard let end = lastBothEnd else { return nil }
        return contractionTail(at: end)
    }

    /// `[Upperish]+[Lowerish]*(contraction)?` at `start`.
    @inline(__always)
    private func upperCaseWordEnd(from start: Int) -> Int? {
        let upperEnd = reader.runEnd(from: start, while: .upperish)
        guard upperEnd > start else { return nil }
        return contractionTail(at: reader.runEnd(from: upperEnd, while: .lowerish))
    }

    @inline(__always)
    private func contractionTail(at i: Int) -> Int {
        reader.contractionEnd(at: i) ?? i
    }

    @inline(__always)
    private func lineBreakOrSlashRunEnd(from i: Int) -> Int {
        var j = i
        while j < reader.count {
            let byte = reader.bytes[j]
            guard byte == UInt8(ascii: "\r") || byte == UInt8(ascii: "\n") || byte == UInt8(ascii: "/") else { break }
            j += 1
        }
        return j
    }
}
