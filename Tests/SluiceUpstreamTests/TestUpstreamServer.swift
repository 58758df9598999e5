import NIOCore
import NIOHTTP1
import NIOPosix
import Synchronization

/// A tiny HTTP/1.1 upstream for the engine's integration tests, on real loopback sockets.
///
/// Routes (query parameters in parentheses):
/// - `/fixed` (`bytes`): a Content-Length body of `bytes` bytes of the pattern `0123456789`.
/// - `/echo`: echoes the request body; `x-echo-method` and `x-echo-expect` report what arrived.
/// - `/stream` (`chunks`, `intervalMs`): chunked, `chunk-<i>\n` every `intervalMs`; `chunks=0` is endless.
/// - `/delay-head` (`ms`): answers `late` after `ms`.
/// - `/stall` (`chunks`): head and `chunks` chunks, then silence with the connection open.
/// - `/drop` (`chunks`): head and `chunks` chunks, then closes the connection mid-body.
/// - `/big` (`bytes`): chunked body of `bytes` bytes written as fast as the socket takes them.
final class TestUpstreamServer: Sendable {
    final class Counters: Sendable {
        let acceptedConnections = Atomic<Int>(0)
        let closedConnections = Atomic<Int>(0)
        let requests = Atomic<Int>(0)
        /// Bytes of `/big` bodies the kernel accepted (write promises succeeded).
        let bigBytesWritten = Atomic<Int>(0)
    }

    let counters = Counters()
    let port: Int
    private let group: MultiThreadedEventLoopGroup
    private let channel: any Channel

    init() async throws {
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 1)
        let counters = self.counters
        let channel = try await ServerBootstrap(group: group)
            .serverChannelOption(.backlog, value: 256)
            .serverChannelOption(.socketOption(.so_reuseaddr), value: 1)
            .childChannelInitializer { channel in
                counters.acceptedConnections.add(1, ordering: .relaxed)
                channel.closeFuture.whenComplete { _ in counters.closedConnections.add(1, ordering: .relaxed) }
                return channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.configureHTTPServerPipeline()
                    try channel.pipeline.syncOperations.addHandler(TestUpstreamHandler(counters: counters))
                }
            }
            .bind(host: "127.0.0.1", port: 0)
            .get()
        self.group = group
        self.channel = channel
        self.port = channel.localAddress?.port ?? 0
    }

    func url(_ pathAndQuery: String) -> String { "http://127.0.0.1:\(port)\(pathAndQuery)" }

    func stop() async throws {
        try await channel.close()
        try await group.shutdownGracefully()
    }
}

private final class TestUpstreamHandler: ChannelInboundHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias OutboundOut = HTTPServerResponsePart

    private let counters: TestUpstreamServer.Counters
    private var path = ""
    private var query: [String: Int] = [:]
    private var requestHead: HTTPRequestHead?
    private var requestBody = ByteBuffer()
    private var bigRemaining = 0
    private var bigChunk = ByteBuffer(repeating: UInt8(ascii: "b"), count: 64 * 1024)

    init(counters: TestUpstreamServer.Counters) {
        self.counters = counters
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head(let head):
            counters.requests.add(1, ordering: .relaxed)
            requestHead = head
            requestBody.clear()
            let parts = head.uri.split(separator: "?", maxSplits: 1)
            path = parts.first.map(String.init) ?? "/"
            query = [:]
            if parts.count > 1 {
                for item in parts[1].split(separator: "&") {
                    let pair = item.split(separator: "=", maxSplits: 1)
                    if pair.count == 2, let value = Int(pair[1]) { query[String(pair[0])] = value }
                }
            }
        case .body(var buffer):
            requestBody.writeBuffer(&buffer)
        case .end:
            route(context: context)
        }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if bigRemaining > 0, context.channel.isWritable { pumpBig(context: context) }
        context.fireChannelWritabilityChanged()
    }

    private func route(context: ChannelHandlerContext) {
        let loop = context.eventLoop.assumeIsolated()
        switch path {
        case "/fixed":
            let count = query["bytes"] ?? 100
            let body = ByteBuffer(bytes: (0..<count).map { UInt8(ascii: "0") + UInt8($0 % 10) })
            sendHead(context: context, headers: ["content-length": "\(count)"])
            context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        case "/echo":
            let expect = requestHead?.headers.first(name: "expect") ?? "none"
            sendHead(context: context, headers: [
                "content-length": "\(requestBody.readableBytes)",
                "x-echo-method": requestHead?.method.rawValue ?? "",
                "x-echo-expect": expect,
            ])
            context.write(wrapOutboundOut(.body(.byteBuffer(requestBody))), promise: nil)
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        case "/stream":
            sendHead(context: context, headers: ["transfer-encoding": "chunked"])
            streamChunks(context: context, index: 0, total: query["chunks"] ?? 5, interval: .milliseconds(Int64(query["intervalMs"] ?? 100)))
        case "/delay-head":
            loop.scheduleTask(in: .milliseconds(Int64(query["ms"] ?? 1000))) {
                guard context.channel.isActive else { return }
                self.sendHead(context: context, headers: ["content-length": "4"])
                context.write(self.wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: "late")))), promise: nil)
                context.writeAndFlush(self.wrapOutboundOut(.end(nil)), promise: nil)
            }
        case "/stall", "/drop":
            sendHead(context: context, headers: ["transfer-encoding": "chunked"])
            for index in 0..<(query["chunks"] ?? 1) {
                context.write(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: "chunk-\(index)\n")))), promise: nil)
            }
            context.flush()
            if path == "/drop" {
                loop.scheduleTask(in: .milliseconds(50)) { context.close(promise: nil) }
            }
        case "/big":
            sendHead(context: context, headers: ["transfer-encoding": "chunked"])
            bigRemaining = query["bytes"] ?? 1_000_000
            pumpBig(context: context)
        default:
            sendHead(context: context, status: .notFound, headers: ["content-length": "0"])
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
        }
    }

    private func sendHead(context: ChannelHandlerContext, status: HTTPResponseStatus = .ok, headers: HTTPHeaders) {
        context.write(wrapOutboundOut(.head(HTTPResponseHead(version: .http1_1, status: status, headers: headers))), promise: nil)
    }

    private func streamChunks(context: ChannelHandlerContext, index: Int, total: Int, interval: TimeAmount) {
        guard context.channel.isActive else { return }
        if total > 0, index == total {
            context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
            return
        }
        context.writeAndFlush(wrapOutboundOut(.body(.byteBuffer(ByteBuffer(string: "chunk-\(index)\n")))), promise: nil)
        context.eventLoop.assumeIsolated().scheduleTask(in: interval) {
            self.streamChunks(context: context, index: index + 1, total: total, interval: interval)
        }
    }

    private func pumpBig(context: ChannelHandlerContext) {
        let counters = self.counters
        while bigRemaining > 0, context.channel.isWritable {
            let count = min(bigRemaining, bigChunk.readableBytes)
            bigRemaining -= count
            let promise = context.eventLoop.makePromise(of: Void.self)
            promise.futureResult.whenSuccess { counters.bigBytesWritten.add(count, ordering: .relaxed) }
            context.writeAndFlush(wrapOutboundOut(.body(.byteBuffer(bigChunk.getSlice(at: 0, length: count)!))), promise: promise)
            if bigRemaining == 0 {
                context.writeAndFlush(wrapOutboundOut(.end(nil)), promise: nil)
            }
        }
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
