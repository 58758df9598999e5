import Foundation
import XCTest

@testable import SluiceRedis

final class UTCDayTests: XCTestCase {
    func testParsesDaysOfTheCalendar() {
        for (text, year, month, day) in [
            ("2026-12-03", 2026, 12, 3), ("2026-01-31", 2026, 1, 31), ("2026-04-30", 2026, 4, 30),
            ("2024-02-29", 2024, 2, 29), ("2000-02-29", 2000, 2, 29), ("2026-02-28", 2026, 2, 28),
            ("1970-01-01", 1970, 1, 1), ("9999-12-31", 9999, 12, 31),
        ] {
            let parsed = UTCDay(parsing: text)
            XCTAssertEqual(parsed.map { [$0.year, $0.month, $0.day] }, [year, month, day], text)
            XCTAssertEqual(parsed?.text, text, "round trip")
        }
    }

    func testRefusesDaysThatAreNotOnTheCalendar() {
        for text in [
            "2026-13-04", "2026-00-10", "2026-01-32", "2026-01-00", "2026-02-30", "2026-04-31",
            "2026-02-29", "1900-02-29", "2100-02-29", "2026-06-31", "2026-09-31", "2026-11-31",
        ] {
            XCTAssertNil(UTCDay(parsing: text), text)
        }
    }

    func testRefusesOtherShapes() {
        for text in [
            "", "2026-1-04", "2026-01-4", "26-01-04", "2026/01/04", "2026-01-04 ", " 2026-01-04", "2026-01-04T00:00",
            "２０２６-01-04", "2026-0a-04", "+026-01-04", "2026--1-04", "2026-01-+4", "20260104",
        ] {
            XCTAssertNil(UTCDay(parsing: text), text)
        }
    }

    func testEveryDayOfAFourHundredYearCycleRoundTrips() {
        for days in 0..<146_097 {
            let day = UTCDay(daysSinceEpoch: days)
            XCTAssertEqual(UTCDay(parsing: day.text), day)
        }
    }

    func testAcceptsAsManyDaysAsTheYearHas() {
        for (year, length) in [(2026, 365), (2024, 366), (2000, 366), (1900, 365), (2100, 365)] {
            var accepted = 0
            for month in 0...13 {
                for day in 0...32 {
                    let text = "\(year)-\(month < 10 ? "0" : "")\(month)-\(day < 10 ? "0" : "")\(day)"
                    if UTCDay(parsing: text) != nil { accepted += 1 }
                }
            }
            XCTAssertEqual(accepted, length, "\(year)")
        }
    }
}
