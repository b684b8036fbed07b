import CLRuntime

// Launchers for Kernels/activation.cl (exact GELU), elementwise over equal shapes; each
// work-item handles 16 values.

extension Engine {
    public func geluForward(_ x: Tensor, into y: Tensor) throws {
        try checkOperands("geluForward", [x, y])
        try expectShape("geluForward", "y", y, x.shape)
        try launch("gelu_forward", in: "activation", global: [(x.count + 15) / 16], work: .floats(2 * x.count),
            x, y, x.count)
    }

    /// dx = dy * gelu'(x), x the pre-activation.
    public func geluBackward(_ dy: Tensor, preActivation x: Tensor, into dx: Tensor) throws {
        try checkOperands("geluBackward", [x, dy, dx])
        try expectShape("geluBackward", "dy", dy, x.shape)
        try expectShape("geluBackward", "dx", dx, x.shape)
        try launch("gelu_backward", in: "activation", global: [(x.count + 15) / 16], work: .floats(3 * x.count),
            x, dy, dx, x.count)
    }
}
