/// The generated text of a non-streamed answer, for upstreams that report no `usage`: Sluice then
/// counts the completion tokens itself from what it relays.
public enum CompletionText {
    /// Concatenates `choices[].message.content`, `choices[].message.tool_calls[].function.arguments`
    /// (chat) and `choices[].text` (completions). Empty when the body is not such an answer.
    public static func fromResponseBody(_ body: [UInt8]) -> String {
        guard let root = try? JSONReader.parse(body).objectValue,
              let choices = root["choices"]?.arrayValue else { return "" }
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
