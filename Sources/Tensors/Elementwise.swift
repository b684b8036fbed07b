import CLRuntime

// Launchers for Kernels/elementwise.cl. Each checks engines, dtypes and shapes before it
// enqueues anything; none waits for the device.

extension Engine {
    public func fill(_ tensor: Tensor, with value: Float) throws {
        try checkElementwise("fill", [tensor])
        try launchElementwise("fill_f32", count: tensor.count, operands: 1,
                              [.buffer(tensor.buffer), .int32(Int32(tensor.offset)), .int32(Int32(tensor.count)), .float(value)])
    }

    /// out = a + b
    public func add(_ a: Tensor, _ b: Tensor, into out: Tensor) throws {
        try checkElementwise("add", [a, b, out])
        try launchElementwise("add_f32", count: out.count, operands: 3, [
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
        try launchElementwise("scale_f32", count: out.count, operands: 2, [
            .buffer(x.buffer), .int32(Int32(x.offset)),
            .buffer(out.buffer), .int32(Int32(out.offset)), .int32(Int32(out.count)), .float(alpha),
        ])
    }

    /// destination = source (same shape; the ranges must not overlap).
    public func copy(_ source: Tensor, into destination: Tensor) throws {
        try checkElementwise("copy", [source, destination])
        try launchElementwise("copy_f32", count: destination.count, operands: 2, [
            .buffer(source.buffer), .int32(Int32(source.offset)),
            .buffer(destination.buffer), .int32(Int32(destination.offset)), .int32(Int32(destination.count)),
        ])
    }

    /// destination = source converted between fp32 and a 16-bit storage type (same shape; one
    /// side fp32): widening is exact, narrowing rounds to nearest even, and a NaN stays a NaN.
    public func convert(_ source: Tensor, into destination: Tensor) throws {
        guard source.shape == destination.shape else {
            throw TensorError.shapeMismatch(operation: "convert", details: "\(source.shape) into \(destination.shape)")
        }
        let name: String
        switch (source.dtype, destination.dtype) {
        case (.float32, .float16): name = "narrow_f32_to_f16"
        case (.float16, .float32): name = "widen_f16_to_f32"
        case (.float32, .bfloat16): name = "narrow_f32_to_bf16"
        case (.bfloat16, .float32): name = "widen_bf16_to_f32"
        default:
            throw TensorError.shapeMismatch(operation: "convert",
                                            details: "\(source.dtype) into \(destination.dtype): one side must be float32, the other float16 or bfloat16")
        }
        try checkOperands("convert", [source], dtype: source.dtype)
        try checkOperands("convert", [destination], dtype: destination.dtype)
        guard source.count > 0 else { return }
        try launch(name, in: "elementwise", global: [(source.count + 7) / 8], work: KernelWork(bytes: 6 * Double(source.count)),
                   source, destination, source.count)
    }

    /// destination (+)= alpha * source for two strided matrices of one size.
    public func copy(_ source: StridedMatrix, into destination: StridedMatrix, alpha: Float = 1, accumulate: Bool = false) throws {
        try checkOperands("copy2D", [source.tensor, destination.tensor])
        guard source.rows == destination.rows, source.columns == destination.columns else {
            throw TensorError.shapeMismatch(operation: "copy2D", details: "\(source.rows)x\(source.columns) into \(destination.rows)x\(destination.columns)")
        }
        try launch("copy_2d", in: "elementwise", global: [source.columns, source.rows],
                   work: .floats((accumulate ? 3 : 2) * source.rows * source.columns),
                   source.tensor, source.rowStride, destination.tensor, destination.rowStride,
                   source.rows, source.columns, alpha, accumulate)
    }

    private func checkElementwise(_ operation: String, _ tensors: [Tensor]) throws {
        try checkOperands(operation, tensors)
        let shapes = tensors.map(\.shape)
        guard shapes.allSatisfy({ $0 == shapes[0] }) else {
            throw TensorError.shapeMismatch(operation: operation,
                                            details: "all operands must have one shape, got \(shapes.map { "\($0)" }.joined(separator: ", "))")
        }
    }

    /// `operands`: tensors of `count` values read or written.
    private func launchElementwise(_ kernelName: String, count: Int, operands: Int, _ arguments: [KernelArgument]) throws {
        let kernel = try kernels.kernel(kernelName, in: "elementwise")
        try kernel.setArguments(arguments)
        try enqueue(kernel, global: [count], work: .floats(operands * count))
    }
}

extension Engine {
    /// The checks every launcher makes before it enqueues: the tensors belong to this engine,
    /// have the expected dtype, and fit the kernels' 32-bit indices.
    func checkOperands(_ operation: String, _ tensors: [Tensor], dtype: DType = .float32) throws {
        for tensor in tensors {
            guard tensor.engine === self else { throw TensorError.foreignEngine(operation: operation) }
            try tensor.expect(dtype, operation)
            guard tensor.offset + tensor.count <= Int(Int32.max) else {
                throw TensorError.tooLarge(operation: operation, elements: tensor.offset + tensor.count)
            }
        }
    }

    func expectShape(_ operation: String, _ name: String, _ tensor: Tensor, _ shape: [Int]) throws {
        guard tensor.shape == shape else {
            throw TensorError.shapeMismatch(operation: operation, details: "\(name) must be \(shape), got \(tensor.shape)")
        }
    }

    func launch(_ kernelName: String, in program: String, options: String = "", global: [Int], local: [Int]? = nil,
                work: KernelWork = KernelWork(), _ arguments: any KernelArgumentsConvertible...) throws {
        let kernel = try kernels.kernel(kernelName, in: program, options: options)
        try kernel.setArguments(arguments.flatMap(\.kernelArguments))
        try enqueue(kernel, global: global, local: local, work: work)
    }
}

/// What a launcher may pass to `launch`: a tensor becomes its buffer and element offset (the
/// `(pointer, offset)` pair every kernel takes), Int a 32-bit int, Bool a 0/1 int.
protocol KernelArgumentsConvertible {
    var kernelArguments: [KernelArgument] { get }
}

extension Tensor: KernelArgumentsConvertible {
    var kernelArguments: [KernelArgument] { [.buffer(buffer), .int32(Int32(offset))] }
}

extension Int: KernelArgumentsConvertible {
    var kernelArguments: [KernelArgument] { [.int32(Int32(self))] }
}

extension Float: KernelArgumentsConvertible {
    var kernelArguments: [KernelArgument] { [.float(self)] }
}

extension Bool: KernelArgumentsConvertible {
    var kernelArguments: [KernelArgument] { [.int32(self ? 1 : 0)] }
}

extension KernelArgument: KernelArgumentsConvertible {
    var kernelArguments: [KernelArgument] { [self] }
}
