/// Reusable memory for merging the pieces of one text, so that counting allocates per call,
/// not per piece. Not thread-safe: one scratch per call (or per thread).
final class MergeScratch {
    /// Pieces up to this many bytes merge by rescanning for the lowest-rank pair (quadratic, but
    /// fastest for the short pieces of natural text); longer ones use a heap, O(n log n).
    static let linearMergeLimit = 128

    // Linear merge: part boundaries and the rank of each adjacent pair.
    let boundaries: UnsafeMutablePointer<Int32>
    let pairRanks: UnsafeMutablePointer<UInt32>

    // Heap merge, grown on demand: linked list of parts by start offset, pair rank at each part
    // start, and a min-heap of (rank << 32 | start).
    private(set) var heapCapacity = 0
    private(set) var nextPart: UnsafeMutablePointer<Int32>
    private(set) var previousPart: UnsafeMutablePointer<Int32>
    private(set) var partPairRank: UnsafeMutablePointer<UInt32>
    private(set) var heap: UnsafeMutablePointer<UInt64>

    init() {
        boundaries = .allocate(capacity: Self.linearMergeLimit + 1)
        pairRanks = .allocate(capacity: Self.linearMergeLimit)
        nextPart = .allocate(capacity: 1)
        previousPart = .allocate(capacity: 1)
        partPairRank = .allocate(capacity: 1)
        heap = .allocate(capacity: 1)
    }

    deinit {
        boundaries.deallocate()
        pairRanks.deallocate()
        nextPart.deallocate()
        previousPart.deallocate()
        partPairRank.deallocate()
        heap.deallocate()
    }

    /// Makes the heap-merge arrays hold at least `count` entries (+1 for the end sentinel).
    func reserveHeapMerge(_ count: Int) {
        guard count + 1 > heapCapacity else { return }
        let capacity = max(count + 1, heapCapacity * 2)
        nextPart.deallocate()
        previousPart.deallocate()
        partPairRank.deallocate()
        heap.deallocate()
        nextPart = .allocate(capacity: capacity)
        previousPart = .allocate(capacity: capacity)
        partPairRank = .allocate(capacity: capacity)
        // Each merge pops one entry and pushes at most two, so the heap peaks below 2n entries.
        heap = .allocate(capacity: 2 * capacity)
        heapCapacity = capacity
    }
}

// MARK: - Byte-pair merging of one piece

extension RankTable {
    /// The number of tokens `piece` encodes to.
    ///
    /// A piece that is itself a token is one token. Otherwise its bytes start as one part each and
    /// the adjacent pair whose concatenation has the lowest rank is merged (leftmost on ties) until
    /// no adjacent pair is a token — tiktoken's `byte_pair_encode`, the same result for either
    /// strategy below.
    @inline(__always)
    func tokenCount(ofPiece piece: UnsafePointer<UInt8>, count: Int, scratch: MergeScratch) -> Int {
        if count <= 1 { return count }
        if rank(of: piece, count: count) != Self.absent { return 1 }
        if count == 2 { return 2 }
        if count <= MergeScratch.linearMergeLimit {
            return mergeLinear(piece, count: count, scratch: scratch)
        }
        return mergeWithHeap(piece, count: count, scratch: scratch)
    }

    /// Appends the token ids of `piece` to `tokens`.
    func appendTokens(ofPiece piece: UnsafePointer<UInt8>, count: Int, scratch: MergeScratch, to tokens: inout [UInt32]) {
        if count == 0 { return }
        if count == 1 {
            tokens.append(rank(ofByte: piece[0]))
            return
        }
        let whole = rank(of: piece, count: count)
        if whole != Self.absent {
            tokens.append(whole)
            return
        }
        if count <= MergeScratch.linearMergeLimit {
            let parts = mergeLinear(piece, count: count, scratch: scratch)
            let boundaries = scratch.boundaries
            for part in 0..<parts {
                let start = Int(boundaries[part])
                tokens.append(rank(of: piece + start, count: Int(boundaries[part + 1]) - start))
            }
        } else {
            _ = mergeWithHeap(piece, count: count, scratch: scratch)
            let next = scratch.nextPart
            var start = 0
            while start < count {
                let end = Int(next[start])
                tokens.append(rank(of: piece + start, count: end - start))
                start = end
            }
        }
    }

    /// Quadratic merge for short pieces. Leaves the part boundaries in `scratch.boundaries`
    /// (`parts + 1` entries) and returns the number of parts.
    private func mergeLinear(_ piece: UnsafePointer<UInt8>, count: Int, scratch: MergeScratch) -> Int {
        let boundaries = scratch.boundaries
        let pairRanks = scratch.pairRanks
        for index in 0...count { boundaries[index] = Int32(truncatingIfNeeded: index) }
        for index in 0..<(count - 1) { pairRanks[index] = rank(ofPairAt: piece + index) }
        var parts = count
        while parts > 1 {
            var lowest = Self.absent
            var lowestIndex = 0
            for index in 0..<(parts - 1) where pairRanks[index] < lowest {
                lowest = pairRanks[index]
                lowestIndex = index
            }
            if lowest == Self.absent { break }
            // Merge parts i and i+1: drop boundary i+1 and the pair (i+1, i+2), whose left part
            // no longer exists; pairs (i-1, i) and (i, i+1) change and are looked up again.
            let merged = lowestIndex
            for index in (merged + 1)..<parts { boundaries[index] = boundaries[index + 1] }
            if merged + 2 < parts - 1 {
                for index in (merged + 1)..<(parts - 2) { pairRanks[index] = pairRanks[index + 1] }
            }
            parts -= 1
            if merged + 1 < parts {
                let start = Int(boundaries[merged])
                pairRanks[merged] = rank(of: piece + start, count: Int(boundaries[merged + 2]) - start)
            }
            if merged > 0 {
                let start = Int(boundaries[merged - 1])
                pairRanks[merged - 1] = rank(of: piece + start, count: Int(boundaries[merged + 1]) - start)
            }
        }
        return parts
    }

    /// O(n log n) merge for long pieces: parts form a linked list keyed by start offset and a
    /// min-heap holds candidate pairs as `rank << 32 | start`, so the heap order is "lowest rank,
    /// then leftmost" — the linear merge's order. Entries made stale by a merge are skipped when
    /// popped (lazy deletion): an entry is current iff its start is still a part whose pair rank
    /// equals the entry's rank (a rank names one byte string, hence one pair). Leaves the part
    /// list in `scratch.nextPart` and returns the number of parts.
    private func mergeWithHeap(_ piece: UnsafePointer<UInt8>, count: Int, scratch: MergeScratch) -> Int {
        scratch.reserveHeapMerge(count)
        let next = scratch.nextPart
        let previous = scratch.previousPart
        let pairRank = scratch.partPairRank
        let heap = scratch.heap
        var heapCount = 0
        for index in 0..<count {
            next[index] = Int32(truncatingIfNeeded: index + 1)
            previous[index] = Int32(truncatingIfNeeded: index - 1)
            let rank = index + 1 < count ? rank(ofPairAt: piece + index) : Self.absent
            pairRank[index] = rank
            if rank != Self.absent {
                heap[heapCount] = UInt64(rank) << 32 | UInt64(index)
                heapCount += 1
            }
        }
        next[count] = Int32(truncatingIfNeeded: count)
        if heapCount > 1 {
            var index = heapCount / 2 - 1
            while index >= 0 {
                Self.siftDown(heap, count: heapCount, from: index)
                index -= 1
            }
        }
        var parts = count
        while heapCount > 0 {
            let top = heap[0]
            heapCount -= 1
            if heapCount > 0 {
                heap[0] = heap[heapCount]
                Self.siftDown(heap, count: heapCount, from: 0)
            }
            let start = Int(top & 0xFFFF_FFFF)
            let rank = UInt32(truncatingIfNeeded: top >> 32)
            guard pairRank[start] == rank else { continue }

            let right = Int(next[start])
            let afterRight = Int(next[right])
            next[start] = Int32(truncatingIfNeeded: afterRight)
            if afterRight < count { previous[afterRight] = Int32(truncatingIfNeeded: start) }
            pairRank[right] = Self.absent
            parts -= 1

            if afterRight < count {
                let newRank = self.rank(of: piece + start, count: Int(next[afterRight]) - start)
                pairRank[start] = newRank
                if newRank != Self.absent {
                    heap[heapCount] = UInt64(newRank) << 32 | UInt64(start)
                    heapCount += 1
                    Self.siftUp(heap, from: heapCount - 1)
                }
            } else {
                pairRank[start] = Self.absent
            }
            let left = Int(previous[start])
            if left >= 0 {
                let newRank = self.rank(of: piece + left, count: afterRight - left)
                pairRank[left] = newRank
                if newRank != Self.absent {
                    heap[heapCount] = UInt64(newRank) << 32 | UInt64(left)
                    heapCount += 1
                    Self.siftUp(heap, from: heapCount - 1)
                }
            }
        }
        return parts
    }

    @inline(__always)
    private static func siftDown(_ heap: UnsafeMutablePointer<UInt64>, count: Int, from start: Int) {
        var index = start
        let value = heap[index]
        while true {
            var child = 2 * index + 1
            if child >= count { break }
            if child + 1 < count && heap[child + 1] < heap[child] { child += 1 }
            if heap[child] >= value { break }
            heap[index] = heap[child]
            index = child
        }
        heap[index] = value
    }

    @inline(__always)
    private static func siftUp(_ heap: UnsafeMutablePointer<UInt64>, from start: Int) {
        var index = start
        let value = heap[index]
        while index > 0 {
            let parent = (index - 1) / 2
            if heap[parent] <= value { break }
            heap[index] = heap[parent]
            index = parent
        }
        heap[index] = value
    }
}
