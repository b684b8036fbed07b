import Foundation

/// Which transformers generation's module names a PEFT adapter uses. transformers 4 names the
/// attention projections `encoder.layer.N.attention.attention.{query,key,value}` and
/// `attention.output.dense`; transformers 5 names them `layers.N.attention.{q,k,v,o}_proj` (ViT)
/// and `encoder.layer.N.attention.{q,k,v,o}_proj` (DINOv2).
public enum PEFTNaming: String, Sendable, CaseIterable {
    case transformers4
    case transformers5
}

/// LoRA adapters as PEFT writes and reads them: a directory with adapter_config.json
/// (peft_type LORA, r, lora_alpha, target_modules, modules_to_save) and adapter_model.safetensors
/// (`base_model.model.<module>.lora_A.weight` [r, d], `lora_B.weight` [d, r], the trained head as
/// `base_model.model.classifier.{weight,bias}`, metadata format "pt").
///
/// Reading accepts HF ViT and DINOv2 bases in both naming generations. On DINOv2, whose
/// LayerScale sloragpu folds into the output projection, an o adapter's B is scaled by the
/// base's lambda1 so that the folded model computes what PEFT's unfolded one does. Writing uses
/// HF ViT names (the form of `sloragpu export base`, and of any HF ViT checkpoint). Serial LoRA
/// has no PEFT type; its route into transformers is `sloragpu merge`.
public enum PEFTAdapter {
    public static let configFile = "adapter_config.json"
    public static let weightsFile = "adapter_model.safetensors"

    /// The adapter_config.json and weights of a PEFT adapter at `url` (its directory, or its
    /// adapter_model.safetensors), or nil when `url` is not one.
    public static func locate(_ url: URL) -> (config: URL, weights: URL)? {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory) else { return nil }
        let directory = isDirectory.boolValue ? url : url.deletingLastPathComponent()
        let weights = isDirectory.boolValue ? directory.appendingPathComponent(weightsFile) : url
        let config = directory.appendingPathComponent(configFile)
        guard FileManager.default.fileExists(atPath: config.path), FileManager.default.fileExists(atPath: weights.path) else { return nil }
        return (config, weights)
    }

    /// What the reader needs of the base: its architecture, class names (id2label), and for
    /// DINOv2 bases the LayerScale lambda1 of block i (nil for other bases).
    public struct Base {
        public var config: ViTConfig
        public var classNames: [String]
        public var layerScale1: (Int) throws -> [Float]?

        public init(config: ViTConfig, classNames: [String], layerScale1: @escaping (Int) throws -> [Float]? = { _ in nil }) {
            (self.config, self.classNames, self.layerScale1) = (config, classNames, layerScale1)
        }
    }

    /// Reads a PEFT LoRA adapter for `base`. Every key must be a LoRA factor of a q, k, v or o
    /// projection or the head; the same targets in every block; shapes, rank and finiteness are
    /// checked; options sloragpu cannot reproduce exactly (DoRA, trained biases, per-layer rank
    /// or alpha patterns, a subset of layers) are refused.
    public static func load(config configURL: URL, weights weightsURL: URL, base: Base) throws -> AdapterFile.Contents {
        guard let data = try? Data(contentsOf: configURL) else { throw CheckpointError(file: configURL.path, "cannot read the file") }
        return try load(configData: data, configPath: configURL.path, weights: try SafeTensorsFile(contentsOf: weightsURL), base: base)
    }

    /// The same from an adapter_config.json's bytes (`configPath` names it in errors) and the
    /// opened weights.
    public static func load(configData data: Data, configPath: String, weights file: SafeTensorsFile, base: Base) throws -> AdapterFile.Contents {
        let fail = { (problem: String) in CheckpointError(file: configPath, problem) }
        let weightsURL = URL(fileURLWithPath: file.path)
        guard let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw fail("not a readable JSON object")
        }
        guard (json["peft_type"] as? String)?.uppercased() == "LORA" else {
            throw fail("peft_type is \(json["peft_type"] ?? "missing"); only LORA adapters have a sloragpu equivalent")
        }
        guard let rankNumber = json["r"] as? NSNumber, !isJSONBoolean(rankNumber), let alphaNumber = json["lora_alpha"] as? NSNumber,
              !isJSONBoolean(alphaNumber), alphaNumber.doubleValue.isFinite else {
            throw fail("'r' and 'lora_alpha' must be numbers")
        }
        // Range-checked as a Double before it becomes an Int (1e300 would not fit).
        let rankValue = rankNumber.doubleValue
        guard rankValue == rankValue.rounded(), rankValue >= 1, rankValue <= Double(base.config.width) else {
            throw fail("'r' is \(rankNumber), outside 1...\(base.config.width)")
        }
        let rank = Int(rankValue)
        for (key, refused) in [("use_dora", "DoRA"), ("fan_in_fan_out", "fan_in_fan_out"), ("lora_bias", "lora_bias")] where json[key] as? Bool == true {
            throw fail("\(refused) adapters are not supported")
        }
        if let bias = json["bias"] as? String, bias != "none" { throw fail("bias '\(bias)' is not supported (only 'none')") }
        for key in ["rank_pattern", "alpha_pattern"] {
            if let pattern = json[key] as? [String: Any], !pattern.isEmpty { throw fail("'\(key)' (per-layer rank or alpha) is not supported") }
        }
        for key in ["layers_to_transform", "layer_replication"] {
            if let value = json[key], !(value is NSNull) { throw fail("'\(key)' is not supported: sloragpu adapts every block once") }
        }
        // rsLoRA scales by alpha / sqrt(r); sloragpu's scale is alpha / r, so alpha' = alpha sqrt(r).
        var alpha = Float(alphaNumber.doubleValue)
        if json["use_rslora"] as? Bool == true { alpha *= Float(rank).squareRoot() }
        guard alpha.isFinite else { throw fail("'lora_alpha' is \(alphaNumber), not a finite fp32 value") }

        let d = base.config.width, features = base.config.featureWidth
        var perLayer: [Int: Set<LoRATarget>] = [:]
        var factors: [String: [Float]] = [:]
        var headWeight: [Float]?, headBias: [Float]?
        var unknown: [String] = []
        for entry in file.entries {
            let name = entry.name
            if name == "base_model.model.classifier.weight" || name == "base_model.model.classifier.modules_to_save.weight" {
                guard entry.shape.count == 2, entry.shape[1] == features, (1...ViTConfig.Limits.classes).contains(entry.shape[0]) else {
                    throw CheckpointError(file: weightsURL.path, tensor: name, "is \(entry.shape), expected [classes, \(features)]")
                }
                headWeight = try file.finiteFloats(name)
                continue
            }
            if name == "base_model.model.classifier.bias" || name == "base_model.model.classifier.modules_to_save.bias" {
                headBias = try file.finiteFloats(name)
                continue
            }
            guard let (layer, target, factor, family) = parseLoRAKeyWithFamily(name), layer < base.config.layers else {
                unknown.append(name)
                continue
            }
            let expected = factor == "A" ? [rank, d] : [d, rank]
            guard entry.shape == expected else {
                throw CheckpointError(file: weightsURL.path, tensor: name, "is \(entry.shape), expected \(expected) for r = \(rank)")
            }
            var values = try file.finiteFloats(name)
            // Only adapters written against the unfolded DINOv2 (its names, or a bare encoder on a
            // DINOv2 base) need LayerScale; "vit." names address the HF ViT form, already folded
            // (what sloragpu writes).
            if target == .o, factor == "B", family != "vit", let lambda = try base.layerScale1(layer) {
                guard lambda.count == d else {
                    throw CheckpointError(file: weightsURL.path, tensor: name, "the base's LayerScale of block \(layer) holds \(lambda.count) values, not \(d)")
                }
                // PEFT: lambda * (W x + s B A x); folded: (lambda W) x + s (lambda B) A x.
                for row in 0..<d { for column in 0..<rank { values[row * rank + column] *= lambda[row] } }
            }
            factors["blocks.\(layer).lora.\(target.rawValue).\(factor)"] = values
            perLayer[layer, default: []].insert(target)
        }
        guard unknown.isEmpty else {
            throw CheckpointError(file: weightsURL.path, "keys that are not LoRA factors of q, k, v or o nor the classifier: "
                                  + unknown.prefix(8).joined(separator: ", ") + (unknown.count > 8 ? ", ..." : ""))
        }
        let targets = perLayer[0] ?? []
        guard !targets.isEmpty, (0..<base.config.layers).allSatisfy({ perLayer[$0] == targets }) else {
            throw CheckpointError(file: weightsURL.path, "sloragpu applies the same LoRA targets to every block; this adapter has "
                                  + (0..<base.config.layers).map { "block \($0): \((perLayer[$0] ?? []).map(\.rawValue).sorted().joined())" }.joined(separator: ", "))
        }
        for layer in 0..<base.config.layers {
            for target in targets where factors["blocks.\(layer).lora.\(target.rawValue).A"] == nil || factors["blocks.\(layer).lora.\(target.rawValue).B"] == nil {
                throw CheckpointError(file: weightsURL.path, "block \(layer), target \(target.rawValue): lora_A and lora_B must both be present")
            }
        }
        guard let headWeight else {
            throw CheckpointError(file: weightsURL.path, "holds no classifier (modules_to_save: [\"classifier\"]); sloragpu needs the trained head")
        }
        guard let headBias, headBias.count == headWeight.count / features else {
            throw CheckpointError(file: weightsURL.path, tensor: "base_model.model.classifier.bias", "missing or not [\(headWeight.count / features)]")
        }
        var config = base.config
        config.classes = headBias.count
        try config.validate()
        var values = factors
        values["head.weight"] = headWeight
        values["head.bias"] = headBias
        let ordered = LoRATarget.allCases.filter(targets.contains)
        return AdapterFile.Contents(method: .lora(rank: rank, alpha: alpha, targets: ordered), config: config,
                                    classNames: base.classNames.count == config.classes ? base.classNames : [], values: values)
    }

    /// (block, target, "A" or "B") of a PEFT LoRA key in either generation, HF ViT or DINOv2,
    /// with or without the task model's prefix; nil for anything else.
    static func parseLoRAKey(_ key: String) -> (Int, LoRATarget, String)? {
        parseLoRAKeyWithFamily(key).map { ($0.0, $0.1, $0.2) }
    }

    /// The same, with the task model's prefix ("vit", "dinov2", or "" for a bare encoder).
    static func parseLoRAKeyWithFamily(_ key: String) -> (Int, LoRATarget, String, String)? {
        guard key.hasPrefix("base_model.model.") else { return nil }
        var parts = key.dropFirst("base_model.model.".count).split(separator: ".").map(String.init)
        guard parts.count >= 5, parts.last == "weight", ["lora_A", "lora_B"].contains(parts[parts.count - 2]) else { return nil }
        let factor = parts[parts.count - 2] == "lora_A" ? "A" : "B"
        parts.removeLast(2)
        var family = ""
        if ["vit", "dinov2", "vision_model"].contains(parts[0]) { family = parts.removeFirst() }
        let module: ArraySlice<String>
        let layer: Int?
        if parts.count >= 3, parts[0] == "encoder", parts[1] == "layer" || parts[1] == "layers" {
            (layer, module) = (Int(parts[2]), parts[3...])
        } else if parts.count >= 2, parts[0] == "layers" {
            (layer, module) = (Int(parts[1]), parts[2...])
        } else {
            return nil
        }
        guard let layer, layer >= 0 else { return nil }
        let targets: [[String]: LoRATarget] = [
            ["attention", "attention", "query"]: .q, ["attention", "attention", "key"]: .k, ["attention", "attention", "value"]: .v,
            ["attention", "output", "dense"]: .o,
            ["attention", "q_proj"]: .q, ["attention", "k_proj"]: .k, ["attention", "v_proj"]: .v, ["attention", "o_proj"]: .o,
            ["self_attn", "q_proj"]: .q, ["self_attn", "k_proj"]: .k, ["self_attn", "v_proj"]: .v, ["self_attn", "out_proj"]: .o,
        ]
        guard let target = targets[Array(module)] else { return nil }
        return (layer, target, factor, family)
    }

    /// The PEFT module name of a target: HF ViT's in either generation; CLIP's (the same in
    /// both) from its layout.
    static func moduleName(layer: Int, target: LoRATarget, naming: PEFTNaming, layout: CheckpointLayout) -> String {
        if layout.naming == .hfCLIP, let module = layout.targetModules[layer][target] { return module }
        switch naming {
        case .transformers4:
            let module = ["q": "attention.attention.query", "k": "attention.attention.key", "v": "attention.attention.value", "o": "attention.output.dense"]
            return "vit.encoder.layer.\(layer).\(module[target.rawValue]!)"
        case .transformers5:
            return "vit.layers.\(layer).attention.\(target.rawValue)_proj"
        }
    }

    /// Writes a LoRA adapter as a PEFT directory (adapter_config.json, adapter_model.safetensors)
    /// for an HF ViT base in `naming`; `baseModel` goes into base_model_name_or_path.
    public static func write(_ contents: AdapterFile.Contents, to directory: URL, naming: PEFTNaming, baseModel: String) throws {
        guard case .lora(let rank, let alpha, let targets) = contents.method else {
            throw CheckpointError(file: directory.path, "only LoRA adapters have a PEFT form (\(contents.method.name) has none; merge it instead)")
        }
        let config = contents.config, d = config.width
        let layout = AdapterFile.adapterLayout(config)
        var tensors: [(name: String, shape: [Int], values: [Float])] = []
        for layer in 0..<config.layers {
            for target in targets {
                for (factor, shape) in [("A", [rank, d]), ("B", [d, rank])] {
                    guard let values = contents.values["blocks.\(layer).lora.\(target.rawValue).\(factor)"] else {
                        throw CheckpointError(file: directory.path, tensor: "blocks.\(layer).lora.\(target.rawValue).\(factor)", "no values to export")
                    }
                    tensors.append(("base_model.model.\(moduleName(layer: layer, target: target, naming: naming, layout: layout)).lora_\(factor).weight", shape, values))
                }
            }
        }
        guard let headWeight = contents.values["head.weight"], let headBias = contents.values["head.bias"] else {
            throw CheckpointError(file: directory.path, tensor: "head.weight", "no values to export")
        }
        tensors.append(("base_model.model.classifier.weight", [config.classes, config.featureWidth], headWeight))
        tensors.append(("base_model.model.classifier.bias", [config.classes], headBias))
        let targetModules: [String] = targets.map { target in
            if config.architecture.family == .clip { return ["q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "out_proj"][target.rawValue]! }
            return switch naming {
            case .transformers4: ["q": "query", "k": "key", "v": "value", "o": "attention.output.dense"][target.rawValue]!
            case .transformers5: "\(target.rawValue)_proj"
            }
        }
        let adapterConfig: [String: Any] = [
            "peft_type": "LORA", "task_type": NSNull(), "r": rank, "lora_alpha": Double(alpha), "lora_dropout": 0.0, "bias": "none",
            "target_modules": targetModules, "modules_to_save": ["classifier"], "fan_in_fan_out": false, "use_rslora": false,
            "use_dora": false, "init_lora_weights": true, "inference_mode": true, "layers_to_transform": NSNull(),
            "rank_pattern": [String: Any](), "alpha_pattern": [String: Any](), "base_model_name_or_path": baseModel, "revision": NSNull(),
        ]
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        try SafeTensorsFile.write(tensors, metadata: ["format": "pt"], to: directory.appendingPathComponent(weightsFile))
        try writeAtomically(try JSONSerialization.data(withJSONObject: adapterConfig, options: [.prettyPrinted, .sortedKeys]),
                            to: directory.appendingPathComponent(configFile))
    }
}
