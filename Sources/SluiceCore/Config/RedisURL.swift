import Foundation

/// Parses `redis://[[user]:password@]host[:port][/db]` (or `rediss://…` for TLS) into a
/// `RedisConfig`: one URL, one server address.
///
/// Hand-written rather than `URLComponents` so that every rejection has a precise message and a
/// password never appears in one. A `rediss://` address gets the default TLS settings here
/// (system trust roots, the URL's host as the name); the section's `redis.tls` object replaces
/// them afterwards (`ConfigDocumentReader.readRedis`).
enum RedisURL {
    struct Problem: Error {
        let message: String
    }

    static let plainScheme = "redis://"
    static let tlsScheme = "rediss://"

    static func parse(_ url: String) -> Result<RedisConfig, Problem> {
        let tls: RedisTLSConfig?
        var rest: Substring
        if url.hasPrefix(plainScheme) {
            tls = nil
            rest = url.dropFirst(plainScheme.count)
        } else if url.hasPrefix(tlsScheme) {
            tls = RedisTLSConfig()
            rest = url.dropFirst(tlsScheme.count)
        } else {
            return .failure(Problem(message: "must look like redis://[[user]:password@]host[:port][/db] (rediss:// for TLS)"))
        }
        if rest.contains("?") || rest.contains("#") {
            return .failure(Problem(message: "query parameters and fragments are not supported"))
        }

        var username: String?
        var password: Secret?
        if let at = rest.lastIndex(of: "@") {
            let credentials = rest[..<at]
            rest = rest[rest.index(after: at)...]
            // "user@" alone names an ACL user whose password comes from `password_env`.
            let colon = credentials.firstIndex(of: ":") ?? credentials.endIndex
            let user = String(credentials[..<colon])
            let rawPassword = colon == credentials.endIndex ? "" : String(credentials[credentials.index(after: colon)...])
            guard let decodedUser = user.removingPercentEncoding, let decodedPassword = rawPassword.removingPercentEncoding else {
                return .failure(Problem(message: "credentials contain an invalid percent-escape"))
            }
            username = decodedUser.isEmpty ? nil : decodedUser
            password = decodedPassword.isEmpty ? nil : Secret(decodedPassword)
        }

        var hostAndPort = rest
        var database = RedisConfig.defaultDatabase
        if let slash = rest.firstIndex(of: "/") {
            hostAndPort = rest[..<slash]
            let databaseText = rest[rest.index(after: slash)...]
            if !databaseText.isEmpty {
                guard let number = Int(databaseText), (0...1_000_000).contains(number) else {
                    return .failure(Problem(message: "database must be a non-negative integer, found \"\(databaseText)\""))
                }
                database = number
            }
        }

        var host: Substring
        var portText: Substring?
        if hostAndPort.hasPrefix("[") {
            guard let close = hostAndPort.firstIndex(of: "]") else {
                return .failure(Problem(message: "unterminated IPv6 address"))
            }
            host = hostAndPort[hostAndPort.index(after: hostAndPort.startIndex)..<close]
            let after = hostAndPort[hostAndPort.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else { return .failure(Problem(message: "unexpected text after the IPv6 address")) }
                portText = after.dropFirst()
            }
        } else if let colon = hostAndPort.firstIndex(of: ":") {
            host = hostAndPort[..<colon]
            portText = hostAndPort[hostAndPort.index(after: colon)...]
        } else {
            host = hostAndPort
        }
        guard !host.isEmpty else {
            return .failure(Problem(message: "missing host"))
        }
        var port = RedisConfig.defaultPort
        if let portText {
            guard let number = Int(portText), (1...65_535).contains(number) else {
                return .failure(Problem(message: "port must be between 1 and 65535, found \"\(portText)\""))
            }
            port = number
        }
        return .success(RedisConfig(host: String(host), port: port, database: database, username: username, password: password, tls: tls))
    }
}
