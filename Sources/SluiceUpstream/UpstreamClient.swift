/// What the gateway needs from an upstream engine: send one request, get the response head, then
/// its body. ``CurlEngine`` is the engine; tests script one (`UpstreamBody(chunks:)`).
public protocol UpstreamClient: Sendable {
    /// Sends `request` and returns once the final response head arrived; the body follows through
    /// `response.body`. Cancelling the calling task cancels the exchange.
    func execute(_ request: UpstreamRequest) async throws(UpstreamError) -> UpstreamResponse
}

extension CurlEngine: UpstreamClient {}

extension UpstreamClient {
    /// `execute`, sent once more when the first attempt failed in a way that is safe to retry
    /// (``UpstreamError/isSafeToRetry``: nothing reached the upstream). Anything later may have
    /// reached the model and is never retried here.
    /// - Parameter attempts: set to the attempts made (1, or 2 after a safe retry).
    public func executeRetryingSafeFailures(_ request: UpstreamRequest, attempts: inout Int) async throws(UpstreamError) -> UpstreamResponse {
        attempts = 1
        do {
            return try await execute(request)
        } catch where error.isSafeToRetry && !Task.isCancelled {
            attempts = 2
            return try await execute(request)
        }
    }

    public func executeRetryingSafeFailures(_ request: UpstreamRequest) async throws(UpstreamError) -> UpstreamResponse {
        var attempts = 0
        return try await executeRetryingSafeFailures(request, attempts: &attempts)
    }

    /// ``executeRetryingSafeFailures(_:)`` telling `onRetry` about the failure that made it send
    /// the request again (for traces: the attempts and why).
    public func executeRetryingSafeFailures(_ request: UpstreamRequest, onRetry: (UpstreamError) -> Void) async throws(UpstreamError) -> UpstreamResponse {
        do {
            return try await execute(request)
        } catch where error.isSafeToRetry && !Task.isCancelled {
            onRetry(error)
            return try await execute(request)
        }
    }
}

// MARK: - The forward step's policy, carried by the outcome

extension UpstreamError {
    /// Nothing was sent to the upstream (the connection was refused or failed before the request):
    /// sending it again, on a new connection, cannot run it twice.
    public var isSafeToRetry: Bool { kind == .connectFailed }

    /// The failure says the upstream is down (the circuit breaker counts it): it could not be
    /// reached, or it did not start answering in time. A failure after the answer started, or one
    /// of the caller's making, says nothing about the upstream's health.
    public var meansUpstreamDown: Bool {
        switch kind {
        case .connectFailed, .connectTimeout, .firstByteTimeout: true
        case .stallTimeout, .totalTimeout, .connectionDropped, .cancelled, .shuttingDown, .tooManyTransfers, .other: false
        }
    }

    /// The caller gave up (its task was cancelled, or it stopped reading the body): the client's
    /// doing, not the upstream's.
    public var isCancellation: Bool { kind == .cancelled }
}

extension UpstreamResponse {
    /// The upstream answered that it (or what is behind it) is down: 502, 503 or 504. A 4xx, a 429
    /// or a 500 is the upstream working as designed, or failing for this request only.
    public var meansUpstreamDown: Bool { status == 502 || status == 503 || status == 504 }
}
