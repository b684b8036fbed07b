import Tensors

/// AdamW over a model's trainable slab in one launch per step: groups give biases, norms, cls
/// and positions no weight decay, and adapter B matrices `loraPlusRatio` times the learning
/// rate (LoRA+). With `maxGradientNorm`, gradients are clipped by their global L2 norm, the
/// factor computed and applied on the device.
public final class AdamW {
    public let parameters: ViTParameters
    public var settings: AdamWSettings
    public let maxGradientNorm: Float?
    public private(set) var step = 0
    public let firstMoment: Tensor
    public let secondMoment: Tensor
    let groups: ParameterGroups
    let unitScale: Tensor

    public init(parameters: ViTParameters, settings: AdamWSettings, loraPlusRatio: Float = 1, maxGradientNorm: Float? = nil) throws {
        let engine = parameters.engine
        self.parameters = parameters
        self.settings = settings
        self.maxGradientNorm = maxGradientNorm
        firstMoment = try engine.zeros([parameters.trainableCount])
        secondMoment = try engine.zeros([parameters.trainableCount])
        var rates = [Float](repeating: 1, count: ParameterGroup.allCases.count)
        var decay = [Float](repeating: 1, count: ParameterGroup.allCases.count)
        rates[Int(ParameterGroup.upProjection.rawValue)] = loraPlusRatio
        decay[Int(ParameterGroup.noDecay.rawValue)] = 0
        groups = ParameterGroups(ids: parameters.groupIDs, learningRateScale: try engine.tensor(rates, shape: [rates.count]),
                                 decay: try engine.tensor(decay, shape: [decay.count]))
        unitScale = try engine.tensor([1], shape: [1])
    }

    /// One update from the accumulated gradients; `learningRate` overrides the settings' (for
    /// schedules).
    public func update(learningRate: Float? = nil) throws {
        let engine = parameters.engine
        step += 1
        var current = settings
        if let learningRate { current.learningRate = learningRate }
        let scale = try maxGradientNorm.map {
            try engine.clipFactor(sumOfSquares: try engine.sumOfSquares(parameters.gradientSlab), maxNorm: $0)
        } ?? unitScale
        try engine.adamWStep(parameters: parameters.slab, gradients: parameters.gradientSlab, firstMoment: firstMoment,
                             secondMoment: secondMoment, groups: groups, gradientScale: scale, settings: current, step: step)
    }
}
