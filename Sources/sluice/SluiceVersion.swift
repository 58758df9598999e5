/// The version `sluice --version` prints. A constant here, in the executable's target, changed by
/// hand when a release is cut (SwiftPM has no build-time stamping, and a version read from git at
/// run time would be wrong for binaries copied out of the repository, as in the Docker image).
enum SluiceVersion {
    static let current = "0.1.0"
}
