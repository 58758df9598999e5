import NIOCore
import Synchronization

/// Response body chunks as they arrive from the upstream (each at most 16 KiB, one allocation each).
///
/// Backpressured: when the bytes buffered here exceed the engine's high watermark the transfer is
/// paused (`curl_easy_pause`), and it is resumed once the consumer has drained below the low
/// watermark. When the consumer stops iterating (the sequence or its iterator is dropped, or the
/// consuming task is cancelled) the transfer is cancelled and its connection closed promptly.
///
/// Iterate it once. Errors are ``UpstreamError`` (for example `.connectionDropped`, `.stallTimeout`).
public struct UpstreamBody: AsyncSequence, Sendable {
    public typealias Element = ByteBuffer
    public typealias Failure = UpstreamError

    typealias Producer = NIOThrowingAsyncSequenceProducer<
        ByteBuffer, any Error, BodyBytesWatermarkStrategy, UpstreamBodyDelegate
    >

    private enum Source: Sendable {
        /// A curl transfer's body.
        case transfer(Producer, BodyBufferAccount)
        /// Chunks from elsewhere (a scripted upstream in tests).
        case chunks(AsyncThrowingStream<ByteBuffer, any Error>)
    }

    private let source: Source

    init(producer: Producer, account: BodyBufferAccount) {
        source = .transfer(producer, account)
    }

    /// A body made of `chunks`: for an ``UpstreamClient`` other than the curl engine (tests script
    /// their upstream this way). An error thrown by the stream is the body's failure.
    public init(chunks: AsyncThrowingStream<ByteBuffer, any Error>) {
        source = .chunks(chunks)
    }

    /// Bytes the engine buffered for this body that the consumer has not taken yet (0 for other sources).
    var bufferedBytes: Int {
        if case .transfer(_, let account) = source { return account.buffered }
        return 0
    }

    public func makeAsyncIterator() -> AsyncIterator {
        switch source {
        case .transfer(let producer, let account): AsyncIterator(inner: .transfer(producer.makeAsyncIterator(), account))
        case .chunks(let stream): AsyncIterator(inner: .chunks(stream.makeAsyncIterator()))
        }
    }

    public struct AsyncIterator: AsyncIteratorProtocol {
        public typealias Element = ByteBuffer
        public typealias Failure = UpstreamError

        enum Inner {
            case transfer(Producer.AsyncIterator, BodyBufferAccount)
            case chunks(AsyncThrowingStream<ByteBuffer, any Error>.AsyncIterator)
        }

        var inner: Inner

        /// The next chunk, or `nil` once the upstream's response is complete.
        public mutating func next() async throws(UpstreamError) -> ByteBuffer? {
            do {
                switch inner {
                case .transfer(var iterator, let account):
                    defer { inner = .transfer(iterator, account) }
                    guard let chunk = try await iterator.next() else { return nil }
                    account.consumed(chunk.readableBytes)
                    return chunk
                case .chunks(var iterator):
                    defer { inner = .chunks(iterator) }
                    // The stream ends (nil) when the task is cancelled: that is not the body's end.
                    let chunk = try await iterator.next()
                    if Task.isCancelled { throw CancellationError() }
                    return chunk
                }
            } catch let error as UpstreamError {
                throw error
            } catch is CancellationError {
                throw UpstreamError(kind: .cancelled, detail: "the task reading the body was cancelled")
            } catch {
                throw UpstreamError(kind: .other, detail: "body stream failed: \(error)")
            }
        }
    }
}

/// Bytes of one response body that the engine handed to the body stream and the consumer has not
/// taken yet, mirrored into the engine-wide total for metrics.
///
/// Written by the engine thread (``produced(_:)``) and the consuming task (``consumed(_:)``); read by the
/// backpressure strategy under the stream's lock. When the body is dropped with bytes still buffered,
/// `deinit` takes them off the engine-wide total.
final class BodyBufferAccount: Sendable {
    private let bufferedBytes = Atomic<Int>(0)
    private let engineTotal: CurlEngineCounters

    init(engineTotal: CurlEngineCounters) {
        self.engineTotal = engineTotal
    }

    var buffered: Int { bufferedBytes.load(ordering: .relaxed) }

    func produced(_ count: Int) {
        bufferedBytes.add(count, ordering: .relaxed)
        engineTotal.bufferedBodyBytes.add(count, ordering: .relaxed)
    }

    func consumed(_ count: Int) {
        bufferedBytes.subtract(count, ordering: .relaxed)
        engineTotal.bufferedBodyBytes.subtract(count, ordering: .relaxed)
    }

    deinit {
        let left = bufferedBytes.load(ordering: .relaxed)
        if left != 0 { engineTotal.bufferedBodyBytes.subtract(left, ordering: .relaxed) }
    }
}

/// High/low watermark over buffered *bytes* (NIO's built-in strategy counts elements, and SSE chunks
/// range from a few bytes to 16 KiB).
///
/// The strategy only sees the element count, so it reads the byte count from the shared account. When
/// an element is consumed the account still includes it (the iterator subtracts right after), which
/// only makes resuming slightly later; an empty buffer always asks for more, so it cannot stall.
struct BodyBytesWatermarkStrategy: NIOAsyncSequenceProducerBackPressureStrategy {
    let account: BodyBufferAccount
    let lowWatermarkBytes: Int
    let highWatermarkBytes: Int

    mutating func didYield(bufferDepth: Int) -> Bool {
        account.buffered < highWatermarkBytes
    }

    mutating func didConsume(bufferDepth: Int) -> Bool {
        bufferDepth == 0 || account.buffered < lowWatermarkBytes
    }
}

/// Turns the body stream's demand signals into engine commands. Called on the consumer's thread;
/// only enqueues (never touches curl).
struct UpstreamBodyDelegate: NIOAsyncSequenceProducerDelegate {
    let transfer: UpstreamTransfer

    func produceMore() {
        transfer.loop.enqueue(.resume(transfer))
    }

    func didTerminate() {
        // After a normal end there is nothing to cancel; skip the command and the wakeup.
        guard !transfer.hasEnded else { return }
        transfer.loop.enqueue(.cancel(transfer))
    }
}
