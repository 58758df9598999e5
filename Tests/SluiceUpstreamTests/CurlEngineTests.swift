import CCurl
import Foundation
import Glibc
import Logging
import NIOCore
import XCTest

@testable import SluiceUpstream

final class CurlEngineTests: XCTestCase {
    private var server: TestUpstreamServer!

    override func setUp() async throws {
        server = try await TestUpstreamServer()
    }

    override func tearDown() async throws {
        try await server.stop()
        server = nil
    }

    // MARK: Helpers

    private func withEngine(
        _ configuration: CurlEngine.Configuration = CurlEngine.Configuration(threads: 2, maxConnectionsPerHost: 4),
        _ body: (CurlEngine) async throws -> Void
    ) async throws {
        let engine = CurlEngine(configuration: configuration, logger: Logger(label: "test.curl-engine"))
        try engine.start()
        do {
            try await body(engine)
        } catch {
            await engine.shutdown()
            throw error
        }
        await engine.shutdown()
        XCTAssertEqual(engine.stats.activeTransfers, 0, "no transfer may outlive shutdown")
    }

    private func get(_ path: String, timeouts: UpstreamTimeouts = UpstreamTimeouts()) -> UpstreamRequest {
        UpstreamRequest(url: server.url(path), method: "GET", timeouts: timeouts)
    }

    private func collect(_ body: UpstreamBody) async throws(UpstreamError) -> [UInt8] {
        var bytes: [UInt8] = []
        for try await chunk in body { bytes += chunk.readableBytesView }
        return bytes
    }

    private func expectError(
        _ expected: UpstreamError.Kind, file: StaticString = #filePath, line: UInt = #line,
        _ operation: () async throws -> Void
    ) async {
        do {
            try await operation()
            XCTFail("expected UpstreamError.\(expected), got success", file: file, line: line)
        } catch let error as UpstreamError {
            XCTAssertEqual(error.kind, expected, "\(error)", file: file, line: line)
        } catch {
            XCTFail("expected UpstreamError.\(expected), got \(error)", file: file, line: line)
        }
    }

    private func assertEventually(
        within seconds: Double, file: StaticString = #filePath, line: UInt = #line, _ condition: () -> Bool
    ) async {
        let held = await eventually(within: seconds, condition)
        XCTAssertTrue(held, "condition did not hold within \(seconds) s", file: file, line: line)
    }

    /// Polls until `condition` holds or `seconds` passed; returns whether it held.
    private func eventually(within seconds: Double, _ condition: () -> Bool) async -> Bool {
        let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        while ContinuousClock.now < deadline {
            if condition() { return true }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return condition()
    }

    private func fixedBody(_ count: Int) -> [UInt8] { (0..<count).map { UInt8(ascii: "0") + UInt8($0 % 10) } }

    /// The names of this process's threads, from `/proc/self/task/*/comm`.
    private func threadNames() throws -> [String] {
        try FileManager.default.contentsOfDirectory(atPath: "/proc/self/task").compactMap { tid in
            try? String(contentsOfFile: "/proc/self/task/\(tid)/comm", encoding: .utf8)
                .trimmingCharacters(in: .whitespacesAndNewlines)
        }
    }

    // MARK: Threads

    func testEngineThreadsAreNamedAndGoAtShutdown() async throws {
        // Counted relative to what runs already, should another test's engine still be stopping.
        func engineThreads() -> [String] { ((try? threadNames()) ?? []).filter { $0.hasPrefix("sluice-curl-") } }
        let before = engineThreads().count
        let engine = CurlEngine(
            configuration: CurlEngine.Configuration(threads: 3), logger: Logger(label: "test.curl-engine"))
        try engine.start()
        let named = await eventually(within: 5) { engineThreads().count == before + 3 }
        XCTAssertTrue(named, "three more threads named sluice-curl-<i>")
        XCTAssertTrue(Set(engineThreads()).isSuperset(of: ["sluice-curl-0", "sluice-curl-1", "sluice-curl-2"]))
        await engine.shutdown()
        XCTAssertEqual(engineThreads().count, before, "shutdown joins the threads")
    }

    // MARK: Requests and the keep-alive pool

    func testFixedBodyAndHeaders() async throws {
        try await withEngine { engine in
            let response = try await engine.execute(get("/fixed?bytes=100000"))
            XCTAssertEqual(response.status, 200)
            XCTAssertEqual(response.headerValue("Content-Length"), "100000")
            let bytes = try await collect(response.body)
            XCTAssertEqual(bytes, fixedBody(100_000))

            let missing = try await engine.execute(get("/nope"))
            XCTAssertEqual(missing.status, 404)
            let empty = try await collect(missing.body)
            XCTAssertEqual(empty, [])
        }
    }

    /// A small answer comes in one read: its head is handed over only after its body and end, so the
    /// waiting task wakes once and finds the whole body buffered and the transfer ended.
    func testSmallAnswerIsHandedOverWhole() async throws {
        try await withEngine(CurlEngine.Configuration(threads: 1, maxConnectionsPerHost: 1)) { engine in
            for _ in 0..<50 {
                let response = try await engine.execute(get("/fixed?bytes=1000"))
                XCTAssertEqual(response.body.bufferedBytes, 1000, "the body was not complete when the head arrived")
                XCTAssertEqual(engine.stats.activeTransfers, 0, "the transfer had not ended when the head arrived")
                let bytes = try await collect(response.body)
                XCTAssertEqual(bytes, fixedBody(1000))
            }
        }
    }

    func testPostBodyArrivesWithoutExpectContinue() async throws {
        try await withEngine { engine in
            // Large enough that curl would add `Expect: 100-continue` on its own.
            let payload = (0..<2_000_000).map { UInt8(truncatingIfNeeded: $0 &* 31) }
            let request = UpstreamRequest(
                url: server.url("/echo"), method: "POST",
                headers: [(name: "Content-Type", value: "application/octet-stream")], body: payload)
            let response = try await engine.execute(request)
            XCTAssertEqual(response.headerValue("x-echo-method"), "POST")
            XCTAssertEqual(response.headerValue("x-echo-expect"), "none")
            let echoed = try await collect(response.body)
            XCTAssertEqual(echoed.count, payload.count)
            XCTAssertTrue(echoed == payload)
        }
    }

    /// Easy handles are reused without a reset: one transfer's method, body and timeout must not leak
    /// into the next one on the same handle (one engine thread, one connection, so one handle).
    func testReusedHandleCarriesNothingOver() async throws {
        try await withEngine(CurlEngine.Configuration(threads: 1, maxConnectionsPerHost: 1)) { engine in
            let steps: [(method: String, body: String)] = [
                ("POST", "first body"), ("GET", ""), ("DELETE", ""), ("PUT", "put body"), ("HEAD", ""),
                ("GET", ""), ("POST", ""), ("PATCH", "x"), ("GET", ""),
            ]
            for step in steps {
                let request = UpstreamRequest(url: server.url("/echo"), method: step.method, body: Array(step.body.utf8))
                let response = try await engine.execute(request)
                let echoed = try await collect(response.body)
                XCTAssertEqual(response.headerValue("x-echo-method"), step.method, "\(step)")
                if step.method == "HEAD" {
                    XCTAssertEqual(echoed, [], "a HEAD answer has no body")
                } else {
                    XCTAssertEqual(String(decoding: echoed, as: UTF8.self), step.body, "\(step)")
                }
            }
            XCTAssertEqual(engine.stats.connectionsOpened, 1, "all on one connection, so on one handle")
        }
    }

    /// (a) 200 sequential and 50 rounds of 4 concurrent requests reuse pooled connections.
    func testKeepAlivePoolBoundsConnections() async throws {
        let configuration = CurlEngine.Configuration(threads: 2, maxConnectionsPerHost: 2)
        try await withEngine(configuration) { engine in
            for _ in 0..<200 {
                let response = try await engine.execute(get("/fixed?bytes=512"))
                let bytes = try await collect(response.body)
                XCTAssertEqual(bytes.count, 512)
            }
            for _ in 0..<50 {
                let request = get("/fixed?bytes=2048")
                try await withThrowingTaskGroup(of: Int.self) { group in
                    for _ in 0..<4 {
                        group.addTask {
                            let response = try await engine.execute(request)
                            var count = 0
                            for try await chunk in response.body { count += chunk.readableBytes }
                            return count
                        }
                    }
                    for try await count in group { XCTAssertEqual(count, 2048) }
                }
            }
            let accepted = server.counters.acceptedConnections.load(ordering: .relaxed)
            XCTAssertEqual(server.counters.requests.load(ordering: .relaxed), 400)
            XCTAssertLessThanOrEqual(accepted, configuration.maxConnectionsPerHost * configuration.threads)
            XCTAssertEqual(engine.stats.connectionsOpened, accepted, "curl's connect count matches the server's accept count")
            XCTAssertEqual(engine.stats.transfersStarted, 400)
            XCTAssertEqual(engine.stats.transfersCompleted, 400)
        }
    }

    // MARK: Streaming and backpressure

    /// (b) Chunks reach the consumer as the upstream sends them, not at the end.
    func testStreamedChunksArriveAsSent() async throws {
        try await withEngine { engine in
            let start = ContinuousClock.now
            let response = try await engine.execute(get("/stream?chunks=5&intervalMs=200"))
            var text = ""
            var arrivals: [Duration] = []
            for try await chunk in response.body {
                arrivals.append(ContinuousClock.now - start)
                text += String(buffer: chunk)
            }
            XCTAssertEqual(text, (0..<5).map { "chunk-\($0)\n" }.joined())
            XCTAssertGreaterThanOrEqual(arrivals.count, 2)
            // The server spends ~800 ms sending. Buffered to the end, everything would arrive at once
            // after that; streamed, the first chunk is here early and the rest spread over the interval.
            // (Bounds are loose: the machine is shared with parallel builds.)
            XCTAssertLessThan(arrivals[0], .milliseconds(600))
            XCTAssertGreaterThan(arrivals[arrivals.count - 1] - arrivals[0], .milliseconds(500))
        }
    }

    /// (c) A slow consumer pauses the transfer: the upstream's writes stall and the engine buffers at
    /// most the high watermark plus one chunk.
    func testSlowConsumerPausesAndBoundsMemory() async throws {
        let configuration = CurlEngine.Configuration(threads: 1, highWatermarkBytes: 256 * 1024, lowWatermarkBytes: 64 * 1024)
        let limit = configuration.highWatermarkBytes + 16 * 1024
        let total = 50 * 1024 * 1024
        try await withEngine(configuration) { engine in
            let response = try await engine.execute(get("/big?bytes=\(total)"))
            var iterator = response.body.makeAsyncIterator()
            var received = try await iterator.next()?.readableBytes ?? 0

            try await Task.sleep(for: .seconds(1))
            let writtenWhilePaused = server.counters.bigBytesWritten.load(ordering: .relaxed)
            XCTAssertLessThanOrEqual(engine.stats.bufferedBodyBytes, limit)
            // Loopback socket buffers hold a few MB at most; without pausing all 50 MB would be written.
            XCTAssertLessThan(writtenWhilePaused, 20 * 1024 * 1024, "upstream writes must stall while the consumer sleeps")
            try await Task.sleep(for: .milliseconds(300))
            XCTAssertEqual(server.counters.bigBytesWritten.load(ordering: .relaxed), writtenWhilePaused, "still stalled")

            var peakBuffered = 0
            while let chunk = try await iterator.next() {
                received += chunk.readableBytes
                peakBuffered = max(peakBuffered, engine.stats.bufferedBodyBytes)
            }
            XCTAssertEqual(received, total)
            XCTAssertLessThanOrEqual(peakBuffered, limit)
            XCTAssertEqual(engine.stats.bufferedBodyBytes, 0)
        }
    }

    // MARK: Cancellation

    /// (d) Dropping the body iterator cancels the transfer and closes the upstream connection.
    func testDroppingTheBodyCancelsTheTransfer() async throws {
        try await withEngine { engine in
            do {
                let response = try await engine.execute(get("/stream?chunks=0&intervalMs=20"))
                var iterator = response.body.makeAsyncIterator()
                _ = try await iterator.next()
                _ = try await iterator.next()
            }  // response and iterator dropped here
            let closed = await eventually(within: 2) { self.server.counters.closedConnections.load(ordering: .relaxed) == 1 }
            XCTAssertTrue(closed, "the upstream saw its connection closed")
            await assertEventually(within: 1) { engine.stats.activeTransfers == 0 }
            XCTAssertEqual(engine.stats.transfersCancelled, 1)
        }
    }

    func testDroppingAnUnreadResponseCancelsTheTransfer() async throws {
        try await withEngine { engine in
            _ = try await engine.execute(get("/stream?chunks=0&intervalMs=20"))
            let closed = await eventually(within: 2) { self.server.counters.closedConnections.load(ordering: .relaxed) == 1 }
            XCTAssertTrue(closed, "the upstream saw its connection closed")
            XCTAssertEqual(engine.stats.transfersCancelled, 1)
        }
    }

    func testCancellingTheTaskBeforeTheHeadCancelsTheTransfer() async throws {
        try await withEngine { engine in
            let request = get("/delay-head?ms=5000")
            let task = Task { () async throws -> UpstreamResponse in try await engine.execute(request) }
            // Wait for the request to reach the server (not just the engine) so there is a connection to close.
            await assertEventually(within: 2) { self.server.counters.requests.load(ordering: .relaxed) == 1 }
            task.cancel()
            await expectError(.cancelled) { _ = try await task.value }
            let closed = await eventually(within: 2) { self.server.counters.closedConnections.load(ordering: .relaxed) == 1 }
            XCTAssertTrue(closed)
            XCTAssertEqual(engine.stats.transfersCancelled, 1)
        }
    }

    func testCancellingTheReadingTaskCancelsTheTransfer() async throws {
        try await withEngine { engine in
            let response = try await engine.execute(get("/stream?chunks=0&intervalMs=20"))
            let reader = Task { () async throws -> Int in
                var count = 0
                for try await _ in response.body { count += 1 }
                return count
            }
            try await Task.sleep(for: .milliseconds(200))
            reader.cancel()
            await expectError(.cancelled) { _ = try await reader.value }
            let closed = await eventually(within: 2) { self.server.counters.closedConnections.load(ordering: .relaxed) == 1 }
            XCTAssertTrue(closed)
        }
    }

    /// Many overlapping transfers ending every way at once (complete, body dropped, task cancelled
    /// before and after the head): nothing crashes, every transfer is accounted for, nothing stays active.
    func testConcurrentTransfersEndingEveryWay() async throws {
        try await withEngine(CurlEngine.Configuration(threads: 2, maxConnectionsPerHost: 16)) { engine in
            let complete = get("/stream?chunks=5&intervalMs=5")
            let endless = get("/stream?chunks=0&intervalMs=5")
            let slowHead = get("/delay-head?ms=2000")
            let completed = try await withThrowingTaskGroup(of: Bool.self) { group in
                for index in 0..<120 {
                    switch index % 4 {
                    case 0:
                        group.addTask {
                            var text = ""
                            for try await chunk in try await engine.execute(complete).body { text += String(buffer: chunk) }
                            return text == (0..<5).map { "chunk-\($0)\n" }.joined()
                        }
                    case 1:
                        group.addTask {
                            var iterator = try await engine.execute(endless).body.makeAsyncIterator()
                            _ = try await iterator.next()
                            return false
                        }
                    case 2:
                        group.addTask {
                            let task = Task { try await engine.execute(slowHead) }
                            try await Task.sleep(for: .milliseconds(Int.random(in: 0...50)))
                            task.cancel()
                            _ = try? await task.value
                            return false
                        }
                    default:
                        group.addTask {
                            let reader = Task {
                                for try await _ in try await engine.execute(endless).body {}
                            }
                            try await Task.sleep(for: .milliseconds(Int.random(in: 20...80)))
                            reader.cancel()
                            _ = try? await reader.value
                            return false
                        }
                    }
                }
                var completed = 0
                for try await ok in group where ok { completed += 1 }
                return completed
            }
            XCTAssertEqual(completed, 30)
            await assertEventually(within: 3) { engine.stats.activeTransfers == 0 }
            let stats = engine.stats
            XCTAssertEqual(stats.transfersCompleted, 30)
            XCTAssertEqual(stats.transfersFailed, 0)
            // Every transfer ends exactly once; a cancel that overtook its start ends one never started.
            XCTAssertEqual(stats.transfersCompleted + stats.transfersFailed + stats.transfersCancelled, 120)
            XCTAssertLessThanOrEqual(stats.transfersStarted, 120)
            await assertEventually(within: 3) { engine.stats.bufferedBodyBytes == 0 }
        }
    }

    // MARK: Failures and timeouts

    /// (e) Nothing listening → connectFailed.
    func testConnectRefused() async throws {
        let port = try closedPort()
        try await withEngine { engine in
            await expectError(.connectFailed) {
                _ = try await engine.execute(UpstreamRequest(url: "http://127.0.0.1:\(port)/", method: "GET"))
            }
        }
    }

    /// (e) A listener whose accept queue is full drops SYNs → connectTimeout.
    func testConnectTimeout() async throws {
        let listener = try BlackholeListener()
        defer { listener.close() }
        try await withEngine { engine in
            let start = ContinuousClock.now
            await expectError(.connectTimeout) {
                _ = try await engine.execute(UpstreamRequest(
                    url: "http://127.0.0.1:\(listener.port)/", method: "GET",
                    timeouts: UpstreamTimeouts(connectMs: 300)))
            }
            XCTAssertLessThan(ContinuousClock.now - start, .seconds(2))
        }
    }

    /// (e) The head does not come in time → firstByteTimeout, and the connection is closed.
    func testFirstByteTimeout() async throws {
        try await withEngine { engine in
            let start = ContinuousClock.now
            await expectError(.firstByteTimeout) {
                _ = try await engine.execute(self.get("/delay-head?ms=3000", timeouts: UpstreamTimeouts(firstByteMs: 300)))
            }
            let elapsed = ContinuousClock.now - start
            XCTAssertGreaterThanOrEqual(elapsed, .milliseconds(300))
            XCTAssertLessThan(elapsed, .milliseconds(1500))
            await assertEventually(within: 2) { self.server.counters.closedConnections.load(ordering: .relaxed) == 1 }
        }
    }

    /// (e) The body stops flowing → stallTimeout from the body iteration.
    func testStallTimeout() async throws {
        try await withEngine { engine in
            let response = try await engine.execute(get("/stall?chunks=1", timeouts: UpstreamTimeouts(stallMs: 300)))
            var iterator = response.body.makeAsyncIterator()
            let first = try await iterator.next()
            XCTAssertEqual(first.map { String(buffer: $0) }, "chunk-0\n")
            await expectError(.stallTimeout) { _ = try await iterator.next() }
        }
    }

    func testTotalTimeout() async throws {
        try await withEngine { engine in
            await expectError(.totalTimeout) {
                let response = try await engine.execute(self.get("/stream?chunks=0&intervalMs=50", timeouts: UpstreamTimeouts(totalMs: 400)))
                _ = try await self.collect(response.body)
            }
        }
    }

    /// (f) The upstream closes mid-stream → connectionDropped from the body iteration.
    func testConnectionDroppedMidStream() async throws {
        try await withEngine { engine in
            let response = try await engine.execute(get("/drop?chunks=2"))
            var text = ""
            await expectError(.connectionDropped) {
                for try await chunk in response.body { text += String(buffer: chunk) }
            }
            XCTAssertEqual(text, "chunk-0\nchunk-1\n")
            XCTAssertEqual(engine.stats.transfersFailed, 1)
        }
    }

    // MARK: Limits, validation, lifecycle

    func testTooManyTransfers() async throws {
        try await withEngine(CurlEngine.Configuration(threads: 1, maxInFlightTransfers: 2)) { engine in
            let request = get("/delay-head?ms=300")
            async let first = engine.execute(request)
            async let second = engine.execute(request)
            await assertEventually(within: 2) { engine.stats.activeTransfers == 2 }
            await expectError(.tooManyTransfers) { _ = try await engine.execute(request) }
            let statuses = try await [first.status, second.status]
            XCTAssertEqual(statuses, [200, 200])
        }
    }

    func testInvalidRequestsAreRejected() async throws {
        try await withEngine { engine in
            let injected = UpstreamRequest(url: server.url("/fixed"), headers: [(name: "X-A", value: "b\r\nX-Injected: 1")])
            await expectError(.other) { _ = try await engine.execute(injected) }
            await expectError(.other) { _ = try await engine.execute(UpstreamRequest(url: "file:///etc/passwd")) }
            await expectError(.other) { _ = try await engine.execute(UpstreamRequest(url: self.server.url("/fixed"), method: "GE T")) }
            // HTTP/2 agreed on by TLS needs TLS; cleartext HTTP/2 needs cleartext.
            await expectError(.other) { _ = try await engine.execute(UpstreamRequest(url: self.server.url("/fixed"), httpVersion: .http2)) }
            await expectError(.other) { _ = try await engine.execute(UpstreamRequest(url: "https://127.0.0.1:1/fixed", httpVersion: .h2c)) }
            XCTAssertEqual(engine.stats.transfersStarted, 0)
        }
    }

    // MARK: HTTP versions

    /// The version each response came on is reported; `.auto` over cleartext is HTTP/1.1 and shares
    /// the keep-alive pool with `.http1_1` (the test server speaks HTTP/1.1 only).
    func testHTTPVersionOfEachResponseIsReported() async throws {
        try await withEngine(CurlEngine.Configuration(threads: 1, maxConnectionsPerHost: 1)) { engine in
            for version in [UpstreamHTTPVersion.auto, .http1_1, .auto] {
                var request = get("/fixed?bytes=10")
                request.httpVersion = version
                let response = try await engine.execute(request)
                XCTAssertEqual(response.connection?.httpVersion, .http1_1, "\(version)")
                _ = try await collect(response.body)
            }
            XCTAssertEqual(engine.stats.connectionsOpened, 1, "one keep-alive connection for all three")
        }
    }

    /// `.h2c` against a server that speaks only HTTP/1.1: the exchange fails (the server cannot read
    /// HTTP/2's preface), promptly, and the engine goes on serving other requests.
    func testH2CAgainstAnHTTP1ServerFails() async throws {
        try await withEngine(CurlEngine.Configuration(threads: 1)) { engine in
            let started = ContinuousClock.now
            for _ in 0..<3 {
                var request = get("/fixed?bytes=10", timeouts: UpstreamTimeouts(firstByteMs: 5_000))
                request.httpVersion = .h2c
                do {
                    let response = try await engine.execute(request)
                    XCTFail("an HTTP/1.1 server answered h2c with \(response.status)")
                } catch let error as UpstreamError {
                    XCTAssertNotEqual(error.kind, .firstByteTimeout, "\(error)")
                }
            }
            XCTAssertLessThan(ContinuousClock.now - started, .seconds(5))
            let response = try await engine.execute(get("/fixed?bytes=10"))
            XCTAssertEqual(response.status, 200)
            _ = try await collect(response.body)
        }
    }

    func testCurlHTTPVersionOptions() {
        XCTAssertEqual(CurlRequestConfigurator.curlHTTPVersion(.auto), Int(CURL_HTTP_VERSION_2TLS))
        XCTAssertEqual(CurlRequestConfigurator.curlHTTPVersion(.http1_1), Int(CURL_HTTP_VERSION_1_1))
        XCTAssertEqual(CurlRequestConfigurator.curlHTTPVersion(.http2), Int(CURL_HTTP_VERSION_2_0))
        XCTAssertEqual(CurlRequestConfigurator.curlHTTPVersion(.h2c, opensConnection: true), Int(CURL_HTTP_VERSION_2_PRIOR_KNOWLEDGE))
        XCTAssertEqual(CurlRequestConfigurator.curlHTTPVersion(.h2c, opensConnection: false), Int(CURL_HTTP_VERSION_2_0), "a follower never asks for prior knowledge (curl 7.88 would break the shared connection)")
        XCTAssertTrue(UpstreamHTTPVersion.auto.mayMultiplex(overTLS: true))
        XCTAssertFalse(UpstreamHTTPVersion.auto.mayMultiplex(overTLS: false))
        XCTAssertFalse(UpstreamHTTPVersion.http1_1.mayMultiplex(overTLS: true))
        XCTAssertTrue(UpstreamHTTPVersion.http2.mayMultiplex(overTLS: true))
        XCTAssertTrue(UpstreamHTTPVersion.h2c.mayMultiplex(overTLS: false))
        XCTAssertEqual(UpstreamTransfer.httpVersion(curlValue: Int(CURL_HTTP_VERSION_2_0)), .http2)
        XCTAssertEqual(UpstreamTransfer.httpVersion(curlValue: Int(CURL_HTTP_VERSION_1_1)), .http1_1)
        XCTAssertNil(UpstreamTransfer.httpVersion(curlValue: 0))
        XCTAssertEqual(UpstreamRequest(url: "http://10.0.0.1:8000/v1/chat/completions").origin, "http://10.0.0.1:8000")
        XCTAssertEqual(UpstreamRequest(url: "https://llm.internal?x=1").origin, "https://llm.internal")
        XCTAssertNotNil(CurlGlobal.defaultCAFile ?? CurlGlobal.defaultCAPath, "Debian's libcurl has a CA bundle built in")
    }

    /// (g) Shutdown with transfers in every phase: all end with shuttingDown, nothing stays active.
    func testShutdownWithTransfersInFlight() async throws {
        let engine = CurlEngine(configuration: CurlEngine.Configuration(threads: 2), logger: Logger(label: "test.curl-engine"))
        try engine.start()
        var streams: [UpstreamResponse] = []
        for _ in 0..<6 {
            streams.append(try await engine.execute(get("/stream?chunks=0&intervalMs=20")))
        }
        let slowHead = get("/delay-head?ms=10000")
        let waitingForHead = (0..<4).map { _ in
            Task { () async throws -> UpstreamResponse in try await engine.execute(slowHead) }
        }
        await assertEventually(within: 2) { self.server.counters.requests.load(ordering: .relaxed) == 10 }
        XCTAssertEqual(engine.stats.activeTransfers, 10)

        await engine.shutdown()

        XCTAssertEqual(engine.stats.activeTransfers, 0)
        XCTAssertEqual(engine.stats.transfersCancelled, 10)
        for task in waitingForHead {
            await expectError(.shuttingDown) { _ = try await task.value }
        }
        for response in streams {
            await expectError(.shuttingDown) { _ = try await self.collect(response.body) }
        }
        streams.removeAll()
        XCTAssertEqual(engine.stats.bufferedBodyBytes, 0)
        await expectError(.shuttingDown) { _ = try await engine.execute(self.get("/fixed")) }
        await assertEventually(within: 2) { self.server.counters.closedConnections.load(ordering: .relaxed) == 10 }
        await engine.shutdown()  // idempotent
    }

    func testExecuteBeforeStartFails() async {
        let engine = CurlEngine(configuration: CurlEngine.Configuration(threads: 1), logger: Logger(label: "test.curl-engine"))
        await expectError(.shuttingDown) { _ = try await engine.execute(self.get("/fixed")) }
    }

    func testInvalidConfigurationIsRejectedAtStart() {
        let engine = CurlEngine(
            configuration: CurlEngine.Configuration(threads: 1, highWatermarkBytes: 10, lowWatermarkBytes: 10),
            logger: Logger(label: "test.curl-engine"))
        XCTAssertThrowsError(try engine.start())
    }

    // MARK: Sockets for the connect tests

    /// A loopback port with nothing listening (bound once, then released).
    private func closedPort() throws -> Int {
        let listener = try BlackholeListener(fillQueue: false)
        let port = listener.port
        listener.close()
        return port
    }
}

/// A listening socket that never accepts, with its accept queue filled so that the kernel drops
/// further SYNs: connecting to it hangs until the client's connect timeout.
private final class BlackholeListener {
    let port: Int
    private var fds: [Int32] = []

    init(fillQueue: Bool = true) throws {
        let listener = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard listener >= 0 else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
        fds.append(listener)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(listener, $0, length) }
        }
        guard bound == 0, listen(listener, 0) == 0 else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
        _ = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listener, $0, &length) }
        }
        port = Int(UInt16(bigEndian: address.sin_port))
        guard fillQueue else { return }
        // Backlog 0 holds one finished handshake; the rest of these connects park in SYN_SENT.
        for _ in 0..<3 {
            let client = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
            guard client >= 0 else { continue }
            fds.append(client)
            _ = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(client, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
        }
        usleep(100_000)
    }

    func close() {
        fds.forEach { _ = Glibc.close($0) }
        fds = []
    }
}
