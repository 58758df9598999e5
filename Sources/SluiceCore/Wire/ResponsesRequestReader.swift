import SluiceTokenizer

/// Turns a `POST /v1/responses` body into the `ChatPrompt` the prompt counter reads.
///
/// Framing: the Responses API runs the same chat models with the same message format, so its input
/// is counted as the equivalent chat request (the cookbook's chat framing, see `ChatPromptCounter`):
/// - `instructions` is one leading `developer` message (the API documents it as "a system (or
///   developer) message inserted into the model's context");
/// - a string `input` is one `user` message;
/// - each message item of an `input` array (`type: "message"`, or no type with a `role`) is a message;
///   its parts `input_text` / `output_text` are text, `refusal` is text, `input_image` is an image
///   (gpt-4o-class cost, size from a data URL, else the worst case), `input_file` is not counted
///   (its content is the upstream's to extract);
/// - a `function_call` item is an assistant message whose `name` and `arguments` are encoded; a
///   `function_call_output` item a `tool` message whose `output` is its text; any other item (reasoning,
///   item_reference, hosted tool calls) is counted as its JSON text, an estimate;
/// - `tools` of type `function` (flat in this API: `name`, `description`, `parameters`) use the chat tool
///   framing; other tools (web search, file search, …) are counted as JSON text, an estimate;
///   `text.format` with a JSON schema and an object `tool_choice` are counted as JSON text.
/// Not verified against token counts published for the Responses API (none were available here): the
/// upstream's `input_tokens` settles every answered request, so the count decides admission only.
enum ResponsesRequestReader {
    static let roles = ["system", "assistant", "user", "developer"]
    static let contentPartTypes = ["input_text", "output_text", "refusal", "input_image", "input_file", "input_audio"]

    static func prompt(_ root: JSONObject) throws(GatewayError) -> ChatPrompt {
        let fields = RequestFields(root)
        var messages: [ChatMessage] = []
        var extraText: [String] = []
        if let instructions = try fields.string("instructions") {
            messages.append(ChatMessage(role: "developer", content: [.text(instructions)]))
        }
        if let input = fields.value("input"), !input.isNull {
            switch input {
            case .string(let text):
                messages.append(ChatMessage(role: "user", content: [.text(text)]))
            case .array(let items):
                for (index, item) in items.enumerated() {
                    try appendItem(item, param: "input[\(index)]", messages: &messages, extraText: &extraText)
                }
            default:
                throw RequestFields.invalidType("input", expected: "a string or an array of input items", got: input)
            }
        }

        var tools: [ChatTool] = []
        if let toolValues = try fields.array("tools") {
            for (index, value) in toolValues.enumerated() {
                let param = "tools[\(index)]"
                guard case .object(let toolObject) = value else { throw RequestFields.invalidType(param, expected: "an object", got: value) }
                let type = try RequestFields(toolObject, path: param + ".").requiredString("type")
                if type == "function" {
                    tools.append(try ChatRequestReader.chatTool(toolObject, path: param + "."))
                } else {
                    extraText.append(JSONWriter.compactText(value))
                }
            }
        }
        if let toolChoice = fields.value("tool_choice"), case .object = toolChoice {
            extraText.append(JSONWriter.compactText(toolChoice))
        }
        if let text = try fields.object("text"), case .object(let format)? = text["format"],
           case .string("json_schema") = format["type"] {
            extraText.append(JSONWriter.compactText(.object(format)))
        }
        return ChatPrompt(messages: messages, tools: tools, extraText: extraText)
    }

    private static func appendItem(_ value: JSONValue, param: String, messages: inout [ChatMessage], extraText: inout [String]) throws(GatewayError) {
        guard case .object(let object) = value else { throw RequestFields.invalidType(param, expected: "an object", got: value) }
        let fields = RequestFields(object, path: param + ".")
        let type = try fields.string("type") ?? (object["role"] != nil ? "message" : "")
        switch type {
        case "message":
            let role = try fields.requiredString("role")
            guard roles.contains(role) else { throw RequestFields.invalidValue(param + ".role", value: role, supported: roles) }
            guard let content = fields.value("content") else { throw RequestFields.missing(param + ".content") }
            var parts: [ChatContentPart] = []
            switch content {
            case .string(let text):
                parts = [.text(text)]
            case .array(let elements):
                for (index, element) in elements.enumerated() {
                    if let part = try contentPart(element, param: "\(param).content[\(index)]") { parts.append(part) }
                }
            default:
                throw RequestFields.invalidType(param + ".content", expected: "a string or an array of content parts", got: content)
            }
            messages.append(ChatMessage(role: role, content: parts))
        case "function_call":
            var strings: [String] = []
            for name in ["name", "arguments"] {
                if let text = try fields.string(name) { strings.append(text) }
            }
            messages.append(ChatMessage(role: "assistant", content: [], otherStrings: strings))
        case "function_call_output":
            let output: String
            switch fields.value("output") {
            case .string(let text)?: output = text
            case let other?: output = JSONWriter.compactText(other)
            case nil: throw RequestFields.missing(param + ".output")
            }
            messages.append(ChatMessage(role: "tool", content: [.text(output)]))
        default:
            extraText.append(JSONWriter.compactText(value))
        }
    }

    /// One content part; nil for parts whose tokens Sluice cannot count (files, audio).
    private static func contentPart(_ value: JSONValue, param: String) throws(GatewayError) -> ChatContentPart? {
        guard case .object(let object) = value else { throw RequestFields.invalidType(param, expected: "an object", got: value) }
        let fields = RequestFields(object, path: param + ".")
        let type = try fields.requiredString("type")
        switch type {
        case "input_text", "output_text":
            return .text(try fields.requiredString("text"))
        case "refusal":
            return .text(try fields.requiredString("refusal"))
        case "input_image":
            var detail = ChatImage.Detail.auto
            if let detailText = try fields.string("detail") {
                guard let parsed = ChatImage.Detail(rawValue: detailText) else {
                    throw RequestFields.invalidValue(param + ".detail", value: detailText, supported: ChatRequestReader.imageDetails)
                }
                detail = parsed
            }
            let size = try fields.string("image_url").flatMap { ImageHeaderReader.dimensions(ofDataURL: $0) }
            return .image(ChatImage(detail: detail, width: size?.width, height: size?.height))
        case "input_file", "input_audio":
            return nil
        default:
            throw RequestFields.invalidValue(param + ".type", value: type, supported: contentPartTypes)
        }
    }
}
