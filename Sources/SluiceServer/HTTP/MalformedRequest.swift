import NIOHTTP1
import SluiceCore

/// What the HTTP decoder could not parse, answered with OpenAI's error envelope before a close: 400
/// for a malformed request (request line, header syntax, body framing), 431 for a header section over
/// the limits, 505 for another HTTP version (an HTTP/2 connection preface).
///
/// Why not NIO's `HTTPServerProtocolErrorHandler`: it answers every case with an empty 400, which an
/// OpenAI SDK reports as an unexplained error, and it closes at once. `HTTPConnectionHandler` decides
/// whether an answer may be written (not while a response is owed or under way) and lingers after it.
enum MalformedRequest {
    /// The client-facing error for a decoder error, or nil when there is nothing to answer (not a
    /// parse error, or the client already closed its side).
    static func answer(to error: any Error, maxHeaderBytes: Int, maxHeaderFields: Int) -> GatewayError? {
        guard let parserError = error as? HTTPParserError else { return nil }
        switch parserError {
        case .headerOverflow:
            return .headersTooLarge(limitBytes: maxHeaderBytes, maxFields: maxHeaderFields)
        case .invalidVersion, .paused:
            // `.paused`: llhttp stops at the HTTP/2 preface (`PRI * HTTP/2.0`) of a client that
            // speaks HTTP/2 without negotiating it.
            return .httpVersionNotSupported()
        case .invalidEOFState, .closedConnection:
            return nil
        case .invalidMethod:
            return .malformedHTTP("unknown or malformed request method")
        case .invalidURL:
            return .malformedHTTP("malformed request target")
        case .invalidHeaderToken, .invalidCharactersUsed:
            return .malformedHTTP("malformed header")
        case .invalidContentLength, .unexpectedContentLength:
            return .malformedHTTP("invalid or conflicting Content-Length")
        case .invalidChunkSize:
            return .malformedHTTP("invalid chunk size in a chunked body")
        default:
            return .malformedHTTP("malformed request")
        }
    }
}
