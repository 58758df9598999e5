#if canImport(Darwin)
import Darwin
#elseif canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// An immutable map from a token's bytes to its rank, laid out for fast lookups of byte ranges.
///
/// One open-addressing table (linear probing, load factor ≤ 0.5) of 16-byte slots. A token of at
/// most 8 bytes lives entirely in its slot: its bytes packed little-endian into a `UInt64` plus its
/// length. A longer token keeps its first 8 bytes in the slot (so most mismatches are rejected
/// without touching the arena) and all its bytes in a shared arena. About 8 MB for o200k_base
/// against the ~100 MB a `[[UInt8]: UInt32]` dictionary costs, and no per-token allocation.
///
/// Immutable after construction, hence `@unchecked Sendable`.
final class RankTable: @unchecked Sendable {
    /// `meta` is the token length in bits 0–7 and, for tokens longer than 8 bytes, the arena
    /// offset in bits 8–31. A zero `meta` marks an empty slot (no token is empty).
    struct Slot {
        var key: UInt64
        var rank: UInt32
        var meta: UInt32
    }

    /// Returned by lookups for byte strings that are not tokens. Never a real rank.
    static let absent = UInt32.max
    /// Tokens must fit the 8-bit length field of a slot.
    static let maxTokenLength = 255
    /// Arena offsets must fit the 24-bit offset field of a slot.
    static let maxArenaSize = 1 << 24

    /// Number of tokens in the table.
    let count: Int
    /// Length of the longest token: longer byte strings are rejected without probing.
    let longestToken: Int

    private let slots: UnsafeMutablePointer<Slot>
    private let mask: Int
    private let shift: UInt64
    private let arena: UnsafeMutablePointer<UInt8>
    private let arenaSize: Int
    private let byteRanks: UnsafeMutablePointer<UInt32>
    /// Ranks of all 65,536 two-byte strings (`absent` for non-tokens), indexed by the bytes read
    /// little-endian: merging starts by looking up every adjacent byte pair, and this 256 KB
    /// table stays in cache where the hash table (4–8 MB) does not.
    private let pairRanks: UnsafeMutablePointer<UInt32>

    private static let multiplier: UInt64 = 0x9E37_79B9_7F4A_7C15
    private static let tailMultiplier: UInt64 = 0xC2B2_AE3D_27D4_EB4F

    /// Takes ownership of memory filled by `RankTable.Builder`.
    fileprivate init(
        slots: UnsafeMutablePointer<Slot>, capacityLog2: Int, count: Int, longestToken: Int,
        arena: UnsafeMutablePointer<UInt8>, arenaSize: Int, byteRanks: UnsafeMutablePointer<UInt32>,
        pairRanks: UnsafeMutablePointer<UInt32>
    ) {
        self.slots = slots
        self.mask = (1 << capacityLog2) - 1
        self.shift = UInt64(64 - capacityLog2)
        self.count = count
        self.longestToken = longestToken
        self.arena = arena
        self.arenaSize = arenaSize
        self.byteRanks = byteRanks
        self.pairRanks = pairRanks
    }

    deinit {
        HugePageMemory.free(slots)
        arena.deallocate()
        byteRanks.deallocate()
        pairRanks.deallocate()
    }

    /// Bytes resident in memory for this table (slots, arena, byte and pair ranks).
    var memoryFootprint: Int {
        (mask + 1) * MemoryLayout<Slot>.stride + arenaSize + (256 + 65_536) * MemoryLayout<UInt32>.stride
    }

    /// The rank of a single byte (every byte is a token in both encodings; checked at load).
    @inline(__always)
    func rank(ofByte byte: UInt8) -> UInt32 {
        byteRanks[Int(byte)]
    }

    /// The rank of the two bytes at `bytes`, or `RankTable.absent`.
    @inline(__always)
    func rank(ofPairAt bytes: UnsafePointer<UInt8>) -> UInt32 {
        pairRanks[Int(UInt16(littleEndian: UnsafeRawPointer(bytes).loadUnaligned(as: UInt16.self)))]
    }

    /// The rank of the `count` bytes at `bytes`, or `RankTable.absent` when they are not a token.
    /// `count` must be at least 1; the bytes are only read inside `bytes..<bytes + count`.
    @inline(__always)
    func rank(of bytes: UnsafePointer<UInt8>, count: Int) -> UInt32 {
        if count == 2 { return rank(ofPairAt: bytes) }
        if count <= 8 {
            let key = Self.pack(bytes, count: count)
            let meta = UInt32(truncatingIfNeeded: count)
            var index = slotIndex(Self.hashShort(key, count: count))
            while true {
                let slot = slots[index]
                if slot.meta == meta && slot.key == key { return slot.rank }
                if slot.meta == 0 { return Self.absent }
                index = (index + 1) & mask
            }
        }
        if count > longestToken { return Self.absent }
        let raw = UnsafeRawPointer(bytes)
        let head = UInt64(littleEndian: raw.loadUnaligned(as: UInt64.self))
        let tail = UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: count - 8, as: UInt64.self))
        let length = UInt32(truncatingIfNeeded: count)
        var index = slotIndex(Self.hashLong(head: head, tail: tail, count: count))
        while true {
            let slot = slots[index]
            if slot.meta == 0 { return Self.absent }
            if slot.meta & 0xFF == length && slot.key == head
                && memcmp(arena + Int(slot.meta >> 8) + 8, bytes + 8, count - 8) == 0
            {
                return slot.rank
            }
            index = (index + 1) & mask
        }
    }

    @inline(__always)
    private func slotIndex(_ hash: UInt64) -> Int {
        Int(truncatingIfNeeded: hash >> shift)
    }

    /// Packs 1...8 bytes little-endian into a `UInt64` with overlapping loads, never reading
    /// outside the range.
    @inline(__always)
    static func pack(_ bytes: UnsafePointer<UInt8>, count: Int) -> UInt64 {
        let raw = UnsafeRawPointer(bytes)
        switch count {
        case 8:
            return UInt64(littleEndian: raw.loadUnaligned(as: UInt64.self))
        case 4...7:
            let low = UInt64(UInt32(littleEndian: raw.loadUnaligned(as: UInt32.self)))
            let high = UInt64(UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: count - 4, as: UInt32.self)))
            return low | (high << UInt64((count - 4) * 8))
        case 2, 3:
            let low = UInt64(UInt16(littleEndian: raw.loadUnaligned(as: UInt16.self)))
            let high = UInt64(UInt16(littleEndian: raw.loadUnaligned(fromByteOffset: count - 2, as: UInt16.self)))
            return low | (high << UInt64((count - 2) * 8))
        default:
            return UInt64(bytes[0])
        }
    }

    @inline(__always)
    static func hashShort(_ key: UInt64, count: Int) -> UInt64 {
        (key &+ UInt64(truncatingIfNeeded: count)) &* multiplier
    }

    @inline(__always)
    static func hashLong(head: UInt64, tail: UInt64, count: Int) -> UInt64 {
        let mixedTail = tail &* tailMultiplier
        return (head ^ ((mixedTail << 31) | (mixedTail >> 33)) &+ UInt64(truncatingIfNeeded: count)) &* multiplier
    }
}

// MARK: - Building

extension RankTable {
    /// Fills a table token by token; `finish()` hands the memory to an immutable `RankTable`.
    /// Used only by the rank-file parser (and tests), never after loading.
    struct Builder: ~Copyable {
        enum InsertError: Error { case duplicate, tooLong, arenaFull }

        private let slots: UnsafeMutablePointer<Slot>
        private let capacityLog2: Int
        private let mask: Int
        private var arena: [UInt8] = []
        private var count = 0
        private var longestToken = 0
        private var finished = false

        /// Room for `expectedCount` tokens at a load factor of at most 0.5.
        init(expectedCount: Int) {
            var log2 = 9
            while (1 << log2) < 2 * max(expectedCount, 1) { log2 += 1 }
            capacityLog2 = log2
            mask = (1 << log2) - 1
            slots = HugePageMemory.allocate(Slot.self, count: 1 << log2)
            slots.initialize(repeating: Slot(key: 0, rank: 0, meta: 0), count: 1 << log2)
        }

        deinit {
            if !finished { HugePageMemory.free(slots) }
        }

        /// Adds one token. The table grows no further than its initial capacity's load factor of
        /// 0.5 would suggest; callers size it from the rank file's line count.
        mutating func insert(_ bytes: UnsafeBufferPointer<UInt8>, rank: UInt32) throws(InsertError) {
            let length = bytes.count
            guard length >= 1, let base = bytes.baseAddress else { throw .tooLong }
            guard length <= RankTable.maxTokenLength else { throw .tooLong }
            precondition(count < mask, "rank table builder sized too small")
            let key: UInt64
            let hash: UInt64
            var meta = UInt32(length)
            if length <= 8 {
                key = RankTable.pack(base, count: length)
                hash = RankTable.hashShort(key, count: length)
            } else {
                let raw = UnsafeRawPointer(base)
                key = UInt64(littleEndian: raw.loadUnaligned(as: UInt64.self))
                let tail = UInt64(littleEndian: raw.loadUnaligned(fromByteOffset: length - 8, as: UInt64.self))
                hash = RankTable.hashLong(head: key, tail: tail, count: length)
                guard arena.count + length <= RankTable.maxArenaSize else { throw .arenaFull }
                meta |= UInt32(arena.count) << 8
            }
            var index = Int(truncatingIfNeeded: hash >> UInt64(64 - capacityLog2))
            while slots[index].meta != 0 {
                let slot = slots[index]
                if slot.meta & 0xFF == UInt32(length) && slot.key == key && sameLongBytes(slot, base, length) {
                    throw .duplicate
                }
                index = (index + 1) & mask
            }
            if length > 8 { arena.append(contentsOf: bytes) }
            slots[index] = Slot(key: key, rank: rank, meta: meta)
            count += 1
            longestToken = max(longestToken, length)
        }

        private func sameLongBytes(_ slot: Slot, _ base: UnsafePointer<UInt8>, _ length: Int) -> Bool {
            if length <= 8 { return true }
            let offset = Int(slot.meta >> 8)
            return arena.withUnsafeBufferPointer { stored in
                memcmp(stored.baseAddress! + offset, base, length) == 0
            }
        }

        /// Freezes the table. Returns nil (and frees the memory) when some single byte is not a
        /// token, since then merging could end on bytes that have no id.
        consuming func finish() -> RankTable? {
            let arenaCopy = UnsafeMutablePointer<UInt8>.allocate(capacity: max(arena.count, 1))
            arena.withUnsafeBufferPointer { stored in
                if let source = stored.baseAddress { arenaCopy.initialize(from: source, count: stored.count) }
            }
            let byteRanks = UnsafeMutablePointer<UInt32>.allocate(capacity: 256)
            let pairRanks = UnsafeMutablePointer<UInt32>.allocate(capacity: 65_536)
            pairRanks.initialize(repeating: RankTable.absent, count: 65_536)
            for index in 0...mask where slots[index].meta == 2 {
                pairRanks[Int(slots[index].key)] = slots[index].rank
            }
            finished = true
            let table = RankTable(
                slots: slots, capacityLog2: capacityLog2, count: count, longestToken: longestToken,
                arena: arenaCopy, arenaSize: arena.count, byteRanks: byteRanks, pairRanks: pairRanks
            )
            var byte = UInt8(0)
            var complete = true
            while true {
                let rank = withUnsafePointer(to: byte) { table.rank(of: $0, count: 1) }
                byteRanks[Int(byte)] = rank
                if rank == RankTable.absent { complete = false }
                if byte == 255 { break }
                byte += 1
            }
            return complete ? table : nil
        }
    }
}

// MARK: - Memory for the slot table

/// Allocation for the multi-megabyte slot table. Lookups land on random slots, so with 4 KB
/// pages nearly every lookup also misses the TLB (a two-level page walk in a VM); on Linux the
/// table is aligned to 2 MB and marked for transparent huge pages, which removes most of those
/// misses (o200k counting went from about 16 to 24 MB/s of CPU time on the 2-core dev VMs).
enum HugePageMemory {
    private static let hugePageSize = 2 << 20

    static func allocate<T>(_ type: T.Type, count: Int) -> UnsafeMutablePointer<T> {
        let byteCount = max(count * MemoryLayout<T>.stride, 1)
        var raw: UnsafeMutableRawPointer?
        let alignment = byteCount >= hugePageSize ? hugePageSize : max(MemoryLayout<T>.alignment, MemoryLayout<UnsafeRawPointer>.size)
        guard posix_memalign(&raw, alignment, byteCount) == 0, let raw else {
            fatalError("out of memory allocating \(byteCount) bytes for a rank table")
        }
        #if os(Linux)
        if byteCount >= hugePageSize {
            _ = madvise(raw, byteCount, MADV_HUGEPAGE)
        }
        #endif
        return raw.bindMemory(to: T.self, capacity: count)
    }

    static func free<T>(_ pointer: UnsafeMutablePointer<T>) {
        #if canImport(Darwin)
        Darwin.free(pointer)
        #elseif canImport(Glibc)
        Glibc.free(pointer)
        #elseif canImport(Musl)
        Musl.free(pointer)
        #endif
    }
}
