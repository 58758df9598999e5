// What the fuzz targets share: a property check that libFuzzer reports as a crash, exact-size
// copies for AddressSanitizer, a seeded generator for choices that must not consume input, and
// the hand-over to libFuzzer's driver.

import CLibFuzzer
#if canImport(Glibc)
import Glibc
#endif

/// Stops the process when a property does not hold. `fatalError` traps, libFuzzer reports the
/// "deadly signal" and saves the input as `crash-<sha1>`.
public func require(_ condition: @autoclosure () -> Bool, _ message: @autoclosure () -> String,
                    file: StaticString = #fileID, line: UInt = #line) {
    if !condition() { fatalError("property violated: \(message())", file: file, line: line) }
}

/// Calls `body` with a heap copy of `bytes` that is exactly `bytes.count` long, so that reading
/// one byte past its end is an AddressSanitizer report (unsafe buffer subscripts are not bounds
/// checked in release builds, and an array's storage may be longer than its count).
public func withExactCopy<R>(of bytes: some Collection<UInt8>, _ body: (UnsafeRawBufferPointer) throws -> R) rethrows -> R {
    let copy = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 1)
    defer { copy.deallocate() }
    _ = copy.initializeMemory(as: UInt8.self, from: bytes)
    return try body(UnsafeRawBufferPointer(copy))
}

/// The input libFuzzer hands to `LLVMFuzzerTestOneInput`, as a buffer (empty for a nil pointer).
public func fuzzInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> UnsafeRawBufferPointer {
    guard let data, size > 0 else { return UnsafeRawBufferPointer(start: nil, count: 0) }
    return UnsafeRawBufferPointer(start: data, count: size)
}

/// A small deterministic generator (SplitMix64): split points and other choices derived from a
/// seed byte, so that they need not be carved out of the bytes under test.
public struct SplitMix64 {
    private var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// A value in `0..<bound` (`bound` > 0).
    public mutating func next(below bound: Int) -> Int { Int(next() % UInt64(bound)) }
}

/// Cuts `0..<count` into consecutive ranges: every byte alone when `seed` is 0, else up to 16
/// cuts at positions drawn from `seed` (empty ranges included: a zero-byte chunk is legal).
public func splitRanges(count: Int, seed: UInt8) -> [Range<Int>] {
    if seed == 0 { return (0..<count).map { $0..<($0 + 1) } }
    var random = SplitMix64(seed: UInt64(seed) << 32 | UInt64(count))
    var cuts = (0..<(1 + random.next(below: 16))).map { _ in random.next(below: count + 1) }
    cuts.sort()
    var ranges: [Range<Int>] = []
    var start = 0
    for cut in cuts + [count] {
        ranges.append(start..<cut)
        start = cut
    }
    return ranges
}

/// Hands the process to libFuzzer (its flags and inputs come from the command line), which calls
/// the target's `LLVMFuzzerTestOneInput` once per input. Called from each target's `main.swift`.
public func runLibFuzzer() -> Never {
    var argc = CommandLine.argc
    var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
    exit(LLVMFuzzerRunDriver(&argc, &argv, LLVMFuzzerTestOneInput))
}
