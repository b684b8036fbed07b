import Foundation

/// Internal names -> a checkpoint in a naming, through its CheckpointLayout (the inverse of
/// CheckpointReader), and the config file that names the architecture for the ecosystem that
/// reads that naming.
public enum CheckpointExport {
    public typealias Tensors = [(name: String, shape: [Int], values: [Float])]

    /// The tensors of `values` (every backbone tensor of `config` and the head) in `naming`.
    /// LayerScale-folded namings (DINOv2, timm with LayerScale) cannot be written: export to
    /// `naming.exportNaming`.
    public static func tensors(_ values: [String: [Float]], config: ViTConfig, naming: CheckpointNaming, file: String) throws -> Tensors {
        let layout = CheckpointLayout(naming, config: config)
        var out: Tensors = []
        func source(_ name: String) throws -> [Float] {
            guard let all = values[name] else { throw CheckpointError(file: file, tensor: name, "no values to export") }
            return all
        }
        for stored in layout.tensors {
            guard stored.layerScale == nil else { throw CheckpointError(file: file, tensor: stored.name, "\(naming.rawValue) folds LayerScale on load and cannot be written back") }
            let all = try source(stored.name)
            let count = stored.keys.count * (stored.form.shape.reduce(1, *))
            guard all.count == count else { throw CheckpointError(file: file, tensor: stored.name, "has \(all.count) values, expected \(count)") }
            switch stored.form {
            case .single(let key, let shape):
                out.append((key, shape, all))
            case .stacked(let keys, let shape):
                let part = shape.reduce(1, *)
                for (index, key) in keys.enumerated() { out.append((key, shape, Array(all[index * part..<(index + 1) * part]))) }
            case .transposed(let key, let shape):
                out.append((key, shape, transpose(all, rows: shape[1], columns: shape[0])))
            }
        }
        let headWeight = try source("head.weight"), headBias = try source("head.bias")
        guard headWeight.count == config.classes * config.featureWidth, headBias.count == config.classes else {
            throw CheckpointError(file: file, tensor: "head.weight", "the head holds \(headWeight.count) and \(headBias.count) values, expected [\(config.classes), \(config.featureWidth)] and [\(config.classes)]")
        }
        out.append((layout.head + ".weight", [config.classes, config.featureWidth], headWeight))
        out.append((layout.head + ".bias", [config.classes], headBias))
        return out
    }

    /// A checkpoint directory in `naming`: the weights (model.safetensors), the config file, and
    /// the preprocessor_config.json of its normalisation and input size.
    /// `dtype`: the weights' file type (F32, or F16 / BF16 as the base was stored).
    public static func write(_ values: [String: [Float]], config: ViTConfig, naming: CheckpointNaming, classNames: [String],
                             dtype: SafeTensorsDType = .F32, to directory: URL) throws {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let weights = directory.appendingPathComponent("model.safetensors")
        try SafeTensorsFile.write(try tensors(values, config: config, naming: naming, file: weights.path), dtype: dtype, to: weights)
        let (name, data) = try configFile(config, naming: naming, classNames: classNames)
        try writeAtomically(data, to: directory.appendingPathComponent(name))
        try writeAtomically(try ImagePreprocessing.viTImageProcessorJSON(config), to: directory.appendingPathComponent("preprocessor_config.json"))
    }

    /// The config file beside the weights: its name and bytes. HF ViT: ViTForImageClassification's
    /// config.json; HF CLIP: CLIPForImageClassification's (a CLIPConfig with vision_config), or
    /// for a projected head CLIPVisionModelWithProjection's (the classifier is sloragpu's, which
    /// transformers reports as an unused key); open_clip: open_clip_config.json (model_cfg,
    /// preprocess_cfg, and the class names).
    public static func configFile(_ config: ViTConfig, naming: CheckpointNaming, classNames: [String]) throws -> (name: String, data: Data) {
        let names = classNames.count == config.classes ? classNames : (0..<config.classes).map { "LABEL_\($0)" }
        let id2label = Dictionary(uniqueKeysWithValues: names.enumerated().map { (String($0.offset), $0.element) })
        let label2id = Dictionary(uniqueKeysWithValues: names.enumerated().map { ($0.element, $0.offset) })
        let mean = config.mean.map(Double.init), std = config.std.map(Double.init)
        let activation = config.architecture.activation.rawValue
        let object: [String: Any]
        var name = "config.json"
        switch naming {
        case .hfViT, .hfDinov2, .timm:
            object = [
                "model_type": "vit", "architectures": ["ViTForImageClassification"],
                "hidden_size": config.width, "num_hidden_layers": config.layers, "num_attention_heads": config.heads,
                "intermediate_size": config.mlpWidth, "hidden_act": "gelu", "layer_norm_eps": Double(config.layerNormEpsilon),
                "image_size": config.imageSize, "patch_size": config.patchSize, "num_channels": config.channels, "qkv_bias": true,
                "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "id2label": id2label, "label2id": label2id,
                "image_mean": mean, "image_std": std,
            ]
        case .hfCLIP:
            var vision: [String: Any] = [
                "model_type": "clip_vision_model", "hidden_size": config.width, "num_hidden_layers": config.layers,
                "num_attention_heads": config.heads, "intermediate_size": config.mlpWidth, "hidden_act": activation,
                "layer_norm_eps": Double(config.layerNormEpsilon), "image_size": config.imageSize, "patch_size": config.patchSize,
                "num_channels": config.channels, "attention_dropout": 0.0,
            ]
            if let projection = config.architecture.projection {
                vision["projection_dim"] = projection
                vision["architectures"] = ["CLIPVisionModelWithProjection"]
                vision["id2label"] = id2label
                vision["label2id"] = label2id
                vision["image_mean"] = mean
                vision["image_std"] = std
                object = vision
            } else {
                vision.removeValue(forKey: "model_type")
                object = [
                    "model_type": "clip", "architectures": ["CLIPForImageClassification"], "vision_config": vision,
                    "id2label": id2label, "label2id": label2id, "image_mean": mean, "image_std": std,
                ]
            }
        case .openCLIP:
            name = "open_clip_config.json"
            object = [
                "model_cfg": [
                    "embed_dim": config.featureWidth, "quick_gelu": config.architecture.activation == .quickGELU,
                    "vision_cfg": [
                        "image_size": config.imageSize, "layers": config.layers, "width": config.width, "patch_size": config.patchSize,
                        "head_width": config.headDimension, "mlp_ratio": Double(config.mlpWidth) / Double(config.width),
                    ] as [String: Any],
                ] as [String: Any],
                "preprocess_cfg": ["mean": mean, "std": std],
                "class_names": names,
            ]
        }
        return (name, try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys]))
    }
}

/// Base + adapter -> plain weights whose forward equals the adapted forward.
/// Serial LoRA: W_qkv <- W_qkv + s (W_qkv B) A (biases unchanged). LoRA: W_x <- W_x + s B_x A_x.
public enum Merge {
    public static func merged(base: [String: [Float]], adapter: AdapterFile.Contents) throws -> [String: [Float]] {
        let config = adapter.config, d = config.width
        var result = base
        for (name, values) in adapter.values { result[name] = values }
        func product(_ left: [Float], _ right: [Float], rows: Int, inner: Int, columns: Int) -> [Double] {
            var out = [Double](repeating: 0, count: rows * columns)
            for i in 0..<rows {
                for k in 0..<inner {
                    let l = Double(left[i * inner + k])
                    if l == 0 { continue }
                    for j in 0..<columns { out[i * columns + j] += l * Double(right[k * columns + j]) }
                }
            }
            return out
        }
        let s = Double(adapter.method.scale)
        // Every tensor with the count its role needs (the arithmetic below indexes by shape).
        func tensor(_ name: String, _ count: Int) throws -> [Float] {
            guard let values = result[name], values.count == count else {
                throw ConfigError("merge: \(name) is \(result[name].map { "\($0.count) values" } ?? "missing"), expected \(count) values")
            }
            return values
        }
        for i in 0..<config.layers {
            let p = "blocks.\(i)."
            switch adapter.method {
            case .serial(let rank, _):
                let w = try tensor(p + "qkv.weight", 3 * d * d), a = try tensor(p + "serial.A", rank * d), b = try tensor(p + "serial.B", d * rank)
                let c = product(w, b, rows: 3 * d, inner: d, columns: rank).map(Float.init)    // W B   [3d, r]
                let delta = product(c, a, rows: 3 * d, inner: rank, columns: d)                // (W B) A [3d, d]
                result[p + "qkv.weight"] = zip(w, delta).map { Float(Double($0) + s * $1) }
                result[p + "serial.A"] = nil
                result[p + "serial.B"] = nil
            case .lora(let rank, _, let targets):
                for target in targets {
                    let a = try tensor(p + "lora.\(target.rawValue).A", rank * d), b = try tensor(p + "lora.\(target.rawValue).B", d * rank)
                    let delta = product(b, a, rows: d, inner: rank, columns: d)                // B A [d, d]
                    let (key, offset) = target.qkvIndex.map { (p + "qkv.weight", $0 * d * d) } ?? (p + "proj.weight", 0)
                    var w = try tensor(key, (target.qkvIndex == nil ? 1 : 3) * d * d)
                    for index in 0..<d * d { w[offset + index] = Float(Double(w[offset + index]) + s * delta[index]) }
                    result[key] = w
                    result[p + "lora.\(target.rawValue).A"] = nil
                    result[p + "lora.\(target.rawValue).B"] = nil
                }
            case .full, .probe:
                break
            }
        }
        return result
    }
}
