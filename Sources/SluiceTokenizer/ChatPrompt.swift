/// The parts of a chat request that cost prompt tokens, as plain values.
///
/// `SluiceCore` builds a `ChatPrompt` from a `/v1/chat/completions` body; `ChatPromptCounter`
/// turns it into the number of prompt tokens OpenAI will bill. Keeping the shape here (and JSON
/// out of it) lets the tokenizer stay free of any wire format.
public struct ChatPrompt: Sendable, Equatable {
    public var messages: [ChatMessage]
    /// Functions from `tools` (type "function") or the legacy `functions` array.
    public var tools: [ChatTool]
    /// Other prompt-side JSON the model sees but for which no exact formula is published
    /// (`response_format` schemas, `tool_choice` objects): counted as plain text, an estimate.
    public var extraText: [String]

    public init(messages: [ChatMessage], tools: [ChatTool] = [], extraText: [String] = []) {
        self.messages = messages
        self.tools = tools
        self.extraText = extraText
    }
}

public struct ChatMessage: Sendable, Equatable {
    public var role: String
    public var name: String?
    /// String content is one `.text` part; multi-part content keeps its parts in order.
    public var content: [ChatContentPart]
    /// Every other string the message carries (`tool_call_id`, `refusal`, tool-call names and
    /// arguments, …): each is encoded as is, like the cookbook encodes every string value.
    public var otherStrings: [String]

    public init(role: String, name: String? = nil, content: [ChatContentPart], otherStrings: [String] = []) {
        self.role = role
        self.name = name
        self.content = content
        self.otherStrings = otherStrings
    }
}

public enum ChatContentPart: Sendable, Equatable {
    case text(String)
    case image(ChatImage)
}

/// An `image_url` part. Width and height are known only when the client's data URL carries a
/// decodable header; otherwise the counter assumes the worst case for the detail level.
public struct ChatImage: Sendable, Equatable {
    public enum Detail: String, Sendable { case low, high, auto }
    public var detail: Detail
    public var width: Int?
    public var height: Int?

    public init(detail: Detail = .auto, width: Int? = nil, height: Int? = nil) {
        self.detail = detail
        self.width = width
        self.height = height
    }
}

/// A function the model may call, in the flat shape the cookbook's formula covers.
public struct ChatTool: Sendable, Equatable {
    public var name: String
    public var description: String
    public var properties: [ChatToolProperty]
    /// JSON text of schema parts the formula does not cover (nested objects, arrays of objects):
    /// counted as plain text, an estimate.
    public var unmodelledSchemaJSON: String?

    public init(name: String, description: String = "", properties: [ChatToolProperty] = [], unmodelledSchemaJSON: String? = nil) {
        self.name = name
        self.description = description
        self.properties = properties
        self.unmodelledSchemaJSON = unmodelledSchemaJSON
    }
}

public struct ChatToolProperty: Sendable, Equatable {
    public var name: String
    public var type: String
    public var description: String
    public var enumValues: [String]

    public init(name: String, type: String, description: String = "", enumValues: [String] = []) {
        self.name = name
        self.type = type
        self.description = description
        self.enumValues = enumValues
    }
}
