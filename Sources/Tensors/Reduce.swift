import CLRuntime

// Launchers for Kernels/reduce.cl: sums that stay on the device (a [1] tensor).

extension Engine {
    /// scale * sum of x (e.g. the mean loss with scale 1 / B).
    public func sum(_ x: Tensor, scale: Float = 1) throws -> Tensor {
        try reduce(x, squares: false, scale: scale)
    }

    /// Sum of squares of x (the squared L2 norm of a gradient slab).
    public func sumOfSquares(_ x: Tensor) throws -> Tensor {
        try reduce(x, squares: true, scale: 1)
    }

    private func reduce(_ x: Tensor, squares: Bool, scale: Float) throws -> Tensor {
        try checkOperands("reduce", [x])
        // Enough partial sums to keep every compute unit busy, few enough to finish in one item.
        let partialCount = min(x.count, 1024)
        let partial = try empty([partialCount])
        let out = try empty([1])
        try launch("reduce_partial", in: "reduce", global: [partialCount],
            x, x.count, KernelArgument.buffer(partial.buffer), squares)
        try launch("reduce_final", in: "reduce", global: [1],
            KernelArgument.buffer(partial.buffer), partialCount, out, scale)
        return out
    }
}
