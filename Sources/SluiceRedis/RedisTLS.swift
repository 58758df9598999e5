import Logging
import NIOCore
import NIOSSL
import SluiceCore

/// TLS towards one Redis address (`rediss://`): the `NIOSSLContext` every connection of a client
/// shares, and the name its server must prove.
///
/// The context is built once per client, when the client starts: the CA bundle, the client
/// certificate and its key are read and parsed then (a file that is not what it should be fails
/// the client's creation, with the file's path in the error), not at every reconnect.
struct RedisTLS: Sendable {
    let context: NIOSSLContext
    /// Sent as SNI and checked against the server's certificate; `nil` when the name is an IP
    /// address, which SNI cannot carry: NIOSSL then checks the certificate against the address
    /// connected to.
    private(set) var serverHostname: String?
    /// `host:port (server name)`, for error messages.
    private(set) var serverDescription: String

    /// - Parameter closeTimeoutMillis: how long closing a connection waits for the server's
    ///   `close_notify` before the socket is closed anyway.
    init(config: RedisTLSConfig, server: RedisConfig, closeTimeoutMillis: Int) throws(RedisError) {
        var configuration = TLSConfiguration.makeClientConfiguration()
        configuration.minimumTLSVersion = .tlsv12
        configuration.shutdownTimeout = .milliseconds(Int64(closeTimeoutMillis))
        configuration.certificateVerification = config.verifyCertificate ? .fullVerification : .none
        if let caFile = config.caFile {
            let authorities = try Self.certificates(in: caFile, field: "ca_file")
            configuration.trustRoots = .certificates(authorities)
        }
        if let certificateFile = config.certificateFile, let keyFile = config.keyFile {
            let chain = try Self.certificates(in: certificateFile, field: "cert_file")
            configuration.certificateChain = chain.map { .certificate($0) }
            do {
                configuration.privateKey = .privateKey(try NIOSSLPrivateKey(file: keyFile, format: .pem))
            } catch {
                throw .tlsSetupFailed("key_file \"\(keyFile)\" holds no readable unencrypted PEM private key (\(error))")
            }
        }
        do {
            context = try NIOSSLContext(configuration: configuration)
        } catch {
            // Also a key that does not belong to the certificate, or no system trust roots.
            throw .tlsSetupFailed("cannot set up TLS for \(server.host):\(server.port): \(error)")
        }
        let name = server.tlsServerName ?? server.host
        serverHostname = Self.isIPAddress(name) ? nil : name
        serverDescription = name == server.host ? "\(server.host):\(server.port)" : "\(server.host):\(server.port) (server name \(name))"
    }

    /// The same context for another server of the same deployment (a Redis Cluster's primaries):
    /// its own name to prove, unless `redis.tls.server_name` names one for all.
    func forServer(_ server: RedisConfig) -> RedisTLS {
        var copy = self
        let name = server.tlsServerName ?? server.host
        copy.serverHostname = Self.isIPAddress(name) ? nil : name
        copy.serverDescription = name == server.host ? "\(server.host):\(server.port)" : "\(server.host):\(server.port) (server name \(name))"
        return copy
    }

    /// A handler for one new connection, to be the first in its pipeline.
    func makeHandler() throws -> NIOSSLClientHandler {
        try NIOSSLClientHandler(context: context, serverHostname: serverHostname)
    }

    /// Logs what a client started with this TLS setup should warn about: no verification.
    static func warnAboutVerification(_ config: RedisTLSConfig, server: RedisConfig, logger: Logger) {
        guard !config.verifyCertificate else { return }
        logger.warning(
            "redis TLS certificate verification is off (redis.tls.verify: false): the connection is encrypted, but anyone on the path can pose as the server",
            metadata: ["redis": "\(server.redactedURL)"]
        )
    }

    private static func certificates(in file: String, field: String) throws(RedisError) -> [NIOSSLCertificate] {
        let certificates: [NIOSSLCertificate]
        do {
            certificates = try NIOSSLCertificate.fromPEMFile(file)
        } catch {
            throw .tlsSetupFailed("\(field) \"\(file)\" cannot be read as PEM certificates (\(error))")
        }
        guard !certificates.isEmpty else {
            throw .tlsSetupFailed("\(field) \"\(file)\" holds no PEM certificate")
        }
        return certificates
    }

    private static func isIPAddress(_ text: String) -> Bool {
        (try? SocketAddress(ipAddress: text, port: 0)) != nil
    }
}
