import Datasets
import Foundation
import Synchronization
import Tensors
import Formats
import Optimizers
import ViT

public struct TrainingOptions: Codable, Sendable, Equatable {
    public enum OptimizerKind: String, Codable, Sendable { case adamw, sgd }

    public var optimizer: OptimizerKind = .adamw
    public var learningRate: Float = 1e-3
    public var weightDecay: Float = 0.01
    public var momentum: Float = 0.9
    /// LoRA+: learning rate of every B over that of every A.
    public var loraPlusRatio: Float = 1
    public var batchSize: Int = 32
    /// Optimizer steps.
    public var steps: Int = 300
    public var warmupSteps: Int = 30
    /// Micro-batches per optimizer step (gradient accumulation).
    public var accumulation: Int = 1
    /// Global-norm gradient clipping (nil: off).
    public var maxGradientNorm: Float? = 1
    /// Evaluate every this many steps (0: only at the end).
    public var evaluationInterval: Int = 0
    /// Save the last checkpoint every this many steps (0: only at evaluations and the end).
    public var checkpointInterval: Int = 50
    public var labelSmoothing: Float = 0
    public var seed: UInt64 = 0
    public var shuffle = true
    public var augment = true

    public init() {}

    public func validate() throws {
        func bad(_ text: String) -> TrainingError { .invalidOptions(text) }
        // Written so that NaN fails every check: a comparison with NaN is false.
        guard learningRate > 0, learningRate.isFinite else { throw bad("learning rate must be positive and finite, got \(learningRate)") }
        guard batchSize > 0 else { throw bad("batch size must be positive, got \(batchSize)") }
        guard steps > 0, steps <= Self.maximumSteps else { throw bad("steps must be in 1...\(Self.maximumSteps), got \(steps)") }
        guard warmupSteps >= 0, warmupSteps < steps else { throw bad("warm-up (\(warmupSteps)) must be below the number of steps (\(steps))") }
        guard accumulation > 0 else { throw bad("gradient accumulation must be at least 1") }
        guard loraPlusRatio > 0, loraPlusRatio.isFinite else { throw bad("LoRA+ ratio must be positive and finite, got \(loraPlusRatio)") }
        guard weightDecay >= 0, weightDecay.isFinite else { throw bad("weight decay must be finite and not negative, got \(weightDecay)") }
        guard momentum >= 0, momentum < 1 else { throw bad("momentum must be in [0, 1), got \(momentum)") }
        guard (0..<1).contains(labelSmoothing) else { throw bad("label smoothing must be in [0, 1), got \(labelSmoothing)") }
        if let maxGradientNorm {
            guard maxGradientNorm > 0, maxGradientNorm.isFinite else { throw bad("max gradient norm must be positive and finite, got \(maxGradientNorm)") }
        }
        guard evaluationInterval >= 0, checkpointInterval >= 0 else {
            throw bad("evaluation and checkpoint intervals must not be negative, got \(evaluationInterval) and \(checkpointInterval)")
        }
    }

    /// More optimizer steps than this is a typo (a billion ViT-S steps is 800 years here).
    public static let maximumSteps = 1_000_000_000
}

public enum TrainingError: Error, CustomStringConvertible, Equatable {
    case invalidOptions(String)
    /// `firstUpdate`: no update had been applied in this process yet, so the weights as loaded
    /// (or the data), not the learning rate, made the loss non-finite.
    case nonFiniteLoss(step: Int, loss: Float, checkpoint: String?, firstUpdate: Bool)
    /// `output`: the run's directory, which `train --resume` takes.
    case interrupted(step: Int, checkpoint: String, output: String)

    public var description: String {
        switch self {
        case .invalidOptions(let text): "invalid training options: \(text)"
        case .nonFiniteLoss(let step, let loss, let checkpoint, let firstUpdate):
            "the loss became \(loss) at step \(step); stopped without updating. "
                + (checkpoint.map { "The last good checkpoint is \($0)." } ?? "No checkpoint was written yet.")
                + (firstUpdate
                    ? " No update had been applied yet, so the learning rate is not the cause: the weights, the adapter or the images give non-finite values."
                    : " Try a lower learning rate.")
        case .interrupted(let step, let checkpoint, let output):
            "interrupted after step \(step); saved \(checkpoint). Resume with --resume \(output)"
        }
    }
}

public enum TrainingEvent {
    case step(step: Int, total: Int, epoch: Int, loss: Float, learningRate: Float, imagesPerSecond: Double)
    /// During an evaluation at `step`: `batch` of `total` batches done.
    case evaluationProgress(step: Int, batch: Int, total: Int)
    case evaluation(step: Int, result: EvaluationResult)
    case checkpoint(step: Int, path: String)
}

public struct TrainingSummary: Codable, Sendable {
    public var steps: Int
    public var method: String
    public var trainableParameters: Int
    public var adapterParameters: Int
    public var final: EvaluationResult?
    public var bestAccuracy: Double?
    public var bestStep: Int?
    public var seconds: Double
    public var adapterPath: String
    /// What else a reader needs to reproduce or use the run.
    public var options: TrainingOptions
    public var classNames: [String]
    public var baseFingerprint: String?
    public var version: String
}

/// Runs fine-tuning: batches from `train`, AdamW or SGD over the trainable slab with warm-up +
/// cosine, clipping and accumulation; evaluation on `test` every `evaluationInterval` steps and
/// at the end; last and best checkpoints; resume; a clean stop on request.
/// Output directory layout: metrics.jsonl, checkpoints/last, checkpoints/best,
/// adapter.safetensors (final), summary.json, curves.svg.
public final class Trainer {
    public let model: ViTModel
    public let options: TrainingOptions
    public let output: URL
    public let classNames: [String]
    public let optimizer: SlabOptimizer
    let trainLoader: BatchLoader
    let makeTestLoader: () throws -> BatchLoader
    var state: TrainingState
    private let stopRequested = Atomic<Bool>(false)
    private var metrics: FileHandle?

    public var lastCheckpoint: URL { output.appendingPathComponent("checkpoints/last") }
    public var bestCheckpoint: URL { output.appendingPathComponent("checkpoints/best") }

    /// `resume`: a checkpoint directory (checkpoints/last of an earlier run) to continue from.
    public init(model: ViTModel, train: ImageDataset, test: ImageDataset, options: TrainingOptions, output: URL,
                classNames: [String], resume: URL? = nil) throws {
        try options.validate()
        self.model = model
        self.options = options
        self.output = output
        self.classNames = classNames
        let parameters = model.parameters
        switch options.optimizer {
        case .adamw:
            optimizer = try AdamW(parameters: parameters, settings: AdamWSettings(learningRate: options.learningRate, weightDecay: options.weightDecay),
                                  loraPlusRatio: options.loraPlusRatio, maxGradientNorm: options.maxGradientNorm)
        case .sgd:
            optimizer = try SGD(parameters: parameters, learningRate: options.learningRate, momentum: options.momentum,
                                weightDecay: options.weightDecay, loraPlusRatio: options.loraPlusRatio, maxGradientNorm: options.maxGradientNorm)
        }
        state = TrainingState(step: 0, position: LoaderPosition(), bestAccuracy: nil, bestStep: nil, seed: options.seed)
        if let resume {
            let directory = try TrainingCheckpoint.resolve(resume)
            state = try TrainingCheckpoint.loadState(directory)
            let adapter = try AdapterFile.load(directory.appendingPathComponent("adapter.safetensors"))
            guard adapter.method == model.method, adapter.config == model.config else {
                throw CheckpointError(file: directory.path, "was written for \(adapter.method) on another configuration than this run's \(model.method)")
            }
            if let fingerprint = model.baseFingerprint { try adapter.checkBase(fingerprint, path: directory.path) }
            for name in parameters.trainableNames {
                guard let values = adapter.values[name] else { throw CheckpointError(file: directory.path, tensor: name, "missing from the checkpoint") }
                try parameters.tensor(name).upload(values)
            }
            try TrainingCheckpoint.restoreOptimizer(optimizer, from: directory, step: state.step)
        }
        let preprocessor = Preprocessor(outputSize: model.config.imageSize, mean: model.config.mean, std: model.config.std)
        trainLoader = try BatchLoader(dataset: train, preprocessor: preprocessor, batchSize: options.batchSize, shuffle: options.shuffle,
                                      augment: options.augment, seed: options.seed, repeats: true, position: state.position)
        if resume != nil {
            let file = output.appendingPathComponent("checkpoints/last/state.json").path
            guard state.step <= options.steps else {
                throw CheckpointError(file: file, "step \(state.step) is past this run's \(options.steps) steps")
            }
            // Every micro-batch moves the position by one batch, so no more epochs can have
            // passed than micro-batches were taken.
            guard state.position.epoch <= state.step * options.accumulation else {
                throw CheckpointError(file: file, "data position epoch \(state.position.epoch) is more than \(state.step) steps of \(options.accumulation) batches can reach")
            }
            guard state.position.batch < trainLoader.batchesPerEpoch else {
                throw CheckpointError(file: file, "data position batch \(state.position.batch) is past the \(trainLoader.batchesPerEpoch) batches of an epoch")
            }
        }
        let batchSize = options.batchSize
        makeTestLoader = {
            try BatchLoader(dataset: test, preprocessor: preprocessor, batchSize: batchSize, shuffle: false, augment: false, seed: 0, repeats: false)
        }
    }

    /// Ask the run to stop after the current step (safe to call from a signal handler's queue).
    public func requestStop() { stopRequested.store(true, ordering: .relaxed) }

    public var schedule: LearningRateSchedule {
        LearningRateSchedule(base: options.learningRate, warmup: options.warmupSteps, total: options.steps)
    }

    public func run(_ report: (TrainingEvent) -> Void = { _ in }) throws -> TrainingSummary {
        let started = Date()
        try FileManager.default.createDirectory(at: output, withIntermediateDirectories: true)
        let metricsURL = output.appendingPathComponent("metrics.jsonl")
        if !FileManager.default.fileExists(atPath: metricsURL.path) { _ = FileManager.default.createFile(atPath: metricsURL.path, contents: nil) }
        metrics = try FileHandle(forWritingTo: metricsURL)
        try metrics?.seekToEnd()
        defer { try? metrics?.close() }

        let firstStep = state.step
        while state.step < options.steps {
            let stepStarted = Date()
            let (loss, images) = try accumulateGradients()
            let step = state.step + 1
            guard loss.isFinite else {
                // Nothing of this step reached the parameters; the last checkpoint on disk is good.
                let saved = FileManager.default.fileExists(atPath: lastCheckpoint.path) ? lastCheckpoint.path : nil
                throw TrainingError.nonFiniteLoss(step: step, loss: loss, checkpoint: saved, firstUpdate: state.step == firstStep)
            }
            let rate = schedule.rate(step: step)
            try optimizer.update(learningRate: rate)
            state.step = step
            state.position = trainLoader.position
            let imagesPerSecond = Double(images) / Date().timeIntervalSince(stepStarted)
            report(.step(step: step, total: options.steps, epoch: trainLoader.position.epoch, loss: loss, learningRate: rate, imagesPerSecond: imagesPerSecond))
            writeMetrics(["kind": "step", "step": step, "loss": Double(loss), "learning_rate": Double(rate), "images_per_second": imagesPerSecond,
                          "epoch": trainLoader.position.epoch])
            try afterStep(step, report)
        }
        return try finish(started: started, metricsURL: metricsURL, report)
    }

    /// One optimizer step's gradients: `accumulation` micro-batches forward and backward, the
    /// mean loss and the number of images.
    private func accumulateGradients() throws -> (loss: Float, images: Int) {
        let engine = model.engine, size = model.config.imageSize
        try model.parameters.zeroGradients()
        var lossSum: Float = 0
        var images = 0
        for _ in 0..<options.accumulation {
            guard let batch = trainLoader.next() else { break }
            let imageTensor = try engine.tensor(batch.images, shape: [batch.count, 3, size, size])
            let labels = try engine.tensor(batch.labels, shape: [batch.count])
            _ = try model.forward(imageTensor)
            let (loss, dLogits) = try model.loss(labels: labels, smoothing: options.labelSmoothing)
            if options.accumulation > 1 { try engine.scale(dLogits, by: 1 / Float(options.accumulation), into: dLogits) }
            try model.backward(dLogits)
            lossSum += try loss.download()[0]
            images += batch.count
        }
        // A repeating loader always has a batch (checked at init); a step without images
        // would "train" on nothing with loss 0.
        guard images > 0 else { throw TrainingError.invalidOptions("the training data gave no batch at step \(state.step + 1)") }
        return (lossSum / Float(options.accumulation), images)
    }

    /// Evaluation and the best checkpoint at their interval, the last checkpoint at its
    /// interval, and a requested stop (which saves first).
    private func afterStep(_ step: Int, _ report: (TrainingEvent) -> Void) throws {
        var saveNow = options.checkpointInterval > 0 && step % options.checkpointInterval == 0
        if options.evaluationInterval > 0, step % options.evaluationInterval == 0, step < options.steps {
            let result = try evaluate(step: step, report)
            saveNow = true
            try keepIfBest(result, step: step, report)
        }
        if stopRequested.load(ordering: .relaxed) {
            try save(to: lastCheckpoint, step: step, report)
            throw TrainingError.interrupted(step: step, checkpoint: lastCheckpoint.path, output: output.path)
        }
        if saveNow { try save(to: lastCheckpoint, step: step, report) }
    }

    private func keepIfBest(_ result: EvaluationResult, step: Int, _ report: (TrainingEvent) -> Void) throws {
        guard result.accuracy > (state.bestAccuracy ?? -1) else { return }
        state.bestAccuracy = result.accuracy
        state.bestStep = step
        try save(to: bestCheckpoint, step: step, report)
    }

    /// The final evaluation, checkpoints, adapter, summary.json and curves.svg.
    private func finish(started: Date, metricsURL: URL, _ report: (TrainingEvent) -> Void) throws -> TrainingSummary {
        let final = try evaluate(step: state.step, report)
        try keepIfBest(final, step: state.step, report)
        try save(to: lastCheckpoint, step: state.step, report)
        let adapterPath = output.appendingPathComponent("adapter.safetensors")
        try AdapterFile.save(try adapterContents(), to: adapterPath)
        let summary = TrainingSummary(steps: state.step, method: model.method.description, trainableParameters: model.parameters.trainableCount,
                                      adapterParameters: ParameterTable.adapterParameterCount(model.config, model.method), final: final,
                                      bestAccuracy: state.bestAccuracy, bestStep: state.bestStep,
                                      seconds: Date().timeIntervalSince(started), adapterPath: adapterPath.path,
                                      options: options, classNames: classNames, baseFingerprint: model.baseFingerprint, version: SloraGPU.version)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try writeAtomically(try encoder.encode(summary), to: output.appendingPathComponent("summary.json"))
        try writeAtomically(Data(try CurvePlot.svg(metricsURL: metricsURL).utf8), to: output.appendingPathComponent("curves.svg"))
        return summary
    }

    func evaluate(step: Int, _ report: (TrainingEvent) -> Void) throws -> EvaluationResult {
        let result = try Evaluator.evaluate(model, try makeTestLoader()) { report(.evaluationProgress(step: step, batch: $0, total: $1)) }.result
        report(.evaluation(step: step, result: result))
        writeMetrics(["kind": "evaluation", "step": step, "accuracy": result.accuracy, "loss": result.loss, "count": result.count])
        return result
    }

    /// The trainable tensors and head as an adapter (the whole model for a full fine-tune).
    public func adapterContents() throws -> AdapterFile.Contents {
        let parameters = model.parameters
        let names = model.method == .full ? parameters.specs.map(\.name) : parameters.trainableNames
        return AdapterFile.Contents(method: model.method, config: model.config, classNames: classNames, values: try parameters.download(names),
                                    baseFingerprint: model.baseFingerprint)
    }

    func save(to directory: URL, step: Int, _ report: (TrainingEvent) -> Void) throws {
        try TrainingCheckpoint.save(to: directory, state: state, adapter: try adapterContents(), optimizer: optimizer)
        report(.checkpoint(step: step, path: directory.path))
    }

    private func writeMetrics(_ object: [String: Any]) {
        guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else { return }
        metrics?.write(data + Data("\n".utf8))
    }
}
