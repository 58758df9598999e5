// swift-tools-version:6.0
import Foundation
import PackageDescription

// libFuzzer targets for every parser that reads untrusted bytes. Built and run by `scripts/fuzz`
// (and briefly by `scripts/test`) with `-sanitize=fuzzer,address`; see the README's "Fuzzing".
// A package of its own so that the main package's build and `swift test` do not see it.

// A path dependency's identity is its directory's name, which depends on where the repository
// was cloned: derive it instead of spelling it.
let sluice = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
    .deletingLastPathComponent().deletingLastPathComponent().lastPathComponent.lowercased()

/// One executable per fuzz target: `fuzz-<name>` in `Sources/fuzz-<name>`.
func fuzzTarget(_ name: String, _ products: [String]) -> Target {
    .executableTarget(
        name: "fuzz-\(name)",
        dependencies: ["FuzzSupport"] + products.map { .product(name: $0, package: sluice) }
    )
}

let package = Package(
    name: "SluiceFuzz",
    platforms: [.macOS(.v15)],
    dependencies: [.package(path: "../..")],
    targets: [
        .target(name: "CLibFuzzer"),
        .target(name: "FuzzSupport", dependencies: ["CLibFuzzer", .product(name: "SluiceCore", package: sluice)]),
        fuzzTarget("json", ["SluiceCore"]),
        fuzzTarget("request", ["SluiceCore", "SluiceTokenizer"]),
        fuzzTarget("sse-relay", ["SluiceCore"]),
        fuzzTarget("usage", ["SluiceCore"]),
        fuzzTarget("image-header", ["SluiceCore", "SluiceTokenizer"]),
        fuzzTarget("chat-prompt", ["SluiceCore", "SluiceTokenizer"]),
        fuzzTarget("config", ["SluiceCore"]),
    ],
    swiftLanguageModes: [.v6]
)
