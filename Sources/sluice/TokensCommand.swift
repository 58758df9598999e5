import ArgumentParser
import Foundation
import SluiceCore
import SluiceServer
import SluiceTokenizer

/// `sluice tokens`: counts (or lists) the tokens of texts exactly as tiktoken's `encode_ordinary`
/// does, so that operators can check what a prompt will cost and scripts can diff against tiktoken.
struct TokensCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tokens",
        abstract: "Count the tokens of text files with the model's tokenizer.",
        discussion: """
            Prints one line per input, in order: the token count, or with --ids the token ids \
            separated by spaces. Inputs are FILEs, or standard input when none is given or for "-". \
            Special-token text such as <|endoftext|> counts as plain text; invalid UTF-8 is read as \
            U+FFFD, like Python's bytes.decode("utf-8", "replace").

            Benchmarking (used by scripts/bench-tokenizer): --bench-repeat N loads both encodings, \
            reports their load time (wall clock and process CPU) and the process RSS, then counts \
            each input N times and reports the elapsed wall-clock and thread CPU time, all on standard error as "bench ..." \
            lines of key=value pairs.
            """
    )

    /// Inputs above this size are refused: the CLI reads each input whole.
    static let maxInputBytes = 1 << 30

    @Option(help: "Model whose encoding to use, e.g. gpt-4o or gpt-4-0613 (unknown models use o200k_base).")
    var model: String?

    @Option(help: "Encoding to use instead of the model's: \(EncodingName.allCases.map(\.rawValue).joined(separator: " or ")).")
    var encoding: String?

    @Option(name: .customLong("tokenizer-dir"), help: "Directory holding the .tiktoken rank files (default: $SLUICE_TOKENIZER_DIR, else ./.cache/tokenizer).")
    var tokenizerDirectory: String?

    @Flag(help: "Each FILE is a /v1/chat/completions request body: print its prompt tokens exactly as the gateway counts them (model from the body unless --model is given).")
    var chat = false

    @Flag(help: "Each FILE is a /v1/responses request body: print its input tokens exactly as the gateway counts them for admission (the Responses framing is Sluice's, unverified against the API: settlement uses the upstream's input_tokens).")
    var responses = false

    @Flag(help: "Print the token ids instead of their count.")
    var ids = false

    @Option(name: .customLong("bench-repeat"), help: ArgumentHelp("Count each input N times and report timings on standard error.", valueName: "N"))
    var benchRepeat: Int?

    @Argument(help: "Text files to tokenize; \"-\" or none for standard input.")
    var files: [String] = []

    func validate() throws {
        if chat && responses {
            throw ValidationError("--chat and --responses are two kinds of request body; give one.")
        }
        if (chat || responses) && (ids || benchRepeat != nil || encoding != nil) {
            throw ValidationError("--\(chat ? "chat" : "responses") counts whole requests; it cannot be combined with --ids, --encoding or --bench-repeat.")
        }
        if model == nil && encoding == nil && !chat && !responses {
            throw ValidationError("Give --model or --encoding.")
        }
        if let encoding, EncodingName(rawValue: encoding) == nil {
            throw ValidationError("Unknown encoding \"\(encoding)\"; expected \(EncodingName.allCases.map(\.rawValue).joined(separator: " or ")).")
        }
        if let benchRepeat, benchRepeat < 1 {
            throw ValidationError("--bench-repeat must be at least 1.")
        }
        if benchRepeat != nil && ids {
            throw ValidationError("--bench-repeat measures counting; it cannot be combined with --ids.")
        }
    }

    func run() throws {
        let directory = tokenizerDirectory
            ?? ProcessInfo.processInfo.environment["SLUICE_TOKENIZER_DIR"].flatMap { $0.isEmpty ? nil : $0 }
            ?? "./.cache/tokenizer"
        if chat || responses {
            return try countRequests(endpoint: chat ? .chatCompletions : .responses, directory: directory)
        }
        let name = encoding.flatMap(EncodingName.init(rawValue:))
            ?? ModelEncodings().encodingName(forModel: model ?? "")

        let selected: BPEEncoding
        if benchRepeat != nil {
            let start = ContinuousClock.now
            let startCPU = CPUClock.nanoseconds(CLOCK_PROCESS_CPUTIME_ID)
            let tokenizers = try Tokenizers.load(directory: directory)
            let cpu = CPUClock.nanoseconds(CLOCK_PROCESS_CPUTIME_ID) - startCPU
            let elapsed = ContinuousClock.now - start
            selected = tokenizers.encoding(name)
            var line = "bench load encodings=\(EncodingName.allCases.count) load_ns=\(elapsed.nanoseconds) cpu_ns=\(cpu)"
            if let memory = ProcessMemory.current() { line += " rss_kib=\(memory.residentKiB) peak_rss_kib=\(memory.peakResidentKiB)" }
            StandardError.write(line)
        } else {
            selected = try BPEEncoding.load(name, directory: directory)
        }

        var output = StandardOutput()
        for input in files.isEmpty ? ["-"] : files {
            let bytes = try Self.read(input)
            bytes.withUnsafeBytes { raw in
                let utf8 = raw.bindMemory(to: UInt8.self)
                if ids {
                    output.writeIDs(selected.encodeOrdinary(utf8: utf8))
                } else if let repeats = benchRepeat {
                    var count = 0
                    let start = ContinuousClock.now
                    let startCPU = CPUClock.nanoseconds(CLOCK_THREAD_CPUTIME_ID)
                    for _ in 0..<repeats { count = selected.countOrdinary(utf8: utf8) }
                    let cpu = CPUClock.nanoseconds(CLOCK_THREAD_CPUTIME_ID) - startCPU
                    let elapsed = ContinuousClock.now - start
                    StandardError.write("bench count encoding=\(name.rawValue) bytes=\(utf8.count) tokens=\(count) repeat=\(repeats) elapsed_ns=\(elapsed.nanoseconds) cpu_ns=\(cpu) file=\(input)")
                    output.writeLine(String(count))
                } else {
                    output.writeLine(String(selected.countOrdinary(utf8: utf8)))
                }
            }
        }
        output.flush()
    }

    /// `--chat` / `--responses`: parse each body as the gateway does and count its prompt with the
    /// same counter.
    private func countRequests(endpoint: OpenAIEndpoint, directory: String) throws {
        let counter = PromptTokenCounter(tokenizers: try Tokenizers.load(directory: directory))
        var output = StandardOutput()
        for input in files.isEmpty ? ["-"] : files {
            let body = [UInt8](try Self.read(input))
            do {
                let request = try OpenAIRequest.parse(body, endpoint: endpoint)
                let effective = model.map { try? OpenAIRequest.parse(request.upstreamBody(original: body, model: $0), endpoint: endpoint) } ?? request
                output.writeLine(String(try counter.count(effective ?? request)))
            } catch {
                output.flush()
                throw ValidationError("\(input): \(error.message)")
            }
        }
        output.flush()
    }

    private static func read(_ input: String) throws -> Data {
        let handle: FileHandle
        if input == "-" {
            handle = FileHandle.standardInput
        } else {
            guard let file = FileHandle(forReadingAtPath: input) else {
                throw ValidationError("Cannot open \(input).")
            }
            handle = file
        }
        defer { if input != "-" { try? handle.close() } }
        var data = Data()
        while let chunk = try handle.read(upToCount: 1 << 20), !chunk.isEmpty {
            data.append(chunk)
            if data.count > maxInputBytes {
                throw TokenizerError.inputTooLarge(byteCount: data.count, limit: maxInputBytes)
            }
        }
        return data
    }
}

extension Duration {
    fileprivate var nanoseconds: Int64 {
        let (seconds, attoseconds) = components
        return seconds * 1_000_000_000 + attoseconds / 1_000_000_000
    }
}

/// CPU time (of the calling thread, or of the whole process for the parallel load): benchmarks
/// on shared machines compare CPU time, which other processes' load does not inflate the way it
/// inflates wall-clock time.
private enum CPUClock {
    static func nanoseconds(_ clock: clockid_t) -> Int64 {
        var time = timespec()
        clock_gettime(clock, &time)
        return Int64(time.tv_sec) * 1_000_000_000 + Int64(time.tv_nsec)
    }
}

/// Buffered standard output: thousands of small lines per process in scripts/tokenizer-diff.
private struct StandardOutput {
    private var buffer: [UInt8] = []

    mutating func writeLine(_ line: String) {
        buffer.append(contentsOf: line.utf8)
        buffer.append(UInt8(ascii: "\n"))
        if buffer.count >= 1 << 16 { flush() }
    }

    mutating func writeIDs(_ ids: [UInt32]) {
        for (index, id) in ids.enumerated() {
            if index > 0 { buffer.append(UInt8(ascii: " ")) }
            buffer.append(contentsOf: String(id).utf8)
        }
        buffer.append(UInt8(ascii: "\n"))
        if buffer.count >= 1 << 16 { flush() }
    }

    mutating func flush() {
        guard !buffer.isEmpty else { return }
        FileHandle.standardOutput.write(Data(buffer))
        buffer.removeAll(keepingCapacity: true)
    }
}

private enum StandardError {
    static func write(_ line: String) {
        FileHandle.standardError.write(Data((line + "\n").utf8))
    }
}

/// Resident memory of this process, from /proc/self/status (Linux only).
private struct ProcessMemory {
    var residentKiB: Int
    var peakResidentKiB: Int

    static func current() -> ProcessMemory? {
        guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return nil }
        func kib(_ field: String) -> Int? {
            guard let line = status.split(separator: "\n").first(where: { $0.hasPrefix(field + ":") }) else { return nil }
            return line.split(whereSeparator: { $0 == " " || $0 == "\t" }).compactMap { Int($0) }.first
        }
        guard let resident = kib("VmRSS"), let peak = kib("VmHWM") else { return nil }
        return ProcessMemory(residentKiB: resident, peakResidentKiB: peak)
    }
}
