// swift-tools-version:6.1
import PackageDescription

let package = Package(
    name: "Sluice",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "sluice", targets: ["sluice"]),
        .executable(name: "sluice-mock", targets: ["sluice-mock"]),
        // For the fuzz package (Tests/Fuzz), which depends on this one by path.
        .library(name: "SluiceCore", targets: ["SluiceCore"]),
        .library(name: "SluiceTokenizer", targets: ["SluiceTokenizer"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-atomics.git", from: "1.3.0"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "3.12.3"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        // Traces (OpenTelemetry): the API, and swift-otel's SDK with its OTLP/HTTP exporter only
        // (its gRPC exporter, a default trait, is left out: it would build grpc-swift and HTTP/2).
        .package(url: "https://github.com/apple/swift-distributed-tracing.git", from: "1.7.3"),
        .package(url: "https://github.com/apple/swift-service-context.git", from: "1.5.1"),
        .package(url: "https://github.com/swift-otel/swift-otel.git", from: "1.6.0", traits: ["OTLPHTTP"]),
        .package(url: "https://github.com/swift-otel/swift-w3c-trace-context.git", from: "1.0.0"),
    ],
    targets: [
        // MARK: C engines (thin shims only)
        .target(
            name: "CCurl",
            // libssl: only to read the ALPN protocol of curl's OpenSSL connection (http_version "2").
            linkerSettings: [.linkedLibrary("curl"), .linkedLibrary("ssl")]
        ),
        .systemLibrary(
            name: "CHiredis",
            pkgConfig: "hiredis",
            providers: [.apt(["libhiredis-dev"])]
        ),

        // MARK: Domain
        .target(
            name: "SluiceTokenizer",
            dependencies: [.product(name: "Crypto", package: "swift-crypto")]
        ),
        .target(
            name: "SluiceCore",
            dependencies: [
                "SluiceTokenizer",
                .product(name: "Crypto", package: "swift-crypto"),
            ]
        ),

        // MARK: Engines
        .target(
            name: "SluiceUpstream",
            dependencies: [
                "CCurl",
                "SluiceCore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),

        .target(
            name: "SluiceRedis",
            dependencies: [
                "CHiredis",
                "SluiceCore",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Crypto", package: "swift-crypto"),
                // TLS to Redis (rediss://); NIOTLS has the handshake's events.
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOTLS", package: "swift-nio"),
            ],
            resources: [.copy("Scripts")]
        ),

        // MARK: Server
        .target(
            name: "SluiceServer",
            dependencies: [
                "SluiceCore",
                "SluiceTokenizer",
                "SluiceUpstream",
                "SluiceRedis",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "UnixSignals", package: "swift-service-lifecycle"),
                .product(name: "Atomics", package: "swift-atomics"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "ServiceContextModule", package: "swift-service-context"),
                .product(name: "OTel", package: "swift-otel"),
                .product(name: "W3CTraceContext", package: "swift-w3c-trace-context"),
            ]
        ),

        // MARK: Executables
        .executableTarget(
            name: "sluice",
            dependencies: [
                "SluiceServer",
                "SluiceCore",
                "SluiceRedis",
                "SluiceTokenizer",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                // `sluice load`'s HTTP client.
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
        .executableTarget(
            name: "sluice-mock",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),

        // MARK: Tests (one target per module; e2e lives in Tests/e2e as pytest)
        .testTarget(name: "SluiceTokenizerTests", dependencies: ["SluiceTokenizer"], exclude: ["Fixtures"]),
        .testTarget(name: "SluiceCoreTests", dependencies: ["SluiceCore"], exclude: ["Fixtures"]),
        .testTarget(
            name: "SluiceUpstreamTests",
            dependencies: [
                "SluiceUpstream",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
        .testTarget(name: "SluiceRedisTests", dependencies: ["SluiceRedis", "SluiceCore"]),
        .testTarget(
            name: "SluiceServerTests",
            dependencies: [
                "SluiceServer",
                "SluiceCore",
                "SluiceTokenizer",
                "SluiceUpstream",
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
                .product(name: "Tracing", package: "swift-distributed-tracing"),
                .product(name: "InMemoryTracing", package: "swift-distributed-tracing"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
