import Synchronization
import NIOCore

/// Usage of the Responses API: `input_tokens`, `output_tokens` and their detail objects.
struct MockResponsesUsage: Sendable {
    let inputTokens: Int
    let outputTokens: Int

    func write(into buffer: inout ByteBuffer) {
        buffer.writeStaticString("{\"input_tokens\":")
        buffer.writeDecimal(inputTokens)
        buffer.writeStaticString(",\"input_tokens_details\":{\"cached_tokens\":0},\"output_tokens\":")
        buffer.writeDecimal(outputTokens)
        buffer.writeStaticString(",\"output_tokens_details\":{\"reasoning_tokens\":0},\"total_tokens\":")
        buffer.writeDecimal(inputTokens + outputTokens)
        buffer.writeStaticString("}")
    }
}

/// The bodies of the Responses API (`POST /v1/responses`, `GET`/`DELETE /v1/responses/{id}`).
enum MockResponsesBodies {
    /// A `response` object. `textTokens` nil: no output yet (`in_progress`); else one assistant message
    /// with that many words of `MockText`. `usage` nil is written as null.
    static func response(
        identity: ResponseIdentity, status: StaticString, incompleteBecauseOfLength: Bool, maxOutputTokens: Int?,
        textTokens: Int?, usage: MockResponsesUsage?, into buffer: inout ByteBuffer
    ) {
        buffer.writeStaticString("{\"id\":")
        buffer.writeJSONString(identity.id)
        buffer.writeStaticString(",\"object\":\"response\",\"created_at\":")
        buffer.writeDecimal(identity.created)
        buffer.writeStaticString(",\"status\":\"")
        buffer.writeStaticString(status)
        buffer.writeStaticString("\",\"background\":false,\"error\":null,\"incomplete_details\":")
        if incompleteBecauseOfLength {
            buffer.writeStaticString("{\"reason\":\"max_output_tokens\"}")
        } else {
            buffer.writeStaticString("null")
        }
        buffer.writeStaticString(",\"instructions\":null,\"max_output_tokens\":")
        buffer.writeDecimal(orNull: maxOutputTokens)
        buffer.writeStaticString(",\"model\":")
        buffer.writeJSONString(identity.model)
        buffer.writeStaticString(",\"output\":[")
        if let textTokens {
            writeMessage(identity: identity, status: "completed", textTokens: textTokens, into: &buffer)
        }
        buffer.writeStaticString("],\"parallel_tool_calls\":true,\"previous_response_id\":null,\"reasoning\":{\"effort\":null,\"summary\":null},\"service_tier\":\"default\",\"store\":true,\"temperature\":1.0,\"text\":{\"format\":{\"type\":\"text\"}},\"tool_choice\":\"auto\",\"tools\":[],\"top_p\":1.0,\"truncation\":\"disabled\",\"usage\":")
        if let usage {
            usage.write(into: &buffer)
        } else {
            buffer.writeStaticString("null")
        }
        buffer.writeStaticString(",\"user\":null,\"metadata\":{}}")
    }

    /// The output message item. `textTokens` nil: empty content (the item just added).
    static func writeMessage(
        identity: ResponseIdentity, status: StaticString, textTokens: Int?, into buffer: inout ByteBuffer
    ) {
        buffer.writeStaticString("{\"id\":")
        buffer.writeJSONString(messageID(identity))
        buffer.writeStaticString(",\"type\":\"message\",\"status\":\"")
        buffer.writeStaticString(status)
        buffer.writeStaticString("\",\"role\":\"assistant\",\"content\":[")
        if let textTokens {
            writeTextPart(textTokens: textTokens, into: &buffer)
        }
        buffer.writeStaticString("]}")
    }

    /// An `output_text` content part with `textTokens` words.
    static func writeTextPart(textTokens: Int, into buffer: inout ByteBuffer) {
        buffer.writeStaticString("{\"type\":\"output_text\",\"annotations\":[],\"logprobs\":[],\"text\":\"")
        MockText.write(tokens: textTokens, into: &buffer)
        buffer.writeStaticString("\"}")
    }

    static func messageID(_ identity: ResponseIdentity) -> String {
        "msg_" + identity.id.dropFirst("resp_".count)
    }

    /// `DELETE /v1/responses/{id}`.
    static func deleted(id: String, into buffer: inout ByteBuffer) {
        buffer.writeStaticString("{\"id\":")
        buffer.writeJSONString(id)
        buffer.writeStaticString(",\"object\":\"response\",\"deleted\":true}")
    }
}

/// The SSE events of a streamed response, in OpenAI's order: `response.created`,
/// `response.in_progress`, `response.output_item.added`, `response.content_part.added`, one
/// `response.output_text.delta` per token, `response.output_text.done`, `response.content_part.done`,
/// `response.output_item.done`, `response.completed` (with usage). No `[DONE]`.
struct ResponsesEventWriter: Sendable {
    static let leadingEvents = 4
    static let trailingEvents = 4

    let identity: ResponseIdentity
    let textTokens: Int
    let incompleteBecauseOfLength: Bool
    let maxOutputTokens: Int?
    let usage: MockResponsesUsage

    /// Writes event number `index` (0-based; also its `sequence_number`).
    func write(event index: Int, into buffer: inout ByteBuffer) {
        if index < Self.leadingEvents {
            switch index {
            case 0, 1:
                let type: StaticString = index == 0 ? "response.created" : "response.in_progress"
                start(type, index, into: &buffer)
                buffer.writeStaticString(",\"response\":")
                MockResponsesBodies.response(
                    identity: identity, status: "in_progress", incompleteBecauseOfLength: false,
                    maxOutputTokens: maxOutputTokens, textTokens: nil, usage: nil, into: &buffer)
            case 2:
                start("response.output_item.added", index, into: &buffer)
                buffer.writeStaticString(",\"output_index\":0,\"item\":")
                MockResponsesBodies.writeMessage(identity: identity, status: "in_progress", textTokens: nil, into: &buffer)
            default:
                start("response.content_part.added", index, into: &buffer)
                writeItemPosition(into: &buffer)
                buffer.writeStaticString(",\"part\":{\"type\":\"output_text\",\"annotations\":[],\"logprobs\":[],\"text\":\"\"}")
            }
            end(into: &buffer)
            return
        }
        let token = index - Self.leadingEvents
        if token < textTokens {
            start("response.output_text.delta", index, into: &buffer)
            writeItemPosition(into: &buffer)
            buffer.writeStaticString(",\"delta\":\"")
            buffer.writeBytes(MockText.words[token % MockText.words.count])
            buffer.writeStaticString("\",\"logprobs\":[]")
            end(into: &buffer)
            return
        }
        let status: StaticString = incompleteBecauseOfLength ? "incomplete" : "completed"
        switch token - textTokens {
        case 0:
            start("response.output_text.done", index, into: &buffer)
            writeItemPosition(into: &buffer)
            buffer.writeStaticString(",\"text\":\"")
            MockText.write(tokens: textTokens, into: &buffer)
            buffer.writeStaticString("\",\"logprobs\":[]")
        case 1:
            start("response.content_part.done", index, into: &buffer)
            writeItemPosition(into: &buffer)
            buffer.writeStaticString(",\"part\":")
            MockResponsesBodies.writeTextPart(textTokens: textTokens, into: &buffer)
        case 2:
            start("response.output_item.done", index, into: &buffer)
            buffer.writeStaticString(",\"output_index\":0,\"item\":")
            MockResponsesBodies.writeMessage(identity: identity, status: "completed", textTokens: textTokens, into: &buffer)
        default:
            start(incompleteBecauseOfLength ? "response.incomplete" : "response.completed", index, into: &buffer)
            buffer.writeStaticString(",\"response\":")
            MockResponsesBodies.response(
                identity: identity, status: status, incompleteBecauseOfLength: incompleteBecauseOfLength,
                maxOutputTokens: maxOutputTokens, textTokens: textTokens, usage: usage, into: &buffer)
        }
        end(into: &buffer)
    }

    private func start(_ type: StaticString, _ sequence: Int, into buffer: inout ByteBuffer) {
        buffer.writeStaticString("event: ")
        buffer.writeStaticString(type)
        buffer.writeStaticString("\ndata: {\"type\":\"")
        buffer.writeStaticString(type)
        buffer.writeStaticString("\",\"sequence_number\":")
        buffer.writeDecimal(sequence)
    }

    private func writeItemPosition(into buffer: inout ByteBuffer) {
        buffer.writeStaticString(",\"item_id\":")
        buffer.writeJSONString(MockResponsesBodies.messageID(identity))
        buffer.writeStaticString(",\"output_index\":0,\"content_index\":0")
    }

    private func end(into buffer: inout ByteBuffer) {
        buffer.writeStaticString("}\n\n")
    }
}

/// The ids of the Responses this mock created (`--store-responses`), so that `GET`/`DELETE
/// /v1/responses/{id}` answer 404 for any other, as OpenAI does. Bounded: past ``capacity`` ids the
/// oldest are forgotten.
final class StoredResponses: Sendable {
    static let capacity = 100_000

    /// Part of every id, different per mock process.
    let prefix: String
    private let ids = Mutex<(set: Set<String>, order: CircularBuffer<String>)>(([], []))

    init(prefix: String) {
        self.prefix = prefix
    }

    func insert(_ id: String) {
        ids.withLock { ids in
            guard ids.set.insert(id).inserted else { return }
            ids.order.append(id)
            if ids.order.count > Self.capacity, let oldest = ids.order.popFirst() { ids.set.remove(oldest) }
        }
    }

    func contains(_ id: String) -> Bool {
        ids.withLock { $0.set.contains(id) }
    }

    /// Forgets `id`; false if it was not stored.
    func remove(_ id: String) -> Bool {
        ids.withLock { $0.set.remove(id) != nil }
    }
}
