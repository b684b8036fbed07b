import Datasets
import Foundation
import Testing
@testable import Tensors
@testable import Training
@testable import Formats
@testable import Optimizers
@testable import ViT

/// Fixtures written by scripts/make_peft_fixtures.py with transformers 5.23 / 4.57 and PEFT 0.21.
let peftFixtures = parityFixtures.deletingLastPathComponent().appendingPathComponent("peft")

/// The parity fixture's HF ViT base as PEFT sees it.
func hfViTBase() throws -> PEFTAdapter.Base {
    let checkpoint = try PretrainedCheckpoint(directory: parityFixtures.appendingPathComponent("hf-vit"))
    return PEFTAdapter.Base(config: checkpoint.config, classNames: checkpoint.classNames, layerScale1: { try checkpoint.layerScale1($0) })
}

/// `adapter` on the backbone of `directory` (its own head when `adapter` is nil).
func model(_ engine: Engine, base directory: URL, adapter: AdapterFile.Contents?) throws -> ViTModel {
    let checkpoint = try PretrainedCheckpoint(directory: directory)
    let method = adapter?.method ?? .probe
    let (config, backbone, _) = try checkpoint.load(imageSize: adapter?.config.imageSize, classes: adapter?.config.classes)
    return try ViTModel.assemble(engine, config: config, method: method, backbone: backbone, adapter: adapter, seed: 0)
}

func expectedLogits(_ name: String) throws -> [Float] {
    try SafeTensorsFile(contentsOf: peftFixtures.appendingPathComponent("expected/\(name).safetensors")).floats("logits")
}

/// A 16 px image through `config`'s normalisation, as predict prepares it.
func preparedImage(_ engine: Engine, _ url: URL, config: ViTConfig) throws -> Tensor {
    let (rgb, width, height) = try ImageFolder.decode(url)
    let dataset = try ImageDataset(name: "image", height: height, width: width, channels: 3, classNames: ["?"], pixels: rgb, labels: [0])
    var values = [Float](repeating: 0, count: 3 * config.imageSize * config.imageSize)
    Preprocessor(outputSize: config.imageSize, mean: config.mean, std: config.std).prepare(dataset, index: 0, augmentation: nil, into: &values, offset: 0)
    return try engine.tensor(values, shape: [1, 3, config.imageSize, config.imageSize])
}

@Suite("Interop with transformers and PEFT")
struct InteropTests {
    // fp32 against PyTorch fp32, as the parity tests.
    let atol = 2e-5, rtol = 1e-4

    @Test(arguments: ["vit-t5", "vit-t4", "rslora-t5"])
    func peftAdaptersGivePEFTsLogits(_ name: String) throws {
        let engine = try makeEngine()
        let directory = peftFixtures.appendingPathComponent(name)
        let adapter = try PEFTAdapter.load(config: directory.appendingPathComponent("adapter_config.json"),
                                           weights: directory.appendingPathComponent("adapter_model.safetensors"), base: try hfViTBase())
        let targets: [LoRATarget] = name.hasPrefix("rslora") ? [.q, .v] : [.q, .k, .v, .o]
        // rsLoRA: alpha / sqrt(r) = 8 / 2 is expressed as alpha' / r with alpha' = 16.
        #expect(adapter.method == .lora(rank: 4, alpha: name.hasPrefix("rslora") ? 16 : 8, targets: targets))
        #expect(adapter.classNames == ["zero", "one", "two", "three", "four"])
        let network = try model(engine, base: parityFixtures.appendingPathComponent("hf-vit"), adapter: adapter)
        let logits = try network.forward(try fixtureBatch(engine).images, keepForBackward: false).download()
        expectClose(logits, try expectedLogits(name), atol: atol, rtol: rtol, "\(name) logits")
    }

    /// PEFT on DINOv2 applies LayerScale after the output projection; sloragpu folds it in, so an
    /// o adapter's B must be scaled by lambda1. The hf-dinov2 fixture folds to exactly the hf-vit
    /// weights, so the vit-t5 adapter renamed for DINOv2 (B_o divided by lambda1) must give the
    /// same logits.
    @Test func peftAdaptersOnDINOv2AreScaledByLayerScale() throws {
        let engine = try makeEngine()
        let source = try SafeTensorsFile(contentsOf: peftFixtures.appendingPathComponent("vit-t5/adapter_model.safetensors"))
        let dinov2 = parityFixtures.appendingPathComponent("hf-dinov2")
        let checkpoint = try PretrainedCheckpoint(directory: dinov2)
        var tensors: [(name: String, shape: [Int], values: [Float])] = []
        for entry in source.entries {
            var values = try source.floats(entry.name)
            var name = entry.name.replacingOccurrences(of: "base_model.model.vit.layers.", with: "base_model.model.dinov2.encoder.layer.")
            if name.contains("o_proj.lora_B"), let (layer, _, _) = PEFTAdapter.parseLoRAKey(name), let lambda = try checkpoint.layerScale1(layer) {
                for row in 0..<32 { for column in 0..<4 { values[row * 4 + column] /= lambda[row] } }
            }
            if name.hasPrefix("base_model.model.classifier") { name = entry.name }
            tensors.append((name, entry.shape, values))
        }
        let directory = try makeTemporaryDirectory()
        try SafeTensorsFile.write(tensors, metadata: ["format": "pt"], to: directory.appendingPathComponent("adapter_model.safetensors"))
        try FileManager.default.copyItem(at: peftFixtures.appendingPathComponent("vit-t5/adapter_config.json"), to: directory.appendingPathComponent("adapter_config.json"))
        var base = checkpoint.config
        base.imageSize = 16
        let adapter = try PEFTAdapter.load(config: directory.appendingPathComponent("adapter_config.json"), weights: directory.appendingPathComponent("adapter_model.safetensors"),
                                           base: PEFTAdapter.Base(config: base, classNames: [], layerScale1: { try checkpoint.layerScale1($0) }))
        let network = try model(engine, base: dinov2, adapter: adapter)
        let logits = try network.forward(try fixtureBatch(engine).images, keepForBackward: false).download()
        expectClose(logits, try expectedLogits("vit-t5"), atol: 1e-4, rtol: 1e-4, "DINOv2 PEFT logits")
    }

    /// What sloragpu writes is what PEFT loaded for the fixture (same tensors, same config), and
    /// PEFT's logits for it are sloragpu's logits for the adapter it came from.
    @Test(arguments: [PEFTNaming.transformers5, .transformers4])
    func sloragpusPEFTExportLoadsInPEFTWithTheSameLogits(_ naming: PEFTNaming) throws {
        let name = naming == .transformers5 ? "from-sloragpu-t5" : "from-sloragpu-t4"
        let adapter = try AdapterFile.load(parityFixtures.appendingPathComponent("lora/initial.safetensors"))
        let directory = try makeTemporaryDirectory()
        try PEFTAdapter.write(adapter, to: directory, naming: naming, baseModel: "base")
        let committed = peftFixtures.appendingPathComponent(name)
        let written = try SafeTensorsFile(contentsOf: directory.appendingPathComponent("adapter_model.safetensors"))
        let expected = try SafeTensorsFile(contentsOf: committed.appendingPathComponent("adapter_model.safetensors"))
        #expect(written.names.sorted() == expected.names.sorted())
        for name in expected.names { #expect(try written.floats(name) == expected.floats(name), "\(name)") }
        let config = { (url: URL) in try JSONSerialization.jsonObject(with: Data(contentsOf: url.appendingPathComponent("adapter_config.json"))) as? NSDictionary }
        #expect(try config(directory) == config(committed))

        let engine = try makeEngine()
        let network = try model(engine, base: parityFixtures.appendingPathComponent("hf-vit"), adapter: adapter)
        let logits = try network.forward(try fixtureBatch(engine).images, keepForBackward: false).download()
        expectClose(logits, try expectedLogits(name), atol: atol, rtol: rtol, "\(name): PEFT's logits against sloragpu's")
        // On a DINOv2 base, the export's "vit." names address the folded HF ViT form: read back
        // unscaled (only DINOv2-named adapters get LayerScale).
        let dinov2 = try PretrainedCheckpoint(directory: parityFixtures.appendingPathComponent("hf-dinov2"))
        var dinov2Config = dinov2.config
        dinov2Config.imageSize = 16
        let onDINOv2 = try PEFTAdapter.load(config: directory.appendingPathComponent("adapter_config.json"),
                                            weights: directory.appendingPathComponent("adapter_model.safetensors"),
                                            base: PEFTAdapter.Base(config: dinov2Config, classNames: [], layerScale1: { try dinov2.layerScale1($0) }))
        #expect(onDINOv2.values == adapter.values)
        // And reading the export back gives the adapter again.
        let back = try PEFTAdapter.load(config: directory.appendingPathComponent("adapter_config.json"),
                                        weights: directory.appendingPathComponent("adapter_model.safetensors"), base: try hfViTBase())
        #expect(back.method == adapter.method && back.values == adapter.values)
    }

    @Test func preprocessorConfigNormalisationIsHonoured() throws {
        let directory = peftFixtures.appendingPathComponent("preprocessor")
        let checkpoint = try PretrainedCheckpoint(directory: directory)
        #expect(checkpoint.normalizationSource == "preprocessor_config.json")
        #expect(checkpoint.config.mean == [0.5, 0.5, 0.5] && checkpoint.config.std == [0.5, 0.5, 0.5] && checkpoint.preferredImageSize == 16)
        let engine = try makeEngine()
        let network = try model(engine, base: directory, adapter: nil)
        let logits = try network.forward(try preparedImage(engine, directory.appendingPathComponent("image.png"), config: network.config), keepForBackward: false).download()
        expectClose(logits, try expectedLogits("preprocessor"), atol: atol, rtol: rtol, "logits through preprocessor_config.json")
    }

    /// merge's output through transformers' AutoImageProcessor and pipeline, and through sloragpu
    /// without an adapter, agree with the adapter it came from.
    /// A processor asking for more than sloragpu does is approximated with the difference
    /// printed, and its input size is only a default: an explicit size overrides even a bad one.
    @Test func preprocessorApproximationsAreNamedAndItsSizeIsADefault() throws {
        let directory = try makeTemporaryDirectory()
        for file in ["model.safetensors", "config.json"] {
            try FileManager.default.copyItem(at: peftFixtures.appendingPathComponent("preprocessor/\(file)"), to: directory.appendingPathComponent(file))
        }
        let processor: [String: Any] = ["image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5], "resample": 3,
                                        "size": ["shortest_edge": 18], "do_center_crop": false]
        try JSONSerialization.data(withJSONObject: processor).write(to: directory.appendingPathComponent("preprocessor_config.json"))
        let checkpoint = try PretrainedCheckpoint(directory: directory)
        #expect(checkpoint.preferredImageSize == 18)
        #expect(checkpoint.normalizationSource.contains("resample 3 done as bilinear") && checkpoint.normalizationSource.contains("shortest-edge"))
        #expect(throws: ConfigError.self) { _ = try checkpoint.load(imageSize: checkpoint.preferredImageSize) }  // 18: not a multiple of the patch 4
        #expect(try checkpoint.load(imageSize: 16).config.imageSize == 16)
    }

    @Test func aMergedCheckpointEvaluatesWithoutTheAdapter() throws {
        let engine = try makeEngine()
        let merged = peftFixtures.appendingPathComponent("merged")
        let plain = try model(engine, base: merged, adapter: nil)
        let image = try preparedImage(engine, peftFixtures.appendingPathComponent("preprocessor/image.png"), config: plain.config)
        let logits = try plain.forward(image, keepForBackward: false).download()
        expectClose(logits, try expectedLogits("merged"), atol: atol, rtol: rtol, "merged logits against transformers'")
        let top = try SafeTensorsFile(contentsOf: peftFixtures.appendingPathComponent("expected/merged.safetensors")).floats("top_index")
        #expect(logits.indices.max { logits[$0] < logits[$1] } == Int(top[0]))

        let adapter = try AdapterFile.load(parityFixtures.appendingPathComponent("lora/initial.safetensors"))
        let adapted = try model(engine, base: parityFixtures.appendingPathComponent("hf-vit"), adapter: adapter)
        let batch = try fixtureBatch(engine).images
        expectClose(try plain.forward(batch, keepForBackward: false).download(), try adapted.forward(batch, keepForBackward: false).download().map(Double.init),
                    atol: 1e-4, rtol: 1e-4, "merged against adapter")
    }

    @Test func anAdapterOnAnotherBaseIsRefused() throws {
        let values = try PretrainedCheckpoint(directory: parityFixtures.appendingPathComponent("hf-vit")).load(classes: 5).values
        let mergedValues = try PretrainedCheckpoint(directory: peftFixtures.appendingPathComponent("merged")).load(classes: 5).values
        let config = try PretrainedCheckpoint(directory: parityFixtures.appendingPathComponent("hf-vit")).load(classes: 5).config
        let original = BaseFingerprint.of(values, config: config), merged = BaseFingerprint.of(mergedValues, config: config)
        #expect(original != merged)
        // A DINOv2 base exported in HF ViT form (LayerScale folded) is the same base.
        let dinov2 = try PretrainedCheckpoint(directory: parityFixtures.appendingPathComponent("hf-dinov2")).load(imageSize: 16, classes: 5)
        var exportable = dinov2.values
        (exportable["head.weight"], exportable["head.bias"]) = ([Float](repeating: 0, count: 5 * 32), [Float](repeating: 0, count: 5))
        let exported = try makeTemporaryDirectory()
        try CheckpointExport.write(exportable, config: dinov2.config, naming: CheckpointNaming.hfDinov2.exportNaming, classNames: [], to: exported)
        let reloaded = try PretrainedCheckpoint(directory: exported).load(classes: 5)
        #expect(BaseFingerprint.of(reloaded.values, config: reloaded.config) == BaseFingerprint.of(dinov2.values, config: dinov2.config))
        var adapter = try AdapterFile.load(parityFixtures.appendingPathComponent("lora/initial.safetensors"))
        adapter.baseFingerprint = original
        try adapter.checkBase(original, path: "a")
        let error = #expect(throws: CheckpointError.self) { try adapter.checkBase(merged, path: "a.safetensors") }
        #expect(error?.description.contains("--allow-other-base") == true)
        // Recorded in the file and read back.
        let url = try makeTemporaryDirectory().appendingPathComponent("a.safetensors")
        try AdapterFile.save(adapter, to: url)
        #expect(try AdapterFile.load(url).baseFingerprint == original)
    }

    @Test func peftFilesWithUnsupportedOptionsOrKeysAreRefused() throws {
        let source = peftFixtures.appendingPathComponent("vit-t5")
        let original = try JSONSerialization.jsonObject(with: Data(contentsOf: source.appendingPathComponent("adapter_config.json"))) as! [String: Any]
        for (key, value, message) in [("use_dora", true as Any, "DoRA"), ("peft_type", "IA3", "only LORA"), ("bias", "all", "bias 'all'"),
                                      ("layers_to_transform", [0] as Any, "layers_to_transform"), ("rank_pattern", ["q_proj": 8] as Any, "rank_pattern"),
                                      ("r", 8, "is [4, 32], expected [8, 32]"), ("r", 1e300, "'r' is"),
                                      ("lora_alpha", 1e39, "not a finite fp32 value")] {
            var config = original
            config[key] = value
            let directory = try makeTemporaryDirectory()
            try FileManager.default.copyItem(at: source.appendingPathComponent("adapter_model.safetensors"), to: directory.appendingPathComponent("adapter_model.safetensors"))
            try JSONSerialization.data(withJSONObject: config).write(to: directory.appendingPathComponent("adapter_config.json"))
            let error = #expect(throws: CheckpointError.self, "\(key)") {
                try PEFTAdapter.load(config: directory.appendingPathComponent("adapter_config.json"), weights: directory.appendingPathComponent("adapter_model.safetensors"), base: try hfViTBase())
            }
            #expect(error?.description.contains(message) == true, "\(key): \(error?.description ?? "")")
        }
        #expect(PEFTAdapter.parseLoRAKey("base_model.model.vit.layers.3.mlp.fc1.lora_A.weight") == nil)
        #expect(PEFTAdapter.parseLoRAKey("base_model.model.vit.encoder.layer.2.attention.output.dense.lora_B.weight")! == (2, .o, "B"))
    }
}

@Suite("Interop on the command line", .serialized)
struct InteropCommandLineTests {
    let base = parityFixtures.appendingPathComponent("hf-vit").path

    @Test func loraRunsWritePEFTAndMergedModelsNeedNoAdapter() throws {
        let output = try makeTemporaryDirectory()
        let train = try runSloragpu(["train", "--model", base, "--image-size", "16", "--data", "synthetic", "--batch", "8", "--method", "lora",
                                     "--steps", "2", "--warmup", "0", "--peft-naming", "transformers4", "--output", output.path])
        #expect(train.status == 0, "\(train.standardError)")
        let peft = output.appendingPathComponent("peft")
        let config = try JSONSerialization.jsonObject(with: Data(contentsOf: peft.appendingPathComponent("adapter_config.json"))) as? [String: Any]
        #expect(config?["target_modules"] as? [String] == ["query", "key", "value", "attention.output.dense"])
        let summary = try JSONSerialization.jsonObject(with: Data(contentsOf: output.appendingPathComponent("summary.json"))) as? [String: Any]
        #expect(summary?["version"] as? String == SloraGPU.version && (summary?["classNames"] as? [String])?.count == 10)
        #expect((summary?["options"] as? [String: Any])?["learningRate"] != nil && summary?["baseFingerprint"] is String)

        let adapter = output.appendingPathComponent("adapter.safetensors").path
        // fp32 weights: the adapter, PEFT and merged paths then agree exactly (in 16 bits a merged
        // W + s B A rounds differently from W alone).
        let common = ["--data", "synthetic", "--test-limit", "32", "--weights", "fp32"]
        let withAdapter = try runSloragpu(["eval", "--adapter", adapter, "--model", base] + common)
        let viaPEFT = try runSloragpu(["eval", "--adapter", peft.path, "--model", base] + common)
        let merged = output.appendingPathComponent("merged")
        #expect(try runSloragpu(["merge", "--adapter", adapter, "--model", base, "--output", merged.path]).status == 0)
        let plain = try runSloragpu(["eval", "--model", merged.path] + common)
        // merge at another input size writes a model of that size (positions resized).
        let resized = output.appendingPathComponent("merged32")
        let merge32 = try runSloragpu(["merge", "--adapter", adapter, "--model", base, "--image-size", "32", "--output", resized.path])
        #expect(merge32.status == 0, "\(merge32.standardError)")
        #expect(try PretrainedCheckpoint(directory: resized).preferredImageSize == 32)
        let line = { (result: CommandResult) in result.standardOutput.split(separator: "\n").first { $0.hasPrefix("accuracy ") }.map(String.init) }
        #expect(withAdapter.status == 0 && viaPEFT.status == 0 && plain.status == 0, "\(withAdapter.standardError)\(viaPEFT.standardError)\(plain.standardError)")
        #expect(line(withAdapter) != nil && line(withAdapter) == line(viaPEFT) && line(withAdapter) == line(plain))
        #expect(withAdapter.standardOutput.contains("evaluating: batch"))

        // The adapter on the merged model would apply it twice: refused, unless asked for.
        let twice = try runSloragpu(["eval", "--adapter", adapter, "--model", merged.path] + common)
        #expect(twice.status != 0 && twice.standardError.contains("--allow-other-base"), "\(twice.standardError)")
        #expect(try runSloragpu(["eval", "--adapter", adapter, "--model", merged.path, "--allow-other-base"] + common).status == 0)
        // A backbone without a head needs an adapter.
        let headless = try runSloragpu(["eval", "--model", parityFixtures.appendingPathComponent("hf-dinov2").path, "--image-size", "16"] + common)
        #expect(headless.status != 0 && headless.standardError.contains("has no classification head"), "\(headless.standardError)")
    }

    @Test func kernelsBuildsTheVariantsOfAModelsTrainingAndEvaluation() throws {
        let cache = try makeTemporaryDirectory()
        let result = try runSloragpu(["kernels", "--model", base, "--image-size", "16", "--method", "lora"], environment: ["SLORAGPU_CACHE_DIR": cache.path])
        #expect(result.status == 0, "\(result.standardError)")
        #expect(result.standardOutput.contains("Model: 2 blocks of width 32, 16 px, lora"))
        #expect(result.standardOutput.contains("[-cl-std=CL1.2 -w -DNS=10]") && result.standardOutput.contains("-DDH=16"), "\(result.standardOutput)")
        // A training afterwards compiles nothing new.
        let output = try makeTemporaryDirectory()
        let train = try runSloragpu(["train", "--model", base, "--image-size", "16", "--data", "synthetic", "--batch", "8", "--method", "lora",
                                     "--steps", "1", "--warmup", "0", "--output", output.path], environment: ["SLORAGPU_CACHE_DIR": cache.path])
        #expect(train.status == 0, "\(train.standardError)")
        let entries = try FileManager.default.contentsOfDirectory(atPath: cache.path).filter { $0.hasSuffix(".clbin") }
        let variants = result.standardOutput.split(separator: "\n").first { $0.hasSuffix("program variants") }.flatMap { Int($0.split(separator: " ")[0]) }
        #expect(entries.count == variants, "kernels built \(variants ?? -1) variants, the cache now holds \(entries.count)")
    }

    @Test func theDefaultModelIsFoundFromAnyDirectory() throws {
        let weights = parityFixtures.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
            .appendingPathComponent("weights/dinov2-small/model.safetensors")
        guard FileManager.default.fileExists(atPath: weights.path) else {
            print("skipped: the default weights are not fetched (scripts/fetch_weights.sh)")
            return
        }
        let result = try runSloragpu(["kernels", "--image-size", "28"], removing: ["SLORAGPU_DEFAULT_MODEL"], in: try makeTemporaryDirectory())
        let output = result.standardOutput
        #expect(result.status == 0, "\(result.standardError)")
        #expect(output.contains("Model: 12 blocks of width 384, 28 px"), "\(output)")
    }
}
