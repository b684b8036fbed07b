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
        try launch("layernorm_forward" + rowKernelSuffix(width), in: "layernorm", global: [rows], work: .floats(2 * x.count),
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
        try launch("layernorm_backward_input" + rowKernelSuffix(width), in: "layernorm", global: [rows],
                   work: .floats((accumulate ? 4 : 3) * x.count),
            dy, x, gamma, mean, rstd, dx, rows, width, accumulate)
        guard dGamma != nil || dBeta != nil else { return }
        guard let dGamma, let dBeta else {
            throw TensorError.shapeMismatch(operation: operation, details: "dGamma and dBeta train together: pass both or neither")
        }
        try checkOperands(operation, [dGamma, dBeta])
        try expectShape(operation, "dGamma", dGamma, [width])
        try expectShape(operation, "dBeta", dBeta, [width])
        try launch("layernorm_backward_params", in: "layernorm", global: [width], work: .floats(2 * x.count),
            dy, x, mean, rstd, dGamma, dBeta, rows, width, accumulateParameters)
    }

    /// Rows of a multiple of 16 go through the kernels vectorised along the row.
    private func rowKernelSuffix(_ width: Int) -> String { width % 16 == 0 ? "_vec" : "" }

    /// [..., D] as R rows of width D.
    func rowsAndWidth(_ operation: String, _ x: Tensor) throws -> (Int, Int) {
        guard let width = x.shape.last, x.shape.count >= 2 else {
            throw TensorError.shapeMismatch(operation: operation, details: "input must be at least 2-D, got \(x.shape)")
        }
        return (x.count / width, width)
    }
}
