import Datasets
import Foundation
import Tensors
import ViT

/// What a run saves so that a process killed at any moment resumes where it left off:
/// the trainable tensors (an adapter file), the optimizer state, and the step, data position
/// and best accuracy. Layout of a checkpoint directory:
///   adapter.safetensors   trainable tensors + head (AdapterFile format)
///   optimizer.safetensors optimizer state slabs
///   state.json            TrainingState
/// A new checkpoint is written to `NAME.tmp/`, then swapped in by renames, so `NAME/` is always
/// a complete checkpoint (or, between the two renames, `NAME.old/` is).
public struct TrainingState: Codable, Sendable, Equatable {
    public var step: Int
    public var position: LoaderPosition
    public var bestAccuracy: Double?
    public var bestStep: Int?
    public var seed: UInt64
}

public enum TrainingCheckpoint {
    public static func save(to directory: URL, state: TrainingState, adapter: AdapterFile.Contents,
                            optimizer: SlabOptimizer) throws {
        let fileManager = FileManager.default
        let temporary = directory.appendingPathExtension("tmp"), old = directory.appendingPathExtension("old")
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

    /// The checkpoint at `directory` (or its `.old` twin if a swap was interrupted).
    public static func resolve(_ directory: URL) throws -> URL {
        let fileManager = FileManager.default
        for candidate in [directory, directory.appendingPathExtension("old")]
        where fileManager.fileExists(atPath: candidate.appendingPathComponent("state.json").path) {
            return candidate
        }
        throw CheckpointError(file: directory.path, "no checkpoint here (expected state.json, adapter.safetensors, optimizer.safetensors)")
    }

    public static func loadState(_ directory: URL) throws -> TrainingState {
        let url = directory.appendingPathComponent("state.json")
        do { return try JSONDecoder().decode(TrainingState.self, from: try Data(contentsOf: url)) } catch {
            throw CheckpointError(file: url.path, "unreadable training state: \(error)")
        }
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
