/// The generated text of a non-streamed answer, for upstreams that report no `usage`: Sluice then
/// counts the completion tokens itself from what it relays.
public enum CompletionText {
    /// Concatenates `choices[].message.content`, `choices[].message.tool_calls[].function.arguments`
    /// (chat), `choices[].text` (completions), and a Responses API `response`'s `output[]` items:
    /// `content[].text` / `.refusal` of messages, `arguments` of function calls. Empty when the body is
    /// not such an answer.
    public static func fromResponseBody(_ body: [UInt8]) -> String {
        guard let root = try? JSONReader.parse(body).objectValue else { return "" }
        if let output = root["output"]?.arrayValue {
            var text = ""
            for item in output {
                guard let item = item.objectValue else { continue }
                if let arguments = item["arguments"]?.stringValue { text += arguments }
                for part in item["content"]?.arrayValue ?? [] {
                    guard let part = part.objectValue else { continue }
                    if let value = (part["text"] ?? part["refusal"])?.stringValue { text += value }
                }
            }
            return text
        }
        guard let choices = root["choices"]?.arrayValue else { return "" }
        var text = ""
        for choice in choices {
            guard let choice = choice.objectValue else { continue }
            if let completion = choice["text"]?.stringValue { text += completion }
            guard let message = choice["message"]?.objectValue else { continue }
            if let content = message["content"]?.stringValue { text += content }
            for call in message["tool_calls"]?.arrayValue ?? [] {
                if let arguments = call.objectValue?["function"]?.objectValue?["arguments"]?.stringValue {
                    text += arguments
                }
            }
        }
        return text
    }
}
