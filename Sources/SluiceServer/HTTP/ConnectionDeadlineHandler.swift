import NIOCore
import NIOHTTP1
import SluiceCore

/// Closes connections that hold a server slot without making progress:
/// - idle keep-alive connections (no request started within `idleTimeout` after the last response),
/// - clients that send a head and then trickle or stall the body past `bodyTimeout`
///   (answered with 408 in the OpenAI error envelope, then closed).
///
/// Sits after the HTTP codec, so it sees request parts inbound and response parts outbound; it never
/// fires while a response is being produced (a long stream is not idle).
///
/// Timer churn: a phase change only records its deadline. The one scheduled check never runs later
/// than the shortest timeout after it was scheduled, so no new deadline can be earlier than it; when
/// it runs before the phase's deadline it is scheduled again (at the deadline, or the shortest timeout
/// from now if sooner). So a request costs no timer scheduling or cancelling at all.
final class ConnectionDeadlineHandler: ChannelDuplexHandler, RemovableChannelHandler {
    typealias InboundIn = HTTPServerRequestPart
    typealias InboundOut = HTTPServerRequestPart
    typealias OutboundIn = HTTPServerResponsePart
    typealias OutboundOut = HTTPServerResponsePart

    private enum Phase { case idle, readingRequest, responding }

    private let idleTimeout: TimeAmount
    private let bodyTimeout: TimeAmount
    private var phase = Phase.idle
    /// When the current phase times out (nil while responding: never).
    private var deadline: NIODeadline?
    private var timer: Scheduled<Void>?

    init(idleTimeout: TimeAmount, bodyTimeout: TimeAmount) {
        self.idleTimeout = idleTimeout
        self.bodyTimeout = bodyTimeout
    }

    func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { arm(context: context, for: .idle) }
    }

    func channelActive(context: ChannelHandlerContext) {
        arm(context: context, for: .idle)
        context.fireChannelActive()
    }

    func channelInactive(context: ChannelHandlerContext) {
        cancelTimer()
        context.fireChannelInactive()
    }

    func handlerRemoved(context: ChannelHandlerContext) {
        cancelTimer()
    }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        switch unwrapInboundIn(data) {
        case .head:
            arm(context: context, for: .readingRequest)
        case .end:
            phase = .responding
            deadline = nil
        case .body:
            break
        }
        context.fireChannelRead(data)
    }

    func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        if case .end = unwrapOutboundIn(data), phase == .responding {
            arm(context: context, for: .idle)
        }
        context.write(data, promise: promise)
    }

    private func arm(context: ChannelHandlerContext, for phase: Phase) {
        self.phase = phase
        let timeout = phase == .readingRequest ? bodyTimeout : idleTimeout
        deadline = context.eventLoop.now + timeout
        if timer == nil { scheduleCheck(context: context) }
    }

    private func scheduleCheck(context: ChannelHandlerContext) {
        let now = context.eventLoop.now
        var at = now + min(idleTimeout, bodyTimeout)
        if let deadline, deadline < at { at = deadline }
        // Both stay on this loop; the check is cancelled when the handler goes or the channel closes.
        let bound = NIOLoopBound((handler: self, context: context), eventLoop: context.eventLoop)
        timer = context.eventLoop.scheduleTask(deadline: at) {
            bound.value.handler.check(context: bound.value.context)
        }
    }

    private func check(context: ChannelHandlerContext) {
        timer = nil
        guard context.channel.isActive else { return }
        if let deadline, context.eventLoop.now >= deadline {
            expire(context: context)
        } else {
            scheduleCheck(context: context)
        }
    }

    private func expire(context: ChannelHandlerContext) {
        deadline = nil
        switch phase {
        case .idle:
            context.close(promise: nil)
        case .readingRequest:
            // The client started a request and did not finish it in time: tell it why, then close.
            let (head, body) = GatewayError.requestTimeout().rendered(requestID: nil, closing: true)
            context.write(wrapOutboundOut(.head(head)), promise: nil)
            context.write(wrapOutboundOut(.body(.byteBuffer(body))), promise: nil)
            let bound = NIOLoopBound(context, eventLoop: context.eventLoop)
            context.writeAndFlush(wrapOutboundOut(.end(nil))).whenComplete { _ in
                bound.value.close(promise: nil)
            }
        case .responding:
            break
        }
    }

    private func cancelTimer() {
        timer?.cancel()
        timer = nil
    }
}
