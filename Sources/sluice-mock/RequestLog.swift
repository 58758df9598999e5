import Dispatch
import Foundation
import NIOCore
import Synchronization

/// How a logged request ended.
enum RequestOutcome: String, Sendable {
    /// The whole response was sent.
    case complete
    /// The client went away before the response was complete.
    case clientClosed = "client_closed"
    /// The mock closed the connection on purpose (`x-mock-drop-after`).
    case dropped
    /// The mock stopped sending on purpose (`x-mock-stall-after`) and the client then went away.
    case stalled
}

/// One line of the request log: what the mock received and how it answered.
struct RequestLogRecord: Sendable {
    /// When the request head arrived, Unix seconds.
    var receivedAt: Double
    var connectionID: Int
    var method: String
    var path: String
    var model: String?
    var stream = false
    var includeUsage = false
    var maxTokens: Int?
    var choiceCount = 1
    /// Whether an `authorization` header was present. The value itself is never logged.
    var hasAuthorization: Bool
    /// Whether an `api-key` header (Azure's way) was present. The value itself is never logged.
    var hasAPIKeyHeader = false
    /// The URL's query string (without `?`, at most 256 bytes), for the upstream-routing tests.
    var query: String? = nil
    var requestID: String?
    /// The W3C `traceparent` header as received (at most 256 bytes of it), for the tracing tests.
    var traceparent: String?
    /// The status sent, nil when the client left before a response was decided.
    var status: Int?
    /// Token chunks (stream) or completion tokens (non-stream) actually sent.
    var completionTokens = 0
    var outcome = RequestOutcome.complete
    var bodyBytes = 0

    /// The record as one JSON line, newline included.
    func writeJSONLine(into buffer: inout ByteBuffer) {
        buffer.writeStaticString("{\"ts\":")
        let microseconds = Int((receivedAt * 1_000_000).rounded())
        buffer.writeDecimal(microseconds / 1_000_000)
        buffer.writeStaticString(".")
        let fraction = microseconds % 1_000_000
        var divisor = 100_000
        while divisor > 0 {
            buffer.writeInteger(UInt8(ascii: "0") + UInt8(fraction / divisor % 10))
            divisor /= 10
        }
        buffer.writeStaticString(",\"conn\":")
        buffer.writeDecimal(connectionID)
        buffer.writeStaticString(",\"method\":")
        buffer.writeJSONString(method)
        buffer.writeStaticString(",\"path\":")
        buffer.writeJSONString(path)
        buffer.writeStaticString(",\"model\":")
        buffer.writeJSONString(orNull: model)
        buffer.writeStaticString(",\"stream\":")
        buffer.writeJSONBool(stream)
        buffer.writeStaticString(",\"include_usage\":")
        buffer.writeJSONBool(includeUsage)
        buffer.writeStaticString(",\"max_tokens\":")
        buffer.writeDecimal(orNull: maxTokens)
        buffer.writeStaticString(",\"n\":")
        buffer.writeDecimal(choiceCount)
        buffer.writeStaticString(",\"authorization\":")
        buffer.writeJSONBool(hasAuthorization)
        buffer.writeStaticString(",\"api_key\":")
        buffer.writeJSONBool(hasAPIKeyHeader)
        if let query {
            buffer.writeStaticString(",\"query\":")
            buffer.writeJSONString(query)
        }
        if let requestID {
            buffer.writeStaticString(",\"request_id\":")
            buffer.writeJSONString(requestID)
        }
        if let traceparent {
            buffer.writeStaticString(",\"traceparent\":")
            buffer.writeJSONString(traceparent)
        }
        buffer.writeStaticString(",\"status\":")
        buffer.writeDecimal(orNull: status)
        buffer.writeStaticString(",\"completion_tokens\":")
        buffer.writeDecimal(completionTokens)
        buffer.writeStaticString(",\"outcome\":\"")
        buffer.writeString(outcome.rawValue)
        buffer.writeStaticString("\",\"body_bytes\":")
        buffer.writeDecimal(bodyBytes)
        buffer.writeStaticString("}\n")
    }
}

/// An append-only JSON-lines file written off the event loops.
///
/// Event loops append finished lines to a shared buffer; a serial queue writes whatever has accumulated
/// with plain `write(2)` calls (no user-space buffering), so lines reach the file within a queue hop and
/// bursts are batched. `flush()` waits until everything appended so far is written.
final class RequestLog: Sendable {
    private let fileDescriptor: Int32
    private let pending = Mutex(ByteBuffer())
    private let writer = DispatchQueue(label: "sluice-mock.request-log")

    /// Opens (creating if needed) `path` for appending.
    /// - Throws: `RequestLogError` with errno when the file cannot be opened.
    init(path: String) throws(RequestLogError) {
        let descriptor = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else {
            throw RequestLogError(path: path, operation: "open", errno: errno)
        }
        self.fileDescriptor = descriptor
    }

    /// Queues one record for writing. Safe from any thread; never blocks on I/O.
    func append(_ record: RequestLogRecord) {
        let becameNonEmpty = pending.withLock { buffer in
            let wasEmpty = buffer.readableBytes == 0
            record.writeJSONLine(into: &buffer)
            return wasEmpty
        }
        // Whoever makes the buffer non-empty schedules the one write that will take it; later appends
        // ride along with that write.
        if becameNonEmpty {
            writer.async { self.writePending() }
        }
    }

    /// Blocks until every record appended before this call is in the file.
    func flush() {
        writer.sync { self.writePending() }
    }

    private func writePending() {
        let bytes = pending.withLock { buffer in
            let taken = buffer
            buffer = ByteBuffer()
            return taken
        }
        bytes.withUnsafeReadableBytes { raw in
            var offset = 0
            while offset < raw.count {
                let written = write(fileDescriptor, raw.baseAddress! + offset, raw.count - offset)
                if written < 0 {
                    if errno == EINTR { continue }
                    FileHandle.standardError.write(
                        Data("sluice-mock: writing the request log failed (errno \(errno))\n".utf8))
                    return
                }
                offset += written
            }
        }
    }
}

/// The request log file could not be opened.
struct RequestLogError: Error, CustomStringConvertible {
    let path: String
    let operation: String
    let errno: Int32

    var description: String {
        "cannot \(operation) request log \(path): \(String(cString: strerror(errno)))"
    }
}
