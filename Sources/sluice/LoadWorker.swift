import NIOCore
import NIOHTTP1
import NIOPosix
import SluiceCore
import Synchronization

/// Where `sluice load` sends its requests: an `http://host:port[/base]` URL, the base path
/// defaulting to `/v1` (so both a node's address and an SDK's base URL work).
struct LoadTarget: Sendable {
    var url: String
    var host: String
    var port: Int
    /// `host:port` as sent in `Host`.
    var authority: String
    /// The request path, the base path + `/chat/completions`.
    var path: String

    /// nil when `text` is not an `http://` URL with a host (TLS is not supported: Sluice itself
    /// serves plain HTTP behind whatever terminates TLS).
    init?(_ text: String) {
        guard text.hasPrefix("http://") else { return nil }
        let rest = text.dropFirst("http://".count)
        let slash = rest.firstIndex(of: "/") ?? rest.endIndex
        let authority = String(rest[..<slash])
        var base = String(rest[slash...])
        var host: Substring
        var portText: Substring?
        if authority.hasPrefix("[") {
            guard let close = authority.firstIndex(of: "]") else { return nil }
            host = authority[authority.index(after: authority.startIndex)..<close]
            let after = authority[authority.index(after: close)...]
            if after.hasPrefix(":") { portText = after.dropFirst() } else if !after.isEmpty { return nil }
        } else if let colon = authority.lastIndex(of: ":") {
            host = authority[..<colon]
            portText = authority[authority.index(after: colon)...]
        } else {
            host = Substring(authority)
        }
        let port = portText.map { Int($0) } ?? 80
        guard !host.isEmpty, let port, (1...65_535).contains(port) else { return nil }
        while base.hasSuffix("/") { base.removeLast() }
        if base.isEmpty { base = "/v1" }
        self.url = text
        self.host = String(host)
        self.port = port
        self.authority = authority
        self.path = base + "/chat/completions"
    }
}

/// When each request of a run is due, shared by all workers: ticket k goes to key k mod keys, due
/// at start + k ÷ rate with `--rate` (a timetable: a late send does not push the later ones back),
/// at once without it. No ticket is issued at or after the end.
final class LoadSchedule: Sendable {
    let start: ContinuousClock.Instant
    let end: ContinuousClock.Instant
    /// Requests per second, nil for as fast as the workers go.
    let rate: Double?
    private let issued = Atomic<Int>(0)

    init(start: ContinuousClock.Instant, durationSeconds: Double, rate: Double?) {
        self.start = start
        self.end = start + .nanoseconds(Int64(durationSeconds * 1e9))
        self.rate = rate
    }

    /// The next ticket, once it is due; nil when the run is over or the task cancelled.
    func nextTicket() async -> Int? {
        guard !Task.isCancelled else { return nil }
        let ticket = issued.wrappingAdd(1, ordering: .relaxed).oldValue
        if let rate {
            let due = start + .nanoseconds(Int64(Double(ticket) * 1e9 / rate))
            guard due < end else { return nil }
            if due > .now { try? await Task.sleep(until: due, clock: .continuous) }
            return Task.isCancelled ? nil : ticket
        }
        return ContinuousClock.now < end ? ticket : nil
    }

    /// Seconds since the start.
    func elapsed() -> Double {
        let since = ContinuousClock.now - start
        return Double(since.components.seconds) + Double(since.components.attoseconds) / 1e18
    }
}

/// The request every worker sends: one chat completion body, with each key's `Authorization`.
struct LoadRequestPlan: Sendable {
    var keys: [String]
    var body: ByteBuffer
    var stream: Bool
    /// Sent with every request after the standard ones (e.g. the mock's `x-mock-*` pacing).
    var extraHeaders: [(name: String, value: String)]

    init(keys: [String], model: String, promptTokens: Int, maxTokens: Int, stream: Bool,
         extraHeaders: [(name: String, value: String)] = []) {
        self.keys = keys
        self.stream = stream
        self.extraHeaders = extraHeaders
        // " hello" is one token in OpenAI's encodings; the chat framing adds a few more.
        let prompt = String(repeating: " hello", count: promptTokens)
        var json = #"{"model":"# + LoadRequestPlan.jsonString(model)
        json += #","messages":[{"role":"user","content":""# + prompt + #""}],"max_tokens":"# + String(maxTokens)
        if stream { json += #","stream":true,"stream_options":{"include_usage":true}"# }
        json += "}"
        self.body = ByteBuffer(string: json)
    }

    /// The head of ticket `ticket`'s request. Its `x-request-id` (`load-k<key>-<ticket>`) is kept by
    /// Sluice and forwarded upstream, so its logs (and an upstream's) can tell the tool's requests
    /// and keys apart.
    func head(target: LoadTarget, keyIndex: Int, ticket: Int) -> HTTPRequestHead {
        var headers = HTTPHeaders()
        headers.add(name: "host", value: target.authority)
        headers.add(name: "authorization", value: "Bearer " + keys[keyIndex])
        headers.add(name: "content-type", value: "application/json")
        headers.add(name: "content-length", value: String(body.readableBytes))
        headers.add(name: "x-request-id", value: "load-k\(keyIndex)-\(ticket)")
        for header in extraHeaders { headers.add(name: header.name, value: header.value) }
        return HTTPRequestHead(version: .http1_1, method: .POST, uri: target.path, headers: headers)
    }

    private static func jsonString(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case _ where scalar.value < 0x20: out += "\\u" + String(repeating: "0", count: 4 - String(scalar.value, radix: 16).count) + String(scalar.value, radix: 16)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}

/// A request that got no complete answer.
enum LoadTransportError: Error {
    /// The connection closed before the answer's end.
    case connectionClosed
}

/// One concurrent client: one keep-alive connection to its target, one request at a time, taking
/// tickets from the schedule until it runs out; reconnects when the connection closes.
struct LoadWorker: Sendable {
    var target: LoadTarget
    var plan: LoadRequestPlan
    var schedule: LoadSchedule
    var group: any EventLoopGroup

    /// Bytes of an answer kept for reading its `usage` or error: a non-streamed body's first MiB,
    /// a stream's last 64 KiB (its usage chunk comes last).
    static let keptBodyBytes = 1 << 20
    static let keptStreamTailBytes = 64 << 10
    /// Pause after a failed connect, so that a target that is down is not hammered.
    static let reconnectPause = Duration.milliseconds(50)

    /// The tallies of this worker, one per key.
    func run() async -> [LoadKeyTally] {
        var tallies = Array(repeating: LoadKeyTally(), count: plan.keys.count)
        var pending = await schedule.nextTicket()
        while let ticket = pending {
            let channel: NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>
            do {
                channel = try await connect()
            } catch {
                let keyIndex = ticket % plan.keys.count
                tallies[keyIndex].sent += 1
                tallies[keyIndex].transportErrors += 1
                try? await Task.sleep(for: Self.reconnectPause)
                pending = await schedule.nextTicket()
                continue
            }
            var inFlight: Int?
            do {
                try await channel.executeThenClose { inbound, outbound in
                    var responses = inbound.makeAsyncIterator()
                    while let current = pending {
                        inFlight = current
                        let keepAlive = try await exchange(ticket: current, responses: &responses, outbound: outbound, tallies: &tallies)
                        inFlight = nil
                        pending = await schedule.nextTicket()
                        if !keepAlive { return }
                    }
                }
            } catch {
                if let failed = inFlight {
                    tallies[failed % plan.keys.count].transportErrors += 1
                    pending = await schedule.nextTicket()
                }
            }
        }
        return tallies
    }

    private func connect() async throws -> NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart> {
        try await ClientBootstrap(group: group)
            .channelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(5))
            .connect(host: target.host, port: target.port) { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    return try NIOAsyncChannel<HTTPClientResponsePart, HTTPClientRequestPart>(wrappingChannelSynchronously: channel)
                }
            }
    }

    /// Sends ticket `ticket`'s request and reads its whole answer into `tallies`.
    /// - Returns: whether the connection may be used again.
    private func exchange(ticket: Int,
                          responses: inout NIOAsyncChannelInboundStream<HTTPClientResponsePart>.AsyncIterator,
                          outbound: NIOAsyncChannelOutboundWriter<HTTPClientRequestPart>,
                          tallies: inout [LoadKeyTally]) async throws -> Bool {
        let keyIndex = ticket % plan.keys.count
        tallies[keyIndex].sent += 1
        // The send time stands for the admission's: on a keep-alive connection the gateway decides
        // as the request arrives, while the answer's arrival also carries the upstream's latency.
        let sentAt = schedule.elapsed()
        try await outbound.write(contentsOf: [
            .head(plan.head(target: target, keyIndex: keyIndex, ticket: ticket)),
            .body(.byteBuffer(plan.body)),
            .end(nil),
        ])
        var head: HTTPResponseHead?
        var firstByteAt: Double?
        var body: [UInt8] = []
        reading: while true {
            guard let part = try await responses.next() else { throw LoadTransportError.connectionClosed }
            switch part {
            case .head(let responseHead):
                head = responseHead
            case .body(let chunk):
                if firstByteAt == nil { firstByteAt = schedule.elapsed() }
                if plan.stream {
                    body.append(contentsOf: chunk.readableBytesView)
                    if body.count > 2 * Self.keptStreamTailBytes { body.removeFirst(body.count - Self.keptStreamTailBytes) }
                } else if body.count < Self.keptBodyBytes {
                    body.append(contentsOf: chunk.readableBytesView.prefix(Self.keptBodyBytes - body.count))
                }
            case .end:
                break reading
            }
        }
        let endAt = schedule.elapsed()
        guard let head else { throw LoadTransportError.connectionClosed }
        LoadWorker.record(status: Int(head.status.code), headers: head.headers, body: body, stream: plan.stream,
                          sentAt: sentAt, latency: (plan.stream ? (firstByteAt ?? endAt) : endAt) - sentAt,
                          seenAt: endAt, into: &tallies[keyIndex])
        return head.isKeepAlive
    }

    static func record(status: Int, headers: HTTPHeaders, body: [UInt8], stream: Bool,
                       sentAt: Double, latency: Double, seenAt: Double, into tally: inout LoadKeyTally) {
        let limitRequests = headers.first(name: "x-ratelimit-limit-requests").flatMap { Int($0) }
        let limitTokens = headers.first(name: "x-ratelimit-limit-tokens").flatMap { Int($0) }
        if limitRequests != nil || limitTokens != nil, seenAt >= tally.limitsSeenAt {
            tally.limitRequests = limitRequests ?? tally.limitRequests
            tally.limitTokens = limitTokens ?? tally.limitTokens
            tally.limitsSeenAt = seenAt
        }
        switch status {
        case 200..<300:
            tally.admitted += 1
            let usage = stream ? streamUsage(body) : Usage.fromResponseBody(body)
            let tokens = (usage?.promptTokens ?? 0) + (usage?.completionTokens ?? 0)
            tally.promptTokens += usage?.promptTokens ?? 0
            tally.completionTokens += usage?.completionTokens ?? 0
            tally.admittedRequests.record(time: sentAt)
            tally.admittedTokens.record(time: sentAt, weight: tokens)
            tally.latencies.append(latency)
        case 429:
            tally.limited[limitKind(body), default: 0] += 1
        default:
            tally.errorStatuses[status, default: 0] += 1
        }
    }

    /// The `usage` of the last data event of a stream that has one.
    static func streamUsage(_ body: [UInt8]) -> Usage? {
        let lines = body.split(separator: UInt8(ascii: "\n"))
        for line in lines.reversed() {
            guard line.starts(with: "data:".utf8) else { continue }
            if let usage = Usage.fromResponseBody(Array(line.dropFirst("data:".utf8.count))) { return usage }
        }
        return nil
    }

    /// Which limit a 429 names: its `error.type` (`requests`, `tokens`, `input_tokens`,
    /// `output_tokens`, `insufficient_quota`), or `concurrency` when the message is about concurrent
    /// requests (OpenAI's type for those is `requests` too); `unknown` for a body that says neither.
    static func limitKind(_ body: [UInt8]) -> String {
        guard let error = (try? JSONReader.parse(body))?.objectValue?["error"]?.objectValue else { return "unknown" }
        if let message = error["message"]?.stringValue, message.contains("concurrent requests") { return "concurrency" }
        return error["type"]?.stringValue ?? "unknown"
    }
}
