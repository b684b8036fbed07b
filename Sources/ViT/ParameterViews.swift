import Formats
import Tensors

// Typed views of ViTParameters, built once per model from the table, so that the forward and
// backward address tensors as fields (a typo fails to compile) and find gradients without
// string lookups or force unwraps. A gradient is nil exactly when the tensor is frozen.

/// A tensor and its gradient view (nil when frozen).
struct ParameterView {
    let value: Tensor
    let gradient: Tensor?

    init(_ parameters: ViTParameters, _ name: String) throws {
        value = try parameters.tensor(name)
        gradient = parameters.gradient(name)
    }
}

/// weight [out, in] and bias [out] (a LayerNorm's scale and shift too).
struct LinearView {
    let weight: ParameterView
    let bias: ParameterView

    init(_ parameters: ViTParameters, _ stem: String) throws {
        weight = try ParameterView(parameters, stem + ".weight")
        bias = try ParameterView(parameters, stem + ".bias")
    }
}

/// A low-rank pair A [r, d], B [d, r]; both always train.
struct LowRankView {
    let a: Tensor, b: Tensor
    let dA: Tensor, dB: Tensor

    init(_ parameters: ViTParameters, _ stem: String) throws {
        (a, b) = (try parameters.tensor(stem + ".A"), try parameters.tensor(stem + ".B"))
        guard let dA = parameters.gradient(stem + ".A"), let dB = parameters.gradient(stem + ".B") else {
            throw ConfigError("adapter '\(stem)' has no gradient views (a bug: adapters always train)")
        }
        (self.dA, self.dB) = (dA, dB)
    }
}

/// One block's tensors (blocks.i.*).
struct BlockParameters {
    let norm1: LinearView, qkv: LinearView, proj: LinearView, norm2: LinearView, fc1: LinearView, fc2: LinearView
    /// Serial LoRA's shared pair.
    let serial: LowRankView?
    /// LoRA's pair per target, in the method's order.
    let lora: [(target: LoRATarget, pair: LowRankView)]
    /// LoRA's pair on the output projection.
    var loraO: LowRankView? { lora.first { $0.target == .o }?.pair }

    init(_ parameters: ViTParameters, block index: Int, method: FineTuningMethod) throws {
        let p = "blocks.\(index)."
        norm1 = try LinearView(parameters, p + "norm1")
        qkv = try LinearView(parameters, p + "qkv")
        proj = try LinearView(parameters, p + "proj")
        norm2 = try LinearView(parameters, p + "norm2")
        fc1 = try LinearView(parameters, p + "fc1")
        fc2 = try LinearView(parameters, p + "fc2")
        switch method {
        case .serial:
            serial = try LowRankView(parameters, p + "serial")
            lora = []
        case .lora(_, _, let targets):
            serial = nil
            lora = try targets.map { ($0, try LowRankView(parameters, p + "lora.\($0.rawValue)")) }
        case .full, .probe:
            (serial, lora) = (nil, [])
        }
    }
}

/// The patch embedding, cls, positions and CLIP's token LayerNorm.
struct EmbeddingParameters {
    let patchWeight: ParameterView
    /// nil when the architecture has no patch bias (CLIP).
    let patchBias: ParameterView?
    let cls: ParameterView, pos: ParameterView
    let norm: LinearView?

    init(_ parameters: ViTParameters, architecture: Architecture) throws {
        patchWeight = try ParameterView(parameters, "patch.weight")
        patchBias = architecture.patchBias ? try ParameterView(parameters, "patch.bias") : nil
        cls = try ParameterView(parameters, "cls")
        pos = try ParameterView(parameters, "pos")
        norm = architecture.embeddingNorm ? try LinearView(parameters, "embedding_norm") : nil
    }
}

/// The final LayerNorm, CLIP's projection and the classifier (which always trains).
struct HeadParameters {
    let norm: LinearView
    let projection: ParameterView?
    let weight: Tensor, bias: Tensor
    let dWeight: Tensor, dBias: Tensor

    init(_ parameters: ViTParameters, architecture: Architecture) throws {
        norm = try LinearView(parameters, "norm")
        projection = architecture.projection != nil ? try ParameterView(parameters, "projection.weight") : nil
        (weight, bias) = (try parameters.tensor("head.weight"), try parameters.tensor("head.bias"))
        guard let dWeight = parameters.gradient("head.weight"), let dBias = parameters.gradient("head.bias") else {
            throw ConfigError("the head has no gradient views (a bug: the head always trains)")
        }
        (self.dWeight, self.dBias) = (dWeight, dBias)
    }
}
