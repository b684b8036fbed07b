import CLRuntime

// Launchers for Kernels/layernorm.cl. Shapes: x, y, dy, dx [..., D] viewed as [R, D];
// gamma, beta, dGamma, dBeta [D]; mean, rstd [R].

extension Engine {
    public func layerNormForward(_ x: Tensor, gamma: Tensor, beta: Tensor, eps: Float,
                                 into y: Tensor, mean: Tensor, rstd: Tensor) throws {
        let operation = "layerNormForward"
        let (rows, width) = try rowsAndWidth(operation, x)
        try checkOperands(operation, [x, gamma, beta, y, mean, rstd])
        try expectShape(operation, "y", y, x.shape)
        for (name, tensor) in [("gamma", gamma), ("beta", beta)] { try expectShape(operation, name, tensor, [width]) }
        for (name, tensor) in [("mean", mean), ("rstd", rstd)] { try expectShape(operation, name, tensor, [rows]) }
        let (suffix, options, global, local) = try rowLaunch(rows: rows, width: width)
        try launch("layernorm_forward" + suffix, in: "layernorm", options: options, global: global, local: local, work: .floats(2 * x.count),
            x, gamma, beta, y, mean, rstd, rows, width, eps)
    }

    /// dx (+)= the input gradient; dGamma/dBeta (+)= the parameter gradients when given
    /// (only when the norm trains).
    public func layerNormBackward(_ dy: Tensor, x: Tensor, gamma: Tensor, mean: Tensor, rstd: Tensor,
                                  dx: Tensor, accumulate: Bool = false,
                                  dGamma: Tensor? = nil, dBeta: Tensor? = nil, accumulateParameters: Bool = false) throws {
        let operation = "layerNormBackward"
        let (rows, width) = try rowsAndWidth(operation, x)
        try checkOperands(operation, [dy, x, gamma, mean, rstd, dx])
        try expectShape(operation, "dy", dy, x.shape)
        try expectShape(operation, "dx", dx, x.shape)
        try expectShape(operation, "gamma", gamma, [width])
        for (name, tensor) in [("mean", mean), ("rstd", rstd)] { try expectShape(operation, name, tensor, [rows]) }
        let (suffix, options, global, local) = try rowLaunch(rows: rows, width: width)
        try launch("layernorm_backward_input" + suffix, in: "layernorm", options: options, global: global, local: local,
                   work: .floats((accumulate ? 4 : 3) * x.count),
            dy, x, gamma, mean, rstd, dx, rows, width, accumulate)
        guard dGamma != nil || dBeta != nil else { return }
        guard let dGamma, let dBeta else {
            throw TensorError.shapeMismatch(operation: operation, details: "dGamma and dBeta train together: pass both or neither")
        }
        try checkOperands(operation, [dGamma, dBeta])
        try expectShape(operation, "dGamma", dGamma, [width])
        try expectShape(operation, "dBeta", dBeta, [width])
        if case .workGroup = reductionPath {
            let (partial, blocks) = try columnPartials(rows: rows, columns: width, count: 2)
            try launch("layernorm_backward_params_partial", in: "layernorm", global: [width, blocks], work: .floats(2 * x.count),
                dy, x, mean, rstd, KernelArgument.buffer(partial.buffer), rows, width, Self.rowBlock, blocks)
            try finishColumnSums(partial, blocks: blocks, into: dGamma, columns: width, accumulate: accumulateParameters)
            try finishColumnSums(partial, first: blocks, blocks: blocks, into: dBeta, columns: width, accumulate: accumulateParameters)
            return
        }
        try launch("layernorm_backward_params", in: "layernorm", global: [width], work: .floats(2 * x.count),
            dy, x, mean, rstd, dGamma, dBeta, rows, width, accumulateParameters)
    }

    /// GPUs: a work-group per row with a `__local` tree. CPUs: one work-item per row, rows of a
    /// multiple of 16 vectorised along the row.
    private func rowLaunch(rows: Int, width: Int) throws -> (suffix: String, options: String, global: [Int], local: [Int]?) {
        if case .workGroup(let size) = reductionPath {
            guard (32...1024).contains(size), size & (size - 1) == 0 else {
                throw TensorError.shapeMismatch(operation: "layerNorm", details: "row work-groups must be a power of two in 32...1024, got \(size)")
            }
            return ("_group", "-DLG=\(size)", [size, rows], [size, 1])
        }
        return (width % 16 == 0 ? "_vec" : "", "", [rows], nil)
    }

    /// [..., D] as R rows of width D.
    func rowsAndWidth(_ operation: String, _ x: Tensor) throws -> (Int, Int) {
        guard let width = x.shape.last, x.shape.count >= 2 else {
            throw TensorError.shapeMismatch(operation: operation, details: "input must be at least 2-D, got \(x.shape)")
        }
        return (x.count / width, width)
    }
}

/// How row reductions (LayerNorm rows) map to work-items.
public enum ReductionPath: Sendable, Equatable {
    /// One work-item per row (CPUs: the row is a loop in one thread, vectorised when it can be).
    case rowPerItem
    /// A work-group of `size` work-items (32 to 1024, a power of two) per row, combined by a
    /// `__local` tree (GPUs).
    case workGroup(size: Int)

    public static func forDevice(_ device: Device) -> ReductionPath { device.type.contains(.gpu) ? .workGroup(size: 128) : .rowPerItem }
}
