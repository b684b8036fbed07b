import Datasets
import Foundation
import Tensors
import Formats
import Optimizers
import ViT

/// What a run saves so that a process killed at any moment resumes where it left off:
/// the trainable tensors (an adapter file), the optimizer state, and the step, data position
/// and best accuracy. Layout of a checkpoint directory:
///   adapter.safetensors   trainable tensors + head (AdapterFile format)
///   optimizer.safetensors optimizer state slabs
///   state.json            TrainingState
/// A new checkpoint is written to `NAME.tmp/` (state.json last), then swapped in by renames:
/// `NAME/` -> `NAME.old/`, `NAME.tmp/` -> `NAME/`. A directory holding state.json is complete,
/// so after a kill at any moment one of the three is; `recover` renames it back to `NAME/`
/// before anything is resumed or overwritten, so no sequence of kills loses the run.
public struct TrainingState: Codable, Sendable, Equatable {
    public var step: Int
    public var position: LoaderPosition
    public var bestAccuracy: Double?
    public var bestStep: Int?
    public var seed: UInt64

    /// Ranges that hold for any state a run writes; what depends on the run (the step count,
    /// the batches per epoch) is checked by the Trainer.
    public func validate(file: String) throws {
        func bad(_ problem: String) -> CheckpointError { CheckpointError(file: file, problem) }
        guard step >= 0 else { throw bad("step \(step) is negative") }
        guard position.epoch >= 0, position.batch >= 0 else { throw bad("data position (epoch \(position.epoch), batch \(position.batch)) is negative") }
        guard position.epoch <= TrainingOptions.maximumSteps, position.batch <= TrainingOptions.maximumSteps else {
            throw bad("data position (epoch \(position.epoch), batch \(position.batch)) is beyond any run")
        }
        if let bestStep { guard (0...step).contains(bestStep) else { throw bad("bestStep \(bestStep) is outside 0...\(step)") } }
        if let bestAccuracy { guard (0...1).contains(bestAccuracy) else { throw bad("bestAccuracy \(bestAccuracy) is outside [0, 1]") } }
    }
}

public enum TrainingCheckpoint {
    public static func save(to directory: URL, state: TrainingState, adapter: AdapterFile.Contents,
                            optimizer: SlabOptimizer) throws {
        let fileManager = FileManager.default
        let temporary = directory.appendingPathExtension("tmp"), old = directory.appendingPathExtension("old")
        // A complete NAME.tmp or NAME.old left by a kill may be the only checkpoint there is.
        try recover(directory)
        try? fileManager.removeItem(at: temporary)
        try fileManager.createDirectory(at: temporary, withIntermediateDirectories: true)
        try AdapterFile.save(adapter, to: temporary.appendingPathComponent("adapter.safetensors"))
        var slabs: [(name: String, shape: [Int], values: [Float])] = []
        for (name, tensor) in optimizer.stateTensors { slabs.append((name, tensor.shape, try tensor.download())) }
        try SafeTensorsFile.write(slabs, metadata: ["step": String(optimizer.step)], to: temporary.appendingPathComponent("optimizer.safetensors"))
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try writeAtomically(try encoder.encode(state), to: temporary.appendingPathComponent("state.json"))
        try? fileManager.removeItem(at: old)
        if fileManager.fileExists(atPath: directory.path) { try fileManager.moveItem(at: directory, to: old) }
        try fileManager.moveItem(at: temporary, to: directory)
        try? fileManager.removeItem(at: old)
    }

    static func isComplete(_ directory: URL) -> Bool {
        FileManager.default.fileExists(atPath: directory.appendingPathComponent("state.json").path)
    }

    /// When `directory` is absent after an interrupted save, renames the newest complete twin
    /// into its place: `NAME.tmp` (the checkpoint being swapped in), else `NAME.old` (the one
    /// being swapped out). Never deletes anything.
    public static func recover(_ directory: URL) throws {
        let fileManager = FileManager.default
        guard !fileManager.fileExists(atPath: directory.path) else { return }
        for candidate in [directory.appendingPathExtension("tmp"), directory.appendingPathExtension("old")] where isComplete(candidate) {
            do { try fileManager.moveItem(at: candidate, to: directory) } catch {
                throw CheckpointError(file: candidate.path, "cannot move this complete checkpoint back to \(directory.lastPathComponent): \((error as NSError).localizedDescription)")
            }
            return
        }
    }

    /// The checkpoint at `directory`, recovered first if a save was interrupted.
    public static func resolve(_ directory: URL) throws -> URL {
        try recover(directory)
        guard isComplete(directory) else {
            throw CheckpointError(file: directory.path, "no checkpoint here (expected state.json, adapter.safetensors, optimizer.safetensors)")
        }
        return directory
    }

    public static func loadState(_ directory: URL) throws -> TrainingState {
        let url = directory.appendingPathComponent("state.json")
        let state: TrainingState
        do { state = try JSONDecoder().decode(TrainingState.self, from: try Data(contentsOf: url)) } catch {
            throw CheckpointError(file: url.path, "unreadable training state: \(error)")
        }
        try state.validate(file: url.path)
        return state
    }

    public static func restoreOptimizer(_ optimizer: SlabOptimizer, from directory: URL, step: Int) throws {
        let file = try SafeTensorsFile(contentsOf: directory.appendingPathComponent("optimizer.safetensors"))
        for (name, tensor) in optimizer.stateTensors {
            guard let entry = file.entry(name), entry.shape == tensor.shape else {
                throw CheckpointError(file: file.path, tensor: name, "missing or of the wrong shape for this optimizer (\(tensor.shape))")
            }
            try tensor.upload(try file.floats(name))
        }
        optimizer.restore(step: step)
    }
}
