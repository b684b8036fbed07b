import Foundation

/// Reads a backbone (and, when present and of the right shape, a classifier head) from a
/// safetensors file in one of the namings, into internal names (see ParameterTable), through
/// the naming's CheckpointLayout. Every expected key must be present with its shape, every key
/// present must be understood: missing, unexpected or mis-shaped keys are one error that lists
/// them all. Nothing is ever silently random-initialised.
public struct CheckpointReader {
    public let file: SafeTensorsFile
    public let naming: CheckpointNaming
    public let config: ViTConfig

    /// Internal name -> host values as the file stores them (16-bit tensors stay 16-bit; see
    /// HostTensor), for every backbone tensor; plus head.weight/head.bias when the file has a
    /// classifier for exactly `config.classes` classes on the pooled features.
    public let tensors: [String: HostTensor]
    /// `tensors` widened to fp32.
    public var values: [String: [Float]] { tensors.widened }
    /// Whether the head came from the file.
    public var hasHead: Bool { tensors["head.weight"] != nil }

    public init(file: SafeTensorsFile, naming: CheckpointNaming, config: ViTConfig) throws {
        self.file = file
        self.naming = naming
        self.config = config
        var reader = KeyReader(file: file)
        var tensors: [String: HostTensor] = [:]
        let d = config.width
        let layout = CheckpointLayout(naming, config: config, file: file)
        for stored in layout.tensors {
            var tensor: HostTensor
            switch stored.form {
            case .single(let key, let shape) where stored.name == "pos":
                // Any 1 + square grid of positions, resized to this image size.
                if let entry = file.entry(key), entry.shape.count == shape.count, entry.shape.last == d, entry.shape.prefix(shape.count - 2).allSatisfy({ $0 == 1 }) {
                    let stored = try reader.read(key, shape: entry.shape).floats
                    tensor = .float32(try PositionEmbedding.resize(stored, tokens: entry.shape[entry.shape.count - 2], width: d, toGrid: config.gridSize, file: file.path, tensor: key))
                } else {
                    tensor = try reader.read(key, shape: shape)
                }
            case .single(let key, let shape):
                tensor = try reader.read(key, shape: shape)
            case .stacked(let keys, let shape):
                let parts = try keys.map { try reader.read($0, shape: shape) }
                tensor = parts.allSatisfy({ $0.count > 0 }) ? HostTensor.concatenated(parts) : .float32([])
            case .transposed(let key, let shape):
                let stored = try reader.read(key, shape: shape)
                tensor = stored.count == 0 ? stored : stored.transposed(rows: shape[0], columns: shape[1])
            }
            if let scaleKey = stored.layerScale {
                // A missing or mis-shaped tensor reads as empty and is reported by finish().
                let lambda = try reader.read(scaleKey, shape: [d]).floats
                if lambda.count == d, tensor.count % d == 0, tensor.count > 0 {
                    var scaled = tensor.floats
                    let columns = scaled.count / d
                    for row in 0..<d { for column in 0..<columns { scaled[row * columns + column] *= lambda[row] } }
                    tensor = .float32(scaled)
                }
            }
            tensors[stored.name] = tensor
        }
        let head = layout.head
        if let entry = file.entry(head + ".weight") {
            if entry.shape == [config.classes, config.featureWidth], file.entry(head + ".bias")?.shape == [config.classes] {
                tensors["head.weight"] = try reader.read(head + ".weight", shape: [config.classes, config.featureWidth])
                tensors["head.bias"] = try reader.read(head + ".bias", shape: [config.classes])
            } else {
                // A classifier for another task (other classes, or DINOv2's [cls | mean] input):
                // the head is new, which the caller reports.
                reader.ignore(head + ".weight")
                reader.ignore(head + ".bias")
            }
        }
        for key in file.names where layout.ignorable(key) { reader.ignore(key) }
        try reader.finish()
        self.tensors = tensors
    }

    /// Guesses the naming from the keys, for files without a config.json.
    public static func detectNaming(_ file: SafeTensorsFile) -> CheckpointNaming? { CheckpointLayout.detectNaming(file) }
}

/// [rows, columns] -> [columns, rows].
func transpose<Element>(_ values: [Element], rows: Int, columns: Int) -> [Element] {
    var out = values
    for r in 0..<rows { for c in 0..<columns { out[c * rows + r] = values[r * columns + c] } }
    return out
}

/// Reads keys with shape checks and remembers what was used, so that what is missing,
/// mis-shaped or unexpected is reported together.
private struct KeyReader {
    let file: SafeTensorsFile
    var used: Set<String> = []
    var missing: [String] = []
    var misShaped: [String] = []

    init(file: SafeTensorsFile) { self.file = file }

    /// The tensor as stored, or an empty one when it is missing or mis-shaped (recorded for
    /// finish(); nothing is allocated from a shape the file does not back). Non-finite values
    /// are an error at once: a frozen NaN would otherwise surface as a NaN loss much later.
    mutating func read(_ key: String, shape: [Int]) throws -> HostTensor {
        used.insert(key)
        guard let entry = file.entry(key) else {
            missing.append(key)
            return .float32([])
        }
        guard entry.shape == shape else {
            misShaped.append("\(key) is \(entry.shape), expected \(shape)")
            return .float32([])
        }
        return try file.finiteHostTensor(key)
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
