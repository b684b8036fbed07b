import CLRuntime
import Foundation

/// Where kernel sources come from: the copies embedded at build time, or `<name>.cl` files in
/// an override directory (for kernel development without rebuilding the Swift code).
public struct KernelSources: Sendable {
    public let overrideDirectory: URL?

    public init(overrideDirectory: URL? = nil) { self.overrideDirectory = overrideDirectory }

    public static var embeddedNames: [String] { EmbeddedKernelSources.all.keys.sorted() }

    public func source(named name: String) throws -> String {
        if let overrideDirectory {
            let url = overrideDirectory.appendingPathComponent(name + ".cl")
            if FileManager.default.fileExists(atPath: url.path) {
                do { return try String(contentsOf: url, encoding: .utf8) } catch {
                    throw KernelLibraryError.unreadableOverride(path: url.path, reason: "\(error)")
                }
            }
        }
        guard let source = EmbeddedKernelSources.all[name] else {
            throw KernelLibraryError.unknownProgram(name, available: Self.embeddedNames)
        }
        return source
    }
}

public enum KernelLibraryError: Error, CustomStringConvertible {
    case unknownProgram(String, available: [String])
    case unreadableOverride(path: String, reason: String)

    public var description: String {
        switch self {
        case .unknownProgram(let name, let available):
            "no kernel program named '\(name)'; the library has: \(available.joined(separator: ", "))"
        case .unreadableOverride(let path, let reason):
            "cannot read kernel override \(path): \(reason)"
        }
    }
}

/// Compiles each (program, options) pair at most once per process and keeps binaries in a
/// disk cache across processes. Not thread-safe: it belongs to one Engine, used from one thread.
public final class KernelLibrary {
    public let context: Context
    public let sources: KernelSources
    public let diskCache: ProgramDiskCache?

    public enum BuildOutcome: Equatable, Sendable {
        case compiled
        case diskCacheHit
        /// A cache entry existed but was unusable (the reason says why) and was rebuilt.
        case rebuiltInvalidCacheEntry(String)
    }

    public struct BuildRecord: Sendable {
        public let program: String
        public let options: String
        public let outcome: BuildOutcome
        public let seconds: Double
    }

    /// One record per program build or cache load in this process, oldest first.
    public private(set) var buildRecords: [BuildRecord] = []
    /// Problems that did not stop the build (for example an unwritable cache directory).
    public private(set) var warnings: [String] = []

    private var programs: [String: Program] = [:]
    private var kernels: [String: Kernel] = [:]

    /// Options every program is built with; per-program `-D` tunables are appended. `-w`: the
    /// compiler's warnings are for kernel developers, who get them with
    /// `SLORAGPU_KERNEL_WARNINGS=1` (or their text from clang offline); PoCL prints only their
    /// count, once per build, into every first run's output.
    static func baseOptions(environment: [String: String] = ProcessInfo.processInfo.environment) -> String {
        environment["SLORAGPU_KERNEL_WARNINGS"] == "1" ? "-cl-std=CL1.2" : "-cl-std=CL1.2 -w"
    }
    private let baseOptions = KernelLibrary.baseOptions()

    public init(context: Context, sources: KernelSources, diskCache: ProgramDiskCache?) {
        self.context = context
        self.sources = sources
        self.diskCache = diskCache
    }

    public func program(_ name: String, options: String = "") throws -> Program {
        let fullOptions = options.isEmpty ? baseOptions : baseOptions + " " + options
        let memoKey = name + "\u{0}" + fullOptions
        if let program = programs[memoKey] { return program }
        let program = try build(name: name, options: fullOptions)
        programs[memoKey] = program
        return program
    }

    public func kernel(_ kernelName: String, in programName: String, options: String = "") throws -> Kernel {
        let memoKey = programName + "\u{0}" + options + "\u{0}" + kernelName
        if let kernel = kernels[memoKey] { return kernel }
        let kernel = try Kernel(program: try program(programName, options: options), name: kernelName)
        kernels[memoKey] = kernel
        return kernel
    }

    /// Everything that changes the binary. Two processes that agree on it may share a binary.
    func cacheKey(sourceHash: String, options: String) -> String {
        let device = context.device
        return """
            sloragpu kernel cache 1
            platform: \(device.platform.name) | \(device.platform.version)
            device: \(device.info.name) | \(device.info.vendor) | \(device.info.openCLVersion)
            driver: \(device.info.driverVersion)
            source: \(sourceHash)
            options: \(options)
            """
    }

    private func build(name: String, options: String) throws -> Program {
        let started = Date()
        let source = try sources.source(named: name)
        let key = cacheKey(sourceHash: SHA256.hex(source), options: options)

        var outcome = BuildOutcome.compiled
        if let diskCache {
            switch diskCache.load(key: key) {
            case .hit(let binary):
                do {
                    let program = try Program(context: context, binary: binary)
                    try program.build(options: options)
                    record(name, options, .diskCacheHit, since: started)
                    return program
                } catch {
                    outcome = .rebuiltInvalidCacheEntry("driver rejected cached binary: \(error)")
                }
            case .invalid(let reason):
                outcome = .rebuiltInvalidCacheEntry(reason)
            case .miss:
                break
            }
        }

        let program = try Program(context: context, source: source)
        do {
            try program.build(options: options)
        } catch let error as CLError {
            throw KernelBuildError(program: name, options: options, underlying: error)
        }
        if let diskCache {
            do {
                try diskCache.store(key: key, binary: try program.binary())
            } catch {
                warnings.append("could not write kernel cache entry for \(name) in \(diskCache.directory.path): \(error)")
            }
        }
        record(name, options, outcome, since: started)
        return program
    }

    private func record(_ name: String, _ options: String, _ outcome: BuildOutcome, since started: Date) {
        buildRecords.append(BuildRecord(program: name, options: options, outcome: outcome,
                                        seconds: Date().timeIntervalSince(started)))
    }
}

/// A kernel program that failed to compile: which program, with which options, and the
/// compiler's build log.
public struct KernelBuildError: Error, CustomStringConvertible {
    public let program: String
    public let options: String
    public let underlying: CLError

    public var buildLog: String { underlying.buildLog ?? "" }

    public var description: String {
        "kernel program '\(program)' (options: \(options)) failed to build: \(underlying)"
    }
}
