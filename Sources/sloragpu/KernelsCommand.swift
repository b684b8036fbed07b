import ArgumentParser
import Foundation
import Tensors
import Formats
import Optimizers
import ViT

struct KernelsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kernels",
        abstract: "Compile every kernel variant that train and eval build for a model on the selected device, and report each (program, options) and whether it came from the disk cache.",
        discussion: """
            Run it once after installing or upgrading a driver to warm the cache. Besides every program \
            with its default options, it runs one training step (forward, backward, optimizer) and one \
            evaluation forward of the model's architecture with random weights, which builds exactly the \
            variants (GEMM shapes and epilogues, attention path, reductions) those commands build. Kernel \
            options depend on the architecture, image size, method and activation plan, not on the weights.
            """
    )

    @OptionGroup var deviceOption: DeviceOption
    @OptionGroup var modelOptions: ModelOptions
    @Option(help: "serial, lora, full or probe.")
    var method = "serial"
    @Option(help: "Adapter rank.")
    var rank = 8
    @Option(help: "selective (train's default), recompute, keep-bf16 or keep (the activation plan of the training to warm).")
    var activations: ActivationMemory = .selective
    @OptionGroup var weights: WeightStorageOption
    @Option(help: "Classes of the head (the skinny head GEMMs are built per class count).")
    var classes = 10
    @Flag(help: "Only the programs with their default options (no model step).")
    var programsOnly = false

    func validate() throws {
        guard rank >= 1 else { throw ValidationError("--rank must be at least 1, got \(rank)") }
        guard (1...ViTConfig.Limits.classes).contains(classes) else { throw ValidationError("--classes must be in 1...\(ViTConfig.Limits.classes), got \(classes)") }
    }

    func run() throws {
        let engine = try Engine(deviceSpec: deviceOption.device)
        print("Device: \(engine.device.name)")
        print("Cache: \(engine.kernels.diskCache?.directory.path ?? "off")")
        for name in KernelSources.embeddedNames {
            _ = try engine.kernels.program(name)
        }
        if !programsOnly {
            var config = try architecture()
            config.classes = classes
            let fineTuning = try parseMethod(method, rank: rank, alpha: Float(rank), targets: LoRATarget.allCases)
            try fineTuning.validate(width: config.width)
            let model = try ViTModel.assemble(engine, config: config, method: fineTuning, backbone: randomBackboneValues(for: config, seed: 2), seed: 1,
                                              weightStorage: weights.storage.dtype)
            let parameters = model.parameters
            model.activationMemory = activations
            let optimizer = try AdamW(parameters: parameters, settings: AdamWSettings(learningRate: 1e-4), maxGradientNorm: 1)
            let images = try engine.zeros([2, 3, config.imageSize, config.imageSize])
            let labels = try engine.tensor([Int32(0), 1], shape: [2])
            try parameters.zeroGradients()
            _ = try model.forward(images)
            let (_, dLogits) = try model.loss(labels: labels)
            try model.backward(dLogits)
            try optimizer.update(learningRate: 1e-4)
            _ = try model.forward(images, keepForBackward: false)
            _ = try model.loss(labels: labels)
            try engine.synchronize()
            print("Model: \(config.layers) blocks of width \(config.width), \(config.imageSize) px, \(fineTuning), activations \(activations.rawValue), weights \(weights.storage.rawValue)")
        }
        for record in engine.kernels.buildRecords {
            let outcome: String
            switch record.outcome {
            case .compiled: outcome = "compiled"
            case .diskCacheHit: outcome = "disk-cache hit"
            case .rebuiltInvalidCacheEntry(let reason): outcome = "rebuilt (invalid cache entry: \(reason))"
            }
            let options = record.options.isEmpty ? "" : " [\(record.options)]"
            print(String(format: "  %@  %@  %.3f s%@", record.program, outcome, record.seconds, options))
        }
        print("\(engine.kernels.buildRecords.count) program variants")
        for warning in engine.kernels.warnings {
            FileHandle.standardError.write(Data("warning: \(warning)\n".utf8))
        }
    }

    /// The architecture of --model (its config files only; no weights are read) at the
    /// training image size.
    func architecture() throws -> ViTConfig {
        if let model = modelOptions.model, model.lowercased().hasPrefix("vit-") {
            return try modelOptions.load(classes: classes, defaultImageSize: 112).config
        }
        let base = try modelOptions.peftBase()
        var config = base.config
        config.imageSize = modelOptions.imageSize ?? 112
        try config.validate()
        return config
    }
}
