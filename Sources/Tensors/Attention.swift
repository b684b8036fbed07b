import CLRuntime

// Launchers for Kernels/attention.cl.
// q, k, v: [B * N, ld] token matrices, head h in columns [h * dh, (h + 1) * dh) after each
// tensor's offset (the usual case: views of one qkv tensor [B * N, 3D] at offsets 0, D, 2D, ld 3D).
// o, dO: [B * N, D]; lse, delta: [B, H, N]. dq, dk, dv: like q, k, v (ld of the gradient).

/// Where the heads of one token matrix live: a tensor (its offset is the column of head 0)
/// and the row stride.
public struct HeadLayout {
    public var tensor: Tensor
    public var rowStride: Int

    public init(_ tensor: Tensor, rowStride: Int) {
        self.tensor = tensor
        self.rowStride = rowStride
    }
}

public struct AttentionShape: Sendable, Equatable {
    public var batch: Int, tokens: Int, heads: Int, headDimension: Int

    public init(batch: Int, tokens: Int, heads: Int, headDimension: Int) {
        (self.batch, self.tokens, self.heads, self.headDimension) = (batch, tokens, heads, headDimension)
    }

    public var width: Int { heads * headDimension }
    public var scale: Float { 1 / Float(headDimension).squareRoot() }
}

/// How attention kernels map work-items: one query (or key) row per work-item, or a block of
/// rows with one vector lane per row (vertical FMAs; suits CPUs).
public enum AttentionPath: Sendable, Equatable {
    case rowPerItem
    case block(rows: Int)

    public static func forDevice(_ device: Device) -> AttentionPath {
        device.type.contains(.gpu) ? .rowPerItem : .block(rows: 16)
    }

    var kernelSuffix: String {
        switch self {
        case .rowPerItem: ""
        case .block: "_block"
        }
    }

    func options(headDimension: Int) -> String {
        switch self {
        case .rowPerItem: "-DDH=\(headDimension)"
        case .block(let rows): "-DDH=\(headDimension) -DQB=\(rows)"
        }
    }

    /// Block kernels hold several KiB of vectors per work-item; PoCL keeps the private memory of
    /// a whole work-group on its thread stack and overflowed it (stack smashing) with
    /// driver-chosen groups, so a block work-item runs as a work-group of its own.
    var local: [Int]? {
        switch self {
        case .rowPerItem: nil
        case .block: [1, 1, 1]
        }
    }

    func global(_ shape: AttentionShape) -> [Int] {
        switch self {
        case .rowPerItem: [shape.tokens, shape.heads, shape.batch]
        case .block(let rows): [(shape.tokens + rows - 1) / rows, shape.heads, shape.batch]
        }
    }
}

extension Engine {
    public func attentionForward(_ shape: AttentionShape, q: HeadLayout, k: HeadLayout, v: HeadLayout,
                                 output o: Tensor, lse: Tensor) throws {
        let operation = "attentionForward"
        try checkAttention(operation, shape, [q, k, v])
        try checkOperands(operation, [o, lse])
        try expectShape(operation, "output", o, [shape.batch * shape.tokens, shape.width])
        try expectShape(operation, "lse", lse, [shape.batch, shape.heads, shape.tokens])
        guard q.rowStride == k.rowStride, k.rowStride == v.rowStride else {
            throw TensorError.shapeMismatch(operation: operation, details: "q, k and v must share one row stride")
        }
        let path = attentionPath
        try launch("attention_forward" + path.kernelSuffix, in: "attention", options: path.options(headDimension: shape.headDimension),
                   global: path.global(shape), local: path.local,
                   q.tensor, k.tensor, v.tensor, q.rowStride, o, shape.width, lse, shape.tokens, shape.heads, shape.scale)
    }

    /// Writes dq, dk, dv (overwriting) from dO, recomputing probabilities from lse.
    public func attentionBackward(_ shape: AttentionShape, q: HeadLayout, k: HeadLayout, v: HeadLayout,
                                  output o: Tensor, lse: Tensor, dOutput dO: Tensor,
                                  dq: HeadLayout, dk: HeadLayout, dv: HeadLayout) throws {
        let operation = "attentionBackward"
        try checkAttention(operation, shape, [q, k, v, dq, dk, dv])
        try checkOperands(operation, [o, lse, dO])
        let rows = shape.batch * shape.tokens
        try expectShape(operation, "output", o, [rows, shape.width])
        try expectShape(operation, "dOutput", dO, [rows, shape.width])
        try expectShape(operation, "lse", lse, [shape.batch, shape.heads, shape.tokens])
        guard Set([q.rowStride, k.rowStride, v.rowStride]).count == 1, Set([dq.rowStride, dk.rowStride, dv.rowStride]).count == 1 else {
            throw TensorError.shapeMismatch(operation: operation, details: "q, k, v (and dq, dk, dv) must share one row stride")
        }
        let path = attentionPath
        let options = path.options(headDimension: shape.headDimension)
        let global = path.global(shape)
        let delta = try empty([shape.batch, shape.heads, shape.tokens])
        try launch("attention_backward_delta", in: "attention", options: options, global: [shape.tokens, shape.heads, shape.batch],
                   dO, o, shape.width, delta, shape.tokens, shape.heads)
        try launch("attention_backward_dq" + path.kernelSuffix, in: "attention", options: options, global: global, local: path.local,
                   q.tensor, k.tensor, v.tensor, q.rowStride, dO, shape.width, lse, delta,
                   dq.tensor, dq.rowStride, shape.tokens, shape.heads, shape.scale)
        try launch("attention_backward_dkv" + path.kernelSuffix, in: "attention", options: options, global: global, local: path.local,
                   q.tensor, k.tensor, v.tensor, q.rowStride, dO, shape.width, lse, delta,
                   dk.tensor, dv.tensor, dk.rowStride, shape.tokens, shape.heads, shape.scale)
    }

    private func checkAttention(_ operation: String, _ shape: AttentionShape, _ layouts: [HeadLayout]) throws {
        if case .block(let rows) = attentionPath, ![2, 4, 8, 16].contains(rows) {
            throw TensorError.shapeMismatch(operation: operation, details: "attention block rows must be 2, 4, 8 or 16, got \(rows)")
        }
        guard shape.batch > 0, shape.tokens > 0, shape.heads > 0, (1...256).contains(shape.headDimension) else {
            throw TensorError.shapeMismatch(operation: operation, details: "invalid attention shape \(shape) (head dimension 1...256)")
        }
        try checkOperands(operation, layouts.map(\.tensor))
        for layout in layouts {
            // The last element any head touches must lie inside the tensor.
            let lastRow = shape.batch * shape.tokens - 1
            let needed = lastRow * layout.rowStride + shape.width
            guard layout.rowStride >= shape.width, needed <= layout.tensor.count else {
                throw TensorError.shapeMismatch(operation: operation, details: "a head layout with row stride \(layout.rowStride) over \(layout.tensor.count) elements cannot hold \(shape.batch * shape.tokens) rows of \(shape.width)")
            }
        }
    }
}
