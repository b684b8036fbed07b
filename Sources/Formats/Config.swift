import Foundation

/// Which checkpoint naming a file uses (DATA_AND_WEIGHTS.md): Linear weights are [out, in]
/// in all of them (open_clip's visual.proj excepted, which is [in, out]). Each naming's key
/// layout is written once, in CheckpointLayout.
public enum CheckpointNaming: String, Sendable, Codable, CaseIterable {
    /// transformers ViTModel / ViTForImageClassification.
    case hfViT = "hf-vit"
    /// transformers Dinov2Model (LayerScale folded into proj and fc2 on load).
    case hfDinov2 = "hf-dinov2"
    /// timm VisionTransformer (fused qkv).
    case timm
    /// transformers CLIPVisionModel, CLIPForImageClassification, CLIPModel's vision tower
    /// (its visual projection included).
    case hfCLIP = "hf-clip"
    /// open_clip's CLIP (`visual.*`; fused in_proj, `visual.proj` [d, e]).
    case openCLIP = "open-clip"

    /// The naming merge and export write: a ViT-family base is written as HF ViT (LayerScale
    /// stays folded), a CLIP base in its own naming.
    public var exportNaming: CheckpointNaming {
        switch self {
        case .hfViT, .hfDinov2, .timm: .hfViT
        case .hfCLIP, .openCLIP: self
        }
    }
}

/// What differs between the model families sloragpu runs, as data: every family is a pre-norm
/// transformer with qkv biases, a cls token and learned positions; the rest is here, and the
/// layers, the parameter table and the checkpoint layouts read it.
public struct Architecture: Sendable, Codable, Equatable {
    public enum Family: String, Sendable, Codable {
        /// ViT, DeiT-style: HF ViT, DINOv2, timm.
        case vit
        /// CLIP's vision tower.
        case clip
    }

    /// What the head sees.
    public enum Pooling: String, Sendable, Codable {
        /// The final LayerNorm of the cls token (ViT, DINOv2, CLIP's pooler output).
        case cls
        /// The mean of the patch tokens of the last block, without a final LayerNorm
        /// (transformers' CLIPForImageClassification).
        case meanPatches = "mean_patches"
    }

    /// The MLP's activation.
    public enum Activation: String, Sendable, Codable {
        /// Exact GELU, 0.5 x (1 + erf(x / sqrt 2)).
        case gelu
        /// CLIP's quick GELU, x sigmoid(1.702 x).
        case quickGELU = "quick_gelu"
    }

    public var family: Family
    public var activation: Activation
    /// A LayerNorm over the tokens before the first block (CLIP's pre_layrnorm / ln_pre).
    public var embeddingNorm: Bool
    /// Whether the patch embedding has a bias (CLIP's has none).
    public var patchBias: Bool
    public var pooling: Pooling
    /// The width of a bias-free projection of the pooled features before the head (CLIP's
    /// visual projection); nil for none.
    public var projection: Int?

    public static let vit = Architecture(family: .vit, activation: .gelu, embeddingNorm: false, patchBias: true, pooling: .cls, projection: nil)
    /// transformers' CLIPForImageClassification: the head on the mean of the patch tokens.
    public static let clipClassifier = Architecture(family: .clip, activation: .quickGELU, embeddingNorm: true, patchBias: false,
                                                    pooling: .meanPatches, projection: nil)
    /// CLIP's image features: the final LayerNorm of the cls token, projected to `width`.
    public static func clipProjected(_ width: Int, activation: Activation = .quickGELU) -> Architecture {
        Architecture(family: .clip, activation: activation, embeddingNorm: true, patchBias: false, pooling: .cls, projection: width)
    }

    /// The naming adapter files and full fine-tunes of this family are written in.
    public var adapterNaming: CheckpointNaming { family == .vit ? .hfViT : .hfCLIP }
}

/// The architecture (see Architecture for what varies by family).
/// Shapes: d = width, L = layers, H = heads, m = MLP width, P = patch, N = 1 + (S / P)^2 tokens,
/// f = the head's input width (d, or the projection's).
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
    public var architecture: Architecture = .vit

    private enum CodingKeys: String, CodingKey {
        case imageSize, patchSize, channels, width, layers, heads, mlpWidth, layerNormEpsilon, classes, mean, std, architecture
    }

    /// Adapter files written before model families existed carry no architecture: a ViT.
    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        (imageSize, patchSize) = (try c.decode(Int.self, forKey: .imageSize), try c.decode(Int.self, forKey: .patchSize))
        channels = try c.decodeIfPresent(Int.self, forKey: .channels) ?? 3
        (width, layers, heads) = (try c.decode(Int.self, forKey: .width), try c.decode(Int.self, forKey: .layers), try c.decode(Int.self, forKey: .heads))
        (mlpWidth, layerNormEpsilon) = (try c.decode(Int.self, forKey: .mlpWidth), try c.decode(Float.self, forKey: .layerNormEpsilon))
        classes = try c.decode(Int.self, forKey: .classes)
        mean = try c.decodeIfPresent([Float].self, forKey: .mean) ?? mean
        std = try c.decodeIfPresent([Float].self, forKey: .std) ?? std
        architecture = try c.decodeIfPresent(Architecture.self, forKey: .architecture) ?? .vit
    }

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
    /// What the head reads: the pooled features' width.
    public var featureWidth: Int { architecture.projection ?? width }

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
        if let projection = architecture.projection {
            try check(projection, "projection_dim", 1...Limits.width)
            guard architecture.pooling == .cls else { throw bad("a visual projection needs cls pooling, not \(architecture.pooling.rawValue)") }
        }
        guard layerNormEpsilon.isFinite, layerNormEpsilon >= 0, layerNormEpsilon < 1 else {
            throw bad("layer_norm_eps \(layerNormEpsilon) is outside [0, 1)")
        }
        guard mean.count == channels, std.count == channels else { throw bad("image_mean and image_std need \(channels) values, got \(mean.count) and \(std.count)") }
        guard mean.allSatisfy(\.isFinite), std.allSatisfy({ $0.isFinite && $0 > 0 }) else {
            throw bad("image_mean \(mean) must be finite and image_std \(std) finite and positive")
        }
        // All bounded above, so these products cannot overflow.
        let perBlock = 4 * width * width + 2 * width * mlpWidth + 9 * width + mlpWidth
        let total = layers * perBlock + tokens * width + patchValues * width + classes * featureWidth + 6 * width + featureWidth * width
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
        func integer(_ json: [String: Any], _ key: String, _ range: ClosedRange<Int>, default fallback: Int? = nil) throws -> Int {
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
        func floats(_ json: [String: Any], _ key: String) throws -> [Float]? {
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
        case "clip", "clip_vision_model": naming = .hfCLIP
        default: throw fail("model_type '\(modelType)' is not supported (vit, dinov2, clip, clip_vision_model)")
        }
        // CLIPConfig nests the vision tower's fields in vision_config (labels stay at the top);
        // transformers writes only the fields that differ from the class defaults, so CLIP's
        // defaults (CLIPVisionConfig's) fill in what is missing.
        var fields = json
        if modelType == "clip" {
            guard let vision = json["vision_config"] as? [String: Any] else { throw fail("a CLIP config needs a 'vision_config' object") }
            fields = vision
        }
        let clip = naming == .hfCLIP
        func int(_ key: String, _ range: ClosedRange<Int>, clipDefault: Int? = nil) throws -> Int {
            try integer(fields, key, range, default: clip ? clipDefault : nil)
        }
        let activationName = fields["hidden_act"] as? String ?? (clip ? "quick_gelu" : "gelu")
        let activation: Architecture.Activation
        switch (activationName, clip) {
        case ("gelu", _): activation = .gelu
        case ("quick_gelu", true): activation = .quickGELU
        default: throw fail("hidden_act '\(activationName)' is not supported (\(clip ? "quick_gelu or gelu" : "exact gelu only"))")
        }
        if let bias = fields["qkv_bias"] as? Bool, !bias { throw fail("qkv_bias false is not supported") }
        let width = try int("hidden_size", 1...Limits.width, clipDefault: 768)
        let mlpWidth: Int
        if fields["intermediate_size"] != nil || clip {
            mlpWidth = try int("intermediate_size", 1...Limits.mlpWidth, clipDefault: 3072)
        } else if let raw = fields["mlp_ratio"] {
            guard let ratio = (raw as? NSNumber)?.doubleValue, ratio.isFinite, ratio > 0,
                  Double(width) * ratio <= Double(Limits.mlpWidth), (Double(width) * ratio).rounded() >= 1 else {
                throw fail("'mlp_ratio' is \(raw): hidden_size \(width) times it must be a width in 1...\(Limits.mlpWidth)")
            }
            mlpWidth = Int((Double(width) * ratio).rounded())
        } else {
            throw fail("missing intermediate_size or mlp_ratio")
        }
        if fields["use_swiglu_ffn"] as? Bool == true { throw fail("SwiGLU MLPs are not supported") }
        let epsRaw: Any
        if let given = fields["layer_norm_eps"] { epsRaw = given } else if clip { epsRaw = NSNumber(value: 1e-5) } else { throw fail("missing layer_norm_eps") }
        guard let eps = (epsRaw as? NSNumber)?.doubleValue, eps.isFinite, eps >= 0, eps < 1 else {
            throw fail("'layer_norm_eps' is \(epsRaw), outside [0, 1)")
        }
        var architecture = Architecture.vit
        if clip {
            // The head transformers' own class puts on the tower: CLIPForImageClassification's on
            // the mean of the patch tokens (also for a bare CLIPVisionModel, so that an export is
            // that class); CLIPModel's and CLIPVisionModelWithProjection's image features, the
            // projected final LayerNorm of the cls token.
            let architectures = json["architectures"] as? [String] ?? []
            if architectures.contains("CLIPModel") || architectures.contains("CLIPVisionModelWithProjection") {
                let projection = try integer(modelType == "clip" ? json : fields, "projection_dim", 1...Limits.width, default: 512)
                architecture = .clipProjected(projection, activation: activation)
            } else {
                architecture = .clipClassifier
                architecture.activation = activation
            }
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
        let numLabels = try integer(json, "num_labels", 1...Limits.classes, default: max(labels.count, 1))
        if !labels.isEmpty, json["num_labels"] != nil, numLabels != labels.count {
            throw fail("'num_labels' is \(numLabels) but 'id2label' names \(labels.count) classes")
        }
        var config = ViTConfig(imageSize: try int("image_size", 1...Limits.imageSize, clipDefault: 224),
                               patchSize: try int("patch_size", 1...Limits.imageSize, clipDefault: 32),
                               channels: try integer(fields, "num_channels", 1...Limits.imageSize, default: 3), width: width,
                               layers: try int("num_hidden_layers", 1...Limits.layers, clipDefault: 12),
                               heads: try int("num_attention_heads", 1...Limits.width, clipDefault: 12),
                               mlpWidth: mlpWidth, layerNormEpsilon: Float(eps), classes: max(labels.count, numLabels))
        config.architecture = architecture
        let mean = try floats(fields, "image_mean"), std = try floats(fields, "image_std")
        if clip { (config.mean, config.std) = (CLIPDefaults.mean, CLIPDefaults.std) }
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

extension ViTConfig {
    /// From open_clip's open_clip_config.json (model_cfg.vision_cfg, embed_dim, quick_gelu,
    /// preprocess_cfg; `class_names` when sloragpu wrote it): a ViT vision tower with cls-token
    /// pooling through ln_post and the projection. Options sloragpu does not run (attentional
    /// pooling, no ln_pre, other pooling or position types, timm towers, custom blocks) are
    /// refused by name.
    public static func fromOpenCLIP(_ data: Data, path: String) throws -> (ViTConfig, CheckpointNaming, [String]) {
        let fail = { (problem: String) in ConfigError("\(path): \(problem)") }
        guard let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else { throw fail("not a JSON object") }
        guard let model = json["model_cfg"] as? [String: Any], let vision = model["vision_cfg"] as? [String: Any] else {
            throw fail("expected model_cfg.vision_cfg (an open_clip model config)")
        }
        func number(_ object: [String: Any], _ key: String, default fallback: Double) throws -> Double {
            guard let raw = object[key] else { return fallback }
            guard let value = (raw as? NSNumber)?.doubleValue, !isJSONBoolean(raw), value.isFinite else { throw fail("'\(key)' must be a number, got \(raw)") }
            return value
        }
        func integer(_ object: [String: Any], _ key: String, _ range: ClosedRange<Int>, default fallback: Int) throws -> Int {
            let value = try number(object, key, default: Double(fallback))
            guard value == value.rounded(), value >= Double(range.lowerBound), value <= Double(range.upperBound) else {
                throw fail("'\(key)' is \(value), not an integer in \(range.lowerBound)...\(range.upperBound)")
            }
            return Int(value)
        }
        for (key, allowed) in [("attentional_pool", false), ("no_ln_pre", false), ("final_ln_after_pool", false), ("qk_norm", false),
                               ("scaled_cosine_attn", false), ("scale_heads", false), ("scale_attn_inner", false), ("scale_attn", false),
                               ("scale_fc", false), ("output_tokens", false)] {
            if let value = vision[key] as? Bool, value != allowed { throw fail("vision_cfg.\(key) \(value) is not supported") }
        }
        if let pool = vision["pool_type"] as? String, pool != "tok" { throw fail("vision_cfg.pool_type '\(pool)' is not supported (tok)") }
        if let type = vision["pos_embed_type"] as? String, type != "learnable" { throw fail("vision_cfg.pos_embed_type '\(type)' is not supported (learnable)") }
        if vision["timm_model_name"] is String { throw fail("timm vision towers (vision_cfg.timm_model_name) are not supported") }
        for key in ["norm_kwargs", "act_kwargs"] {
            if let value = vision[key], !(value is NSNull) { throw fail("vision_cfg.\(key) is not supported (LayerNorm eps 1e-5 and the plain activation only)") }
        }
        if let block = vision["block_type"] as? String, block != "default" { throw fail("vision_cfg.block_type '\(block)' is not supported") }
        if vision["layers"] is [Any] { throw fail("ResNet vision towers (vision_cfg.layers as a list) are not supported") }
        if let size = vision["image_size"] as? [Any], size.count != 2 || "\(size[0])" != "\(size[1])" { throw fail("vision_cfg.image_size must be square, got \(size)") }
        let imageSize = try (vision["image_size"] as? [NSNumber])?.first.map { try integer(["s": $0], "s", 1...Limits.imageSize, default: 224) }
            ?? integer(vision, "image_size", 1...Limits.imageSize, default: 224)
        let width = try integer(vision, "width", 1...Limits.width, default: 768)
        let headWidth = try integer(vision, "head_width", 1...Limits.width, default: 64)
        guard width % headWidth == 0 else { throw fail("vision_cfg.width \(width) is not a multiple of head_width \(headWidth)") }
        let ratio = try number(vision, "mlp_ratio", default: 4)
        guard ratio > 0, Double(width) * ratio <= Double(Limits.mlpWidth), (Double(width) * ratio).rounded() >= 1 else {
            throw fail("vision_cfg.mlp_ratio \(ratio) does not give an MLP width in 1...\(Limits.mlpWidth)")
        }
        let embed = try integer(model, "embed_dim", 1...Limits.width, default: 512)
        let quick = model["quick_gelu"] as? Bool ?? false
        var classNames: [String] = []
        if let raw = json["class_names"] {
            guard let names = raw as? [String], !names.isEmpty, names.count <= Limits.classes else { throw fail("'class_names' must be a list of 1...\(Limits.classes) names") }
            classNames = names
        }
        var config = ViTConfig(imageSize: imageSize, patchSize: try integer(vision, "patch_size", 1...Limits.imageSize, default: 16), width: width,
                               layers: try integer(vision, "layers", 1...Limits.layers, default: 12), heads: width / headWidth,
                               mlpWidth: Int((Double(width) * ratio).rounded()), layerNormEpsilon: 1e-5, classes: max(1, classNames.count))
        config.architecture = .clipProjected(embed, activation: quick ? .quickGELU : .gelu)
        (config.mean, config.std) = (CLIPDefaults.mean, CLIPDefaults.std)
        if let preprocess = json["preprocess_cfg"] as? [String: Any] {
            for key in ["mean", "std"] where preprocess[key] != nil {
                guard let values = preprocess[key] as? [NSNumber], values.count == 3, values.allSatisfy({ !isJSONBoolean($0) && $0.doubleValue.isFinite }) else {
                    throw fail("preprocess_cfg.\(key) must be three numbers")
                }
                if key == "mean" { config.mean = values.map(\.floatValue) } else { config.std = values.map(\.floatValue) }
            }
        }
        do { try config.validate() } catch let error as ConfigError { throw fail(error.description) }
        return (config, .openCLIP, classNames)
    }
}

/// OpenAI CLIP's input normalisation (transformers' OPENAI_CLIP_MEAN / STD), the default for
/// CLIP checkpoints that do not state theirs.
public enum CLIPDefaults {
    public static let mean: [Float] = [0.48145466, 0.4578275, 0.40821073]
    public static let std: [Float] = [0.26862954, 0.26130258, 0.27577711]
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
