import Foundation
import Testing
@testable import Tensors
@testable import Formats
@testable import Optimizers
@testable import ViT

@Suite("ViT model")
struct ModelTests {
    /// Central differences of the device loss against the device gradient, on coordinates in
    /// every kind of layer (embedding, attention, MLP, norms, head, adapters). fp32 losses, so
    /// a large step and a loose relative tolerance; the PyTorch parity tests are the tight check.
    @Test(arguments: ["full", "serial", "lora"])
    func gradientsMatchFiniteDifferencesOfTheLoss(method: String) throws {
        let engine = try makeEngine()
        let (model, _) = try fixtureModel(engine, naming: .hfViT, method: method)
        let (images, labels) = try fixtureBatch(engine)
        func loss() throws -> Double {
            _ = try model.forward(images)
            return Double(try model.loss(labels: labels).loss.download()[0])
        }
        try model.parameters.zeroGradients()
        _ = try model.forward(images)
        try model.backward(try model.loss(labels: labels).dLogits)

        let probes: [(String, Int)]
        switch method {
        case "full":
            probes = [("patch.weight", 17), ("patch.bias", 3), ("cls", 5), ("pos", 40), ("blocks.0.norm1.weight", 2), ("blocks.0.qkv.weight", 100),
                      ("blocks.0.qkv.bias", 70), ("blocks.1.proj.weight", 33), ("blocks.1.norm2.bias", 7), ("blocks.1.fc1.weight", 500),
                      ("blocks.1.fc2.bias", 9), ("norm.weight", 4), ("head.weight", 12)]
        case "serial":
            probes = [("blocks.0.serial.A", 11), ("blocks.0.serial.B", 50), ("blocks.1.serial.A", 70), ("blocks.1.serial.B", 3), ("head.bias", 1)]
        default:
            probes = [("blocks.0.lora.q.A", 5), ("blocks.0.lora.k.B", 9), ("blocks.1.lora.v.A", 40), ("blocks.1.lora.o.B", 60), ("blocks.0.lora.o.A", 2)]
        }
        let step: Float = 1e-2
        for (name, index) in probes {
            let tensor = try model.parameters.tensor(name)
            let analytic = Double(try model.parameters.gradient(name)!.download()[index])
            let original = try tensor.download()
            var values = original
            values[index] = original[index] + step
            try tensor.upload(values)
            let plus = try loss()
            values[index] = original[index] - step
            try tensor.upload(values)
            let minus = try loss()
            try tensor.upload(original)
            let numeric = (plus - minus) / (2 * Double(step))
            #expect(abs(numeric - analytic) <= 2e-4 + 2e-2 * abs(analytic), "\(method) \(name)[\(index)]: analytic \(analytic), numeric \(numeric)")
        }
    }

    @Test(arguments: ["serial", "lora"])
    func mergedWeightsGiveTheAdaptedForward(method: String) throws {
        let engine = try makeEngine()
        let (model, adapter) = try fixtureModel(engine, naming: .hfViT, method: method)
        let (images, _) = try fixtureBatch(engine)
        let adapted = try model.forward(images).download()

        let base = try CheckpointReader(file: try SafeTensorsFile(contentsOf: parityFixtures.appendingPathComponent("hf-vit/model.safetensors")),
                                        naming: .hfViT, config: model.config).values
        let merged = try Merge.merged(base: base, adapter: adapter)
        // The merged weights, written as an HF ViT checkpoint and read back, run with no adapter.
        let directory = try makeTemporaryDirectory()
        let file = directory.appendingPathComponent("model.safetensors")
        try CheckpointExport.write(merged, config: model.config, naming: .hfViT, classNames: adapter.classNames, to: directory)
        let (config, naming, names) = try ViTConfig.fromHuggingFace(directory.appendingPathComponent("config.json"))
        #expect(naming == .hfViT && names == adapter.classNames && config == model.config)
        let reader = try CheckpointReader(file: try SafeTensorsFile(contentsOf: file), naming: .hfViT, config: config)
        #expect(reader.hasHead)
        let plain = try ViTModel.assemble(engine, config: config, method: .probe, backbone: reader.values, seed: 0)
        expectClose(try plain.forward(images).download(), adapted, atol: 2e-5, rtol: 1e-4, "\(method) merged forward")
    }

    @Test(arguments: ["serial", "lora", "full", "probe"])
    func adaptersRoundTripExactly(method: String) throws {
        let engine = try makeEngine()
        let (model, adapter) = try fixtureModel(engine, naming: .hfViT, method: method)
        let values = try model.parameters.download(model.parameters.trainableNames)
        let file = try makeTemporaryDirectory().appendingPathComponent("adapter.safetensors")
        var contents = AdapterFile.Contents(method: adapter.method, config: model.config, classNames: adapter.classNames, values: values)
        if method == .some("full") { contents.values = try model.parameters.download(model.parameters.specs.map(\.name)) }
        try AdapterFile.save(contents, to: file)
        let loaded = try AdapterFile.load(file)
        #expect(loaded.method == adapter.method && loaded.config == model.config && loaded.classNames == adapter.classNames)
        for name in model.parameters.trainableNames { #expect(loaded.values[name] == values[name], "\(name)") }
        if method == "serial" {
            // Small: two rank-4 pairs plus the head, named as documented.
            let saved = try SafeTensorsFile(contentsOf: file)
            #expect(Set(saved.names) == ["vit.encoder.layer.0.serial_lora.A", "vit.encoder.layer.0.serial_lora.B",
                                         "vit.encoder.layer.1.serial_lora.A", "vit.encoder.layer.1.serial_lora.B",
                                         "classifier.weight", "classifier.bias"])
            #expect(saved.metadata["method"] == "serial" && saved.metadata["rank"] == "4" && saved.metadata["alpha"] == "8.0")
        }
        if method == "lora" {
            let saved = try SafeTensorsFile(contentsOf: file)
            #expect(saved.entry("base_model.model.vit.encoder.layer.1.attention.attention.query.lora_A.weight")?.shape == [4, 32])
            #expect(saved.entry("base_model.model.vit.encoder.layer.0.attention.output.dense.lora_B.weight")?.shape == [32, 4])
        }
    }
}

@Suite("Bad input")
struct BadInputTests {
    func write(_ bytes: [UInt8], _ name: String = "bad.safetensors") throws -> URL {
        let url = try makeTemporaryDirectory().appendingPathComponent(name)
        try Data(bytes).write(to: url)
        return url
    }

    func file(header: String, dataBytes: Int) throws -> URL {
        var bytes = [UInt8](header.utf8)
        let length = UInt64(bytes.count)
        bytes = (0..<8).map { UInt8(truncatingIfNeeded: length >> (8 * UInt64($0))) } + bytes + [UInt8](repeating: 0, count: dataBytes)
        return try write(bytes)
    }

    func expectError(_ url: URL, contains parts: [String], sourceLocation: SourceLocation = #_sourceLocation) {
        do {
            _ = try SafeTensorsFile(contentsOf: url)
            Issue.record("no error for \(url.lastPathComponent)", sourceLocation: sourceLocation)
        } catch {
            let text = "\(error)"
            #expect(text.contains(url.path), "the error names the file: \(text)", sourceLocation: sourceLocation)
            for part in parts { #expect(text.contains(part), "'\(part)' missing from: \(text)", sourceLocation: sourceLocation) }
        }
    }

    @Test func malformedSafetensorsHeadersNameFileTensorAndProblem() throws {
        expectError(try write([1, 2, 3]), contains: ["too short"])
        expectError(try write([255, 255, 0, 0, 0, 0, 0, 0, 123]), contains: ["runs past the end"])
        expectError(try file(header: "{not json", dataBytes: 0), contains: ["not valid JSON"])
        expectError(try file(header: #"{"w":{"dtype":"F32","shape":[2],"data_offsets":[0,16]}}"#, dataBytes: 8), contains: ["'w'", "outside"])
        expectError(try file(header: #"{"w":{"dtype":"Q4","shape":[2],"data_offsets":[0,8]}}"#, dataBytes: 8), contains: ["'w'", "unknown dtype 'Q4'"])
        expectError(try file(header: #"{"w":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, dataBytes: 8), contains: ["'w'", "needs 12 bytes"])
        expectError(try file(header: #"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#, dataBytes: 12),
                    contains: ["'b'", "overlaps tensor 'a'"])
        expectError(try file(header: #"{"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}}"#, dataBytes: 8), contains: ["'w'", "non-negative"])
        // A readable file whose tensor cannot convert.
        let ints = try SafeTensorsFile(contentsOf: try file(header: #"{"i":{"dtype":"I64","shape":[1],"data_offsets":[0,8]}}"#, dataBytes: 8))
        #expect(throws: CheckpointError.self) { try ints.floats("i") }
    }

    @Test func halfAndBFloat16ConvertExactly() throws {
        // F16 1.5 (0x3E00), -2 (0xC000), smallest subnormal (0x0001); BF16 3.0 (0x4040).
        let url = try file(header: #"{"h":{"dtype":"F16","shape":[3],"data_offsets":[0,6]},"b":{"dtype":"BF16","shape":[1],"data_offsets":[6,8]}}"#, dataBytes: 0)
        var bytes = [UInt8](try Data(contentsOf: url))
        bytes += [0x00, 0x3E, 0x00, 0xC0, 0x01, 0x00, 0x40, 0x40]
        try Data(bytes).write(to: url)
        let file = try SafeTensorsFile(contentsOf: url)
        #expect(try file.floats("h") == [1.5, -2, 0x1p-24])
        #expect(try file.floats("b") == [3])
    }

    @Test func truncatedCheckpointIsAnErrorNotACrash() throws {
        let original = try Data(contentsOf: parityFixtures.appendingPathComponent("hf-vit/model.safetensors"))
        let url = try write([UInt8](original.prefix(original.count - 100)), "model.safetensors")
        expectError(url, contains: ["outside"])
    }

    @Test func missingUnexpectedAndMisShapedKeysAreListed() throws {
        let source = try SafeTensorsFile(contentsOf: parityFixtures.appendingPathComponent("hf-vit/model.safetensors"))
        var tensors: [(name: String, shape: [Int], values: [Float])] = []
        for entry in source.entries where entry.name != "vit.encoder.layer.1.output.dense.bias" {
            var shape = entry.shape, values = try source.floats(entry.name)
            if entry.name == "vit.layernorm.weight" { shape = [16]; values = Array(values.prefix(16)) }
            tensors.append((entry.name, shape, values))
        }
        tensors.append(("vit.encoder.layer.7.extra", [1], [0]))
        let url = try makeTemporaryDirectory().appendingPathComponent("model.safetensors")
        try SafeTensorsFile.write(tensors, to: url)
        let (config, _, _) = try ViTConfig.fromHuggingFace(parityFixtures.appendingPathComponent("hf-vit/config.json"))
        let error = try #require(throws: CheckpointError.self) {
            try CheckpointReader(file: try SafeTensorsFile(contentsOf: url), naming: .hfViT, config: config)
        }
        #expect(error.file == url.path)
        #expect(error.problem.contains("missing keys: vit.encoder.layer.1.output.dense.bias"))
        #expect(error.problem.contains("vit.layernorm.weight is [16], expected [32]"))
        #expect(error.problem.contains("unexpected keys: vit.encoder.layer.7.extra"))
    }

    @Test func badConfigsAndMethodsAreRejected() throws {
        var config = try ViTConfig.preset("vit-s", patchSize: 14, imageSize: 112, classes: 10)
        config.imageSize = 100
        #expect(throws: ConfigError.self) { try config.validate() }
        #expect(throws: ConfigError.self) { try ViTConfig.preset("vit-huge") }
        #expect(throws: ConfigError.self) { try FineTuningMethod.serial(rank: 0, alpha: 1).validate(width: 384) }
        #expect(throws: ConfigError.self) { try FineTuningMethod.serial(rank: 385, alpha: 1).validate(width: 384) }
        #expect(throws: ConfigError.self) { try FineTuningMethod.lora(rank: 4, alpha: 4, targets: []).validate(width: 384) }
        let error = #expect(throws: ConfigError.self) { try config.validate() }
        #expect(error?.description.contains("not divisible by the patch size 14") == true)
    }

    @Test func adapterFilesAreValidated() throws {
        let original = try SafeTensorsFile(contentsOf: parityFixtures.appendingPathComponent("serial/initial.safetensors"))
        var tensors = try original.entries.map { (name: $0.name, shape: $0.shape, values: try original.floats($0.name)) }
        tensors.removeAll { $0.name == "vit.encoder.layer.1.serial_lora.B" }
        let url = try makeTemporaryDirectory().appendingPathComponent("adapter.safetensors")
        try SafeTensorsFile.write(tensors, metadata: original.metadata, to: url)
        let error = try #require(throws: CheckpointError.self) { try AdapterFile.load(url) }
        #expect(error.problem.contains("missing vit.encoder.layer.1.serial_lora.B"))
        try SafeTensorsFile.write(tensors, metadata: [:], to: url)
        #expect(throws: CheckpointError.self) { try AdapterFile.load(url) }
    }
}

/// The real DINOv2-S/14 (scripts/convert_dinov2.py) on a real Fashion-MNIST image at 112 px
/// against transformers' Dinov2Model (scripts/make_dinov2_fixture.py). Runs where the converted
/// weights exist (SLORAGPU_WEIGHTS_DIR or weights/dinov2-small in the repository).
let dinov2Directory: URL = {
    if let explicit = ProcessInfo.processInfo.environment["SLORAGPU_WEIGHTS_DIR"] { return URL(fileURLWithPath: explicit) }
    return parityFixtures.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("weights/dinov2-small")
}()

@Suite("Real DINOv2-S/14", .enabled(if: FileManager.default.fileExists(atPath: dinov2Directory.appendingPathComponent("model.safetensors").path)))
struct RealCheckpointTests {
    @Test func forwardOnARealImageMatchesTransformers() throws {
        let engine = try makeEngine()
        let checkpoint = try PretrainedCheckpoint(directory: dinov2Directory)
        #expect(checkpoint.naming == .hfDinov2 && checkpoint.config.imageSize == 518 && checkpoint.config.width == 384)
        let (config, values, loadedHead) = try checkpoint.load(imageSize: 112, classes: 10)
        #expect(!loadedHead)
        let model = try ViTModel.assemble(engine, config: config, method: .probe, backbone: values, seed: 1)
        let fixture = try SafeTensorsFile(contentsOf: parityFixtures.deletingLastPathComponent().appendingPathComponent("dinov2/fashion_mnist_112.safetensors"))
        _ = try model.forward(try engine.tensor(try fixture.floats("image"), shape: [1, 3, 112, 112]))
        let pooled = try model.pooledFeatures!.download(), expected = try fixture.floats("pooled")
        let maxDifference = zip(pooled, expected).map { abs($0 - $1) }.max()!
        print("DINOv2-S/14 real image, 112 px: max |sloragpu - transformers| over 384 features = \(maxDifference) (max |feature| \(expected.map(abs).max()!))")
        expectClose(pooled, expected, atol: 1e-3, rtol: 1e-3, "DINOv2 pooled features")
    }
}

@Suite("Serial LoRA fused and unfused")
struct SerialPathTests {
    /// The fused two-operand GEMMs and the materialised z/dz path agree on logits and every gradient.
    @Test func fusedAndUnfusedPathsAgree() throws {
        let engine = try makeEngine()
        let (fused, adapter) = try fixtureModel(engine, naming: .hfViT, method: "serial")
        let values = try fused.parameters.download(fused.parameters.specs.map(\.name))
        let unfused = try ViTModel(engine: engine, config: fused.config, method: adapter.method,
                                   parameters: try ViTParameters(engine: engine, specs: fused.parameters.specs, values: values), fusedSerial: false)
        let (images, labels) = try fixtureBatch(engine)
        var results: [[String: [Float]]] = []
        for model in [fused, unfused] {
            try model.parameters.zeroGradients()
            var result = ["logits": try model.forward(images).download()]
            try model.backward(try model.loss(labels: labels).dLogits)
            for name in model.parameters.trainableNames { result[name] = try model.parameters.gradient(name)!.download() }
            results.append(result)
        }
        for (name, value) in results[0] {
            expectClose(value, results[1][name]!, atol: 1e-5, rtol: 1e-4, "fused vs unfused \(name)")
        }
    }
}

@Suite("Activation plans")
struct ActivationPlanTests {
    /// One forward and backward of the fixture batch per plan: logits and every trainable
    /// gradient by name, and the saved bytes.
    static func logitsAndGradients(_ model: ViTModel, under plans: [ActivationMemory], images: Tensor, labels: Tensor) throws
        -> ([[String: [Float]]], [Int]) {
        var results: [[String: [Float]]] = [], bytes: [Int] = []
        for plan in plans {
            model.activationMemory = plan
            try model.parameters.zeroGradients()
            var result = ["logits": try model.forward(images).download()]
            try model.backward(try model.loss(labels: labels).dLogits)
            for name in model.parameters.trainableNames { result[name] = try model.parameters.gradient(name)!.download() }
            results.append(result)
            bytes.append(model.savedActivationBytes)
        }
        return (results, bytes)
    }

    /// The backward's rebuild reruns the forward's own kernels on the same inputs, so the
    /// recompute and selective plans must give the keep plan's logits and gradients bit for bit,
    /// while keeping fewer bytes (recompute the fewest); a probe and full fine-tuning have one
    /// plan. The fixture's two blocks share the scratch, so a backward that skipped a rebuild
    /// would read the other block's u1 or xMid.
    @Test(arguments: ["serial", "lora"])
    func recomputeAndSelectiveGiveTheKeptGradientsExactlyWithLessMemory(method: String) throws {
        let engine = try makeEngine()
        let (model, _) = try fixtureModel(engine, naming: .hfViT, method: method)
        let (images, labels) = try fixtureBatch(engine)
        let plans: [ActivationMemory] = [.keep, .recompute, .selective]
        let (results, bytes) = try Self.logitsAndGradients(model, under: plans, images: images, labels: labels)
        for (plan, result) in zip(plans, results).dropFirst() {
            for (name, value) in results[0] {
                #expect(value == result[name]!, "keep vs \(plan): \(name) differs")
            }
        }
        #expect(bytes[1] < bytes[2] && bytes[2] < bytes[0], "recompute keeps \(bytes[1]) bytes, selective \(bytes[2]), keep \(bytes[0])")
    }
}

extension ActivationPlanTests {
    /// keep-bf16: the forward is the fp32 one bit for bit (the copies are made after it), the
    /// gradients differ from keep's by bf16's rounding of what the backward reads (the bound:
    /// 8 unit roundoffs, 8 x 2^-8 = 3.1e-2, on each tensor's relative error; measured here up to
    /// 7.6e-3 for Serial LoRA and 1.9e-2 for LoRA), and the same against PyTorch's fp32
    /// gradients. Both blocks share the fp32 scratch, so a backward that skipped the widening
    /// would read the other block's tensors and miss the bound by far. Saved bytes below keep's.
    @Test(arguments: ["serial", "lora"])
    func keepBF16GivesTheForwardExactlyAndGradientsWithinBF16Rounding(method: String) throws {
        let engine = try makeEngine()
        let (model, _) = try fixtureModel(engine, naming: .hfViT, method: method)
        let (images, labels) = try fixtureBatch(engine)
        let expected = try SafeTensorsFile(contentsOf: parityFixtures.appendingPathComponent("\(method)/expected.safetensors"))
        let (results, bytes) = try Self.logitsAndGradients(model, under: [.keep, .keepBF16], images: images, labels: labels)
        #expect(results[1]["logits"]! == results[0]["logits"]!)
        let bound = 8 * 0x1p-8
        var largest = 0.0
        for name in model.parameters.trainableNames {
            let error = relativeError(results[1][name]!, results[0][name]!)
            let againstPyTorch = relativeError(results[1][name]!, try expected.floats("grad/" + name))
            largest = max(largest, error)
            #expect(error <= bound, "keep-bf16 vs keep, gradient of \(name): relative error \(error)")
            #expect(againstPyTorch <= bound, "keep-bf16 vs PyTorch, gradient of \(name): relative error \(againstPyTorch)")
        }
        #expect(largest > 0, "the backward read no rounded value")
        #expect(bytes[1] < bytes[0], "keep-bf16 keeps \(bytes[1]) bytes, keep \(bytes[0])")
    }

    /// A forward for evaluation gives the training forward's logits bit for bit with far fewer
    /// bytes, and a backward after it is refused rather than reading stale tensors.
    @Test(arguments: ["serial", "lora", "full"])
    func evaluationForwardKeepsNothingPerBlock(method: String) throws {
        let engine = try makeEngine()
        let (model, _) = try fixtureModel(engine, naming: .hfViT, method: method)
        let (images, labels) = try fixtureBatch(engine)
        let training = try model.forward(images).download()
        let trainingBytes = model.savedActivationBytes
        let evaluation = try model.forward(images, keepForBackward: false).download()
        #expect(evaluation == training)
        #expect(model.savedActivationBytes < trainingBytes)
        #expect(throws: TensorError.self) { try model.backward(try model.loss(labels: labels).dLogits) }
    }
}
