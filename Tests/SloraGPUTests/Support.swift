import CLRuntime
import Foundation
import Testing
@testable import Tensors

/// A fresh engine on the default device, with a kernel cache private to this test process so
/// tests neither depend on nor pollute the user's cache.
func makeEngine(kernelOverrideDirectory: URL? = nil, cacheDirectory: URL? = testCacheDirectory) throws -> Engine {
    try Engine(configuration: EngineConfiguration(kernelOverrideDirectory: kernelOverrideDirectory,
                                                  cacheDirectory: cacheDirectory))
}

let testCacheDirectory: URL? = FileManager.default.temporaryDirectory
    .appendingPathComponent("sloragpu-test-cache-\(ProcessInfo.processInfo.processIdentifier)")

func makeTemporaryDirectory(_ label: String = #function) throws -> URL {
    let sanitized = label.filter { $0.isLetter || $0.isNumber }
    let url = FileManager.default.temporaryDirectory
        .appendingPathComponent("sloragpu-\(sanitized)-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    return url
}

/// Deterministic, non-trivial values (no two neighbours equal, mixed signs and magnitudes).
func sampleValues(_ count: Int, seed: UInt64 = 1) -> [Float] {
    var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
    return (0..<count).map { _ in
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        return Float(Int64(bitPattern: state >> 11) % 2_000_001 - 1_000_000) / 1000
    }
}

struct CommandResult {
    var status: Int32
    /// The process died of a signal (a Swift trap is SIGILL or SIGTRAP), not an exit.
    var signaled = false
    var standardOutput: String
    var standardError: String
}

/// The `sloragpu` executable built beside this test bundle (`swift test` builds it because
/// the test target depends on it).
func sloragpuExecutable() throws -> URL {
    if let explicit = ProcessInfo.processInfo.environment["SLORAGPU_BIN"] {
        return URL(fileURLWithPath: explicit)
    }
    let testBinary = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
    var directory = testBinary.deletingLastPathComponent()
    // On Linux the tests run from `<build>/debug/<package>PackageTests.xctest`, a plain file;
    // on macOS from a bundle nested deeper. Walk up until a sibling `sloragpu` appears.
    for _ in 0..<4 {
        let candidate = directory.appendingPathComponent("sloragpu")
        if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
        directory.deleteLastPathComponent()
    }
    throw CocoaError(.fileNoSuchFile, userInfo: [NSLocalizedDescriptionKey: "sloragpu executable not found near \(testBinary.path); set SLORAGPU_BIN"])
}

func runSloragpu(_ arguments: [String], environment overrides: [String: String] = [:], removing removed: [String] = [],
                 in directory: URL? = nil) throws -> CommandResult {
    let process = Process()
    process.executableURL = try sloragpuExecutable()
    process.arguments = arguments
    if let directory { process.currentDirectoryURL = directory }
    var environment = ProcessInfo.processInfo.environment
    for key in removed { environment.removeValue(forKey: key) }
    environment.merge(overrides) { $1 }
    process.environment = environment
    let output = Pipe(), error = Pipe()
    process.standardOutput = output
    process.standardError = error
    try process.run()
    // Read before waiting so a chatty child never blocks on a full pipe.
    let outputData = output.fileHandleForReading.readDataToEndOfFile()
    let errorData = error.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return CommandResult(status: process.terminationStatus, signaled: process.terminationReason == .uncaughtSignal,
                         standardOutput: String(decoding: outputData, as: UTF8.self),
                         standardError: String(decoding: errorData, as: UTF8.self))
}

/// Starts `sloragpu train ARGUMENTS --output OUTPUT` and returns once two steps are in its
/// metrics (or two minutes have passed), with its standard error.
func startTrainingUntilTwoSteps(_ arguments: [String], output: URL) throws -> (Process, Pipe) {
    let process = Process()
    process.executableURL = try sloragpuExecutable()
    process.arguments = ["train"] + arguments + ["--output", output.path]
    let errorPipe = Pipe()
    process.standardError = errorPipe
    process.standardOutput = FileHandle.nullDevice
    try process.run()
    let metrics = output.appendingPathComponent("metrics.jsonl")
    let deadline = Date().addingTimeInterval(120)
    while Date() < deadline, ((try? String(contentsOf: metrics, encoding: .utf8)) ?? "").split(separator: "\n").count < 2 {
        Thread.sleep(forTimeInterval: 0.1)
    }
    return (process, errorPipe)
}

/// Deterministic values uniform in [-1, 1).
func uniformValues(_ count: Int, seed: UInt64 = 1, scale: Float = 1) -> [Float] {
    var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
    return (0..<count).map { _ in
        state ^= state << 13
        state ^= state >> 7
        state ^= state << 17
        return (Float(state >> 40) / Float(1 << 24) * 2 - 1) * scale
    }
}

/// Checks |actual - expected| <= atol + rtol |expected| everywhere; on failure reports the
/// worst element (by excess over its tolerance), its index, both values and the tolerances.
func expectClose(_ actual: [Float], _ expected: [Double], atol: Double, rtol: Double, _ what: String,
                 sourceLocation: SourceLocation = #_sourceLocation) {
    guard actual.count == expected.count else {
        Issue.record("\(what): \(actual.count) values, expected \(expected.count)", sourceLocation: sourceLocation)
        return
    }
    var worstIndex = -1
    var worstExcess = 0.0
    for i in 0..<actual.count {
        let difference = abs(Double(actual[i]) - expected[i])
        let excess = difference - (atol + rtol * abs(expected[i]))
        if excess > worstExcess || (difference.isNaN && worstIndex < 0) || !actual[i].isFinite && expected[i].isFinite {
            worstExcess = difference.isNaN ? .infinity : excess
            worstIndex = i
        }
    }
    if worstIndex >= 0 {
        let i = worstIndex
        Issue.record("""
            \(what): worst element \(i): got \(actual[i]), expected \(expected[i]) \
            (|diff| \(abs(Double(actual[i]) - expected[i])), tolerance atol \(atol) + rtol \(rtol))
            """, sourceLocation: sourceLocation)
    }
}

func expectClose(_ actual: [Float], _ expected: [Float], atol: Double, rtol: Double, _ what: String,
                 sourceLocation: SourceLocation = #_sourceLocation) {
    expectClose(actual, expected.map(Double.init), atol: atol, rtol: rtol, what, sourceLocation: sourceLocation)
}

/// ||got - want|| / ||want|| over a whole tensor (the precision tests' error measure).
func relativeError(_ got: [Float], _ want: [Float]) -> Double {
    let difference = zip(got, want).reduce(0.0) { $0 + Double($1.0 - $1.1) * Double($1.0 - $1.1) }
    return (difference / max(1e-30, want.reduce(0.0) { $0 + Double($1) * Double($1) })).squareRoot()
}
