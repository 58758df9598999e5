/// The life of one upstream transfer, with no I/O: the engine thread feeds it events and performs the
/// actions it returns. Kept apart from the curl code so every transition can be tested as a table.
///
/// ```
/// idle ──start──▶ started ──head──▶ headReceived ──body──▶ streaming ⇄ paused
///   │                │                   │                     │          │
///   └──── fail/cancel/succeed ──▶ finished | failed(kind) | cancelled ◀───┘
/// ```
///
/// A failure or cancellation before `start` is remembered (the transfer is terminal) and the later
/// `start` is rejected: that is how a cancel that overtakes its start command is handled.
struct UpstreamTransferStateMachine: Sendable {
    enum State: Sendable, Hashable {
        case idle
        /// The easy handle is in the multi handle; no complete response head yet.
        case started
        /// The final response head was handed to the caller; no body byte yet.
        case headReceived
        case streaming
        /// Receiving is paused because the consumer is behind (above the high watermark).
        case paused
        case finished
        case failed(UpstreamError.Kind)
        case cancelled
    }

    private(set) var state: State = .idle

    var isTerminal: Bool {
        switch state {
        case .finished, .failed, .cancelled: true
        case .idle, .started, .headReceived, .streaming, .paused: false
        }
    }

    /// True while the easy handle belongs to the multi handle and must be removed at the end.
    var isAttached: Bool {
        switch state {
        case .started, .headReceived, .streaming, .paused: true
        case .idle, .finished, .failed, .cancelled: false
        }
    }

    /// True once the caller holds the response head (errors then go to the body, not to `execute`).
    var headDelivered: Bool {
        switch state {
        case .headReceived, .streaming, .paused: true
        case .idle, .started, .finished, .failed, .cancelled: false
        }
    }

    enum StartAction: Sendable, Hashable {
        /// Configure the easy handle and add it to the multi handle.
        case attach
        /// Fail `execute` with this kind; the transfer ended before it started.
        case reject(UpstreamError.Kind)
    }

    mutating func start() -> StartAction {
        switch state {
        case .idle:
            state = .started
            return .attach
        case .cancelled:
            return .reject(.cancelled)
        case .failed(let kind):
            return .reject(kind)
        case .started, .headReceived, .streaming, .paused, .finished:
            // A transfer is started exactly once by the engine; reaching here is an engine bug.
            assertionFailure("transfer started twice in state \(state)")
            return .reject(.other)
        }
    }

    enum HeadAction: Sendable, Hashable {
        /// Hand the response head to the caller and open the body stream.
        case deliverHead
        case ignore
    }

    /// The blank line ending a final (non-1xx) response head arrived.
    mutating func headReceived() -> HeadAction {
        switch state {
        case .started:
            state = .headReceived
            return .deliverHead
        case .idle, .headReceived, .streaming, .paused, .finished, .failed, .cancelled:
            // Trailers after a chunked body also end with a blank line: not a new head.
            return .ignore
        }
    }

    enum BodyAction: Sendable, Hashable {
        /// Pass the bytes to the body stream.
        case deliver
        /// Do not take the bytes now: return `CURL_WRITEFUNC_PAUSE` so libcurl keeps them and delivers
        /// them again after the resume.
        case holdBack
        /// Refuse the bytes (the write callback returns 0 and libcurl aborts the transfer).
        case refuse
    }

    mutating func bodyReceived() -> BodyAction {
        switch state {
        case .headReceived:
            state = .streaming
            return .deliver
        case .streaming:
            return .deliver
        case .paused:
            // libcurl finishes delivering the buffer it was in the middle of even after
            // `curl_easy_pause` from inside the callback (notably when it replays held-back bytes on
            // resume); those pieces must stay in curl, or the stream would overshoot its watermark.
            return .holdBack
        case .idle, .started, .finished, .failed, .cancelled:
            return .refuse
        }
    }

    enum PauseAction: Sendable, Hashable {
        /// Call `curl_easy_pause(CURLPAUSE_RECV)`.
        case pause
        case none
    }

    /// The body stream said stop (its buffer is above the high watermark).
    mutating func consumerFellBehind() -> PauseAction {
        switch state {
        case .headReceived, .streaming:
            state = .paused
            return .pause
        case .idle, .started, .paused, .finished, .failed, .cancelled:
            return .none
        }
    }

    enum ResumeAction: Sendable, Hashable {
        /// Call `curl_easy_pause(CURLPAUSE_CONT)` (the state is already `streaming`, so bytes libcurl
        /// delivers from inside that call are accepted and may pause again).
        case resume
        case none
    }

    /// The body stream asked for more (its buffer fell below the low watermark).
    mutating func consumerCaughtUp() -> ResumeAction {
        switch state {
        case .paused:
            state = .streaming
            return .resume
        case .idle, .started, .headReceived, .streaming, .finished, .failed, .cancelled:
            return .none
        }
    }

    enum EndAction: Sendable, Hashable {
        /// Fail the pending `execute` call with this kind.
        case failHead(UpstreamError.Kind)
        /// Finish the body stream normally.
        case finishBody
        /// Finish the body stream with this error.
        case failBody(UpstreamError.Kind)
        /// Already over (or not started yet): nothing to report now.
        case none
    }

    /// libcurl reported the transfer complete with `CURLE_OK`.
    mutating func transferSucceeded() -> EndAction {
        switch state {
        case .started:
            // Complete without a final head (e.g. only interim 1xx heads): nothing usable arrived.
            state = .failed(.other)
            return .failHead(.other)
        case .headReceived, .streaming, .paused:
            state = .finished
            return .finishBody
        case .idle, .finished, .failed, .cancelled:
            return .none
        }
    }

    /// The transfer ended badly: a libcurl error, one of the engine's deadlines, a cancel, or shutdown.
    mutating func transferFailed(_ kind: UpstreamError.Kind) -> EndAction {
        let terminal: State = kind == .cancelled ? .cancelled : .failed(kind)
        switch state {
        case .idle:
            state = terminal
            return .none
        case .started:
            state = terminal
            return .failHead(kind)
        case .headReceived, .streaming, .paused:
            state = terminal
            return .failBody(kind)
        case .finished, .failed, .cancelled:
            return .none
        }
    }
}
