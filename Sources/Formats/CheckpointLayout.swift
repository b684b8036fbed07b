import Foundation

/// How one internal tensor (ParameterTable's names) is stored in a checkpoint format.
public struct StoredTensor: Sendable, Equatable {
    public enum Form: Sendable, Equatable {
        /// The same values under one key, perhaps in another shape ([1, 1, d] for cls).
        case single(String, shape: [Int])
        /// The rows of several keys in order (q; k; v of separate projections).
        case stacked([String], shape: [Int])
        /// One key holding the transpose: stored [in, out] for an internal [out, in].
        case transposed(String, shape: [Int])
    }

    public var name: String
    public var form: Form
    /// A LayerScale vector whose entries multiply the tensor's rows on load: lambda (W x + b) =
    /// (diag(lambda) W) x + lambda b, exactly. Folded tensors cannot be written back.
    public var layerScale: String?

    public var keys: [String] {
        form.keys
    }
}

extension StoredTensor.Form {
    /// The shape of each stored key.
    public var shape: [Int] {
        switch self {
        case .single(_, let shape), .stacked(_, let shape), .transposed(_, let shape): shape
        }
    }

    public var keys: [String] {
        switch self {
        case .single(let key, _), .transposed(let key, _): [key]
        case .stacked(let keys, _): keys
        }
    }
}

/// Every tensor of one checkpoint format for one configuration: the only place a format's key
/// names are written. Reading (CheckpointReader), writing (CheckpointExport), adapter names
/// (AdapterFile, PEFTAdapter) and the module names LoRA targets all derive from it.
public struct CheckpointLayout: Sendable {
    public let naming: CheckpointNaming
    /// Every backbone tensor of the configuration, in ParameterTable order.
    public let tensors: [StoredTensor]
    /// The classifier's key stem (`stem.weight` [K, f], `stem.bias` [K]).
    public let head: String
    /// Per block: its key stem (for Serial LoRA's adapter names) and, for formats with
    /// separate projections, the module of each LoRA target.
    public let blockStems: [String]
    public let targetModules: [[LoRATarget: String]]
    /// Keys a file may hold that the model does not use (HF ViT's pooler, DINOv2's mask token,
    /// CLIP's text tower).
    let ignorable: @Sendable (String) -> Bool

    /// The layout of `naming` for `config`. `file`, when given, decides what a format leaves
    /// open: an HF model prefix (`vit.`, `dinov2.`, `vision_model.`) and whether timm or
    /// open_clip blocks carry LayerScale. Without a file (writing), the prefixed form is used.
    public init(_ naming: CheckpointNaming, config: ViTConfig, file: SafeTensorsFile? = nil) {
        self.naming = naming
        let d = config.width, m = config.mlpWidth, e = config.featureWidth
        let patch = [d, config.channels, config.patchSize, config.patchSize]
        var tensors: [StoredTensor] = []
        var stems: [String] = [], modules: [[LoRATarget: String]] = []
        func add(_ name: String, _ form: StoredTensor.Form, scale: String? = nil) { tensors.append(StoredTensor(name: name, form: form, layerScale: scale)) }
        func linear(_ name: String, _ key: String, _ shape: [Int], scale: String? = nil) {
            add(name + ".weight", .single(key + ".weight", shape: shape), scale: scale)
            add(name + ".bias", .single(key + ".bias", shape: [shape[0]]), scale: scale)
        }
        func norm(_ name: String, _ key: String) { linear(name, key, [d]) }
        func prefix(_ candidate: String, probe: String) -> String {
            guard let file else { return candidate }
            return file.entry(candidate + probe) != nil ? candidate : ""
        }
        // The per-block keys, in the internal order (norm1, qkv, proj, norm2, fc1, fc2).
        struct Block {
            var norm1: String, qkv: [String], proj: String, norm2: String, fc1: String, fc2: String
            var layerScale: (String, String)?
        }
        func block(_ i: Int, _ b: Block) {
            let p = "blocks.\(i)."
            norm(p + "norm1", b.norm1)
            if b.qkv.count == 1 {
                linear(p + "qkv", b.qkv[0], [3 * d, d])
                modules.append([.o: b.proj])
            } else {
                add(p + "qkv.weight", .stacked(b.qkv.map { $0 + ".weight" }, shape: [d, d]))
                add(p + "qkv.bias", .stacked(b.qkv.map { $0 + ".bias" }, shape: [d]))
                modules.append([.q: b.qkv[0], .k: b.qkv[1], .v: b.qkv[2], .o: b.proj])
            }
            linear(p + "proj", b.proj, [d, d], scale: b.layerScale?.0)
            norm(p + "norm2", b.norm2)
            linear(p + "fc1", b.fc1, [m, d])
            linear(p + "fc2", b.fc2, [d, m], scale: b.layerScale?.1)
        }
        let ignorable: @Sendable (String) -> Bool
        switch naming {
        case .hfViT, .hfDinov2:
            let dino = naming == .hfDinov2
            let p = prefix(dino ? "dinov2." : "vit.", probe: "embeddings.cls_token")
            add("patch.weight", .single(p + "embeddings.patch_embeddings.projection.weight", shape: patch))
            add("patch.bias", .single(p + "embeddings.patch_embeddings.projection.bias", shape: [d]))
            add("cls", .single(p + "embeddings.cls_token", shape: [1, 1, d]))
            add("pos", .single(p + "embeddings.position_embeddings", shape: [1, config.tokens, d]))
            for i in 0..<config.layers {
                let b = p + "encoder.layer.\(i)."
                stems.append(String(b.dropLast()))
                let attention = ["query", "key", "value"].map { b + "attention.attention." + $0 }
                block(i, dino
                      ? Block(norm1: b + "norm1", qkv: attention, proj: b + "attention.output.dense", norm2: b + "norm2",
                              fc1: b + "mlp.fc1", fc2: b + "mlp.fc2", layerScale: (b + "layer_scale1.lambda1", b + "layer_scale2.lambda1"))
                      : Block(norm1: b + "layernorm_before", qkv: attention, proj: b + "attention.output.dense", norm2: b + "layernorm_after",
                              fc1: b + "intermediate.dense", fc2: b + "output.dense"))
            }
            norm("norm", p + "layernorm")
            head = "classifier"
            let extra: Set<String> = [p + "pooler.dense.weight", p + "pooler.dense.bias", p + "embeddings.mask_token"]
            ignorable = { extra.contains($0) }
        case .timm:
            let hasLayerScale = file?.entry("blocks.0.ls1.gamma") != nil
            add("patch.weight", .single("patch_embed.proj.weight", shape: patch))
            add("patch.bias", .single("patch_embed.proj.bias", shape: [d]))
            add("cls", .single("cls_token", shape: [1, 1, d]))
            add("pos", .single("pos_embed", shape: [1, config.tokens, d]))
            for i in 0..<config.layers {
                let b = "blocks.\(i)."
                stems.append("blocks.\(i)")
                block(i, Block(norm1: b + "norm1", qkv: [b + "attn.qkv"], proj: b + "attn.proj", norm2: b + "norm2", fc1: b + "mlp.fc1",
                               fc2: b + "mlp.fc2", layerScale: hasLayerScale ? (b + "ls1.gamma", b + "ls2.gamma") : nil))
            }
            norm("norm", "norm")
            head = "head"
            ignorable = { $0 == "mask_token" }
        case .hfCLIP:
            let p = prefix("vision_model.", probe: "embeddings.class_embedding")
            add("patch.weight", .single(p + "embeddings.patch_embedding.weight", shape: patch))
            add("cls", .single(p + "embeddings.class_embedding", shape: [d]))
            add("pos", .single(p + "embeddings.position_embedding.weight", shape: [config.tokens, d]))
            norm("embedding_norm", p + "pre_layrnorm")
            for i in 0..<config.layers {
                let b = p + "encoder.layers.\(i)."
                stems.append(String(b.dropLast()))
                block(i, Block(norm1: b + "layer_norm1", qkv: ["q", "k", "v"].map { b + "self_attn.\($0)_proj" }, proj: b + "self_attn.out_proj",
                               norm2: b + "layer_norm2", fc1: b + "mlp.fc1", fc2: b + "mlp.fc2"))
            }
            norm("norm", p + "post_layernorm")
            if config.architecture.projection != nil { add("projection.weight", .single("visual_projection.weight", shape: [e, d])) }
            head = "classifier"
            let usesProjection = config.architecture.projection != nil
            ignorable = { key in
                key.hasPrefix("text_model.") || key == "text_projection.weight" || key == "logit_scale" || key.hasSuffix("embeddings.position_ids")
                    || (!usesProjection && key == "visual_projection.weight")
            }
        case .openCLIP:
            let hasLayerScale = file?.entry("visual.transformer.resblocks.0.ls_1.gamma") != nil
            add("patch.weight", .single("visual.conv1.weight", shape: patch))
            add("cls", .single("visual.class_embedding", shape: [d]))
            add("pos", .single("visual.positional_embedding", shape: [config.tokens, d]))
            norm("embedding_norm", "visual.ln_pre")
            for i in 0..<config.layers {
                let b = "visual.transformer.resblocks.\(i)."
                stems.append(String(b.dropLast()))
                let p = "blocks.\(i)."
                norm(p + "norm1", b + "ln_1")
                add(p + "qkv.weight", .single(b + "attn.in_proj_weight", shape: [3 * d, d]))
                add(p + "qkv.bias", .single(b + "attn.in_proj_bias", shape: [3 * d]))
                linear(p + "proj", b + "attn.out_proj", [d, d], scale: hasLayerScale ? b + "ls_1.gamma" : nil)
                norm(p + "norm2", b + "ln_2")
                linear(p + "fc1", b + "mlp.c_fc", [m, d])
                linear(p + "fc2", b + "mlp.c_proj", [d, m], scale: hasLayerScale ? b + "ls_2.gamma" : nil)
                modules.append([.o: b + "attn.out_proj"])
            }
            norm("norm", "visual.ln_post")
            if config.architecture.projection != nil { add("projection.weight", .transposed("visual.proj", shape: [d, e])) }
            head = "classifier"
            // A whole CLIP model's text tower (everything outside visual.).
            ignorable = { !$0.hasPrefix("visual.") && !$0.hasPrefix("classifier.") }
        }
        self.tensors = tensors
        blockStems = stems
        targetModules = modules
        self.ignorable = ignorable
    }

    /// Guesses the naming from the keys, for files without a config.json.
    public static func detectNaming(_ file: SafeTensorsFile) -> CheckpointNaming? {
        let names = Set(file.names)
        if names.contains("visual.conv1.weight") { return .openCLIP }
        if names.contains("cls_token") || names.contains("patch_embed.proj.weight") { return .timm }
        if names.contains(where: { $0.hasSuffix("encoder.layer.0.layernorm_before.weight") }) { return .hfViT }
        if names.contains(where: { $0.hasSuffix("encoder.layer.0.norm1.weight") }) { return .hfDinov2 }
        if names.contains(where: { $0.hasSuffix("embeddings.class_embedding") }) { return .hfCLIP }
        return nil
    }
}
