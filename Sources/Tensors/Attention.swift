import CLRuntime
import Foundation

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

    /// The FLOPs of `count` N x N x dh products per (batch, head): the forward computes 2 (S, PV),
    /// the dq kernel 3 (S, dP, dQ), the dkv kernel 4 (S, dP, dV, dK), recomputation included.
    func products(_ count: Int) -> KernelWork {
        KernelWork(flops: 2 * Double(count) * Double(batch * heads) * Double(tokens) * Double(tokens) * Double(headDimension))
    }
    public var scale: Float { 1 / Float(headDimension).squareRoot() }
}

/// How attention kernels map work-items: one query (or key) row per work-item; a block of
/// rows with one vector lane per row (vertical FMAs); or GEMM-like tiles of a few queries
/// (keys) against 16 keys (queries) at a time from transposed copies of K, V (Q, dO), whose
/// accumulators fit in a CPU's vector registers (the CPU default: 2.1-2.4x the block path).
public enum AttentionPath: Sendable, Equatable, CustomStringConvertible {
    case rowPerItem
    case block(rows: Int)
    /// `queries` per work-item in the forward and dq kernels, `keys` in dkv; output rows are
    /// stored as vectors of `vectorWidth` floats (16, 8 or 4, dividing the head dimension).
    case tiled(queries: Int, keys: Int, vectorWidth: Int = 16)
    /// GPUs: a work-group of `rows` (32, 64 or 128) work-items owns that many queries (keys),
    /// one each, and streams the other side through `__local` in tiles of `rows`.
    case flash(rows: Int)

    /// The device class's path, or `SLORAGPU_ATTENTION_PATH` when set (for tuning; see `parse`).
    public static func forDevice(_ device: Device, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> AttentionPath {
        if let text = environment[environmentVariable], !text.isEmpty { return try parse(text) }
        if device.type.contains(.gpu) { return .flash(rows: 64) }
        return cpu(preferredVectorWidth: device.info.preferredFloatVectorWidth)
    }

    public static let environmentVariable = "SLORAGPU_ATTENTION_PATH"

    /// `row`, `block:ROWS`, `tiled:QUERIES,KEYS,WIDTH` (width 4, 8 or 16) or `flash:ROWS`
    /// (32, 64 or 128): the forms `description` prints.
    public static func parse(_ text: String) throws -> AttentionPath {
        let parts = text.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false).map(String.init)
        let numbers = parts.count == 2 ? parts[1].split(separator: ",", omittingEmptySubsequences: false).map { Int($0) } : []
        func invalid(_ reason: String) -> KernelProfileError { .invalidVariable(environmentVariable, text, reason: reason) }
        guard numbers.allSatisfy({ ($0 ?? 0) > 0 }) else { throw invalid("the counts must be positive integers") }
        let counts = numbers.compactMap { $0 }
        switch (parts.first ?? "", counts.count) {
        case ("row", 0) where parts.count == 1: return .rowPerItem
        case ("block", 1): return .block(rows: counts[0])
        case ("tiled", 3):
            guard [4, 8, 16].contains(counts[2]) else { throw invalid("the tiled vector width must be 4, 8 or 16") }
            guard counts[0] <= 8, counts[1] <= 8 else { throw invalid("at most 8 queries and 8 keys per work-item") }
            return .tiled(queries: counts[0], keys: counts[1], vectorWidth: counts[2])
        case ("flash", 1):
            guard [32, 64, 128].contains(counts[0]) else { throw invalid("flash rows must be 32, 64 or 128") }
            return .flash(rows: counts[0])
        default: throw invalid("expected row, block:ROWS, tiled:QUERIES,KEYS,WIDTH or flash:ROWS")
        }
    }

    public var description: String {
        switch self {
        case .rowPerItem: "row"
        case .block(let rows): "block:\(rows)"
        case .tiled(let queries, let keys, let width): "tiled:\(queries),\(keys),\(width)"
        case .flash(let rows): "flash:\(rows)"
        }
    }

    /// AVX-512 (16 floats) holds a 4-query tile's accumulators in its 32 zmm registers. AVX2 has
    /// 16 ymm registers: its kernels accumulate two output vectors per pass (`accumulationPasses`),
    /// and then 4 queries and 3 keys of 8-float vectors measured fastest (docs/BENCHMARKS.md).
    public static func cpu(preferredVectorWidth: Int) -> AttentionPath {
        switch GemmProfile.cpuVectorWidth(preferred: preferredVectorWidth) {
        case 16: .tiled(queries: 4, keys: 4, vectorWidth: 16)
        case 8: .tiled(queries: 4, keys: 3, vectorWidth: 8)
        case let width: .tiled(queries: 2, keys: 2, vectorWidth: width)
        }
    }

    /// Output vectors each pass of the tiled kernels' accumulation loops keeps in registers (XP):
    /// two with 8-float vectors (measured on AVX2: the backward 10-16% faster than one pass over
    /// all DH / 8), one pass of all of them at the other widths, where it was not measured.
    static func accumulationPasses(headDimension: Int, vectorWidth: Int) -> Int {
        let vectors = headDimension / vectorWidth
        guard vectorWidth == 8 else { return vectors }
        return vectors % 2 == 0 ? 2 : 1
    }

    /// `__local` bytes of the flash kernels (dkv's, the largest: two tiles and two statistics rows).
    static func flashLocalBytes(rows: Int, headDimension: Int) -> Int { 4 * (2 * rows * headDimension + 2 * rows) }

    /// The tiled kernels store output rows as vectors of 16, 8 or 4 floats: other head
    /// dimensions take the block path. Flash tiles shrink to fit 48 KiB of `__local` (NVIDIA's
    /// limit) and fall back to one row per work-item past it (head dimension above 160).
    /// `deviceLocalBytes` and `maxWorkGroup`: the device's own limits, when below NVIDIA's.
    func resolved(headDimension: Int, deviceLocalBytes: Int = Int.max, maxWorkGroup: Int = 1024) -> AttentionPath {
        if case .tiled(let queries, let keys, let width) = self {
            if headDimension % 4 != 0 { return .block(rows: 16) }
            // The widest vector up to the requested one that divides the head dimension.
            return .tiled(queries: queries, keys: keys, vectorWidth: [16, 8, 4].first { $0 <= width && headDimension % $0 == 0 } ?? 4)
        }
        if case .flash(let rows) = self {
            let localLimit = min(TiledGemm.localLimit, deviceLocalBytes)
            guard let fitting = [rows, 64, 32].filter({ $0 <= rows && $0 <= maxWorkGroup }).first(where: {
                Self.flashLocalBytes(rows: $0, headDimension: headDimension) <= localLimit
            }) else { return .rowPerItem }
            return .flash(rows: fitting)
        }
        return self
    }

    var kernelSuffix: String {
        switch self {
        case .rowPerItem: ""
        case .block: "_block"
        case .tiled: "_tiled"
        case .flash: "_flash"
        }
    }

    func options(headDimension: Int) -> String {
        switch self {
        case .rowPerItem: "-DDH=\(headDimension)"
        case .block(let rows): "-DDH=\(headDimension) -DQB=\(rows)"
        case .tiled(let queries, let keys, let width):
            "-DDH=\(headDimension) -DMQ=\(queries) -DMK=\(keys) -DVW=\(width) -DDC=\(Self.dqFeatures(headDimension: headDimension, vectorWidth: width))"
                + " -DXP=\(Self.accumulationPasses(headDimension: headDimension, vectorWidth: width))"
        case .flash(let rows): "-DDH=\(headDimension) -DFB=\(rows)"
        }
    }

    /// Features per work-item of the tiled dq-from-dS kernel: 8 accumulators of 16 lanes fill
    /// half of AVX-512's registers; AVX2's 16 registers hold 4 (each 16 lanes is two registers).
    /// The tiled path runs only for head dimensions divisible by 4.
    static func dqFeatures(headDimension: Int, vectorWidth: Int) -> Int { vectorWidth == 16 && headDimension % 8 == 0 ? 8 : 4 }

    /// Block and tiled kernels hold several KiB of private arrays per work-item; PoCL keeps the
    /// private memory of a whole work-group on its thread stack and overflowed it (stack
    /// smashing) with driver-chosen groups, so such a work-item runs as a work-group of its own.
    var local: [Int]? {
        switch self {
        case .rowPerItem: nil
        case .block, .tiled: [1, 1, 1]
        case .flash(let rows): [rows, 1, 1]
        }
    }

    /// Work-items for the kernels that own queries (forward, dq).
    func global(_ shape: AttentionShape) -> [Int] {
        switch self {
        case .rowPerItem: [shape.tokens, shape.heads, shape.batch]
        case .block(let rows), .tiled(let rows, _, _): [(shape.tokens + rows - 1) / rows, shape.heads, shape.batch]
        case .flash(let rows): [roundUp(shape.tokens, rows), shape.heads, shape.batch]
        }
    }

    /// Work-items for the kernel that owns keys (dkv).
    func keyGlobal(_ shape: AttentionShape) -> [Int] {
        if case .tiled(_, let keys, _) = self { return [(shape.tokens + keys - 1) / keys, shape.heads, shape.batch] }
        return global(shape)
    }
}

/// Key (query) lanes of the tiled kernels' score vectors; the transposed copies are padded to it.
private let tiledLanes = 16

extension Engine {
    /// `workspace`: dead tensors for K's transposed copy (tiled path), not overlapping an operand.
    public func attentionForward(_ shape: AttentionShape, q: HeadLayout, k: HeadLayout, v: HeadLayout,
                                 output o: Tensor, lse: Tensor, workspace: Workspace? = nil) throws {
        let operation = "attentionForward"
        try checkAttention(operation, shape, [q, k, v])
        try checkOperands(operation, [o, lse])
        try expectShape(operation, "output", o, [shape.batch * shape.tokens, shape.width])
        try expectShape(operation, "lse", lse, [shape.batch, shape.heads, shape.tokens])
        guard q.rowStride == k.rowStride, k.rowStride == v.rowStride else {
            throw TensorError.shapeMismatch(operation: operation, details: "q, k and v must share one row stride")
        }
        let path = attentionPath.resolved(headDimension: shape.headDimension, deviceLocalBytes: Int(clamping: device.info.localMemoryBytes),
                                          maxWorkGroup: device.info.maxWorkGroupSize)
        let options = path.options(headDimension: shape.headDimension)
        if case .tiled = path {
            let kt = try transposedHeads(k, shape, options: options, workspace: workspace)
            try launch("attention_forward_tiled", in: "attention", options: options, global: path.global(shape), local: path.local,
                       work: shape.products(2),
                       q.tensor, kt, v.tensor, q.rowStride, o, shape.width, lse,
                       shape.tokens, paddedTokens(shape), shape.heads, shape.scale)
            return
        }
        try launch("attention_forward" + path.kernelSuffix, in: "attention", options: options,
                   global: path.global(shape), local: path.local, work: shape.products(2),
                   q.tensor, k.tensor, v.tensor, q.rowStride, o, shape.width, lse, shape.tokens, shape.heads, shape.scale)
    }

    private func paddedTokens(_ shape: AttentionShape) -> Int { roundUp(shape.tokens, tiledLanes) }

    /// The heads of a token matrix as [B, H, dh, NP]: each head's transpose, zero-padded to NP
    /// columns, so that 16 consecutive tokens of one feature are one vector load.
    private func transposedHeads(_ x: HeadLayout, _ shape: AttentionShape, options: String, workspace: Workspace? = nil) throws -> Tensor {
        let padded = paddedTokens(shape)
        let t = try temporary([shape.batch * shape.heads * shape.headDimension * padded], workspace)
        try launch("attention_transpose", in: "attention", options: options, global: [padded / tiledLanes, shape.heads, shape.batch],
                   work: .floats(shape.batch * shape.heads * shape.headDimension * (shape.tokens + padded)),
                   x.tensor, x.rowStride, t, shape.tokens, padded, shape.heads)
        return t
    }

    /// The heads of `x` copied into a [B * N, H * dh] tensor of their own.
    private func compactCopy(_ x: HeadLayout, _ shape: AttentionShape, _ workspace: Workspace?) throws -> HeadLayout {
        let rows = shape.batch * shape.tokens
        let copy = try temporary([rows, shape.width], workspace)
        try self.copy(try StridedMatrix(x.tensor, rows: rows, columns: shape.width, rowStride: x.rowStride),
                      into: try StridedMatrix(copy, rows: rows, columns: shape.width, rowStride: shape.width))
        return HeadLayout(copy, rowStride: shape.width)
    }

    /// Writes dq, dk, dv (overwriting) from dO, recomputing probabilities from lse. `workspace`:
    /// dead tensors for the temporaries (dS^T, the transposed heads, delta), which must not
    /// overlap any operand. dq, dk and dv may be q, k and v themselves (the same layouts: the
    /// model writes the gradient over the qkv it no longer needs); the tiled path with stored
    /// scores then runs in place, every other path reads copies of q, k and v.
    public func attentionBackward(_ shape: AttentionShape, q: HeadLayout, k: HeadLayout, v: HeadLayout,
                                  output o: Tensor, lse: Tensor, dOutput dO: Tensor,
                                  dq: HeadLayout, dk: HeadLayout, dv: HeadLayout, workspace: Workspace? = nil) throws {
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
        let path = attentionPath.resolved(headDimension: shape.headDimension, deviceLocalBytes: Int(clamping: device.info.localMemoryBytes),
                                          maxWorkGroup: device.info.maxWorkGroupSize)
        let options = path.options(headDimension: shape.headDimension)
        let global = path.global(shape)
        // dkv stores dS^T when it fits the limit, and dq is then one product instead of three.
        // Compared in Double: the product of four sizes may not fit an Int.
        let reuseDS = 4 * Double(shape.batch) * Double(shape.heads) * Double(shape.tokens) * Double(paddedTokens(shape))
            <= Double(attentionScoreBufferLimit)
        // In place: dkv reads only its own keys' k and v (before the loop over queries) and
        // writes their gradients last; the stored-dS dq reads K's transposed copy, not q.
        var (q, k, v) = (q, k, v)
        let inputs = [q, k, v], outputs = [dq, dk, dv]
        if outputs.contains(where: { output in inputs.contains { $0.tensor.buffer === output.tensor.buffer } }) {
            let sameLayouts = zip(inputs, outputs).allSatisfy {
                $0.tensor.buffer === $1.tensor.buffer && $0.tensor.offset == $1.tensor.offset && $0.rowStride == $1.rowStride
            }
            let tiled = if case .tiled = path { true } else { false }
            if !(sameLayouts && tiled && reuseDS) {
                (q, k, v) = try (compactCopy(q, shape, workspace), compactCopy(k, shape, workspace), compactCopy(v, shape, workspace))
            }
        }
        let delta = try temporary([shape.batch, shape.heads, shape.tokens], workspace)
        try launch("attention_backward_delta", in: "attention", options: options, global: [shape.tokens, shape.heads, shape.batch],
                   work: .floats(2 * rows * shape.width),
                   dO, o, shape.width, delta, shape.tokens, shape.heads)
        if case .tiled(_, _, let width) = path {
            let padded = paddedTokens(shape)
            let dOLayout = HeadLayout(dO, rowStride: shape.width)
            let dsT = reuseDS ? try temporary([shape.batch * shape.heads * shape.tokens * padded], workspace) : delta
            let qt = try transposedHeads(q, shape, options: options, workspace: workspace)
            let dOt = try transposedHeads(dOLayout, shape, options: options, workspace: workspace)
            // Before dkv, which may overwrite k with dk.
            let kt = try transposedHeads(k, shape, options: options, workspace: workspace)
            try launch("attention_backward_dkv_tiled", in: "attention", options: options, global: path.keyGlobal(shape), local: path.local,
                       work: shape.products(4),
                       q.tensor, k.tensor, v.tensor, q.rowStride, qt, dOt, dO, shape.width, lse, delta,
                       dk.tensor, dv.tensor, dk.rowStride, shape.tokens, padded, shape.heads, shape.scale, dsT, reuseDS)
            if reuseDS {
                let features = AttentionPath.dqFeatures(headDimension: shape.headDimension, vectorWidth: width)
                try launch("attention_backward_dq_ds_tiled", in: "attention", options: options,
                           global: [padded / tiledLanes * (shape.headDimension / features), shape.heads, shape.batch], local: path.local,
                           work: shape.products(1),
                           kt, dsT, dq.tensor, dq.rowStride, shape.tokens, padded, shape.heads, shape.scale)
            } else {
                let vt = try transposedHeads(v, shape, options: options, workspace: workspace)
                try launch("attention_backward_dq_tiled", in: "attention", options: options, global: global, local: path.local,
                           work: shape.products(3),
                           q.tensor, k.tensor, q.rowStride, kt, vt, dO, shape.width, lse, delta,
                           dq.tensor, dq.rowStride, shape.tokens, padded, shape.heads, shape.scale)
            }
            return
        }
        try launch("attention_backward_dq" + path.kernelSuffix, in: "attention", options: options, global: global, local: path.local,
                   work: shape.products(3),
                   q.tensor, k.tensor, v.tensor, q.rowStride, dO, shape.width, lse, delta,
                   dq.tensor, dq.rowStride, shape.tokens, shape.heads, shape.scale)
        let split = if case .flash = path { flashSplitBackward } else { false }
        for (name, products) in split ? [("attention_backward_dk_flash", 3), ("attention_backward_dv_flash", 2)]
                                       : [("attention_backward_dkv" + path.kernelSuffix, 4)] {
            try launch(name, in: "attention", options: options, global: global, local: path.local,
                       work: shape.products(products),
                       q.tensor, k.tensor, v.tensor, q.rowStride, dO, shape.width, lse, delta,
                       dk.tensor, dv.tensor, dk.rowStride, shape.tokens, shape.heads, shape.scale)
        }
    }

    private func checkAttention(_ operation: String, _ shape: AttentionShape, _ layouts: [HeadLayout]) throws {
        if case .block(let rows) = attentionPath, ![2, 4, 8, 16].contains(rows) {
            throw TensorError.shapeMismatch(operation: operation, details: "attention block rows must be 2, 4, 8 or 16, got \(rows)")
        }
        if case .flash(let rows) = attentionPath, ![32, 64, 128].contains(rows) {
            throw TensorError.shapeMismatch(operation: operation, details: "flash attention takes work-groups of 32, 64 or 128 rows, got \(rows)")
        }
        if case .tiled(let queries, let keys, let width) = attentionPath {
            guard (1...8).contains(queries), (1...8).contains(keys) else {
                throw TensorError.shapeMismatch(operation: operation, details: "tiled attention takes 1 to 8 queries and keys per work-item, got \(queries) and \(keys)")
            }
            guard [4, 8, 16].contains(width) else {
                throw TensorError.shapeMismatch(operation: operation, details: "tiled attention stores vectors of 4, 8 or 16 floats, got \(width)")
            }
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
