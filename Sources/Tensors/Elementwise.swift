import CLRuntime

// Launchers for Kernels/elementwise.cl. Each checks engines, dtypes and shapes before it
// enqueues anything; none waits for the device.

extension Engine {
    public func fill(_ tensor: Tensor, with value: Float) throws {
        try checkElementwise("fill", [tensor])
        try launchElementwise("fill_f32", count: tensor.count,
                              [.buffer(tensor.buffer), .int32(Int32(tensor.offset)), .int32(Int32(tensor.count)), .float(value)])
    }

    /// out = a + b
    public func add(_ a: Tensor, _ b: Tensor, into out: Tensor) throws {
        try checkElementwise("add", [a, b, out])
        try launchElementwise("add_f32", count: out.count, [
            .buffer(a.buffer), .int32(Int32(a.offset)),
            .buffer(b.buffer), .int32(Int32(b.offset)),
            .buffer(out.buffer), .int32(Int32(out.offset)), .int32(Int32(out.count)),
        ])
    }

    public func add(_ a: Tensor, _ b: Tensor) throws -> Tensor {
        let out = try empty(a.shape)
        try add(a, b, into: out)
        return out
    }

    /// out = alpha * x; `out` may be `x` itself.
    public func scale(_ x: Tensor, by alpha: Float, into out: Tensor) throws {
        try checkElementwise("scale", [x, out])
        try launchElementwise("scale_f32", count: out.count, [
            .buffer(x.buffer), .int32(Int32(x.offset)),
            .buffer(out.buffer), .int32(Int32(out.offset)), .int32(Int32(out.count)), .float(alpha),
        ])
    }

    /// destination = source (same shape; the ranges must not overlap).
    public func copy(_ source: Tensor, into destination: Tensor) throws {
        try checkElementwise("copy", [source, destination])
        try launchElementwise("copy_f32", count: destination.count, [
            .buffer(source.buffer), .int32(Int32(source.offset)),
            .buffer(destination.buffer), .int32(Int32(destination.offset)), .int32(Int32(destination.count)),
        ])
    }

    private func checkElementwise(_ operation: String, _ tensors: [Tensor]) throws {
        for tensor in tensors {
            guard tensor.engine === self else { throw TensorError.foreignEngine(operation: operation) }
            try tensor.expect(.float32, operation)
            // Offsets and counts travel as 32-bit ints.
            guard tensor.offset + tensor.count <= Int(Int32.max) else {
                throw TensorError.tooLarge(operation: operation, elements: tensor.offset + tensor.count)
            }
        }
        let shapes = tensors.map(\.shape)
        guard shapes.allSatisfy({ $0 == shapes[0] }) else {
            throw TensorError.shapeMismatch(operation: operation,
                                            details: "all operands must have one shape, got \(shapes.map { "\($0)" }.joined(separator: ", "))")
        }
    }

    private func launchElementwise(_ kernelName: String, count: Int, _ arguments: [KernelArgument]) throws {
        let kernel = try kernels.kernel(kernelName, in: "elementwise")
        try kernel.setArguments(arguments)
        try enqueue(kernel, global: [count])
    }
}
