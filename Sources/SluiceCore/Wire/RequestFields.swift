/// Typed access to the fields of one request object, throwing OpenAI-worded 400s whose `param`
/// is the field's full path (`messages[2].content`, `stream_options.include_usage`).
struct RequestFields {
    let object: JSONObject
    /// Prefix joined to field names for `param`, e.g. `messages[2].` (empty at the top level).
    let path: String

    init(_ object: JSONObject, path: String = "") {
        self.object = object
        self.path = path
    }

    /// The field's value; nil when absent or `null` (OpenAI treats both as "not given").
    func value(_ name: String) -> JSONValue? {
        guard let value = object[name], !value.isNull else { return nil }
        return value
    }

    func bool(_ name: String) throws(GatewayError) -> Bool? {
        guard let value = value(name) else { return nil }
        guard case .bool(let flag) = value else { throw Self.invalidType(path + name, expected: "a boolean", got: value) }
        return flag
    }

    func string(_ name: String) throws(GatewayError) -> String? {
        guard let value = value(name) else { return nil }
        guard case .string(let text) = value else { throw Self.invalidType(path + name, expected: "a string", got: value) }
        return text
    }

    func requiredString(_ name: String) throws(GatewayError) -> String {
        guard let text = try string(name) else { throw Self.missing(path + name) }
        return text
    }

    func object(_ name: String) throws(GatewayError) -> JSONObject? {
        guard let value = value(name) else { return nil }
        guard case .object(let object) = value else { throw Self.invalidType(path + name, expected: "an object", got: value) }
        return object
    }

    func array(_ name: String) throws(GatewayError) -> [JSONValue]? {
        guard let value = value(name) else { return nil }
        guard case .array(let elements) = value else { throw Self.invalidType(path + name, expected: "an array", got: value) }
        return elements
    }

    /// A whole number (JSON Schema's `integer`: `2`, `2.0` and `2e0` alike) of at least `minimum`
    /// and, when `maximum` is given, at most `maximum`; nil when absent/null. Values beyond `Int`'s
    /// range saturate (see `JSONNumber.wholeValue`).
    func integer(_ name: String, minimum: Int, maximum: Int? = nil) throws(GatewayError) -> Int? {
        guard let value = value(name) else { return nil }
        let param = path + name
        guard case .number(let number) = value, let integer = number.wholeValue else {
            throw Self.invalidType(param, expected: "an integer", got: value)
        }
        guard integer >= minimum else { throw Self.belowMinimum(param, minimum: minimum, got: number.literal) }
        if let maximum, integer > maximum {
            throw GatewayError.invalidRequest(
                message: "Invalid '\(param)': integer above maximum value. Expected a value <= \(maximum), but got \(number.literal) instead.",
                param: param, code: "integer_above_max_value")
        }
        return integer
    }

    // MARK: Errors (OpenAI's wording)

    static func missing(_ param: String) -> GatewayError {
        .invalidRequest(message: "Missing required parameter: '\(param)'.", param: param, code: "missing_required_parameter")
    }

    static func invalidType(_ param: String, expected: String, got value: JSONValue) -> GatewayError {
        .invalidRequest(message: "Invalid type for '\(param)': expected \(expected), but got \(value.typeDescription) instead.",
                        param: param, code: "invalid_type")
    }

    static func invalidValue(_ param: String, value: String, supported: [String]) -> GatewayError {
        let quoted = supported.map { "'\($0)'" }
        let list = quoted.count > 1 ? quoted.dropLast().joined(separator: ", ") + ", and " + quoted[quoted.count - 1] : quoted.joined()
        return .invalidRequest(message: "Invalid value: '\(value)'. Supported values are: \(list).", param: param, code: "invalid_value")
    }

    static func belowMinimum(_ param: String, minimum: Int, got literal: String) -> GatewayError {
        .invalidRequest(message: "Invalid '\(param)': integer below minimum value. Expected a value >= \(minimum), but got \(literal) instead.",
                        param: param, code: "integer_below_min_value")
    }

    static func emptyArray(_ param: String) -> GatewayError {
        .invalidRequest(message: "Invalid '\(param)': empty array. Expected an array with minimum length 1, but got an empty array instead.",
                        param: param, code: "empty_array")
    }
}
