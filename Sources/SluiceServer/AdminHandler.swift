import NIOCore
import NIOHTTP1
import SluiceCore

/// The admin listener's routes (`server.admin_host`:`server.admin_port`): `GET /metrics`,
/// `/healthz`, `/readyz`. Nothing else, and no key: the listener is for Prometheus and probes, on
/// loopback or a port the load balancer does not expose. Its requests are not counted in
/// `sluice_requests_total` (a scrape every few seconds would drown the routes that matter).
struct AdminHandler: RequestHandling {
    let gateway: Gateway

    enum AdminRoute: Equatable {
        case metrics, health, ready
        case methodNotAllowed
        case notFound

        init(method: HTTPMethod, path: String) {
            let route: AdminRoute
            switch path {
            case "/metrics": route = .metrics
            case "/healthz": route = .health
            case "/readyz": route = .ready
            default:
                self = .notFound
                return
            }
            self = (method == .GET || method == .HEAD) ? route : .methodNotAllowed
        }
    }

    func handle(_ request: HTTPRequest, writer: ResponseWriter) async {
        let requestID = gateway.requestIDs.next()
        let path = request.head.uri.split(separator: "?", maxSplits: 1).first.map(String.init) ?? request.head.uri
        switch AdminRoute(method: request.head.method, path: path) {
        case .metrics:
            var headers = HTTPHeaders()
            headers.add(name: "content-type", value: "text/plain; version=0.0.4; charset=utf-8")
            let body = ByteBuffer(bytes: gateway.metricsExposition())
            try? await writer.writeResponse(status: .ok, headers: headers, body: body)
        case .health:
            _ = await gateway.health(writer, requestID: requestID)
        case .ready:
            _ = await gateway.ready(writer, requestID: requestID)
        case .methodNotAllowed:
            let error = GatewayError.methodNotAllowed(method: request.head.method.rawValue, path: path, allowed: ["GET", "HEAD"])
            try? await writer.writeError(error, requestID: requestID)
        case .notFound:
            let error = GatewayError.routeNotFound(method: request.head.method.rawValue, path: path)
            try? await writer.writeError(error, requestID: requestID)
        }
    }
}
