#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Logging
import NIOPosix
import SluiceCore

/// Writes log lines to standard error in exactly the format of swift-log's `StreamLogHandler`
/// (`<time> <level> <label>: <k=v …> [<source>] <message>`), so nothing that reads the logs changes,
/// at a fraction of its cost — or, with `log.format: json`, as one JSON object per line
/// (`{"time":…,"level":…,"logger":…,"source":…,"message":…,<metadata fields>}`).
///
/// Why: at the default `info` level every proxied request writes an access-log line, and
/// `StreamLogHandler` formatted the time with `localtime`/`strftime` and wrote through the C stdio
/// lock on every line: measured here, the access log cost a fifth of the gateway's throughput. This
/// handler formats the time once per second per thread and writes each line with one `write(2)`,
/// which appends it whole; there is no lock shared between threads.
///
/// Every entry is exactly one line: control characters and the like in the message or in metadata
/// (which carries values clients choose, such as a model name) are written as visible escapes
/// (`\n`, `\u{1B}`; see ``escaped(_:)``), so no value can end a line early, forge another one, or
/// send terminal escape sequences to whoever reads the log.
public struct LogLineHandler: LogHandler {
    public typealias Sink = @Sendable (UnsafeRawBufferPointer) -> Void

    public let label: String
    public var logLevel: Logger.Level = .info
    public var metadata: Logger.Metadata = [:]
    public var metadataProvider: Logger.MetadataProvider?
    public let format: LogConfig.Format
    private let sink: Sink

    /// - Parameter sink: where a complete line goes (standard error unless a test captures it).
    public init(label: String, format: LogConfig.Format = .text, sink: @escaping Sink = LogLineHandler.standardError) {
        self.label = label
        self.format = format
        self.sink = sink
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        // The usual line has only its own metadata: use it as is, without merging into a copy.
        var merged = metadata.isEmpty && metadataProvider == nil ? event.metadata ?? [:] : metadata
        if !metadata.isEmpty || metadataProvider != nil {
            if let provided = metadataProvider?.get(), !provided.isEmpty {
                merged.merge(provided) { _, provided in provided }
            }
            if let explicit = event.metadata, !explicit.isEmpty {
                merged.merge(explicit) { _, explicit in explicit }
            }
        }
        if let error = event.error {
            merged["error.message"] = "\(error)"
            merged["error.type"] = "\(String(reflecting: type(of: error)))"
        }
        let time = Self.timestamps.valueForThisThread(orMake: SecondTimestamp.init).text(now: time(nil))
        if format == .json {
            var line = JSONLogLine.render(time: time, level: event.level, label: label, source: event.source, message: "\(event.message)", metadata: merged)
            line += "\n"
            line.withUTF8 { sink(UnsafeRawBufferPointer($0)) }
            return
        }
        var line = time
        line += " "
        line += event.level.rawValue
        if !label.isEmpty { line += " " }
        line += label
        line += ":"
        if !merged.isEmpty {
            for (key, value) in merged.sorted(by: { $0.key < $1.key }) {
                line += " \(key)=\(value)"
            }
        }
        line += " [\(event.source)] \(event.message)"
        // Values from clients (a model name, a header) and from upstreams (error text) are in
        // there: one entry must stay one line whatever they hold.
        if line.withUTF8(Self.needsEscaping) { line = Self.escaped(line) }
        line += "\n"
        line.withUTF8 { sink(UnsafeRawBufferPointer($0)) }
    }

    // MARK: Escaping: one entry, one line

    /// Whether `text` (UTF-8) holds a character ``escaped(_:)`` rewrites. A scan of the bytes that
    /// allocates nothing: almost every line has nothing to escape, and this runs for each one.
    static func needsEscaping(_ text: UnsafeBufferPointer<UInt8>) -> Bool {
        var index = 0
        while index < text.count {
            let byte = text[index]
            switch byte {
            case 0x00..<0x20, 0x7F, UInt8(ascii: "\\"):
                return true
            case 0xC2 where index + 1 < text.count && text[index + 1] < 0xA0:
                return true  // U+0080–U+009F, the C1 controls (U+0085 is a line break)
            case 0xE2 where index + 2 < text.count:
                let second = text[index + 1], third = text[index + 2]
                if second == 0x80 && (0xA8...0xAE).contains(third) { return true }  // U+2028–U+202E
                if second == 0x81 && (0xA6...0xA9).contains(third) { return true }  // U+2066–U+2069
            default:
                break
            }
            index += 1
        }
        return false
    }

    /// `text` with every character that could end a line or disguise what it says written as a
    /// visible escape in Swift's literal syntax: `\n`, `\r`, `\t`, `\0`, `\\` for a backslash (so an
    /// escape in the log always stands for one character), and `\u{1B}` for the other C0 controls,
    /// DEL, the C1 controls, the line and paragraph separators (U+2028, U+2029) and the bidirectional
    /// embedding, override and isolate controls (U+202A–U+202E, U+2066–U+2069).
    static func escaped(_ text: String) -> String {
        var escaped = ""
        escaped.reserveCapacity(text.utf8.count + 16)
        for scalar in text.unicodeScalars {
            switch scalar.value {
            case 0x5C: escaped += "\\\\"
            case 0x0A: escaped += "\\n"
            case 0x0D: escaped += "\\r"
            case 0x09: escaped += "\\t"
            case 0x00: escaped += "\\0"
            case 0x01..<0x20, 0x7F...0x9F, 0x2028...0x202E, 0x2066...0x2069:
                escaped += "\\u{" + String(scalar.value, radix: 16, uppercase: true) + "}"
            default:
                escaped.unicodeScalars.append(scalar)
            }
        }
        return escaped
    }

    /// One `write(2)` per line (retried on a partial write or EINTR); errors are dropped, as a
    /// logger must never fail the program.
    public static let standardError: Sink = { bytes in
        guard var next = bytes.baseAddress else { return }
        var left = bytes.count
        while left > 0 {
            let written = write(2, next, left)
            if written < 0 {
                if errno == EINTR { continue }
                return
            }
            left -= written
            next += written
        }
    }

    // MARK: Time, as StreamLogHandler prints it: local time, `%Y-%m-%dT%H:%M:%S%z`

    private static let timestamps = ThreadSpecificVariable<SecondTimestamp>()
}

/// The formatted time of the current second, on one thread. `@unchecked Sendable`: only reached
/// through its own thread's slot.
private final class SecondTimestamp: @unchecked Sendable {
    private var second: time_t = -1
    private var formatted = ""

    func text(now: time_t) -> String {
        if now != second {
            second = now
            var local = tm()
            var seconds = now
            localtime_r(&seconds, &local)
            var buffer = [CChar](repeating: 0, count: 64)
            let count = strftime(&buffer, buffer.count, "%Y-%m-%dT%H:%M:%S%z", &local)
            formatted = String(decoding: buffer.prefix(count).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        }
        return formatted
    }
}

/// One log entry as one JSON object on one line. Field names are stable: `time` (local time with
/// offset, as the text format prints it), `level`, `logger` (the logger's label), `source` (the
/// module), `message`, then every metadata field under its own name (a metadata field named like
/// one of those five is written as `metadata.<name>`). Metadata values are strings, nested
/// metadata objects and arrays as JSON objects and arrays.
///
/// Escaping: everything a JSON parser needs (`"`, `\`, U+0000–U+001F) and, like the text format,
/// what could disguise a line for a human reading it raw (DEL, the C1 controls, U+2028–U+202E,
/// U+2066–U+2069) is written as `\uXXXX` (or `\n`, `\r`, `\t`): a value a client chose (a model
/// name) can neither end the line nor forge a field.
enum JSONLogLine {
    static let reservedFields: Set<String> = ["time", "level", "logger", "source", "message"]

    static func render(time: String, level: Logger.Level, label: String, source: String, message: String, metadata: Logger.Metadata) -> String {
        var line = "{"
        line.reserveCapacity(160 + metadata.count * 32)
        field("time", time, into: &line, first: true)
        field("level", level.rawValue, into: &line)
        field("logger", label, into: &line)
        field("source", source, into: &line)
        field("message", message, into: &line)
        for (key, value) in metadata.sorted(by: { $0.key < $1.key }) {
            line += ","
            appendString(reservedFields.contains(key) ? "metadata." + key : key, to: &line)
            line += ":"
            appendValue(value, to: &line)
        }
        line += "}"
        return line
    }

    private static func field(_ name: String, _ value: String, into line: inout String, first: Bool = false) {
        if !first { line += "," }
        line += "\""
        line += name
        line += "\":"
        appendString(value, to: &line)
    }

    private static func appendValue(_ value: Logger.MetadataValue, to line: inout String) {
        switch value {
        case .string(let text):
            appendString(text, to: &line)
        case .stringConvertible(let convertible):
            appendString(convertible.description, to: &line)
        case .dictionary(let dictionary):
            line += "{"
            for (index, (key, nested)) in dictionary.sorted(by: { $0.key < $1.key }).enumerated() {
                if index > 0 { line += "," }
                appendString(key, to: &line)
                line += ":"
                appendValue(nested, to: &line)
            }
            line += "}"
        case .array(let elements):
            line += "["
            for (index, element) in elements.enumerated() {
                if index > 0 { line += "," }
                appendValue(element, to: &line)
            }
            line += "]"
        }
    }

    /// `text` as a JSON string literal. Most values need no escape: those are appended as they are.
    static func appendString(_ text: String, to line: inout String) {
        line += "\""
        var text = text
        let plain = text.withUTF8 { bytes in
            !bytes.contains { $0 < 0x20 || $0 == UInt8(ascii: "\"") || $0 == UInt8(ascii: "\\") } && !LogLineHandler.needsEscaping(bytes)
        }
        if plain {
            line += text
        } else {
            for scalar in text.unicodeScalars {
                switch scalar.value {
                case 0x22: line += "\\\""
                case 0x5C: line += "\\\\"
                case 0x0A: line += "\\n"
                case 0x0D: line += "\\r"
                case 0x09: line += "\\t"
                case 0x00..<0x20, 0x7F...0x9F, 0x2028...0x202E, 0x2066...0x2069:
                    let hex = String(scalar.value, radix: 16, uppercase: true)
                    line += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
                default:
                    line.unicodeScalars.append(scalar)
                }
            }
        }
        line += "\""
    }
}
