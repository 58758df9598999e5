import SluiceCore

// Independent readings of what the hot paths read with `JSONScanner` in one pass: the same
// documented rules, applied to `JSONReader`'s tree. A target compares the two.

/// `Usage`'s documented rules, applied to a parsed `usage` value: a non-negative integer
/// `prompt_tokens` (or the Responses API's `input_tokens`: of the two names the last member counts)
/// is required; `completion_tokens` (or `output_tokens`, likewise) defaults to 0 and `total_tokens` to
/// the sum; null counts as absent; anything else that is not an integer in
/// `0...Usage.maximumTokenCount` makes the whole usage invalid. Of a valid usage, the `cached_tokens`
/// of the last `prompt_tokens_details` or `input_tokens_details` member and the `reasoning_tokens` of
/// the last `completion_tokens_details` or `output_tokens_details` member are kept when that member is
/// an object and they are such integers (else ignored).
public func expectedUsage(_ value: JSONValue) -> Usage? {
    guard case .object(let object) = value else { return nil }
    enum Count { case absent, value(Int), invalid }
    func reading(_ value: JSONValue?) -> Count {
        switch value {
        case nil, .null?: return .absent
        case .number(let number)?:
            guard let integer = number.intValue, (0...Usage.maximumTokenCount).contains(integer) else { return .invalid }
            return .value(integer)
        default: return .invalid
        }
    }
    /// The last member named one of `names`.
    func count(_ names: String...) -> Count {
        reading(object.members.last { names.contains($0.key) }?.value)
    }
    /// The detail `name` of the last member named one of `containers`, when that is an object.
    func detail(_ containers: [String], _ name: String) -> Int? {
        guard case .object(let details)? = object.members.last(where: { containers.contains($0.key) })?.value,
              case .value(let value) = reading(details[name]) else { return nil }
        return value
    }
    guard case .value(let prompt) = count("prompt_tokens", "input_tokens") else { return nil }
    let completion: Int
    switch count("completion_tokens", "output_tokens") {
    case .invalid: return nil
    case .absent: completion = 0
    case .value(let value): completion = value
    }
    var usage: Usage
    switch count("total_tokens") {
    case .invalid: return nil
    case .value(let total): usage = Usage(promptTokens: prompt, completionTokens: completion, totalTokens: total)
    case .absent: usage = Usage(promptTokens: prompt, completionTokens: completion, totalTokens: prompt + completion)
    }
    usage.cachedInputTokens = detail(["prompt_tokens_details", "input_tokens_details"], "cached_tokens")
    usage.reasoningTokens = detail(["completion_tokens_details", "output_tokens_details"], "reasoning_tokens")
    return usage
}

/// What the relay should take from one SSE `data` payload, by `StreamRelayFilter`'s documented
/// rules: `[DONE]`; else, for a JSON object, the generated text (`choices[].delta|message` →
/// `content`, `refusal`, `reasoning_content`, `tool_calls[].function.{name,arguments}`,
/// `function_call.{name,arguments}`; `choices[].text`), every occurrence in document order; the
/// last `usage` object's reading; whether the last `choices` array is empty next to a `usage`
/// object (the usage-only chunk); an `error` member. Nil when the payload is neither.
public struct ExpectedStreamChunk: Equatable {
    public var isDone = false
    public var text = ""
    public var usage: Usage?
    public var isUsageOnly = false
    public var isError = false

    public init?(payload: [UInt8]) {
        let isSpace = { (byte: UInt8) in byte == 0x20 || byte == 0x09 || byte == 0x0A || byte == 0x0D }
        if payload.drop(while: isSpace).reversed().drop(while: isSpace).reversed().elementsEqual("[DONE]".utf8) {
            isDone = true
            return
        }
        guard case .object(let root)? = try? JSONReader.parse(payload) else { return nil }
        var choiceCount: Int?
        var hasUsageObject = false
        for member in root.members {
            switch (member.key, member.value) {
            case ("choices", .array(let choices)):
                choiceCount = choices.count
                for case .object(let choice) in choices {
                    for field in choice.members {
                        switch (field.key, field.value) {
                        case ("delta", .object(let delta)), ("message", .object(let delta)): appendDelta(delta)
                        case ("text", .string(let string)): text += string
                        default: break
                        }
                    }
                }
            case ("usage", .object):
                hasUsageObject = true
                usage = expectedUsage(member.value)
            case ("error", _):
                isError = true
            default:
                break
            }
        }
        isUsageOnly = hasUsageObject && choiceCount == 0
    }

    private mutating func appendDelta(_ delta: JSONObject) {
        for member in delta.members {
            switch (member.key, member.value) {
            case ("content", .string(let string)), ("refusal", .string(let string)), ("reasoning_content", .string(let string)):
                text += string
            case ("tool_calls", .array(let calls)):
                for case .object(let call) in calls {
                    for case let field in call.members where field.key == "function" { appendFunction(field.value) }
                }
            case ("function_call", let function):
                appendFunction(function)
            default:
                break
            }
        }
    }

    private mutating func appendFunction(_ value: JSONValue) {
        guard case .object(let function) = value else { return }
        for member in function.members {
            if member.key == "name" || member.key == "arguments", case .string(let string) = member.value { text += string }
        }
    }
}
