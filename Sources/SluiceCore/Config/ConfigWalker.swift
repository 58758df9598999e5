import Foundation

/// The validating walk's bookkeeping: collects every problem instead of stopping at the first,
/// and offers typed field readers that report wrong types and out-of-range values with their
/// JSON path.
struct ConfigWalker {
    private(set) var problems: [ConfigProblem] = []

    mutating func report(_ path: String, _ message: String) {
        problems.append(ConfigProblem(path: path, message: message))
    }

    // MARK: paths

    /// `$.tiers.standard` or, for names that are not plain identifiers, `$.tiers["my tier"]`.
    static func member(_ path: String, _ name: String) -> String {
        let plain = !name.isEmpty && name.utf8.allSatisfy { byte in
            switch byte {
            case UInt8(ascii: "A")...UInt8(ascii: "Z"), UInt8(ascii: "a")...UInt8(ascii: "z"),
                 UInt8(ascii: "0")...UInt8(ascii: "9"), UInt8(ascii: "_"), UInt8(ascii: "-"):
                true
            default:
                false
            }
        }
        if plain { return "\(path).\(name)" }
        let escaped = name.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
        return "\(path)[\"\(escaped)\"]"
    }

    static func element(_ path: String, _ index: Int) -> String { "\(path)[\(index)]" }

    // MARK: shapes

    /// The object's members, or `nil` (reported) if `value` is not an object.
    mutating func object(_ value: ConfigJSON, at path: String) -> [String: ConfigJSON]? {
        if case .object(let members) = value { return members }
        report(path, "expected an object, found \(value.kindDescription)")
        return nil
    }

    /// The array's elements, or `nil` (reported) if `value` is not an array.
    mutating func array(_ value: ConfigJSON, at path: String) -> [ConfigJSON]? {
        if case .array(let elements) = value { return elements }
        report(path, "expected an array, found \(value.kindDescription)")
        return nil
    }

    /// Reports every member of `members` that is not in `known`, with a hint: the dedicated
    /// message of `forbidden` (fields that would hold a secret inline), or the closest known name.
    mutating func rejectUnknownFields(
        _ members: [String: ConfigJSON], known: [String], forbidden: [String: String] = [:], at path: String
    ) {
        for name in members.keys.sorted() where !known.contains(name) {
            let fieldPath = Self.member(path, name)
            if let message = forbidden[name] {
                report(fieldPath, message)
            } else if let suggestion = Self.closest(to: name, among: known) {
                report(fieldPath, "unknown field \"\(name)\" (did you mean \"\(suggestion)\"?)")
            } else {
                report(fieldPath, "unknown field \"\(name)\" (known: \(known.joined(separator: ", ")))")
            }
        }
    }

    // MARK: scalars

    /// A required or defaulted string. Absent → `defaultValue` (or a "missing" problem when `nil`).
    mutating func string(_ members: [String: ConfigJSON], _ name: String, at path: String, default defaultValue: String? = nil, allowEmpty: Bool = false) -> String? {
        let fieldPath = Self.member(path, name)
        guard let value = members[name] else {
            if defaultValue == nil { report(fieldPath, "missing (required)") }
            return defaultValue
        }
        guard case .string(let string) = value else {
            report(fieldPath, "expected a string, found \(value.kindDescription)")
            return nil
        }
        if string.isEmpty && !allowEmpty {
            report(fieldPath, "must not be empty")
            return nil
        }
        return string
    }

    /// An optional string: absent or `null` → `nil`.
    mutating func optionalString(_ members: [String: ConfigJSON], _ name: String, at path: String) -> String? {
        guard let value = members[name], !value.isNull else { return nil }
        return string(members, name, at: path)
    }

    /// A defaulted boolean. Absent → `defaultValue`; another type → reported, and `defaultValue`
    /// returned so the walk can go on.
    mutating func boolean(_ members: [String: ConfigJSON], _ name: String, at path: String, default defaultValue: Bool) -> Bool {
        guard let value = members[name] else { return defaultValue }
        guard case .bool(let bool) = value else {
            report(Self.member(path, name), "expected true or false, found \(value.kindDescription)")
            return defaultValue
        }
        return bool
    }

    /// A defaulted integer within `range`. Absent → `defaultValue`; wrong type or out of range →
    /// reported, and `defaultValue` returned so the walk can go on.
    mutating func integer(_ members: [String: ConfigJSON], _ name: String, at path: String, default defaultValue: Int, range: ClosedRange<Int>) -> Int {
        guard members[name] != nil else { return defaultValue }
        return requiredInteger(members, name, at: path, range: range) ?? defaultValue
    }

    /// An optional integer within `range`: absent or `null` → `nil`.
    mutating func optionalInteger(_ members: [String: ConfigJSON], _ name: String, at path: String, range: ClosedRange<Int>, zeroHint: String? = nil) -> Int? {
        guard let value = members[name], !value.isNull else { return nil }
        return requiredInteger(members, name, at: path, range: range, zeroHint: zeroHint)
    }

    private mutating func requiredInteger(_ members: [String: ConfigJSON], _ name: String, at path: String, range: ClosedRange<Int>, zeroHint: String? = nil) -> Int? {
        let fieldPath = Self.member(path, name)
        guard let value = members[name] else {
            report(fieldPath, "missing (required)")
            return nil
        }
        switch value {
        case .integer(let integer):
            guard range.contains(integer) else {
                var message: String
                if range.upperBound == Int.max {
                    message = "must be at least \(range.lowerBound), found \(integer)"
                } else {
                    message = "must be between \(range.lowerBound) and \(range.upperBound), found \(integer)"
                }
                if integer <= 0, let zeroHint { message += " (\(zeroHint))" }
                report(fieldPath, message)
                return nil
            }
            return integer
        case .number(let number):
            report(fieldPath, "expected an integer, found \(number)")
            return nil
        default:
            report(fieldPath, "expected an integer, found \(value.kindDescription)")
            return nil
        }
    }

    // MARK: did you mean

    /// The known name closest to a misspelled one, if it is close enough to be a typo
    /// (edit distance at most 2, or a quarter of the name for long names).
    static func closest(to name: String, among known: [String]) -> String? {
        let limit = max(2, name.count / 4)
        var best: (name: String, distance: Int)?
        for candidate in known {
            let distance = editDistance(name, candidate)
            if distance <= limit, distance < (best?.distance ?? Int.max) {
                best = (candidate, distance)
            }
        }
        return best?.name
    }

    /// Levenshtein distance over UTF-8 bytes (field names are ASCII).
    static func editDistance(_ a: String, _ b: String) -> Int {
        let a = Array(a.utf8), b = Array(b.utf8)
        if a.isEmpty { return b.count }
        if b.isEmpty { return a.count }
        var previous = Array(0...b.count)
        var current = [Int](repeating: 0, count: b.count + 1)
        for i in 1...a.count {
            current[0] = i
            for j in 1...b.count {
                let substitution = previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)
                current[j] = min(previous[j] + 1, current[j - 1] + 1, substitution)
            }
            swap(&previous, &current)
        }
        return previous[b.count]
    }
}

extension ConfigJSON {
    var isNull: Bool {
        if case .null = self { return true }
        return false
    }
}
