/// An amount of US dollars, exact: a whole number of nano-dollars (10⁻⁹ USD).
///
/// What Sluice charges, reports and stores is always this integer; no binary floating point is
/// ever summed. Prices are finer (see `TokenPrice`), and a request's cost is rounded up to the
/// nano-dollar once, when it is computed (`ModelPrice.cost`): the error is below one nano-dollar per
/// request, a dollar per billion requests.
public struct USDAmount: Sendable, Hashable, Comparable, CustomStringConvertible {
    /// 10⁹ nano-dollars make a dollar.
    public static let nanosPerDollar: Int64 = 1_000_000_000
    /// Digits after the decimal point a dollar amount can have.
    public static let fractionDigits = 9

    public static let zero = USDAmount(nanos: 0)

    /// The amount in nano-dollars (may be negative for a difference, never for a price or a cost).
    public var nanos: Int64

    public init(nanos: Int64) {
        self.nanos = nanos
    }

    /// Whole dollars.
    public init(dollars: Int64) {
        self.nanos = dollars * Self.nanosPerDollar
    }

    /// An exact decimal amount: `"5"`, `"0.15"`, `"12.000000001"`, `"1e-06"`; at most 9 digits after
    /// the point (once the exponent is applied). `nil` for anything else, or beyond `Int64`.
    public init?(decimal text: String) {
        guard let value = ExactDecimal(text)?.scaled(toFractionDigits: Self.fractionDigits) else { return nil }
        self.nanos = value
    }

    /// The shortest exact decimal text: `0`, `5`, `0.0000315`, `-0.25` (no exponent, no trailing zeros).
    public var description: String {
        ExactDecimal.format(nanos, fractionDigits: Self.fractionDigits)
    }

    public static func < (lhs: USDAmount, rhs: USDAmount) -> Bool { lhs.nanos < rhs.nanos }
    public static func + (lhs: USDAmount, rhs: USDAmount) -> USDAmount { USDAmount(nanos: lhs.nanos + rhs.nanos) }
    public static func - (lhs: USDAmount, rhs: USDAmount) -> USDAmount { USDAmount(nanos: lhs.nanos - rhs.nanos) }
    public static func += (lhs: inout USDAmount, rhs: USDAmount) { lhs.nanos += rhs.nanos }
}

/// A decimal number read exactly from its text (the config's JSON numbers are turned back into
/// their shortest text before they get here, so `0.15` stays 0.15): an integer mantissa and a
/// power of ten.
struct ExactDecimal {
    /// The digits, sign applied.
    var mantissa: Int64
    /// The value is `mantissa × 10^exponent`.
    var exponent: Int

    /// `-12.5`, `0.075`, `3e-07`, `1.5E+3`. At most 18 significant digits.
    init?(_ text: String) {
        var bytes = Substring(text).utf8[...]
        var negative = false
        if bytes.first == UInt8(ascii: "-") {
            negative = true
            bytes = bytes.dropFirst()
        } else if bytes.first == UInt8(ascii: "+") {
            bytes = bytes.dropFirst()
        }
        var mantissa: Int64 = 0
        var exponent = 0
        var digits = 0
        var seenPoint = false
        var seenDigit = false
        while let byte = bytes.first {
            if byte == UInt8(ascii: ".") {
                guard !seenPoint else { return nil }
                seenPoint = true
            } else if (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) {
                seenDigit = true
                let digit = Int64(byte - UInt8(ascii: "0"))
                if mantissa != 0 || digit != 0 { digits += 1 }
                guard digits <= 18 else { return nil }
                mantissa = mantissa * 10 + digit
                if seenPoint { exponent -= 1 }
            } else {
                break
            }
            bytes = bytes.dropFirst()
        }
        guard seenDigit else { return nil }
        if let byte = bytes.first {
            guard byte == UInt8(ascii: "e") || byte == UInt8(ascii: "E") else { return nil }
            bytes = bytes.dropFirst()
            var exponentNegative = false
            if bytes.first == UInt8(ascii: "-") {
                exponentNegative = true
                bytes = bytes.dropFirst()
            } else if bytes.first == UInt8(ascii: "+") {
                bytes = bytes.dropFirst()
            }
            guard !bytes.isEmpty, bytes.count <= 4, bytes.allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }) else { return nil }
            let value = bytes.reduce(0) { $0 * 10 + Int($1 - UInt8(ascii: "0")) }
            exponent += exponentNegative ? -value : value
        }
        self.mantissa = negative ? -mantissa : mantissa
        self.exponent = exponent
    }

    /// The value as an integer count of 10^-`fractionDigits`; `nil` when that would drop a
    /// non-zero digit or leave `Int64`.
    func scaled(toFractionDigits fractionDigits: Int) -> Int64? {
        var value = mantissa
        var shift = exponent + fractionDigits
        while shift < 0 {
            guard value % 10 == 0 else { return nil }
            value /= 10
            shift += 1
        }
        while shift > 0 {
            let (product, overflow) = value.multipliedReportingOverflow(by: 10)
            guard !overflow else { return nil }
            value = product
            shift -= 1
        }
        return value
    }

    /// `value` × 10^-`fractionDigits` as the shortest plain decimal text.
    static func format(_ value: Int64, fractionDigits: Int) -> String {
        var scale: UInt64 = 1
        for _ in 0..<fractionDigits { scale *= 10 }
        let magnitude = value.magnitude
        let whole = magnitude / scale
        var fraction = magnitude % scale
        var text = (value < 0 ? "-" : "") + String(whole)
        guard fraction != 0 else { return text }
        var width = fractionDigits
        while fraction % 10 == 0 {
            fraction /= 10
            width -= 1
        }
        let digits = String(fraction)
        text += "." + String(repeating: "0", count: width - digits.count) + digits
        return text
    }
}
