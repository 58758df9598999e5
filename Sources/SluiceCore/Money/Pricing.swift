/// What one token costs, exact: a whole number of pico-dollars (10⁻¹² USD) per token, which is the
/// same number as micro-dollars per million tokens — the config's `*_per_mtok` prices with up to six
/// digits after the point (`0.075` USD/Mtok is 75,000).
public struct TokenPrice: Sendable, Hashable, Comparable {
    /// Digits after the point a `*_per_mtok` price can have.
    public static let fractionDigits = 6
    /// The highest price per million tokens accepted (the dearest models cost a few hundred).
    public static let maximumDollarsPerMtok: Int64 = 100_000

    public static let free = TokenPrice(picodollarsPerToken: 0)

    public var picodollarsPerToken: Int64

    public init(picodollarsPerToken: Int64) {
        self.picodollarsPerToken = picodollarsPerToken
    }

    /// A price in USD per million tokens written as decimal text (`"2.5"`, `"0.075"`); `nil` with
    /// more than six digits after the point, negative, or above `maximumDollarsPerMtok`.
    public init?(dollarsPerMtok text: String) {
        guard let value = ExactDecimal(text)?.scaled(toFractionDigits: Self.fractionDigits),
              (0...Self.maximumDollarsPerMtok * 1_000_000).contains(value)
        else { return nil }
        self.picodollarsPerToken = value
    }

    /// The price as USD per million tokens, shortest decimal text.
    public var dollarsPerMtok: String {
        ExactDecimal.format(picodollarsPerToken, fractionDigits: Self.fractionDigits)
    }

    public static func < (lhs: TokenPrice, rhs: TokenPrice) -> Bool { lhs.picodollarsPerToken < rhs.picodollarsPerToken }
}

/// The three prices of a model: uncached input, cached input (prompt tokens the upstream served
/// from its cache), output (reasoning tokens are output tokens).
public struct TokenPrices: Sendable, Hashable {
    public var input: TokenPrice
    public var cachedInput: TokenPrice
    public var output: TokenPrice

    /// `cachedInput` defaults to the input price (a provider without a cache discount).
    public init(input: TokenPrice, cachedInput: TokenPrice? = nil, output: TokenPrice) {
        self.input = input
        self.cachedInput = cachedInput ?? input
        self.output = output
    }

    public static let free = TokenPrices(input: .free, output: .free)
}

/// The tokens a request is billed for.
public struct BilledTokens: Sendable, Hashable {
    /// Every prompt token, cached ones included (OpenAI's `prompt_tokens`).
    public var inputTokens: Int
    /// The part of `inputTokens` served from the upstream's cache
    /// (`usage.prompt_tokens_details.cached_tokens`); clamped to `inputTokens`.
    public var cachedInputTokens: Int
    public var outputTokens: Int

    public init(inputTokens: Int, cachedInputTokens: Int = 0, outputTokens: Int) {
        self.inputTokens = max(inputTokens, 0)
        self.cachedInputTokens = min(max(cachedInputTokens, 0), max(inputTokens, 0))
        self.outputTokens = max(outputTokens, 0)
    }

    /// All of them: how far the request moves its subject's position in the month.
    public var totalTokens: Int { inputTokens + outputTokens }
}

/// A price break: from the subject's `afterTokens`-th token of the calendar month on (the first
/// `afterTokens` are priced before it), these prices apply.
public struct VolumeTier: Sendable, Hashable {
    public var afterTokens: Int
    public var prices: TokenPrices

    public init(afterTokens: Int, prices: TokenPrices) {
        self.afterTokens = afterTokens
        self.prices = prices
    }
}

/// A subscription: a monthly fee that includes the subject's first `includedTokens` tokens of each
/// calendar month (their token prices are 0); beyond them, the model's prices (its volume tiers
/// included) are the overage. The fee is not a request's cost: it is due once a month whatever the
/// requests, and reported by `sluice usage` per month.
public struct SubscriptionPlan: Sendable, Hashable {
    public var monthlyFee: USDAmount
    public var includedTokens: Int

    public init(monthlyFee: USDAmount, includedTokens: Int) {
        self.monthlyFee = monthlyFee
        self.includedTokens = includedTokens
    }
}

/// The price of one model (one `pricing.models` entry).
public struct ModelPrice: Sendable, Hashable {
    /// From the month's first token, until the first volume tier.
    public var prices: TokenPrices
    /// Added to every request the model answered (`per_request`).
    public var perRequest: USDAmount
    /// Ascending by `afterTokens`, each above the last (validated).
    public var volumeTiers: [VolumeTier]

    public init(prices: TokenPrices, perRequest: USDAmount = .zero, volumeTiers: [VolumeTier] = []) {
        self.prices = prices
        self.perRequest = perRequest
        self.volumeTiers = volumeTiers
    }

    /// Whether a request's cost depends on how many tokens its subject used earlier in the month.
    public func dependsOnMonthPosition(plan: SubscriptionPlan?) -> Bool {
        !volumeTiers.isEmpty || plan != nil
    }

    /// What `tokens` cost, exact, rounded up to the nano-dollar once.
    ///
    /// The request's tokens take the positions `monthTokensBefore` ..< `monthTokensBefore` +
    /// `tokens.totalTokens` of its subject's (key's, or team's) calendar month, in this order:
    /// uncached input, cached input, output. Each token is priced by the band its position falls
    /// in: within a plan's included tokens it costs nothing, elsewhere the last volume tier at or
    /// below its position sets the price (before the first tier, `prices`). `per_request` is added.
    ///
    /// - Returns: `nil` when the price depends on the position (volume tiers, a plan) and
    ///   `monthTokensBefore` is not known: the cost is unknown, never guessed.
    public func cost(_ tokens: BilledTokens, monthTokensBefore: Int? = nil, plan: SubscriptionPlan? = nil) -> USDAmount? {
        var position: Int
        if dependsOnMonthPosition(plan: plan) {
            guard let monthTokensBefore else { return nil }
            position = max(monthTokensBefore, 0)
        } else {
            position = 0
        }
        var picodollars: Int128 = Int128(perRequest.nanos) * 1000
        let uncached = tokens.inputTokens - tokens.cachedInputTokens
        let parts: [(count: Int, price: KeyPath<TokenPrices, TokenPrice>)] = [
            (uncached, \.input), (tokens.cachedInputTokens, \.cachedInput), (tokens.outputTokens, \.output),
        ]
        for part in parts {
            var left = part.count
            while left > 0 {
                let band = self.band(at: position, plan: plan)
                let taken = band.end.map { min(left, $0 - position) } ?? left
                picodollars += Int128(taken) * Int128(band.prices[keyPath: part.price].picodollarsPerToken)
                position += taken
                left -= taken
            }
        }
        return USDAmount(nanos: Self.nanosRoundedUp(picodollars))
    }

    /// The most `inputTokens` prompt tokens and `outputTokens` output tokens can cost at any
    /// position of the month and whichever part of the prompt is cached: what a budget reserves.
    public func maximumCost(inputTokens: Int, outputTokens: Int) -> USDAmount {
        let bands = [prices] + volumeTiers.map(\.prices)
        let input = bands.map { max($0.input, $0.cachedInput) }.max()!
        let output = bands.map(\.output).max()!
        let picodollars = Int128(perRequest.nanos) * 1000
            + Int128(max(inputTokens, 0)) * Int128(input.picodollarsPerToken)
            + Int128(max(outputTokens, 0)) * Int128(output.picodollarsPerToken)
        return USDAmount(nanos: Self.nanosRoundedUp(picodollars))
    }

    /// The prices at `position` and where they stop applying (`nil`: never).
    private func band(at position: Int, plan: SubscriptionPlan?) -> (prices: TokenPrices, end: Int?) {
        let nextTier = volumeTiers.first { $0.afterTokens > position }?.afterTokens
        if let plan, position < plan.includedTokens {
            return (.free, min(plan.includedTokens, nextTier ?? .max))
        }
        let current = volumeTiers.last { $0.afterTokens <= position }?.prices ?? prices
        return (current, nextTier)
    }

    /// ⌈pico ÷ 1000⌉, saturating at `Int64.max` (unreachable within the validated bounds).
    static func nanosRoundedUp(_ picodollars: Int128) -> Int64 {
        let nanos = (picodollars + 999) / 1000
        return nanos > Int128(Int64.max) ? .max : Int64(nanos)
    }
}

/// The `pricing` section: model prices and subscription plans.
public struct Pricing: Sendable, Hashable {
    /// Model patterns (exact names, or prefixes ending in `*` as in `upstreams[].models`) and their prices.
    public var models: [ModelMatcher: ModelPrice]
    /// Subscription plans by name, for `keys[].plan`.
    public var plans: [String: SubscriptionPlan]

    public static let none = Pricing(models: [:], plans: [:])

    public init(models: [ModelMatcher: ModelPrice], plans: [String: SubscriptionPlan] = [:]) {
        self.models = models
        self.plans = plans
    }

    public var isEmpty: Bool { models.isEmpty && plans.isEmpty }

    /// The price of `model`: its exact entry, else the entry of the longest prefix that matches it
    /// (`gpt-4o-mini*` before `gpt-4o*` before `*`); `nil`: the model has no price, and its cost
    /// is unknown.
    public func price(for model: String) -> (pattern: ModelMatcher, price: ModelPrice)? {
        if let price = models[.exact(model)] { return (.exact(model), price) }
        var best: (pattern: ModelMatcher, price: ModelPrice, length: Int)?
        for (pattern, price) in models {
            guard case .prefix(let stem) = pattern, model.hasPrefix(stem) else { continue }
            if stem.utf8.count > best?.length ?? -1 { best = (pattern, price, stem.utf8.count) }
        }
        return best.map { ($0.pattern, $0.price) }
    }
}

/// A request's cost as Sluice reports it: known exactly, or unknown — never a guessed zero.
public enum RequestCost: Sendable, Hashable, CustomStringConvertible {
    case known(USDAmount)
    /// The model has no price, or its price depends on the subject's month position and that
    /// position was not known.
    case unknown

    /// The amount as decimal USD (`0.00042`), or `unknown`: the `x-sluice-cost-usd` header's and the
    /// access log's value.
    public var description: String {
        switch self {
        case .known(let amount): amount.description
        case .unknown: "unknown"
        }
    }

    public var amount: USDAmount? {
        if case .known(let amount) = self { return amount }
        return nil
    }
}

extension Pricing {
    /// What a request for `model` costs: its price's `cost`, under the key's plan (`planName`, a
    /// `plans` name; an unknown name prices as no plan). Unknown when the model has no price or the
    /// price needs `monthTokensBefore` and it is `nil`.
    public func cost(model: String, planName: String?, tokens: BilledTokens, monthTokensBefore: Int? = nil) -> RequestCost {
        guard let price = price(for: model)?.price else { return .unknown }
        let plan = planName.flatMap { plans[$0] }
        return price.cost(tokens, monthTokensBefore: monthTokensBefore, plan: plan).map(RequestCost.known) ?? .unknown
    }
}
