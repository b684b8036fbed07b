import ArgumentParser
import Dispatch
import Formats
import Foundation
import Synchronization
import Training

struct SweepCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sweep",
        abstract: "Train a grid (methods x ranks x learning rates x LoRA+ ratios x seeds) scored on a validation split, never on the test set.",
        discussion: """
            Each cell is a `train` of its own (in OUTPUT/cells/NAME, with --validation-split and \
            --no-test); arguments after `--` go to every cell (e.g. -- --steps 100 --train-limit 10000). \
            A line per cell and per group (mean and sample standard deviation over the seeds) is \
            printed as the sweep goes; OUTPUT/sweep.jsonl, sweep.csv and sweep.svg (validation \
            accuracy by learning rate) are rewritten after every cell. Run the same command again \
            to continue: finished cells are kept, an interrupted one resumes from its checkpoint, and \
            cells added to the grid run. Example: sloragpu sweep --method serial --method lora:q,v \
            --lr 3e-4,1e-3,3e-3 --seed 0,1,2 -- --steps 100
            """
    )

    @Option(help: "Output directory.")
    var output = "runs/sweep"
    @Option(help: "A method: serial, lora, lora:TARGETS (e.g. lora:q,v), full or probe (repeat for several; default serial).")
    var method: [String] = []
    @Option(help: "Adapter ranks, a comma list.")
    var rank = "8"
    @Option(name: .customLong("lr"), help: "Learning rates, a comma list (the default suits adapters; full fine-tuning wants about 3e-5, the probe about 3e-2).")
    var learningRate = "3e-4,1e-3,3e-3"
    @Option(help: "LoRA+ ratios (B's rate over A's), a comma list.")
    var loraPlusRatio = "1"
    @Option(help: "Seeds, a comma list.")
    var seed = "0"
    @Option(help: "Fraction of the training set held out for validation.")
    var validationSplit = 0.1
    @Argument(parsing: .postTerminator, help: "Arguments for every cell's train (after --).")
    var trainArguments: [String] = []

    /// What a cell's train must not be given: the sweep sets them.
    static let reserved = ["--method", "--rank", "--lr", "--seed", "--lora-plus-ratio", "--targets", "--output", "--resume", "--overwrite",
                           "--validation-split", "--no-test"]

    func validate() throws {
        guard validationSplit > 0, validationSplit < 1 else { throw ValidationError("--validation-split must be in (0, 1), got \(validationSplit)") }
        for argument in trainArguments {
            if let option = Self.reserved.first(where: { argument == $0 || argument.hasPrefix($0 + "=") }) {
                throw ValidationError("\(option) after -- : the sweep sets it for every cell; give it to sweep (--method, --rank, --lr, --seed, --lora-plus-ratio) instead")
            }
        }
    }

    func grid() throws -> SweepGrid {
        func list<T>(_ text: String, _ flag: String, _ parse: (String) -> T?) throws -> [T] {
            try text.split(separator: ",").map { part in
                guard let value = parse(part.trimmingCharacters(in: .whitespaces)) else { throw ValidationError("\(flag): '\(part)' is not a valid value") }
                return value
            }
        }
        do {
            return try SweepGrid(methods: method.isEmpty ? ["serial"] : method, ranks: try list(rank, "--rank") { Int($0) },
                                 learningRates: try list(learningRate, "--lr") { Float($0) },
                                 loraPlusRatios: try list(loraPlusRatio, "--lora-plus-ratio") { Float($0) }, seeds: try list(seed, "--seed") { UInt64($0) })
        } catch let error as TrainingError { throw ValidationError(error.description) }
    }

    /// What a later run of the sweep must share with this one for its cells to be comparable.
    struct Record: Codable, Equatable {
        var trainArguments: [String]
        var validationSplit: Double
    }

    func run() throws {
        let grid = try grid()
        // A typo after -- is reported now, not as a failure of every cell.
        if let first = grid.cells.first {
            do { _ = try TrainCommand.parse(first.trainArguments + trainArguments + ["--validation-split", "\(validationSplit)", "--no-test"]) } catch {
                throw ValidationError("the arguments for every cell's train do not parse: \(TrainCommand.message(for: error))")
            }
        }
        let directory = URL(fileURLWithPath: output)
        try FileManager.default.createDirectory(at: directory.appendingPathComponent("cells"), withIntermediateDirectories: true)
        try checkRecord(Record(trainArguments: trainArguments, validationSplit: validationSplit), in: directory)
        let rowsURL = directory.appendingPathComponent("sweep.jsonl")
        // Every finished cell of the directory (its cells share their arguments, so they compare),
        // not only this grid's: a sweep extended by later commands reports as one.
        var rows = try readRows(rowsURL)
        let cells = grid.cells
        let done = cells.filter { cell in rows.contains { $0.cell == cell } }.count
        print("sweep:    \(cells.count) cells (\(done) already done) into \(directory.path); validation: \(validationSplit) of the training set")
        fflush(nil)

        let child = RunningCell()
        // Foundation starts the cell's train in a process group of its own, so a terminal's
        // Ctrl-C reaches only the sweep: it is passed on, and the train saves at the end of its
        // step (or, before training has begun, just ends).
        let sources = onStopSignals { number in
            FileHandle.standardError.write(Data("\nsweep: stopping after the running cell's current step...\n".utf8))
            child.stop(number)
        }
        defer { for source in sources { source.cancel() } }

        for cell in cells where !rows.contains(where: { $0.cell == cell }) {
            let cellDirectory = directory.appendingPathComponent("cells").appendingPathComponent(cell.name)
            let summary = cellDirectory.appendingPathComponent("summary.json")
            if !FileManager.default.fileExists(atPath: summary.path) {
                let resuming = FileManager.default.fileExists(atPath: cellDirectory.appendingPathComponent("checkpoints/last/state.json").path)
                    || FileManager.default.fileExists(atPath: cellDirectory.appendingPathComponent("checkpoints/last.tmp/state.json").path)
                    || FileManager.default.fileExists(atPath: cellDirectory.appendingPathComponent("checkpoints/last.old/state.json").path)
                let arguments = resuming ? ["train", "--resume", cellDirectory.path] + Self.invocationOptions(trainArguments)
                    : ["train"] + cell.trainArguments + trainArguments
                        + ["--validation-split", "\(validationSplit)", "--no-test", "--output", cellDirectory.path, "--overwrite"]
                print("cell:     \(cell.name)" + (resuming ? " (resuming)" : ""))
                fflush(nil)
                let status = try runCell(arguments, log: cellDirectory.appendingPathComponent("train.log"), child: child)
                let stopped = child.stopSignal.map { 128 + $0 } ?? ([130, 143].contains(status) ? status : nil)
                if let stopped {
                    FileHandle.standardError.write(Data("sweep: stopped during \(cell.name); run the same command again to continue\n".utf8))
                    throw ExitCode(stopped)
                }
                if status != 0 {
                    let log = (try? String(contentsOf: cellDirectory.appendingPathComponent("train.log"), encoding: .utf8)) ?? ""
                    let reason = log.split(separator: "\n").last { $0.hasPrefix("Error:") || $0.contains("error:") }.map(String.init) ?? "exit status \(status)"
                    // A rate that diverges is an outcome: the cell scores 0 and the sweep goes on.
                    // Anything else (a missing file, a killed process) stops the sweep and the
                    // cell runs again next time.
                    guard reason.contains("the loss became") else {
                        throw ValidationError("cell \(cell.name) failed (exit status \(status)): \(reason)\nIts output: \(cellDirectory.appendingPathComponent("train.log").path)")
                    }
                    try record(SweepRow(failed: cell, reason: reason), rows: &rows, cells: cells, directory: directory)
                    continue
                }
            }
            try record(try SweepRow.read(cell, from: cellDirectory), rows: &rows, cells: cells, directory: directory)
        }
        try writeAtomically(Data(SweepReport.csv(rows).utf8), to: directory.appendingPathComponent("sweep.csv"))
        try writeAtomically(Data(SweepReport.svg(rows).utf8), to: directory.appendingPathComponent("sweep.svg"))
        print(SweepReport.table(rows))
        print("rows:     \(rowsURL.path), \(directory.appendingPathComponent("sweep.csv").path); plot: \(directory.appendingPathComponent("sweep.svg").path)")
    }

    /// A finished cell: appended to sweep.jsonl, the CSV and plot rewritten, its line (and its
    /// group's, after the group's last seed) printed.
    private func record(_ row: SweepRow, rows: inout [SweepRow], cells: [SweepCell], directory: URL) throws {
        let cell = row.cell
        do {
            rows.append(row)
            try appendRow(row, to: directory.appendingPathComponent("sweep.jsonl"))
            try writeAtomically(Data(SweepReport.csv(rows).utf8), to: directory.appendingPathComponent("sweep.csv"))
            try writeAtomically(Data(SweepReport.svg(rows).utf8), to: directory.appendingPathComponent("sweep.svg"))
            print("done:     " + SweepReport.rowLine(row))
            // The group's last seed: its summary.
            if let group = SweepReport.groups(rows).first(where: { $0.group == cell.group }),
               group.accuracies.count >= cells.filter({ $0.group == cell.group }).count {
                print("group:    " + SweepReport.groupLine(group))
            }
            fflush(nil)
        }
    }

    /// What a resumed cell's train needs again from the cell arguments: the options of an
    /// invocation, which run.json leaves out (--device, --watchdog, --no-tune).
    static func invocationOptions(_ arguments: [String]) -> [String] {
        var kept: [String] = [], index = 0
        while index < arguments.count {
            let argument = arguments[index]
            if ["--device", "--watchdog"].contains(argument), index + 1 < arguments.count {
                kept += [argument, arguments[index + 1]]
                index += 1
            } else if argument == "--no-tune" || argument.hasPrefix("--device=") || argument.hasPrefix("--watchdog=") {
                kept.append(argument)
            }
            index += 1
        }
        return kept
    }

    /// The first run writes sweep.json; later runs must have the same cell arguments and split.
    private func checkRecord(_ record: Record, in directory: URL) throws {
        let url = directory.appendingPathComponent("sweep.json")
        if let data = FileManager.default.contents(atPath: url.path) {
            guard let saved = try? JSONDecoder().decode(Record.self, from: data) else { throw ValidationError("\(url.path) is unreadable; give another --output") }
            guard saved == record else {
                throw ValidationError("\(directory.path) holds a sweep with other cell arguments (\(saved.trainArguments.joined(separator: " ")), validation \(saved.validationSplit)); its cells would not compare with these: give another --output")
            }
            return
        }
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try writeAtomically(try encoder.encode(record), to: url)
    }

    private func readRows(_ url: URL) throws -> [SweepRow] {
        guard var text = try? String(contentsOf: url, encoding: .utf8) else { return [] }
        // A line cut short by a kill while it was appended: dropped (its cell runs again).
        if !text.isEmpty, !text.hasSuffix("\n") {
            text = text.contains("\n") ? String(text[...text.lastIndex(of: "\n")!]) : ""
            try writeAtomically(Data(text.utf8), to: url)
        }
        return try text.split(separator: "\n").enumerated().map { index, line in
            do { return try JSONDecoder().decode(SweepRow.self, from: Data(line.utf8)) } catch {
                throw ValidationError("\(url.path), line \(index + 1): not a sweep row (\(error)); remove the line to rerun that cell")
            }
        }
    }

    private func appendRow(_ row: SweepRow, to url: URL) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        if !FileManager.default.fileExists(atPath: url.path) { _ = FileManager.default.createFile(atPath: url.path, contents: nil) }
        let handle = try FileHandle(forWritingTo: url)
        defer { try? handle.close() }
        try handle.seekToEnd()
        try handle.write(contentsOf: try encoder.encode(row) + Data("\n".utf8))
        try handle.synchronize()
    }

    /// This same binary's `train`, its output appended to `log`; the exit status.
    private func runCell(_ arguments: [String], log: URL, child: RunningCell) throws -> Int32 {
        try FileManager.default.createDirectory(at: log.deletingLastPathComponent(), withIntermediateDirectories: true)
        if !FileManager.default.fileExists(atPath: log.path) { _ = FileManager.default.createFile(atPath: log.path, contents: nil) }
        let handle = try FileHandle(forWritingTo: log)
        defer { try? handle.close() }
        try handle.seekToEnd()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        process.arguments = arguments
        (process.standardOutput, process.standardError) = (handle, handle)
        guard try child.start(process) else { return 128 + (child.stopSignal ?? SIGINT) }
        process.waitUntilExit()
        child.finished()
        return process.terminationReason == .uncaughtSignal ? 128 + process.terminationStatus : process.terminationStatus
    }
}

/// The cell's train process, shared with the signal handlers that stop it.
final class RunningCell: Sendable {
    private let state = Mutex<(process: Process?, signal: Int32?)>((nil, nil))

    var stopSignal: Int32? { state.withLock { $0.signal } }

    /// false when a stop came first (the process is not started).
    func start(_ process: Process) throws -> Bool {
        try state.withLock { current in
            guard current.signal == nil else { return false }
            try process.run()
            current.process = process
            return true
        }
    }

    func finished() { state.withLock { $0.process = nil } }

    /// Passes the signal on to the running train, which saves a checkpoint and exits.
    func stop(_ signal: Int32) {
        state.withLock { current in
            current.signal = signal
            if let process = current.process, process.isRunning { kill(process.processIdentifier, signal) }
        }
    }
}
