import Formats
import Tensors

/// A Vision Transformer on the device: the forward as a script of layers, the backward as
/// the same script in reverse. Activations for a batch size are allocated once and reused.
public final class ViTModel {
    public let engine: Engine
    public let config: ViTConfig
    public let method: FineTuningMethod
    public let parameters: ViTParameters

    private let embedding: EmbeddingLayer
    private let blocks: [BlockLayer]
    private let head: HeadLayer
    private var saved: Activations?

    /// `BaseFingerprint` of the backbone as loaded, recorded in the adapters this model saves.
    public var baseFingerprint: String?

    /// Which block intermediates the forward keeps and the backward reruns (ActivationMemory;
    /// default selective, exact); changing it drops the current activations.
    public var activationMemory: ActivationMemory = .selective {
        didSet { if activationMemory != oldValue { saved = nil } }
    }

    /// `fusedSerial: false` runs Serial LoRA through the unfused reference path (cross-checks).
    public init(engine: Engine, config: ViTConfig, method: FineTuningMethod, parameters: ViTParameters, fusedSerial: Bool = true) throws {
        try config.validate()
        try method.validate(width: config.width)
        self.engine = engine
        self.config = config
        self.method = method
        self.parameters = parameters
        embedding = EmbeddingLayer(config: config, weights: try EmbeddingParameters(parameters, architecture: config.architecture))
        blocks = try (0..<config.layers).map {
            BlockLayer(config: config, method: method, weights: try BlockParameters(parameters, block: $0, method: method), fusedSerial: fusedSerial)
        }
        head = HeadLayer(config: config, weights: try HeadParameters(parameters, architecture: config.architecture))
    }

    /// images [B, C, S, S] (normalised) -> logits [B, K]. The returned tensor is reused by the
    /// next forward of the same batch size. `keepForBackward: false` (evaluation, prediction)
    /// keeps nothing per block: all blocks share one set of intermediates and the residual
    /// stream alternates between two buffers, as for a linear probe; `backward` then refuses.
    public func forward(_ images: Tensor, keepForBackward: Bool = true) throws -> Tensor {
        let expected = [config.channels, config.imageSize, config.imageSize]
        guard images.shape.count == 4, Array(images.shape.dropFirst()) == expected else {
            throw TensorError.shapeMismatch(operation: "ViTModel.forward", details: "images must be [B, \(expected.map(String.init).joined(separator: ", "))], got \(images.shape)")
        }
        let batch = images.shape[0]
        if saved?.batch != batch || saved?.inference != !keepForBackward {
            saved = nil  // the old buffers go back to the pool first
            saved = try Activations(engine: engine, config: config, method: method, batch: batch, memory: activationMemory,
                                    inference: !keepForBackward)
        }
        guard let saved else { throw TensorError.shapeMismatch(operation: "ViTModel.forward", details: "no activations (a bug)") }
        try embedding.forward(engine, images: images, saved)
        for (index, block) in blocks.enumerated() {
            try block.forward(engine, input: saved.xs[index], output: saved.xs[index + 1], saved.blocks[index], batch: batch)
        }
        try head.forward(engine, saved)
        return saved.logits
    }

    /// Device bytes the last forward keeps for the backward (0 before any forward).
    public var savedActivationBytes: Int { saved?.bytes ?? 0 }

    /// The pooled (and projected) features [B, f] of the last forward: what the linear head sees.
    public var pooledFeatures: Tensor? { saved?.features }

    /// Accumulates the gradients of every trainable tensor for dLogits [B, K] of the last
    /// forward. Frozen weights get none; for a linear probe only the head is visited.
    public func backward(_ dLogits: Tensor) throws {
        guard let saved, dLogits.shape == [saved.batch, config.classes] else {
            throw TensorError.shapeMismatch(operation: "ViTModel.backward", details: "dLogits must match the last forward's logits")
        }
        guard !saved.inference || method == .probe else {
            throw TensorError.shapeMismatch(operation: "ViTModel.backward", details: "the last forward kept nothing for a backward (keepForBackward: false)")
        }
        guard let dx = try head.backward(engine, dLogits: dLogits, saved, needInputGradient: method != .probe) else { return }
        for (index, block) in blocks.enumerated().reversed() {
            try block.backward(engine, input: saved.xs[index], dx: dx, saved.blocks[index], batch: saved.batch)
        }
        try embedding.backward(engine, dTokens: dx, saved)
    }

    /// Mean softmax cross-entropy of the last logits and the gradient for `backward`.
    public func loss(labels: Tensor, smoothing: Float = 0) throws -> (loss: Tensor, dLogits: Tensor) {
        guard let saved else { throw TensorError.shapeMismatch(operation: "ViTModel.loss", details: "no forward yet") }
        let losses = try engine.empty([saved.batch])
        let dLogits = try engine.empty([saved.batch, config.classes])
        try engine.softmaxCrossEntropy(logits: saved.logits, labels: labels, smoothing: smoothing, losses: losses, dLogits: dLogits)
        return (try engine.sum(losses, scale: 1 / Float(saved.batch)), dLogits)
    }
}
