import SluiceCore

/// What one worker (and, merged, the whole run) saw for one key.
struct LoadKeyTally: Sendable {
    var sent = 0
    /// 2xx answers.
    var admitted = 0
    /// 429 answers by kind (the 429 body's `error.type`, or `concurrency` when its message names
    /// concurrent requests).
    var limited: [String: Int] = [:]
    /// Other statuses, by status code.
    var errorStatuses: [Int: Int] = [:]
    /// Requests that got no complete answer (connect failure, connection closed, timeout).
    var transportErrors = 0
    var promptTokens = 0
    var completionTokens = 0
    /// Send times of admitted requests, in seconds from the start (weight 1).
    var admittedRequests = AdmissionTimeline()
    /// Send times of admitted requests weighted by their `usage` tokens (prompt + completion).
    var admittedTokens = AdmissionTimeline()
    /// Seconds from send to the end of the answer, or to its first body byte with `--stream`,
    /// of admitted requests.
    var latencies: [Double] = []
    /// The key's limits as the last answer's `x-ratelimit-limit-*` headers gave them.
    var limitRequests: Int?
    var limitTokens: Int?
    /// When the last limit header was seen (so that merging keeps the newest).
    var limitsSeenAt = -Double.infinity

    var errors: Int { transportErrors + errorStatuses.values.reduce(0, +) }

    mutating func merge(_ other: LoadKeyTally) {
        sent += other.sent
        admitted += other.admitted
        limited.merge(other.limited, uniquingKeysWith: +)
        errorStatuses.merge(other.errorStatuses, uniquingKeysWith: +)
        transportErrors += other.transportErrors
        promptTokens += other.promptTokens
        completionTokens += other.completionTokens
        admittedRequests.merge(other.admittedRequests)
        admittedTokens.merge(other.admittedTokens)
        latencies.append(contentsOf: other.latencies)
        if other.limitsSeenAt > limitsSeenAt {
            limitRequests = other.limitRequests ?? limitRequests
            limitTokens = other.limitTokens ?? limitTokens
            limitsSeenAt = other.limitsSeenAt
        }
    }
}
