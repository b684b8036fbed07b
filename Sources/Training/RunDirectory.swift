import Foundation

public struct RunDirectoryError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// A training's output directory, held by one process at a time.
///
/// The lock is an advisory `flock` on `.lock` inside the directory, released by the kernel when
/// the process ends however it ends (kill -9 included), so it never needs cleaning up. A fresh
/// run refuses a directory that already holds a run unless asked to overwrite it; the old run's
/// files are removed only by `prepareForFreshRun()`, which the caller invokes once the new run
/// has been set up without error, so a run that fails at start-up leaves the old one intact.
public final class RunDirectory {
    public enum Mode: Sendable, Equatable {
        /// A new run; the directory must not hold another.
        case fresh
        /// A new run that replaces whatever run the directory holds.
        case overwrite
        /// Continues the run the directory holds.
        case resume
    }

    /// What a run writes there (checkpoints/ with last, best and their .tmp/.old twins).
    public static let runEntries = ["run.json", "metrics.jsonl", "checkpoints", "summary.json", "curves.svg", "adapter.safetensors", "peft"]

    public let url: URL
    public let mode: Mode
    private var descriptor: Int32

    public init(_ url: URL, mode: Mode) throws {
        self.url = url
        self.mode = mode
        let fileManager = FileManager.default
        do { try fileManager.createDirectory(at: url, withIntermediateDirectories: true) } catch {
            throw RunDirectoryError("\(url.path): cannot create the output directory: \((error as NSError).localizedDescription)")
        }
        let lockPath = url.appendingPathComponent(".lock").path
        descriptor = open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard descriptor >= 0 else {
            throw RunDirectoryError("\(lockPath): cannot open the lock file: \(String(cString: strerror(errno)))")
        }
        guard flock(descriptor, LOCK_EX | LOCK_NB) == 0 else {
            let holder = (try? String(contentsOfFile: lockPath, encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) ?? ""
            close(descriptor)
            descriptor = -1
            throw RunDirectoryError("\(url.path) is in use by another training\(holder.isEmpty ? "" : " (pid \(holder))"): wait for it to end, or choose another --output")
        }
        _ = ftruncate(descriptor, 0)
        let pid = Array("\(getpid())\n".utf8)
        _ = pid.withUnsafeBytes { pwrite(descriptor, $0.baseAddress, $0.count, 0) }

        let present = Self.runEntries.filter { fileManager.fileExists(atPath: url.appendingPathComponent($0).path) }
        switch mode {
        case .fresh where !present.isEmpty:
            throw RunDirectoryError("""
                \(url.path) already holds a run (\(present.joined(separator: ", "))): continue it with --resume \(url.path), \
                replace it with --overwrite, or choose another --output
                """)
        case .resume where !present.contains("run.json"):
            throw RunDirectoryError("\(url.path): no run.json there, so no run to resume (give the output directory of an earlier train)")
        default:
            break
        }
    }

    deinit { if descriptor >= 0 { close(descriptor) } }

    /// For `.overwrite`: removes the earlier run's files (only those `runEntries` names; anything
    /// else the user keeps there stays). Nothing to do for the other modes.
    public func prepareForFreshRun() throws {
        guard mode == .overwrite else { return }
        for entry in Self.runEntries {
            let path = url.appendingPathComponent(entry)
            guard FileManager.default.fileExists(atPath: path.path) else { continue }
            do { try FileManager.default.removeItem(at: path) } catch {
                throw RunDirectoryError("\(path.path): cannot remove the earlier run's file: \((error as NSError).localizedDescription)")
            }
        }
    }
}

/// This process's peak resident memory so far (Linux VmHWM; 0 where unknown).
public func peakResidentBytes() -> Int {
    guard let status = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return 0 }
    for line in status.split(separator: "\n") where line.hasPrefix("VmHWM:") {
        let kilobytes = line.split(whereSeparator: \.isWhitespace).compactMap { Int($0) }.first ?? 0
        return kilobytes * 1024
    }
    return 0
}
