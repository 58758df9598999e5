import SluiceTokenizer

/// The view of an OpenAI request body that Sluice needs: model, streaming, output reservation
/// and the prompt to count. Parsed once from the body; the body itself is forwarded as is
/// (see `upstreamBody(original:)`).
public struct OpenAIRequest: Sendable {
    public let endpoint: OpenAIEndpoint
    /// The `model` field, verbatim.
    public let model: String
    /// `stream: true` (always false for embeddings).
    public let stream: Bool
    /// The client itself set `stream_options.include_usage: true`.
    public let clientRequestedUsage: Bool
    /// `max_completion_tokens`, else `max_tokens` (0 and up), at most `maximumOutputTokens`; nil
    /// when neither is given (or for embeddings).
    public let maxOutputTokens: Int?
    /// Number of choices to generate (`n`, default 1, 1...128; always 1 for embeddings).
    public let n: Int
    /// What the model reads, for the prompt counter.
    public let prompt: PromptInput
    /// A Responses request that continues a stored conversation (`previous_response_id` or a
    /// `conversation`): the upstream adds context Sluice cannot see or count.
    public var continuesStoredConversation = false

    /// How `upstreamBody(original:)` must change the body.
    let streamOptionsEdit: StreamOptionsEdit
    /// Where the `model` value's text is in the body (to forward another name in its place).
    var modelValueRange: Range<Int> = 0..<0

    /// True when Sluice turns on `stream_options.include_usage` upstream although the client did
    /// not ask; the relay must then drop the usage chunk from what the client sees.
    public var sluiceAddedUsage: Bool { stream && !clientRequestedUsage && endpoint != .responses }

    /// The largest `n` OpenAI accepts.
    public static let maximumChoices = 128
    /// The largest output-token value a reservation uses: a larger `max_tokens` is forwarded as
    /// it is (the upstream judges it) but reserved as this, which is already more than any bucket
    /// holds (`LimitSet.maximumValue`), so the reservation arithmetic stays finite.
    public static let maximumOutputTokens = Int(Int32.max)
    /// What `/v1/completions` reads when `prompt` is null or absent: OpenAI's documented default,
    /// the one special token `<|endoftext|>`.
    static let defaultCompletionsPrompt = PromptInput.tokenCount(1)

    enum StreamOptionsEdit: Sendable {
        /// Forward the body unchanged.
        case none
        /// No `stream_options` member: insert one right after the top-level `{` at `openBraceOffset`.
        case insert(openBraceOffset: Int, objectIsEmpty: Bool)
        /// Replace the `stream_options` value at `valueRange`, keeping its other members (if it was an object).
        case replace(valueRange: Range<Int>, keptMembers: [JSONMember])
    }
}

// MARK: - Costs

extension OpenAIRequest {
    /// The output tokens an admission reserves: the request's `max_completion_tokens` or
    /// `max_tokens` (else `defaultOutputTokens`, the key's) for each of its `n` choices; nothing for
    /// an endpoint that produces no completion (embeddings).
    public func reservedOutputTokens(defaultOutputTokens: Int) -> Int {
        guard endpoint.producesCompletion else { return 0 }
        return (maxOutputTokens ?? defaultOutputTokens) * n
    }
}

// MARK: - Parsing

extension OpenAIRequest {
    /// Reads a request body for `endpoint`.
    ///
    /// JSON is UTF-8 (RFC 8259): an ill-formed body is refused rather than silently repaired, so
    /// what is counted and billed is exactly what the client meant.
    /// - Throws: `GatewayError.invalidRequest` for a body that is not UTF-8,
    ///   `GatewayError.invalidJSON` when the body is not JSON, or
    ///   `GatewayError.invalidRequest` (400, OpenAI-worded, with `param`) when a field is missing,
    ///   of the wrong type or out of range.
    public static func parse(_ body: UnsafeRawBufferPointer, endpoint: OpenAIEndpoint) throws(GatewayError) -> OpenAIRequest {
        guard UTF8Validation.isValid(body.assumingMemoryBound(to: UInt8.self)) else { throw GatewayError.bodyNotUTF8() }
        let root: JSONValue
        do {
            root = try JSONReader.parse(body)
        } catch {
            throw GatewayError.invalidJSON(error)
        }
        guard case .object(let object) = root else {
            throw GatewayError.invalidRequest(
                message: "Invalid type for request body: expected an object, but got \(root.typeDescription) instead.",
                param: nil, code: "invalid_type")
        }
        var openBraceOffset = 0
        while openBraceOffset < body.count, body[openBraceOffset] != UInt8(ascii: "{") { openBraceOffset += 1 }
        return try parse(object, endpoint: endpoint, openBraceOffset: openBraceOffset)
    }

    /// Reads a request body held in an array. See `parse(_:endpoint:)`.
    public static func parse(_ body: [UInt8], endpoint: OpenAIEndpoint) throws(GatewayError) -> OpenAIRequest {
        let result: Result<OpenAIRequest, GatewayError> = body.withUnsafeBytes { raw in
            do throws(GatewayError) { return .success(try parse(raw, endpoint: endpoint)) } catch { return .failure(error) }
        }
        return try result.get()
    }

    private static func parse(_ root: JSONObject, endpoint: OpenAIEndpoint, openBraceOffset: Int) throws(GatewayError) -> OpenAIRequest {
        let fields = RequestFields(root)

        guard let modelValue = root["model"], !modelValue.isNull else {
            throw GatewayError.invalidRequest(message: "you must provide a model parameter", param: "model")
        }
        guard case .string(let model) = modelValue else { throw RequestFields.invalidType("model", expected: "a string", got: modelValue) }

        var stream = false
        var clientRequestedUsage = false
        var streamOptionsEdit = StreamOptionsEdit.none
        var maxOutputTokens: Int?
        var n = 1
        let prompt: PromptInput

        if endpoint == .responses {
            // Usage always arrives in the final `response.completed` event: nothing to add or drop.
            stream = try fields.bool("stream") ?? false
            clientRequestedUsage = stream
            maxOutputTokens = try fields.integer("max_output_tokens", minimum: 0).map { min($0, maximumOutputTokens) }
        } else if endpoint.producesCompletion {
            stream = try fields.bool("stream") ?? false
            let streamOptions = root.member(named: "stream_options")
            var existingOptions: [JSONMember] = []
            if let streamOptions, !streamOptions.value.isNull {
                guard case .object(let options) = streamOptions.value else {
                    throw RequestFields.invalidType("stream_options", expected: "an object", got: streamOptions.value)
                }
                clientRequestedUsage = try RequestFields(options, path: "stream_options.").bool("include_usage") ?? false
                existingOptions = options.members
            }
            if stream && !clientRequestedUsage {
                if let streamOptions {
                    streamOptionsEdit = .replace(valueRange: streamOptions.valueRange,
                                                 keptMembers: existingOptions.filter { $0.key != "include_usage" })
                } else {
                    streamOptionsEdit = .insert(openBraceOffset: openBraceOffset, objectIsEmpty: root.isEmpty)
                }
            }
            // Both are validated even when both are given, as OpenAI does; the newer name wins. 0 is
            // valid (with `echo`, how clients get prompt logprobs) and reserves nothing.
            let maxTokens = try fields.integer("max_tokens", minimum: 0)
            let maxCompletionTokens = try fields.integer("max_completion_tokens", minimum: 0)
            maxOutputTokens = (maxCompletionTokens ?? maxTokens).map { min($0, maximumOutputTokens) }
            n = try fields.integer("n", minimum: 1, maximum: maximumChoices) ?? 1
        }

        switch endpoint {
        case .chatCompletions:
            prompt = .chat(try ChatRequestReader.chatPrompt(root))
        case .completions:
            // `prompt` is nullable and has a default; absent is read the same way (the upstream judges it).
            if let value = root["prompt"], !value.isNull {
                prompt = try textsOrTokens(root, field: "prompt")
            } else {
                prompt = defaultCompletionsPrompt
            }
        case .embeddings:
            prompt = try textsOrTokens(root, field: "input")
        case .responses:
            prompt = .chat(try ResponsesRequestReader.prompt(root))
        }

        var request = OpenAIRequest(endpoint: endpoint, model: model, stream: stream, clientRequestedUsage: clientRequestedUsage,
                                    maxOutputTokens: maxOutputTokens, n: n, prompt: prompt, streamOptionsEdit: streamOptionsEdit)
        request.modelValueRange = root.member(named: "model")?.valueRange ?? 0..<0
        if endpoint == .responses {
            let previous = try fields.string("previous_response_id")
            let conversation = fields.value("conversation")
            request.continuesStoredConversation = previous != nil || (conversation.map { !$0.isNull } ?? false)
        }
        return request
    }

    /// `prompt` / `input`: a string, an array of strings, an array of token ids, or an array of
    /// arrays of token ids. The ids are counted, not judged: their values are the upstream's
    /// business (its tokenizer knows which exist).
    private static func textsOrTokens(_ root: JSONObject, field: String) throws(GatewayError) -> PromptInput {
        guard let value = root[field], !value.isNull else { throw RequestFields.missing(field) }
        let expected = "a string, an array of strings, an array of integers, or an array of arrays of integers"
        switch value {
        case .string(let text):
            return .texts([text])
        case .array(let elements):
            guard let first = elements.first else { return .texts([]) }
            switch first {
            case .string:
                var texts: [String] = []
                texts.reserveCapacity(elements.count)
                for (index, element) in elements.enumerated() {
                    guard case .string(let text) = element else {
                        throw RequestFields.invalidType("\(field)[\(index)]", expected: "a string", got: element)
                    }
                    texts.append(text)
                }
                return .texts(texts)
            case .number:
                return .tokenCount(try tokenIDCount(elements, param: field))
            case .array:
                var total = 0
                for (index, element) in elements.enumerated() {
                    guard case .array(let ids) = element else {
                        throw RequestFields.invalidType("\(field)[\(index)]", expected: "an array of integers", got: element)
                    }
                    total += try tokenIDCount(ids, param: "\(field)[\(index)]")
                }
                return .tokenCount(total)
            default:
                throw RequestFields.invalidType("\(field)[0]", expected: "a string or an integer", got: first)
            }
        default:
            throw RequestFields.invalidType(field, expected: expected, got: value)
        }
    }

    private static func tokenIDCount(_ ids: [JSONValue], param: String) throws(GatewayError) -> Int {
        for (index, id) in ids.enumerated() {
            guard case .number(let number) = id, number.wholeValue != nil else {
                throw RequestFields.invalidType("\(param)[\(index)]", expected: "an integer (token id)", got: id)
            }
        }
        return ids.count
    }
}

// MARK: - Forwarding

extension OpenAIRequest {
    /// The body to send upstream: `original` unchanged, except that a streaming request whose
    /// client did not ask for usage gets `stream_options.include_usage: true` (so the upstream
    /// reports usage; the relay drops that chunk again), and `model` is replaced when the deployment
    /// knows the model by another name (`model_map`) or a fallback model answers. Only those members'
    /// values are touched: `stream_options` is inserted right after the top-level `{`, or its value
    /// rewritten in place keeping its other fields byte for byte.
    /// - Parameters:
    ///   - original: the exact body this request was parsed from.
    ///   - model: the model name to forward; nil or the request's own: unchanged.
    public func upstreamBody(original: [UInt8], model upstreamModel: String? = nil) -> [UInt8] {
        // Edits as (range of `original`, replacement), applied in order of position.
        var edits: [(range: Range<Int>, bytes: [UInt8])] = []
        let includeUsage = Array(#""include_usage":true"#.utf8)
        switch streamOptionsEdit {
        case .none:
            break
        case .insert(let openBraceOffset, let objectIsEmpty):
            var member = Array(#""stream_options":{"#.utf8) + includeUsage + [UInt8(ascii: "}")]
            if !objectIsEmpty { member.append(UInt8(ascii: ",")) }
            edits.append((openBraceOffset + 1..<openBraceOffset + 1, member))
        case .replace(let valueRange, let keptMembers):
            var value: [UInt8] = [UInt8(ascii: "{")]
            for member in keptMembers {
                JSONWriter.appendString(member.key, to: &value)
                value.append(UInt8(ascii: ":"))
                value.append(contentsOf: original[member.valueRange])
                value.append(UInt8(ascii: ","))
            }
            value.append(contentsOf: includeUsage)
            value.append(UInt8(ascii: "}"))
            edits.append((valueRange, value))
        }
        if let upstreamModel, upstreamModel != model, !modelValueRange.isEmpty {
            var value: [UInt8] = []
            JSONWriter.appendString(upstreamModel, to: &value)
            edits.append((modelValueRange, value))
        }
        guard !edits.isEmpty else { return original }
        edits.sort { $0.range.lowerBound < $1.range.lowerBound }
        var body: [UInt8] = []
        body.reserveCapacity(original.count + edits.reduce(0) { $0 + $1.bytes.count })
        var position = 0
        for edit in edits {
            body.append(contentsOf: original[position..<edit.range.lowerBound])
            body.append(contentsOf: edit.bytes)
            position = edit.range.upperBound
        }
        body.append(contentsOf: original[position...])
        return body
    }
}
