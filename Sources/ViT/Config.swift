import Foundation

/// Which checkpoint naming a file uses (DATA_AND_WEIGHTS.md): Linear weights are [out, in]
/// in all three.
public enum CheckpointNaming: String, Sendable, Codable, CaseIterable {
    /// transformers ViTModel / ViTForImageClassification.
    case hfViT = "hf-vit"
    /// transformers Dinov2Model (LayerScale folded into proj and fc2 on load).
    case hfDinov2 = "hf-dinov2"
    /// timm VisionTransformer (fused qkv).
    case timm
}

/// The architecture: pre-norm ViT, exact GELU, qkv bias, cls token + learned positions.
/// Shapes: d = width, L = layers, H = heads, m = MLP width, P = patch, N = 1 + (S / P)^2 tokens.
public struct ViTConfig: Sendable, Codable, Equatable {
    public var imageSize: Int
    public var patchSize: Int
    public var channels: Int = 3
    public var width: Int
    public var layers: Int
    public var heads: Int
    public var mlpWidth: Int
    public var layerNormEpsilon: Float
    public var classes: Int
    /// Input normalisation (per channel) the checkpoint was trained with.
    public var mean: [Float] = [0.485, 0.456, 0.406]
    public var std: [Float] = [0.229, 0.224, 0.225]

    public init(imageSize: Int, patchSize: Int, channels: Int = 3, width: Int, layers: Int, heads: Int, mlpWidth: Int,
                layerNormEpsilon: Float, classes: Int) {
        (self.imageSize, self.patchSize, self.channels, self.width, self.layers) = (imageSize, patchSize, channels, width, layers)
        (self.heads, self.mlpWidth, self.layerNormEpsilon, self.classes) = (heads, mlpWidth, layerNormEpsilon, classes)
    }

    public var gridSize: Int { imageSize / patchSize }
    public var patchCount: Int { gridSize * gridSize }
    public var tokens: Int { patchCount + 1 }
    public var headDimension: Int { width / heads }
    public var patchValues: Int { channels * patchSize * patchSize }

    public func validate() throws {
        func bad(_ problem: String) -> ConfigError { ConfigError(problem) }
        guard patchSize > 0, imageSize > 0, imageSize % patchSize == 0 else {
            throw bad("image size \(imageSize) is not divisible by the patch size \(patchSize)")
        }
        guard width > 0, heads > 0, width % heads == 0 else { throw bad("width \(width) is not divisible by \(heads) heads") }
        guard (1...256).contains(headDimension) else { throw bad("head dimension \(headDimension) is outside 1...256") }
        guard layers > 0, mlpWidth > 0, classes > 0, channels > 0 else {
            throw bad("layers (\(layers)), MLP width (\(mlpWidth)), classes (\(classes)) and channels (\(channels)) must be positive")
        }
        guard mean.count == channels, std.count == channels, std.allSatisfy({ $0 > 0 }) else {
            throw bad("mean and std need \(channels) values (std positive)")
        }
    }

    /// ViT-Ti/S/B/L (MLP 4x, LayerNorm eps 1e-6 as timm and DINOv2 use).
    public static func preset(_ name: String, patchSize: Int = 16, imageSize: Int = 224, classes: Int = 1000) throws -> ViTConfig {
        let sizes: [String: (Int, Int, Int)] = ["tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16)]
        let aliases = ["ti": "tiny", "s": "small", "b": "base", "l": "large"]
        let key = name.lowercased().replacingOccurrences(of: "vit-", with: "")
        guard let (width, layers, heads) = sizes[aliases[key] ?? key] else {
            throw ConfigError("unknown preset '\(name)'; use vit-ti, vit-s, vit-b or vit-l (optionally /14 or /16)")
        }
        let config = ViTConfig(imageSize: imageSize, patchSize: patchSize, width: width, layers: layers, heads: heads,
                               mlpWidth: 4 * width, layerNormEpsilon: 1e-6, classes: classes)
        try config.validate()
        return config
    }

    /// From a checkpoint directory's config.json (transformers ViT or Dinov2). `classes`
    /// comes from id2label / num_labels when present.
    public static func fromHuggingFace(_ url: URL) throws -> (ViTConfig, CheckpointNaming, [String]) {
        let data: Data
        do { data = try Data(contentsOf: url) } catch { throw ConfigError("\(url.path): cannot read: \((error as NSError).localizedDescription)") }
        guard let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw ConfigError("\(url.path): not a JSON object")
        }
        func int(_ key: String) throws -> Int {
            guard let value = json[key] as? NSNumber else { throw ConfigError("\(url.path): missing integer '\(key)'") }
            return value.intValue
        }
        let modelType = json["model_type"] as? String ?? "vit"
        let naming: CheckpointNaming
        switch modelType {
        case "vit": naming = .hfViT
        case "dinov2": naming = .hfDinov2
        default: throw ConfigError("\(url.path): model_type '\(modelType)' is not supported (vit, dinov2)")
        }
        if let act = json["hidden_act"] as? String, act != "gelu" {
            throw ConfigError("\(url.path): hidden_act '\(act)' is not supported (exact gelu only)")
        }
        if let bias = json["qkv_bias"] as? Bool, !bias { throw ConfigError("\(url.path): qkv_bias false is not supported") }
        let width = try int("hidden_size")
        let mlpWidth: Int
        if let intermediate = json["intermediate_size"] as? NSNumber {
            mlpWidth = intermediate.intValue
        } else if let ratio = json["mlp_ratio"] as? NSNumber {
            mlpWidth = Int((Double(width) * ratio.doubleValue).rounded())
        } else {
            throw ConfigError("\(url.path): missing intermediate_size or mlp_ratio")
        }
        if json["use_swiglu_ffn"] as? Bool == true { throw ConfigError("\(url.path): SwiGLU MLPs are not supported") }
        guard let eps = json["layer_norm_eps"] as? NSNumber else { throw ConfigError("\(url.path): missing layer_norm_eps") }
        var labels: [String] = []
        if let id2label = json["id2label"] as? [String: String] {
            labels = id2label.sorted { (Int($0.key) ?? 0) < (Int($1.key) ?? 0) }.map(\.value)
        }
        var config = ViTConfig(imageSize: try int("image_size"), patchSize: try int("patch_size"),
                               channels: (json["num_channels"] as? NSNumber)?.intValue ?? 3, width: width,
                               layers: try int("num_hidden_layers"), heads: try int("num_attention_heads"), mlpWidth: mlpWidth,
                               layerNormEpsilon: eps.floatValue, classes: max(labels.count, (json["num_labels"] as? NSNumber)?.intValue ?? 0, 1))
        if let mean = json["image_mean"] as? [NSNumber], let std = json["image_std"] as? [NSNumber] {
            config.mean = mean.map(\.floatValue)
            config.std = std.map(\.floatValue)
        }
        try config.validate()
        return (config, naming, labels)
    }
}

public struct ConfigError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
