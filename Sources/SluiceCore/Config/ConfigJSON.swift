import Foundation

/// A JSON value as the configuration walk sees it: `JSONSerialization`'s `Any` tree sorted into
/// the kinds the format distinguishes (an integer is not a number with a fraction; `true` is not 1).
enum ConfigJSON {
    case null
    case bool(Bool)
    case integer(Int)
    /// A number with a fraction, or an integer outside `Int`'s range.
    case number(Double)
    case string(String)
    case array([ConfigJSON])
    case object([String: ConfigJSON])

    /// Converts `JSONSerialization` output. Unknown Foundation types (none are produced for JSON)
    /// become `.null`, which every field rejects or treats as absent.
    init(foundation value: Any) {
        switch value {
        case is NSNull:
            self = .null
        case let string as String:
            self = .string(string)
        case let number as NSNumber:
            self = ConfigJSON(number: number)
        case let array as [Any]:
            self = .array(array.map(ConfigJSON.init(foundation:)))
        case let object as [String: Any]:
            self = .object(object.mapValues(ConfigJSON.init(foundation:)))
        default:
            self = .null
        }
    }

    private init(number: NSNumber) {
        // JSONSerialization hands booleans back as NSNumbers whose type code is "c" (char) on both
        // Darwin and Linux; JSON numbers never get that code.
        switch String(cString: number.objCType) {
        case "c", "B":
            self = .bool(number.boolValue)
        case "d", "f":
            let double = number.doubleValue
            if double.rounded(.towardZero) == double, let exact = Int(exactly: double) {
                // "2.0" is written as a number with a fraction; accept it as the integer 2 only if
                // nothing is lost (common in generated files).
                self = .integer(exact)
            } else {
                self = .number(double)
            }
        case "Q", "L", "I", "S", "C":
            let unsigned = number.uint64Value
            if let exact = Int(exactly: unsigned) { self = .integer(exact) } else { self = .number(Double(unsigned)) }
        default:
            self = .integer(number.intValue)
        }
    }

    /// "a string", "an integer", … for "expected X, found Y" messages.
    var kindDescription: String {
        switch self {
        case .null: "null"
        case .bool: "a boolean"
        case .integer: "an integer"
        case .number: "a number with a fraction"
        case .string: "a string"
        case .array: "an array"
        case .object: "an object"
        }
    }
}
