/// Finds the pieces of cl100k_base's pattern, as spelled in tiktoken 0.14.0:
///
///     '(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+
///     |\s++$|\s*[\r\n]|\s+(?!\S)|\s
///
/// Each branch below is one alternative, tried in order at the start of the piece; the first that
/// matches decides the piece, as in the leftmost-first regex. Some scalar always matches, so
/// pieces tile the text.
struct CL100KPieceScanner {
    let reader: ScalarClassReader

    /// End of the piece that starts at byte `start` (`start < reader.count`).
    @inline(__always)
    func pieceEnd(from start: Int) -> Int {
        let (cls, length) = reader.scalar(at: start)
        let next = start + length

        // '(?i:[sdmt]|ll|ve|re)
        if let end = reader.contractionEnd(at: start) { return end }

        // [^\r\n\p{L}\p{N}]?+\p{L}++
        if cls.intersects(.letter) { return reader.runEnd(from: next, while: .letter) }
        if cls.isWordPrefix, next < reader.count {
            let (following, followingLength) = reader.scalar(at: next)
            if following.intersects(.letter) {
                return reader.runEnd(from: next + followingLength, while: .letter)
            }
        }

        // \p{N}{1,3}+
        if cls.intersects(.number) { return reader.numberGroupEnd(from: start, firstLength: length) }

        // ' ?[^\s\p{L}\p{N}]++[\r\n]*+'
        if cls.isPunctuation {
            return reader.runEnd(from: reader.punctuationRunEnd(from: next), while: .lineBreak)
        }
        if reader.bytes[start] == UInt8(ascii: " "), next < reader.count, reader.scalar(at: next).cls.isPunctuation {
            return reader.runEnd(from: reader.punctuationRunEnd(from: next), while: .lineBreak)
        }

        // The scalar is whitespace.
        let run = reader.whitespaceRun(from: start)
        // \s++$ : a run that reaches the end of the text is one piece.
        if run.end == reader.count { return run.end }
        // \s*[\r\n] : up to and including the run's last CR or LF.
        if let lineBreakEnd = run.lineBreakEnd { return lineBreakEnd }
        // \s+(?!\S) : all but the last scalar, which goes to the next piece.
        if run.lastStart > start { return run.lastStart }
        // \s
        return next
    }
}
