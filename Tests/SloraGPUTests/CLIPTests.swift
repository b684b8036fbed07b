import Foundation
import Testing
@testable import Tensors
@testable import Formats
@testable import Optimizers
@testable import ViT

/// CLIP vision towers beyond the parity fixtures (ParityTests runs every method on both
/// namings): the pooling kernels, the layouts against the parameter table, plain checkpoints
/// giving transformers' and open_clip's outputs, exports that round-trip, merge and PEFT.
@Suite("CLIP vision towers")
struct CLIPTests {
    static let namings: [CheckpointNaming] = [.hfCLIP, .openCLIP]

    static func checkpoint(_ naming: CheckpointNaming) throws -> PretrainedCheckpoint {
        try PretrainedCheckpoint(directory: clipFixtures.appendingPathComponent(naming.rawValue))
    }

    @Test func meanOfPatchTokensForwardAndBackward() throws {
        let engine = try makeEngine()
        let (batch, tokens, width) = (3, 17, 13)
        let x = uniformValues(batch * tokens * width, seed: 1), dPooled = uniformValues(batch * width, seed: 2)
        let pooled = try engine.empty([batch, width])
        try engine.meanOfPatchTokens(try engine.tensor(x, shape: [batch * tokens, width]), batch: batch, into: pooled)
        let expected = (0..<batch * width).map { i in
            (1..<tokens).reduce(0.0) { $0 + Double(x[((i / width) * tokens + $1) * width + i % width]) } / Double(tokens - 1)
        }
        expectClose(try pooled.download(), expected, atol: 1e-6, rtol: 1e-5, "mean of patch tokens")
        let dx = try engine.tensor([Float](repeating: .nan, count: batch * tokens * width), shape: [batch * tokens, width])
        try engine.meanOfPatchTokensBackward(try engine.tensor(dPooled, shape: [batch, width]), batch: batch, into: dx)
        let wanted = (0..<batch * tokens * width).map { i -> Double in
            let (b, t, c) = (i / (tokens * width), (i / width) % tokens, i % width)
            return t == 0 ? 0 : Double(dPooled[b * width + c]) / Double(tokens - 1)
        }
        expectClose(try dx.download(), wanted, atol: 0, rtol: 1e-6, "its backward")
        #expect(throws: TensorError.self) { try engine.meanOfPatchTokens(try engine.zeros([3, width]), batch: 3, into: pooled) }
    }

    /// Every layout names exactly the parameter table's backbone tensors, in its order, for
    /// every naming and the architectures it is read with.
    @Test func layoutsCoverTheParameterTable() throws {
        let vit = try ViTConfig.preset("vit-s", patchSize: 16, imageSize: 64, classes: 3)
        var projected = vit, classifier = vit
        projected.architecture = .clipProjected(24)
        classifier.architecture = .clipClassifier
        let cases: [(CheckpointNaming, ViTConfig)] = [(.hfViT, vit), (.hfDinov2, vit), (.timm, vit), (.hfCLIP, classifier), (.hfCLIP, projected),
                                                      (.openCLIP, projected)]
        for (naming, config) in cases {
            let layout = CheckpointLayout(naming, config: config)
            let table = ParameterTable.specs(config, .full).filter { $0.role == .backbone }
            #expect(layout.tensors.map(\.name) == table.map(\.name), "\(naming.rawValue) \(config.architecture.pooling)")
            for (stored, spec) in zip(layout.tensors, table) {
                #expect(stored.keys.count * stored.form.shape.reduce(1, *) == spec.count, "\(naming.rawValue) \(spec.name)")
            }
            #expect(Set(layout.tensors.flatMap(\.keys)).count == layout.tensors.flatMap(\.keys).count, "\(naming.rawValue): a key used twice")
        }
        #expect(classifier.featureWidth == 384 && projected.featureWidth == 24)
        // Mean pooling keeps the final LayerNorm frozen even under full fine-tuning.
        #expect(ParameterTable.specs(classifier, .full).first { $0.name == "norm.weight" }?.trainable == false)
        #expect(ParameterTable.specs(projected, .full).first { $0.name == "norm.weight" }?.trainable == true)
    }

    /// A plain CLIPForImageClassification checkpoint (its own head) gives transformers' logits,
    /// and open_clip's tower with sloragpu's classifier the logits of open_clip's features (the
    /// probe fixtures start from each checkpoint's head, and the script checked both against
    /// transformers and open_clip).
    @Test(arguments: namings)
    func plainCheckpointsGiveTheirEcosystemsLogits(naming: CheckpointNaming) throws {
        let engine = try makeEngine()
        let checkpoint = try Self.checkpoint(naming)
        #expect(checkpoint.naming == naming && checkpoint.config.architecture.family == .clip)
        #expect(checkpoint.config.architecture.pooling == (naming == .hfCLIP ? .meanPatches : .cls))
        #expect(checkpoint.classNames == ["zero", "one", "two", "three", "four"])
        let loaded = try checkpoint.load()
        #expect(loaded.loadedHead)
        let model = try ViTModel.assemble(engine, config: loaded.config, method: .probe, backbone: loaded.values, seed: 0)
        let (images, _) = try fixtureBatch(engine, root: clipFixtures)
        let expected = try SafeTensorsFile(contentsOf: clipFixtures.appendingPathComponent("\(naming.rawValue)/probe/expected.safetensors"))
        expectClose(try model.forward(images, keepForBackward: false).download(), try expected.floats("logits"), atol: 2e-5, rtol: 1e-4,
                    "\(naming.rawValue) logits")
    }

    /// CLIPModel's vision tower with its visual projection gives transformers' image features
    /// (get_image_features); its text tower is ignored, and it has no classifier.
    @Test func clipModelGivesTransformersImageFeatures() throws {
        let engine = try makeEngine()
        let checkpoint = try PretrainedCheckpoint(directory: clipFixtures.appendingPathComponent("hf-clip-model"))
        #expect(checkpoint.naming == .hfCLIP && checkpoint.config.architecture == .clipProjected(24))
        let loaded = try checkpoint.load(classes: 3)
        #expect(!loaded.loadedHead && loaded.config.featureWidth == 24)
        let model = try ViTModel.assemble(engine, config: loaded.config, method: .probe, backbone: loaded.values, seed: 0)
        let (images, _) = try fixtureBatch(engine, root: clipFixtures)
        _ = try model.forward(images, keepForBackward: false)
        let features = try SafeTensorsFile(contentsOf: clipFixtures.appendingPathComponent("hf-clip-model/features.safetensors")).floats("features")
        expectClose(try #require(model.pooledFeatures).download(), features.map(Double.init), atol: 2e-5, rtol: 1e-4, "CLIPModel image features")
    }

    /// An export writes the same keys and shapes as the ecosystem's own file, reads back to the
    /// same values and architecture, and keeps the fingerprint.
    @Test(arguments: namings)
    func exportsRoundTripInTheirOwnNaming(naming: CheckpointNaming) throws {
        let checkpoint = try Self.checkpoint(naming)
        let loaded = try checkpoint.load()
        let directory = try makeTemporaryDirectory()
        try CheckpointExport.write(loaded.values, config: loaded.config, naming: naming.exportNaming, classNames: checkpoint.classNames, to: directory)
        let original = try SafeTensorsFile(contentsOf: clipFixtures.appendingPathComponent("\(naming.rawValue)/model.safetensors"))
        let written = try SafeTensorsFile(contentsOf: directory.appendingPathComponent("model.safetensors"))
        #expect(Set(written.names) == Set(original.names))
        for name in original.names { #expect(written.entry(name)?.shape == original.entry(name)?.shape, "\(name)") }
        let reread = try PretrainedCheckpoint(directory: directory)
        #expect(reread.naming == naming && reread.classNames == checkpoint.classNames)
        #expect(reread.config.architecture == loaded.config.architecture && reread.config.width == loaded.config.width)
        let again = try reread.load()
        #expect(again.values == loaded.values)
        #expect(BaseFingerprint.of(again.values, config: again.config) == BaseFingerprint.of(loaded.values, config: loaded.config))
        // A CLIP fingerprint differs from a ViT's of the same values.
        var asViT = loaded.config
        asViT.architecture = .vit
        #expect(BaseFingerprint.of(loaded.values, config: asViT) != BaseFingerprint.of(loaded.values, config: loaded.config))
    }

    /// Serial LoRA and LoRA merged into a CLIP base give the adapted logits with no adapter;
    /// LoRA also round-trips through PEFT's format in CLIP's module names.
    @Test(arguments: namings, ["serial", "lora"])
    func mergeAndPEFT(naming: CheckpointNaming, method: String) throws {
        let engine = try makeEngine()
        let (model, adapter) = try fixtureModel(engine, naming: naming, method: method)
        let (images, _) = try fixtureBatch(engine, root: clipFixtures)
        let adapted = try model.forward(images).download()
        let checkpoint = try Self.checkpoint(naming)
        let merged = try Merge.merged(base: try checkpoint.load(classes: adapter.config.classes).values, adapter: adapter)
        let directory = try makeTemporaryDirectory()
        try CheckpointExport.write(merged, config: adapter.config, naming: naming, classNames: adapter.classNames, to: directory)
        let plain = try PretrainedCheckpoint(directory: directory).load()
        #expect(plain.loadedHead)
        let mergedModel = try ViTModel.assemble(engine, config: plain.config, method: .probe, backbone: plain.values, seed: 0)
        expectClose(try mergedModel.forward(images).download(), adapted.map(Double.init), atol: 1e-4, rtol: 1e-4, "\(naming.rawValue) \(method) merged")

        guard method == "lora" else { return }
        let peft = try makeTemporaryDirectory()
        try PEFTAdapter.write(adapter, to: peft, naming: .transformers5, baseModel: "clip")
        let weights = try SafeTensorsFile(contentsOf: peft.appendingPathComponent(PEFTAdapter.weightsFile))
        #expect(weights.names.contains("base_model.model.vision_model.encoder.layers.1.self_attn.out_proj.lora_B.weight"))
        let config = try JSONSerialization.jsonObject(with: Data(contentsOf: peft.appendingPathComponent(PEFTAdapter.configFile))) as? [String: Any]
        #expect(config?["target_modules"] as? [String] == ["q_proj", "k_proj", "v_proj", "out_proj"])
        let reread = try PEFTAdapter.load(config: peft.appendingPathComponent(PEFTAdapter.configFile), weights: peft.appendingPathComponent(PEFTAdapter.weightsFile),
                                          base: PEFTAdapter.Base(config: adapter.config, classNames: adapter.classNames))
        #expect(reread.method == adapter.method && reread.values == adapter.values)
    }

    @Test func hostileCLIPConfigsAreRefusedByName() throws {
        let openCLIP = try Data(contentsOf: clipFixtures.appendingPathComponent("open-clip/open_clip_config.json"))
        let object = try #require(try JSONSerialization.jsonObject(with: openCLIP) as? [String: Any])
        for (key, value, message) in [("attentional_pool", true as Any, "attentional_pool true is not supported"),
                                      ("pool_type", "avg", "pool_type 'avg' is not supported"),
                                      ("layers", [3, 4, 6, 3], "ResNet vision towers"),
                                      ("width", 1e300, "'width' is 1e+300"),
                                      ("head_width", 7, "not a multiple of head_width 7")] as [(String, Any, String)] {
            var changed = object
            var model = changed["model_cfg"] as! [String: Any]
            var vision = model["vision_cfg"] as! [String: Any]
            vision[key] = value
            model["vision_cfg"] = vision
            changed["model_cfg"] = model
            let data = try JSONSerialization.data(withJSONObject: changed)
            #expect { _ = try ViTConfig.fromOpenCLIP(data, path: "c.json") } throws: { "\($0)".contains(message) && "\($0)".contains("c.json") }
        }
        let hf = try Data(contentsOf: clipFixtures.appendingPathComponent("hf-clip/config.json"))
        var json = try #require(try JSONSerialization.jsonObject(with: hf) as? [String: Any])
        var vision = json["vision_config"] as! [String: Any]
        vision["hidden_act"] = "relu"
        json["vision_config"] = vision
        #expect { _ = try ViTConfig.fromHuggingFace(try JSONSerialization.data(withJSONObject: json), path: "config.json") } throws: {
            "\($0)".contains("hidden_act 'relu' is not supported")
        }
        json.removeValue(forKey: "vision_config")
        #expect { _ = try ViTConfig.fromHuggingFace(try JSONSerialization.data(withJSONObject: json), path: "config.json") } throws: {
            "\($0)".contains("needs a 'vision_config' object")
        }
        // A ViT adapter does not fit a CLIP base of the same shape.
        let vitAdapter = try AdapterFile.load(parityFixtures.appendingPathComponent("serial/initial.safetensors"))
        let clipConfig = try Self.checkpoint(.hfCLIP).config
        #expect { try vitAdapter.checkFits(clipConfig, source: "--model") } throws: { "\($0)".contains("trained on a vit model") }
    }
}

@Suite("sloragpu on CLIP", .serialized)
struct CLIPCLITests {
    /// Train on CLIP (HF naming), then eval and merge; the merge is a CLIPForImageClassification.
    @Test(arguments: CLIPTests.namings)
    func trainEvalAndMerge(naming: CheckpointNaming) throws {
        let model = clipFixtures.appendingPathComponent(naming.rawValue).path
        let output = try makeTemporaryDirectory()
        let train = try runSloragpu(["train", "--model", model, "--image-size", "16", "--data", "synthetic", "--batch", "8", "--steps", "3",
                                     "--warmup", "1", "--method", "lora", "--output", output.path])
        #expect(train.status == 0, "\(train.standardError)")
        let adapter = output.appendingPathComponent("adapter.safetensors").path
        let file = try SafeTensorsFile(contentsOf: URL(fileURLWithPath: adapter))
        #expect(file.names.contains("base_model.model.vision_model.encoder.layers.0.self_attn.q_proj.lora_A.weight"))
        let eval = try runSloragpu(["eval", "--adapter", adapter, "--model", model, "--data", "synthetic"])
        #expect(eval.status == 0 && eval.standardOutput.contains("accuracy"), "\(eval.standardError)")
        let merged = output.appendingPathComponent("merged")
        let merge = try runSloragpu(["merge", "--adapter", adapter, "--model", model, "--output", merged.path])
        #expect(merge.status == 0, "\(merge.standardError)")
        let checkpoint = try PretrainedCheckpoint(directory: merged)
        #expect(checkpoint.naming == naming && checkpoint.config.classes == 10 && checkpoint.config.architecture.family == .clip)
        let plainEval = try runSloragpu(["eval", "--model", merged.path, "--data", "synthetic"])
        #expect(plainEval.status == 0, "\(plainEval.standardError)")
    }
}
