import NIOHTTP1
import SluiceCore

/// Where a request goes, decided from its method and path (query string removed).
enum Route: Sendable, Equatable {
    case proxy(OpenAIEndpoint)
    case listModels
    case retrieveModel(String)
    case health
    case ready
    case metrics
    case methodNotAllowed(allowed: [String])
    case notFound

    init(method: HTTPMethod, path: String) {
        if let endpoint = OpenAIEndpoint(path: path) {
            self = method == .POST ? .proxy(endpoint) : .methodNotAllowed(allowed: ["POST"])
            return
        }
        let getRoutes: [String: Route] = [
            "/v1/models": .listModels, "/healthz": .health, "/readyz": .ready, "/metrics": .metrics,
        ]
        if let route = getRoutes[path] {
            self = (method == .GET || method == .HEAD) ? route : .methodNotAllowed(allowed: ["GET", "HEAD"])
            return
        }
        let modelPrefix = "/v1/models/"
        if path.hasPrefix(modelPrefix), path.count > modelPrefix.count {
            self = method == .GET ? .retrieveModel(String(path.dropFirst(modelPrefix.count))) : .methodNotAllowed(allowed: ["GET"])
            return
        }
        self = .notFound
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
        case .health: return "/healthz"
        case .ready: return "/readyz"
        case .metrics: return "/metrics"
        case .methodNotAllowed: return "method_not_allowed"
        case .notFound: return "not_found"
        }
    }
}
