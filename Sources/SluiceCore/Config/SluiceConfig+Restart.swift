extension SluiceConfig {
    /// The sections that shape running machinery (`server`, `tokenizer`, `redis`, `telemetry`) in which this
    /// config differs from `running`, the config the node started with: a reload applies
    /// everything else and reports these as needing a restart. Compared with what runs, not with
    /// the previous file, so a value set back to the running one needs nothing.
    public func sectionsNeedingRestart(running: SluiceConfig) -> [String] {
        var sections: [String] = []
        if server != running.server { sections.append("server") }
        if tokenizer != running.tokenizer { sections.append("tokenizer") }
        if log != running.log { sections.append("log") }
        if (redis == nil) != (running.redis == nil) || redis?.redactedTarget != running.redis?.redactedTarget
            || redis?.onFailure != running.redis?.onFailure || redis?.tls != running.redis?.tls {
            sections.append("redis")
        }
        if telemetry != running.telemetry { sections.append("telemetry") }
        return sections
    }
}
