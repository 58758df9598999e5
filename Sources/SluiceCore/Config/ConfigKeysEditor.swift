/// Targeted edits of the `keys` array in a config file's text, for `sluice keys new --write`,
/// `revoke` and `rotate`: every byte outside the edited entry stays as it was (order, indentation,
/// number formats, the other keys), instead of re-serialising the document. The caller validates
/// the result with the config loader before it replaces the file.
///
/// New text copies the style it is inserted next to: the indentation of the neighbouring entry or
/// member, one line per member when that entry spans lines, and the spacing around its `:`.
public struct ConfigKeysEditor: Sendable {
    /// Why the text cannot be edited.
    public struct EditError: Error, Sendable, CustomStringConvertible {
        public let description: String
    }

    public let text: [UInt8]
    private let keys: JSONSpan
    private let keysNameStart: Int

    /// Maps the document's structure. `text` must be a JSON object with a `keys` array (a config
    /// that loads has one).
    public init(text: [UInt8]) throws(EditError) {
        self.text = text
        var parser = JSONSpanParser(bytes: text)
        let root = try parser.parseDocument()
        guard case .object(let members) = root.kind else { throw EditError(description: "the top level is not an object") }
        guard let keysMember = members.last(where: { $0.name == "keys" }), case .array = keysMember.value.kind else {
            throw EditError(description: "the file has no \"keys\" array")
        }
        self.keys = keysMember.value
        self.keysNameStart = keysMember.nameRange.lowerBound
    }

    private var entries: [JSONSpan] {
        if case .array(let elements) = keys.kind { return elements }
        return []
    }

    // MARK: edits

    /// The text with `members` (name and JSON-encoded value, in order) appended to `keys` as a new
    /// object.
    public func appendingKey(_ members: [(name: String, json: String)]) -> [UInt8] {
        let entries = entries
        guard let last = entries.last else {
            // An empty array: indent one level below the line of `"keys"`, as the file indents that.
            let outer = indentation(ofLineAt: keysNameStart)
            if outer.isEmpty && !spansLines(keys.range) {
                return replacing(keys.range, with: "[" + render(members, indent: nil, colon: ": ") + "]")
            }
            let unit = outer.isEmpty ? "  " : outer
            let entry = render(members, indent: (outer + unit + unit, unit), colon: ": ")
            return replacing(keys.range, with: "[\n" + outer + unit + entry + "\n" + outer + "]")
        }
        let before = whitespace(before: last.range.lowerBound)
        let separator: String
        if let newline = before.lastIndex(of: "\n") {
            separator = ",\n" + String(before[before.index(after: newline)...])
        } else {
            separator = "," + before
        }
        let style = memberStyle(of: last)
        return replacing(last.range.upperBound..<last.range.upperBound, with: separator + render(members, indent: style.indent, colon: style.colon))
    }

    /// The text without the entry at `index` of `keys` (with its separator).
    public func removingKey(at index: Int) -> [UInt8] {
        let entries = entries
        precondition(entries.indices.contains(index), "no entry \(index) in keys")
        if entries.count == 1 {
            return replacing(keys.range, with: "[]")
        }
        if index + 1 < entries.count {
            return replacing(entries[index].range.lowerBound..<entries[index + 1].range.lowerBound, with: "")
        }
        return replacing(entries[index - 1].range.upperBound..<entries[index].range.upperBound, with: "")
    }

    /// The text with member `name` of the entry at `index` set to `json`: its value replaced where
    /// the member exists, else the member inserted after `after` (or at the end of the object).
    public func settingMember(ofKeyAt index: Int, name: String, json: String, after: String) -> [UInt8] {
        let entry = entries[index]
        guard case .object(let members) = entry.kind else { preconditionFailure("keys[\(index)] is not an object") }
        if let existing = members.last(where: { $0.name == name }) {
            return replacing(existing.value.range, with: json)
        }
        let style = memberStyle(of: entry)
        let anchor = members.last(where: { $0.name == after }) ?? members.last
        let member = "\"\(name)\"\(style.colon)\(json)"
        guard let anchor else {
            return replacing(entry.range, with: render([(name, json)], indent: style.indent, colon: style.colon))
        }
        let separator = style.indent.map { ",\n" + $0.members } ?? ", "
        return replacing(anchor.value.range.upperBound..<anchor.value.range.upperBound, with: separator + member)
    }

    // MARK: style

    /// How the members of `entry` are laid out: `indent` is `nil` for one line, else the members'
    /// indentation and one indentation unit; `colon` is what separates a name from its value.
    private func memberStyle(of entry: JSONSpan) -> (indent: (members: String, unit: String)?, colon: String) {
        guard case .object(let members) = entry.kind, let first = members.first else { return (nil, ": ") }
        let colon = String(decoding: text[first.nameRange.upperBound..<first.value.range.lowerBound], as: UTF8.self)
        let before = whitespace(before: first.nameRange.lowerBound)
        guard let newline = before.lastIndex(of: "\n") else { return (nil, colon) }
        let memberIndent = String(before[before.index(after: newline)...])
        let entryIndent = indentation(ofLineAt: entry.range.lowerBound)
        let unit = memberIndent.hasPrefix(entryIndent) && memberIndent.count > entryIndent.count
            ? String(memberIndent.dropFirst(entryIndent.count)) : "  "
        return ((memberIndent, unit), colon)
    }

    /// `{"a": 1, "b": 2}` on one line (`indent` nil), else one member per line at `indent.members`
    /// and the closing brace one unit less.
    private func render(_ members: [(name: String, json: String)], indent: (members: String, unit: String)?, colon: String) -> String {
        let pairs = members.map { "\"\($0.name)\"\(colon)\($0.json)" }
        guard let indent else { return "{" + pairs.joined(separator: ", ") + "}" }
        let closing = String(indent.members.dropLast(indent.unit.count))
        return "{\n" + pairs.map { indent.members + $0 }.joined(separator: ",\n") + "\n" + closing + "}"
    }

    /// The spaces and tabs at the start of the line holding byte `offset`.
    private func indentation(ofLineAt offset: Int) -> String {
        var start = offset
        while start > 0, text[start - 1] != UInt8(ascii: "\n") { start -= 1 }
        var end = start
        while end < offset, text[end] == UInt8(ascii: " ") || text[end] == UInt8(ascii: "\t") { end += 1 }
        return String(decoding: text[start..<end], as: UTF8.self)
    }

    /// The whitespace right before `offset`.
    private func whitespace(before offset: Int) -> String {
        var start = offset
        while start > 0, JSONSpanParser.isWhitespace(text[start - 1]) { start -= 1 }
        return String(decoding: text[start..<offset], as: UTF8.self)
    }

    private func spansLines(_ range: Range<Int>) -> Bool {
        text[range].contains(UInt8(ascii: "\n"))
    }

    private func replacing(_ range: Range<Int>, with replacement: String) -> [UInt8] {
        var result = text
        result.replaceSubrange(range, with: Array(replacement.utf8))
        return result
    }

    /// A JSON string literal of `value` (quotes, backslashes and control characters escaped).
    public static func quoted(_ value: String) -> String {
        var out = "\""
        for scalar in value.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\t": out += "\\t"
            case "\r": out += "\\r"
            default:
                if scalar.value < 0x20 {
                    let hex = String(scalar.value, radix: 16)
                    out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                } else {
                    out.unicodeScalars.append(scalar)
                }
            }
        }
        return out + "\""
    }
}

// MARK: - spans

/// A JSON value's byte range in its document, with the ranges of its members or elements.
struct JSONSpan: Sendable {
    struct Member: Sendable {
        /// The decoded name.
        let name: String
        /// The name's string literal, quotes included.
        let nameRange: Range<Int>
        let value: JSONSpan
    }

    enum Kind: Sendable {
        case object([Member])
        case array([JSONSpan])
        case scalar
    }

    let range: Range<Int>
    let kind: Kind
}

/// A recursive-descent pass over a JSON document that records where each value is. The document
/// was already accepted by the config loader; this pass still refuses what it cannot map.
struct JSONSpanParser {
    let bytes: [UInt8]
    var index = 0
    var depth = 0

    init(bytes: [UInt8]) {
        self.bytes = bytes
    }

    static func isWhitespace(_ byte: UInt8) -> Bool {
        byte == UInt8(ascii: " ") || byte == UInt8(ascii: "\t") || byte == UInt8(ascii: "\n") || byte == UInt8(ascii: "\r")
    }

    mutating func parseDocument() throws(ConfigKeysEditor.EditError) -> JSONSpan {
        // A UTF-8 byte order mark is skipped, as JSONSerialization does.
        if bytes.starts(with: [0xEF, 0xBB, 0xBF]) { index = 3 }
        let value = try parseValue()
        skipWhitespace()
        guard index == bytes.count else { throw fail("unexpected text after the document") }
        return value
    }

    private func fail(_ message: String) -> ConfigKeysEditor.EditError {
        ConfigKeysEditor.EditError(description: "cannot map the file's JSON at byte \(index): \(message)")
    }

    private mutating func skipWhitespace() {
        while index < bytes.count, Self.isWhitespace(bytes[index]) { index += 1 }
    }

    private mutating func parseValue() throws(ConfigKeysEditor.EditError) -> JSONSpan {
        skipWhitespace()
        guard index < bytes.count else { throw fail("unexpected end") }
        let start = index
        switch bytes[index] {
        case UInt8(ascii: "{"):
            depth += 1
            defer { depth -= 1 }
            guard depth <= 512 else { throw fail("nested too deeply") }
            index += 1
            var members: [JSONSpan.Member] = []
            skipWhitespace()
            if index < bytes.count, bytes[index] == UInt8(ascii: "}") {
                index += 1
                return JSONSpan(range: start..<index, kind: .object(members))
            }
            while true {
                skipWhitespace()
                let nameStart = index
                let name = try parseString()
                let nameRange = nameStart..<index
                skipWhitespace()
                guard index < bytes.count, bytes[index] == UInt8(ascii: ":") else { throw fail("expected ':'") }
                index += 1
                let value = try parseValue()
                members.append(JSONSpan.Member(name: name, nameRange: nameRange, value: value))
                skipWhitespace()
                guard index < bytes.count else { throw fail("unexpected end") }
                if bytes[index] == UInt8(ascii: ",") { index += 1; continue }
                guard bytes[index] == UInt8(ascii: "}") else { throw fail("expected ',' or '}'") }
                index += 1
                return JSONSpan(range: start..<index, kind: .object(members))
            }
        case UInt8(ascii: "["):
            depth += 1
            defer { depth -= 1 }
            guard depth <= 512 else { throw fail("nested too deeply") }
            index += 1
            var elements: [JSONSpan] = []
            skipWhitespace()
            if index < bytes.count, bytes[index] == UInt8(ascii: "]") {
                index += 1
                return JSONSpan(range: start..<index, kind: .array(elements))
            }
            while true {
                elements.append(try parseValue())
                skipWhitespace()
                guard index < bytes.count else { throw fail("unexpected end") }
                if bytes[index] == UInt8(ascii: ",") { index += 1; continue }
                guard bytes[index] == UInt8(ascii: "]") else { throw fail("expected ',' or ']'") }
                index += 1
                return JSONSpan(range: start..<index, kind: .array(elements))
            }
        case UInt8(ascii: "\""):
            _ = try parseString()
            return JSONSpan(range: start..<index, kind: .scalar)
        default:
            // A number, true, false or null: everything up to the next delimiter.
            while index < bytes.count, !Self.isWhitespace(bytes[index]),
                  ![UInt8(ascii: ","), UInt8(ascii: "]"), UInt8(ascii: "}"), UInt8(ascii: ":")].contains(bytes[index]) {
                index += 1
            }
            guard index > start else { throw fail("expected a value") }
            return JSONSpan(range: start..<index, kind: .scalar)
        }
    }

    /// Reads a string literal and returns its decoded value.
    private mutating func parseString() throws(ConfigKeysEditor.EditError) -> String {
        guard index < bytes.count, bytes[index] == UInt8(ascii: "\"") else { throw fail("expected a string") }
        index += 1
        var units: [UInt16] = []
        var plain: [UInt8] = []
        func flushPlain() {
            units.append(contentsOf: String(decoding: plain, as: UTF8.self).utf16)
            plain.removeAll()
        }
        while index < bytes.count {
            let byte = bytes[index]
            index += 1
            switch byte {
            case UInt8(ascii: "\""):
                flushPlain()
                return String(decoding: units, as: UTF16.self)
            case UInt8(ascii: "\\"):
                guard index < bytes.count else { throw fail("unterminated string") }
                flushPlain()
                let escape = bytes[index]
                index += 1
                switch escape {
                case UInt8(ascii: "n"): units.append(0x0A)
                case UInt8(ascii: "t"): units.append(0x09)
                case UInt8(ascii: "r"): units.append(0x0D)
                case UInt8(ascii: "b"): units.append(0x08)
                case UInt8(ascii: "f"): units.append(0x0C)
                case UInt8(ascii: "u"):
                    guard index + 4 <= bytes.count, let unit = UInt16(String(decoding: bytes[index..<index + 4], as: UTF8.self), radix: 16) else {
                        throw fail("bad \\u escape")
                    }
                    index += 4
                    units.append(unit)
                default: units.append(UInt16(escape))
                }
            default:
                plain.append(byte)
            }
        }
        throw fail("unterminated string")
    }
}
