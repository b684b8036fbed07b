import Foundation
import Tensors

/// A backbone as loaded, with what callers print and check: the values in internal names
/// (and head.weight/head.bias when the checkpoint's head fits the requested classes).
public struct Backbone {
    public var config: ViTConfig
    public var values: [String: [Float]]
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

    public init(config: ViTConfig, values: [String: [Float]], source: String, classNames: [String], fingerprint: String, normalization: String,
                naming: CheckpointNaming = .hfViT) {
        (self.config, self.values, self.source, self.classNames, self.naming) = (config, values, source, classNames, naming)
        (self.fingerprint, self.normalization) = (fingerprint, normalization)
        hasHead = values["head.weight"] != nil
    }

    /// A checkpoint directory at `imageSize` (nil: the checkpoint's preferred size) with
    /// `classes` classes (nil: the checkpoint's own).
    public static func load(directory: URL, imageSize: Int?, classes: Int?) throws -> Backbone {
        let checkpoint = try PretrainedCheckpoint(directory: directory)
        let (config, values, _) = try checkpoint.load(imageSize: imageSize ?? checkpoint.preferredImageSize, classes: classes ?? checkpoint.config.classes)
        return Backbone(config: config, values: values, source: "\(directory.path) (\(checkpoint.naming.rawValue))", classNames: checkpoint.classNames,
                        fingerprint: BaseFingerprint.of(values, config: config), normalization: checkpoint.normalizationSource,
                        naming: checkpoint.naming)
    }

    /// A preset (`vit-s/14`) with random weights.
    public static func preset(_ name: String, imageSize: Int, classes: Int) throws -> Backbone {
        let parts = name.split(separator: "/")
        let patch = parts.count > 1 ? Int(parts[1]) : 16
        guard let patch else { throw ConfigError("preset '\(name)': the patch size after / must be a number") }
        let config = try ViTConfig.preset(String(parts[0]), patchSize: patch, imageSize: imageSize, classes: classes)
        let values = randomBackboneValues(for: config, seed: 0x5EED)
        return Backbone(config: config, values: values, source: "\(name) (random initialisation, no pretrained weights)", classNames: [],
                        fingerprint: BaseFingerprint.of(values, config: config), normalization: "the ImageNet default")
    }
}

extension ViTModel {
    /// A model of `config` under `method` on `backbone`'s values (its head too when they hold
    /// one), with `adapter`'s trainable tensors when given, else fresh ones (A Kaiming-uniform,
    /// B zero, a new head) from `seed`. Consumes the values: each host array is freed once on
    /// the device.
    public static func assemble(_ engine: Engine, config: ViTConfig, method: FineTuningMethod, backbone: consuming [String: [Float]],
                                adapter: AdapterFile.Contents? = nil, seed: UInt64) throws -> ViTModel {
        let specs = ParameterTable.specs(config, method)
        var values = initialValues(for: specs, seed: seed)
        values.merge(backbone) { $1 }
        if let adapter {
            for (name, value) in adapter.values { values[name] = value }
        }
        let parameters = try ViTParameters(engine: engine, specs: specs, values: consume values)
        return try ViTModel(engine: engine, config: config, method: method, parameters: parameters)
    }

    /// A model on a loaded backbone, with `adapter` checked against it first (shape,
    /// architecture and, unless `allowOtherBase`, the base fingerprint; `adapterPath` names it
    /// in errors). `backbone.values` is emptied, so that the model holds the only copy.
    public static func build(_ engine: Engine, backbone: inout Backbone, method: FineTuningMethod, seed: UInt64,
                             adapter: AdapterFile.Contents? = nil, adapterPath: String = "the adapter", allowOtherBase: Bool = false) throws -> ViTModel {
        let config = backbone.config
        try method.validate(width: config.width)
        if let adapter {
            try adapter.checkFits(config, source: backbone.source)
            if !allowOtherBase { try adapter.checkBase(backbone.fingerprint, path: adapterPath) }
        }
        let values = backbone.values
        backbone.values = [:]
        let model = try assemble(engine, config: config, method: method, backbone: consume values, adapter: adapter, seed: seed)
        model.baseFingerprint = backbone.fingerprint
        return model
    }
}
