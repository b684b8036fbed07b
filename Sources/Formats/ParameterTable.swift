import Foundation

/// One tensor of the model: its internal name, shape, and how it trains.
public struct ParameterSpec: Sendable, Equatable {
    public enum Role: Sendable, Equatable {
        case backbone
        case adapter
        case head
    }

    public let name: String
    public let shape: [Int]
    public let role: Role
    public let trainable: Bool
    /// AdamW weight decay applies (weights and adapters; not biases, norms, cls, positions).
    public let decays: Bool
    /// An up-projection B of an adapter: LoRA+ gives these a higher learning rate.
    public let isUpProjection: Bool

    public var count: Int { shape.reduce(1, *) }

    /// A backbone weight matrix (patch embedding, qkv, proj, fc1, fc2, projection): what may be
    /// stored in 16 bits when frozen. Positions are 2-D but not weights.
    public var isWeightMatrix: Bool { role == .backbone && shape.count == 2 && decays }
}

/// Every tensor of a ViT under a fine-tuning method, in one table that drives loading, the
/// trainable slab, gradient views, optimizer groups and adapter files.
///
/// Internal names (shapes): patch.weight [d, C*P*P] (a Conv2d weight [d, C, P, P] flattened),
/// patch.bias [d] (when the architecture has one), cls [d], pos [N, d], embedding_norm.{weight,
/// bias} [d] (CLIP's pre-LayerNorm); blocks.{i}.norm1.{weight,bias} [d], .qkv.weight [3d, d]
/// (q; k; v stacked), .qkv.bias [3d], .proj.{weight [d, d], bias [d]}, .norm2.*, .fc1.{weight
/// [m, d], bias [m]}, .fc2.{weight [d, m], bias [d]}; norm.{weight,bias} [d];
/// projection.weight [f, d] (CLIP's visual projection); head.{weight [K, f], bias [K]}.
/// Adapters: blocks.{i}.serial.{A [r, d], B [d, r]}; blocks.{i}.lora.{q,k,v,o}.{A [r, d], B [d, r]}.
public enum ParameterTable {
    public static func specs(_ config: ViTConfig, _ method: FineTuningMethod) -> [ParameterSpec] {
        let d = config.width, m = config.mlpWidth
        let full = method == .full
        let architecture = config.architecture
        var specs: [ParameterSpec] = []
        func backbone(_ name: String, _ shape: [Int], decays: Bool, used: Bool = true) {
            specs.append(ParameterSpec(name: name, shape: shape, role: .backbone, trainable: full && used, decays: decays, isUpProjection: false))
        }
        func adapter(_ prefix: String, rank: Int) {
            specs.append(ParameterSpec(name: prefix + ".A", shape: [rank, d], role: .adapter, trainable: true, decays: true, isUpProjection: false))
            specs.append(ParameterSpec(name: prefix + ".B", shape: [d, rank], role: .adapter, trainable: true, decays: true, isUpProjection: true))
        }
        backbone("patch.weight", [d, config.patchValues], decays: true)
        if architecture.patchBias { backbone("patch.bias", [d], decays: false) }
        backbone("cls", [d], decays: false)
        backbone("pos", [config.tokens, d], decays: false)
        if architecture.embeddingNorm {
            backbone("embedding_norm.weight", [d], decays: false)
            backbone("embedding_norm.bias", [d], decays: false)
        }
        for i in 0..<config.layers {
            let p = "blocks.\(i)."
            backbone(p + "norm1.weight", [d], decays: false)
            backbone(p + "norm1.bias", [d], decays: false)
            backbone(p + "qkv.weight", [3 * d, d], decays: true)
            backbone(p + "qkv.bias", [3 * d], decays: false)
            backbone(p + "proj.weight", [d, d], decays: true)
            backbone(p + "proj.bias", [d], decays: false)
            backbone(p + "norm2.weight", [d], decays: false)
            backbone(p + "norm2.bias", [d], decays: false)
            backbone(p + "fc1.weight", [m, d], decays: true)
            backbone(p + "fc1.bias", [m], decays: false)
            backbone(p + "fc2.weight", [d, m], decays: true)
            backbone(p + "fc2.bias", [d], decays: false)
            switch method {
            case .serial(let rank, _): adapter(p + "serial", rank: rank)
            case .lora(let rank, _, let targets): for target in targets { adapter(p + "lora.\(target.rawValue)", rank: rank) }
            case .full, .probe: break
            }
        }
        // Mean pooling reads the last block's tokens without the final LayerNorm, which is kept
        // (it is part of the checkpoint, and written back) but frozen: it has no gradient.
        backbone("norm.weight", [d], decays: false, used: architecture.pooling == .cls)
        backbone("norm.bias", [d], decays: false, used: architecture.pooling == .cls)
        if let projection = architecture.projection { backbone("projection.weight", [projection, d], decays: true) }
        specs.append(ParameterSpec(name: "head.weight", shape: [config.classes, config.featureWidth], role: .head, trainable: true, decays: true, isUpProjection: false))
        specs.append(ParameterSpec(name: "head.bias", shape: [config.classes], role: .head, trainable: true, decays: false, isUpProjection: false))
        return specs
    }

    /// Trainable parameters outside the head (the number the paper compares).
    public static func adapterParameterCount(_ config: ViTConfig, _ method: FineTuningMethod) -> Int {
        specs(config, method).filter { $0.trainable && $0.role != .head }.reduce(0) { $0 + $1.count }
    }
}

/// Optimizer groups of the trainable slab (`group ids` per element).
public enum ParameterGroup: UInt8, CaseIterable, Sendable {
    case decay = 0
    case noDecay = 1
    /// Adapter B matrices: decay, learning rate times the LoRA+ ratio.
    case upProjection = 2
}

/// Fresh values for adapters and a new head: A Kaiming-uniform (a = sqrt 5), i.e.
/// U(-1/sqrt(n), 1/sqrt(n)) over its n inputs (d); B zero, so training starts exactly at the
/// pretrained model; head weight U(-1/sqrt(f), 1/sqrt(f)) over its f inputs and bias zero.
public func initialValues(for specs: [ParameterSpec], seed: UInt64) -> [String: [Float]] {
    var generator = SeededGenerator(seed: seed)
    var values: [String: [Float]] = [:]
    for spec in specs where spec.role != .backbone {
        if spec.name.hasSuffix(".A") || spec.name == "head.weight" {
            values[spec.name] = generator.uniform(spec.count, bound: 1 / Float(spec.shape[1]).squareRoot())
        } else {
            values[spec.name] = [Float](repeating: 0, count: spec.count)
        }
    }
    return values
}

/// A random backbone for presets without pretrained weights (and for benchmarks): weights
/// U(-0.02, 0.02), biases zero, LayerNorm scales one.
public func randomBackboneValues(for config: ViTConfig, seed: UInt64) -> [String: [Float]] {
    var generator = SeededGenerator(seed: seed)
    var values: [String: [Float]] = [:]
    for spec in ParameterTable.specs(config, .probe) where spec.role == .backbone {
        let isNormScale = spec.name.hasSuffix("norm1.weight") || spec.name.hasSuffix("norm2.weight") || spec.name == "norm.weight"
            || spec.name == "embedding_norm.weight"
        values[spec.name] = isNormScale ? [Float](repeating: 1, count: spec.count)
            : spec.name.hasSuffix(".bias") ? [Float](repeating: 0, count: spec.count) : generator.uniform(spec.count, bound: 0.02)
    }
    return values
}
