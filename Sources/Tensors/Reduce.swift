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
        if case .workGroup(let size) = reductionPath {
            // Enough work-groups to fill a large GPU, each work-item summing a strided share.
            let groups = max(1, min(1024, (x.count + size * 64 - 1) / (size * 64)))
            let partial = try empty([groups])
            let out = try empty([1])
            try launch("reduce_group", in: "reduce", options: "-DLG=\(size)", global: [groups * size], local: [size], work: .floats(x.count),
                x, x.count, KernelArgument.buffer(partial.buffer), squares)
            try launch("reduce_final", in: "reduce", global: [1], KernelArgument.buffer(partial.buffer), groups, out, scale)
            return out
        }
        // Enough partial sums to keep every compute unit busy, few enough to finish in one item;
        // each over a contiguous chunk of whole vectors.
        let chunk = roundUp((x.count + 1023) / 1024, 16)
        let partialCount = (x.count + chunk - 1) / chunk
        let partial = try empty([partialCount])
        let out = try empty([1])
        try launch("reduce_partial", in: "reduce", global: [partialCount], work: .floats(x.count),
            x, x.count, KernelArgument.buffer(partial.buffer), squares, chunk)
        try launch("reduce_final", in: "reduce", global: [1],
            KernelArgument.buffer(partial.buffer), partialCount, out, scale)
        return out
    }
}
