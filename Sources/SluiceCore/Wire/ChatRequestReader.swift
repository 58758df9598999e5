import SluiceTokenizer

/// Turns a `/v1/chat/completions` body into the `ChatPrompt` the prompt counter reads,
/// validating the fields it reads (types, roles, part types) with OpenAI's messages.
enum ChatRequestReader {
    static let roles = ["system", "assistant", "user", "function", "tool", "developer"]
    static let contentPartTypes = ["text", "image_url", "input_audio", "refusal", "file"]
    static let imageDetails = ["auto", "low", "high"]

    static func chatPrompt(_ root: JSONObject) throws(GatewayError) -> ChatPrompt {
        let fields = RequestFields(root)
        guard let messageValues = try fields.array("messages") else { throw RequestFields.missing("messages") }
        if messageValues.isEmpty { throw RequestFields.emptyArray("messages") }

        var messages: [ChatMessage] = []
        messages.reserveCapacity(messageValues.count)
        for (index, value) in messageValues.enumerated() {
            messages.append(try message(value, param: "messages[\(index)]"))
        }

        var tools: [ChatTool] = []
        var extraText: [String] = []
        if let toolValues = try fields.array("tools") {
            for (index, value) in toolValues.enumerated() {
                let param = "tools[\(index)]"
                guard case .object(let toolObject) = value else { throw RequestFields.invalidType(param, expected: "an object", got: value) }
                let tool = RequestFields(toolObject, path: param + ".")
                let type = try tool.string("type") ?? "function"
                if type == "function" {
                    guard let function = try tool.object("function") else { throw RequestFields.missing(param + ".function") }
                    tools.append(try chatTool(function, path: param + ".function."))
                } else {
                    // Custom/hosted tools have no published formula: count their JSON as text.
                    extraText.append(JSONWriter.compactText(value))
                }
            }
        }
        if let functionValues = try fields.array("functions") {
            for (index, value) in functionValues.enumerated() {
                let param = "functions[\(index)]"
                guard case .object(let function) = value else { throw RequestFields.invalidType(param, expected: "an object", got: value) }
                tools.append(try chatTool(function, path: param + "."))
            }
        }
        if let toolChoice = fields.value("tool_choice"), case .object = toolChoice {
            extraText.append(JSONWriter.compactText(toolChoice))
        }
        if let functionCall = fields.value("function_call"), case .object = functionCall {
            extraText.append(JSONWriter.compactText(functionCall))
        }
        if let responseFormat = try fields.object("response_format"),
           case .string("json_schema") = responseFormat["type"], let schema = responseFormat["json_schema"] {
            extraText.append(JSONWriter.compactText(schema))
        }
        return ChatPrompt(messages: messages, tools: tools, extraText: extraText)
    }

    // MARK: Messages

    private static func message(_ value: JSONValue, param: String) throws(GatewayError) -> ChatMessage {
        guard case .object(let object) = value else { throw RequestFields.invalidType(param, expected: "an object", got: value) }
        let fields = RequestFields(object, path: param + ".")
        let role = try fields.requiredString("role")
        guard roles.contains(role) else { throw RequestFields.invalidValue(param + ".role", value: role, supported: roles) }

        var content: [ChatContentPart] = []
        if let contentValue = fields.value("content") {
            switch contentValue {
            case .string(let text):
                content = [.text(text)]
            case .array(let parts):
                content.reserveCapacity(parts.count)
                for (index, part) in parts.enumerated() {
                    if let converted = try contentPart(part, param: "\(param).content[\(index)]") { content.append(converted) }
                }
            default:
                throw RequestFields.invalidType(param + ".content", expected: "one of a string or array of objects", got: contentValue)
            }
        } else if role != "assistant" && !(role == "function" && object["content"] != nil) {
            // As OpenAI's spec has it: an assistant message may leave content out or null (it may
            // carry only tool calls); a function message must give it but may give null (the
            // function returned nothing); system, developer, user and tool messages need it.
            throw RequestFields.missing(param + ".content")
        }

        var otherStrings: [String] = []
        if let toolCalls = try fields.array("tool_calls") {
            for (index, call) in toolCalls.enumerated() {
                let callParam = "\(param).tool_calls[\(index)]"
                guard case .object(let callObject) = call else { throw RequestFields.invalidType(callParam, expected: "an object", got: call) }
                let callFields = RequestFields(callObject, path: callParam + ".")
                if let function = try callFields.object("function") {
                    try appendStrings(of: RequestFields(function, path: callParam + ".function."), names: ["name", "arguments"], to: &otherStrings)
                }
                if let custom = try callFields.object("custom") {
                    try appendStrings(of: RequestFields(custom, path: callParam + ".custom."), names: ["name", "input"], to: &otherStrings)
                }
            }
        }
        if let functionCall = try fields.object("function_call") {
            try appendStrings(of: RequestFields(functionCall, path: param + ".function_call."), names: ["name", "arguments"], to: &otherStrings)
        }
        try appendStrings(of: fields, names: ["tool_call_id", "refusal"], to: &otherStrings)

        return ChatMessage(role: role, name: try fields.string("name"), content: content, otherStrings: otherStrings)
    }

    private static func appendStrings(of fields: RequestFields, names: [String], to strings: inout [String]) throws(GatewayError) {
        for name in names {
            if let text = try fields.string(name) { strings.append(text) }
        }
    }

    /// One element of an array `content`; nil for parts that cost no text tokens we can count
    /// (audio, files).
    private static func contentPart(_ value: JSONValue, param: String) throws(GatewayError) -> ChatContentPart? {
        guard case .object(let object) = value else { throw RequestFields.invalidType(param, expected: "an object", got: value) }
        let fields = RequestFields(object, path: param + ".")
        let type = try fields.requiredString("type")
        switch type {
        case "text":
            return .text(try fields.requiredString("text"))
        case "refusal":
            return .text(try fields.requiredString("refusal"))
        case "image_url":
            guard let imageValue = fields.value("image_url") else { throw RequestFields.missing(param + ".image_url") }
            let url: String
            var detail = ChatImage.Detail.auto
            switch imageValue {
            case .string(let text):
                url = text
            case .object(let image):
                let imageFields = RequestFields(image, path: param + ".image_url.")
                url = try imageFields.requiredString("url")
                if let detailText = try imageFields.string("detail") {
                    guard let parsed = ChatImage.Detail(rawValue: detailText) else {
                        throw RequestFields.invalidValue(param + ".image_url.detail", value: detailText, supported: imageDetails)
                    }
                    detail = parsed
                }
            default:
                throw RequestFields.invalidType(param + ".image_url", expected: "an object", got: imageValue)
            }
            let size = ImageHeaderReader.dimensions(ofDataURL: url)
            return .image(ChatImage(detail: detail, width: size?.width, height: size?.height))
        case "input_audio", "file":
            return nil
        default:
            throw RequestFields.invalidValue(param + ".type", value: type, supported: contentPartTypes)
        }
    }

    // MARK: Tools

    /// Schema keywords the cookbook's formula accounts for (or that cost nothing): they are not
    /// "unmodelled".
    private static let modelledSchemaKeys: Set<String> = ["type", "properties", "required", "additionalProperties"]

    static func chatTool(_ function: JSONObject, path: String) throws(GatewayError) -> ChatTool {
        let fields = RequestFields(function, path: path)
        let name = try fields.requiredString("name")
        let description = try fields.string("description") ?? ""
        guard let parameters = fields.value("parameters") else { return ChatTool(name: name, description: description) }
        guard case .object(let schema) = parameters else {
            return ChatTool(name: name, description: description, unmodelledSchemaJSON: JSONWriter.compactText(parameters))
        }

        var properties: [ChatToolProperty] = []
        var richProperties: [JSONMember] = []
        var unmodelled: [JSONMember] = []
        for member in schema.members {
            if member.key == "properties", case .object(let propertyObjects) = member.value {
                for property in propertyObjects.members {
                    if let flat = flatProperty(property) { properties.append(flat) } else { richProperties.append(property) }
                }
            } else if !modelledSchemaKeys.contains(member.key) {
                unmodelled.append(member)
            }
        }
        if !richProperties.isEmpty {
            unmodelled.insert(JSONMember(key: "properties", value: .object(JSONObject(members: richProperties))), at: 0)
        }
        let unmodelledJSON = unmodelled.isEmpty ? nil : JSONWriter.compactText(.object(JSONObject(members: unmodelled)))
        return ChatTool(name: name, description: description, properties: properties, unmodelledSchemaJSON: unmodelledJSON)
    }

    /// A property in the flat shape the formula covers: `type` a string, optional string
    /// `description`, optional `enum` of strings, nothing else.
    private static func flatProperty(_ property: JSONMember) -> ChatToolProperty? {
        guard case .object(let schema) = property.value, case .string(let type) = schema["type"] else { return nil }
        var description = ""
        var enumValues: [String] = []
        for member in schema.members {
            switch (member.key, member.value) {
            case ("type", _): continue
            case ("description", .string(let text)): description = text
            case ("enum", .array(let values)):
                for value in values {
                    guard case .string(let text) = value else { return nil }
                    enumValues.append(text)
                }
            default: return nil
            }
        }
        return ChatToolProperty(name: property.key, type: type, description: description, enumValues: enumValues)
    }
}
