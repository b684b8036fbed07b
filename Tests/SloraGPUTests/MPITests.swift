import Cluster
import Foundation
import Formats
import Testing
@testable import Training

/// Open MPI's launcher, when this build has MPI and the machine has the launcher.
let mpirunPath: String? = Cluster.hasMPI ? ["/usr/bin/mpirun", "/usr/local/bin/mpirun"].first { FileManager.default.isExecutableFile(atPath: $0) } : nil

let mpiUnavailable = Cluster.hasMPI
    ? "no mpirun on this machine (apt-get install openmpi-bin libopenmpi-dev, or scripts/install-system-packages.sh)"
    : "this build has no MPI (built with --disable-default-traits)"

/// `mpirun` as a test runs it: root allowed, shared memory only, control on loopback; each
/// rank with one PoCL thread (2 ranks on 2 cores) and its own PoCL cache (PoCL's cache has
/// crashed under concurrent processes); `--timeout` inside and `timeout` outside, so that
/// nothing a test starts outlives it.
func runMPI(_ ranks: [[String]], environment: [String: String] = [:], limit: Int = 150) throws -> (result: CommandResult, seconds: Double) {
    let started = Date()
    let result = try runCommand(try mpiCommand(ranks, limit: limit), environment: mpiEnvironment.merging(environment) { $1 })
    return (result, Date().timeIntervalSince(started))
}

func mpiCommand(_ ranks: [[String]], limit: Int) throws -> [String] {
    let binary = try sloragpuExecutable().path
    let pocl = FileManager.default.temporaryDirectory.appendingPathComponent("sloragpu-mpi-pocl-\(ProcessInfo.processInfo.processIdentifier)").path
    // One `-np 1 ... :` part per rank (MPMD form), so that ranks may be given different arguments.
    var launch = [mpirunPath!, "--timeout", String(limit)]
    for (index, arguments) in ranks.enumerated() {
        if index > 0 { launch.append(":") }
        launch += ["-np", "1", "/bin/sh", "-c", "POCL_CACHE_DIR=\"$0/$OMPI_COMM_WORLD_RANK\" exec \"$@\"", pocl, binary] + arguments
    }
    return ["/usr/bin/timeout", "--kill-after=5", String(limit + 20)] + launch
}

let mpiEnvironment = [
    "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "OMPI_MCA_btl": "self,vader",
    "OMPI_MCA_btl_vader_single_copy_mechanism": "none", "OMPI_MCA_rmaps_base_oversubscribe": "1", "OMPI_MCA_oob_tcp_if_include": "lo",
    "PMIX_MCA_psec": "^munge", "POCL_MAX_PTHREAD_COUNT": "1", "POCL_CPU_MAX_CU_COUNT": "1",
]

func runCommand(_ command: [String], environment overrides: [String: String]) throws -> CommandResult {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: command[0])
    process.arguments = Array(command.dropFirst())
    process.environment = ProcessInfo.processInfo.environment.merging(overrides) { $1 }
    let output = Pipe(), error = Pipe()
    (process.standardOutput, process.standardError) = (output, error)
    try process.run()
    let errorData = UnsafeTransfer(Data())
    let readError = Thread { errorData.value = error.fileHandleForReading.readDataToEndOfFile() }
    readError.start()
    let outputData = output.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    while !readError.isFinished { Thread.sleep(forTimeInterval: 0.01) }
    return CommandResult(status: process.terminationStatus, signaled: process.terminationReason == .uncaughtSignal,
                         standardOutput: String(decoding: outputData, as: UTF8.self), standardError: String(decoding: errorData.value, as: UTF8.self))
}

final class UnsafeTransfer<Value>: @unchecked Sendable {
    var value: Value
    init(_ value: Value) { self.value = value }
}

/// Processes still running whose command line mentions `marker` (an output directory).
func processesMentioning(_ marker: String) -> [String] {
    let ids = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
    return ids.filter { $0.allSatisfy(\.isNumber) && Int32($0) != getpid() }.compactMap { id in
        guard let data = FileManager.default.contents(atPath: "/proc/\(id)/cmdline") else { return nil }
        let line = String(decoding: data.map { $0 == 0 ? 32 : $0 }, as: UTF8.self)
        return line.contains(marker) ? "\(id): \(line)" : nil
    }
}

/// Data-parallel training under `mpirun -np 2` against one process, as PyTorch's DDP tests do it.
@Suite("MPI: two ranks train as one process", .serialized, .enabled(if: mpirunPath != nil, Comment(rawValue: mpiUnavailable)))
struct MPITests {
    let fixtureModel = parityFixtures.appendingPathComponent("hf-vit").path

    func arguments(_ output: URL, steps: Int = 6, accumulation: Int = 1, evaluationInterval: Int = 3, checkpointInterval: Int = 1,
                   _ extra: [String] = []) -> [String] {
        ["train", "--model", fixtureModel, "--image-size", "16", "--data", "synthetic", "--batch", "8", "--accumulation", String(accumulation),
         "--steps", String(steps), "--warmup", "1", "--checkpoint-interval", String(checkpointInterval), "--eval-interval", String(evaluationInterval),
         "--output", output.path] + extra
    }

    static func stepLosses(_ output: URL) throws -> [Double] {
        try String(contentsOf: output.appendingPathComponent("metrics.jsonl"), encoding: .utf8).split(separator: "\n").compactMap { line in
            let object = try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any]
            return object?["kind"] as? String == "step" ? object?["loss"] as? Double : nil
        }
    }

    /// The largest |a - b| over the adapters' tensors (same names required).
    static func adapterDistance(_ a: URL, _ b: URL) throws -> Float {
        let left = try AdapterFile.load(a.appendingPathComponent("adapter.safetensors")).values
        let right = try AdapterFile.load(b.appendingPathComponent("adapter.safetensors")).values
        #expect(Set(left.keys) == Set(right.keys))
        return left.keys.map { name in zip(left[name]!, right[name] ?? []).map { abs($0 - $1) }.max() ?? .infinity }.max() ?? .infinity
    }

    static func summary(_ output: URL) throws -> [String: Any] {
        try JSONSerialization.jsonObject(with: Data(contentsOf: output.appendingPathComponent("summary.json"))) as? [String: Any] ?? [:]
    }

    /// Measured: losses equal to print precision and adapters within 3e-8 of the single
    /// process (the only difference is the order of the batch sum); the bound leaves 30x.
    static let adapterTolerance: Float = 1e-6

    /// With accumulation, the ranks talk over TCP on loopback (the transport between machines)
    /// instead of shared memory.
    @Test(arguments: [(1, "self,vader"), (2, "self,tcp")])
    func twoRanksMatchOneProcessStepByStep(accumulation: Int, transport: String) throws {
        let single = try makeTemporaryDirectory(), ranks = try makeTemporaryDirectory()
        let one = try runSloragpu(arguments(single, accumulation: accumulation))
        #expect(one.status == 0, "\(one.standardError)")
        #expect(!one.standardOutput.contains("ranks:") && !one.standardError.contains("MPI") && !one.standardError.contains("rank "),
                "a run without a launcher says nothing about MPI")
        let (two, _) = try runMPI(Array(repeating: arguments(ranks, accumulation: accumulation), count: 2),
                                  environment: ["OMPI_MCA_btl": transport, "OMPI_MCA_btl_tcp_if_include": "lo"])
        #expect(two.status == 0, "\(two.standardError)")
        #expect(two.standardOutput.components(separatedBy: "device:").count == 2, "only rank 0 prints:\n\(two.standardOutput)")
        #expect(two.standardOutput.contains("ranks:    2 (MPI), each computing 4 images of every batch of 8"))

        let (lossesOne, lossesTwo) = (try Self.stepLosses(single), try Self.stepLosses(ranks))
        #expect(lossesOne.count == 6 && lossesTwo.count == 6)
        for (a, b) in zip(lossesOne, lossesTwo) { #expect(abs(a - b) <= 1e-5 * abs(a), "losses \(lossesOne) against \(lossesTwo)") }
        #expect(try Self.adapterDistance(single, ranks) <= Self.adapterTolerance)
        // Every checkpoint (here every step) verified the ranks bitwise equal, or the run would have failed.
        // Evaluation: rank shards reduced over the whole test set, as in one process.
        let (summaryOne, summaryTwo) = (try Self.summary(single), try Self.summary(ranks))
        let (finalOne, finalTwo) = (summaryOne["final"] as? [String: Any], summaryTwo["final"] as? [String: Any])
        #expect(finalTwo?["count"] as? Int == 128)
        // Evaluation batches of B/N instead of B may move a logit by an ulp: one image may flip.
        #expect(abs((finalOne?["accuracy"] as? Double ?? 0) - (finalTwo?["accuracy"] as? Double ?? 1)) <= 1.0 / 128)
        #expect(abs((finalOne?["loss"] as? Double ?? 0) - (finalTwo?["loss"] as? Double ?? 1)) < 1e-5)
        // Only rank 0 wrote: the same files as one process, and nothing else.
        let files = { (url: URL) in Set(FileManager.default.subpaths(atPath: url.path) ?? []) }
        #expect(files(single) == files(ranks))
    }

    @Test func resumeAcrossWorldSizesWithAccumulation() throws {
        let reference = try makeTemporaryDirectory()
        let whole = try runSloragpu(arguments(reference, accumulation: 2))
        #expect(whole.status == 0, "\(whole.standardError)")

        // 1 -> 2: one process killed at step 4, resumed by two ranks.
        let oneToTwo = try makeTemporaryDirectory()
        let killed = try runSloragpu(arguments(oneToTwo, accumulation: 2), environment: [InjectedFault.environmentVariable: "0:4:kill"])
        #expect(killed.signaled)
        #expect(try TrainingCheckpoint.loadState(oneToTwo.appendingPathComponent("checkpoints/last")).step == 3)
        let (resumed, _) = try runMPI(Array(repeating: ["train", "--resume", oneToTwo.path], count: 2))
        #expect(resumed.status == 0, "\(resumed.standardError)")
        #expect(try Self.adapterDistance(reference, oneToTwo) <= Self.adapterTolerance)

        // 2 -> 1: rank 1 killed at step 4 (the job ends), resumed by one process.
        let twoToOne = try makeTemporaryDirectory()
        let (failed, seconds) = try runMPI(Array(repeating: arguments(twoToOne, accumulation: 2), count: 2),
                                           environment: [InjectedFault.environmentVariable: "1:4:kill"])
        #expect(failed.status != 0 && seconds < 90, "status \(failed.status) after \(seconds) s")
        #expect(try TrainingCheckpoint.loadState(twoToOne.appendingPathComponent("checkpoints/last")).step == 3)
        #expect(processesMentioning(twoToOne.path).isEmpty)
        let finished = try runSloragpu(["train", "--resume", twoToOne.path])
        #expect(finished.status == 0, "\(finished.standardError)")
        #expect(try Self.adapterDistance(reference, twoToOne) <= Self.adapterTolerance)
    }

    /// One rank fails at step 4; the job must end non-zero within seconds, say which rank and
    /// why, leave no process behind, and keep a checkpoint that loads (step 3).
    @Test(arguments: [("exit", "Exit code:"), ("throw", "rank 1: error: injected failure at step 4"),
                      ("hang", "rank 1: error: no progress for 10 s"), ("nan", "the loss became nan at step 4"),
                      ("drift", "differ between ranks: rank 1 does not match rank 0")])
    func aFailingRankEndsTheJob(fault: String, message: String) throws {
        let output = try makeTemporaryDirectory()
        // No evaluation before the fault: its first batch may compile kernels the watchdog would count.
        let (result, seconds) = try runMPI(Array(repeating: arguments(output, evaluationInterval: 0, ["--watchdog", "10"]), count: 2),
                                           environment: [InjectedFault.environmentVariable: "1:4:\(fault)"])
        #expect(result.status != 0 && seconds < 90, "status \(result.status) after \(seconds) s")
        #expect((result.standardOutput + result.standardError).contains(message), "\(result.standardError)")
        let step = try TrainingCheckpoint.loadState(output.appendingPathComponent("checkpoints/last")).step
        #expect(step == 3, "the last checkpoint is from step \(step)")
        #expect(try AdapterFile.load(output.appendingPathComponent("checkpoints/last/adapter.safetensors")).values.isEmpty == false)
        #expect(processesMentioning(output.path).isEmpty, "\(processesMentioning(output.path))")
    }

    /// SIGTERM (what a scheduler sends) to rank 1 alone: the stop rides in the step's all-reduce,
    /// so rank 0 stops after the same step and saves, and a resume in one process ends where an
    /// uninterrupted run ends.
    @Test func aSignalStopsEveryRankAtTheSameStepAndTheRunResumes() throws {
        let reference = try makeTemporaryDirectory(), output = try makeTemporaryDirectory()
        let run = { (url: URL) in self.arguments(url, steps: 300, evaluationInterval: 0, checkpointInterval: 1000) }
        let whole = try runSloragpu(run(reference))
        #expect(whole.status == 0, "\(whole.standardError)")

        let process = Process()
        let command = try mpiCommand(Array(repeating: run(output), count: 2), limit: 150)
        process.executableURL = URL(fileURLWithPath: command[0])
        process.arguments = Array(command.dropFirst())
        process.environment = ProcessInfo.processInfo.environment.merging(mpiEnvironment) { $1 }
        (process.standardOutput, process.standardError) = (FileHandle.nullDevice, FileHandle.nullDevice)
        try process.run()
        let metrics = output.appendingPathComponent("metrics.jsonl"), deadline = Date().addingTimeInterval(120)
        while Date() < deadline, ((try? String(contentsOf: metrics, encoding: .utf8)) ?? "").split(separator: "\n").count < 20 {
            Thread.sleep(forTimeInterval: 0.05)
        }
        let binary = try sloragpuExecutable().path
        let ranks = processesMentioning(output.path).filter { $0.split(separator: " ", maxSplits: 1).last?.hasPrefix(binary) == true }
            .compactMap { pid_t($0.prefix { $0.isNumber }) }
        let rankOne = ranks.filter { pid in
            let environment = FileManager.default.contents(atPath: "/proc/\(pid)/environ").map { $0.split(separator: 0).map { String(decoding: $0, as: UTF8.self) } }
            return environment?.contains("OMPI_COMM_WORLD_RANK=1") == true
        }
        #expect(ranks.count == 2 && rankOne.count == 1, "\(ranks)")
        for pid in rankOne { kill(pid, SIGTERM) }
        process.waitUntilExit()
        #expect(process.terminationStatus != 0)
        let step = try TrainingCheckpoint.loadState(output.appendingPathComponent("checkpoints/last")).step
        let logged = try Self.stepLosses(output).count
        #expect(step >= 20 && step < 300 && logged == step, "stopped at \(step), \(logged) steps logged")
        let finished = try runSloragpu(["train", "--resume", output.path])
        #expect(finished.status == 0, "\(finished.standardError)")
        #expect(try Self.adapterDistance(reference, output) <= Self.adapterTolerance)
    }

    @Test func ranksThatDisagreeOrCannotSplitTheBatchAreRefused() throws {
        let output = try makeTemporaryDirectory()
        let (mismatch, _) = try runMPI([arguments(output, ["--seed", "0"]), arguments(output, ["--seed", "1"])])
        #expect(mismatch.status != 0)
        #expect(mismatch.standardError.contains("rank 1: error: its configuration differs from rank 0's in training option seed: rank 0 has 0, rank 1 has 1"),
                "\(mismatch.standardError)")

        let (uneven, _) = try runMPI(Array(repeating: arguments(output, ["--batch", "7", "--overwrite"]), count: 2))
        #expect(uneven.status == 64 && uneven.standardError.contains("--batch 7 is the global batch and must divide by the 2 ranks"))

        // Another MPI's launcher would start N singletons of size 1, each training alone.
        let foreign = try runSloragpu(arguments(output, ["--overwrite"]), environment: ["PMI_SIZE": "2", "PMI_RANK": "0"].merging(mpiEnvironment) { $1 })
        #expect(foreign.status != 0 && foreign.standardError.contains("as one of 2 ranks, but MPI sees a job of 1"), "\(foreign.standardError)")
    }

    @Test func benchTrainReportsEveryRankAndTheAllReduce() throws {
        let (result, _) = try runMPI(Array(repeating: ["bench", "train", "--model", "vit-ti", "--patch", "8", "--image-size", "32", "--batch", "8",
                                                       "--steps", "2", "--warmup", "1"], count: 2))
        #expect(result.status == 0, "\(result.standardError)")
        for line in ["global batch 8 over 2 ranks (4 each)", "rank 0:", "rank 1:", "all-reduce (rank 0): 0.155 MB per step"] {
            #expect(result.standardOutput.contains(line), "\(result.standardOutput)")
        }
    }
}
