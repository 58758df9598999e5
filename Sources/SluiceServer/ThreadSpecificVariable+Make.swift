import NIOPosix

extension ThreadSpecificVariable {
    /// This thread's value, made by `make` on the thread's first use. The server's per-thread caches
    /// (token counts, metric handles, breakers, log timestamps) keep locks shared between cores off
    /// the hot path this way.
    func valueForThisThread(orMake make: () -> Value) -> Value {
        if let value = currentValue { return value }
        let value = make()
        currentValue = value
        return value
    }
}
