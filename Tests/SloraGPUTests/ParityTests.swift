import Foundation
import Testing
@testable import Tensors
@testable import Formats
@testable import Optimizers
@testable import ViT

/// Fixtures written by scripts/make_parity_fixtures.py (PyTorch; transformers' ViT and Dinov2
/// models checked against its reference there).
let parityFixtures = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .appendingPathComponent("Fixtures/parity")
/// Written by scripts/make_clip_fixtures.py (transformers' CLIPForImageClassification and
/// open_clip's VisionTransformer checked against its reference there). Per naming a checkpoint
/// and per method its initial adapter and expectations: NAMING/METHOD/*.safetensors.
let clipFixtures = parityFixtures.deletingLastPathComponent().appendingPathComponent("clip")

struct ParityCase: Sendable, CustomTestStringConvertible {
    var naming: CheckpointNaming
    var method: String
    var activations = ActivationMemory.selective
    /// Run every GEMM through the GPU profile's work-group tiled kernel and attention through
    /// the flash kernels: a training step on the GPU kernels.
    var gpuKernels = false
    var isCLIP: Bool { naming == .hfCLIP || naming == .openCLIP }
    /// The fixture set: its batch.safetensors, and a checkpoint directory per naming.
    var root: URL { isCLIP ? clipFixtures : parityFixtures }
    /// Where the method's initial.safetensors and expected.safetensors are (the ViT fixtures
    /// share one base in three namings, so one set per method).
    var methodDirectory: URL { root.appendingPathComponent(isCLIP ? "\(naming.rawValue)/\(method)" : method) }
    var testDescription: String {
        "\(naming.rawValue) \(method)" + (activations == .selective ? "" : " (activations: \(activations))") + (gpuKernels ? " (GPU kernels)" : "")
    }
}

/// A model built from a fixture checkpoint in `naming` plus the method's initial adapter file.
func fixtureModel(_ engine: Engine, naming: CheckpointNaming, method methodName: String) throws -> (ViTModel, AdapterFile.Contents) {
    let c = ParityCase(naming: naming, method: methodName)
    let adapter = try AdapterFile.load(c.methodDirectory.appendingPathComponent("initial.safetensors"))
    let directory = c.root.appendingPathComponent(naming.rawValue)
    var config = adapter.config
    if naming != .timm {
        // The architecture as the checkpoint's own config file states it.
        let (fileConfig, fileNaming, _) = naming == .openCLIP
            ? try ViTConfig.fromOpenCLIP(try Data(contentsOf: directory.appendingPathComponent("open_clip_config.json")), path: "open_clip_config.json")
            : try ViTConfig.fromHuggingFace(directory.appendingPathComponent("config.json"))
        #expect(fileNaming == naming)
        #expect(fileConfig.width == config.width && fileConfig.layers == config.layers && fileConfig.heads == config.heads)
        #expect(fileConfig.mlpWidth == config.mlpWidth && fileConfig.layerNormEpsilon == config.layerNormEpsilon)
        #expect(fileConfig.architecture == config.architecture && fileConfig.mean == config.mean)
        config.classes = adapter.config.classes
    }
    let file = try SafeTensorsFile(contentsOf: directory.appendingPathComponent("model.safetensors"))
    let backbone = try CheckpointReader(file: file, naming: naming, config: config)
    return (try ViTModel.assemble(engine, config: config, method: adapter.method, backbone: backbone.values, adapter: adapter, seed: 0), adapter)
}

func fixtureBatch(_ engine: Engine, root: URL = parityFixtures) throws -> (images: Tensor, labels: Tensor) {
    let batch = try SafeTensorsFile(contentsOf: root.appendingPathComponent("batch.safetensors"))
    let images = try engine.tensor(try batch.floats("images"), shape: batch.entry("images")!.shape)
    let labels = try engine.tensor(try batch.floats("labels").map { Int32($0) }, shape: [batch.entry("labels")!.shape[0]])
    return (images, labels)
}

@Suite("Parity with PyTorch")
struct ParityTests {
    /// Serial LoRA and LoRA run with the default plan (selective) and the one that reruns the
    /// most (recompute); full fine-tuning and the probe have one plan. keep and selective give
    /// recompute's numbers bit for bit (ActivationPlanTests).
    static let cases = CheckpointNaming.allCases.flatMap { naming in
        ["serial", "lora", "full", "probe"].map { ParityCase(naming: naming, method: $0) }
            + ["serial", "lora"].map { ParityCase(naming: naming, method: $0, activations: .recompute) }
    } + [CheckpointNaming.hfViT, .hfCLIP].flatMap { naming in ["serial", "lora", "full", "probe"].map { ParityCase(naming: naming, method: $0, gpuKernels: true) } }

    // Tolerances (fp32 against PyTorch fp32): logits and loss atol 2e-5 + rtol 1e-4;
    // gradients atol 2e-5 + rtol 1e-3 (relative error around 1e-5 on typical entries);
    // parameters after 3 AdamW steps atol 5e-5 + rtol 1e-4.
    @Test(arguments: cases)
    func logitsLossGradientsAndThreeAdamWSteps(_ c: ParityCase) throws {
        let engine = try makeEngine()
        if c.gpuKernels {
            engine.gemmProfile = .gpu
            engine.attentionPath = .flash(rows: 32)
            engine.reductionPath = .workGroup(size: 32)
        }
        let (model, adapter) = try fixtureModel(engine, naming: c.naming, method: c.method)
        model.activationMemory = c.activations
        let expected = try SafeTensorsFile(contentsOf: c.methodDirectory.appendingPathComponent("expected.safetensors"))
        let (images, labels) = try fixtureBatch(engine, root: c.root)

        try model.parameters.zeroGradients()
        let logits = try model.forward(images)
        expectClose(try logits.download(), try expected.floats("logits"), atol: 2e-5, rtol: 1e-4, "\(c.testDescription) logits")
        let (loss, dLogits) = try model.loss(labels: labels)
        expectClose(try loss.download(), try expected.floats("loss"), atol: 2e-5, rtol: 1e-4, "\(c.testDescription) loss")
        try model.backward(dLogits)
        let trainable = model.parameters.trainableNames
        #expect(Set(trainable) == Set(expected.names.filter { $0.hasPrefix("grad/") }.map { String($0.dropFirst(5)) }))
        for name in trainable {
            expectClose(try model.parameters.gradient(name)!.download(), try expected.floats("grad/" + name), atol: 2e-5, rtol: 1e-3,
                        "\(c.testDescription) gradient of \(name)")
        }

        let lora = adapter.method.name == "lora"
        let optimizer = try AdamW(parameters: model.parameters, settings: AdamWSettings(learningRate: 1e-2, weightDecay: 0.05),
                                  loraPlusRatio: lora ? 4 : 1, maxGradientNorm: lora ? 1 : nil)
        try optimizer.update()
        for _ in 0..<2 {
            try model.parameters.zeroGradients()
            _ = try model.forward(images)
            try model.backward(try model.loss(labels: labels).dLogits)
            try optimizer.update()
        }
        for name in trainable {
            var got = try model.parameters.tensor(name).download(), want = try expected.floats("after3/" + name)
            if name.hasSuffix("qkv.bias") {
                // The key bias adds q . b_k to every score of a query row, which softmax ignores:
                // its gradient is exactly zero, and both sides hold only rounding noise there,
                // which Adam scales up to steps of +-lr. Compare q and v biases; the key bias
                // can only have moved by at most 3 lr.
                let d = model.config.width
                let initial = Array(try fixtureInitialBias(name, c)[d..<2 * d])
                for (index, value) in got[d..<2 * d].enumerated() { #expect(abs(value - initial[index]) <= 3 * 1e-2 * 1.001) }
                got.removeSubrange(d..<2 * d)
                want.removeSubrange(d..<2 * d)
            }
            expectClose(got, want, atol: 5e-5, rtol: 1e-4, "\(c.testDescription) \(name) after 3 AdamW steps")
        }
    }

    /// qkv.bias before training (from the full method's initial file, HF ViT names).
    private func fixtureInitialBias(_ name: String, _ c: ParityCase) throws -> [Float] {
        let file = try SafeTensorsFile(contentsOf: c.methodDirectory.appendingPathComponent("initial.safetensors"))
        let layer = name.split(separator: ".")[1]
        if c.isCLIP {
            return try ["q", "k", "v"].flatMap { try file.floats("vision_model.encoder.layers.\(layer).self_attn.\($0)_proj.bias") }
        }
        return try ["query", "key", "value"].flatMap { try file.floats("vit.encoder.layer.\(layer).attention.attention.\($0).bias") }
    }

    @Test func trainableParameterCountsMatchThePaper() throws {
        let small = try ViTConfig.preset("vit-s", patchSize: 14, imageSize: 112, classes: 10)
        #expect(ParameterTable.adapterParameterCount(small, .serial(rank: 8, alpha: 8)) == 73_728)
        #expect(ParameterTable.adapterParameterCount(small, .lora(rank: 8, alpha: 8, targets: [.q, .k, .v, .o])) == 294_912)
        let base = try ViTConfig.preset("vit-b", classes: 10)
        #expect(ParameterTable.adapterParameterCount(base, .serial(rank: 8, alpha: 8)) == 147_456)
        #expect(ParameterTable.adapterParameterCount(base, .lora(rank: 8, alpha: 8, targets: [.q, .k, .v, .o])) == 589_824)
        #expect(ParameterTable.adapterParameterCount(small, .probe) == 0)
        // ViT-S/14 at 112 px, written out: patch embedding, cls, 65 positions, 12 blocks, final norm.
        let block = 2 * 384 + (3 * 384 * 384 + 3 * 384) + (384 * 384 + 384) + 2 * 384 + (1536 * 384 + 1536) + (384 * 1536 + 384)
        #expect(ParameterTable.adapterParameterCount(small, .full) == (384 * 588 + 384) + 384 + 65 * 384 + 12 * block + 2 * 384)
    }

    @Test func bicubicPositionResizeMatchesTorch() throws {
        let file = try SafeTensorsFile(contentsOf: parityFixtures.appendingPathComponent("interpolation.safetensors"))
        let source = try file.floats("source"), width = file.entry("source")!.shape[2]
        for grid in [6, 3] {
            let resized = try PositionEmbedding.resize(source, tokens: 17, width: width, toGrid: grid, file: "fixture", tensor: "pos")
            expectClose(resized, try file.floats("to\(grid)"), atol: 1e-6, rtol: 1e-5, "bicubic 4x4 -> \(grid)x\(grid)")
        }
    }
}
