import Foundation

/// Reads a backbone (and, when present and of the right shape, a classifier head) from a
/// safetensors file in one of the three namings, into internal names (see ParameterTable).
/// Every expected key must be present with its shape, every key present must be understood:
/// missing, unexpected or mis-shaped keys are one error that lists them all. Nothing is ever
/// silently random-initialised.
public struct CheckpointReader {
    public let file: SafeTensorsFile
    public let naming: CheckpointNaming
    public let config: ViTConfig

    /// Internal name -> host values, for every backbone tensor; plus head.weight/head.bias when
    /// the file has a classifier for exactly `config.classes` classes on a width-d input.
    public let values: [String: [Float]]
    /// Whether the head came from the file.
    public var hasHead: Bool { values["head.weight"] != nil }

    public init(file: SafeTensorsFile, naming: CheckpointNaming, config: ViTConfig) throws {
        self.file = file
        self.naming = naming
        self.config = config
        var reader = KeyReader(file: file)
        var values: [String: [Float]] = [:]
        let d = config.width, m = config.mlpWidth
        let keys = Self.keys(naming, file)

        values["patch.weight"] = try reader.read(keys.patchWeight, shape: [d, config.channels, config.patchSize, config.patchSize])
        values["patch.bias"] = try reader.read(keys.patchBias, shape: [d])
        values["cls"] = try reader.read(keys.cls, shape: [1, 1, d])
        if let entry = file.entry(keys.pos), entry.shape.count == 3, entry.shape[0] == 1, entry.shape[2] == d {
            let stored = try reader.read(keys.pos, shape: entry.shape)
            values["pos"] = try PositionEmbedding.resize(stored, tokens: entry.shape[1], width: d, toGrid: config.gridSize, file: file.path, tensor: keys.pos)
        } else {
            values["pos"] = try reader.read(keys.pos, shape: [1, config.tokens, d])
        }
        for i in 0..<config.layers {
            let block = keys.block(i)
            let p = "blocks.\(i)."
            values[p + "norm1.weight"] = try reader.read(block.norm1 + ".weight", shape: [d])
            values[p + "norm1.bias"] = try reader.read(block.norm1 + ".bias", shape: [d])
            switch block.qkv {
            case .fused(let key):
                values[p + "qkv.weight"] = try reader.read(key + ".weight", shape: [3 * d, d])
                values[p + "qkv.bias"] = try reader.read(key + ".bias", shape: [3 * d])
            case .separate(let q, let k, let v):
                values[p + "qkv.weight"] = try [q, k, v].flatMap { try reader.read($0 + ".weight", shape: [d, d]) }
                values[p + "qkv.bias"] = try [q, k, v].flatMap { try reader.read($0 + ".bias", shape: [d]) }
            }
            var projWeight = try reader.read(block.proj + ".weight", shape: [d, d])
            var projBias = try reader.read(block.proj + ".bias", shape: [d])
            values[p + "norm2.weight"] = try reader.read(block.norm2 + ".weight", shape: [d])
            values[p + "norm2.bias"] = try reader.read(block.norm2 + ".bias", shape: [d])
            values[p + "fc1.weight"] = try reader.read(block.fc1 + ".weight", shape: [m, d])
            values[p + "fc1.bias"] = try reader.read(block.fc1 + ".bias", shape: [m])
            var fc2Weight = try reader.read(block.fc2 + ".weight", shape: [d, m])
            var fc2Bias = try reader.read(block.fc2 + ".bias", shape: [d])
            // LayerScale: lambda * (W x + b) = (diag(lambda) W) x + lambda b, exactly.
            if let (scale1, scale2) = block.layerScale {
                let lambda1 = try reader.read(scale1, shape: [d]), lambda2 = try reader.read(scale2, shape: [d])
                // A missing or mis-shaped tensor reads as empty and is reported by finish().
                let complete = lambda1.count == d && lambda2.count == d && projWeight.count == d * d && fc2Weight.count == d * m
                    && projBias.count == d && fc2Bias.count == d
                for row in 0..<(complete ? d : 0) {
                    for column in 0..<d { projWeight[row * d + column] *= lambda1[row] }
                    for column in 0..<m { fc2Weight[row * m + column] *= lambda2[row] }
                    projBias[row] *= lambda1[row]
                    fc2Bias[row] *= lambda2[row]
                }
            }
            values[p + "proj.weight"] = projWeight
            values[p + "proj.bias"] = projBias
            values[p + "fc2.weight"] = fc2Weight
            values[p + "fc2.bias"] = fc2Bias
        }
        values["norm.weight"] = try reader.read(keys.norm + ".weight", shape: [d])
        values["norm.bias"] = try reader.read(keys.norm + ".bias", shape: [d])
        if let headKey = keys.head, let entry = file.entry(headKey + ".weight") {
            if entry.shape == [config.classes, d], file.entry(headKey + ".bias")?.shape == [config.classes] {
                values["head.weight"] = try reader.read(headKey + ".weight", shape: [config.classes, d])
                values["head.bias"] = try reader.read(headKey + ".bias", shape: [config.classes])
            } else {
                // A classifier for another task (other classes, or DINOv2's [cls | mean] input):
                // the head is new, which the caller reports.
                reader.ignore(headKey + ".weight")
                reader.ignore(headKey + ".bias")
            }
        }
        for key in keys.ignorable { reader.ignore(key) }
        try reader.finish()
        self.values = values
    }

    private struct BlockKeys {
        enum QKV {
            case fused(String)
            case separate(String, String, String)
        }

        var norm1: String, qkv: QKV, proj: String, norm2: String, fc1: String, fc2: String
        var layerScale: (String, String)?
    }

    private struct Keys {
        var patchWeight: String, patchBias: String, cls: String, pos: String, norm: String
        var head: String?
        var ignorable: [String]
        var block: (Int) -> BlockKeys
    }

    /// The key layout of each naming; HF files may carry a model prefix (`vit.`, `dinov2.`).
    private static func keys(_ naming: CheckpointNaming, _ file: SafeTensorsFile) -> Keys {
        switch naming {
        case .hfViT:
            let prefix = file.entry("vit.embeddings.cls_token") != nil ? "vit." : ""
            return Keys(patchWeight: prefix + "embeddings.patch_embeddings.projection.weight",
                        patchBias: prefix + "embeddings.patch_embeddings.projection.bias",
                        cls: prefix + "embeddings.cls_token", pos: prefix + "embeddings.position_embeddings",
                        norm: prefix + "layernorm", head: "classifier",
                        ignorable: [prefix + "pooler.dense.weight", prefix + "pooler.dense.bias", prefix + "embeddings.mask_token"]) { i in
                let b = prefix + "encoder.layer.\(i)."
                return BlockKeys(norm1: b + "layernorm_before",
                                 qkv: .separate(b + "attention.attention.query", b + "attention.attention.key", b + "attention.attention.value"),
                                 proj: b + "attention.output.dense", norm2: b + "layernorm_after",
                                 fc1: b + "intermediate.dense", fc2: b + "output.dense")
            }
        case .hfDinov2:
            let prefix = file.entry("dinov2.embeddings.cls_token") != nil ? "dinov2." : ""
            return Keys(patchWeight: prefix + "embeddings.patch_embeddings.projection.weight",
                        patchBias: prefix + "embeddings.patch_embeddings.projection.bias",
                        cls: prefix + "embeddings.cls_token", pos: prefix + "embeddings.position_embeddings",
                        norm: prefix + "layernorm", head: "classifier", ignorable: [prefix + "embeddings.mask_token"]) { i in
                let b = prefix + "encoder.layer.\(i)."
                return BlockKeys(norm1: b + "norm1",
                                 qkv: .separate(b + "attention.attention.query", b + "attention.attention.key", b + "attention.attention.value"),
                                 proj: b + "attention.output.dense", norm2: b + "norm2", fc1: b + "mlp.fc1", fc2: b + "mlp.fc2",
                                 layerScale: (b + "layer_scale1.lambda1", b + "layer_scale2.lambda1"))
            }
        case .timm:
            let hasLayerScale = file.entry("blocks.0.ls1.gamma") != nil
            return Keys(patchWeight: "patch_embed.proj.weight", patchBias: "patch_embed.proj.bias", cls: "cls_token", pos: "pos_embed",
                        norm: "norm", head: "head", ignorable: ["mask_token"]) { i in
                let b = "blocks.\(i)."
                return BlockKeys(norm1: b + "norm1", qkv: .fused(b + "attn.qkv"), proj: b + "attn.proj", norm2: b + "norm2",
                                 fc1: b + "mlp.fc1", fc2: b + "mlp.fc2",
                                 layerScale: hasLayerScale ? (b + "ls1.gamma", b + "ls2.gamma") : nil)
            }
        }
    }

    /// Guesses the naming from the keys, for files without a config.json.
    public static func detectNaming(_ file: SafeTensorsFile) -> CheckpointNaming? {
        let names = Set(file.names)
        if names.contains("cls_token") || names.contains("patch_embed.proj.weight") { return .timm }
        if names.contains(where: { $0.hasSuffix("encoder.layer.0.layernorm_before.weight") }) { return .hfViT }
        if names.contains(where: { $0.hasSuffix("encoder.layer.0.norm1.weight") }) { return .hfDinov2 }
        return nil
    }
}

/// Reads keys with shape checks and remembers what was used, so that what is missing,
/// mis-shaped or unexpected is reported together.
private struct KeyReader {
    let file: SafeTensorsFile
    var used: Set<String> = []
    var missing: [String] = []
    var misShaped: [String] = []

    init(file: SafeTensorsFile) { self.file = file }

    /// The tensor's values, or an empty array when it is missing or mis-shaped (recorded for
    /// finish(); nothing is allocated from a shape the file does not back). Non-finite values
    /// are an error at once: a frozen NaN would otherwise surface as a NaN loss much later.
    mutating func read(_ key: String, shape: [Int]) throws -> [Float] {
        used.insert(key)
        guard let entry = file.entry(key) else {
            missing.append(key)
            return []
        }
        guard entry.shape == shape else {
            misShaped.append("\(key) is \(entry.shape), expected \(shape)")
            return []
        }
        return try file.finiteFloats(key)
    }

    mutating func ignore(_ key: String) { used.insert(key) }

    func finish() throws {
        let unexpected = file.names.filter { !used.contains($0) }.sorted()
        var problems: [String] = []
        if !missing.isEmpty { problems.append("missing keys: " + missing.joined(separator: ", ")) }
        if !misShaped.isEmpty { problems.append("mis-shaped keys: " + misShaped.joined(separator: "; ")) }
        if !unexpected.isEmpty { problems.append("unexpected keys: " + unexpected.joined(separator: ", ")) }
        if !problems.isEmpty { throw CheckpointError(file: file.path, problems.joined(separator: "\n")) }
    }
}

/// Position embeddings for another image size: the grid part is resized bicubically with
/// PyTorch's semantics (F.interpolate, mode bicubic, align_corners False: source coordinate
/// (o + 0.5) * in / out - 0.5, cubic convolution with A = -0.75, indices clamped at the
/// edges); the cls entry is kept.
public enum PositionEmbedding {
    /// stored [1, tokens, d] (cls first) -> [(1 + grid^2) * d].
    public static func resize(_ stored: [Float], tokens: Int, width d: Int, toGrid grid: Int, file: String, tensor: String) throws -> [Float] {
        guard tokens >= 2, stored.count == tokens * d else {
            throw CheckpointError(file: file, tensor: tensor, "\(tokens) positions: expected the cls entry and at least one patch position")
        }
        let sourceGrid = Int(Double(tokens - 1).squareRoot().rounded())
        guard sourceGrid * sourceGrid == tokens - 1 else {
            throw CheckpointError(file: file, tensor: tensor, "\(tokens) positions are not 1 + a square grid")
        }
        if sourceGrid == grid { return stored }
        var result = Array(stored[0..<d])
        let weightsY = cubicWeights(from: sourceGrid, to: grid), weightsX = weightsY
        var grid2 = [Float](repeating: 0, count: grid * grid * d)
        for oy in 0..<grid {
            for ox in 0..<grid {
                for (sy, wy) in weightsY[oy] {
                    for (sx, wx) in weightsX[ox] {
                        let w = Float(wy * wx)
                        let source = (1 + sy * sourceGrid + sx) * d
                        let target = (oy * grid + ox) * d
                        for c in 0..<d { grid2[target + c] += w * stored[source + c] }
                    }
                }
            }
        }
        result += grid2
        return result
    }

    /// For each output index, the four (clamped source index, weight) pairs.
    static func cubicWeights(from input: Int, to output: Int) -> [[(Int, Double)]] {
        let a = -0.75
        func cubic(_ x: Double) -> Double {
            let x = abs(x)
            if x <= 1 { return ((a + 2) * x - (a + 3)) * x * x + 1 }
            if x < 2 { return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a }
            return 0
        }
        let scale = Double(input) / Double(output)
        return (0..<output).map { o in
            let source = (Double(o) + 0.5) * scale - 0.5
            let base = Int(source.rounded(.down))
            let t = source - Double(base)
            return (-1...2).map { offset in (min(max(base + offset, 0), input - 1), cubic(Double(offset) - t)) }
        }
    }
}
