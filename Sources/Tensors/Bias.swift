import CLRuntime

// Launchers for Kernels/bias.cl. y, dy [..., C] viewed as [R, C]; bias, out [C].

extension Engine {
    /// y[r, c] += bias[c], in place.
    public func addBias(_ bias: Tensor, to y: Tensor) throws {
        let (rows, columns) = try rowsAndWidth("addBias", y)
        try checkOperands("addBias", [y, bias])
        try expectShape("addBias", "bias", bias, [columns])
        try launch("bias_add", in: "bias", global: [y.count],
            y, bias, rows, columns)
    }

    /// out[c] (+)= sum over rows of dy[r, c] (the bias gradient).
    public func columnSums(_ dy: Tensor, into out: Tensor, accumulate: Bool = false) throws {
        let (rows, columns) = try rowsAndWidth("columnSums", dy)
        try checkOperands("columnSums", [dy, out])
        try expectShape("columnSums", "out", out, [columns])
        try launch("column_sum", in: "bias", global: [columns],
            dy, out, rows, columns, accumulate)
    }
}
