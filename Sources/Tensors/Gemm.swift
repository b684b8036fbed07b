import CLRuntime

// Launcher for Kernels/gemm.cl.
//
// Shapes: op(A_t) is M x K_t, op(B_t) is K_t x N, C is M x N. Every operand is a contiguous
// 2-D tensor [rows, cols] or a 3-D tensor [batch, rows, cols]; C is 3-D when any operand is,
// and a 2-D operand is shared by every batch (weights). A transposed operand is stored with
// its two last dimensions swapped: op(A) = A^T means A is stored K x M.

public enum Activation: Sendable, Equatable {
    case none
    /// GELU, 0.5 x (1 + erf(x / sqrt 2)) (the epilogues' erf is a rational approximation within
    /// 4.4e-7 of the exact one; Kernels/gemm.cl).
    case gelu
    /// CLIP's quick GELU, x sigmoid(1.702 x).
    case quickGELU
}

/// C *= act'(pre) in a GEMM's epilogue: the backward through an activation fused into the GEMM
/// that produces its gradient (the fc2 backward's dh = (dy W2) * act'(h_pre)). `preActivation`
/// has C's layout.
public struct ActivationDerivative {
    public var activation: Activation
    public var preActivation: Tensor
    public init(_ activation: Activation, at preActivation: Tensor) { (self.activation, self.preActivation) = (activation, preActivation) }
}

/// A 2-D matrix inside a tensor whose rows are `rowStride` elements apart, e.g. the k columns
/// [d, 2d) of a qkv tensor [T, 3d] (rows T, columns d, rowStride 3d, at offset d).
public struct StridedMatrix {
    public var tensor: Tensor
    public var rows: Int
    public var columns: Int
    public var rowStride: Int

    public init(_ tensor: Tensor, rows: Int, columns: Int, rowStride: Int) throws {
        guard rows > 0, columns > 0, rowStride >= columns, (rows - 1) * rowStride + columns <= tensor.count else {
            throw TensorError.shapeMismatch(operation: "StridedMatrix", details: "\(rows)x\(columns) rows \(rowStride) apart do not fit in \(tensor.count) elements")
        }
        (self.tensor, self.rows, self.columns, self.rowStride) = (tensor, rows, columns, rowStride)
    }

    /// Columns [start, start + count) of a contiguous 2-D tensor.
    public static func columns(_ start: Int, _ count: Int, of tensor: Tensor) throws -> StridedMatrix {
        guard tensor.shape.count == 2, start >= 0, start + count <= tensor.shape[1] else {
            throw TensorError.shapeMismatch(operation: "StridedMatrix", details: "columns \(start)..<\(start + count) of \(tensor.shape)")
        }
        let width = tensor.shape[1]
        return try StridedMatrix(try tensor.view(offset: start, shape: [tensor.count - start]), rows: tensor.shape[0], columns: count, rowStride: width)
    }
}

/// A GEMM operand: a contiguous 2-D/3-D tensor or a strided 2-D matrix.
public enum GemmOperand {
    case tensor(Tensor)
    case strided(StridedMatrix)

    var tensor: Tensor {
        switch self {
        case .tensor(let tensor): tensor
        case .strided(let matrix): matrix.tensor
        }
    }
}

/// One product op(A) op(B), scaled, in a sum of products that share one reduction.
public struct GemmTerm {
    public var a: GemmOperand
    public var b: GemmOperand
    public var transposeA: Bool
    public var transposeB: Bool
    public var scale: Float

    public init(_ a: Tensor, _ b: Tensor, transposeA: Bool = false, transposeB: Bool = false, scale: Float = 1) {
        self.init(.tensor(a), .tensor(b), transposeA: transposeA, transposeB: transposeB, scale: scale)
    }

    public init(_ a: GemmOperand, _ b: GemmOperand, transposeA: Bool = false, transposeB: Bool = false, scale: Float = 1) {
        self.a = a
        self.b = b
        self.transposeA = transposeA
        self.transposeB = transposeB
        self.scale = scale
    }
}

/// A stored matrix operand seen through op(): dimensions and strides in elements.
private struct MatrixView {
    var tensor: Tensor
    var batches: Int
    /// Dimensions of op(X).
    var rows: Int
    var columns: Int
    var rowStride: Int
    var columnStride: Int
    var batchStride: Int

    init(_ operand: GemmOperand, transposed: Bool, name: String) throws {
        guard case .tensor(let tensor) = operand else {
            guard case .strided(let matrix) = operand else { fatalError("unreachable") }
            self.tensor = matrix.tensor
            batches = 1
            batchStride = 0
            if transposed {
                (rows, columns, rowStride, columnStride) = (matrix.columns, matrix.rows, 1, matrix.rowStride)
            } else {
                (rows, columns, rowStride, columnStride) = (matrix.rows, matrix.columns, matrix.rowStride, 1)
            }
            isBatched = false
            return
        }
        let shape = tensor.shape
        guard shape.count == 2 || shape.count == 3 else {
            throw TensorError.shapeMismatch(operation: "gemm", details: "\(name) must be 2-D or 3-D, got \(shape)")
        }
        let storedRows = shape[shape.count - 2], storedColumns = shape[shape.count - 1]
        self.tensor = tensor
        batches = shape.count == 3 ? shape[0] : 1
        batchStride = shape.count == 3 ? storedRows * storedColumns : 0
        isBatched = shape.count == 3
        if transposed {
            (rows, columns, rowStride, columnStride) = (storedColumns, storedRows, 1, storedColumns)
        } else {
            (rows, columns, rowStride, columnStride) = (storedRows, storedColumns, storedColumns, 1)
        }
    }

    let isBatched: Bool

    /// The same storage seen as op(X)^T.
    var transposed: MatrixView {
        var view = self
        (view.rows, view.columns) = (columns, rows)
        (view.rowStride, view.columnStride) = (columnStride, rowStride)
        return view
    }
}

extension Engine {
    /// C = act(alpha * op(A) op(B) + beta * C + bias). With beta = 0, C is not read.
    /// `times`: C = (alpha op(A) op(B) + beta C + bias) * act'(pre), pre of C's shape.
    /// `addend`: beta multiplies it instead of C (same layout as C): C = alpha A B + beta R + bias
    /// without first copying R into C (the residual connections).
    public func gemm(_ a: Tensor, _ b: Tensor, into c: Tensor, transposeA: Bool = false, transposeB: Bool = false,
                     alpha: Float = 1, beta: Float = 0, addend: Tensor? = nil, bias: Tensor? = nil, activation: Activation = .none,
                     preActivation: Tensor? = nil, times derivative: ActivationDerivative? = nil, workspace: Workspace? = nil) throws {
        try gemm(sum: [GemmTerm(a, b, transposeA: transposeA, transposeB: transposeB)], into: .tensor(c),
                 alpha: alpha, beta: beta, addend: addend, bias: bias, activation: activation, preActivation: preActivation, times: derivative,
                 workspace: workspace)
    }

    /// C = act(alpha * sum_t scale_t op(A_t) op(B_t) + beta * C + bias), as ONE reduction of
    /// length sum_t K_t. `preActivation`, if given, receives the value before the activation.
    public func gemm(sum terms: [GemmTerm], into c: Tensor, alpha: Float = 1, beta: Float = 0, bias: Tensor? = nil,
                     activation: Activation = .none, preActivation: Tensor? = nil, workspace: Workspace? = nil) throws {
        try gemm(sum: terms, into: .tensor(c), alpha: alpha, beta: beta, bias: bias, activation: activation, preActivation: preActivation,
                 workspace: workspace)
    }

    /// C may be a strided matrix (e.g. columns of a wider tensor); `preActivation` then has
    /// C's layout too.
    /// `workspace`: dead tensors for B's packed panels, overlapping no operand.
    public func gemm(sum terms: [GemmTerm], into cOperand: GemmOperand, alpha: Float = 1, beta: Float = 0, addend: Tensor? = nil,
                     bias: Tensor? = nil, activation: Activation = .none, preActivation: Tensor? = nil,
                     times derivative: ActivationDerivative? = nil, workspace: Workspace? = nil) throws {
        var problem = try GemmProblem(self, terms, into: cOperand, addend: addend, bias: bias, activation: activation,
                                      preActivation: preActivation, times: derivative)
        problem.workspace = workspace
        let profile = gemmProfile
        if profile.skinny, terms.count == 1, problem.batches == 1, problem.flags == 0, addend == nil, problem.noOperandQuantized,
           try skinnyGemm(problem.aViews[0], problem.bViews[0], scale: terms[0].scale, into: problem.output, alpha: alpha, beta: beta) {
            return
        }
        if matmulPrecision == .bf16, let reason = Self.bf16ProfileUnsupported(profile) {
            throw MatmulPrecisionError(precision: .bf16, reason: reason)
        }
        if let tiles = profile.tiles {
            try launchTiled(problem, tiles: tiles, localPacking: profile.localPacking, splitK: profile.splitK, alpha: alpha, beta: beta)
        } else {
            try launchPacked(problem, profile: profile, alpha: alpha, beta: beta)
        }
    }

    /// gemm_tiled (GPUs): both operands packed into the shape class's work-group tiles.
    private func launchTiled(_ p: GemmProblem, tiles: GemmTiles, localPacking: Bool, splitK: Bool, alpha: Float, beta: Float) throws {
        let (m, n) = (p.m, p.n)
        let tile = tiles.tile(m: m, n: n, batches: p.batches, computeUnits: device.info.computeUnits)
        try tile.validate(maxWorkGroup: device.info.maxWorkGroupSize, deviceLocalBytes: Int(clamping: device.info.localMemoryBytes))
        let options = tile.buildOptions
        let mPanels = (m + tile.mwg - 1) / tile.mwg, nPanels = (n + tile.nwg - 1) / tile.nwg
        if splitK && localPacking && p.terms.count == 1 && p.batches == 1 {
            let chunks = Self.splitChunks(groups: mPanels * nPanels, k: p.kTotal, computeUnits: device.info.computeUnits)
            if chunks > 1 { return try launchSplit(p, tile: tile, chunks: chunks, alpha: alpha, beta: beta) }
        }
        let (packedA, packedB) = try pack(p.terms, p.aViews, p.bViews, options: options, rows: tile.mwg, columns: tile.nwg,
                                          m: m, n: n, kTotal: p.kTotal, batches: (p.aPackedBatches, p.bPackedBatches), packAFrom: 0,
                                          workspace: p.workspace, throughLocalMemory: localPacking)
        let panelsA = try Self.packed(packedA)
        let kernel = try kernels.kernel("gemm_tiled", in: "gemm", options: options + p.preStorageOption)
        try kernel.setArguments([
            .buffer(panelsA.buffer), .buffer(packedB.buffer), .int32(Int32(p.kTotal)),
            .int32(Int32(m)), .int32(Int32(n)), .int32(Int32(mPanels)), .int32(Int32(nPanels)),
            .int32(p.aPackedBatches > 1 ? 1 : 0), .int32(p.bPackedBatches > 1 ? 1 : 0)] + p.cArguments + [
            .float(alpha), .float(beta)] + p.epilogueArguments(flags: p.flags) + p.betaSource(first: true))
        try enqueue(kernel, global: [nPanels * tile.ndimc, mPanels * tile.mdimc, p.batches], local: [tile.ndimc, tile.mdimc, 1],
                    work: KernelWork(flops: 2 * Double(m) * Double(n) * Double(p.kTotal) * Double(p.batches)))
    }

    /// Chunks of the reduction for a product whose grid of `groups` work-groups leaves compute
    /// units idle: enough to give every unit a group, each chunk at least 256 long (1: no split).
    static func splitChunks(groups: Int, k: Int, computeUnits: Int) -> Int {
        guard groups > 0, groups < computeUnits else { return 1 }
        return max(1, min((computeUnits + groups - 1) / groups, k / 256))
    }

    /// Split-k (GPUs, opt-in: `SLORAGPU_GEMM_PROFILE=SPLITK=1`): the reduction of a single
    /// product cut into chunks that gemm_tiled runs as a batch into partial sums [chunks, M, N],
    /// then gemm_split_sum adds them and applies the epilogue. For the adapters' narrow products
    /// with long reductions, e.g. dA = g^T u (8 x 768 over k = 6304: 12 work-groups for an H200's
    /// 132 multiprocessors).
    private func launchSplit(_ p: GemmProblem, tile: TiledGemm, chunks requested: Int, alpha: Float, beta: Float) throws {
        let (m, n, k) = (p.m, p.n, p.kTotal)
        let chunk = (k + requested - 1) / requested, chunks = (k + chunk - 1) / chunk
        let mPanels = (m + tile.mwg - 1) / tile.mwg, nPanels = (n + tile.nwg - 1) / tile.nwg
        let (a, b, term) = (p.aViews[0], p.bViews[0], p.terms[0])
        let packedA = try empty([chunks * mPanels * chunk * tile.mwg]), packedB = try empty([chunks * nPanels * chunk * tile.nwg])
        let partial = try empty([chunks, m, n])
        guard max(packedA.count, packedB.count, partial.count) <= Int(Int32.max) else {
            throw TensorError.tooLarge(operation: "gemm", elements: max(packedA.count, packedB.count, partial.count))
        }
        let options = tile.buildOptions, kFinal = k - (chunks - 1) * chunk
        try packPanels("pack_panels_a", options: options + Self.storageOption("A", a.tensor.dtype), a.tensor,
                       strideAcross: a.rowStride, strideAlong: a.columnStride, batchStride: chunk * a.columnStride, extent: m, k: chunk,
                       kFinal: kFinal, scale: term.scale, width: tile.mwg, panels: mPanels, batches: chunks, kTotal: chunk,
                       kDestination: 0, into: packedA)
        try packPanels("pack_panels_b", options: options + Self.storageOption("B", b.tensor.dtype), b.tensor,
                       strideAcross: b.columnStride, strideAlong: b.rowStride, batchStride: chunk * b.rowStride, extent: n, k: chunk,
                       kFinal: kFinal, scale: 1, width: tile.nwg, panels: nPanels, batches: chunks, kTotal: chunk,
                       kDestination: 0, into: packedB)
        let kernel = try kernels.kernel("gemm_tiled", in: "gemm", options: options)
        let none: [KernelArgument] = [.buffer(partial.buffer), .int32(0)]
        try kernel.setArguments([
            .buffer(packedA.buffer), .buffer(packedB.buffer), .int32(Int32(chunk)),
            .int32(Int32(m)), .int32(Int32(n)), .int32(Int32(mPanels)), .int32(Int32(nPanels)), .int32(1), .int32(1),
            .buffer(partial.buffer), .int32(0), .int32(Int32(n)), .int32(Int32(m * n)), .float(1), .float(0)]
            + none + [.int32(0)] + none + none)
        try enqueue(kernel, global: [nPanels * tile.ndimc, mPanels * tile.mdimc, chunks], local: [tile.ndimc, tile.mdimc, 1],
                    work: KernelWork(flops: 2 * Double(m) * Double(n) * Double(k)))
        let sum = try kernels.kernel("gemm_split_sum", in: "gemm", options: options + p.preStorageOption)
        try sum.setArguments([.buffer(partial.buffer), .int32(Int32(chunks)), .int32(Int32(m)), .int32(Int32(n))]
            + p.cArguments.prefix(3) + [.float(alpha), .float(beta)] + p.epilogueArguments(flags: p.flags) + p.betaSource(first: true))
        try enqueue(sum, global: [n, m], work: .floats((chunks + 1) * m * n))
    }

    /// gemm_packed (CPUs): register tiles over packed panels, A read in place when it can be,
    /// long reductions as k-blocks.
    private func launchPacked(_ problem: GemmProblem, profile: GemmProfile, alpha: Float, beta: Float) throws {
        var p = problem
        // bf16 products pack both operands as bf16 pairs along k (Kernels/gemm.cl, BF16_PANELS):
        // the panels' depth and every k-block boundary are even.
        let bf16 = matmulPrecision == .bf16
        let (m, n, batches) = (p.m, p.n, p.batches)
        let kTotal = bf16 ? roundUp(p.kTotal, 2) : p.kTotal
        let blockLength = profile.kBlock > 0 ? (bf16 ? roundUp(profile.kBlock, 2) : profile.kBlock) : kTotal
        // k-blocks store partial sums in C before the last block's epilogue reads the
        // derivative's input: when that input is C, it is read from a copy.
        if blockLength < kTotal, let pre = p.preTensor, pre.buffer === p.output.tensor.buffer, pre.offset == p.output.tensor.offset {
            let copy = try empty(pre.shape)
            try self.copy(pre, into: copy)
            p.preTensor = copy
        }
        let options = bf16 ? bf16PanelOptions(profile) : profile.buildOptions
        let mr = profile.rowsPerItem, nr = profile.columnsPerItem
        let mPanels = (m + mr - 1) / mr, nPanels = (n + nr - 1) / nr
        // The first term's A, when plain (non-transposed, unit column stride), is read in place,
        // widening a 16-bit A as it is read (int8 is dequantized in packing only); the other
        // terms' A (the adapters' narrow ones) are packed.
        let directA = !bf16 && profile.directA && p.aViews[0].columnStride == 1 && p.terms[0].scale == 1 && p.aViews[0].tensor.dtype != .int8
        let kSplit = directA ? p.aViews[0].columns : 0
        let microOptions = (directA ? options + " -DDIRECT_A" + Self.storageOption("A", p.aViews[0].tensor.dtype) : options) + p.preStorageOption
        let (packedA, packedB) = try pack(p.terms, p.aViews, p.bViews, options: options, rows: mr, columns: nr, m: m, n: n, kTotal: kTotal,
                                          batches: (p.aPackedBatches, p.bPackedBatches), packAFrom: directA ? 1 : 0,
                                          workspace: p.workspace, bf16Pairs: bf16)
        let firstA = directA ? p.aViews[0].tensor : try Self.packed(packedA)

        let micro = try kernels.kernel("gemm_packed", in: "gemm", options: microOptions)
        let global: [Int], local: [Int]?
        if let (lx, ly) = profile.localSize {
            (global, local) = ([roundUp(nPanels, lx), roundUp(mPanels, ly), batches], [lx, ly, 1])
        } else {
            (global, local) = ([nPanels, mPanels, batches], nil)
        }
        // Long reductions run as k-blocks: every block after the first accumulates into C
        // (beta 1), and only the last applies the epilogue.
        var kBegin = 0
        while kBegin < kTotal {
            let kEnd = min(kTotal, kBegin + blockLength)
            let isFirst = kBegin == 0, isLast = kEnd == kTotal
            try micro.setArguments([
                .buffer(firstA.buffer), .buffer(packedB.buffer), .int32(Int32(kTotal)),
                .int32(Int32(kBegin)), .int32(Int32(kEnd)),
                .int32(Int32(directA ? p.aViews[0].tensor.offset : 0)), .int32(Int32(directA ? p.aViews[0].rowStride : 0)),
                .int32(Int32(directA ? p.aViews[0].batchStride : 0)),
                .int32(Int32(m)), .int32(Int32(n)), .int32(Int32(mPanels)), .int32(Int32(nPanels)),
                .int32(p.aPackedBatches > 1 ? 1 : 0), .int32(p.bPackedBatches > 1 ? 1 : 0)] + p.cArguments + [
                .float(alpha), .float(isFirst ? beta : 1)] + p.epilogueArguments(flags: isLast ? p.flags : 0) + [
                .buffer((packedA ?? packedB).buffer), .int32(Int32(kSplit))] + p.betaSource(first: isFirst))
            let flops = 2 * Double(m) * Double(n) * Double(min(kEnd, p.kTotal) - kBegin) * Double(batches)
            try enqueue(micro, global: global, local: local, work: KernelWork(flops: flops, bf16Flops: bf16 ? flops : 0))
            kBegin = kEnd
        }
    }
}

/// A validated GEMM: the operand views, the output's geometry, and the epilogue as the
/// kernels' flags (Kernels/gemm.cl: 1 bias, 2 activation, 4 pre-activation copy, 8 times the
/// activation's derivative, 16 quick GELU).
private struct GemmProblem {
    let terms: [GemmTerm]
    let aViews: [MatrixView], bViews: [MatrixView]
    let output: MatrixView
    let m: Int, n: Int, batches: Int, kTotal: Int
    /// A 2-D operand packs once and serves every batch, unless another term of the same side is
    /// batched (then the packed buffer holds every batch).
    let aPackedBatches: Int, bPackedBatches: Int
    let bias: Tensor?
    /// What beta multiplies, when not C (C's layout).
    let addend: Tensor?
    /// The one pre-activation pointer: written (a pre-activation copy) or read (a derivative).
    var preTensor: Tensor?
    /// Where B's packed panels may go.
    var workspace: Workspace?
    let flags: Int32

    init(_ engine: Engine, _ terms: [GemmTerm], into cOperand: GemmOperand, addend: Tensor?, bias: Tensor?, activation: Activation,
         preActivation: Tensor?, times derivative: ActivationDerivative?) throws {
        let operation = "gemm"
        let derivativeInput = derivative?.preActivation
        guard !terms.isEmpty else { throw TensorError.shapeMismatch(operation: operation, details: "no terms") }
        let output = try MatrixView(cOperand, transposed: false, name: "C")
        let c = output.tensor
        let (m, n, batches) = (output.rows, output.columns, output.batches)

        var aViews: [MatrixView] = [], bViews: [MatrixView] = []
        for (index, term) in terms.enumerated() {
            let label = terms.count == 1 ? "" : "\(index)"
            let a = try MatrixView(term.a, transposed: term.transposeA, name: "A\(label)")
            let b = try MatrixView(term.b, transposed: term.transposeB, name: "B\(label)")
            guard a.columns == b.rows else {
                throw TensorError.shapeMismatch(operation: operation, details: "op(A\(label)) is \(a.rows)x\(a.columns) but op(B\(label)) is \(b.rows)x\(b.columns): inner dimensions differ")
            }
            guard a.rows == m, b.columns == n else {
                throw TensorError.shapeMismatch(operation: operation, details: "op(A\(label)) op(B\(label)) is \(a.rows)x\(b.columns) but C is \(m)x\(n)")
            }
            for view in [a, b] where view.isBatched && view.batches != batches {
                throw TensorError.shapeMismatch(operation: operation, details: "operand with batch \(view.batches) but C has batch \(batches) (shape \(c.shape))")
            }
            aViews.append(a)
            bViews.append(b)
        }
        if let bias, bias.shape != [n] {
            throw TensorError.shapeMismatch(operation: operation, details: "bias must be [\(n)], got \(bias.shape)")
        }
        if derivativeInput != nil, preActivation != nil || activation != .none {
            throw TensorError.shapeMismatch(operation: operation, details: "an activation derivative excludes an activation and a preActivation output")
        }
        // Both read or write through the kernel's one pre-activation pointer, with C's layout.
        let preTensor = preActivation ?? derivativeInput
        func hasCLayout(_ tensor: Tensor) -> Bool {
            switch cOperand {
            case .tensor(let plain): tensor.shape == plain.shape
            case .strided: (m - 1) * output.rowStride + n <= tensor.count
            }
        }
        if let preTensor, !hasCLayout(preTensor) {
            throw TensorError.shapeMismatch(operation: operation, details: "\(preActivation != nil ? "preActivation" : "the activation derivative's input") \(preTensor.shape) does not have C's layout")
        }
        // The derivative's input may be C itself (dh written over the pre-activation it is the
        // derivative at): each element is read before the same work-item writes it. Any other
        // overlap with C would let one element's write clobber another's input.
        if let preTensor, preTensor.buffer === c.buffer, preTensor.offset < c.offset + c.count, c.offset < preTensor.offset + preTensor.count,
           preActivation != nil || preTensor.offset != c.offset || preTensor.dtype != .float32 {
            throw TensorError.shapeMismatch(operation: operation, details: "\(preActivation != nil ? "preActivation" : "the activation derivative's input") overlaps C without being C")
        }
        if let addend, !hasCLayout(addend) {
            throw TensorError.shapeMismatch(operation: operation, details: "the addend \(addend.shape) does not have C's layout \(c.shape)")
        }
        // Operands may be stored in fp16, bf16 or int8 (frozen weights; widened as they are packed);
        // C, the bias and the addend are fp32, the pre-activation fp32 or bf16.
        let operands = terms.flatMap { [$0.a.tensor, $0.b.tensor] }
        let outputs = [c] + (bias.map { [$0] } ?? []) + (preTensor.map { [$0] } ?? []) + (addend.map { [$0] } ?? [])
        for tensor in operands + outputs {
            guard tensor.engine === engine else { throw TensorError.foreignEngine(operation: operation) }
            guard tensor.offset + tensor.count <= Int(Int32.max) else {
                throw TensorError.tooLarge(operation: operation, elements: tensor.offset + tensor.count)
            }
        }
        // int8 only with its row scales (a quantized upload made it).
        for tensor in operands where !tensor.dtype.isFloatingPoint && !(tensor.dtype == .int8 && tensor.rowScales != nil) {
            try tensor.expect(.float32, operation)
        }
        for tensor in [c] + (bias.map { [$0] } ?? []) + (addend.map { [$0] } ?? []) { try tensor.expect(.float32, operation) }
        // The pre-activation may be bf16 (keep-bf16's saved copy: rounded as stored, widened as read).
        if let preTensor, preTensor.dtype != .bfloat16 { try preTensor.expect(.float32, operation) }
        var flags: Int32 = 0
        if bias != nil { flags |= 1 }
        if activation != .none { flags |= 2 }
        if preActivation != nil { flags |= 4 }
        if let derivative {
            guard derivative.activation != .none else {
                throw TensorError.shapeMismatch(operation: operation, details: "an activation derivative needs an activation, not none")
            }
            flags |= 8
        }
        if activation == .quickGELU || derivative?.activation == .quickGELU { flags |= 16 }

        (self.terms, self.aViews, self.bViews, self.output) = (terms, aViews, bViews, output)
        (self.m, self.n, self.batches, self.kTotal) = (m, n, batches, aViews.reduce(0) { $0 + $1.columns })
        aPackedBatches = aViews.contains(where: \.isBatched) ? batches : 1
        bPackedBatches = bViews.contains(where: \.isBatched) ? batches : 1
        (self.bias, self.addend, self.preTensor, self.flags) = (bias, addend, preTensor, flags)
    }

    /// Whether no operand is int8 (the skinny kernels read fp32, fp16 and bf16 in place; int8 is
    /// dequantized in the panels' packing only).
    var noOperandQuantized: Bool { terms.allSatisfy { $0.a.tensor.dtype != .int8 && $0.b.tensor.dtype != .int8 } }

    /// C, its offset, row stride and batch stride.
    var cArguments: [KernelArgument] {
        let c = output.tensor
        return [.buffer(c.buffer), .int32(Int32(c.offset)), .int32(Int32(output.rowStride)), .int32(Int32(output.batchStride))]
    }

    /// What beta multiplies: the addend in the first (or only) k-block, C itself after it.
    func betaSource(first: Bool) -> [KernelArgument] {
        let source = first ? addend ?? output.tensor : output.tensor
        return [.buffer(source.buffer), .int32(Int32(source.offset))]
    }

    /// The epilogue kernels' build option for a bf16 pre-activation (none for fp32).
    var preStorageOption: String { preTensor?.dtype == .bfloat16 ? " -DPRE_STORAGE=2" : "" }

    /// Bias, flags and the pre-activation pointer (C stands in for absent ones).
    func epilogueArguments(flags: Int32) -> [KernelArgument] {
        let c = output.tensor
        return [.buffer((bias ?? c).buffer), .int32(Int32((bias ?? c).offset)), .int32(flags),
                .buffer((preTensor ?? c).buffer), .int32(Int32((preTensor ?? c).offset))]
    }
}

extension Engine {
    /// The packing kernels' build option for an operand stored as `dtype` (none for fp32).
    fileprivate static func storageOption(_ side: String, _ dtype: DType) -> String {
        switch dtype {
        case .float16: " -D\(side)_STORAGE=1"
        case .bfloat16: " -D\(side)_STORAGE=2"
        case .int8: " -D\(side)_STORAGE=3"
        default: ""
        }
    }

    /// Packed A panels that `pack` made (every term packs when `packAFrom` is 0, and K >= 1).
    fileprivate static func packed(_ panels: Tensor?) throws -> Tensor {
        guard let panels else { throw TensorError.shapeMismatch(operation: "gemm", details: "no packed A panels (K = 0)") }
        return panels
    }

    /// The int8 builds' extra arguments: the operand's row scales and row length.
    fileprivate static func scaleArguments(_ tensor: Tensor) -> [KernelArgument] {
        guard tensor.dtype == .int8, let rowScales = tensor.rowScales else { return [] }
        return [.buffer(rowScales.scales.buffer), .int32(Int32(rowScales.scales.offset)), .int32(Int32(rowScales.rowLength))]
    }
}

extension Engine {
    /// The build of Kernels/gemm.cl whose panels hold bf16 pairs (and whose micro-kernel, packing
    /// and peak chain use DOT_BF16: the instruction, or its fp32 emulation in tests).
    func bf16PanelOptions(_ profile: GemmProfile) -> String {
        profile.buildOptions + " -DBF16_PANELS" + (bf16Emulation ? " -DBF16_EMULATE" : "")
    }
}

func roundUp(_ value: Int, _ multiple: Int) -> Int { (value + multiple - 1) / multiple * multiple }

extension Engine {
    /// Packs scale_t op(A_t) for the terms from `packAFrom` on into row panels of `rows` (their
    /// k ranges consecutive, starting at 0; nil when there are none) and op(B_t) of every term
    /// into column panels of `columns`, the terms in consecutive k ranges (Kernels/gemm.cl,
    /// pack_a and pack_b; with `throughLocalMemory`, the GPUs' pack_panels_a and pack_panels_b).
    fileprivate func pack(_ terms: [GemmTerm], _ aViews: [MatrixView], _ bViews: [MatrixView], options: String, rows mr: Int, columns nr: Int,
                          m: Int, n: Int, kTotal: Int, batches: (a: Int, b: Int), packAFrom first: Int,
                          workspace: Workspace?, throughLocalMemory: Bool = false, bf16Pairs: Bool = false) throws -> (Tensor?, Tensor) {
        let mPanels = (m + mr - 1) / mr, nPanels = (n + nr - 1) / nr
        let kOperands = aViews[min(first, aViews.count)...].reduce(0) { $0 + $1.columns }
        // bf16 pairs: `kTotal` is the reduction rounded up to even, A is packed whole (first 0),
        // and a panel element is 2 bytes, so a buffer holds half as many floats.
        let kPackedA = bf16Pairs ? kTotal : kOperands
        let elementsPerFloat = bf16Pairs ? 2 : 1
        // The kernels address the panels from their buffers' start: only B's (the frozen
        // weights', the larger) may take a lent buffer, and only from its start.
        let packedA = kPackedA > 0 ? try empty([batches.a * mPanels * kPackedA * mr / elementsPerFloat]) : nil
        let packedBShape = [batches.b * nPanels * kTotal * nr / elementsPerFloat]
        let packedB = try workspace?.tensorAtBufferStart(self, packedBShape) ?? empty(packedBShape)
        guard (packedA?.count ?? 0) * elementsPerFloat <= Int(Int32.max), packedB.count * elementsPerFloat <= Int(Int32.max) else {
            throw TensorError.tooLarge(operation: "gemm", elements: max(packedA?.count ?? 0, packedB.count) * elementsPerFloat)
        }
        if bf16Pairs, kOperands < kTotal {
            // An odd reduction's last pair ends in a k that no term packs: it must hold zeros.
            if let packedA { try fill(packedA, with: 0) }
            try fill(packedB, with: 0)
        }
        var kDestination = 0, kDestinationA = 0
        for (index, (term, (a, b))) in zip(terms, zip(aViews, bViews)).enumerated() {
            let k = a.columns
            if throughLocalMemory {
                // GPUs: 32 x 32 blocks through __local memory, both sides coalesced (Kernels/gemm.cl).
                if index >= first, let packedA {
                    try packPanels("pack_panels_a", options: options + Self.storageOption("A", a.tensor.dtype), a.tensor,
                                   strideAcross: a.rowStride, strideAlong: a.columnStride, batchStride: a.batchStride, extent: m, k: k,
                                   scale: term.scale, width: mr, panels: mPanels, batches: batches.a, kTotal: kPackedA,
                                   kDestination: kDestinationA, into: packedA)
                    kDestinationA += k
                }
                try packPanels("pack_panels_b", options: options + Self.storageOption("B", b.tensor.dtype), b.tensor,
                               strideAcross: b.columnStride, strideAlong: b.rowStride, batchStride: b.batchStride, extent: n, k: k,
                               scale: 1, width: nr, panels: nPanels, batches: batches.b, kTotal: kTotal,
                               kDestination: kDestination, into: packedB)
                kDestination += k
                continue
            }
            // A 16- or 8-bit operand packs through a build that widens it (A_STORAGE / B_STORAGE).
            if index >= first, let packedA {
                let aOptions = options + Self.storageOption("A", a.tensor.dtype)
                // bf16 pairs, where the term starts on a pair: 16 k per work-item from a plain
                // A's rows, else a work-item per pair of k.
                let pairs = bf16Pairs && kDestinationA % 2 == 0
                if pairs, a.columnStride == 1, a.tensor.dtype != .int8 {
                    try launch("pack_a_rows", in: "gemm", options: aOptions, global: [(k + 15) / 16, mPanels, batches.a],
                               work: .floats(2 * k * mPanels * mr * batches.a),
                               a.tensor, a.rowStride, a.batchStride, m, k, term.scale, mPanels, kPackedA, kDestinationA,
                               KernelArgument.buffer(packedA.buffer))
                } else {
                    let packAKernel = try kernels.kernel(pairs ? "pack_a_pairs" : "pack_a", in: "gemm", options: aOptions)
                    try packAKernel.setArguments([
                        .buffer(a.tensor.buffer), .int32(Int32(a.tensor.offset)), .int32(Int32(a.rowStride)),
                        .int32(Int32(a.columnStride)), .int32(Int32(a.batchStride)), .int32(Int32(m)), .int32(Int32(k)),
                        .float(term.scale), .int32(Int32(mPanels)), .int32(Int32(kPackedA)), .int32(Int32(kDestinationA)),
                        .buffer(packedA.buffer),
                    ] + Self.scaleArguments(a.tensor))
                    try enqueue(packAKernel, global: [pairs ? (k + 1) / 2 : k, mPanels, batches.a], work: .floats(2 * k * mPanels * mr * batches.a))
                }
                kDestinationA += k
            }
            let bOptions = options + Self.storageOption("B", b.tensor.dtype)
            if b.rowStride == 1, b.columnStride != 1, b.tensor.dtype != .int8 {
                // A transposed B (a weight's rows): vector reads along k (Kernels/gemm.cl).
                let depth = 8
                try launch("pack_b_transposed", in: "gemm", options: bOptions, global: [(k + depth - 1) / depth, nPanels, batches.b],
                           work: .floats(2 * k * nPanels * nr * batches.b),
                           b.tensor, b.columnStride, b.batchStride, k, n, nPanels, kTotal, kDestination,
                           KernelArgument.buffer(packedB.buffer), packedB.offset * elementsPerFloat)   // the offset in panel elements
            } else {
                let pairs = bf16Pairs && kDestination % 2 == 0
                let packBKernel = try kernels.kernel(pairs ? "pack_b_pairs" : "pack_b", in: "gemm", options: bOptions)
                try packBKernel.setArguments([
                    .buffer(b.tensor.buffer), .int32(Int32(b.tensor.offset)), .int32(Int32(b.rowStride)),
                    .int32(Int32(b.columnStride)), .int32(Int32(b.batchStride)), .int32(Int32(k)), .int32(Int32(n)),
                    .int32(Int32(nPanels)), .int32(Int32(kTotal)), .int32(Int32(kDestination)),
                    .buffer(packedB.buffer),
                ] + Self.scaleArguments(b.tensor))
                try enqueue(packBKernel, global: [pairs ? (k + 1) / 2 : k, nPanels, batches.b], work: .floats(2 * k * nPanels * nr * batches.b))
            }
            kDestination += k
        }
        return (packedA, packedB)
    }
}

extension Engine {
    /// One operand of gemm_tiled into panels of `width` along i (C's rows for A, its columns for
    /// B): packed[batch][i / width][kDestination + k][i % width] = scale op(X)(i, k), zero past
    /// `extent` (Kernels/gemm.cl, PACK_PANELS).
    fileprivate func packPanels(_ name: String, options: String, _ source: Tensor, strideAcross: Int, strideAlong: Int,
                                batchStride: Int, extent: Int, k: Int, kFinal: Int? = nil, scale: Float, width: Int, panels: Int, batches: Int,
                                kTotal: Int, kDestination: Int, into packed: Tensor) throws {
        let tile = 32, rowsPerGroup = 8
        let kernel = try kernels.kernel(name, in: "gemm", options: options)
        try kernel.setArguments([
            .buffer(source.buffer), .int32(Int32(source.offset)), .int32(Int32(strideAcross)), .int32(Int32(strideAlong)),
            .int32(Int32(batchStride)), .int32(Int32(extent)), .int32(Int32(k)), .int32(Int32(kFinal ?? k)), .float(scale), .int32(Int32(width)),
            .int32(Int32(panels)), .int32(Int32(kTotal)), .int32(Int32(kDestination)), .buffer(packed.buffer),
        ] + Self.scaleArguments(source))
        try enqueue(kernel, global: [roundUp(panels * width, tile), (k + tile - 1) / tile * rowsPerGroup, batches],
                    local: [tile, rowsPerGroup, 1], work: .floats(2 * k * panels * width * batches))
    }
}

extension Engine {
    /// C = alpha scale op(A) op(B) + beta C through the skinny kernels when C has at most 16
    /// columns, or at most 16 rows (then as C^T = op(B)^T op(A)^T with C^T's strides), and
    /// the operand whose rows become C's rows has unit stride along k or along those rows.
    /// Returns false, having launched nothing, when the shape or layout does not fit.
    fileprivate func skinnyGemm(_ a: MatrixView, _ b: MatrixView, scale: Float, into c: MatrixView,
                                alpha: Float, beta: Float) throws -> Bool {
        let limit = 16
        var (a, b) = (a, b)
        var (cRowStride, cColumnStride) = (c.rowStride, c.columnStride)
        if b.columns > limit {
            guard a.rows <= limit else { return false }
            (a, b) = (b.transposed, a.transposed)
            (cRowStride, cColumnStride) = (cColumnStride, cRowStride)
        }
        let (m, n, k) = (a.rows, b.columns, a.columns)
        let options = "-DNS=\(n)" + Self.storageOption("A", a.tensor.dtype) + Self.storageOption("B", b.tensor.dtype)
        let work = KernelWork(flops: 2 * Double(m) * Double(n) * Double(k))
        if a.columnStride == 1 {
            // Columns as one vector of 8 lanes when they fit (the rank-8 adapters), else 16.
            let lanes = n <= 8 ? 8 : 16
            let rowsOptions = options + " -DSW=\(lanes)"
            let packed = try empty([k * lanes])
            try launch("pack_small_b", in: "gemm", options: rowsOptions, global: [k], work: .floats(k * (n + lanes)),
                       b.tensor, b.rowStride, b.columnStride, k, packed)
            try launch("gemm_small_rows", in: "gemm", options: rowsOptions, global: [(m + 7) / 8], work: work,
                       a.tensor, a.rowStride, packed, m, k, c.tensor, cRowStride, cColumnStride, alpha * scale, beta)
            return true
        }
        if a.rowStride == 1 {
            try launch("gemm_small_lanes", in: "gemm", options: options, global: [(m + 31) / 32], work: work,
                       a.tensor, a.columnStride, b.tensor, b.rowStride, b.columnStride, m, k,
                       c.tensor, cRowStride, cColumnStride, alpha * scale, beta)
            return true
        }
        return false
    }
}
