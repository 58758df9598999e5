// MARK: - telemetry

/// Traces exported with OpenTelemetry (OTLP over HTTP). Without an endpoint telemetry is off: no
/// span is made and no trace context is read or written.
public struct TelemetryConfig: Sendable, Equatable {
    public static let defaultServiceName = "sluice"
    public static let defaultSamplingRatio = 1.0

    /// The OTLP/HTTP collector's base URL (`http://127.0.0.1:4318`); spans go to `<endpoint>/v1/traces`.
    /// `nil`: telemetry off.
    public var otlpEndpoint: String?
    /// Share of new traces (no sampled parent) that are recorded, 0…1. A request that carries a
    /// `traceparent` follows its parent's sampled flag.
    public var samplingRatio: Double = TelemetryConfig.defaultSamplingRatio
    /// `service.name` of the exported resource.
    public var serviceName: String = TelemetryConfig.defaultServiceName

    public init(otlpEndpoint: String? = nil, samplingRatio: Double = TelemetryConfig.defaultSamplingRatio, serviceName: String = TelemetryConfig.defaultServiceName) {
        self.otlpEndpoint = otlpEndpoint
        self.samplingRatio = samplingRatio
        self.serviceName = serviceName
    }

    /// Whether spans are made at all.
    public var isEnabled: Bool { otlpEndpoint != nil }

    /// The URL spans are posted to: the endpoint with `/v1/traces` appended (unless it ends with it).
    public var tracesURL: String? {
        guard var endpoint = otlpEndpoint else { return nil }
        if endpoint.hasSuffix("/v1/traces") { return endpoint }
        while endpoint.hasSuffix("/") { endpoint.removeLast() }
        return endpoint + "/v1/traces"
    }
}

extension ConfigDocumentReader {
    static let telemetryFields = ["otlp_endpoint", "sampling_ratio", "service_name"]

    mutating func readTelemetry(_ value: ConfigJSON, at path: String) -> TelemetryConfig {
        var telemetry = TelemetryConfig()
        guard let members = walker.object(value, at: path) else { return telemetry }
        walker.rejectUnknownFields(members, known: Self.telemetryFields, at: path)
        if let endpoint = walker.optionalString(members, "otlp_endpoint", at: path) {
            if Self.isHTTPURL(endpoint) {
                telemetry.otlpEndpoint = endpoint
            } else {
                walker.report(ConfigWalker.member(path, "otlp_endpoint"), "expected an http:// or https:// URL of an OTLP/HTTP collector (e.g. http://127.0.0.1:4318), found \"\(endpoint)\"")
            }
        }
        if let value = members["sampling_ratio"], !value.isNull {
            let fieldPath = ConfigWalker.member(path, "sampling_ratio")
            let ratio: Double?
            switch value {
            case .integer(let integer): ratio = Double(integer)
            case .number(let number): ratio = number
            default:
                walker.report(fieldPath, "expected a number between 0 and 1, found \(value.kindDescription)")
                ratio = nil
            }
            if let ratio {
                if ratio >= 0, ratio <= 1 {
                    telemetry.samplingRatio = ratio
                } else {
                    walker.report(fieldPath, "must be between 0 and 1, found \(ratio)")
                }
            }
        }
        if let name = walker.string(members, "service_name", at: path, default: TelemetryConfig.defaultServiceName) {
            telemetry.serviceName = name
        }
        return telemetry
    }

    /// `http://host[:port][/path]` or `https://…` with a non-empty host and no spaces.
    static func isHTTPURL(_ text: String) -> Bool {
        let lowered = text.lowercased()
        let rest: Substring
        if lowered.hasPrefix("http://") {
            rest = text.dropFirst("http://".count)
        } else if lowered.hasPrefix("https://") {
            rest = text.dropFirst("https://".count)
        } else {
            return false
        }
        guard !text.contains(where: { $0 == " " || $0.isNewline }), text.count <= 2048 else { return false }
        let authority = rest.prefix { $0 != "/" && $0 != "?" && $0 != "#" }
        let host = authority.hasPrefix("[") ? authority.prefix { $0 != "]" } : authority.prefix { $0 != ":" }
        return !host.isEmpty && host != "["
    }
}

extension SluiceConfig {
    /// A warning for telemetry settings that have no effect: a sampling ratio or service name
    /// without an `otlp_endpoint` (traces are off).
    func telemetryFindings() -> [ConfigFinding] {
        guard telemetry.otlpEndpoint == nil else { return [] }
        var findings: [ConfigFinding] = []
        if telemetry.samplingRatio != TelemetryConfig.defaultSamplingRatio {
            findings.append(ConfigFinding(.warning, "$.telemetry.sampling_ratio", "has no effect: traces are off without telemetry.otlp_endpoint"))
        }
        if telemetry.serviceName != TelemetryConfig.defaultServiceName {
            findings.append(ConfigFinding(.warning, "$.telemetry.service_name", "has no effect: traces are off without telemetry.otlp_endpoint"))
        }
        return findings
    }
}
