import Glibc

/// The one clock of durations and deadlines: `CLOCK_MONOTONIC`, which never jumps with the wall
/// clock. (Only Redis deadlines use the wall clock: they are compared with Redis' `TIME`.)
public enum MonotonicClock {
    @inline(__always)
    public static func nanoseconds() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
    }

    public static func microseconds() -> Int64 { Int64(nanoseconds() / 1_000) }

    public static func milliseconds() -> Int64 { Int64(nanoseconds() / 1_000_000) }
}
