import Cluster
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

    /// The peak learning rate a method trains at unless told otherwise (docs/RESULTS.md): from
    /// the learning-rate sweep of issue 17, one shared pair per block (Serial LoRA) wants 3x
    /// LoRA's rate; full fine-tuning at 1e-3 moves 21 M weights far too hard (0.53 against 0.86
    /// at 3e-5 on the default job); a linear head on frozen features wants far more than the
    /// adapters (the probe's sweep peaked at 3e-2; 0.797 against 0.732 at 1e-3 on the default job).
    /// LoRA's rate depends on how many projections it adapts: over q,k,v,o 1e-3 won validation
    /// (0.820 against 0.807 at 3e-3), over q,v alone 3e-3 did (0.811 against 0.783 at 1e-3; on
    /// the test set 0.8716 +- 0.0011 over three seeds, the study's best row). Fewer adapted
    /// projections move the function less per step, so up to two targets take the larger rate.
    public static func defaultLearningRate(for method: FineTuningMethod) -> Float {
        switch method {
        case .serial: 3e-3
        case .lora(_, _, let targets): targets.count <= 2 ? 3e-3 : 1e-3
        case .probe: 3e-2
        case .full: 3e-5
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

/// Which held-out set an evaluation scores: the validation part of the training set (which
/// periodic evaluations and the best checkpoint use when there is one) or the test set (the
/// final number).
public enum EvaluationSplit: String, Codable, Sendable {
    case validation, test
}

public enum TrainingEvent {
    case step(step: Int, total: Int, epoch: Int, loss: Float, learningRate: Float, imagesPerSecond: Double)
    /// During an evaluation at `step`: `batch` of `total` batches done.
    case evaluationProgress(step: Int, batch: Int, total: Int)
    case evaluation(step: Int, split: EvaluationSplit, result: EvaluationResult)
    case checkpoint(step: Int, path: String)
}

public struct TrainingSummary: Codable, Sendable {
    public var steps: Int
    public var method: String
    public var trainableParameters: Int
    public var adapterParameters: Int
    /// On the test set (nil when the run had none).
    public var final: EvaluationResult?
    /// On the validation split at the end (nil without one).
    public var validation: EvaluationResult?
    /// Best and its step: on the validation split when there is one, else on the test set.
    public var bestAccuracy: Double?
    public var bestStep: Int?
    public var seconds: Double
    /// The process's peak resident memory at the end (bytes; nil where unknown).
    public var peakResidentBytes: Int?
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
///
/// Data-parallel over a `communicator` of N ranks (one per device), the run is the
/// single-process run with the same global batch: every rank draws the same global batches
/// and computes its contiguous 1/N of each, one all-reduce per optimizer step sums the
/// trainable gradients (with the loss and a stop flag in the same buffer) in rank order, so
/// clipping and the update are bitwise the same everywhere; evaluation is sharded and
/// reduced; rank 0 alone writes files, and every checkpoint first verifies that all ranks
/// hold the same parameters and optimizer state.
public final class Trainer {
    public let model: ViTModel
    public let options: TrainingOptions
    public let output: URL
    public let classNames: [String]
    public let optimizer: SlabOptimizer
    let trainLoader: BatchLoader
    /// The held-out sets, validation first: (split, name, a fresh loader of this rank's shard).
    let evaluationSets: [(split: EvaluationSplit, name: String, loader: () throws -> BatchLoader)]
    var state: TrainingState
    private let stopRequested = Atomic<Bool>(false)
    /// With several ranks: set when a step's all-reduce carried a stop request from any rank.
    private var stopAgreed = false
    private var metrics: FileHandle?
    public let communicator: Communicator
    /// Told of every micro-batch, evaluation batch and checkpoint, when set.
    public var watchdog: Watchdog?
    private let fault: (rank: Int, step: Int, fault: InjectedFault)?
    /// The last all-reduce's time in seconds (nil in one process).
    public private(set) var lastReductionSeconds: Double?

    public var lastCheckpoint: URL { output.appendingPathComponent("checkpoints/last") }
    public var bestCheckpoint: URL { output.appendingPathComponent("checkpoints/best") }

    /// `resume`: a checkpoint directory (checkpoints/last of an earlier run) to continue from;
    /// with several ranks only rank 0 reads it and broadcasts what it holds.
    /// `options.batchSize` is the global batch: it must divide by the number of ranks.
    /// `validation`, when given, is what periodic evaluations and the best checkpoint use; the
    /// test set (if any) is scored only at the end.
    public init(model: ViTModel, train: ImageDataset, validation: ImageDataset? = nil, test: ImageDataset?, options: TrainingOptions, output: URL,
                classNames: [String], resume: URL? = nil, communicator: Communicator = SingleProcess()) throws {
        try options.validate()
        guard options.batchSize % communicator.size == 0 else {
            throw TrainingError.invalidOptions("the batch of \(options.batchSize) images (the global batch) does not divide into \(communicator.size) ranks; give a multiple of \(communicator.size)")
        }
        self.model = model
        self.options = options
        self.output = output
        self.classNames = classNames
        self.communicator = communicator
        fault = try InjectedFault.planned()
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
        if communicator.isDistributed {
            try communicator.checkSameConfiguration(Self.configurationFields(model, train: train, validation: validation, test: test, options: options,
                                                                             resuming: resume != nil))
        }
        if let resume, communicator.isRoot {
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
        if communicator.isDistributed { state = try Self.rootState(state, communicator, parameters, optimizer) }
        let preprocessor = Preprocessor(outputSize: model.config.imageSize, mean: model.config.mean, std: model.config.std)
        trainLoader = try BatchLoader(dataset: train, preprocessor: preprocessor, batchSize: options.batchSize, shuffle: options.shuffle,
                                      augment: options.augment, seed: options.seed, repeats: true, position: state.position,
                                      part: (communicator.rank, communicator.size))
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
        // Each rank evaluates its contiguous shard of a held-out set in batches of its share.
        let batchSize = options.batchSize / communicator.size
        evaluationSets = [(EvaluationSplit.validation, validation), (.test, test)].compactMap { split, set in
            guard let set else { return nil }
            let shard = set.shard(communicator.rank, of: communicator.size)
            return (split, set.name, {
                try BatchLoader(dataset: shard, preprocessor: preprocessor, batchSize: batchSize, shuffle: false, augment: false, seed: 0, repeats: false)
            })
        }
    }

    /// The set periodic evaluations and "best" use: validation if there is one, else test.
    var selectionSplit: EvaluationSplit? { evaluationSets.first?.split }

    /// What every rank must agree on before training together, as (field, value) text.
    static func configurationFields(_ model: ViTModel, train: ImageDataset, validation: ImageDataset?, test: ImageDataset?, options: TrainingOptions,
                                    resuming: Bool) throws -> [(name: String, value: String)] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        func json<Value: Encodable>(_ value: Value) throws -> String { String(decoding: try encoder.encode(value), as: UTF8.self) }
        func data(_ set: ImageDataset?) -> String {
            guard let set else { return "none" }
            var hash = checksumSeed
            checksum(bytes: set.pixels, into: &hash)
            checksum(bytes: set.labels.flatMap { withUnsafeBytes(of: $0.littleEndian, Array.init) }, into: &hash)
            return "\(set.name): \(set.count) images \(set.height)x\(set.width)x\(set.channels), classes \(set.classNames.joined(separator: ",")), content \(String(hash, radix: 16))"
        }
        // One field per training option, so that a mismatch names the option (seed, batchSize, ...).
        let optionFields = (try JSONSerialization.jsonObject(with: try encoder.encode(options)) as? [String: Any] ?? [:])
            .sorted { $0.key < $1.key }
            .map { (name: "training option \($0.key)", value: "\($0.value)") }
        return [("version", SloraGPU.version), ("model", try json(model.config)), ("base weights", model.baseFingerprint ?? "none (random)"),
                ("method", model.method.description), ("weight storage", "\(model.parameters.weightStorage)"),
                ("activation plan", model.activationMemory.rawValue)]
            + optionFields + [("resuming", "\(resuming)"), ("training data", data(train)), ("validation data", data(validation)), ("test data", data(test))]
    }

    /// Rank 0's data position, step, trainable tensors and optimizer state on every rank.
    private static func rootState(_ state: TrainingState, _ communicator: Communicator, _ parameters: ViTParameters,
                                  _ optimizer: SlabOptimizer) throws -> TrainingState {
        let rootState = try communicator.broadcast(state)
        for tensor in [parameters.slab] + optimizer.stateTensors.map(\.tensor) {
            var values = try tensor.download()
            try communicator.broadcast(&values)
            try tensor.upload(values)
        }
        optimizer.restore(step: rootState.step)
        return rootState
    }

    /// Ask the run to stop after the current step (safe to call from a signal handler's queue).
    public func requestStop() { stopRequested.store(true, ordering: .relaxed) }

    public var schedule: LearningRateSchedule {
        LearningRateSchedule(base: options.learningRate, warmup: options.warmupSteps, total: options.steps)
    }

    public func run(_ report: (TrainingEvent) -> Void = { _ in }) throws -> TrainingSummary {
        let started = Date()
        let metricsURL = output.appendingPathComponent("metrics.jsonl")
        if communicator.isRoot {
            try FileManager.default.createDirectory(at: output, withIntermediateDirectories: true)
            if !FileManager.default.fileExists(atPath: metricsURL.path) { _ = FileManager.default.createFile(atPath: metricsURL.path, contents: nil) }
            metrics = try FileHandle(forWritingTo: metricsURL)
            try metrics?.seekToEnd()
        }
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
            var record: [String: Any] = ["kind": "step", "step": step, "loss": Double(loss), "learning_rate": Double(rate),
                                         "images_per_second": imagesPerSecond, "epoch": trainLoader.position.epoch]
            if let lastReductionSeconds { record["all_reduce_seconds"] = lastReductionSeconds }
            writeMetrics(record)
            try afterStep(step, report)
        }
        return try finish(started: started, metricsURL: metricsURL, report)
    }

    /// One optimizer step's gradients: `accumulation` micro-batches forward and backward (of
    /// this rank's share of each global batch), summed over the ranks; the mean loss and the
    /// number of images of the whole step.
    private func accumulateGradients() throws -> (loss: Float, images: Int) {
        let engine = model.engine, size = model.config.imageSize, step = state.step + 1
        if let fault, fault.rank == communicator.rank, fault.step == step {
            try fault.fault.strike(rank: communicator.rank, step: step)
            if fault.fault == .drift {
                var values = try model.parameters.slab.download()
                values[0] = values[0].nextUp
                try model.parameters.slab.upload(values)
            }
        }
        try model.parameters.zeroGradients()
        var lossSum: Float = 0
        var images = 0
        // Each micro-batch's mean-loss gradient, weighted so that the sum over micro-batches
        // and ranks is the gradient of the step's mean loss.
        let parts = options.accumulation * communicator.size
        for micro in 0..<options.accumulation {
            guard let batch = trainLoader.next() else { break }
            var pixels = batch.images
            if let fault, fault.fault == .nan, fault.rank == communicator.rank, fault.step == step {
                pixels = [Float](repeating: .nan, count: pixels.count)
            }
            let imageTensor = try engine.tensor(pixels, shape: [batch.count, 3, size, size])
            let labels = try engine.tensor(batch.labels, shape: [batch.count])
            _ = try model.forward(imageTensor)
            let (loss, dLogits) = try model.loss(labels: labels, smoothing: options.labelSmoothing)
            if parts > 1 { try engine.scale(dLogits, by: 1 / Float(parts), into: dLogits) }
            try model.backward(dLogits)
            lossSum += try loss.download()[0]
            images += batch.count
            watchdog?.beat("step \(step), micro-batch \(micro + 1)")
        }
        // A repeating loader always has a batch (checked at init); a step without images
        // would "train" on nothing with loss 0.
        guard images > 0 else { throw TrainingError.invalidOptions("the training data gave no batch at step \(state.step + 1)") }
        guard communicator.isDistributed else { return (lossSum / Float(options.accumulation), images) }
        watchdog?.beat("step \(step), waiting in the all-reduce", waiting: true)
        let reduction = try sumGradients(model.parameters, riders: [lossSum, Float(images), stopRequested.load(ordering: .relaxed) ? 1 : 0],
                                         communicator)
        let (totalLoss, totalImages, stopVotes) = (reduction.riders[0], reduction.riders[1], reduction.riders[2])
        lastReductionSeconds = reduction.seconds
        stopAgreed = stopVotes > 0
        watchdog?.beat("step \(step), after the all-reduce")
        // Armed once every rank has finished a step (and compiled its kernels).
        watchdog?.arm()
        return (totalLoss / Float(parts), Int(totalImages))
    }

    /// Evaluation and the best checkpoint at their interval, the last checkpoint at its
    /// interval, and a requested stop (which saves first).
    private func afterStep(_ step: Int, _ report: (TrainingEvent) -> Void) throws {
        var saveNow = options.checkpointInterval > 0 && step % options.checkpointInterval == 0
        if options.evaluationInterval > 0, step % options.evaluationInterval == 0, step < options.steps, let split = selectionSplit {
            let result = try evaluate(step: step, split, report)
            saveNow = true
            try keepIfBest(result, step: step, report)
        }
        // Ranks stop at the step whose all-reduce carried a request; one process at once.
        if communicator.isDistributed ? stopAgreed : stopRequested.load(ordering: .relaxed) {
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

    /// The final evaluations (validation, then test), checkpoints, adapter, summary.json and
    /// curves.svg.
    private func finish(started: Date, metricsURL: URL, _ report: (TrainingEvent) -> Void) throws -> TrainingSummary {
        var results: [EvaluationSplit: EvaluationResult] = [:]
        for set in evaluationSets { results[set.split] = try evaluate(step: state.step, set.split, report) }
        if let split = selectionSplit, let result = results[split] { try keepIfBest(result, step: state.step, report) }
        let final = results[.test]
        try save(to: lastCheckpoint, step: state.step, report)
        let adapterPath = output.appendingPathComponent("adapter.safetensors")
        if communicator.isRoot { try AdapterFile.save(try adapterContents(), to: adapterPath) }
        let summary = TrainingSummary(steps: state.step, method: model.method.description, trainableParameters: model.parameters.trainableCount,
                                      adapterParameters: ParameterTable.adapterParameterCount(model.config, model.method), final: final,
                                      validation: results[.validation],
                                      bestAccuracy: state.bestAccuracy, bestStep: state.bestStep,
                                      seconds: Date().timeIntervalSince(started), peakResidentBytes: Training.peakResidentBytes().nonZero,
                                      adapterPath: adapterPath.path,
                                      options: options, classNames: classNames, baseFingerprint: model.baseFingerprint, version: SloraGPU.version)
        if communicator.isRoot {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try writeAtomically(try encoder.encode(summary), to: output.appendingPathComponent("summary.json"))
            try? metrics?.synchronize()
            try writeAtomically(Data(try CurvePlot.svg(metricsURL: metricsURL).utf8), to: output.appendingPathComponent("curves.svg"))
        }
        watchdog?.beat("the end, waiting for rank 0's files", waiting: true)
        try communicator.barrier()
        return summary
    }

    /// Each rank's shard, summed over the ranks, so that every decision uses the whole set.
    func evaluate(step: Int, _ split: EvaluationSplit, _ report: (TrainingEvent) -> Void) throws -> EvaluationResult {
        guard let set = evaluationSets.first(where: { $0.split == split }) else { throw TrainingError.invalidOptions("no \(split.rawValue) set") }
        var tally = try Evaluator.tally(model, try set.loader()) {
            report(.evaluationProgress(step: step, batch: $0, total: $1))
            watchdog?.beat("\(split.rawValue) evaluation at step \(step), batch \($0)")
        }
        if communicator.isDistributed {
            watchdog?.beat("\(split.rawValue) evaluation at step \(step), waiting for the other ranks", waiting: true)
            var sums = tally.flattened
            try communicator.sumInRankOrder(&sums)
            tally = EvaluationTally(classes: tally.classes, flattened: sums)
        }
        let result = try tally.result(dataset: set.name)
        report(.evaluation(step: step, split: split, result: result))
        writeMetrics(["kind": "evaluation", "split": split.rawValue, "step": step, "accuracy": result.accuracy, "loss": result.loss, "count": result.count])
        return result
    }

    /// The trainable tensors and head as an adapter (the whole model for a full fine-tune).
    public func adapterContents() throws -> AdapterFile.Contents {
        let parameters = model.parameters
        let names = model.method == .full ? parameters.specs.map(\.name) : parameters.trainableNames
        return AdapterFile.Contents(method: model.method, config: model.config, classNames: classNames, values: try parameters.download(names),
                                    baseFingerprint: model.baseFingerprint)
    }

    /// Rank 0 writes, once every rank is seen to hold the same parameters and optimizer state;
    /// the others wait for it, so that no rank runs ahead of the last checkpoint.
    func save(to directory: URL, step: Int, _ report: (TrainingEvent) -> Void) throws {
        if communicator.isDistributed {
            watchdog?.beat("checkpoint at step \(step), waiting for the other ranks", waiting: true)
            var hash = checksumSeed
            for tensor in [model.parameters.slab] + optimizer.stateTensors.map(\.tensor) { checksum(try tensor.download(), into: &hash) }
            try communicator.checkIdentical(hash, what: "the trainable parameters and optimizer state at step \(step)")
        }
        if communicator.isRoot { try TrainingCheckpoint.save(to: directory, state: state, adapter: try adapterContents(), optimizer: optimizer) }
        try communicator.barrier()
        watchdog?.beat("checkpoint at step \(step)")
        report(.checkpoint(step: step, path: directory.path))
    }

    private func writeMetrics(_ object: [String: Any]) {
        guard let data = try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]) else { return }
        metrics?.write(data + Data("\n".utf8))
    }
}

/// The data-parallel all-reduce: every rank's trainable gradients, plus `riders` (a step's
/// loss and counts, which ride in the same buffer), summed in rank order into every rank's
/// gradient slab. Returns the summed riders, the bytes each rank contributed and the time
/// from the end of this rank's backward to the sums back on its device.
public func sumGradients(_ parameters: ViTParameters, riders: [Float], _ communicator: Communicator) throws
    -> (riders: [Float], bytes: Int, seconds: Double) {
    guard communicator.isDistributed else { return (riders, 0, 0) }
    // The backward's kernels finish first, so that the time is the reduction's (with the wait
    // for the slowest rank), not this rank's backward.
    try parameters.engine.synchronize()
    let started = Date()
    var buffer = try parameters.gradientSlab.download()
    let count = buffer.count
    buffer += riders
    try communicator.sumInRankOrder(&buffer)
    let summed = Array(buffer[count...])
    buffer.removeSubrange(count...)
    try parameters.gradientSlab.upload(buffer)
    return (summed, (count + riders.count) * MemoryLayout<Float>.size, Date().timeIntervalSince(started))
}

extension Int {
    var nonZero: Int? { self == 0 ? nil : self }
}
