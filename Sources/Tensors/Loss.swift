import CLRuntime

// Launcher for Kernels/loss.cl. logits, dLogits [B, C]; labels [B] int32; losses [B].

extension Engine {
    /// Per-example losses and, when `dLogits` is given, the gradient of the MEAN loss
    /// (softmax - target) / B. `smoothing` in [0, 1) is the label-smoothing epsilon.
    public func softmaxCrossEntropy(logits: Tensor, labels: Tensor, smoothing: Float = 0,
                                    losses: Tensor, dLogits: Tensor? = nil) throws {
        let operation = "softmaxCrossEntropy"
        guard logits.shape.count == 2 else {
            throw TensorError.shapeMismatch(operation: operation, details: "logits must be [B, C], got \(logits.shape)")
        }
        guard (0..<1).contains(smoothing) else {
            throw TensorError.shapeMismatch(operation: operation, details: "label smoothing must be in [0, 1), got \(smoothing)")
        }
        let (batch, classes) = (logits.shape[0], logits.shape[1])
        try checkOperands(operation, [logits, losses] + (dLogits.map { [$0] } ?? []))
        try checkOperands(operation, [labels], dtype: .int32)
        try expectShape(operation, "labels", labels, [batch])
        try expectShape(operation, "losses", losses, [batch])
        if let dLogits { try expectShape(operation, "dLogits", dLogits, logits.shape) }
        let gradient = dLogits ?? losses
        if case .workGroup(let size) = reductionPath {
            try launch("softmax_cross_entropy_group", in: "loss", options: "-DLG=\(size)", global: [size, batch], local: [size, 1],
                logits, labels, losses, gradient, batch, classes, smoothing, 1 / Float(batch), dLogits != nil)
            return
        }
        try launch("softmax_cross_entropy", in: "loss", global: [batch],
            logits, labels, losses, gradient, batch, classes, smoothing, 1 / Float(batch), dLogits != nil)
    }
}
