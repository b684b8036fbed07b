import CImageCodecs
import Datasets
import Foundation
import Testing
@testable import Tensors
@testable import Training
@testable import Formats
@testable import Optimizers
@testable import ViT

// Hostile and damaged input, one representative case per class of failure and the rule it
// stands for: every bad value is a clear error that names what was wrong and where, never a
// trap, an allocation taken on trust, a silent wrong answer or a lost run.

/// A small valid RGB PNG, in memory.
func pngBytes(width: Int = 8, height: Int = 6) -> [UInt8] {
    var image = png_image()
    image.version = UInt32(PNG_IMAGE_VERSION)
    (image.width, image.height, image.format) = (UInt32(width), UInt32(height), UInt32(PNG_FORMAT_RGB))
    let rgb = (0..<width * height * 3).map { UInt8(($0 * 37) % 256) }
    var size = 0
    _ = rgb.withUnsafeBytes { png_image_write_to_memory(&image, nil, &size, 0, $0.baseAddress, 0, nil) }
    var out = [UInt8](repeating: 0, count: size)
    _ = rgb.withUnsafeBytes { pixels in out.withUnsafeMutableBytes { png_image_write_to_memory(&image, $0.baseAddress, &size, 0, pixels.baseAddress, 0, nil) } }
    return Array(out.prefix(size))
}

/// A small valid RGB JPEG, in memory.
func jpegBytes(width: Int = 8, height: Int = 6) -> [UInt8] {
    let rgb = (0..<width * height * 3).map { UInt8(($0 * 37) % 256) }
    let handle = tjInitCompress()!
    defer { tjDestroy(handle) }
    var jpeg: UnsafeMutablePointer<UInt8>? = nil
    var size: UInt = 0
    _ = rgb.withUnsafeBufferPointer { tjCompress2(handle, $0.baseAddress, Int32(width), 0, Int32(height), Int32(TJPF_RGB.rawValue), &jpeg, &size, Int32(TJSAMP_420.rawValue), 90, 0) }
    defer { tjFree(jpeg) }
    return Array(UnsafeBufferPointer(start: jpeg, count: Int(size)))
}

/// The PNG with its IHDR claiming another size (CRC fixed, so only the size is a lie).
func pngClaiming(width: UInt32, height: UInt32) -> [UInt8] {
    var bytes = pngBytes()
    // Signature (8), length (4), "IHDR" (4), then width and height, big-endian.
    for (offset, value) in [(16, width), (20, height)] {
        for i in 0..<4 { bytes[offset + i] = UInt8(truncatingIfNeeded: value >> (24 - 8 * UInt32(i))) }
    }
    let crc = bytes[12..<29].withUnsafeBufferPointer { UInt32(crc32(0, $0.baseAddress, 17)) }
    for i in 0..<4 { bytes[29 + i] = UInt8(truncatingIfNeeded: crc >> (24 - 8 * UInt32(i))) }
    return bytes
}

/// The JPEG with its start-of-frame marker claiming another size.
func jpegClaiming(width: UInt16, height: UInt16) -> [UInt8] {
    var bytes = jpegBytes()
    guard let sof = (0..<bytes.count - 9).first(where: { bytes[$0] == 0xFF && (bytes[$0 + 1] == 0xC0 || bytes[$0 + 1] == 0xC2) }) else { return bytes }
    // FF C0, length (2), precision (1), height (2), width (2).
    (bytes[sof + 5], bytes[sof + 6]) = (UInt8(height >> 8), UInt8(height & 0xFF))
    (bytes[sof + 7], bytes[sof + 8]) = (UInt8(width >> 8), UInt8(width & 0xFF))
    return bytes
}

/// A safetensors file from a raw header text and data bytes.
func safetensorsBytes(header: String, data: [UInt8]) -> [UInt8] {
    var headerBytes = Array(header.utf8)
    while headerBytes.count % 8 != 0 { headerBytes.append(0x20) }
    return (0..<8).map { UInt8(truncatingIfNeeded: UInt64(headerBytes.count) >> (8 * UInt64($0))) } + headerBytes + data
}

let fixtureConfigJSON = parityFixtures.appendingPathComponent("hf-vit/config.json")

/// The fixture's config.json with `changes` applied (NSNull removes a key).
func configData(_ changes: [String: Any]) throws -> Data {
    var object = try JSONSerialization.jsonObject(with: Data(contentsOf: fixtureConfigJSON)) as! [String: Any]
    for (key, value) in changes { object[key] = value is NSNull ? nil : value }
    return try JSONSerialization.data(withJSONObject: object)
}

@Suite("Hostile input: files")
struct HostileFileTests {
    @Test func configValuesAreRangeCheckedWithTheFileAndKeyNamed() throws {
        let cases: [([String: Any], String)] = [
            (["mlp_ratio": 1e30, "intermediate_size": NSNull()], "'mlp_ratio'"),
            (["hidden_size": 1 << 40], "'hidden_size' is 1099511627776, outside 1...16384"),
            (["hidden_size": -32], "'hidden_size' is -32"),
            (["num_hidden_layers": 1_000_000], "'num_hidden_layers' is 1000000, outside 1...256"),
            (["num_channels": 1], "num_channels 1 is not supported"),
            (["image_size": 1e300], "'image_size' is 1e+300"),
            (["image_size": 2.5], "'image_size' must be an integer"),
            (["patch_size": true], "'patch_size' must be an integer"),
            (["layer_norm_eps": -1], "'layer_norm_eps'"),
            (["image_mean": [0.5, 0.5], "image_std": [0.5, 0.5]], "image_mean and image_std need 3 values"),
            (["image_mean": [0.5, 0.5, 0.5]], "'image_mean' and 'image_std' must be given together"),
            (["image_std": [0.5, 0, 0.5], "image_mean": [0.5, 0.5, 0.5]], "image_std"),
            (["id2label": ["0": "a", "7": "b"]], "'id2label' keys must be the class indices"),
            (["num_labels": 3], "'num_labels' is 3 but 'id2label' names 5 classes"),
            (["num_attention_heads": 3], "hidden_size 32 is not divisible by num_attention_heads 3"),
        ]
        for (changes, message) in cases {
            let error = #expect(throws: ConfigError.self, "\(changes)") {
                try ViTConfig.fromHuggingFace(try configData(changes), path: "/models/x/config.json")
            }
            #expect(error?.description.hasPrefix("/models/x/config.json: ") == true, "\(error?.description ?? "")")
            #expect(error?.description.contains(message) == true, "\(changes): '\(message)' not in \(error?.description ?? "")")
        }
        // The general rule: no integer key accepts a value outside its range or a non-integer.
        for key in ["image_size", "patch_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"] {
            for value: Any in [0, -1, Int.max, 1e19, 0.5, "12", [1]] {
                #expect(throws: ConfigError.self, "\(key) = \(value)") { try ViTConfig.fromHuggingFace(try configData([key: value]), path: "c") }
            }
        }
        #expect(try ViTConfig.fromHuggingFace(try configData([:]), path: "c").0.width == 32)
    }

    @Test func duplicateNamesInASafetensorsHeaderAreRefused() throws {
        let four = [UInt8](repeating: 0, count: 4)
        let duplicate = #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"\u0061":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#
        let error = #expect(throws: CheckpointError.self) { try SafeTensorsFile(data: Data(safetensorsBytes(header: duplicate, data: four)), path: "d.safetensors") }
        #expect(error?.description == "d.safetensors: the header names 'a' twice")
        let metadata = #"{"__metadata__":{"k":"1","k":"2"},"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}"#
        #expect(throws: CheckpointError.self) { try SafeTensorsFile(data: Data(safetensorsBytes(header: metadata, data: four)), path: "m") }
        // Equal keys in different objects are fine.
        let distinct = #"{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[0],"data_offsets":[4,4]}}"#
        #expect(try SafeTensorsFile(data: Data(safetensorsBytes(header: distinct, data: four)), path: "ok").names.sorted() == ["a", "b"])
    }

    @Test func nonFiniteFrozenWeightsAreRefusedAtLoadNamingTheTensor() throws {
        let source = try SafeTensorsFile(contentsOf: parityFixtures.appendingPathComponent("hf-vit/model.safetensors"))
        let directory = try makeTemporaryDirectory()
        let damaged = "vit.encoder.layer.1.intermediate.dense.weight"
        let tensors = try source.entries.map { entry -> (name: String, shape: [Int], values: [Float]) in
            var values = try source.floats(entry.name)
            if entry.name == damaged { values[5] = .nan; values[9] = .infinity }
            return (entry.name, entry.shape, values)
        }
        try SafeTensorsFile.write(tensors, to: directory.appendingPathComponent("model.safetensors"))
        try FileManager.default.copyItem(at: fixtureConfigJSON, to: directory.appendingPathComponent("config.json"))
        let error = #expect(throws: CheckpointError.self) { try PretrainedCheckpoint(directory: directory).load(imageSize: 16, classes: 5) }
        #expect(error?.tensor == damaged)
        #expect(error?.problem == "holds 2 non-finite values (the first, nan, at flat index 5)")
    }

    @Test func positionTablesWithoutPatchPositionsAreRefused() throws {
        let source = try SafeTensorsFile(contentsOf: parityFixtures.appendingPathComponent("hf-vit/model.safetensors"))
        for tokens in [0, 1, 3] {
            let tensors = try source.entries.map { entry -> (name: String, shape: [Int], values: [Float]) in
                if entry.name == "vit.embeddings.position_embeddings" { return (entry.name, [1, tokens, 32], uniformValues(tokens * 32)) }
                return (entry.name, entry.shape, try source.floats(entry.name))
            }
            let url = try makeTemporaryDirectory().appendingPathComponent("model.safetensors")
            try SafeTensorsFile.write(tensors, to: url)
            let config = try ViTConfig.fromHuggingFace(fixtureConfigJSON).0
            let error = #expect(throws: CheckpointError.self, "\(tokens) tokens") {
                try CheckpointReader(file: try SafeTensorsFile(contentsOf: url), naming: .hfViT, config: config)
            }
            #expect(error?.tensor == "vit.embeddings.position_embeddings")
        }
    }

    @Test func aHugeConfigWithASmallFileFailsFastWithoutAllocating() throws {
        // num_hidden_layers at the limit and a file with two: the missing keys are listed, and
        // nothing is allocated for them (this took minutes and 24 GB before).
        let directory = try makeTemporaryDirectory()
        try FileManager.default.copyItem(at: parityFixtures.appendingPathComponent("hf-vit/model.safetensors"), to: directory.appendingPathComponent("model.safetensors"))
        try configData(["num_hidden_layers": 256, "hidden_size": 16384, "intermediate_size": 131_072, "num_attention_heads": 128])
            .write(to: directory.appendingPathComponent("config.json"))
        let started = Date()
        #expect(throws: ConfigError.self) { try PretrainedCheckpoint(directory: directory).load(imageSize: 16, classes: 5) }
        try configData(["num_hidden_layers": 200]).write(to: directory.appendingPathComponent("config.json"))
        let error = #expect(throws: CheckpointError.self) { try PretrainedCheckpoint(directory: directory).load(imageSize: 16, classes: 5) }
        #expect(error?.problem.contains("missing keys: vit.encoder.layer.2.") == true)
        #expect(Date().timeIntervalSince(started) < 30)
    }

    @Test func adaptersWithNonFiniteValuesOrAlphaAreRefused() throws {
        let original = try SafeTensorsFile(contentsOf: parityFixtures.appendingPathComponent("serial/initial.safetensors"))
        let tensors = try original.entries.map { entry -> (name: String, shape: [Int], values: [Float]) in
            var values = try original.floats(entry.name)
            if entry.name == "vit.encoder.layer.0.serial_lora.A" { values[0] = -.infinity }
            return (entry.name, entry.shape, values)
        }
        let directory = try makeTemporaryDirectory()
        let damaged = directory.appendingPathComponent("inf.safetensors")
        try SafeTensorsFile.write(tensors, metadata: original.metadata, to: damaged)
        let error = #expect(throws: CheckpointError.self) { try AdapterFile.load(damaged) }
        #expect(error?.tensor == "vit.encoder.layer.0.serial_lora.A")

        let clean = try original.entries.map { (name: $0.name, shape: $0.shape, values: try original.floats($0.name)) }
        for (key, value, message) in [("alpha", "nan", "metadata 'alpha' is nan"), ("rank", "-3", "rank -3 must be between 1"),
                                      ("class_names", "[1, 2]", "'class_names' is not a JSON list of strings"),
                                      ("class_names", #"["a"]"#, "metadata names 1 classes but the head has 5")] {
            var metadata = original.metadata
            metadata[key] = value
            let url = directory.appendingPathComponent("\(key).safetensors")
            try SafeTensorsFile.write(clean, metadata: metadata, to: url)
            let error = #expect(throws: CheckpointError.self, "\(key) = \(value)") { try AdapterFile.load(url) }
            #expect(error?.description.contains(message) == true, "\(error?.description ?? "")")
        }
    }

    @Test func idxHeadersThatOverflowOrLieAreRefused() throws {
        func header(_ magic: UInt32, _ dimensions: [UInt32]) -> [UInt8] {
            ([magic] + dimensions).flatMap { value in (0..<4).map { UInt8(truncatingIfNeeded: value >> (24 - 8 * UInt32($0))) } }
        }
        let labels = header(0x801, [2]) + [0, 1]
        let cases: [([UInt8], String)] = [
            (header(0x803, [0xFFFF_FFFF, 0xFFFF_FFFF, 0xFFFF_FFFF]) + [1, 2, 3], "truncated?"),
            (header(0x803, [2, 0, 5]), "images of 0x5 pixels"),
            (header(0x803, [2, 2, 2]) + [UInt8](repeating: 7, count: 7), "7 pixel bytes for 2 images of 2x2"),
            (header(0x803, [3, 1, 1]) + [1, 2, 3], "2 labels (and 2 label bytes) for 3 images"),
        ]
        for (images, message) in cases {
            let error = #expect(throws: DatasetError.self) {
                try IDX.parse(images: images, imagesPath: "img", labels: labels, labelsPath: "lab", name: "x", classNames: [])
            }
            #expect(error?.description.contains(message) == true, "\(error?.description ?? "")")
        }
        let set = try IDX.parse(images: header(0x803, [2, 1, 2]) + [1, 2, 3, 4], imagesPath: "i", labels: labels, labelsPath: "l", name: "ok", classNames: [])
        #expect(set.count == 2 && set.classNames == ["0", "1"])
    }

    @Test func imageHeadersAreCheckedBeforeTheDecoderAllocates() throws {
        let hugePNG = pngClaiming(width: 100_000, height: 100_000)
        let error = #expect(throws: DatasetError.self) { try ImageFolder.decode(hugePNG, path: "huge.png") }
        #expect(error?.description.contains("huge.png: PNG header says 100000x100000 pixels, more than the limit") == true, "\(error?.description ?? "")")
        // Within the limit but more than a file of this size can encode.
        let liar = #expect(throws: DatasetError.self) { try ImageFolder.decode(pngClaiming(width: 4000, height: 4000), path: "liar.png") }
        #expect(liar?.description.contains("more than") == true && liar?.description.contains("bytes of PNG can hold") == true)
        let hugeJPEG = #expect(throws: DatasetError.self) { try ImageFolder.decode(jpegClaiming(width: 40000, height: 40000), path: "huge.jpg") }
        #expect(hugeJPEG?.description.contains("huge.jpg: JPEG header says 40000x40000 pixels") == true, "\(hugeJPEG?.description ?? "")")
        // The unmodified images still decode.
        #expect(try ImageFolder.decode(pngBytes(), path: "a.png").1 == 8)
        #expect(try ImageFolder.decode(jpegBytes(), path: "b.jpg").2 == 6)
    }

    @Test func damagedCompiledKernelCacheEntriesAreInvalidNeverATrap() throws {
        let cache = ProgramDiskCache(directory: try makeTemporaryDirectory())
        try cache.store(key: "k", binary: [1, 2, 3, 4, 5])
        let bytes = [UInt8](try Data(contentsOf: cache.fileURL(forKey: "k")))
        #expect(ProgramDiskCache.parse(bytes, key: "k", name: "e") == .hit([1, 2, 3, 4, 5]))
        // Every single-bit flip in the header (magic, key length, key, binary length, checksum).
        let headerBytes = 8 + 4 + 1 + 8 + 32
        for index in 0..<headerBytes {
            for bit in 0..<8 {
                var flipped = bytes
                flipped[index] ^= UInt8(1 << bit)
                guard case .invalid = ProgramDiskCache.parse(flipped, key: "k", name: "e") else {
                    Issue.record("byte \(index) bit \(bit): a damaged entry was accepted")
                    continue
                }
            }
        }
        // The top bit of the binary length (the case that crashed every later run).
        var top = bytes
        top[8 + 4 + 1 + 7] |= 0x80
        #expect(ProgramDiskCache.parse(top, key: "k", name: "e") == .invalid("truncated or oversized binary in e"))
    }
}

@Suite("Hostile input: runs")
struct HostileRunTests {
    func writeState(_ directory: URL, step: Int) throws {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let state = TrainingState(step: step, position: LoaderPosition(), bestAccuracy: nil, bestStep: nil, seed: 0)
        try JSONEncoder().encode(state).write(to: directory.appendingPathComponent("state.json"))
    }

    @Test func noSequenceOfKillsDuringCheckpointSwapsLeavesARunUnresumable() throws {
        let root = try makeTemporaryDirectory()
        let last = root.appendingPathComponent("last"), old = root.appendingPathComponent("last.old"), tmp = root.appendingPathComponent("last.tmp")
        // Killed between the two renames: last moved to last.old, the complete last.tmp not yet in place.
        try writeState(old, step: 50)
        try writeState(tmp, step: 100)
        #expect(try TrainingCheckpoint.loadState(TrainingCheckpoint.resolve(last)).step == 100)
        #expect(!FileManager.default.fileExists(atPath: tmp.path))

        // The resumed run's first save is killed after moving last away, while writing last.tmp
        // (no state.json yet).
        try FileManager.default.removeItem(at: old)
        try FileManager.default.moveItem(at: last, to: old)
        try FileManager.default.createDirectory(at: tmp, withIntermediateDirectories: true)
        #expect(try TrainingCheckpoint.loadState(TrainingCheckpoint.resolve(last)).step == 100)

        // Nothing complete: a clear error, not a crash.
        let empty = try makeTemporaryDirectory().appendingPathComponent("last")
        try FileManager.default.createDirectory(at: empty.appendingPathExtension("tmp"), withIntermediateDirectories: true)
        #expect(throws: CheckpointError.self) { try TrainingCheckpoint.resolve(empty) }
    }

    @Test func statesOutsideTheirRangesAreRefused() throws {
        let directory = try makeTemporaryDirectory()
        let bad: [(TrainingState, String)] = [
            (TrainingState(step: -1, position: LoaderPosition(), bestAccuracy: nil, bestStep: nil, seed: 0), "step -1 is negative"),
            (TrainingState(step: 3, position: LoaderPosition(epoch: 0, batch: -2), bestAccuracy: nil, bestStep: nil, seed: 0), "is negative"),
            (TrainingState(step: 3, position: LoaderPosition(), bestAccuracy: .nan, bestStep: 1, seed: 0), "bestAccuracy nan"),
            (TrainingState(step: 3, position: LoaderPosition(), bestAccuracy: 0.5, bestStep: 9, seed: 0), "bestStep 9 is outside 0...3"),
            (TrainingState(step: 3, position: LoaderPosition(epoch: .max, batch: 0), bestAccuracy: nil, bestStep: nil, seed: 0), "is beyond any run"),
        ]
        for (state, message) in bad {
            // JSONEncoder refuses NaN; write that one by hand.
            let text = state.bestAccuracy?.isNaN == true
                ? #"{"step":3,"position":{"epoch":0,"batch":0},"bestAccuracy":"nan","bestStep":1,"seed":0}"#
                : String(decoding: try JSONEncoder().encode(state), as: UTF8.self)
            try Data(text.utf8).write(to: directory.appendingPathComponent("state.json"))
            let error = #expect(throws: CheckpointError.self) { try TrainingCheckpoint.loadState(directory) }
            if state.bestAccuracy?.isNaN != true { #expect(error?.description.contains(message) == true, "\(error?.description ?? "")") }
        }
    }

    @Test func aResumedPositionPastTheEpochIsRefusedNotTrainedOnNothing() throws {
        let engine = try makeEngine()
        let model = try tinyModel(engine, method: .probe)
        let train = try Synthetic.make(count: 32, size: 16, seed: 5)
        var options = TrainingOptions()
        (options.steps, options.warmupSteps, options.batchSize, options.checkpointInterval) = (4, 1, 16, 0)
        let output = try makeTemporaryDirectory()
        _ = try Trainer(model: model, train: train, test: train, options: options, output: output, classNames: train.classNames).run()
        let stateURL = output.appendingPathComponent("checkpoints/last/state.json")
        var state = try JSONDecoder().decode(TrainingState.self, from: Data(contentsOf: stateURL))
        (state.step, state.bestStep) = (2, nil)
        // Writes `state` and resumes from it: the error the resume is refused with.
        func resumeError(_ state: TrainingState) throws -> CheckpointError? {
            try JSONEncoder().encode(state).write(to: stateURL)
            return #expect(throws: CheckpointError.self) {
                try Trainer(model: model, train: train, test: train, options: options, output: output, classNames: train.classNames,
                            resume: output.appendingPathComponent("checkpoints/last"))
            }
        }
        state.position.batch = 2  // 32 images in batches of 16: batches 0 and 1 only
        let error = try resumeError(state)
        #expect(error?.description.contains("batch 2 is past the 2 batches of an epoch") == true, "\(error?.description ?? "")")
        // More epochs than 2 steps of one batch can reach (the overflow that trapped the loader).
        state.position.epoch = 3
        let epochs = try resumeError(state)
        #expect(epochs?.description.contains("epoch 3 is more than 2 steps of 1 batches can reach") == true, "\(epochs?.description ?? "")")
        state.position.epoch = 0
        state.position.batch = 0
        state.step = 9
        _ = try resumeError(state)
    }

    @Test func anOutputDirectoryHoldsOneRunAtATime() throws {
        let directory = try makeTemporaryDirectory()
        do {
            let first = try RunDirectory(directory, mode: .fresh)
            // Another holder (here another open file description in this process) is refused at once.
            let error = #expect(throws: RunDirectoryError.self) { try RunDirectory(directory, mode: .fresh) }
            #expect(error?.description.contains("is in use by another training (pid \(getpid()))") == true, "\(error?.description ?? "")")
            try Data("[]".utf8).write(to: directory.appendingPathComponent("run.json"))
            try Data("{}\n".utf8).write(to: directory.appendingPathComponent("metrics.jsonl"))
            withExtendedLifetime(first) {}
        }
        // Released with its owner; a fresh run then refuses the directory that holds a run.
        let refused = #expect(throws: RunDirectoryError.self) { try RunDirectory(directory, mode: .fresh) }
        #expect(refused?.description.contains("already holds a run (run.json, metrics.jsonl)") == true)
        #expect(refused?.description.contains("--resume \(directory.path)") == true)
        _ = try RunDirectory(directory, mode: .resume)
        // Overwrite removes the run's files only when asked to, and nothing else.
        try Data("mine".utf8).write(to: directory.appendingPathComponent("notes.txt"))
        let overwrite = try RunDirectory(directory, mode: .overwrite)
        #expect(FileManager.default.fileExists(atPath: directory.appendingPathComponent("run.json").path))
        try overwrite.prepareForFreshRun()
        #expect(!FileManager.default.fileExists(atPath: directory.appendingPathComponent("run.json").path))
        #expect(!FileManager.default.fileExists(atPath: directory.appendingPathComponent("metrics.jsonl").path))
        #expect(FileManager.default.fileExists(atPath: directory.appendingPathComponent("notes.txt").path))
        #expect(throws: RunDirectoryError.self) { try RunDirectory(try makeTemporaryDirectory(), mode: .resume) }
    }

    @Test func nonFiniteOptionsAreRefused() {
        var options = TrainingOptions()
        for change: (inout TrainingOptions) -> Void in [
            { $0.learningRate = .nan }, { $0.learningRate = .infinity }, { $0.maxGradientNorm = .nan }, { $0.weightDecay = .nan },
            { $0.loraPlusRatio = .infinity }, { $0.momentum = .nan }, { $0.labelSmoothing = .nan }, { $0.steps = -1 },
            { $0.checkpointInterval = -1 }, { $0.evaluationInterval = -5 },
        ] {
            options = TrainingOptions()
            change(&options)
            #expect(throws: TrainingError.self, "\(options)") { try options.validate() }
        }
    }

    @Test func evaluationRefusesNonFiniteLossesEmptySetsAndForeignLabels() throws {
        let engine = try makeEngine()
        let model = try tinyModel(engine, method: .probe, classes: 3)
        let preprocessor = Preprocessor(outputSize: 16, mean: model.config.mean, std: model.config.std)
        let tenClasses = try Synthetic.make(count: 16, size: 16, seed: 2)
        let foreign = #expect(throws: EvaluationError.self) {
            try Evaluator.evaluate(model, try BatchLoader(dataset: tenClasses, preprocessor: preprocessor, batchSize: 8, shuffle: false, augment: false, seed: 0, repeats: false))
        }
        #expect(foreign?.description.contains("but the model's head has 3 classes") == true)
        let empty = tenClasses.prefix(0)
        #expect(throws: EvaluationError.self) {
            try Evaluator.evaluate(model, try BatchLoader(dataset: empty, preprocessor: preprocessor, batchSize: 8, shuffle: false, augment: false, seed: 0, repeats: false))
        }
        let three = try Synthetic.make(count: 16, size: 16, classes: 3, seed: 2)
        try model.parameters.tensor("head.bias").upload([Float.nan, 0, 0])
        let nan = #expect(throws: EvaluationError.self) {
            try Evaluator.evaluate(model, try BatchLoader(dataset: three, preprocessor: preprocessor, batchSize: 8, shuffle: false, augment: false, seed: 0, repeats: false))
        }
        #expect(nan?.description.contains("non-finite logits") == true)
    }
}

/// Writes `count` PNGs of `size` x `size` for each class into DIR/split/class/.
func writeImageFolder(_ root: URL, split: String, classes: [String], count: Int, size: Int = 16) throws {
    for (label, name) in classes.enumerated() {
        let directory = root.appendingPathComponent(split).appendingPathComponent(name)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        for index in 0..<count {
            var image = png_image()
            image.version = UInt32(PNG_IMAGE_VERSION)
            (image.width, image.height, image.format) = (UInt32(size), UInt32(size), UInt32(PNG_FORMAT_RGB))
            let pixels = (0..<size * size * 3).map { UInt8(truncatingIfNeeded: $0 * (label + 1) + index * 11) }
            let path = directory.appendingPathComponent("\(index).png").path
            _ = pixels.withUnsafeBytes { png_image_write_to_file(&image, path, 0, $0.baseAddress, 0, nil) }
        }
    }
}

@Suite("Hostile input: the command line", .serialized)
struct HostileCommandLineTests {
    let fixtureModel = parityFixtures.appendingPathComponent("hf-vit").path
    var common: [String] { ["--model", fixtureModel, "--image-size", "16", "--data", "synthetic", "--batch", "8"] }

    /// The rule: a number out of its range, or not finite, is a usage error naming the flag,
    /// before any work; never a trap.
    @Test func numbersOutOfRangeAreUsageErrorsNeverTraps() throws {
        let cases: [([String], String)] = [
            (["train"] + common + ["--train-limit=-5"], "--train-limit must be at least 1, got -5"),
            (["train"] + common + ["--test-limit", "0"], "--test-limit must be at least 1, got 0"),
            (["train"] + common + ["--epochs", "inf"], "--epochs must be in (0, 1000000], got inf"),
            (["train"] + common + ["--epochs", "1e300"], "--epochs must be in (0, 1000000]"),
            (["train"] + common + ["--batch", "0", "--epochs", "1"], "--batch must be at least 1, got 0"),
            (["train"] + common + ["--steps", "3", "--epochs", "1"], "give --steps or --epochs, not both"),
            (["train"] + common + ["--image-size=-16"], "--image-size must be in 1...4096, got -16"),
            (["train"] + common + ["--image-size", "99984"], "--image-size must be in 1...4096, got 99984"),
            (["train"] + common + ["--max-grad-norm", "nan"], "--max-grad-norm must be finite"),
            (["train"] + common + ["--lr", "nan"], "--lr must be positive and finite, got nan"),
            (["train"] + common + ["--alpha", "inf"], "--alpha must be finite"),
            (["train"] + common + ["--warmup=-1"], "--warmup must not be negative"),
            (["train"] + common + ["--accumulation", "0"], "--accumulation must be at least 1"),
            (["train"] + common + ["--momentum", "1"], "--momentum must be in [0, 1)"),
            (["train"] + common + ["--resume", "x", "--overwrite"], "give one"),
            (["eval", "--adapter", "a", "--test-limit", "0"], "--test-limit must be at least 1, got 0"),
            (["eval", "--adapter", "a", "--batch", "0"], "--batch must be at least 1, got 0"),
            (["predict", "--adapter", "a", "--top=-1", "x.png"], "--top must be at least 1, got -1"),
            (["bench", "train", "--steps=-1"], "--steps must be in 1...1000000, got -1"),
            (["bench", "train", "--patch", "0"], "--patch must be in 1...112, got 0"),
            (["bench", "train", "--method", "lora", "--targets", "q,x"], "unknown LoRA target 'x'"),
            (["bench", "gemm", "--min-seconds", "nan"], "--min-seconds must be in [0, 3600], got nan"),
        ]
        for (arguments, message) in cases {
            let result = try runSloragpu(arguments)
            #expect(!result.signaled && result.status == 64, "\(arguments): status \(result.status), \(result.standardError)")
            #expect(result.standardError.contains(message), "\(arguments): '\(message)' not in: \(result.standardError)")
        }
    }

    @Test func evalOfNonFiniteWeightsFailsInsteadOfPrintingAnAccuracy() throws {
        let output = try makeTemporaryDirectory()
        let train = try runSloragpu(["train"] + common + ["--steps", "2", "--warmup", "0", "--output", output.path])
        #expect(train.status == 0, "\(train.standardError)")
        let adapterURL = output.appendingPathComponent("adapter.safetensors")
        let adapter = try SafeTensorsFile(contentsOf: adapterURL)
        var metadata = adapter.metadata
        metadata["alpha"] = "nan"
        let tensors = try adapter.entries.map { (name: $0.name, shape: $0.shape, values: try adapter.floats($0.name)) }
        let nanAlpha = output.appendingPathComponent("nan-alpha.safetensors")
        try SafeTensorsFile.write(tensors, metadata: metadata, to: nanAlpha)
        let result = try runSloragpu(["eval", "--adapter", nanAlpha.path, "--model", fixtureModel, "--data", "synthetic"])
        #expect(result.status != 0 && !result.signaled)
        #expect(result.standardError.contains("metadata 'alpha' is nan"), "\(result.standardError)")
        #expect(!result.standardOutput.contains("accuracy"))

        // A 5-class head on 10-class data: refused up front, not a crash or an accuracy of 0.
        let probe = try makeTemporaryDirectory()
        let trainedOnFive = try runSloragpu(["train", "--model", fixtureModel, "--image-size", "16", "--data", "synthetic", "--batch", "8",
                                             "--method", "probe", "--steps", "1", "--warmup", "0", "--train-limit", "16", "--test-limit", "8", "--output", probe.path])
        #expect(trainedOnFive.status == 0, "\(trainedOnFive.standardError)")
        let folder = try makeTemporaryDirectory()
        try writeImageFolder(folder, split: "train", classes: ["a", "b", "c"], count: 2)
        try writeImageFolder(folder, split: "test", classes: ["a", "b", "c"], count: 2)
        let mismatch = try runSloragpu(["eval", "--adapter", probe.appendingPathComponent("adapter.safetensors").path, "--model", fixtureModel,
                                        "--data", "folder:\(folder.path)"])
        #expect(mismatch.status != 0 && !mismatch.signaled)
        #expect(mismatch.standardError.contains("scores 10 classes") && mismatch.standardError.contains("has 3"), "\(mismatch.standardError)")
    }

    @Test func foldersWhoseTrainAndTestClassesDifferAreRefused() throws {
        let folder = try makeTemporaryDirectory()
        try writeImageFolder(folder, split: "train", classes: ["cat", "dog"], count: 2)
        try writeImageFolder(folder, split: "test", classes: ["cat", "emu"], count: 1)
        let result = try runSloragpu(["train", "--model", fixtureModel, "--image-size", "16", "--data", "folder:\(folder.path)", "--batch", "2",
                                      "--steps", "1", "--output", try makeTemporaryDirectory().path])
        #expect(result.status != 0)
        #expect(result.standardError.contains("different classes") && result.standardError.contains("'emu'"), "\(result.standardError)")
    }

    @Test func classNamesAreShownSafelyOnATerminal() throws {
        let folder = try makeTemporaryDirectory()
        let hostile = "red\u{1B}[31m\nnext"
        try writeImageFolder(folder, split: "train", classes: ["plain", hostile], count: 2)
        try writeImageFolder(folder, split: "test", classes: ["plain", hostile], count: 1)
        let output = try makeTemporaryDirectory()
        let train = try runSloragpu(["train", "--model", fixtureModel, "--image-size", "16", "--data", "folder:\(folder.path)", "--batch", "2",
                                     "--steps", "2", "--warmup", "0", "--output", output.path])
        #expect(train.status == 0, "\(train.standardError)")
        let image = folder.appendingPathComponent("test/plain/0.png").path
        let predict = try runSloragpu(["predict", "--adapter", output.appendingPathComponent("adapter.safetensors").path, "--model", fixtureModel, image])
        #expect(predict.status == 0, "\(predict.standardError)")
        #expect(!predict.standardOutput.contains("\u{1B}"))
        #expect(predict.standardOutput.contains("red\\u{1B}[31m\\nnext"), "\(predict.standardOutput)")
    }

    @Test func aSecondFreshRunNeverReplacesAnEarlierRun() throws {
        let output = try makeTemporaryDirectory()
        let first = try runSloragpu(["train"] + common + ["--steps", "2", "--warmup", "0", "--output", output.path])
        #expect(first.status == 0, "\(first.standardError)")
        let runJSON = try Data(contentsOf: output.appendingPathComponent("run.json"))
        let metrics = try Data(contentsOf: output.appendingPathComponent("metrics.jsonl"))
        // A fresh run leaves the earlier run exactly as it was.
        let refused = try runSloragpu(["train"] + common + ["--steps", "3", "--output", output.path])
        #expect(refused.status != 0)
        #expect(refused.standardError.contains("already holds a run") && refused.standardError.contains("--overwrite"), "\(refused.standardError)")
        #expect(try Data(contentsOf: output.appendingPathComponent("run.json")) == runJSON)
        // --overwrite that fails at start-up also keeps it: before the directory is claimed (a bad
        // rank) and after (a batch larger than the 512 synthetic images, found by the loader).
        for bad in [["--rank", "999"], ["--batch", "1000"]] {
            let failedOverwrite = try runSloragpu(["train"] + common + ["--steps", "3", "--overwrite", "--output", output.path] + bad)
            #expect(failedOverwrite.status != 0, "\(bad)")
            #expect(!failedOverwrite.standardError.contains("already holds"), "\(failedOverwrite.standardError)")
        }
        #expect(try Data(contentsOf: output.appendingPathComponent("metrics.jsonl")) == metrics)
        // A successful --overwrite starts the metrics anew.
        let replaced = try runSloragpu(["train"] + common + ["--steps", "3", "--warmup", "0", "--overwrite", "--output", output.path])
        #expect(replaced.status == 0, "\(replaced.standardError)")
        let lines = try String(contentsOf: output.appendingPathComponent("metrics.jsonl"), encoding: .utf8).split(separator: "\n")
        #expect(lines.filter { $0.contains("\"kind\":\"step\"") }.count == 3)
    }

    @Test func sigtermSavesLikeCtrlCAndPrintsTheCommandThatResumes() throws {
        let output = try makeTemporaryDirectory()
        let (process, errorPipe) = try startTrainingUntilTwoSteps(common + ["--steps", "100000"], output: output)
        process.terminate()  // SIGTERM
        let stderr = String(decoding: errorPipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationReason == .exit && process.terminationStatus == 143, "\(stderr)")
        #expect(stderr.contains("SIGTERM: saving a checkpoint"))
        let command = stderr.split(separator: "\n").first { $0.hasPrefix("Resume with: ") }.map { String($0.dropFirst("Resume with: ".count)) }
        #expect(command == "\(try sloragpuExecutable().path) train --resume \(output.path)", "\(stderr)")
        let state = try TrainingCheckpoint.loadState(output.appendingPathComponent("checkpoints/last"))
        #expect(state.step >= 1)
    }
}
