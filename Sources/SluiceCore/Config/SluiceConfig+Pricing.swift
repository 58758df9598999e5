/// Reading the `pricing` section: model prices (per million tokens, exact decimals), volume tiers and
/// subscription plans.
extension ConfigDocumentReader {
    static let pricingFields = ["models", "plans"]
    static let modelPriceFields = ["input_per_mtok", "cached_input_per_mtok", "output_per_mtok", "per_request", "volume_tiers"]
    static let volumeTierFields = ["after_tokens", "input_per_mtok", "cached_input_per_mtok", "output_per_mtok"]
    static let planFields = ["monthly_fee", "included_tokens"]
    /// The largest `per_request` price and plan fee, in dollars.
    static let maximumDollarAmount: Int64 = 1_000_000
    /// Token positions in a month (`after_tokens`, `included_tokens`) stay below this (as the quotas).
    static let maximumMonthTokens = LimitSet.maximumQuota

    mutating func readPricing(_ value: ConfigJSON, at path: String) -> Pricing {
        guard let members = walker.object(value, at: path) else { return .none }
        walker.rejectUnknownFields(members, known: Self.pricingFields, at: path)
        var pricing = Pricing.none
        if let modelsValue = members["models"], !modelsValue.isNull, let models = walker.object(modelsValue, at: "\(path).models") {
            for pattern in models.keys.sorted() {
                let modelPath = ConfigWalker.member("\(path).models", pattern)
                guard let matcher = ModelMatcher(pattern: pattern) else {
                    walker.report(modelPath, "\"\(pattern.prefix(256))\" is not a model name or a prefix ending in \"*\"")
                    continue
                }
                if let price = readModelPrice(models[pattern]!, at: modelPath) { pricing.models[matcher] = price }
            }
        }
        if let plansValue = members["plans"], !plansValue.isNull, let plans = walker.object(plansValue, at: "\(path).plans") {
            for name in plans.keys.sorted() {
                let planPath = ConfigWalker.member("\(path).plans", name)
                if !KeyConfig.isValidID(name) {
                    walker.report(planPath, "plan names must match [A-Za-z0-9_.-]{1,64}")
                    continue
                }
                if let plan = readPlan(plans[name]!, at: planPath) { pricing.plans[name] = plan }
            }
        }
        return pricing
    }

    mutating func readModelPrice(_ value: ConfigJSON, at path: String) -> ModelPrice? {
        guard let members = walker.object(value, at: path) else { return nil }
        walker.rejectUnknownFields(members, known: Self.modelPriceFields, at: path)
        let required = "missing (required): USD per million tokens (0 for a model that has none, such as an embedding model's output)"
        let input = readTokenPrice(members, "input_per_mtok", at: path, missing: required)
        let output = readTokenPrice(members, "output_per_mtok", at: path, missing: required)
        let cached = readTokenPrice(members, "cached_input_per_mtok", at: path, missing: nil)
        let perRequest = readDollars(members, "per_request", at: path) ?? .zero
        guard let input, let output else { return nil }
        let base = TokenPrices(input: input, cachedInput: cached, output: output)
        var tiers: [VolumeTier] = []
        if let tiersValue = members["volume_tiers"], !tiersValue.isNull, let elements = walker.array(tiersValue, at: "\(path).volume_tiers") {
            for (index, element) in elements.enumerated() {
                let tierPath = ConfigWalker.element("\(path).volume_tiers", index)
                guard let tier = readVolumeTier(element, at: tierPath, base: base) else { continue }
                if let previous = tiers.last, tier.afterTokens <= previous.afterTokens {
                    walker.report("\(tierPath).after_tokens", "must be above the previous tier's (\(previous.afterTokens)): list the tiers in ascending order")
                    continue
                }
                tiers.append(tier)
            }
        }
        return ModelPrice(prices: base, perRequest: perRequest, volumeTiers: tiers)
    }

    /// A tier's prices default to the model's own (`base`), field by field.
    mutating func readVolumeTier(_ value: ConfigJSON, at path: String, base: TokenPrices) -> VolumeTier? {
        guard let members = walker.object(value, at: path) else { return nil }
        walker.rejectUnknownFields(members, known: Self.volumeTierFields, at: path)
        let after = walker.optionalInteger(members, "after_tokens", at: path, range: 1...Self.maximumMonthTokens)
        if members["after_tokens"]?.isNull ?? true {
            walker.report("\(path).after_tokens", "missing (required): the tokens of the calendar month after which these prices apply")
        }
        let input = readTokenPrice(members, "input_per_mtok", at: path, missing: nil)
        let cached = readTokenPrice(members, "cached_input_per_mtok", at: path, missing: nil)
        let output = readTokenPrice(members, "output_per_mtok", at: path, missing: nil)
        guard let after else { return nil }
        // A tier that changes the input price and not the cached one keeps the base's cache discount
        // only when the base had one; otherwise the cached price follows the input price.
        let baseHadDiscount = base.cachedInput != base.input
        let tierInput = input ?? base.input
        let tierCached = cached ?? (baseHadDiscount ? base.cachedInput : tierInput)
        return VolumeTier(afterTokens: after, prices: TokenPrices(input: tierInput, cachedInput: tierCached, output: output ?? base.output))
    }

    mutating func readPlan(_ value: ConfigJSON, at path: String) -> SubscriptionPlan? {
        guard let members = walker.object(value, at: path) else { return nil }
        walker.rejectUnknownFields(members, known: Self.planFields, at: path)
        let fee = readDollars(members, "monthly_fee", at: path)
        if members["monthly_fee"]?.isNull ?? true {
            walker.report("\(path).monthly_fee", "missing (required): USD per calendar month (0 for none)")
        }
        let included = walker.optionalInteger(members, "included_tokens", at: path, range: 0...Self.maximumMonthTokens)
        if members["included_tokens"]?.isNull ?? true {
            walker.report("\(path).included_tokens", "missing (required): the tokens of each calendar month the fee covers")
        }
        guard let fee, let included else { return nil }
        return SubscriptionPlan(monthlyFee: fee, includedTokens: included)
    }

    /// A `*_per_mtok` price: a JSON number, 0 … 100,000, at most six digits after the point.
    /// Absent or `null`: `nil`, reported as `missing` when that is given.
    mutating func readTokenPrice(_ members: [String: ConfigJSON], _ name: String, at path: String, missing: String?) -> TokenPrice? {
        let fieldPath = ConfigWalker.member(path, name)
        guard let value = members[name], !value.isNull else {
            if let missing { walker.report(fieldPath, missing) }
            return nil
        }
        guard let text = Self.decimalText(value) else {
            walker.report(fieldPath, "expected a number (USD per million tokens), found \(value.kindDescription)")
            return nil
        }
        guard let price = TokenPrice(dollarsPerMtok: text) else {
            walker.report(fieldPath, "must be between 0 and \(TokenPrice.maximumDollarsPerMtok) USD per million tokens with at most \(TokenPrice.fractionDigits) digits after the point, found \(text)")
            return nil
        }
        return price
    }

    /// An amount of dollars: a JSON number, 0 … 1,000,000, at most nine digits after the point.
    mutating func readDollars(_ members: [String: ConfigJSON], _ name: String, at path: String, range: ClosedRange<Int64>? = nil) -> USDAmount? {
        let fieldPath = ConfigWalker.member(path, name)
        guard let value = members[name], !value.isNull else { return nil }
        guard let text = Self.decimalText(value) else {
            walker.report(fieldPath, "expected a number (USD), found \(value.kindDescription)")
            return nil
        }
        let bounds = range ?? (0...Self.maximumDollarAmount * USDAmount.nanosPerDollar)
        guard let amount = USDAmount(decimal: text), bounds.contains(amount.nanos) else {
            let low = USDAmount(nanos: bounds.lowerBound), high = USDAmount(nanos: bounds.upperBound)
            walker.report(fieldPath, "must be between \(low) and \(high) USD with at most \(USDAmount.fractionDigits) digits after the point, found \(text)")
            return nil
        }
        return amount
    }

    /// The exact decimal text of a JSON number: an integer as written, a fraction as the shortest
    /// text that reads back as the same double (what the file said, for any price written with
    /// up to 15 significant digits). `nil` for anything but a number.
    static func decimalText(_ value: ConfigJSON) -> String? {
        switch value {
        case .integer(let integer): String(integer)
        case .number(let number) where number.isFinite: "\(number)"
        default: nil
        }
    }
}
