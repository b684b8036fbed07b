import Foundation

/// A pretrained checkpoint directory: model.safetensors, plus config.json for HF ViT and
/// DINOv2 (timm files carry no config: pass a preset).
public struct PretrainedCheckpoint {
    public let directory: URL
    public let file: SafeTensorsFile
    public let naming: CheckpointNaming
    /// The architecture as stored (image size and classes of the checkpoint).
    public let config: ViTConfig
    public let classNames: [String]

    public init(directory: URL, preset: ViTConfig? = nil) throws {
        self.directory = directory
        let weights = directory.appendingPathComponent("model.safetensors")
        guard FileManager.default.fileExists(atPath: weights.path) else {
            throw CheckpointError(file: weights.path, "no such file (a checkpoint directory holds model.safetensors and config.json)")
        }
        file = try SafeTensorsFile(contentsOf: weights)
        let configURL = directory.appendingPathComponent("config.json")
        if FileManager.default.fileExists(atPath: configURL.path) {
            (config, naming, classNames) = try ViTConfig.fromHuggingFace(configURL)
        } else if let preset, let detected = CheckpointReader.detectNaming(file) {
            (config, naming, classNames) = (preset, detected, [])
        } else {
            throw CheckpointError(file: configURL.path, "missing: HF checkpoints need config.json; for timm files give a preset")
        }
    }

    /// The model configuration for fine-tuning at `imageSize` with `classes` classes, and the
    /// backbone (positions resized when the size differs; the head when it fits).
    public func load(imageSize: Int? = nil, classes: Int? = nil) throws -> (config: ViTConfig, values: [String: [Float]], loadedHead: Bool) {
        var target = config
        if let imageSize { target.imageSize = imageSize }
        if let classes { target.classes = classes }
        try target.validate()
        let reader = try CheckpointReader(file: file, naming: naming, config: target)
        return (target, reader.values, reader.hasHead)
    }
}
