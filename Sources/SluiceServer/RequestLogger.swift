import Logging

/// The gateway's logger for one request: every line carries the request's id (`request_id`: the
/// client's own `x-request-id` when it sent a well-formed one, else Sluice's), and, when the two
/// differ, Sluice's own id (`reservation_id`, the one the limiter's Redis keys and usage records use).
///
/// Why not `logger[metadataKey: "request_id"] = …` on a copy of the logger: that copies the logger's
/// storage and builds a metadata dictionary for every request, logged or not. Here the id is added
/// only to lines that are actually emitted (swift-log evaluates metadata lazily).
struct RequestLogger: Sendable {
    let base: Logger
    let requestID: String
    let reservationID: String

    func debug(_ message: @autoclosure () -> Logger.Message, metadata: @autoclosure () -> Logger.Metadata = [:]) {
        base.debug(message(), metadata: tagged(metadata()))
    }

    func info(_ message: @autoclosure () -> Logger.Message, metadata: @autoclosure () -> Logger.Metadata = [:]) {
        base.info(message(), metadata: tagged(metadata()))
    }

    func warning(_ message: @autoclosure () -> Logger.Message, metadata: @autoclosure () -> Logger.Metadata = [:]) {
        base.warning(message(), metadata: tagged(metadata()))
    }

    func error(_ message: @autoclosure () -> Logger.Message, metadata: @autoclosure () -> Logger.Metadata = [:]) {
        base.error(message(), metadata: tagged(metadata()))
    }

    /// The most bytes of a value a client chose (a model name) that a log line carries.
    static let maxLoggedValueBytes = 256

    /// `value` cut to at most ``maxLoggedValueBytes`` UTF-8 bytes, at a character boundary, with the
    /// size of the whole: a client's 30 MB model name must not make a 30 MB line per request.
    static func bounded(_ value: String) -> String {
        let size = value.utf8.count
        guard size > maxLoggedValueBytes else { return value }
        var end = value.utf8.index(value.utf8.startIndex, offsetBy: maxLoggedValueBytes)
        while String.Index(end, within: value.unicodeScalars) == nil { end = value.utf8.index(before: end) }
        return String(value.unicodeScalars[..<end]) + "…(\(size) bytes)"
    }

    private func tagged(_ metadata: Logger.Metadata) -> Logger.Metadata {
        var metadata = metadata
        metadata["request_id"] = .string(requestID)
        if reservationID != requestID { metadata["reservation_id"] = .string(reservationID) }
        return metadata
    }
}
