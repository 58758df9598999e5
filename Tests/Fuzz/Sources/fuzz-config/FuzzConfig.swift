import FuzzSupport
import SluiceCore

/// `SluiceConfig.parse` (Foundation's JSON parser, then the validating walk) on arbitrary
/// documents.
///
/// Properties:
/// - it never traps: a bad document is a `ConfigError`;
/// - every reported problem has a JSON path (`$…`) and a message, and there is at least one;
/// - an accepted configuration holds what validation promises: at least one upstream, each
///   with a name, an http(s) base URL and a model; keys with valid ids, lowercase SHA-256 hex
///   hashes and known tiers; ports in range; no duplicate key ids or secret hashes.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    let document = fuzzInput(data, size)
    let config: SluiceConfig
    do {
        config = try SluiceConfig.parse(bytes: document, environment: ["MOCK_API_KEY": "sk-fuzz", "OPENAI_API_KEY": "sk-fuzz"])
    } catch {
        let problems = error.problems
        require(!problems.isEmpty, "a refusal without problems")
        for problem in problems {
            require(problem.path.hasPrefix("$") && !problem.message.isEmpty, "problem without path or message: \(problem)")
        }
        _ = error.description
        return 0
    }

    require((1...65_535).contains(config.server.port), "port \(config.server.port)")
    require(!config.upstreams.isEmpty, "accepted without upstreams")
    for upstream in config.upstreams {
        require(!upstream.name.isEmpty && !upstream.models.isEmpty, "upstream without name or models")
        let scheme = upstream.baseURL.prefix(while: { $0 != ":" }).lowercased()
        require(scheme == "http" || scheme == "https", "upstream base URL \(upstream.baseURL)")
        require(!upstream.baseURL.hasSuffix("/"), "base URL not normalised: \(upstream.baseURL)")
    }
    for key in config.keys {
        require(KeyConfig.isValidID(key.id), "key id \(key.id)")
        require(key.secretSHA256.utf8.count == 64 && key.secretSHA256.utf8.allSatisfy { (0x30...0x39).contains($0) || (0x61...0x66).contains($0) },
                "secret hash \(key.secretSHA256)")
        if let tier = key.tier { require(config.tiers[tier] != nil, "unknown tier \(tier) accepted") }
        require(key.tier != nil || key.limits != nil, "a key with neither tier nor limits")
    }
    require(Set(config.keys.map(\.id)).count == config.keys.count, "duplicate key ids accepted")
    require(Set(config.keys.map(\.secretSHA256)).count == config.keys.count, "duplicate secret hashes accepted")
    return 0
}
