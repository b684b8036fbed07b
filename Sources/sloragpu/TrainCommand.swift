import ArgumentParser
import Cluster
import Datasets
import Dispatch
import Foundation
import Synchronization
import Tensors
import Training
import Formats
import Optimizers
import ViT

struct TrainCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Fine-tune a ViT (default: Serial LoRA on DINOv2-S/14, Fashion-MNIST at 112 px, 5.5 to 11 minutes on 2 cores, by CPU).",
        discussion: """
            Writes into --output: metrics.jsonl, checkpoints/last and checkpoints/best (adapter, optimizer \
            state, data position), adapter.safetensors, summary.json and curves.svg. Ctrl-C saves a \
            checkpoint at the end of the current step; --resume OUTPUT continues it and ends where an \
            uninterrupted run would.

            Under an MPI launcher (mpirun -np N sloragpu train ...) N ranks, one per OpenCL device \
            (the local rank picks it unless --device is given), train one model data-parallel: \
            --batch stays the global batch and must divide by N; rank 0 alone writes files.
            """
    )

    /// Everything that defines a run; its command-line form is saved as run.json so that
    /// --resume parses the same run again.
    struct RunOptions: ParsableArguments {
        @OptionGroup var modelOptions: ModelOptions
        @OptionGroup var weights: WeightStorageOption
        @OptionGroup var matmul: MatmulOption
        @Option(help: "fashion-mnist, idx:DIR (MNIST-style IDX files), folder:DIR (train/ and test/ with a folder per class) or synthetic.")
        var data = "fashion-mnist"
        @Option(help: "serial, lora, full or probe.")
        var method = "serial"
        @Option(help: "Adapter rank r.")
        var rank = 8
        @Option(help: "Adapter alpha; the scale is alpha / r (default: alpha = r).")
        var alpha: Float?
        @Option(help: "LoRA targets, a comma list of q, k, v, o.")
        var targets = "q,k,v,o"
        @Option(help: "adamw or sgd.")
        var optimizer = "adamw"
        @Option(name: .customLong("lr"), help: "Peak learning rate (default by method: serial 3e-3, lora 1e-3 with three or four --targets and 3e-3 with one or two, probe 3e-2, full 3e-5; docs/RESULTS.md has the sweeps).")
        var learningRate: Float?
        @Option(help: "LoRA+: learning rate of B over that of A (1: no ratio beat Serial LoRA's plain rate on validation, nor ratio 4 on the test set over three seeds; docs/RESULTS.md).")
        var loraPlusRatio: Float = 1
        @Option(help: "Weight decay (not on biases, norms, cls and positions).")
        var weightDecay: Float = 0.01
        @Option(help: "SGD momentum.")
        var momentum: Float = 0.9
        @Option(help: "Images per micro-batch.")
        var batch = 32
        @Option(help: "Micro-batches per optimizer step (gradient accumulation).")
        var accumulation = 1
        @Option(help: "Optimizer steps (default 300 unless --epochs is given).")
        var steps: Int?
        @Option(help: "Passes over the training set (sets --steps).")
        var epochs: Double?
        @Option(help: "Linear warm-up steps before the cosine decay (default: 10% of the steps).")
        var warmup: Int?
        @Option(help: "Clip gradients to this global L2 norm (0: off).")
        var maxGradNorm: Float = 1
        @Option(help: "Label smoothing epsilon.")
        var labelSmoothing: Float = 0
        @Option(help: "Seed for initialisation, data order and augmentation.")
        var seed: UInt64 = 0
        @Option(help: "Evaluate every N steps (0: only at the end), on the validation split if there is one, else on the test set.")
        var evalInterval = 0
        @Option(help: "Save the last checkpoint every N steps.")
        var checkpointInterval = 50
        @Option(help: "Use only the first N training images.")
        var trainLimit: Int?
        @Option(help: "Use only the first N test images.")
        var testLimit: Int?
        @Option(help: "Hold out this fraction of the training set (stratified by class, the same images whatever the seed) for validation: periodic evaluations and the best checkpoint use it; the test set only gives the final number.")
        var validationSplit: Double?
        @Flag(help: "No test evaluation at all (with --validation-split: for tuning, e.g. in a sweep, without looking at the test set).")
        var noTest = false
        @Flag(help: "Keep the training set in file order.")
        var noShuffle = false
        @Flag(help: "No random crops or flips.")
        var noAugment = false
        @Option(help: "Start from a saved adapter (a sloragpu adapter file or a PEFT LoRA directory) instead of fresh adapters.")
        var initAdapter: String?
        @Flag(help: "Accept an --init-adapter trained on another base.")
        var allowOtherBase = false
        @Option(help: "For --method lora: module names of the PEFT adapter written to OUTPUT/peft (transformers5 or transformers4).")
        var peftNaming: PEFTNaming = .transformers5
        @Option(help: "Output directory (default runs/METHOD).")
        var output: String?
        @Option(help: "selective (the default): blocks keep their input, qkv, the attention output and fc1's pre-activation, and the backward reruns only LN1 and the proj GEMM (exact; about 0.5x PyTorch fp32's peak memory); recompute: blocks keep only their input and attention output and the backward reruns 3 GEMMs per block (exact, the least memory: about 0.55x selective's peak for about 20% fewer images/s); keep-bf16: the backward reruns no GEMM (only LN1) and reads the tensors it needs from bfloat16 copies (about selective's speed at 0.75x its peak; the forward and loss exact, the gradients within bf16 rounding: the default job measured 0.38 points lower over three seeds); keep: no rerun, all in fp32, the most memory. Full fine-tuning always keeps.")
        var activations: ActivationMemory = .selective

        /// Ranges before any arithmetic: every later size, loop and division relies on these.
        /// NaN fails each comparison, so it is refused everywhere.
        func validate() throws {
            func positive(_ value: Int?, _ flag: String) throws {
                if let value, value < 1 { throw ValidationError("\(flag) must be at least 1, got \(value)") }
            }
            func notNegative(_ value: Int?, _ flag: String) throws {
                if let value, value < 0 { throw ValidationError("\(flag) must not be negative, got \(value)") }
            }
            try positive(batch, "--batch")
            try positive(accumulation, "--accumulation")
            try positive(steps, "--steps")
            try positive(trainLimit, "--train-limit")
            try positive(testLimit, "--test-limit")
            try notNegative(warmup, "--warmup")
            try notNegative(evalInterval, "--eval-interval")
            try notNegative(checkpointInterval, "--checkpoint-interval")
            if let steps, steps > TrainingOptions.maximumSteps { throw ValidationError("--steps \(steps) is more than \(TrainingOptions.maximumSteps)") }
            if let epochs {
                guard epochs > 0, epochs <= 1_000_000 else { throw ValidationError("--epochs must be in (0, 1000000], got \(epochs)") }
                if steps != nil { throw ValidationError("give --steps or --epochs, not both") }
            }
            if let alpha, !alpha.isFinite { throw ValidationError("--alpha must be finite, got \(alpha)") }
            if let learningRate, !(learningRate > 0 && learningRate.isFinite) { throw ValidationError("--lr must be positive and finite, got \(learningRate)") }
            guard loraPlusRatio > 0, loraPlusRatio.isFinite else { throw ValidationError("--lora-plus-ratio must be positive and finite, got \(loraPlusRatio)") }
            guard weightDecay >= 0, weightDecay.isFinite else { throw ValidationError("--weight-decay must be finite and not negative, got \(weightDecay)") }
            guard momentum >= 0, momentum < 1 else { throw ValidationError("--momentum must be in [0, 1), got \(momentum)") }
            guard maxGradNorm >= 0, maxGradNorm.isFinite else { throw ValidationError("--max-grad-norm must be finite and not negative (0 turns clipping off), got \(maxGradNorm)") }
            guard labelSmoothing >= 0, labelSmoothing < 1 else { throw ValidationError("--label-smoothing must be in [0, 1), got \(labelSmoothing)") }
            if let validationSplit, !(validationSplit > 0 && validationSplit < 1) {
                throw ValidationError("--validation-split must be a fraction in (0, 1), got \(validationSplit)")
            }
            if noTest && validationSplit == nil { throw ValidationError("--no-test needs --validation-split: a run must be scored on something") }
        }
    }

    @OptionGroup var runOptions: RunOptions
    @OptionGroup var deviceOption: DeviceOption
    @Option(help: ArgumentHelp("Continue the run in this output directory from its last checkpoint (its run.json decides every other option).", valueName: "dir"))
    var resume: String?
    @Flag(help: "Replace the run that --output already holds (its checkpoints, metrics, adapter and summary) instead of refusing.")
    var overwrite = false
    @Flag(help: "On a GPU without a tuned GEMM entry, train with the seed tiles instead of tuning first (about 3 minutes, once per device).")
    var noTune = false
    @Option(help: ArgumentHelp("Under MPI: end the whole job when a rank's training has not advanced for this long (0: never).", valueName: "seconds"))
    var watchdog: Double = 600

    func validate() throws {
        if resume != nil && overwrite { throw ValidationError("--resume continues a run and --overwrite replaces it: give one") }
        guard watchdog >= 0, watchdog.isFinite else { throw ValidationError("--watchdog must be finite and not negative, got \(watchdog)") }
    }

    func run() throws {
        // A parent that ignores these (sloragpu sweep) passes that on: until the trainer's own
        // handlers are installed, a stop should end the process, which loses nothing yet.
        signal(SIGINT, SIG_DFL)
        signal(SIGTERM, SIG_DFL)
        try runAsRank(Self.self, train)
    }

    private func train(_ communicator: Communicator) throws {
        let (options, resumeCheckpoint) = try resolvedOptions(communicator)
        let output = URL(fileURLWithPath: options.output ?? "runs/\(options.method)")
        let targets = try parseTargets(options.targets)
        let method = try parseMethod(options.method, rank: options.rank, alpha: options.alpha ?? Float(options.rank), targets: targets)
        let ranks = communicator.size
        if options.batch % ranks != 0 {
            throw ValidationError("--batch \(options.batch) is the global batch and must divide by the \(ranks) ranks; give a multiple of \(ranks)")
        }

        let engine = try Engine(deviceSpec: deviceOption.device, localRank: communicator.localRank)
        try tuneOnFirstUse(engine, skip: noTune, quiet: !communicator.isRoot)
        try options.matmul.apply(to: engine)
        var (train, test) = try loadData(options.data, imageSize: options.modelOptions.imageSize ?? 112, seed: options.seed)
        train = train.prefix(options.trainLimit)
        test = test.prefix(options.testLimit)
        let dataName = train.name
        var validation: ImageDataset?
        if let fraction = options.validationSplit { (train, validation) = try train.stratifiedSplit(fraction: fraction) }
        guard train.classNames == test.classNames else {
            throw ValidationError("the train and test sets have different classes (\(train.classNames.count): \(displayList(train.classNames)); \(test.classNames.count): \(displayList(test.classNames))); accuracy would be scored by position")
        }
        let initial = try options.initAdapter.map { try loadAdapter($0, modelOptions: options.modelOptions) }
        if let initial, initial.method != method {
            throw ValidationError("--init-adapter holds \(initial.method), but this run trains \(method)")
        }
        if let initial, let path = options.initAdapter {
            try checkClasses(count: initial.config.classes, names: initial.classNames, of: path, against: train)
        }
        let (model, backbone) = try buildModel(engine, options.modelOptions, method: method, classes: train.classNames.count,
                                               seed: options.seed, adapter: initial, adapterPath: options.initAdapter ?? "",
                                               allowOtherBase: options.allowOtherBase, weightStorage: options.weights.storage.dtype)
        model.activationMemory = options.activations
        let training = try trainingOptions(options, method: method, trainImages: train.count)

        // Claimed once every input has been checked (so a bad option is reported as such), and
        // before anything in the directory is read (a resume may move checkpoints) or written;
        // held to the end.
        // Rank 0 alone owns the directory.
        let runDirectory = communicator.isRoot ? try RunDirectory(output, mode: resume != nil ? .resume : overwrite ? .overwrite : .fresh) : nil
        defer { withExtendedLifetime(runDirectory) {} }
        let trainer = try Trainer(model: model, train: train, validation: validation, test: options.noTest ? nil : test, options: training,
                                  output: output, classNames: train.classNames, resume: resumeCheckpoint, communicator: communicator)
        let heldOut = validation?.count ?? test.count
        trainer.watchdog = startWatchdog(communicator, seconds: watchdog)
        defer { trainer.watchdog?.stop() }
        if resume == nil, let runDirectory { try recordFreshRun(runDirectory, output: output, options: options, learningRate: training.learningRate) }
        guard communicator.isRoot else {
            return try runUntilDoneOrStopped(trainer, training: training, testImages: heldOut, output: output, method: method,
                                             peftNaming: options.peftNaming, baseSource: backbone.source, quiet: true)
        }

        print("device:   \(engine.device.name)" + (ranks > 1 ? " (rank 0; every rank picks its own)" : ""))
        if ranks > 1 { print("ranks:    \(ranks) (MPI), each computing \(training.batchSize / ranks) images of every batch of \(training.batchSize); one all-reduce per step") }
        print("model:    \(backbone.source), \(model.config.imageSize) px, \(model.config.layers) blocks of width \(model.config.width); normalisation from \(backbone.normalization)"
              + (options.weights.storage == .fp32 ? "" : "; frozen weights in \(options.weights.storage.rawValue)")
              + (options.matmul.precision == .fp32 ? "" : "; products in \(options.matmul.precision.rawValue)"))
        print("data:     \(dataName) (\(train.count) train, " + (validation.map { "\($0.count) validation, " } ?? "")
              + (options.noTest ? "no test" : "\(test.count) test") + ", \(train.classNames.count) classes)")
        print("method:   \(method): \(ParameterTable.adapterParameterCount(model.config, method)) trainable parameters without the head, \(model.parameters.trainableCount) with it"
              + (method == .full || method == .probe ? "" : "; activations \(options.activations.rawValue)"))
        print("schedule: \(training.steps) steps of \(training.batchSize * training.accumulation) images, \(training.optimizer.rawValue) lr \(training.learningRate), warm-up \(training.warmupSteps), cosine")
        if let resumeCheckpoint { print("resuming: \(resumeCheckpoint.path) at step \(trainer.optimizer.step)") }
        fflush(nil)
        try runUntilDoneOrStopped(trainer, training: training, testImages: heldOut, output: output, method: method,
                                  peftNaming: options.peftNaming, baseSource: backbone.source)
    }

    /// The run's options: the command line's, or on --resume those saved in run.json (with the
    /// checkpoint to resume from).
    /// Under MPI rank 0 reads run.json and broadcasts it (other machines need not share the disk).
    private func resolvedOptions(_ communicator: Communicator) throws -> (RunOptions, URL?) {
        guard let resume else { return (runOptions, nil) }
        let directory = URL(fileURLWithPath: resume)
        let runFile = directory.appendingPathComponent("run.json")
        var saved: [String] = []
        if communicator.isRoot {
            guard let data = FileManager.default.contents(atPath: runFile.path),
                  let decoded = try? JSONDecoder().decode([String].self, from: data) else {
                throw ValidationError("--resume \(resume): no readable run.json there (give the output directory of an earlier train)")
            }
            saved = decoded
        }
        saved = try communicator.broadcast(saved)
        var options: RunOptions
        // Runs saved before an option recorded its value resume with the default of their day.
        var arguments = saved
        for (option, defaultThen) in Self.recordedOptions where !Self.contains(arguments, option) { arguments += [option, defaultThen] }
        // Runs saved before run.json left out the options of an invocation kept --no-tune.
        arguments.removeAll { $0 == "--no-tune" }
        do { options = try RunOptions.parse(arguments) } catch {
            throw ValidationError("\(runFile.path): the saved options do not parse: \(RunOptions.message(for: error))")
        }
        options.output = directory.path
        return (options, directory.appendingPathComponent("checkpoints/last"))
    }

    /// The library's TrainingOptions from the command line's (steps from --epochs over
    /// `trainImages`), validated.
    private func trainingOptions(_ options: RunOptions, method: FineTuningMethod, trainImages: Int) throws -> TrainingOptions {
        var training = TrainingOptions()
        guard let optimizerKind = TrainingOptions.OptimizerKind(rawValue: options.optimizer) else {
            throw ValidationError("--optimizer \(options.optimizer): use adamw or sgd")
        }
        training.optimizer = optimizerKind
        training.learningRate = options.learningRate ?? TrainingOptions.defaultLearningRate(for: method)
        training.weightDecay = options.weightDecay
        training.momentum = options.momentum
        training.loraPlusRatio = options.loraPlusRatio
        training.batchSize = options.batch
        training.accumulation = options.accumulation
        if let epochs = options.epochs {
            // Both factors are bounded by validate(), so the quotient is finite.
            let steps = (epochs * Double(trainImages) / (Double(options.batch) * Double(options.accumulation))).rounded(.down)
            guard steps <= Double(TrainingOptions.maximumSteps) else {
                throw ValidationError("--epochs \(epochs) over \(trainImages) images is \(steps) steps, more than \(TrainingOptions.maximumSteps)")
            }
            training.steps = max(1, Int(steps))
        } else {
            training.steps = options.steps ?? 300
        }
        training.warmupSteps = options.warmup ?? training.steps / 10
        training.maxGradientNorm = options.maxGradNorm > 0 ? options.maxGradNorm : nil
        training.labelSmoothing = options.labelSmoothing
        training.seed = options.seed
        training.evaluationInterval = options.evalInterval
        training.checkpointInterval = options.checkpointInterval
        training.shuffle = !options.noShuffle
        training.augment = !options.noAugment
        try training.validate()
        return training
    }

    /// Options whose default changed, with the default before run.json recorded them: a resume
    /// must train as the run began (weight storage and activation plan change the numerics).
    private static let recordedOptions = [("--weights", "fp32"), ("--activations", "recompute"), ("--lr", "0.001")]

    private static func contains(_ arguments: [String], _ option: String) -> Bool {
        arguments.contains { $0 == option || $0.hasPrefix(option + "=") }
    }

    /// A fresh run's directory is emptied of another run's files, and run.json records the
    /// run's own arguments (after `train`) minus --device, since a resume may use another device,
    /// plus the weight storage and activation plan in effect, so that a resume keeps them
    /// whatever the defaults become.
    private func recordFreshRun(_ runDirectory: RunDirectory, output: URL, options: RunOptions, learningRate: Float) throws {
        try runDirectory.prepareForFreshRun()
        var arguments = Array(CommandLine.arguments.drop { $0 != "train" }.dropFirst())
        // Options of this invocation, not of the run: a resume gives its own.
        for option in ["--device", "--watchdog"] {
            if let index = arguments.firstIndex(of: option) { arguments.removeSubrange(index..<min(index + 2, arguments.count)) }
            arguments.removeAll { $0.hasPrefix(option + "=") }
        }
        arguments.removeAll { $0 == "--overwrite" || $0 == "--no-tune" }
        let inEffect = ["--weights": options.weights.storage.rawValue, "--activations": options.activations.rawValue, "--lr": "\(learningRate)"]
        for (option, _) in Self.recordedOptions where !Self.contains(arguments, option) { arguments += [option, inEffect[option] ?? ""] }
        try writeAtomically(try JSONEncoder().encode(arguments), to: output.appendingPathComponent("run.json"))
    }

    /// Trains to the end, or, on Ctrl-C or SIGTERM (what schedulers and `docker stop` send),
    /// finishes the step, saves and exits 128 + the signal with the command that resumes.
    private func runUntilDoneOrStopped(_ trainer: Trainer, training: TrainingOptions, testImages: Int, output: URL, method: FineTuningMethod,
                                       peftNaming: PEFTNaming, baseSource: String, quiet: Bool = false) throws {
        let received = Mutex<Int32>(0)
        let signalSources = onStopSignals { number in
            received.withLock { $0 = number }
            let name = number == SIGINT ? "interrupt" : "SIGTERM"
            let rank = trainer.communicator.isDistributed ? "rank \(trainer.communicator.rank): " : ""
            FileHandle.standardError.write(Data("\n\(rank)\(name): saving a checkpoint at the end of this step...\n".utf8))
            trainer.requestStop()
        }
        defer { for source in signalSources { source.cancel() } }

        let progress = ProgressPrinter(total: training.steps, evaluationInterval: training.evaluationInterval, testImages: testImages,
                                       batchImages: training.batchSize * training.accumulation)
        if quiet {
            // A rank other than 0: no output; an agreed interrupt ends it as it ends rank 0.
            do { _ = try trainer.run() } catch TrainingError.interrupted { throw ExitCode(128 + received.withLock { $0 == 0 ? SIGINT : $0 }) }
            return
        }
        do {
            let summary = try trainer.run(progress.handle)
            progress.finish()
            for (name, result) in [("validation", summary.validation), ("test", summary.final)] {
                guard let result else { continue }
                print(String(format: "%@ accuracy %.4f (%d images), loss %.4f after %d steps in %.0f s", name, result.accuracy, result.count, result.loss,
                             summary.steps, summary.seconds))
            }
            print("adapter:  \(summary.adapterPath)")
            if case .lora = method {
                let peft = output.appendingPathComponent("peft")
                try PEFTAdapter.write(try trainer.adapterContents(), to: peft, naming: peftNaming, baseModel: baseSource)
                print("peft:     \(peft.path) (attach it to the base from: sloragpu export base --adapter \(summary.adapterPath) --output DIR)")
            }
            print("curves:   \(output.appendingPathComponent("curves.svg").path); metrics: \(output.appendingPathComponent("metrics.jsonl").path)")
        } catch let error as TrainingError {
            progress.finish()
            if case .interrupted(let step, let checkpoint, let directory) = error {
                let command = [CommandLine.arguments.first ?? "sloragpu", "train", "--resume", directory].map(shellQuoted).joined(separator: " ")
                FileHandle.standardError.write(Data("interrupted after step \(step); saved \(checkpoint).\nResume with: \(command)\n".utf8))
                throw ExitCode(128 + received.withLock { $0 == 0 ? SIGINT : $0 })
            }
            throw error
        }
    }
}

/// A progress bar on a terminal; plain lines (every 10 steps and at evaluations) otherwise.
/// The ETA counts the evaluations still to come: each costs what the last one took, or before
/// the first, a forward pass over the test set at a third of a training step's time per image
/// (a forward is about a third of forward + backward).
final class ProgressPrinter {
    let total: Int
    let evaluationInterval: Int
    let testImages: Int
    let batchImages: Int
    let isTerminal = isatty(STDOUT_FILENO) != 0
    var lastLine = ""
    private var trainingSeconds = 0.0, stepsTimed = 0
    private var lastEvent = Date()
    private var evaluationStarted: Date?
    private var lastEvaluationSeconds: Double?

    init(total: Int, evaluationInterval: Int, testImages: Int, batchImages: Int) {
        (self.total, self.evaluationInterval, self.testImages, self.batchImages) = (total, evaluationInterval, testImages, batchImages)
    }

    /// Evaluations after `step`: the periodic ones before the last step, and the final one.
    func evaluationsAfter(_ step: Int) -> Int {
        let periodic = evaluationInterval > 0 ? (total - 1) / evaluationInterval - step / evaluationInterval : 0
        return max(0, periodic) + 1
    }

    func eta(afterStep step: Int) -> Double {
        let perStep = trainingSeconds / Double(max(1, stepsTimed))
        let perEvaluation = lastEvaluationSeconds ?? Double(testImages) * perStep / Double(max(1, batchImages)) / 3
        return perStep * Double(total - step) + perEvaluation * Double(evaluationsAfter(step))
    }

    func handle(_ event: TrainingEvent) {
        switch event {
        case .step(let step, let total, let epoch, let loss, let rate, let imagesPerSecond):
            let now = Date()
            trainingSeconds += now.timeIntervalSince(lastEvent)
            stepsTimed += 1
            lastEvent = now
            let text = String(format: "step %d/%d  epoch %d  loss %.4f  lr %.2e  %.1f img/s  ETA %@", step, total, epoch, loss, rate,
                              imagesPerSecond, duration(eta(afterStep: step)))
            if isTerminal {
                let width = 24, filled = width * step / max(total, 1)
                let bar = String(repeating: "#", count: filled) + String(repeating: ".", count: width - filled)
                print("\r[\(bar)] \(text)   ", terminator: "")
                fflush(nil)
                lastLine = text
            } else if step % 10 == 0 || step == 1 || step == total {
                print(text)
                fflush(nil)  // a pipe or file would otherwise see nothing until the run ends
            }
        case .evaluationProgress(let step, let batch, let batches):
            if evaluationStarted == nil { evaluationStarted = Date() }
            if isTerminal {
                print("\r  evaluating at step \(step): batch \(batch)/\(batches)   ", terminator: "")
                fflush(nil)
            } else if batch == batches || batch % max(1, batches / 4) == 0 {
                print("evaluating at step \(step): batch \(batch)/\(batches)")
                fflush(nil)
            }
        case .evaluation(let step, let split, let result):
            if let started = evaluationStarted { lastEvaluationSeconds = Date().timeIntervalSince(started) }
            evaluationStarted = nil
            lastEvent = Date()  // evaluation time is not training time
            if isTerminal { print("") }
            print(String(format: "%@ at step %d: accuracy %.4f, loss %.4f (%d images)", split == .test ? "eval" : "validation", step, result.accuracy,
                         result.loss, result.count))
            fflush(nil)
        case .checkpoint:
            lastEvent = Date()
        }
    }

    func finish() {
        if isTerminal && !lastLine.isEmpty { print("") }
        lastLine = ""
    }
}

/// Progress of a stand-alone evaluation (eval): a line that updates on a terminal, a line per
/// quarter otherwise, with images per second and the time left.
final class EvaluationProgress {
    let total: Int
    let started = Date()
    let isTerminal = isatty(STDOUT_FILENO) != 0

    init(total: Int) { self.total = total }

    func handle(_ batch: Int, _ batches: Int) {
        let elapsed = Date().timeIntervalSince(started)
        let left = elapsed / Double(max(1, batch)) * Double(batches - batch)
        let text = "evaluating: batch \(batch)/\(batches), ETA \(duration(left))"
        if isTerminal {
            print("\r\(text)   ", terminator: "")
            fflush(nil)
        } else if batch == batches || batch % max(1, batches / 4) == 0 {
            print(text)
            fflush(nil)
        }
    }

    func finish() { if isTerminal { print("") } }
}

func duration(_ seconds: Double) -> String {
    guard seconds.isFinite else { return "?" }
    let s = Int(seconds)
    return s >= 60 ? "\(s / 60)m\(String(format: "%02d", s % 60))s" : "\(s)s"
}

extension ActivationMemory: ExpressibleByArgument {}

/// SIGINT and SIGTERM call `handler` (on a global queue) instead of ending the process, until
/// the returned sources are cancelled.
func onStopSignals(_ handler: @escaping (Int32) -> Void) -> [DispatchSourceSignal] {
    [SIGINT, SIGTERM].map { number in
        signal(number, SIG_IGN)
        let source = DispatchSource.makeSignalSource(signal: number, queue: .global())
        source.setEventHandler { handler(number) }
        source.resume()
        return source
    }
}

/// A GPU without a tuned GEMM entry is tuned once, with a visible line, before its first run.
/// `quiet`: a data-parallel rank other than 0, which prints nothing.
func tuneOnFirstUse(_ engine: Engine, skip: Bool, quiet: Bool = false) throws {
    guard engine.device.type.contains(.gpu), engine.gemmProfile.tiles != nil, let cache = engine.tuningCache,
          ProcessInfo.processInfo.environment["SLORAGPU_GEMM_PROFILE"] == nil else { return }
    let key = try TuningKey(engine: engine)
    if case .hit = cache.load(key, device: engine.device) { return }
    if TuningCache.committed(for: key, device: engine.device) != nil { return }  // already applied by the engine
    guard !skip else {
        if quiet { return }
        print("tuning:   skipped (--no-tune): seed GEMM tiles; run `sloragpu tune` once to tune this device")
        return
    }
    if !quiet { print("tuning:   GEMM tiles for \(engine.device.name), once per device and driver (about 3 minutes; --no-tune skips)") }
    fflush(nil)
    let entry = try GemmTuner.tune(engine, budget: 180) { line in
        if !quiet { print("          \(line)") }
        fflush(nil)
    }
    try cache.store(entry)
    engine.applyCachedTuning(cache: cache)  // tiles and attention rows, as every later run applies them
}
