import Foundation

/// Small safetensors files with the trainable tensors plus the head, and `__metadata__`
/// (format, method, rank, alpha, targets, base config, class names).
///
/// Names: Serial LoRA `vit.encoder.layer.{i}.serial_lora.A` [r, d] / `.B` [d, r]; LoRA in
/// PEFT's names (`base_model.model.vit.encoder.layer.{i}.attention.attention.query.lora_A.weight`
/// [r, d], `lora_B.weight` [d, r]; `...attention.output.dense...` for o) so PEFT users can read
/// them; the head `classifier.weight` / `classifier.bias`. A full fine-tune is saved whole in
/// HF ViT names (it is a checkpoint, not an adapter).
public enum AdapterFile {
    public static let format = "sloragpu-adapter"

    public struct Contents {
        public var method: FineTuningMethod
        public var config: ViTConfig
        public var classNames: [String]
        /// Internal names -> values: adapters and head (everything, for a full fine-tune).
        public var values: [String: [Float]]
        /// `BaseFingerprint` of the backbone it was trained on (nil in files written before it
        /// was recorded, and in PEFT adapters).
        public var baseFingerprint: String?

        public init(method: FineTuningMethod, config: ViTConfig, classNames: [String], values: [String: [Float]], baseFingerprint: String? = nil) {
            (self.method, self.config, self.classNames, self.values) = (method, config, classNames, values)
            self.baseFingerprint = baseFingerprint
        }

        /// Refuses a base whose fingerprint differs from the one this adapter was trained on
        /// (a full fine-tune carries its whole model and fits any base of its shape).
        public func checkBase(_ fingerprint: String, path: String) throws {
            guard method != .full, let baseFingerprint, baseFingerprint != fingerprint else { return }
            throw CheckpointError(file: path, """
                was trained on a base with fingerprint \(baseFingerprint), but this base's is \(fingerprint): \
                another model, or one the adapter is already merged into (pass --allow-other-base to apply it anyway)
                """)
        }
    }

    static func externalName(_ name: String) -> String? {
        if name == "head.weight" { return "classifier.weight" }
        if name == "head.bias" { return "classifier.bias" }
        let parts = name.split(separator: ".").map(String.init)
        guard parts.count >= 4, parts[0] == "blocks", let layer = Int(parts[1]) else { return nil }
        if parts[2] == "serial", parts.count == 4 { return "vit.encoder.layer.\(layer).serial_lora.\(parts[3])" }
        if parts[2] == "lora", parts.count == 5, let target = LoRATarget(rawValue: parts[3]) {
            let module: String
            switch target {
            case .q: module = "attention.attention.query"
            case .k: module = "attention.attention.key"
            case .v: module = "attention.attention.value"
            case .o: module = "attention.output.dense"
            }
            return "base_model.model.vit.encoder.layer.\(layer).\(module).lora_\(parts[4]).weight"
        }
        return nil
    }

    public static func save(_ contents: Contents, to url: URL) throws {
        let specs = ParameterTable.specs(contents.config, contents.method).filter(\.trainable)
        var tensors: [(name: String, shape: [Int], values: [Float])] = []
        if contents.method == .full {
            tensors = try HFViTExport.tensors(contents.values, config: contents.config, file: url.path)
        } else {
            for spec in specs {
                guard let values = contents.values[spec.name], let name = externalName(spec.name) else {
                    throw CheckpointError(file: url.path, tensor: spec.name, "no values to save")
                }
                tensors.append((name, spec.shape, values))
            }
        }
        try SafeTensorsFile.write(tensors, metadata: try metadata(contents), to: url)
    }

    static func metadata(_ contents: Contents) throws -> [String: String] {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        var metadata = [
            "format": format, "method": contents.method.name,
            "config": String(decoding: try encoder.encode(contents.config), as: UTF8.self),
            "class_names": String(decoding: try encoder.encode(contents.classNames), as: UTF8.self),
        ]
        if let fingerprint = contents.baseFingerprint { metadata["base_fingerprint"] = fingerprint }
        switch contents.method {
        case .serial(let rank, let alpha):
            metadata["rank"] = String(rank)
            metadata["alpha"] = String(alpha)
        case .lora(let rank, let alpha, let targets):
            metadata["rank"] = String(rank)
            metadata["alpha"] = String(alpha)
            metadata["targets"] = targets.map(\.rawValue).joined(separator: ",")
        case .full, .probe:
            break
        }
        return metadata
    }

    public static func load(_ url: URL) throws -> Contents {
        try load(try SafeTensorsFile(contentsOf: url))
    }

    /// Validates the metadata whole (format, method, rank, alpha, config, class names) and
    /// every tensor (present, of its shape, finite) before returning anything.
    public static func load(_ file: SafeTensorsFile) throws -> Contents {
        let fail = { (problem: String) in CheckpointError(file: file.path, problem) }
        guard file.metadata["format"] == format else { throw fail("not a sloragpu adapter file (metadata format is \(file.metadata["format"] ?? "missing"))") }
        guard let configText = file.metadata["config"], let config = try? JSONDecoder().decode(ViTConfig.self, from: Data(configText.utf8)) else {
            throw fail("metadata 'config' is missing or not a ViT config")
        }
        var classNames: [String] = []
        if let text = file.metadata["class_names"] {
            guard let names = try? JSONDecoder().decode([String].self, from: Data(text.utf8)) else {
                throw fail("metadata 'class_names' is not a JSON list of strings")
            }
            classNames = names
        }
        let method: FineTuningMethod
        let rank = file.metadata["rank"].flatMap(Int.init), alpha = file.metadata["alpha"].flatMap(Float.init)
        if let alpha, !alpha.isFinite { throw fail("metadata 'alpha' is \(alpha); it must be a finite number") }
        switch file.metadata["method"] {
        case "serial":
            guard let rank, let alpha else { throw fail("serial adapter without rank/alpha metadata") }
            method = .serial(rank: rank, alpha: alpha)
        case "lora":
            guard let rank, let alpha, let targetText = file.metadata["targets"] else { throw fail("LoRA adapter without rank/alpha/targets metadata") }
            let targets = try targetText.split(separator: ",").map { name in
                guard let target = LoRATarget(rawValue: String(name)) else { throw fail("unknown LoRA target '\(name)'") }
                return target
            }
            method = .lora(rank: rank, alpha: alpha, targets: targets)
        case "full": method = .full
        case "probe": method = .probe
        default: throw fail("unknown method '\(file.metadata["method"] ?? "missing")'")
        }
        do {
            try config.validate()
            try method.validate(width: config.width)
        } catch let error as ConfigError { throw fail("metadata: \(error.description)") }
        guard classNames.isEmpty || classNames.count == config.classes else {
            throw fail("metadata names \(classNames.count) classes but the head has \(config.classes)")
        }

        var values: [String: [Float]] = [:]
        if method == .full {
            let reader = try CheckpointReader(file: file, naming: .hfViT, config: config)
            guard reader.hasHead else { throw fail("a full fine-tune file must hold classifier.weight [\(config.classes), \(config.width)]") }
            values = reader.values
        } else {
            var expected: Set<String> = []
            var problems: [String] = []
            for spec in ParameterTable.specs(config, method).filter(\.trainable) {
                let name = externalName(spec.name)!
                expected.insert(name)
                guard let entry = file.entry(name) else { problems.append("missing \(name)"); continue }
                guard entry.shape == spec.shape else { problems.append("\(name) is \(entry.shape), expected \(spec.shape)"); continue }
                values[spec.name] = try file.finiteFloats(name)
            }
            let unexpected = file.names.filter { !expected.contains($0) }
            if !unexpected.isEmpty { problems.append("unexpected " + unexpected.sorted().joined(separator: ", ")) }
            if !problems.isEmpty { throw fail(problems.joined(separator: "; ")) }
        }
        return Contents(method: method, config: config, classNames: classNames, values: values, baseFingerprint: file.metadata["base_fingerprint"])
    }
}

/// Internal names -> an HF ViT (ViTForImageClassification) checkpoint.
public enum HFViTExport {
    public static func tensors(_ values: [String: [Float]], config: ViTConfig, file: String) throws -> [(name: String, shape: [Int], values: [Float])] {
        let d = config.width, m = config.mlpWidth
        var out: [(name: String, shape: [Int], values: [Float])] = []
        func add(_ name: String, _ source: String, _ shape: [Int], range: Range<Int>? = nil) throws {
            guard let all = values[source] else { throw CheckpointError(file: file, tensor: source, "no values to export") }
            out.append((name, shape, range.map { Array(all[$0]) } ?? all))
        }
        try add("vit.embeddings.patch_embeddings.projection.weight", "patch.weight", [d, config.channels, config.patchSize, config.patchSize])
        try add("vit.embeddings.patch_embeddings.projection.bias", "patch.bias", [d])
        try add("vit.embeddings.cls_token", "cls", [1, 1, d])
        try add("vit.embeddings.position_embeddings", "pos", [1, config.tokens, d])
        for i in 0..<config.layers {
            let b = "vit.encoder.layer.\(i).", p = "blocks.\(i)."
            try add(b + "layernorm_before.weight", p + "norm1.weight", [d])
            try add(b + "layernorm_before.bias", p + "norm1.bias", [d])
            for (index, part) in ["query", "key", "value"].enumerated() {
                try add(b + "attention.attention.\(part).weight", p + "qkv.weight", [d, d], range: index * d * d..<(index + 1) * d * d)
                try add(b + "attention.attention.\(part).bias", p + "qkv.bias", [d], range: index * d..<(index + 1) * d)
            }
            try add(b + "attention.output.dense.weight", p + "proj.weight", [d, d])
            try add(b + "attention.output.dense.bias", p + "proj.bias", [d])
            try add(b + "layernorm_after.weight", p + "norm2.weight", [d])
            try add(b + "layernorm_after.bias", p + "norm2.bias", [d])
            try add(b + "intermediate.dense.weight", p + "fc1.weight", [m, d])
            try add(b + "intermediate.dense.bias", p + "fc1.bias", [m])
            try add(b + "output.dense.weight", p + "fc2.weight", [d, m])
            try add(b + "output.dense.bias", p + "fc2.bias", [d])
        }
        try add("vit.layernorm.weight", "norm.weight", [d])
        try add("vit.layernorm.bias", "norm.bias", [d])
        try add("classifier.weight", "head.weight", [config.classes, d])
        try add("classifier.bias", "head.bias", [config.classes])
        return out
    }

    /// config.json for transformers' ViTForImageClassification.
    public static func configJSON(_ config: ViTConfig, classNames: [String]) throws -> Data {
        let names = classNames.count == config.classes ? classNames : (0..<config.classes).map { "LABEL_\($0)" }
        let object: [String: Any] = [
            "model_type": "vit", "architectures": ["ViTForImageClassification"],
            "hidden_size": config.width, "num_hidden_layers": config.layers, "num_attention_heads": config.heads,
            "intermediate_size": config.mlpWidth, "hidden_act": "gelu", "layer_norm_eps": Double(config.layerNormEpsilon),
            "image_size": config.imageSize, "patch_size": config.patchSize, "num_channels": config.channels, "qkv_bias": true,
            "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
            "id2label": Dictionary(uniqueKeysWithValues: names.enumerated().map { (String($0.offset), $0.element) }),
            "label2id": Dictionary(uniqueKeysWithValues: names.enumerated().map { ($0.element, $0.offset) }),
            "image_mean": config.mean.map(Double.init), "image_std": config.std.map(Double.init),
        ]
        return try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
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
        for i in 0..<config.layers {
            let p = "blocks.\(i)."
            switch adapter.method {
            case .serial(let rank, _):
                let w = result[p + "qkv.weight"]!, a = result[p + "serial.A"]!, b = result[p + "serial.B"]!
                let c = product(w, b, rows: 3 * d, inner: d, columns: rank).map(Float.init)    // W B   [3d, r]
                let delta = product(c, a, rows: 3 * d, inner: rank, columns: d)                // (W B) A [3d, d]
                result[p + "qkv.weight"] = zip(w, delta).map { Float(Double($0) + s * $1) }
                result[p + "serial.A"] = nil
                result[p + "serial.B"] = nil
            case .lora(let rank, _, let targets):
                for target in targets {
                    let a = result[p + "lora.\(target.rawValue).A"]!, b = result[p + "lora.\(target.rawValue).B"]!
                    let delta = product(b, a, rows: d, inner: rank, columns: d)                // B A [d, d]
                    let (key, offset) = target.qkvIndex.map { (p + "qkv.weight", $0 * d * d) } ?? (p + "proj.weight", 0)
                    var w = result[key]!
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
