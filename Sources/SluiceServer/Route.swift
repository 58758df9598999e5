import NIOHTTP1
import SluiceCore

/// Where a request goes, decided from its method and path (query string removed).
enum Route: Sendable, Equatable {
    case proxy(OpenAIEndpoint)
    case listModels
    /// `GET /v1/sluice/key`: the calling key's limits and what remains of them.
    case keyState
    case retrieveModel(String)
    /// `GET`/`DELETE /v1/responses/{id}` (and its `input_items`, `POST …/cancel`): a stored response,
    /// passed through. The path below `/v1`, verbatim.
    case responseResource(pathBelowVersion: String)
    case health
    case ready
    case methodNotAllowed(allowed: [String])
    case notFound

    init(method: HTTPMethod, path: String) {
        if let endpoint = OpenAIEndpoint(path: path) {
            self = method == .POST ? .proxy(endpoint) : .methodNotAllowed(allowed: ["POST"])
            return
        }
        let getRoutes: [String: Route] = [
            // No /metrics: it is served by the admin listener alone (`AdminHandler`).
            "/v1/models": .listModels, "/v1/sluice/key": .keyState, "/healthz": .health, "/readyz": .ready,
        ]
        if let route = getRoutes[path] {
            self = (method == .GET || method == .HEAD) ? route : .methodNotAllowed(allowed: ["GET", "HEAD"])
            return
        }
        let responsesPrefix = "/v1/responses/"
        if path.hasPrefix(responsesPrefix), path.count > responsesPrefix.count {
            let below = String(path.dropFirst("/v1".count))
            if path.hasSuffix("/cancel") {
                self = method == .POST ? .responseResource(pathBelowVersion: below) : .methodNotAllowed(allowed: ["POST"])
            } else {
                self = (method == .GET || method == .DELETE)
                    ? .responseResource(pathBelowVersion: below) : .methodNotAllowed(allowed: ["GET", "DELETE"])
            }
            return
        }
        let modelPrefix = "/v1/models/"
        if path.hasPrefix(modelPrefix), path.count > modelPrefix.count {
            let id = String(path.dropFirst(modelPrefix.count))
            self = (method == .GET || method == .HEAD)
                ? .retrieveModel(Self.percentDecoded(id) ?? id) : .methodNotAllowed(allowed: ["GET", "HEAD"])
            return
        }
        self = .notFound
    }

    /// True for the API's paths (`/v1` and below), where a request needs a valid key before it
    /// learns anything, "no such route" included: a caller without a key gets 401 there, as from
    /// OpenAI's own endpoints that Sluice does not serve (`/v1/audio/…`). Elsewhere (`/`,
    /// `/healthz`, …) nothing needs a key.
    static func isAPIPath(_ path: String) -> Bool {
        path == "/v1" || path.hasPrefix("/v1/")
    }

    /// `text` with its `%XX` escapes decoded (RFC 3986; `+` stays `+` in a path), or nil when an
    /// escape is malformed or the result is not UTF-8.
    static func percentDecoded(_ text: String) -> String? {
        guard text.utf8.contains(UInt8(ascii: "%")) else { return text }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(text.utf8.count)
        var iterator = text.utf8.makeIterator()
        while let byte = iterator.next() {
            guard byte == UInt8(ascii: "%") else {
                bytes.append(byte)
                continue
            }
            guard let high = iterator.next().flatMap(hexValue), let low = iterator.next().flatMap(hexValue) else { return nil }
            bytes.append(high << 4 | low)
        }
        return String(validating: bytes, as: UTF8.self)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }

    var isProxy: Bool {
        if case .proxy = self { return true }
        return false
    }

    /// A bounded label for metrics (never the raw path: that would let clients mint label values).
    var metricLabel: String {
        switch self {
        case .proxy(let endpoint): return endpoint.path
        case .listModels, .retrieveModel: return "/v1/models"
        case .keyState: return "/v1/sluice/key"
        case .responseResource: return "/v1/responses/{id}"
        case .health: return "/healthz"
        case .ready: return "/readyz"
        case .methodNotAllowed: return "method_not_allowed"
        case .notFound: return "not_found"
        }
    }
}
