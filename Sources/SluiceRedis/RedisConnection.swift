import CHiredis
import Dispatch
import Foundation
import Logging
import SluiceCore
import Synchronization

/// One Redis connection and the thread that owns its hiredis context.
///
/// Other threads only enqueue commands. The connection thread takes everything queued while its
/// previous round was in flight, appends it all (`redisAppendCommandArgv`), flushes once, reads
/// the replies in order and completes each command with a copied-out `RedisReply`: automatic
/// pipelining whose batch size follows the load.
///
/// Failures: a command in flight when the connection breaks (reset, EOF, read timeout) fails with
/// an error whose `outcomeUnknown` is true; the thread reconnects at once, then with exponential
/// backoff. While backing off, new commands fail immediately with `.notConnected` instead of
/// waiting, so a dead Redis costs callers nothing but the check.
final class RedisConnection: Sendable {
    typealias Completion = CheckedContinuation<Result<RedisReply, RedisError>, Never>

    private struct Command: Sendable {
        let arguments: [[UInt8]]
        let completion: Completion
    }

    private enum Phase: Sendable {
        /// Opening (or about to open) a connection; commands queue and wait for the outcome.
        case connecting
        case connected
        /// The last connect failed; no attempt before `untilNanos` (monotonic uptime).
        case backingOff(untilNanos: UInt64, error: RedisError)
        case shutDown
    }

    private struct State {
        var queue: [Command] = []
        var threadIsWaiting = false
        var phase = Phase.connecting
        var lastError: RedisError?
    }

    private let state = Mutex(State())
    /// Signalled when work arrives for a waiting thread, and at shutdown.
    private let wakeup = DispatchSemaphore(value: 0)
    /// Signalled once by the thread when it has freed its context and exits.
    private let finished = DispatchSemaphore(value: 0)
    private let config: RedisConfig
    private let options: RedisClientOptions
    private let logger: Logger
    private let name: String

    init(config: RedisConfig, options: RedisClientOptions, logger: Logger, name: String) {
        self.config = config
        self.options = options
        self.logger = logger
        self.name = name
    }

    /// Starts the connection thread (which connects at once).
    func start() {
        let thread = Thread { [self] in self.run() }
        thread.name = name
        thread.start()
    }

    /// Whether the connection is currently open.
    var isConnected: Bool {
        state.withLock { if case .connected = $0.phase { true } else { false } }
    }

    /// The last connect or connection error (kept after a reconnect, for diagnostics).
    var lastError: RedisError? {
        state.withLock { $0.lastError }
    }

    /// Sends one command and waits for its reply (bounded by the connect and command timeouts).
    func send(_ arguments: [[UInt8]]) async -> Result<RedisReply, RedisError> {
        await withCheckedContinuation { (completion: Completion) in
            let now = DispatchTime.now().uptimeNanoseconds
            let (rejection, mustWake) = state.withLock { state -> (RedisError?, Bool) in
                switch state.phase {
                case .shutDown:
                    return (.shutDown, false)
                case .backingOff(let until, let error) where now < until:
                    return (.notConnected(error.description), false)
                default:
                    state.queue.append(Command(arguments: arguments, completion: completion))
                    guard state.threadIsWaiting else { return (nil, false) }
                    state.threadIsWaiting = false
                    return (nil, true)
                }
            }
            if let rejection {
                completion.resume(returning: .failure(rejection))
            } else if mustWake {
                wakeup.signal()
            }
        }
    }

    /// Stops the thread: queued commands fail with `.shutDown`, the context is freed. Waits (at
    /// most the connect plus command timeouts and a margin) for the thread to finish its round.
    func shutdown() {
        let abandoned = state.withLock { state -> [Command] in
            if case .shutDown = state.phase { return [] }
            state.phase = .shutDown
            defer { state.queue = [] }
            return state.queue
        }
        wakeup.signal()
        for command in abandoned { command.completion.resume(returning: .failure(.shutDown)) }
        let bound = options.connectTimeoutMillis + 2 * options.commandTimeoutMillis + 500
        if finished.wait(timeout: .now() + .milliseconds(bound)) == .success {
            // Leave the signal for any later shutdown() (deinit after an explicit call).
            finished.signal()
        }
    }

    // MARK: connection thread

    private func run() {
        var context: UnsafeMutablePointer<redisContext>?
        var backoffMillis = options.initialBackoffMillis
        var failuresInARow = 0
        // Commands taken for a round whose connection turned out to be closed before they were
        // written: they go out first on the next connection (they were certainly not executed).
        var carried: [Command] = []
        while true {
            if context == nil {
                if isShutDown { break }
                switch openContext() {
                case .success(let opened):
                    context = opened
                    backoffMillis = options.initialBackoffMillis
                    if failuresInARow > 0 {
                        logger.info("redis reconnected", metadata: ["connection": "\(name)", "failed_attempts": "\(failuresInARow)"])
                    }
                    failuresInARow = 0
                    state.withLock { if case .shutDown = $0.phase {} else { $0.phase = .connected } }
                case .failure(let error):
                    failuresInARow += 1
                    if failuresInARow == 1 {
                        logger.warning("redis connect failed; retrying with backoff", metadata: ["connection": "\(name)", "error": "\(error)"])
                    }
                    let until = DispatchTime.now().uptimeNanoseconds + UInt64(backoffMillis) * 1_000_000
                    let refused = state.withLock { state -> [Command] in
                        state.lastError = error
                        if case .shutDown = state.phase { return [] }
                        state.phase = .backingOff(untilNanos: until, error: error)
                        defer { state.queue = [] }
                        return state.queue
                    }
                    for command in carried + refused { command.completion.resume(returning: .failure(error)) }
                    carried = []
                    _ = wakeup.wait(timeout: .now() + .milliseconds(backoffMillis))
                    backoffMillis = min(backoffMillis * 2, options.maximumBackoffMillis)
                    continue
                }
            }
            guard let open = context else { break }
            let batch: [Command]
            let wasCarried = !carried.isEmpty
            if wasCarried {
                batch = carried
                carried = []
            } else {
                guard let next = nextBatch() else { break }
                if next.isEmpty { continue }
                batch = next
            }
            // An idle connection the server closed (restart, idle timeout) is noticed before
            // writing, so these commands are not failed as "outcome unknown" for nothing.
            if !wasCarried && Self.peerHasClosed(open) {
                redisFree(open)
                context = nil
                carried = batch
                logger.info("redis connection was closed by the server while idle; reconnecting", metadata: ["connection": "\(name)"])
                state.withLock { if case .shutDown = $0.phase {} else { $0.phase = .connecting } }
                continue
            }
            if let error = execute(batch, on: open) {
                redisFree(open)
                context = nil
                logger.warning("redis connection lost; reconnecting", metadata: ["connection": "\(name)", "error": "\(error)", "in_flight": "\(batch.count)"])
                state.withLock { state in
                    state.lastError = error
                    if case .shutDown = state.phase {} else { state.phase = .connecting }
                }
            }
        }
        if let context { redisFree(context) }
        let leftovers = state.withLock { state -> [Command] in
            defer { state.queue = [] }
            return state.queue
        }
        for command in carried + leftovers { command.completion.resume(returning: .failure(.shutDown)) }
        finished.signal()
    }

    private var isShutDown: Bool {
        state.withLock { if case .shutDown = $0.phase { true } else { false } }
    }

    /// The next round's commands: `[]` after a wakeup with nothing to do, `nil` at shutdown.
    private func nextBatch() -> [Command]? {
        let taken = state.withLock { state -> [Command]? in
            if case .shutDown = state.phase { return nil }
            if state.queue.isEmpty {
                state.threadIsWaiting = true
                return []
            }
            if state.queue.count <= options.maximumBatchSize {
                defer { state.queue = [] }
                return state.queue
            }
            let batch = Array(state.queue.prefix(options.maximumBatchSize))
            state.queue.removeFirst(options.maximumBatchSize)
            return batch
        }
        if let taken, taken.isEmpty { wakeup.wait() }
        return taken
    }

    /// One pipelined round. Returns the connection error that ended it early, if any; every
    /// command is completed either way.
    private func execute(_ batch: [Command], on context: UnsafeMutablePointer<redisContext>) -> RedisError? {
        var appended = 0
        for command in batch {
            guard Self.append(command.arguments, to: context) else { break }
            appended += 1
        }
        for (index, command) in batch.enumerated() {
            if index >= appended {
                // Never written (hiredis could not buffer it): certainly not executed.
                command.completion.resume(returning: .failure(.connectionLost("command could not be buffered")))
                continue
            }
            switch Self.readReply(context) {
            case .success(let reply):
                command.completion.resume(returning: .success(reply))
            case .failure(let error):
                for unanswered in batch[index...] { unanswered.completion.resume(returning: .failure(error)) }
                return error
            }
        }
        return nil
    }

    // MARK: hiredis calls (connection thread only)

    private func openContext() -> Result<UnsafeMutablePointer<redisContext>, RedisError> {
        let connectTimeout = Self.makeTimeval(millis: options.connectTimeoutMillis)
        guard let context = redisConnectWithTimeout(config.host, Int32(clamping: config.port), connectTimeout) else {
            return .failure(.connectFailed("cannot allocate a redis context"))
        }
        if context.pointee.err != 0 {
            let message = Self.errorText(context)
            redisFree(context)
            return .failure(.connectFailed(message))
        }
        _ = redisSetTimeout(context, Self.makeTimeval(millis: options.commandTimeoutMillis))
        _ = redisEnableKeepAlive(context)
        var handshake: [[[UInt8]]] = []
        if let password = config.password {
            var auth: [[UInt8]] = [Array("AUTH".utf8)]
            if let username = config.username, !username.isEmpty { auth.append(Array(username.utf8)) }
            auth.append(Array(password.revealed.utf8))
            handshake.append(auth)
        }
        if config.database != 0 {
            handshake.append([Array("SELECT".utf8), Array(String(config.database).utf8)])
        }
        for command in handshake {
            guard Self.append(command, to: context) else {
                redisFree(context)
                return .failure(.connectFailed("cannot buffer the handshake"))
            }
            switch Self.readReply(context) {
            case .success(.error(let message)):
                redisFree(context)
                // Never echo the command: it may hold the password.
                return .failure(.handshakeFailed(message))
            case .success:
                continue
            case .failure(let error):
                redisFree(context)
                return .failure(.connectFailed("during AUTH/SELECT: \(error)"))
            }
        }
        return .success(context)
    }

    private static func append(_ arguments: [[UInt8]], to context: UnsafeMutablePointer<redisContext>) -> Bool {
        var lengths: [Int] = []
        lengths.reserveCapacity(arguments.count)
        var offsets: [Int] = []
        offsets.reserveCapacity(arguments.count)
        var flat: [UInt8] = []
        flat.reserveCapacity(arguments.reduce(1) { $0 + $1.count })
        for argument in arguments {
            offsets.append(flat.count)
            lengths.append(argument.count)
            flat.append(contentsOf: argument)
        }
        flat.append(0)  // never empty, so the buffer has a base address even for empty arguments
        return flat.withUnsafeBufferPointer { buffer in
            let base = UnsafeRawPointer(buffer.baseAddress!).assumingMemoryBound(to: CChar.self)
            var pointers: [UnsafePointer<CChar>?] = offsets.map { base + $0 }
            return pointers.withUnsafeMutableBufferPointer { argv in
                lengths.withUnsafeBufferPointer { argvlen in
                    redisAppendCommandArgv(context, Int32(arguments.count), argv.baseAddress, argvlen.baseAddress) == REDIS_OK
                }
            }
        }
    }

    /// Reads the next reply (flushing the output buffer first, as `redisGetReply` does).
    private static func readReply(_ context: UnsafeMutablePointer<redisContext>) -> Result<RedisReply, RedisError> {
        var raw: UnsafeMutableRawPointer?
        let status = redisGetReply(context, &raw)
        let savedErrno = errno
        guard status == REDIS_OK, let raw else {
            let message = errorText(context)
            if context.pointee.err == REDIS_ERR_IO && (savedErrno == EAGAIN || savedErrno == EWOULDBLOCK || savedErrno == ETIMEDOUT) {
                return .failure(.timedOut)
            }
            return .failure(.connectionLost(message.isEmpty ? "no reply" : message))
        }
        defer { freeReplyObject(raw) }
        return .success(copy(raw.assumingMemoryBound(to: redisReply.self)))
    }

    /// Copies a hiredis reply tree into Swift values (hiredis frees it right after).
    private static func copy(_ reply: UnsafePointer<redisReply>) -> RedisReply {
        let value = reply.pointee
        switch value.type {
        case REDIS_REPLY_STRING:
            return .bulkString(bytes(value.str, value.len))
        case REDIS_REPLY_STATUS:
            return .status(String(decoding: bytes(value.str, value.len), as: UTF8.self))
        case REDIS_REPLY_ERROR:
            return .error(String(decoding: bytes(value.str, value.len), as: UTF8.self))
        case REDIS_REPLY_INTEGER:
            return .integer(Int64(value.integer))
        case REDIS_REPLY_NIL:
            return .null
        case REDIS_REPLY_ARRAY:
            guard let elements = value.element else { return .array([]) }
            return .array((0..<value.elements).map { index in
                elements[index].map { copy($0) } ?? .null
            })
        default:
            return .error("unknown hiredis reply type \(value.type)")
        }
    }

    /// Whether the socket of an idle connection is readable: with no command outstanding that
    /// can only be EOF or an error the server sent before closing it.
    private static func peerHasClosed(_ context: UnsafeMutablePointer<redisContext>) -> Bool {
        var descriptor = pollfd(fd: context.pointee.fd, events: Int16(POLLIN), revents: 0)
        return poll(&descriptor, 1, 0) > 0
    }

    private static func bytes(_ pointer: UnsafeMutablePointer<CChar>?, _ count: Int) -> [UInt8] {
        guard let pointer, count > 0 else { return [] }
        return Array(UnsafeRawBufferPointer(start: pointer, count: count))
    }

    private static func errorText(_ context: UnsafeMutablePointer<redisContext>) -> String {
        withUnsafeBytes(of: context.pointee.errstr) { raw in
            let text = raw.prefix { $0 != 0 }
            return String(decoding: text, as: UTF8.self)
        }
    }

    private static func makeTimeval(millis: Int) -> timeval {
        timeval(tv_sec: millis / 1_000, tv_usec: (millis % 1_000) * 1_000)
    }
}
