import ArgumentParser
import Dispatch
import Foundation
import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// `sluice-mock`: a fast fake OpenAI upstream for tests and benchmarks.
@main
struct SluiceMockCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sluice-mock",
        abstract: "A fast fake OpenAI upstream for tests and benchmarks.",
        discussion: """
            Answers POST /v1/chat/completions and /v1/completions (streamed and not), POST /v1/embeddings \
            and GET /v1/models like OpenAI does, and the Responses API: POST /v1/responses (one assistant \
            message; streamed as response.* events ending with response.completed, or response.incomplete \
            when max_output_tokens cut it; usage input_tokens/output_tokens; previous_response_id adds 100 \
            input tokens for the stored conversation), GET and DELETE /v1/responses/{id} (nothing is \
            stored: any id answers); anything else is a 404 in OpenAI's error envelope. \
            Completions are N words, each one token (N = x-mock-completion-tokens or --completion-tokens, \
            capped by max_completion_tokens / max_tokens, per choice). Reported prompt tokens are only an \
            estimate: UTF-8 bytes of the prompt text ÷ 4, rounded up.

            Per-request headers override the flags: x-mock-completion-tokens, x-mock-token-delay-ms, \
            x-mock-first-byte-delay-ms, x-mock-status (non-2xx: OpenAI error body), x-mock-drop-after K \
            (close the connection after K token chunks), x-mock-stall-after K (stop after K token chunks, \
            hold the connection), x-mock-reported-completion-tokens N (report N completion tokens in usage, \
            whatever was sent: an upstream that lies). A non-streamed answer with drop/stall is cut halfway through its body.

            --log writes one JSON line per request when it finishes: ts (arrival, Unix seconds), conn, \
            method, path, model, stream, include_usage, max_tokens, n, authorization and api_key (presence \
            only), query (the URL's query string, if any), request_id (x-request-id, if sent), traceparent (if sent), status, completion_tokens (sent), outcome \
            (complete | client_closed | dropped | stalled), body_bytes. SIGTERM/SIGINT flush it and exit 0.
            """
    )

    @Option(help: "Address to listen on.")
    var host = "127.0.0.1"

    @Option(help: "Port to listen on (0: any free port; the chosen one is printed).")
    var port = 9000

    @Option(help: "Event-loop threads.")
    var threads = 1

    @Option(help: "Completion tokens per choice, before max_tokens caps them.")
    var completionTokens = 16

    @Option(help: "Delay between streamed tokens, in milliseconds (a timetable: token k is due k delays after the first).")
    var tokenDelayMs = 0

    @Option(help: "Delay before the response head, in milliseconds.")
    var firstByteDelayMs = 0

    @Option(help: "Status to answer every request with (non-2xx: an OpenAI error body).")
    var status = 200

    @Option(help: "Send this retry-after (seconds) with every error status, as a provider's 429 does.")
    var retryAfter: Int?

    @Option(help: "A context window, in tokens counted as request body bytes ÷ 4: longer requests get 400 context_length_exceeded.")
    var contextWindow: Int?

    @Flag(help: "Remember the Responses created (POST /v1/responses), with ids unique to this process: GET/DELETE /v1/responses/{id} of any other id answer 404, as OpenAI does.")
    var storeResponses = false

    @Option(help: "Close the connection after this many token chunks of every response.")
    var dropAfter: Int?

    @Option(help: "Stop sending after this many token chunks of every response.")
    var stallAfter: Int?

    @Option(help: "Largest request body accepted, in bytes (larger: 413).")
    var maxBodyBytes = 64 * 1024 * 1024

    @Option(help: ArgumentHelp("Append one JSON line per finished request to this file.", valueName: "file"))
    var log: String?

    func validate() throws {
        guard (1...256).contains(threads) else { throw ValidationError("--threads must be in 1...256") }
        guard (0...65535).contains(port) else { throw ValidationError("--port must be in 0...65535") }
        guard (0...MockLimits.maximumTotalCompletionTokens).contains(completionTokens) else {
            throw ValidationError("--completion-tokens must be in 0...\(MockLimits.maximumTotalCompletionTokens)")
        }
        for (name, value) in [("--token-delay-ms", tokenDelayMs), ("--first-byte-delay-ms", firstByteDelayMs)] {
            guard (0...MockLimits.maximumDelayMilliseconds).contains(value) else {
                throw ValidationError("\(name) must be in 0...\(MockLimits.maximumDelayMilliseconds)")
            }
        }
        guard (200...599).contains(status) else { throw ValidationError("--status must be in 200...599") }
        guard (dropAfter ?? 0) >= 0, (stallAfter ?? 0) >= 0 else {
            throw ValidationError("--drop-after and --stall-after must not be negative")
        }
        guard maxBodyBytes > 0 else { throw ValidationError("--max-body-bytes must be positive") }
        guard (retryAfter ?? 0) >= 0, (contextWindow ?? 1) > 0 else {
            throw ValidationError("--retry-after must not be negative and --context-window must be positive")
        }
    }

    func run() throws {
        let requestLog = try log.map { path throws(RequestLogError) in try RequestLog(path: path) }
        let server = MockServerContext(
            behaviour: MockBehaviour(
                completionTokens: completionTokens,
                tokenDelayMilliseconds: tokenDelayMs,
                firstByteDelayMilliseconds: firstByteDelayMs,
                status: status,
                dropAfterTokens: dropAfter,
                stallAfterTokens: stallAfter,
                maxBodyBytes: maxBodyBytes,
                retryAfterSeconds: retryAfter,
                contextWindowTokens: contextWindow),
            log: requestLog,
            storedResponses: storeResponses ? StoredResponses(prefix: "\(getpid())") : nil)

        let signalSources = Self.exitOnTerminationSignals(flushing: requestLog)
        defer { signalSources.forEach { $0.cancel() } }

        let group = MultiThreadedEventLoopGroup(numberOfThreads: threads)
        let connectionIDs = ConnectionIDs()
        // Accepting on a thread of its own: on a loop that also paces thousands of streams, the listener
        // was served too rarely, and connections waited seconds in the accept queue (scripts/bench streams).
        let acceptor = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let channel = try ServerBootstrap(group: acceptor, childGroup: group)
            // Thousands of clients connecting at once (scripts/bench streams) while the loops are busy with
            // other streams' tokens: a deep accept queue, drained many connections per wake-up. With 1024
            // and NIO's default of 4 per read, the queue overflowed at 1,000 new connections/s; a dropped
            // handshake costs the client a 1 s SYN-ACK retransmit, seen as seconds of time to first token.
            .serverChannelOption(.backlog, value: 4096)
            .serverChannelOption(.maxMessagesPerRead, value: 64)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelOption(.socketOption(.tcp_nodelay), value: 1)
            .childChannelOption(.maxMessagesPerRead, value: 16)
            .childChannelInitializer { channel in
                let connectionID = connectionIDs.next()
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline(
                        withErrorHandling: true, withOutboundHeaderValidation: false)
                    try channel.pipeline.syncOperations.addHandler(
                        MockConnectionHandler(server: server, connectionID: connectionID))
                }
            }
            .bind(host: host, port: port)
            .wait()

        let boundPort = channel.localAddress?.port ?? port
        let shownHost = host.contains(":") ? "[\(host)]" : host
        FileHandle.standardError.write(Data("sluice-mock listening on http://\(shownHost):\(boundPort)\n".utf8))
        try channel.closeFuture.wait()
        requestLog?.flush()
        try group.syncShutdownGracefully()
    }

    /// SIGTERM and SIGINT write out the request log and exit with status 0.
    private static func exitOnTerminationSignals(flushing requestLog: RequestLog?) -> [any DispatchSourceSignal] {
        let queue = DispatchQueue(label: "sluice-mock.signals")
        return [SIGTERM, SIGINT].map { signalNumber in
            signal(signalNumber, SIG_IGN)  // delivered to the dispatch source instead
            let source = DispatchSource.makeSignalSource(signal: signalNumber, queue: queue)
            source.setEventHandler {
                requestLog?.flush()
                Foundation.exit(0)
            }
            source.resume()
            return source
        }
    }
}

/// Numbers accepted TCP connections 1, 2, 3, … across all event loops.
final class ConnectionIDs: Sendable {
    private let last = Atomic<Int>(0)

    /// The id of a newly accepted connection.
    func next() -> Int {
        last.wrappingAdd(1, ordering: .relaxed).newValue
    }
}
