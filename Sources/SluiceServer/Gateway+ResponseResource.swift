import NIOCore
import NIOHTTP1
import SluiceCore
import SluiceUpstream

extension Gateway {
    /// `GET`/`DELETE /v1/responses/{id}` (and `…/input_items`, `POST …/cancel`): passed through to
    /// the upstream for an authenticated key, unlimited and uncounted (no model runs). The key must be
    /// allowed some model an upstream serves. Which deployment stored a response is not known here
    /// (another node may have sent it there): the deployments serving the key's models are asked in
    /// config order, and the first answer other than 404 (or an unreachable upstream) is relayed, the
    /// last one if all say 404. Status, body and headers are relayed as they come (streamed:
    /// `GET …?stream=true` replays a response's events).
    func passThroughResponseResource(_ request: HTTPRequest, pathBelowVersion: String, requestID: String, writer: ResponseWriter, logger: RequestLogger) async -> RequestOutcome {
        let settings = self.settings
        let key: APIKey
        switch authenticate(request.head, keys: settings.keys) {
        case .success(let found): key = found
        case .failure(let error): return await writeError(writer, error, requestID: requestID)
        }
        let path = "/v1" + pathBelowVersion
        let candidates = settings.responsesUpstreams(for: key)
        guard !candidates.isEmpty else {
            return await writeError(writer, .routeNotFound(method: request.head.method.rawValue, path: path), requestID: requestID, keyID: key.id)
        }
        let query = request.head.uri.firstIndex(of: "?").map { String(request.head.uri[$0...]) } ?? ""
        var response: UpstreamResponse?
        var lastFailure: (upstream: UpstreamRoute, error: UpstreamError)?
        for (index, upstream) in candidates.enumerated() {
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
            let isLast = index == candidates.count - 1
            do {
                var attempts = 0
                let answer = try await engine.executeRetryingSafeFailures(upstreamRequest, attempts: &attempts)
                if answer.status == 404, !isLast {
                    // Not stored there: the next deployment may hold it. Its (small) body is read and dropped.
                    _ = try? await Self.collect(answer)
                    continue
                }
                response = answer
                break
            } catch {
                if Self.clientWentAway(error) { return RequestOutcome(status: 499, keyID: key.id, model: nil) }
                logger.warning("upstream request failed", metadata: ["upstream": "\(upstream.name)", "error": "\(error.kind)"])
                lastFailure = (upstream, error)
            }
        }
        guard let response else {
            // Every deployment that could hold it failed (a 404 would have been relayed).
            let (upstream, error) = lastFailure!
            return await writeError(writer, GatewayError(upstream: error, upstreamName: upstream.name), requestID: requestID, keyID: key.id)
        }
        var responseHeaders = HTTPHeaders()
        for (name, value) in response.headers where !Self.passThroughDroppedHeaders.contains(name.asciiLowercased) {
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
