import NIOCore
import NIOHTTP1
import NIOPosix
import SluiceCore

/// What every stream worker of a `--frame-stats` run shares.
struct StreamRunSettings: Sendable {
    var target: LoadTarget
    var plan: LoadRequestPlan
    /// The run's origin: times are seconds from it.
    var start: NIODeadline
    /// No stream starts at or after it.
    var end: NIODeadline
    /// Streams still open then are cut and count as transport errors.
    var giveUp: NIODeadline
    /// A gap between frames over this many seconds makes a stream stalled.
    var stallGap: Double
    /// Frames of a complete stream (nil: unknown).
    var expectedFrames: Int?
    var workerCount: Int
}

/// One of N concurrent streams (`sluice load --stream --frame-stats`): one keep-alive connection,
/// one stream at a time from its start until the run's end, every frame timed.
///
/// Unlike `LoadWorker` it is event-driven, not an async loop: thousands of streams of ~60 frames each
/// make hundreds of thousands of frames a second, and a task hop per frame would make the client the
/// bottleneck it must not be. Everything runs on the worker's own event loop (its connections are
/// bound to it), so the state needs no lock: hence `@unchecked Sendable`.
final class StreamLoadWorker: @unchecked Sendable {
    /// Pause after a failed connect, so that a target that is down is not hammered.
    static let reconnectPause = TimeAmount.milliseconds(50)

    private let settings: StreamRunSettings
    private let index: Int
    private let eventLoop: any EventLoop
    private let promise: EventLoopPromise<StreamFrameTally>

    private var tally = StreamFrameTally()
    private var channel: (any Channel)?
    /// The stream in flight, with its status once the head came and its frames so far.
    private var current: StreamObservation?
    private var status: Int?
    private var keepAlive = true
    private var scanner = SSEEventScanner()
    private var sentCount = 0
    private var finished = false

    init(settings: StreamRunSettings, index: Int, eventLoop: any EventLoop) {
        self.settings = settings
        self.index = index
        self.eventLoop = eventLoop
        self.promise = eventLoop.makePromise()
    }

    /// Starts after `delay` (the ramp-up) and completes with the worker's tally once the run is over.
    func run(after delay: TimeAmount) -> EventLoopFuture<StreamFrameTally> {
        eventLoop.scheduleTask(in: delay) { self.connect() }
        eventLoop.scheduleTask(deadline: settings.giveUp) { self.giveUp() }
        return promise.futureResult
    }

    private func seconds(_ deadline: NIODeadline = .now()) -> Double {
        Double((deadline - settings.start).nanoseconds) / 1e9
    }

    private func connect() {
        guard !finished else { return }
        guard NIODeadline.now() < settings.end else { return finish() }
        ClientBootstrap(group: eventLoop)
            .channelOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1)
            .connectTimeout(.seconds(5))
            .channelInitializer { channel in
                channel.eventLoop.makeCompletedFuture {
                    try channel.pipeline.syncOperations.addHTTPClientHandlers()
                    try channel.pipeline.syncOperations.addHandler(StreamLoadHandler(worker: self))
                }
            }
            .connect(host: settings.target.host, port: settings.target.port)
            .hop(to: eventLoop)
            .whenComplete { result in
                switch result {
                case .success(let channel):
                    guard !self.finished else { channel.close(promise: nil); return }
                    self.channel = channel
                    self.keepAlive = true
                    self.sendNext(on: channel)
                case .failure:
                    self.tally.started += 1
                    self.tally.fail(nil, expectedFrames: self.settings.expectedFrames, stallGap: self.settings.stallGap)
                    self.eventLoop.scheduleTask(in: Self.reconnectPause) { self.connect() }
                }
            }
    }

    private func sendNext(on channel: any Channel) {
        guard !finished else { return }
        guard NIODeadline.now() < settings.end else {
            channel.close(promise: nil)
            return finish()
        }
        let ticket = sentCount * settings.workerCount + index
        sentCount += 1
        let keyIndex = ticket % settings.plan.keys.count
        tally.started += 1
        status = nil
        scanner = SSEEventScanner()
        current = StreamObservation(sentAt: seconds())
        channel.write(HTTPClientRequestPart.head(settings.plan.head(target: settings.target, keyIndex: keyIndex, ticket: ticket)),
                      promise: nil)
        channel.write(HTTPClientRequestPart.body(.byteBuffer(settings.plan.body)), promise: nil)
        channel.writeAndFlush(HTTPClientRequestPart.end(nil), promise: nil)
    }

    // MARK: From the handler (on the event loop)

    fileprivate func received(_ part: HTTPClientResponsePart, on channel: any Channel) {
        guard current != nil else { return }
        switch part {
        case .head(let head):
            status = Int(head.status.code)
            keepAlive = head.isKeepAlive
        case .body(let chunk):
            guard let status, (200..<300).contains(status) else { return }
            let count = chunk.withUnsafeReadableBytes { scanner.scan($0) }
            if count > 0 { tally.recordGaps(current!.framesArrived(count, at: seconds())) }
        case .end:
            tally.finish(current!, status: status ?? 0, endedWithDone: scanner.lastEventWasDone,
                         expectedFrames: settings.expectedFrames, stallGap: settings.stallGap)
            current = nil
            if keepAlive { sendNext(on: channel) } else { channel.close(promise: nil) }
        }
    }

    fileprivate func closed(_ channel: any Channel) {
        if let current {
            tally.fail(current, expectedFrames: settings.expectedFrames, stallGap: settings.stallGap)
            self.current = nil
        }
        guard self.channel === channel else { return }
        self.channel = nil
        connect()
    }

    /// The run waited long enough for the last streams: whatever is still open is cut.
    private func giveUp() {
        if let current {
            tally.fail(current, expectedFrames: settings.expectedFrames, stallGap: settings.stallGap)
            self.current = nil
        }
        channel?.close(promise: nil)
        finish()
    }

    private func finish() {
        guard !finished else { return }
        finished = true
        promise.succeed(tally)
    }
}

/// Hands a connection's response parts and its close to its worker.
private final class StreamLoadHandler: ChannelInboundHandler {
    typealias InboundIn = HTTPClientResponsePart

    private let worker: StreamLoadWorker

    init(worker: StreamLoadWorker) { self.worker = worker }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        worker.received(unwrapInboundIn(data), on: context.channel)
    }

    func channelInactive(context: ChannelHandlerContext) {
        worker.closed(context.channel)
        context.fireChannelInactive()
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) {
        context.close(promise: nil)
    }
}
