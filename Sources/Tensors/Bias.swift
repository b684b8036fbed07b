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
        if case .workGroup = reductionPath {
            let (partial, blocks) = try columnPartials(rows: rows, columns: columns, count: 1)
            try launch("column_sum_partial", in: "bias", global: [columns, blocks], work: .floats(dy.count),
                dy, KernelArgument.buffer(partial.buffer), rows, columns, Self.rowBlock)
            try finishColumnSums(partial, blocks: blocks, into: out, columns: columns, accumulate: accumulate)
            return
        }
        try launch("column_sum", in: "bias", global: [columns],
            dy, out, rows, columns, accumulate)
    }

    /// Rows per partial of the two-pass column sums (GPUs).
    static let rowBlock = 64

    /// Partials for `count` column sums of `rows` x `columns`: [count, blocks, columns].
    func columnPartials(rows: Int, columns: Int, count: Int) throws -> (Tensor, Int) {
        let blocks = (rows + Self.rowBlock - 1) / Self.rowBlock
        return (try empty([count * blocks * columns]), blocks)
    }

    /// out (+)= the sum over blocks of partial[blocks, columns] (starting at `first` partial block).
    func finishColumnSums(_ partial: Tensor, first: Int = 0, blocks: Int, into out: Tensor, columns: Int, accumulate: Bool) throws {
        try launch("column_sum_final", in: "bias", global: [columns], work: .floats(blocks * columns),
            try partial.view(offset: first * columns, shape: [blocks * columns]), blocks, out, columns, accumulate)
    }
}
