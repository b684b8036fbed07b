import Formats
import Tensors
import ViT

/// AdamW over a model's trainable slab in one launch per step: groups give biases, norms, cls
/// and positions no weight decay, and adapter B matrices `loraPlusRatio` times the learning
/// rate (LoRA+). With `maxGradientNorm`, gradients are clipped by their global L2 norm, the
/// factor computed and applied on the device.
public final class AdamW {
    public let parameters: ViTParameters
    public var settings: AdamWSettings
    public let maxGradientNorm: Float?
    /// Updates taken so far (the bias-correction step of the next update is step + 1).
    public internal(set) var step = 0
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
        groups = try makeGroups(parameters, loraPlusRatio: loraPlusRatio)
        unitScale = try engine.tensor([1], shape: [1])
    }

    /// One update from the accumulated gradients; `learningRate` overrides the settings' (for
    /// schedules).
    public func update(learningRate: Float? = nil) throws {
        step += 1
        var current = settings
        if let learningRate { current.learningRate = learningRate }
        let scale = try gradientScale(parameters, maxGradientNorm, unitScale)
        try parameters.engine.adamWStep(parameters: parameters.slab, gradients: parameters.gradientSlab, firstMoment: firstMoment,
                             secondMoment: secondMoment, groups: groups, gradientScale: scale, settings: current, step: step)
    }
}

/// The optimizer interface the trainer uses: an update, the state tensors a checkpoint holds,
/// and the step count to restore.
public protocol SlabOptimizer: AnyObject {
    var step: Int { get }
    func update(learningRate: Float?) throws
    /// Named state slabs ([P] each) for checkpoints.
    var stateTensors: [(name: String, tensor: Tensor)] { get }
    func restore(step: Int)
}

extension AdamW: SlabOptimizer {
    public var stateTensors: [(name: String, tensor: Tensor)] { [("adamw.m", firstMoment), ("adamw.v", secondMoment)] }
    public func restore(step: Int) { self.step = step }
}

/// SGD with momentum (PyTorch semantics: dampening 0, coupled weight decay), same groups,
/// LoRA+ ratio and clipping as AdamW.
public final class SGD: SlabOptimizer {
    public let parameters: ViTParameters
    public let learningRate: Float
    public let momentumFactor: Float
    public let weightDecay: Float
    public let maxGradientNorm: Float?
    public private(set) var step = 0
    public let momentum: Tensor
    let groups: ParameterGroups
    let unitScale: Tensor

    public init(parameters: ViTParameters, learningRate: Float, momentum: Float = 0.9, weightDecay: Float = 0, loraPlusRatio: Float = 1,
                maxGradientNorm: Float? = nil) throws {
        let engine = parameters.engine
        (self.parameters, self.learningRate, self.momentumFactor, self.weightDecay) = (parameters, learningRate, momentum, weightDecay)
        self.maxGradientNorm = maxGradientNorm
        self.momentum = try engine.zeros([parameters.trainableCount])
        groups = try makeGroups(parameters, loraPlusRatio: loraPlusRatio)
        unitScale = try engine.tensor([1], shape: [1])
    }

    public func update(learningRate: Float? = nil) throws {
        step += 1
        let scale = try gradientScale(parameters, maxGradientNorm, unitScale)
        try parameters.engine.sgdStep(parameters: parameters.slab, gradients: parameters.gradientSlab, momentum: momentum, groups: groups,
                                      gradientScale: scale, learningRate: learningRate ?? self.learningRate, momentumFactor: momentumFactor,
                                      weightDecay: weightDecay)
    }

    public var stateTensors: [(name: String, tensor: Tensor)] { [("sgd.momentum", momentum)] }
    public func restore(step: Int) { self.step = step }
}

func makeGroups(_ parameters: ViTParameters, loraPlusRatio: Float) throws -> ParameterGroups {
    let engine = parameters.engine
    var rates = [Float](repeating: 1, count: ParameterGroup.allCases.count)
    var decay = [Float](repeating: 1, count: ParameterGroup.allCases.count)
    rates[Int(ParameterGroup.upProjection.rawValue)] = loraPlusRatio
    decay[Int(ParameterGroup.noDecay.rawValue)] = 0
    return ParameterGroups(ids: parameters.groupIDs, learningRateScale: try engine.tensor(rates, shape: [rates.count]),
                           decay: try engine.tensor(decay, shape: [decay.count]))
}

/// The clipping factor on the device, or 1.
func gradientScale(_ parameters: ViTParameters, _ maxNorm: Float?, _ unit: Tensor) throws -> Tensor {
    guard let maxNorm else { return unit }
    let engine = parameters.engine
    return try engine.clipFactor(sumOfSquares: try engine.sumOfSquares(parameters.gradientSlab), maxNorm: maxNorm)
}
