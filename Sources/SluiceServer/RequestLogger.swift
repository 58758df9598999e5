import Logging

/// The gateway's logger for one request: every line carries the request's id.
///
/// Why not `logger[metadataKey: "request_id"] = …` on a copy of the logger: that copies the logger's
/// storage and builds a metadata dictionary for every request, logged or not. Here the id is added
/// only to lines that are actually emitted (swift-log evaluates metadata lazily).
struct RequestLogger: Sendable {
    let base: Logger
    let requestID: String

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

    private func tagged(_ metadata: Logger.Metadata) -> Logger.Metadata {
        var metadata = metadata
        metadata["request_id"] = .string(requestID)
        return metadata
    }
}
