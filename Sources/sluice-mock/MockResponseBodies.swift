import Foundation
import NIOCore

/// The generated text: a cycle of English words, each one token in both cl100k_base and o200k_base, so
/// that N words tokenize to exactly N tokens (checked with tiktoken 0.14). That makes the mock's streamed
/// text a usable oracle for Sluice's own completion counting.
enum MockText {
    static let words: [[UInt8]] = [" the", " quick", " brown", " fox", " jumps", " over", " lazy", " dog"]
        .map { Array($0.utf8) }
    /// All words once, written in one go for whole cycles of the text.
    static let cycle: [UInt8] = words.flatMap { $0 }

    /// Writes the first `tokens` words.
    static func write(tokens: Int, into buffer: inout ByteBuffer) {
        for _ in 0..<(tokens / words.count) {
            buffer.writeBytes(cycle)
        }
        for index in 0..<(tokens % words.count) {
            buffer.writeBytes(words[index])
        }
    }
}

/// What identifies one answer: its id, creation time and the model echoed back.
struct ResponseIdentity: Sendable {
    /// e.g. `chatcmpl-mock-3-7` (connection 3, 7th request on it).
    let id: String
    let created: Int
    let model: String
}

/// Token counts reported in `usage`.
struct MockUsage: Sendable {
    let promptTokens: Int
    let completionTokens: Int

    /// Chat style usage, with the detail objects the current API returns.
    func writeChat(into buffer: inout ByteBuffer) {
        buffer.writeStaticString("{\"prompt_tokens\":")
        buffer.writeDecimal(promptTokens)
        buffer.writeStaticString(",\"completion_tokens\":")
        buffer.writeDecimal(completionTokens)
        buffer.writeStaticString(",\"total_tokens\":")
        buffer.writeDecimal(promptTokens + completionTokens)
        buffer.writeStaticString(
            ",\"prompt_tokens_details\":{\"cached_tokens\":0,\"audio_tokens\":0},\"completion_tokens_details\":{\"reasoning_tokens\":0,\"audio_tokens\":0,\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}}"
        )
    }

    /// Legacy completions usage: the three counts only.
    func writePlain(into buffer: inout ByteBuffer) {
        buffer.writeStaticString("{\"prompt_tokens\":")
        buffer.writeDecimal(promptTokens)
        buffer.writeStaticString(",\"completion_tokens\":")
        buffer.writeDecimal(completionTokens)
        buffer.writeStaticString(",\"total_tokens\":")
        buffer.writeDecimal(promptTokens + completionTokens)
        buffer.writeStaticString("}")
    }
}

/// Complete (non-streamed) JSON bodies.
enum MockResponseBodies {
        /// A `chat.completion` object with `choices` choices of `tokensPerChoice` words each.
    static func chatCompletion(
        identity: ResponseIdentity, choices: Int, tokensPerChoice: Int, finishReason: FinishReason,
        usage: MockUsage, into buffer: inout ByteBuffer
    ) {
        buffer.reserveCapacity(minimumWritableBytes: 400 + choices * (160 + tokensPerChoice * 7))
        buffer.writeStaticString("{\"id\":")
        buffer.writeJSONString(identity.id)
        buffer.writeStaticString(",\"object\":\"chat.completion\",\"created\":")
        buffer.writeDecimal(identity.created)
        buffer.writeStaticString(",\"model\":")
        buffer.writeJSONString(identity.model)
        buffer.writeStaticString(",\"choices\":[")
        for index in 0..<choices {
            if index > 0 { buffer.writeStaticString(",") }
            buffer.writeStaticString("{\"index\":")
            buffer.writeDecimal(index)
            buffer.writeStaticString(",\"message\":{\"role\":\"assistant\",\"content\":\"")
            MockText.write(tokens: tokensPerChoice, into: &buffer)
            buffer.writeStaticString("\",\"refusal\":null,\"annotations\":[]},\"logprobs\":null,\"finish_reason\":")
            buffer.writeStaticString(finishReason.quoted)
            buffer.writeStaticString("}")
        }
        buffer.writeStaticString("],\"usage\":")
        usage.writeChat(into: &buffer)
        buffer.writeStaticString(",\"service_tier\":\"default\",\"system_fingerprint\":\"fp_sluice_mock\"}")
    }

    /// A `text_completion` object (legacy completions).
    static func textCompletion(
        identity: ResponseIdentity, choices: Int, tokensPerChoice: Int, finishReason: FinishReason,
        usage: MockUsage, into buffer: inout ByteBuffer
    ) {
        buffer.reserveCapacity(minimumWritableBytes: 300 + choices * (100 + tokensPerChoice * 7))
        buffer.writeStaticString("{\"id\":")
        buffer.writeJSONString(identity.id)
        buffer.writeStaticString(",\"object\":\"text_completion\",\"created\":")
        buffer.writeDecimal(identity.created)
        buffer.writeStaticString(",\"model\":")
        buffer.writeJSONString(identity.model)
        buffer.writeStaticString(",\"system_fingerprint\":\"fp_sluice_mock\",\"choices\":[")
        for index in 0..<choices {
            if index > 0 { buffer.writeStaticString(",") }
            buffer.writeStaticString("{\"text\":\"")
            MockText.write(tokens: tokensPerChoice, into: &buffer)
            buffer.writeStaticString("\",\"index\":")
            buffer.writeDecimal(index)
            buffer.writeStaticString(",\"logprobs\":null,\"finish_reason\":")
            buffer.writeStaticString(finishReason.quoted)
            buffer.writeStaticString("}")
        }
        buffer.writeStaticString("],\"usage\":")
        usage.writePlain(into: &buffer)
        buffer.writeStaticString("}")
    }

    /// An embeddings `list` with one 8-dimensional vector per input, as floats or as base64 of
    /// little-endian float32 (what the SDK asks for by default).
    static func embeddings(
        model: String, inputs: Int, base64: Bool, promptTokens: Int, into buffer: inout ByteBuffer
    ) {
        let vector = base64 ? EmbeddingVector.base64JSON : EmbeddingVector.floatsJSON
        buffer.reserveCapacity(minimumWritableBytes: 120 + inputs * (50 + vector.count))
        buffer.writeStaticString("{\"object\":\"list\",\"data\":[")
        for index in 0..<inputs {
            if index > 0 { buffer.writeStaticString(",") }
            buffer.writeStaticString("{\"object\":\"embedding\",\"index\":")
            buffer.writeDecimal(index)
            buffer.writeStaticString(",\"embedding\":")
            buffer.writeBytes(vector)
            buffer.writeStaticString("}")
        }
        buffer.writeStaticString("],\"model\":")
        buffer.writeJSONString(model)
        buffer.writeStaticString(",\"usage\":{\"prompt_tokens\":")
        buffer.writeDecimal(promptTokens)
        buffer.writeStaticString(",\"total_tokens\":")
        buffer.writeDecimal(promptTokens)
        buffer.writeStaticString("}}")
    }

    /// The models `GET /v1/models` lists.
    static let modelIDs = ["gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-3.5-turbo-instruct", "text-embedding-3-small"]

    /// The `GET /v1/models` body, built once.
    static let modelList: [UInt8] = {
        var buffer = ByteBufferAllocator().buffer(capacity: 600)
        buffer.writeStaticString("{\"object\":\"list\",\"data\":[")
        for (index, id) in modelIDs.enumerated() {
            if index > 0 { buffer.writeStaticString(",") }
            buffer.writeStaticString("{\"id\":")
            buffer.writeJSONString(id)
            buffer.writeStaticString(",\"object\":\"model\",\"created\":1700000000,\"owned_by\":\"sluice-mock\"}")
        }
        buffer.writeStaticString("]}")
        return Array(buffer.readableBytesView)
    }()

    /// OpenAI's error envelope `{"error":{"message","type","param","code"}}`.
    static func error(
        message: String, type: String, param: String?, code: String?, into buffer: inout ByteBuffer
    ) {
        buffer.writeStaticString("{\"error\":{\"message\":")
        buffer.writeJSONString(message)
        buffer.writeStaticString(",\"type\":")
        buffer.writeJSONString(type)
        buffer.writeStaticString(",\"param\":")
        buffer.writeJSONString(orNull: param)
        buffer.writeStaticString(",\"code\":")
        buffer.writeJSONString(orNull: code)
        buffer.writeStaticString("}}")
    }

    /// The error body OpenAI sends with `status` (used for `x-mock-status`).
    static func injectedError(status: Int, into buffer: inout ByteBuffer) {
        let message = "sluice-mock: injected HTTP \(status)."
        switch status {
        case 400:
            error(message: message, type: "invalid_request_error", param: nil, code: nil, into: &buffer)
        case 401:
            error(message: message, type: "invalid_request_error", param: nil, code: "invalid_api_key", into: &buffer)
        case 403:
            error(message: message, type: "invalid_request_error", param: nil, code: "unsupported_country_region_territory", into: &buffer)
        case 404:
            error(message: message, type: "invalid_request_error", param: "model", code: "model_not_found", into: &buffer)
        case 429:
            error(message: message, type: "requests", param: nil, code: "rate_limit_exceeded", into: &buffer)
        case 500..<600:
            error(message: message, type: "server_error", param: nil, code: nil, into: &buffer)
        default:
            error(message: message, type: "invalid_request_error", param: nil, code: nil, into: &buffer)
        }
    }
}

/// Why a choice ended.
enum FinishReason: Sendable {
    /// The completion ran to its natural length.
    case stop
    /// `max_tokens` cut it short.
    case length

    /// The JSON string literal.
    var quoted: StaticString {
        switch self {
        case .stop: "\"stop\""
        case .length: "\"length\""
        }
    }
}

/// The fixed embedding vector: 8 floats, exactly representable in float32 so that the float and base64
/// forms decode to the same numbers.
enum EmbeddingVector {
    static let values: [Float] = [0.5, -0.25, 0.125, 0.5, -0.5, 0.25, -0.125, 0.3125]

    static let floatsJSON: [UInt8] = Array(("[" + values.map { "\($0)" }.joined(separator: ",") + "]").utf8)

    static let base64JSON: [UInt8] = {
        var bytes: [UInt8] = []
        for value in values {
            withUnsafeBytes(of: value.bitPattern.littleEndian) { bytes.append(contentsOf: $0) }
        }
        return Array(("\"" + Data(bytes).base64EncodedString() + "\"").utf8)
    }()
}
