import FuzzSupport
import SluiceCore
import SluiceTokenizer

/// `OpenAIRequest.parse` (with `ChatRequestReader`, `RequestFields` and the image header reader
/// behind it) and `upstreamBody(original:)`, for each endpoint, on arbitrary bodies.
///
/// Properties:
/// - a body that is not UTF-8 is refused as `invalidRequest` saying so (JSON is UTF-8, checked
///   first); otherwise it is refused as `invalidJSON` exactly when `JSONReader` refuses it, else (if
///   refused) as `invalidRequest`; the error's OpenAI body is valid JSON carrying its message;
/// - an accepted request reports what the body says, within the documented ranges (`model`,
///   `n` in 1...128, output tokens in 0...Int32.max, no streaming for embeddings);
/// - the body with another model name (`upstreamBody(original:model:)`) reads the same but for
///   the model;
/// - the upstream body is the client's body unchanged unless Sluice adds usage, and then it is
///   a valid request that reads the same, with `include_usage` on and every other top-level
///   member (and every other `stream_options` member) unchanged.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let body = fuzzInput(data, size)
    let isUTF8 = UTF8Validation.isValid(body.assumingMemoryBound(to: UInt8.self))
    let document = Result { () throws(JSONParseError) in try JSONReader.parse(body) }
    for endpoint in OpenAIEndpoint.allCases {
        let parsed = Result { () throws(GatewayError) in try OpenAIRequest.parse(body, endpoint: endpoint) }
        switch parsed {
        case .failure(let error):
            checkRefusal(error, isUTF8: isUTF8, documentParsed: (try? document.get()) != nil)
        case .success(let request):
            require(isUTF8, "a body that is not UTF-8 was accepted")
            guard case .success(.object(let root)) = document else {
                fatalError("property violated: \(endpoint) accepted a body that is not a JSON object")
            }
            checkAccepted(request, root: root, body: Array(body))
        }
    }
    return 0
}

private func checkRefusal(_ error: GatewayError, isUTF8: Bool, documentParsed: Bool) {
    if !isUTF8 {
        require(error.kind == .invalidRequest && error.message.contains("UTF-8"), "a body that is not UTF-8 refused with \(error.kind): \(error.message)")
    } else if documentParsed {
        require(error.kind == .invalidRequest, "a JSON body refused with \(error.kind)")
    } else {
        require(error.kind == .invalidJSON, "a non-JSON body refused with \(error.kind)")
    }
    require(error.status == 400, "a refused body answered \(error.status)")
    let rendered = Result { () throws(JSONParseError) in try JSONReader.parse(error.responseBody()) }
    guard case .success(.object(let envelope)) = rendered, case .object(let inner)? = envelope["error"] else {
        fatalError("property violated: error body is not {\"error\":{…}}: \(rendered)")
    }
    require(inner["message"] == .string(error.message), "error body's message differs from the error's")
}

private func checkAccepted(_ request: OpenAIRequest, root: JSONObject, body: [UInt8]) {
    require(root["model"] == .string(request.model), "model \(request.model) is not the body's")
    require((1...OpenAIRequest.maximumChoices).contains(request.n), "n = \(request.n)")
    if let tokens = request.maxOutputTokens {
        require((0...OpenAIRequest.maximumOutputTokens).contains(tokens), "max output tokens = \(tokens)")
    }
    switch (request.endpoint, request.prompt) {
    case (.chatCompletions, .chat), (.responses, .chat):
        break
    case (.completions, .texts), (.completions, .tokenCount), (.embeddings, .texts), (.embeddings, .tokenCount):
        if case .tokenCount(let count) = request.prompt { require(count >= 0, "token count \(count)") }
    default:
        fatalError("property violated: \(request.endpoint) read a prompt of the wrong kind")
    }
    if request.endpoint == .embeddings {
        require(!request.stream && request.n == 1 && request.maxOutputTokens == nil, "embeddings with completion fields")
    }

    // Another model name (a deployment's model_map, a fallback): the body reads the same but for it.
    let renamed = request.upstreamBody(original: body, model: "fuzz-\"model\u{1F600}")
    let reparsed = Result { () throws(GatewayError) in try OpenAIRequest.parse(renamed, endpoint: request.endpoint) }
    guard case .success(let other) = reparsed else {
        fatalError("property violated: the renamed body is refused: \(reparsed)\n\(String(decoding: renamed, as: UTF8.self))")
    }
    require(other.model == "fuzz-\"model\u{1F600}" && other.stream == request.stream && other.n == request.n
            && other.maxOutputTokens == request.maxOutputTokens && other.prompt == request.prompt,
            "the renamed body reads differently")

    let upstream = request.upstreamBody(original: body)
    guard request.sluiceAddedUsage else {
        require(upstream == body, "body changed although Sluice adds nothing")
        return
    }
    let reread = Result { () throws(GatewayError) in try OpenAIRequest.parse(upstream, endpoint: request.endpoint) }
    guard case .success(let again) = reread else {
        fatalError("property violated: the upstream body is refused: \(reread)\n\(String(decoding: upstream, as: UTF8.self))")
    }
    require(again.clientRequestedUsage && !again.sluiceAddedUsage, "the upstream body does not ask for usage")
    require(again.model == request.model && again.stream == request.stream && again.n == request.n
            && again.maxOutputTokens == request.maxOutputTokens && again.prompt == request.prompt,
            "the upstream body reads differently")

    guard case .object(let upstreamRoot) = try! JSONReader.parse(upstream) else { fatalError("parsed above") }
    let others = { (object: JSONObject) in object.members.filter { $0.key != "stream_options" } }
    require(others(upstreamRoot) == others(root), "top-level members other than stream_options changed")
    let kept = { (object: JSONObject) -> [JSONMember] in
        guard case .object(let options)? = object["stream_options"] else { return [] }
        return options.members.filter { $0.key != "include_usage" }
    }
    require(kept(upstreamRoot) == kept(root), "stream_options members other than include_usage changed")
}
