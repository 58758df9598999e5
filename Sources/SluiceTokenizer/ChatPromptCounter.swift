/// The number of prompt tokens OpenAI bills for a chat request, from its `ChatPrompt`.
///
/// Follows the OpenAI cookbook "How to count tokens with tiktoken", whose totals were checked
/// against the API there (129 / 124 tokens for its messages example on cl100k / o200k models,
/// 105 / 101 for its tools example) and are reproduced by the tests:
/// - every message costs 3 tokens, plus the tokens of each of its strings (role, text parts,
///   `name`, other strings), plus 1 when it has a `name`; every reply is primed with 3 more;
/// - tools use `ToolFramingTokens` (flat JSON-schema properties; an empty `enumValues` means no
///   enum — JSON Schema requires at least one value — where the cookbook would still subtract
///   `enum_init` for an `"enum": []` key);
/// - images use `ImageTokenCost` (gpt-4o-class rules).
/// Exact for what the cookbook covers; multi-part text, `otherStrings`, `unmodelledSchemaJSON`
/// and `extraText` are encoded as plain text, an estimate (no formula is published for them).
/// Special-token text (`<|endoftext|>`) is counted as plain text, as the API treats it.
public struct ChatPromptCounter: Sendable {
    /// Per-message constants from the cookbook (models since gpt-3.5-turbo-0125 / gpt-4-0613).
    public static let tokensPerMessage = 3
    public static let tokensPerName = 1
    /// `<|start|>assistant<|message|>`, added once per request.
    public static let replyPrimerTokens = 3
    /// Default `maxPromptBytes`: far above any real context window's worth of text.
    public static let defaultMaxPromptBytes = 16 << 20

    public let encoding: BPEEncoding
    public let toolFraming: ToolFramingTokens
    public let imageCost: ImageTokenCost
    /// Prompts whose strings hold more UTF-8 bytes in total are refused before any counting.
    public let maxPromptBytes: Int

    /// A counter for models that use `encoding`; the tool framing defaults to the one measured
    /// for that encoding's model family (gpt-4o family for o200k_base, gpt-3.5/gpt-4 for cl100k_base).
    public init(
        encoding: BPEEncoding,
        toolFraming: ToolFramingTokens? = nil,
        imageCost: ImageTokenCost = .gpt4oClass,
        maxPromptBytes: Int = ChatPromptCounter.defaultMaxPromptBytes
    ) {
        self.encoding = encoding
        self.toolFraming = toolFraming ?? ToolFramingTokens.forEncoding(encoding.name)
        self.imageCost = imageCost
        self.maxPromptBytes = maxPromptBytes
    }

    /// The prompt tokens of `prompt`. Throws `.inputTooLarge` (before tokenizing anything) when
    /// its strings exceed `maxPromptBytes` UTF-8 bytes in total.
    ///
    /// With a `cache` (of this counter's encoding), texts counted recently are not counted again.
    ///
    /// With `stoppingAbove`, counting stops as soon as the total passes it: the result is then some
    /// number above it (a proof that the prompt exceeds it, at the cost of counting about that many
    /// tokens, whatever the prompt's size).
    public func count(_ prompt: ChatPrompt, cache: TokenCountCache? = nil, stoppingAbove limit: Int? = nil) throws(TokenizerError) -> Int {
        let byteCount = Self.utf8ByteCount(of: prompt)
        guard byteCount <= maxPromptBytes else {
            throw .inputTooLarge(byteCount: byteCount, limit: maxPromptBytes)
        }
        // A cache of another encoding would answer with its counts: not used.
        let cache = cache?.encoding === encoding ? cache : nil
        let scratch = cache?.scratch ?? MergeScratch()
        var total = 0
        func tokens(_ text: String) -> Int {
            if let limit, text.utf8.count > Self.boundedCountBytes {
                return encoding.countOrdinary(text, stoppingAbove: max(limit - total, 0), scratch: scratch)
            }
            return cache?.countOrdinary(text) ?? encoding.countOrdinary(text, scratch: scratch)
        }
        func over() -> Bool { limit.map { total > $0 } ?? false }

        for message in prompt.messages {
            if over() { return total }
            total += Self.tokensPerMessage + tokens(message.role)
            for part in message.content {
                switch part {
                case .text(let text): total += tokens(text)
                case .image(let image): total += imageCost.tokens(for: image)
                }
            }
            if let name = message.name { total += tokens(name) + Self.tokensPerName }
            for other in message.otherStrings { total += tokens(other) }
        }
        total += Self.replyPrimerTokens
        if over() { return total }

        if !prompt.tools.isEmpty {
            let framing = toolFraming
            for tool in prompt.tools {
                total += framing.functionStart + tokens(tool.name + ":" + Self.droppingOneTrailingPeriod(tool.description))
                if !tool.properties.isEmpty {
                    total += framing.propertiesStart
                    for property in tool.properties {
                        total += framing.perProperty
                        if !property.enumValues.isEmpty {
                            total += framing.enumStart
                            for value in property.enumValues { total += framing.perEnumItem + tokens(value) }
                        }
                        let description = Self.droppingOneTrailingPeriod(property.description)
                        total += tokens("\(property.name):\(property.type):\(description)")
                    }
                }
                if let schema = tool.unmodelledSchemaJSON { total += tokens(schema) }
            }
            total += framing.toolsEnd
        }
        for text in prompt.extraText { total += tokens(text) }
        return total
    }

    /// Texts larger than this are counted with a stop when the count has a limit (smaller ones
    /// count in a few µs, and may come from the cache).
    static let boundedCountBytes = 4096

    private static func droppingOneTrailingPeriod(_ text: String) -> String {
        text.utf8.last == UInt8(ascii: ".") ? String(text.dropLast()) : text
    }

    /// Total UTF-8 bytes of every string the count would encode (O(1) per native string).
    public static func utf8ByteCount(of prompt: ChatPrompt) -> Int {
        var total = 0
        for message in prompt.messages {
            total += message.role.utf8.count + (message.name?.utf8.count ?? 0)
            for part in message.content {
                if case .text(let text) = part { total += text.utf8.count }
            }
            for other in message.otherStrings { total += other.utf8.count }
        }
        for tool in prompt.tools {
            total += tool.name.utf8.count + tool.description.utf8.count + (tool.unmodelledSchemaJSON?.utf8.count ?? 0)
            for property in tool.properties {
                total += property.name.utf8.count + property.type.utf8.count + property.description.utf8.count
                for value in property.enumValues { total += value.utf8.count }
            }
        }
        for text in prompt.extraText { total += text.utf8.count }
        return total
    }
}

/// The cookbook's constants for function tools, measured against the API per model family.
public struct ToolFramingTokens: Sendable, Equatable {
    /// `func_init`, per function.
    public var functionStart: Int
    /// `prop_init`, per function that has properties.
    public var propertiesStart: Int
    /// `prop_key`, per property.
    public var perProperty: Int
    /// `enum_init`, per property with an enum (negative in the cookbook).
    public var enumStart: Int
    /// `enum_item`, per enum value (plus the value's tokens).
    public var perEnumItem: Int
    /// `func_end`, once when there is at least one tool.
    public var toolsEnd: Int

    public init(functionStart: Int, propertiesStart: Int, perProperty: Int, enumStart: Int, perEnumItem: Int, toolsEnd: Int) {
        self.functionStart = functionStart
        self.propertiesStart = propertiesStart
        self.perProperty = perProperty
        self.enumStart = enumStart
        self.perEnumItem = perEnumItem
        self.toolsEnd = toolsEnd
    }

    /// gpt-4o, gpt-4o-mini (and, by encoding, the other o200k_base models).
    public static let gpt4oFamily = ToolFramingTokens(functionStart: 7, propertiesStart: 3, perProperty: 3, enumStart: -3, perEnumItem: 3, toolsEnd: 12)
    /// gpt-3.5-turbo, gpt-4 (the cl100k_base chat models).
    public static let gpt4Family = ToolFramingTokens(functionStart: 10, propertiesStart: 3, perProperty: 3, enumStart: -3, perEnumItem: 3, toolsEnd: 12)

    /// The framing measured for the models that use `encoding`.
    public static func forEncoding(_ encoding: EncodingName) -> ToolFramingTokens {
        switch encoding {
        case .o200k_base: return .gpt4oFamily
        case .cl100k_base: return .gpt4Family
        }
    }
}

/// Prompt tokens of an image input, per OpenAI's published rules for gpt-4o-class models.
///
/// `low` detail costs `lowDetailTokens`. `high` (and `auto`, which may choose either, so the
/// upper bound is used) scales the image to fit `maxSide`×`maxSide`, then shrinks it so that its
/// shortest side is at most `shortSideTarget` (smaller images are not enlarged), and costs
/// `baseTokens` plus `tileTokens` per `tileSide`-pixel tile. Scaled sizes are whole pixels
/// (rounded down). Without a known size the worst case is assumed: the most tiles any image can
/// have after those two scalings.
/// OpenAI's documented examples: 1024×1024 high → 765, 2048×4096 high → 1105, any low → 85.
public struct ImageTokenCost: Sendable, Equatable {
    public var lowDetailTokens: Int
    public var baseTokens: Int
    public var tileTokens: Int
    public var tileSide: Int
    public var maxSide: Int
    public var shortSideTarget: Int

    public init(lowDetailTokens: Int, baseTokens: Int, tileTokens: Int, tileSide: Int, maxSide: Int, shortSideTarget: Int) {
        self.lowDetailTokens = lowDetailTokens
        self.baseTokens = baseTokens
        self.tileTokens = tileTokens
        self.tileSide = tileSide
        self.maxSide = maxSide
        self.shortSideTarget = shortSideTarget
    }

    /// gpt-4o, gpt-4.1, gpt-4-turbo vision: 85 + 170 per 512-px tile.
    public static let gpt4oClass = ImageTokenCost(lowDetailTokens: 85, baseTokens: 85, tileTokens: 170, tileSide: 512, maxSide: 2048, shortSideTarget: 768)

    /// The tokens `image` costs.
    public func tokens(for image: ChatImage) -> Int {
        if image.detail == .low { return lowDetailTokens }
        guard let width = image.width, let height = image.height, width > 0, height > 0 else {
            return baseTokens + tileTokens * worstCaseTileCount
        }
        return baseTokens + tileTokens * tileCount(width: width, height: height)
    }

    /// Tiles of the largest image after scaling: shortest side at most `shortSideTarget`,
    /// longest at most `maxSide`.
    public var worstCaseTileCount: Int {
        Self.tilesAlong(shortSideTarget, tileSide) * Self.tilesAlong(maxSide, tileSide)
    }

    func tileCount(width: Int, height: Int) -> Int {
        // Doubles: client-supplied sizes may be absurd; no integer overflow on the way.
        var long = Double(max(width, height))
        var short = Double(min(width, height))
        if long > Double(maxSide) {
            short = (short * Double(maxSide) / long).rounded(.down)
            long = Double(maxSide)
        }
        if short > Double(shortSideTarget) {
            long = (long * Double(shortSideTarget) / short).rounded(.down)
            short = Double(shortSideTarget)
        }
        let side = Double(tileSide)
        return Int((max(long, 1) / side).rounded(.up)) * Int((max(short, 1) / side).rounded(.up))
    }

    private static func tilesAlong(_ length: Int, _ tile: Int) -> Int {
        (length + tile - 1) / tile
    }
}

extension Tokenizers {
    /// A chat prompt counter for `model`, using its encoding and that family's tool framing.
    public func chatPromptCounter(forModel model: String, maxPromptBytes: Int = ChatPromptCounter.defaultMaxPromptBytes) -> ChatPromptCounter {
        ChatPromptCounter(encoding: encoding(forModel: model), maxPromptBytes: maxPromptBytes)
    }
}
