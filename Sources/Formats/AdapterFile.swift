import Foundation

/// Small safetensors files with the trainable tensors plus the head, and `__metadata__`
/// (format, method, rank, alpha, targets, base config, class names).
///
/// Names (from the family's adapter naming: HF ViT for ViTs, HF CLIP for CLIP): Serial LoRA
/// `vit.encoder.layer.{i}.serial_lora.A` [r, d] / `.B` [d, r] (CLIP:
/// `vision_model.encoder.layers.{i}.serial_lora.*`); LoRA in PEFT's names
/// (`base_model.model.vit.encoder.layer.{i}.attention.attention.query.lora_A.weight` [r, d],
/// `lora_B.weight` [d, r]; `...attention.output.dense...` for o; CLIP's `self_attn.{q,k,v,out}_proj`)
/// so PEFT users can read them; the head `classifier.weight` / `classifier.bias`. A full
/// fine-tune is saved whole in that naming (it is a checkpoint, not an adapter).
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

        /// Refuses a base of another shape or architecture (`checkClasses`: the head's classes too).
        public func checkFits(_ base: ViTConfig, source: String, checkClasses: Bool = true) throws {
            guard config.width == base.width, config.layers == base.layers, !checkClasses || config.classes == base.classes else {
                throw ConfigError("the adapter was trained for a \(config.width)-wide, \(config.layers)-layer model with \(config.classes) classes; \(source) gives \(base.width), \(base.layers), \(base.classes)")
            }
            guard config.architecture == base.architecture else {
                throw ConfigError("the adapter was trained on a \(config.architecture.family.rawValue) model (\(config.architecture.pooling.rawValue) pooling\(config.architecture.projection.map { ", projection \($0)" } ?? "")); \(source) is a \(base.architecture.family.rawValue) model (\(base.architecture.pooling.rawValue) pooling\(base.architecture.projection.map { ", projection \($0)" } ?? ""))")
            }
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

    /// The file's name for a trainable tensor: the layout of the family's adapter naming gives
    /// each block's stem and the modules LoRA targets (PEFT's `base_model.model.<module>.lora_A
    /// .weight`); Serial LoRA is `<block stem>.serial_lora.{A,B}`; the head the layout's.
    static func externalName(_ name: String, layout: CheckpointLayout) -> String? {
        if name == "head.weight" || name == "head.bias" { return layout.head + name.dropFirst(4) }
        let parts = name.split(separator: ".").map(String.init)
        guard parts.count >= 4, parts[0] == "blocks", let layer = Int(parts[1]), layer < layout.blockStems.count else { return nil }
        if parts[2] == "serial", parts.count == 4 { return "\(layout.blockStems[layer]).serial_lora.\(parts[3])" }
        if parts[2] == "lora", parts.count == 5, let target = LoRATarget(rawValue: parts[3]), let module = layout.targetModules[layer][target] {
            return "base_model.model.\(module).lora_\(parts[4]).weight"
        }
        return nil
    }

    static func adapterLayout(_ config: ViTConfig) -> CheckpointLayout { CheckpointLayout(config.architecture.adapterNaming, config: config) }

    public static func save(_ contents: Contents, to url: URL) throws {
        let specs = ParameterTable.specs(contents.config, contents.method).filter(\.trainable)
        var tensors: [(name: String, shape: [Int], values: [Float])] = []
        let layout = adapterLayout(contents.config)
        if contents.method == .full {
            tensors = try CheckpointExport.tensors(contents.values, config: contents.config, naming: layout.naming, file: url.path)
        } else {
            for spec in specs {
                guard let values = contents.values[spec.name], let name = externalName(spec.name, layout: layout) else {
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
            let reader = try CheckpointReader(file: file, naming: config.architecture.adapterNaming, config: config)
            guard reader.hasHead else { throw fail("a full fine-tune file must hold classifier.weight [\(config.classes), \(config.width)]") }
            values = reader.values
        } else {
            var expected: Set<String> = []
            var problems: [String] = []
            let layout = adapterLayout(config)
            for spec in ParameterTable.specs(config, method).filter(\.trainable) {
                guard let name = externalName(spec.name, layout: layout) else {
                    problems.append("\(spec.name) has no name in \(layout.naming.rawValue) files (LoRA on fused projections?)")
                    continue
                }
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

