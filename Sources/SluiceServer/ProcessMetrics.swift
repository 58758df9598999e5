#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Foundation

/// The standard `process_*` metrics (the names every Prometheus client library uses), read from
/// `/proc/self` at scrape time: nothing is sampled in between. Linux only; elsewhere `read()` is nil
/// and the families are absent.
struct ProcessMetrics: Equatable {
    var residentMemoryBytes: Double
    var virtualMemoryBytes: Double
    var cpuSeconds: Double
    var startTimeSeconds: Double
    var openFDs: Int
    /// The soft limit on open files; nil when unlimited.
    var maxFDs: Int?

    /// The process's figures now, or nil where `/proc` is missing or unreadable.
    static func read() -> ProcessMetrics? {
        guard let stat = try? String(contentsOfFile: "/proc/self/stat", encoding: .utf8),
              let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8),
              let systemStat = try? String(contentsOfFile: "/proc/stat", encoding: .utf8),
              let bootTime = bootTime(procStat: systemStat)
        else { return nil }
        let limits = (try? String(contentsOfFile: "/proc/self/limits", encoding: .utf8)) ?? ""
        let openFDs = ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []).count
        let ticks = Double(sysconf(Int32(_SC_CLK_TCK)))
        return parse(stat: stat, status: status, bootTime: bootTime, limits: limits, openFDs: openFDs, ticksPerSecond: ticks > 0 ? ticks : 100)
    }

    /// The figures from the files' texts (`/proc/self/stat`, `/proc/self/status`, `/proc/self/limits`).
    static func parse(stat: String, status: String, bootTime: Double, limits: String, openFDs: Int, ticksPerSecond: Double) -> ProcessMetrics? {
        // The command name (field 2) is in parentheses and may hold spaces and parentheses itself:
        // the fields after it start after the last ")". Field 3 is then index 0.
        guard let close = stat.lastIndex(of: ")") else { return nil }
        let fields = stat[stat.index(after: close)...].split(separator: " ", omittingEmptySubsequences: true)
        // utime is field 14, stime 15, starttime 22 (see proc(5)).
        func field(_ number: Int) -> Double? {
            let index = number - 3
            return index < fields.count ? Double(fields[index]) : nil
        }
        guard let utime = field(14), let stime = field(15), let startTicks = field(22) else { return nil }
        return ProcessMetrics(
            residentMemoryBytes: (statusKilobytes(status, "VmRSS") ?? 0) * 1024,
            virtualMemoryBytes: (statusKilobytes(status, "VmSize") ?? 0) * 1024,
            cpuSeconds: (utime + stime) / ticksPerSecond,
            startTimeSeconds: bootTime + startTicks / ticksPerSecond,
            openFDs: openFDs,
            maxFDs: maxOpenFiles(limits: limits)
        )
    }

    /// `btime` of `/proc/stat`: the boot time in seconds since the epoch.
    static func bootTime(procStat: String) -> Double? {
        for line in procStat.split(separator: "\n") where line.hasPrefix("btime ") {
            return Double(line.dropFirst("btime ".count).trimmingCharacters(in: .whitespaces))
        }
        return nil
    }

    /// A `Name:   1234 kB` line of `/proc/self/status`, in kB.
    static func statusKilobytes(_ status: String, _ name: String) -> Double? {
        for line in status.split(separator: "\n") where line.hasPrefix(name + ":") {
            let words = line.dropFirst(name.count + 1).split(whereSeparator: { $0 == " " || $0 == "\t" })
            return words.first.flatMap { Double($0) }
        }
        return nil
    }

    /// The soft limit of the `Max open files` line of `/proc/self/limits` (nil: unlimited or absent).
    static func maxOpenFiles(limits: String) -> Int? {
        for line in limits.split(separator: "\n") where line.hasPrefix("Max open files") {
            let words = line.dropFirst("Max open files".count).split(whereSeparator: { $0 == " " || $0 == "\t" })
            return words.first.flatMap { Int($0) }
        }
        return nil
    }

    /// The families in Prometheus' text format, HELP and TYPE lines included.
    func exposition() -> String {
        var text = ""
        func family(_ name: String, _ type: String, _ help: String, _ value: String) {
            text += "# HELP \(name) \(help)\n# TYPE \(name) \(type)\n\(name) \(value)\n"
        }
        family("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.", Self.format(cpuSeconds))
        family("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", Self.format(residentMemoryBytes))
        family("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", Self.format(virtualMemoryBytes))
        family("process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.", Self.format(startTimeSeconds))
        family("process_open_fds", "gauge", "Number of open file descriptors.", String(openFDs))
        if let maxFDs {
            family("process_max_fds", "gauge", "Maximum number of open file descriptors.", String(maxFDs))
        }
        return text
    }

    private static func format(_ value: Double) -> String {
        value == value.rounded() && abs(value) < 1e15 ? String(Int64(value)) : String(value)
    }
}
