import CLRuntime
import Foundation

// Launchers for Kernels/optimizer.cl. params, grads, m, v, momentum: [n]; groups.ids [n] uint8;
// groups.learningRateScale, groups.decay: [G] (G <= 256); gradScale: [1].

/// Which optimizer group each parameter of a flat slab belongs to.
public struct ParameterGroups {
    /// [n] uint8: the group of each parameter.
    public var ids: Tensor
    /// [G]: multiplies the learning rate (LoRA+ gives B a larger one).
    public var learningRateScale: Tensor
    /// [G]: 1 where weight decay applies, 0 where not (biases, norms).
    public var decay: Tensor

    public init(ids: Tensor, learningRateScale: Tensor, decay: Tensor) {
        self.ids = ids
        self.learningRateScale = learningRateScale
        self.decay = decay
    }
}

public struct AdamWSettings: Sendable {
    public var learningRate: Float
    public var beta1: Float = 0.9
    public var beta2: Float = 0.999
    public var epsilon: Float = 1e-8
    public var weightDecay: Float = 0.01

    public init(learningRate: Float, beta1: Float = 0.9, beta2: Float = 0.999, epsilon: Float = 1e-8, weightDecay: Float = 0.01) {
        (self.learningRate, self.beta1, self.beta2, self.epsilon, self.weightDecay) = (learningRate, beta1, beta2, epsilon, weightDecay)
    }
}

extension Engine {
    /// One AdamW step (1-based `step` for bias correction) over the whole slab, one launch.
    public func adamWStep(parameters: Tensor, gradients: Tensor, firstMoment m: Tensor, secondMoment v: Tensor,
                          groups: ParameterGroups, gradientScale: Tensor, settings: AdamWSettings, step: Int) throws {
        let operation = "adamWStep"
        try checkSlab(operation, parameters, [gradients, m, v], groups, gradientScale)
        guard step >= 1 else { throw TensorError.shapeMismatch(operation: operation, details: "step must be >= 1, got \(step)") }
        let bias1 = 1 - Float(Double(settings.beta1).power(step))
        let bias2 = 1 - Float(Double(settings.beta2).power(step))
        try launch("adamw_step", in: "optimizer", global: [parameters.count], work: .floats(7 * parameters.count),
                   KernelArgument.buffer(parameters.buffer), KernelArgument.buffer(gradients.buffer),
                   KernelArgument.buffer(m.buffer), KernelArgument.buffer(v.buffer),
                   KernelArgument.buffer(groups.ids.buffer), KernelArgument.buffer(groups.learningRateScale.buffer),
                   KernelArgument.buffer(groups.decay.buffer), KernelArgument.buffer(gradientScale.buffer),
                   parameters.count, settings.learningRate, settings.beta1, settings.beta2, settings.epsilon,
                   settings.weightDecay, bias1, bias2)
    }

    /// One SGD-with-momentum step (PyTorch semantics: dampening 0, coupled weight decay).
    public func sgdStep(parameters: Tensor, gradients: Tensor, momentum: Tensor, groups: ParameterGroups,
                        gradientScale: Tensor, learningRate: Float, momentumFactor: Float, weightDecay: Float) throws {
        try checkSlab("sgdStep", parameters, [gradients, momentum], groups, gradientScale)
        try launch("sgd_step", in: "optimizer", global: [parameters.count], work: .floats(5 * parameters.count),
                   KernelArgument.buffer(parameters.buffer), KernelArgument.buffer(gradients.buffer),
                   KernelArgument.buffer(momentum.buffer), KernelArgument.buffer(groups.ids.buffer),
                   KernelArgument.buffer(groups.learningRateScale.buffer), KernelArgument.buffer(groups.decay.buffer),
                   KernelArgument.buffer(gradientScale.buffer), parameters.count, learningRate, momentumFactor, weightDecay)
    }

    /// The clipping factor min(1, maxNorm / (||g|| + 1e-6)) as a [1] tensor, from the squared
    /// norm (see `sumOfSquares`), computed on the device.
    public func clipFactor(sumOfSquares: Tensor, maxNorm: Float) throws -> Tensor {
        try checkOperands("clipFactor", [sumOfSquares])
        try expectShape("clipFactor", "sumOfSquares", sumOfSquares, [1])
        let factor = try empty([1])
        try launch("clip_factor", in: "optimizer", global: [1],
                   KernelArgument.buffer(sumOfSquares.buffer), KernelArgument.buffer(factor.buffer), maxNorm)
        return factor
    }

    /// The slab kernels index whole buffers, so every operand must be a whole, unviewed tensor.
    private func checkSlab(_ operation: String, _ parameters: Tensor, _ state: [Tensor], _ groups: ParameterGroups,
                           _ gradientScale: Tensor) throws {
        try checkOperands(operation, [parameters] + state + [groups.learningRateScale, groups.decay, gradientScale])
        try checkOperands(operation, [groups.ids], dtype: .uint8)
        let n = parameters.count
        for (name, tensor) in [("gradients/state", state), ("group ids", [groups.ids])].flatMap({ item in item.1.map { (item.0, $0) } }) {
            guard tensor.count == n else {
                throw TensorError.shapeMismatch(operation: operation, details: "\(name) has \(tensor.count) elements, the slab \(n)")
            }
        }
        let groupCount = groups.learningRateScale.count
        guard groupCount <= 256, groups.decay.count == groupCount else {
            throw TensorError.shapeMismatch(operation: operation, details: "group tables must have one equal length <= 256, got \(groupCount) and \(groups.decay.count)")
        }
        try expectShape(operation, "gradientScale", gradientScale, [1])
        for tensor in [parameters] + state + [groups.ids, groups.learningRateScale, groups.decay, gradientScale] where tensor.offset != 0 {
            throw TensorError.shapeMismatch(operation: operation, details: "optimizer operands must be whole tensors, not views (offset \(tensor.offset))")
        }
    }
}

extension Double {
    fileprivate func power(_ exponent: Int) -> Double { Foundation.pow(self, Double(exponent)) }
}
