import CImageCodecs
import Datasets
import Foundation
import Testing
@testable import Tensors
@testable import Training
@testable import Formats
@testable import Optimizers
@testable import ViT

/// The tiny fixture architecture (d 32, 2 blocks) with the fixture backbone, for fast runs.
func tinyModel(_ engine: Engine, method: FineTuningMethod, classes: Int = 10, imageSize: Int = 16, seed: UInt64 = 3) throws -> ViTModel {
    let checkpoint = try PretrainedCheckpoint(directory: parityFixtures.appendingPathComponent("hf-vit"))
    let (config, backbone, _) = try checkpoint.load(imageSize: imageSize, classes: classes)
    return try ViTModel.assemble(engine, config: config, method: method, backbone: backbone.filter { !$0.key.hasPrefix("head.") }, seed: seed)
}

@Suite("Training")
struct TrainingTests {
    func options(steps: Int) -> TrainingOptions {
        var options = TrainingOptions()
        options.steps = steps
        options.warmupSteps = 2
        options.batchSize = 16
        options.learningRate = 3e-3
        options.checkpointInterval = 0
        options.seed = 7
        return options
    }

    @Test func aShortSyntheticRunLowersTheLoss() throws {
        let engine = try makeEngine()
        let model = try tinyModel(engine, method: .full)
        let train = try Synthetic.make(count: 256, size: 16, seed: 1), test = try Synthetic.make(count: 64, size: 16, seed: 2)
        var settings = options(steps: 40)
        settings.augment = false
        let output = try makeTemporaryDirectory()
        let trainer = try Trainer(model: model, train: train, test: test, options: settings, output: output, classNames: train.classNames)
        var losses: [Float] = []
        let summary = try trainer.run { event in
            if case .step(_, _, _, let loss, _, _) = event { losses.append(loss) }
        }
        let early = losses.prefix(5).reduce(0, +) / 5, late = losses.suffix(5).reduce(0, +) / 5
        #expect(late < 0.6 * early, "loss \(early) -> \(late)")
        #expect(summary.final!.accuracy > 0.3)
        for file in ["metrics.jsonl", "summary.json", "curves.svg", "adapter.safetensors", "checkpoints/last/state.json", "checkpoints/best/adapter.safetensors"] {
            #expect(FileManager.default.fileExists(atPath: output.appendingPathComponent(file).path), "\(file)")
        }
        let svg = try String(contentsOf: output.appendingPathComponent("curves.svg"), encoding: .utf8)
        #expect(svg.contains("<polyline") && svg.contains("training loss"))
    }

    /// A run stopped after step 5 and resumed ends exactly where an uninterrupted run ends.
    @Test(arguments: [TrainingOptions.OptimizerKind.adamw, .sgd])
    func resumeEndsWhereAnUninterruptedRunEnds(optimizer: TrainingOptions.OptimizerKind) throws {
        let engine = try makeEngine()
        let train = try Synthetic.make(count: 64, size: 16, seed: 3), test = try Synthetic.make(count: 16, size: 16, seed: 4)
        var settings = options(steps: 12)
        settings.optimizer = optimizer
        settings.accumulation = 2
        let method = FineTuningMethod.serial(rank: 4, alpha: 4)

        let straight = try tinyModel(engine, method: method)
        _ = try Trainer(model: straight, train: train, test: test, options: settings, output: try makeTemporaryDirectory(), classNames: train.classNames).run()
        let expected = try straight.parameters.slab.download()

        let output = try makeTemporaryDirectory()
        let first = try tinyModel(engine, method: method)
        let interrupted = try Trainer(model: first, train: train, test: test, options: settings, output: output, classNames: train.classNames)
        let error = #expect(throws: TrainingError.self) {
            try interrupted.run { event in if case .step(5, _, _, _, _, _) = event { interrupted.requestStop() } }
        }
        guard case .interrupted(let step, _, _) = error else { Issue.record("expected an interruption, got \(String(describing: error))"); return }
        #expect(step == 5)

        // A fresh process would start from scratch: new model, new trainer, resumed.
        let second = try tinyModel(engine, method: method)
        let resumed = try Trainer(model: second, train: train, test: test, options: settings, output: output, classNames: train.classNames,
                                  resume: output.appendingPathComponent("checkpoints/last"))
        #expect(resumed.optimizer.step == 5)
        _ = try resumed.run()
        #expect(try second.parameters.slab.download() == expected)
    }

    @Test func aNonFiniteLossStopsTheRunNamingTheStep() throws {
        let engine = try makeEngine()
        let model = try tinyModel(engine, method: .probe)
        let train = try Synthetic.make(count: 32, size: 16, seed: 5)
        var settings = options(steps: 5)
        settings.learningRate = 1e30
        settings.maxGradientNorm = nil
        settings.optimizer = .sgd
        settings.momentum = 0
        let trainer = try Trainer(model: model, train: train, test: train, options: settings, output: try makeTemporaryDirectory(), classNames: train.classNames)
        let error = #expect(throws: TrainingError.self) { try trainer.run() }
        guard case .nonFiniteLoss(let step, _, _, _) = error else { Issue.record("expected a non-finite loss, got \(String(describing: error))"); return }
        #expect(step > 1)
        #expect(error!.description.contains("at step \(step)"))
    }

    /// transformers' get_cosine_schedule_with_warmup under LambdaLR: update n uses lambda(n - 1).
    @Test func scheduleFollowsPyTorchsLambdaLRSemantics() {
        let schedule = LearningRateSchedule(base: 1, warmup: 10, total: 110)
        #expect(schedule.rate(step: 1) == 0)
        #expect(abs(schedule.rate(step: 10) - 0.9) < 1e-6)
        #expect(schedule.rate(step: 11) == 1)
        #expect(abs(schedule.rate(step: 61) - 0.5) < 1e-6)
        // The last update is not at 0: 0.5 (1 + cos(pi 99 / 100)).
        #expect(abs(Double(schedule.rate(step: 110)) - 0.5 * (1 + cos(Double.pi * 0.99))) < 1e-7)
        #expect(schedule.rate(step: 110) > 0)
        // One step without warm-up trains at the full rate.
        #expect(LearningRateSchedule(base: 3, warmup: 0, total: 1).rate(step: 1) == 3)
    }

    @Test func badOptionsAreRejected() {
        var bad = options(steps: 10)
        bad.warmupSteps = 10
        #expect(throws: TrainingError.self) { try bad.validate() }
        bad = options(steps: 10)
        bad.learningRate = -1
        #expect(throws: TrainingError.self) { try bad.validate() }
    }

    /// The rates docs/RESULTS.md chose on validation: LoRA's follows how many projections it adapts.
    @Test func eachMethodHasItsSweptDefaultRate() {
        #expect(TrainingOptions.defaultLearningRate(for: .serial(rank: 8, alpha: 8)) == 3e-3)
        #expect(TrainingOptions.defaultLearningRate(for: .lora(rank: 8, alpha: 8, targets: [.q, .k, .v, .o])) == 1e-3)
        #expect(TrainingOptions.defaultLearningRate(for: .lora(rank: 8, alpha: 8, targets: [.q, .k, .v])) == 1e-3)
        #expect(TrainingOptions.defaultLearningRate(for: .lora(rank: 8, alpha: 8, targets: [.q, .v])) == 3e-3)
        #expect(TrainingOptions.defaultLearningRate(for: .lora(rank: 4, alpha: 4, targets: [.v])) == 3e-3)
        #expect(TrainingOptions.defaultLearningRate(for: .probe) == 3e-2)
        #expect(TrainingOptions.defaultLearningRate(for: .full) == 3e-5)
    }
}

@Suite("Datasets")
struct DatasetTests {
    static let fashion = FileManager.default.fileExists(atPath: FashionMNIST.directory.appendingPathComponent("t10k-images-idx3-ubyte.gz").path)

    /// Our preparation of a real Fashion-MNIST image equals the PyTorch preparation that
    /// scripts/make_dinov2_fixture.py recorded (bilinear 28 -> 112, grey -> RGB, ImageNet norm).
    @Test(.enabled(if: fashion)) func preparationMatchesThePyTorchPipeline() throws {
        let test = try FashionMNIST.load(split: "test")
        #expect(test.count == 10000 && test.height == 28 && test.classNames[9] == "Ankle boot")
        let fixture = try SafeTensorsFile(contentsOf: parityFixtures.deletingLastPathComponent().appendingPathComponent("dinov2/fashion_mnist_112.safetensors"))
        let preprocessor = Preprocessor(outputSize: 112, mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225])
        var values = [Float](repeating: 0, count: 3 * 112 * 112)
        preprocessor.prepare(test, index: 0, augmentation: nil, into: &values, offset: 0)
        expectClose(values, try fixture.floats("image"), atol: 2e-5, rtol: 1e-5, "prepared image")
    }

    @Test func idxFilesGzippedOrNotAndBadOnes() throws {
        let directory = try makeTemporaryDirectory()
        var images: [UInt8] = [0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 3]
        images += Array(0..<12)
        let labels: [UInt8] = [0, 0, 8, 1, 0, 0, 0, 2, 1, 0]
        try Data(images).write(to: directory.appendingPathComponent("train-images-idx3-ubyte"))
        try Data(labels).write(to: directory.appendingPathComponent("train-labels-idx1-ubyte"))
        // The test split gzipped, through zlib.
        for (name, bytes) in [("t10k-images-idx3-ubyte.gz", images), ("t10k-labels-idx1-ubyte.gz", labels)] {
            let path = directory.appendingPathComponent(name).path
            let file = gzopen(path, "wb")!
            _ = bytes.withUnsafeBytes { gzwrite(file, $0.baseAddress, UInt32($0.count)) }
            gzclose(file)
        }
        for split in ["train", "test"] {
            let set = try FashionMNIST.load(split: split, from: directory)
            #expect(set.count == 2 && set.height == 2 && set.width == 3 && set.labels == [1, 0] && Array(set.image(1)) == Array(6..<12))
        }
        try Data(images.prefix(20)).write(to: directory.appendingPathComponent("train-images-idx3-ubyte"))
        #expect(throws: DatasetError.self) { try FashionMNIST.load(split: "train", from: directory) }
        try Data([1, 2, 3, 4] + images.dropFirst(4)).write(to: directory.appendingPathComponent("train-images-idx3-ubyte"))
        let error = #expect(throws: DatasetError.self) { try FashionMNIST.load(split: "train", from: directory) }
        #expect(error?.description.contains("magic") == true)
        #expect(throws: DatasetError.self) { try FashionMNIST.load(split: "train", from: try makeTemporaryDirectory()) }
    }

    /// PNG and JPEG written by libpng and TurboJPEG themselves, read back through ImageFolder.
    @Test func imageFoldersDecodePNGAndJPEG() throws {
        let root = try makeTemporaryDirectory()
        let (width, height) = (8, 6)
        let rgb = (0..<width * height * 3).map { UInt8(($0 * 37) % 256) }
        for className in ["cat", "dog"] {
            try FileManager.default.createDirectory(at: root.appendingPathComponent(className), withIntermediateDirectories: true)
        }
        var image = png_image()
        image.version = UInt32(PNG_IMAGE_VERSION)
        image.width = UInt32(width)
        image.height = UInt32(height)
        image.format = UInt32(PNG_FORMAT_RGB)
        let pngPath = root.appendingPathComponent("cat/a.png").path
        #expect(rgb.withUnsafeBytes { png_image_write_to_file(&image, pngPath, 0, $0.baseAddress, 0, nil) } != 0)

        let handle = tjInitCompress()!
        var jpeg: UnsafeMutablePointer<UInt8>? = nil
        var size: UInt = 0
        #expect(rgb.withUnsafeBufferPointer { tjCompress2(handle, $0.baseAddress, Int32(width), 0, Int32(height), Int32(TJPF_RGB.rawValue), &jpeg, &size, Int32(TJSAMP_444.rawValue), 100, 0) } == 0)
        try Data(bytes: jpeg!, count: Int(size)).write(to: root.appendingPathComponent("dog/b.jpg"))
        tjFree(jpeg)
        tjDestroy(handle)
        try Data("not an image".utf8).write(to: root.appendingPathComponent("dog/notes.txt"))

        let set = try ImageFolder.load(root, size: 8)
        #expect(set.classNames == ["cat", "dog"] && set.labels == [0, 1] && set.channels == 3)
        let (decodedPNG, w, h) = try ImageFolder.decode(URL(fileURLWithPath: pngPath))
        #expect(w == width && h == height && decodedPNG == rgb)
        let (decodedJPEG, _, _) = try ImageFolder.decode(root.appendingPathComponent("dog/b.jpg"))
        #expect(zip(decodedJPEG, rgb).allSatisfy { abs(Int($0) - Int($1)) <= 40 })
        try Data([0x89, 0x50, 0x4E, 0x47, 1, 2, 3]).write(to: root.appendingPathComponent("cat/broken.png"))
        let error = #expect(throws: DatasetError.self) { try ImageFolder.load(root, size: 8) }
        #expect(error?.description.contains("broken.png") == true)
    }

    @Test func loaderOrderAndAugmentationAreFunctionsOfSeedAndEpoch() throws {
        let set = try Synthetic.make(count: 40, size: 12, seed: 9)
        let preprocessor = Preprocessor(outputSize: 12, mean: [0, 0, 0], std: [1, 1, 1])
        let a = try BatchLoader(dataset: set, preprocessor: preprocessor, batchSize: 8, shuffle: true, augment: true, seed: 5, repeats: true)
        let batches = (0..<7).map { _ in a.next()! }
        #expect(a.position == LoaderPosition(epoch: 1, batch: 2))
        // Starting at the same position gives the same batch; another epoch another order.
        let b = try BatchLoader(dataset: set, preprocessor: preprocessor, batchSize: 8, shuffle: true, augment: true, seed: 5, repeats: true,
                                position: LoaderPosition(epoch: 1, batch: 0))
        let resumed = b.next()!
        #expect(resumed.images == batches[5].images && resumed.labels == batches[5].labels)
        #expect(a.order(epoch: 0) != a.order(epoch: 1))
        #expect(Set(a.order(epoch: 0)) == Set(0..<40))
        let evaluation = try BatchLoader(dataset: set, preprocessor: preprocessor, batchSize: 16, shuffle: false, augment: false, seed: 0, repeats: false)
        #expect([evaluation.next()?.count, evaluation.next()?.count, evaluation.next()?.count, evaluation.next()?.count] == [16, 16, 8, nil])
    }
}
