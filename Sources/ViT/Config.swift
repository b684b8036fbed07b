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

    /// Upper bounds on what a configuration may ask for. They are far above every published
    /// ViT (ViT-22B: width 6144, 48 layers) and exist so that a hostile or mistyped config.json
    /// or option is refused before any size is computed or allocated from it.
    public enum Limits {
        public static let imageSize = 4096
        public static let tokens = 1 + 128 * 128
        public static let width = 16384
        public static let layers = 256
        public static let mlpWidth = 131_072
        public static let classes = 100_000
        /// Every parameter of the model, frozen or not: 4e9 fp32 values are 16 GB.
        public static let parameters = 4_000_000_000
    }

    /// Checks every field against its range before any derived size is computed, so that no
    /// value can overflow an integer or ask for an absurd allocation. Each message names the
    /// field as config.json spells it (image_size, hidden_size, ...) and the value.
    public func validate() throws {
        func bad(_ problem: String) -> ConfigError { ConfigError(problem) }
        func check(_ value: Int, _ key: String, _ range: ClosedRange<Int>) throws {
            guard range.contains(value) else { throw bad("\(key) \(value) is outside \(range.lowerBound)...\(range.upperBound)") }
        }
        try check(imageSize, "image_size", 1...Limits.imageSize)
        try check(patchSize, "patch_size", 1...imageSize)
        guard imageSize % patchSize == 0 else { throw bad("image size \(imageSize) is not divisible by the patch size \(patchSize)") }
        guard tokens <= Limits.tokens else {
            throw bad("image size \(imageSize) with patch size \(patchSize) gives \(tokens) tokens, more than the limit \(Limits.tokens)")
        }
        guard channels == 3 else { throw bad("num_channels \(channels) is not supported: images are fed as RGB (3 channels)") }
        try check(width, "hidden_size", 1...Limits.width)
        try check(heads, "num_attention_heads", 1...width)
        guard width % heads == 0 else { throw bad("hidden_size \(width) is not divisible by num_attention_heads \(heads)") }
        guard (1...256).contains(headDimension) else { throw bad("head dimension \(headDimension) (hidden_size / num_attention_heads) is outside 1...256") }
        try check(layers, "num_hidden_layers", 1...Limits.layers)
        try check(mlpWidth, "intermediate_size", 1...Limits.mlpWidth)
        try check(classes, "num_labels", 1...Limits.classes)
        guard layerNormEpsilon.isFinite, layerNormEpsilon >= 0, layerNormEpsilon < 1 else {
            throw bad("layer_norm_eps \(layerNormEpsilon) is outside [0, 1)")
        }
        guard mean.count == channels, std.count == channels else { throw bad("image_mean and image_std need \(channels) values, got \(mean.count) and \(std.count)") }
        guard mean.allSatisfy(\.isFinite), std.allSatisfy({ $0.isFinite && $0 > 0 }) else {
            throw bad("image_mean \(mean) must be finite and image_std \(std) finite and positive")
        }
        // All bounded above, so these products cannot overflow.
        let perBlock = 4 * width * width + 2 * width * mlpWidth + 9 * width + mlpWidth
        let total = layers * perBlock + tokens * width + patchValues * width + classes * width + 4 * width
        guard total <= Limits.parameters else {
            throw bad("the model would hold \(total) parameters (\(total / 250_000_000) GB in fp32), more than the limit \(Limits.parameters)")
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
    /// comes from id2label / num_labels when present. Every error names the file and the key.
    public static func fromHuggingFace(_ url: URL) throws -> (ViTConfig, CheckpointNaming, [String]) {
        let data: Data
        do { data = try Data(contentsOf: url) } catch { throw ConfigError("\(url.path): cannot read: \((error as NSError).localizedDescription)") }
        return try fromHuggingFace(data, path: url.path)
    }

    /// `data`: the bytes of a config.json; `path` names it in errors.
    public static func fromHuggingFace(_ data: Data, path: String) throws -> (ViTConfig, CheckpointNaming, [String]) {
        guard let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw ConfigError("\(path): not a JSON object")
        }
        let fail = { (problem: String) in ConfigError("\(path): \(problem)") }
        // An integer key: a JSON number without a fraction, inside `range`, checked as a Double
        // before it becomes an Int (1e300 or 2^70 would not fit).
        func int(_ key: String, _ range: ClosedRange<Int>, default fallback: Int? = nil) throws -> Int {
            guard let raw = json[key] else {
                if let fallback { return fallback }
                throw fail("missing integer '\(key)'")
            }
            guard let number = raw as? NSNumber, !isJSONBoolean(raw), number.doubleValue.isFinite, number.doubleValue == number.doubleValue.rounded() else {
                throw fail("'\(key)' must be an integer, got \(raw)")
            }
            let value = number.doubleValue
            guard value >= Double(range.lowerBound), value <= Double(range.upperBound) else {
                throw fail("'\(key)' is \(number), outside \(range.lowerBound)...\(range.upperBound)")
            }
            return Int(value)
        }
        func floats(_ key: String) throws -> [Float]? {
            guard let raw = json[key] else { return nil }
            guard let list = raw as? [NSNumber], list.allSatisfy({ !isJSONBoolean($0) && $0.doubleValue.isFinite }) else {
                throw fail("'\(key)' must be a list of finite numbers, got \(raw)")
            }
            return list.map(\.floatValue)
        }
        let modelType = json["model_type"] as? String ?? "vit"
        let naming: CheckpointNaming
        switch modelType {
        case "vit": naming = .hfViT
        case "dinov2": naming = .hfDinov2
        default: throw fail("model_type '\(modelType)' is not supported (vit, dinov2)")
        }
        if let act = json["hidden_act"] as? String, act != "gelu" {
            throw fail("hidden_act '\(act)' is not supported (exact gelu only)")
        }
        if let bias = json["qkv_bias"] as? Bool, !bias { throw fail("qkv_bias false is not supported") }
        let width = try int("hidden_size", 1...Limits.width)
        let mlpWidth: Int
        if json["intermediate_size"] != nil {
            mlpWidth = try int("intermediate_size", 1...Limits.mlpWidth)
        } else if let raw = json["mlp_ratio"] {
            guard let ratio = (raw as? NSNumber)?.doubleValue, ratio.isFinite, ratio > 0,
                  Double(width) * ratio <= Double(Limits.mlpWidth), (Double(width) * ratio).rounded() >= 1 else {
                throw fail("'mlp_ratio' is \(raw): hidden_size \(width) times it must be a width in 1...\(Limits.mlpWidth)")
            }
            mlpWidth = Int((Double(width) * ratio).rounded())
        } else {
            throw fail("missing intermediate_size or mlp_ratio")
        }
        if json["use_swiglu_ffn"] as? Bool == true { throw fail("SwiGLU MLPs are not supported") }
        guard let epsRaw = json["layer_norm_eps"] else { throw fail("missing layer_norm_eps") }
        guard let eps = (epsRaw as? NSNumber)?.doubleValue, eps.isFinite, eps >= 0, eps < 1 else {
            throw fail("'layer_norm_eps' is \(epsRaw), outside [0, 1)")
        }
        var labels: [String] = []
        if let raw = json["id2label"] {
            guard let id2label = raw as? [String: String] else { throw fail("'id2label' must map class indices to names") }
            guard id2label.count <= Limits.classes else { throw fail("'id2label' has \(id2label.count) classes, more than the limit \(Limits.classes)") }
            let indexed = id2label.compactMap { key, value in Int(key).map { ($0, value) } }
            guard indexed.count == id2label.count, Set(indexed.map(\.0)) == Set(0..<id2label.count) else {
                throw fail("'id2label' keys must be the class indices 0...\(id2label.count - 1), got \(id2label.keys.sorted().prefix(5).joined(separator: ", "))")
            }
            labels = indexed.sorted { $0.0 < $1.0 }.map(\.1)
        }
        let numLabels = try int("num_labels", 1...Limits.classes, default: max(labels.count, 1))
        if !labels.isEmpty, json["num_labels"] != nil, numLabels != labels.count {
            throw fail("'num_labels' is \(numLabels) but 'id2label' names \(labels.count) classes")
        }
        var config = ViTConfig(imageSize: try int("image_size", 1...Limits.imageSize), patchSize: try int("patch_size", 1...Limits.imageSize),
                               channels: try int("num_channels", 1...Limits.imageSize, default: 3), width: width,
                               layers: try int("num_hidden_layers", 1...Limits.layers), heads: try int("num_attention_heads", 1...Limits.width),
                               mlpWidth: mlpWidth, layerNormEpsilon: Float(eps), classes: max(labels.count, numLabels))
        let mean = try floats("image_mean"), std = try floats("image_std")
        if let mean, let std {
            config.mean = mean
            config.std = std
        } else if (mean == nil) != (std == nil) {
            throw fail("'image_mean' and 'image_std' must be given together")
        }
        do { try config.validate() } catch let error as ConfigError { throw fail(error.description) }
        return (config, naming, labels)
    }
}

/// JSONSerialization gives true and false as NSNumbers, and `is Bool` also holds for the
/// numbers 0 and 1; only the boolean's class tells them apart.
func isJSONBoolean(_ value: Any) -> Bool {
    guard let number = value as? NSNumber else { return false }
    return type(of: number) != NSNumber.self && String(cString: number.objCType) == "c"
}

public struct ConfigError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
