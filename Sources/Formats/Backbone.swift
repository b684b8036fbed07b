import Foundation

/// A backbone as loaded, with what callers print and check: the values in internal names
/// (and head.weight/head.bias when the checkpoint's head fits the requested classes).
public struct Backbone {
    public var config: ViTConfig
    /// As the checkpoint stores them: a 16-bit file's tensors stay 16-bit (HostTensor).
    public var tensors: [String: HostTensor]
    /// A widened fp32 copy of `tensors` (a whole second base for a 16-bit file; merge and
    /// export use `takeValues()`, which does not hold both).
    public var values: [String: [Float]] { tensors.widened }

    /// The tensors widened to fp32, each 16-bit array dropped as it is widened; `tensors` is
    /// left empty.
    public mutating func takeValues() -> [String: [Float]] {
        var values: [String: [Float]] = [:]
        for name in Array(tensors.keys) {
            if let tensor = tensors.removeValue(forKey: name) { values[name] = tensor.floats }
        }
        return values
    }
    /// The checkpoint directory and naming, or the preset.
    public var source: String
    /// The checkpoint's own class names (id2label), empty when it has none.
    public var classNames: [String]
    public var fingerprint: String
    /// Where the input normalisation came from.
    public var normalization: String
    /// Whether the checkpoint's head was loaded (kept when `values` is handed on).
    public var hasHead: Bool
    /// The checkpoint's naming (HF ViT for presets).
    public var naming: CheckpointNaming
    /// How the checkpoint stores its floating-point tensors: F16 or BF16 when all of them are,
    /// else F32 (and F32 for presets). Merge and export write this by default.
    public var fileDType: SafeTensorsDType = .F32

    public init(config: ViTConfig, tensors: [String: HostTensor], source: String, classNames: [String], fingerprint: String, normalization: String,
                naming: CheckpointNaming = .hfViT) {
        (self.config, self.tensors, self.source, self.classNames, self.naming) = (config, tensors, source, classNames, naming)
        (self.fingerprint, self.normalization) = (fingerprint, normalization)
        hasHead = tensors["head.weight"] != nil
    }

    /// A checkpoint directory at `imageSize` (nil: the checkpoint's preferred size) with
    /// `classes` classes (nil: the checkpoint's own).
    public static func load(directory: URL, imageSize: Int?, classes: Int?) throws -> Backbone {
        let checkpoint = try PretrainedCheckpoint(directory: directory)
        let (config, tensors, _) = try checkpoint.loadTensors(imageSize: imageSize ?? checkpoint.preferredImageSize, classes: classes ?? checkpoint.config.classes)
        var backbone = Backbone(config: config, tensors: tensors, source: "\(directory.path) (\(checkpoint.naming.rawValue))",
                                classNames: checkpoint.classNames, fingerprint: BaseFingerprint.of(tensors, config: config),
                                normalization: checkpoint.normalizationSource, naming: checkpoint.naming)
        let floating = Set(checkpoint.file.entries.map(\.dtype).filter { [.F32, .F16, .BF16, .F64].contains($0) })
        if floating.count == 1, let only = floating.first, only == .F16 || only == .BF16 { backbone.fileDType = only }
        return backbone
    }

    /// A preset (`vit-s/14`) with random weights.
    public static func preset(_ name: String, imageSize: Int, classes: Int) throws -> Backbone {
        let parts = name.split(separator: "/")
        let patch = parts.count > 1 ? Int(parts[1]) : 16
        guard let patch else { throw ConfigError("preset '\(name)': the patch size after / must be a number") }
        let config = try ViTConfig.preset(String(parts[0]), patchSize: patch, imageSize: imageSize, classes: classes)
        let values = randomBackboneValues(for: config, seed: 0x5EED)
        return Backbone(config: config, tensors: values.hostTensors, source: "\(name) (random initialisation, no pretrained weights)", classNames: [],
                        fingerprint: BaseFingerprint.of(values, config: config), normalization: "the ImageNet default")
    }
}
