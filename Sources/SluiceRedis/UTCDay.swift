import Foundation
import SluiceCore

/// A calendar day in UTC, named `YYYY-MM-DD` as in the usage keys (`sluice:{k}:usage:<day>`).
public struct UTCDay: Sendable, Hashable, CustomStringConvertible {
    public let year: Int
    public let month: Int
    public let day: Int

    /// The UTC day containing `date`.
    public init(_ date: Date) {
        self.init(daysSinceEpoch: Int((date.timeIntervalSince1970 / 86_400).rounded(.down)))
    }

    /// The day `days` after 1970-01-01 (proleptic Gregorian; the same algorithm as
    /// `civilFromDays` in gcra.lua).
    public init(daysSinceEpoch days: Int) {
        (year, month, day) = CivilCalendar.date(daysSinceEpoch: days)
    }

    /// The day `text` names as `YYYY-MM-DD` (the shape ``text`` writes, years 0000–9999), or nil when
    /// `text` has another shape or names no day of the calendar: month 13, day 32, February 30,
    /// February 29 of a common year.
    public init?(parsing text: String) {
        let bytes = Array(text.utf8)
        guard bytes.count == 10, bytes[4] == UInt8(ascii: "-"), bytes[7] == UInt8(ascii: "-") else { return nil }
        func number(_ range: Range<Int>) -> Int? {
            var value = 0
            for byte in bytes[range] {
                guard (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) else { return nil }
                value = value * 10 + Int(byte - UInt8(ascii: "0"))
            }
            return value
        }
        guard let year = number(0..<4), let month = number(5..<7), let day = number(8..<10),
              (1...12).contains(month), (1...CivilCalendar.daysIn(month: month, year: year)).contains(day)
        else { return nil }
        self.year = year
        self.month = month
        self.day = day
    }

    /// `YYYY-MM-DD`. Ten bytes, so Swift stores it inline (no allocation).
    public var text: String {
        guard (0...9999).contains(year) else {
            return "\(year)-\(month < 10 ? "0" : "")\(month)-\(day < 10 ? "0" : "")\(day)"
        }
        return String(unsafeUninitializedCapacity: 10) { bytes in
            func put(_ value: Int, at end: Int, width: Int) {
                var value = value
                for index in stride(from: end, to: end - width, by: -1) {
                    bytes[index] = UInt8(ascii: "0") + UInt8(value % 10)
                    value /= 10
                }
            }
            put(year, at: 3, width: 4)
            bytes[4] = UInt8(ascii: "-")
            put(month, at: 6, width: 2)
            bytes[7] = UInt8(ascii: "-")
            put(day, at: 9, width: 2)
            return 10
        }
    }

    public var description: String { text }

    /// Days from 1970-01-01 to this day.
    public var daysSinceEpoch: Int { CivilCalendar.daysSinceEpoch(year: year, month: month, day: day) }
}
