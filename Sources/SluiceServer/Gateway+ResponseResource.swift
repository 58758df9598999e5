import NIOCore
import NIOHTTP1
import SluiceCore
import SluiceUpstream

extension Gateway {
    /// `GET`/`DELETE /v1/responses/{id}` (and `…/input_items`, `POST …/cancel`): passed through to
    /// the upstream for an authenticated key, unlimited and uncounted (no model runs). The key must be
    /// allowed some model an upstream serves; the first such upstream answers (see
    /// `GatewaySettings.responsesUpstream(for:)`). Status, body and headers are relayed as they come
    /// (streamed: `GET …?stream=true` replays a response's events).
    func passThroughResponseResource(_ request: HTTPRequest, pathBelowVersion: String, requestID: String, writer: ResponseWriter, logger: RequestLogger) async -> RequestOutcome {
        let settings = self.settings
        let key: APIKey
        switch authenticate(request.head, keys: settings.keys) {
        case .success(let found): key = found
        case .failure(let error): return await writeError(writer, error, requestID: requestID)
        }
        let path = "/v1" + pathBelowVersion
        guard let upstream = settings.responsesUpstream(for: key) else {
            return await writeError(writer, .routeNotFound(method: request.head.method.rawValue, path: path), requestID: requestID, keyID: key.id)
        }
        let query = request.head.uri.firstIndex(of: "?").map { String(request.head.uri[$0...]) } ?? ""
        var headers: [(name: String, value: String)] = [("x-request-id", requestID)]
        if let accept = request.head.headers.first(name: "accept") { headers.append(("accept", accept)) }
        if let credential = upstream.credentialHeader { headers.append(credential) }
        var body: [UInt8] = []
        if request.head.method == .POST {
            headers.append(("content-type", "application/json"))
            body = Array(request.body.readableBytesView)
        }
        let upstreamRequest = UpstreamRequest(
            url: upstream.url(pathBelowVersion: pathBelowVersion + query), method: request.head.method.rawValue,
            headers: headers, body: body, timeouts: upstream.streamTimeouts,
            httpVersion: upstream.httpVersion, caFile: upstream.caFile
        )
        let response: UpstreamResponse
        do {
            var attempts = 0
            response = try await engine.executeRetryingSafeFailures(upstreamRequest, attempts: &attempts)
        } catch {
            logger.warning("upstream request failed", metadata: ["upstream": "\(upstream.name)", "error": "\(error.kind)"])
            return await writeError(writer, GatewayError(upstream: error, upstreamName: upstream.name), requestID: requestID, keyID: key.id)
        }
        var responseHeaders = HTTPHeaders()
        for (name, value) in response.headers where !Self.passThroughDroppedHeaders.contains(name.lowercased()) {
            responseHeaders.add(name: name, value: value)
        }
        responseHeaders.add(name: "x-request-id", value: requestID)
        do {
            try await writer.writeStreamHead(status: HTTPResponseStatus(statusCode: response.status), headers: responseHeaders)
            for try await chunk in response.body {
                try await writer.writeStreamChunk(chunk)
            }
            try await writer.endStream()
        } catch {
            writer.abort()
        }
        return RequestOutcome(status: response.status, keyID: key.id, model: nil, promptTokens: 0, completionTokens: 0)
    }

    private static let passThroughDroppedHeaders: Set<String> = [
        "connection", "keep-alive", "transfer-encoding", "content-length", "proxy-connection", "upgrade", "trailer",
        "x-request-id", "date", "server",
    ]
}
