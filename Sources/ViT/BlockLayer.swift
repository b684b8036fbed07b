import Formats
import Tensors

// One pre-norm transformer block, forward and backward side by side.
// Shapes: x [T, d] (T = B * N), qkv [T, 3d], attention output a [T, d], h [T, m]; adapters
// A [r, d], B [d, r], s = alpha / r.
//
// Forward:
//   u1 = LN1(x)
//   serial:  t = u1 A^T; C = W_qkv B; qkv = [u1 | s t] [W_qkv | C]^T + b_qkv   (one GEMM, K = d + r)
//   lora:    qkv = u1 W_qkv^T + b_qkv, then per target x in q/k/v: qkv[:, x] += s (u1 A_x^T) B_x^T
//   a = attention(qkv)
//   xMid = x + a W_o^T + b_o   (+ s (a A_o^T) B_o^T for LoRA on o)
//   u2 = LN2(xMid); h = act(u2 W1^T + b1); out = xMid + h W2^T + b2   (act: GELU, CLIP's quick GELU)
// Backward (dx: gradient of the block output, updated in place to the gradient of its input):
//   the same in reverse, one helper per sub-layer mirroring the forward's; frozen weights get
//   no weight gradients; every gradient accumulates. Under the recompute plan (Activations.swift)
//   it first rebuilds u1, qkv, xMid, u2 and the fc1 pre-activation from the saved input and
//   attention output; under selective (the default) it reruns LN1 and the proj GEMM; under
//   keep-bf16 it widens the block's bf16 copies and reruns LN1.
struct BlockLayer {
    let config: ViTConfig
    let method: FineTuningMethod
    let weights: BlockParameters
    /// Serial LoRA through the fused two-operand GEMMs (default), or the unfused reference
    /// path that materialises z = u + s t B^T [T, d] and dz, kept for cross-checking.
    let fusedSerial: Bool

    private var activation: Activation {
        switch config.architecture.activation {
        case .gelu: .gelu
        case .quickGELU: .quickGELU
        }
    }

    private func heads(_ qkv: Tensor, _ part: Int) throws -> HeadLayout {
        let d = config.width
        return HeadLayout(try qkv.view(offset: part * d, shape: [qkv.count - part * d]), rowStride: 3 * d)
    }

    private func attentionShape(_ batch: Int) -> AttentionShape {
        AttentionShape(batch: batch, tokens: config.tokens, heads: config.heads, headDimension: config.headDimension)
    }

    /// What a block needs of its saved tensors that only some methods have.
    private func required(_ tensor: Tensor?, _ what: String) throws -> Tensor {
        guard let tensor else { throw TensorError.shapeMismatch(operation: "BlockLayer", details: "no \(what) saved for \(method.name) (a bug)") }
        return tensor
    }

    func forward(_ engine: Engine, input x: Tensor, output: Tensor, _ saved: BlockActivations, batch: Int) throws {
        try projectQKV(engine, input: x, saved)
        try engine.attentionForward(attentionShape(batch), q: try heads(saved.qkv, 0), k: try heads(saved.qkv, 1), v: try heads(saved.qkv, 2),
                                    output: saved.attention, lse: saved.lse, workspace: saved.workspaceInH)
        try projectOutput(engine, input: x, saved)
        try normalizeMid(engine, saved)
        // When the backward recomputes the pre-activation, hPre shares h's buffer: not written here.
        try engine.withProfileScope(ProfileScope.fc1) {
            try engine.gemm(saved.u2, weights.fc1.weight.value, into: saved.h, transposeB: true, bias: weights.fc1.bias.value,
                            activation: activation, preActivation: saved.plan == .recompute ? nil : saved.hPre)
        }
        try engine.withProfileScope(ProfileScope.fc2) {
            try engine.gemm(saved.h, weights.fc2.weight.value, into: output, transposeB: true, beta: 1, addend: saved.xMid,
                            bias: weights.fc2.bias.value)
        }
        try saved.storeSixteenBit(engine, input: x)
    }

    private func normalizeInput(_ engine: Engine, input x: Tensor, _ saved: BlockActivations) throws {
        try engine.layerNormForward(x, gamma: weights.norm1.weight.value, beta: weights.norm1.bias.value,
                                    eps: config.layerNormEpsilon, into: saved.u1, mean: saved.mean1, rstd: saved.rstd1)
    }

    private func normalizeMid(_ engine: Engine, _ saved: BlockActivations) throws {
        try engine.layerNormForward(saved.xMid, gamma: weights.norm2.weight.value, beta: weights.norm2.bias.value,
                                    eps: config.layerNormEpsilon, into: saved.u2, mean: saved.mean2, rstd: saved.rstd2)
    }

    /// u1 = LN1(x) and qkv = adapted projection of u1 (+ the method's low-rank intermediates).
    /// The backward calls it again (`rebuilding`) to rebuild u1 and qkv: the same kernels on the
    /// same inputs give the forward's values bit for bit; the low-rank intermediates (t, C) are
    /// kept per block, so those are not recomputed.
    private func projectQKV(_ engine: Engine, input x: Tensor, _ saved: BlockActivations, rebuilding: Bool = false) throws {
        let d = config.width
        try normalizeInput(engine, input: x, saved)
        let wqkv = weights.qkv.weight.value, bqkv = weights.qkv.bias.value
        if let serial = weights.serial {
            let t = try required(saved.serialT, "t = u A^T")
            guard fusedSerial else {
                try engine.gemm(saved.u1, serial.a, into: t, transposeB: true)
                let z = try engine.empty(saved.u1.shape)
                try engine.copy(saved.u1, into: z)
                try engine.gemm(t, serial.b, into: z, transposeB: true, alpha: method.scale, beta: 1)
                try engine.gemm(z, wqkv, into: saved.qkv, transposeB: true, bias: bqkv)
                return
            }
            let c = try required(saved.serialC, "C = W B")
            if !rebuilding {
                try engine.withProfileScope(ProfileScope.adapter) {
                    try engine.gemm(saved.u1, serial.a, into: t, transposeB: true)
                    try engine.gemm(wqkv, serial.b, into: c)
                }
            }
            try engine.withProfileScope(rebuilding ? nil : ProfileScope.fusedQKV) {
                try engine.gemm(sum: [GemmTerm(saved.u1, wqkv, transposeB: true), GemmTerm(t, c, transposeB: true, scale: method.scale)],
                                into: saved.qkv, bias: bqkv, workspace: saved.workspaceInH)
            }
            return
        }
        try engine.gemm(saved.u1, wqkv, into: saved.qkv, transposeB: true, bias: bqkv, workspace: saved.workspaceInH)
        try engine.withProfileScope(ProfileScope.adapter) {
            for (target, pair) in weights.lora {
                guard let part = target.qkvIndex else { continue }
                let t = try required(saved.loraT[target], "t for LoRA \(target.rawValue)")
                if !rebuilding { try engine.gemm(saved.u1, pair.a, into: t, transposeB: true) }
                try engine.gemm(sum: [GemmTerm(t, pair.b, transposeB: true)],
                                into: .strided(try .columns(part * d, d, of: saved.qkv)), alpha: method.scale, beta: 1)
            }
        }
    }

    /// xMid = x + a W_o^T + b_o (+ the LoRA o term); rerun by the backward like projectQKV.
    private func projectOutput(_ engine: Engine, input x: Tensor, _ saved: BlockActivations, rebuilding: Bool = false) throws {
        try engine.withProfileScope(rebuilding ? nil : ProfileScope.proj) {
            try engine.gemm(saved.attention, weights.proj.weight.value, into: saved.xMid, transposeB: true, beta: 1, addend: x,
                            bias: weights.proj.bias.value, workspace: saved.workspaceInH)
        }
        if let pair = weights.loraO {
            let t = try required(saved.loraT[.o], "t for LoRA o")
            try engine.withProfileScope(ProfileScope.adapter) {
                if !rebuilding { try engine.gemm(saved.attention, pair.a, into: t, transposeB: true) }
                try engine.gemm(t, pair.b, into: saved.xMid, transposeB: true, alpha: method.scale, beta: 1)
            }
        }
    }

    /// dW += dY^T X and db += column sums of dY, when the layer trains.
    private func linearWeightGradients(_ engine: Engine, _ layer: LinearView, dY: Tensor, x: Tensor) throws {
        guard let dWeight = layer.weight.gradient, let dBias = layer.bias.gradient else { return }
        try engine.gemm(dY, x, into: dWeight, transposeA: true, beta: 1)
        try engine.columnSums(dY, into: dBias, accumulate: true)
    }

    /// dx += LN backward of du (x the LayerNorm's input), and the LayerNorm's own gradients.
    private func layerNormBackward(_ engine: Engine, _ norm: LinearView, du: Tensor, x: Tensor, mean: Tensor, rstd: Tensor, dx: Tensor) throws {
        try engine.layerNormBackward(du, x: x, gamma: norm.weight.value, mean: mean, rstd: rstd, dx: dx, accumulate: true,
                                     dGamma: norm.weight.gradient, dBeta: norm.bias.gradient, accumulateParameters: true)
    }

    func backward(_ engine: Engine, input stream: Tensor, dx: Tensor, _ saved: BlockActivations, batch: Int) throws {
        var x = stream
        switch saved.plan {
        case .recompute:
            // Everything but the block input, the attention output and lse lives in scratch shared
            // by all blocks: rebuild u1, qkv, xMid, u2 and the fc1 pre-activation with the
            // forward's own kernels (bit-identical values).
            try engine.withProfileScope(ProfileScope.recompute) {
                try projectQKV(engine, input: x, saved, rebuilding: true)
                try projectOutput(engine, input: x, saved, rebuilding: true)
                try normalizeMid(engine, saved)
                try engine.gemm(saved.u2, weights.fc1.weight.value, into: saved.hPre, transposeB: true, bias: weights.fc1.bias.value)
            }
        case .keepBF16:
            // qkv, the attention output, xMid and the pre-activation from the block's bf16 copies;
            // u1 (read by the adapters' gradients) from LN1 again. u2 is read by no backward here.
            x = try saved.loadSixteenBit(engine) ?? stream
            try normalizeInput(engine, input: x, saved)
        case .selective:
            // qkv and the pre-activation are the block's own; u1 (the adapters' gradients read
            // it) and xMid (LN2's backward reads it) are rebuilt, proj with its LoRA o term.
            try engine.withProfileScope(ProfileScope.recompute) {
                try normalizeInput(engine, input: x, saved)
                try projectOutput(engine, input: x, saved, rebuilding: true)
            }
        case .keep:
            break
        }
        try mlpBackward(engine, dx: dx, saved)
        let dAttention = try attentionOutputBackward(engine, dx: dx, saved)
        // dh and LN2's input gradient are spent by now: their scratch takes the temporaries.
        // No backward reads q, k and v after this: their gradients are written over them.
        let workspace = saved.backwardScratch?.attentionWorkspace
        let (q, k, v) = (try heads(saved.qkv, 0), try heads(saved.qkv, 1), try heads(saved.qkv, 2))
        try engine.attentionBackward(attentionShape(batch), q: q, k: k, v: v, output: saved.attention, lse: saved.lse, dOutput: dAttention,
                                     dq: q, dk: k, dv: v, workspace: workspace)
        try qkvBackward(engine, input: x, dqkv: saved.qkv, dx: dx, saved)
    }

    /// out = xMid + act(u2 W1^T + b1) W2^T + b2: dx (the gradient of out) becomes that of xMid.
    /// With recompute, h's buffer holds the pre-activation by now; only full fine-tuning (which
    /// keeps h) trains fc2.
    private func mlpBackward(_ engine: Engine, dx: Tensor, _ saved: BlockActivations) throws {
        let rows = dx.shape[0]
        guard saved.plan == .keep || weights.fc2.weight.gradient == nil else {
            throw TensorError.shapeMismatch(operation: "BlockLayer.backward", details: "fc2 trains but h was not kept (a bug)")
        }
        try linearWeightGradients(engine, weights.fc2, dY: dx, x: saved.h)
        let dh = try saved.backwardScratch?.mlp ?? engine.empty([rows, config.mlpWidth])  // (dx W2) * act'(hPre)
        try engine.withProfileScope(ProfileScope.fc2Input) {
            try engine.gemm(dx, weights.fc2.weight.value, into: dh, times: ActivationDerivative(activation, at: saved.hPre))
        }
        // u2 is rebuilt only by the recompute plan; keep-bf16 and selective leave stale scratch
        // there (only full fine-tuning trains fc1, and it always keeps).
        guard saved.plan == .keep || saved.plan == .recompute || weights.fc1.weight.gradient == nil else {
            throw TensorError.shapeMismatch(operation: "BlockLayer.backward", details: "fc1 trains but u2 was not kept (a bug)")
        }
        try linearWeightGradients(engine, weights.fc1, dY: dh, x: saved.u2)
        let du = try saved.backwardScratch?.narrow ?? engine.empty([rows, config.width])
        try engine.withProfileScope(ProfileScope.fc1Input) { try engine.gemm(dh, weights.fc1.weight.value, into: du) }
        try layerNormBackward(engine, weights.norm2, du: du, x: saved.xMid, mean: saved.mean2, rstd: saved.rstd2, dx: dx)
    }

    /// xMid = x + a W_o^T + b_o (+ s (a A_o^T) B_o^T): the gradient of a; dx (of xMid) also
    /// flows to x unchanged.
    private func attentionOutputBackward(_ engine: Engine, dx: Tensor, _ saved: BlockActivations) throws -> Tensor {
        let s = method.scale
        try linearWeightGradients(engine, weights.proj, dY: dx, x: saved.attention)
        let dAttention = try saved.backwardScratch?.mid ?? engine.empty([dx.shape[0], config.width])
        var terms = [GemmTerm(dx, weights.proj.weight.value)]
        if let pair = weights.loraO {
            let t = try required(saved.loraT[.o], "t for LoRA o")
            let g = try engine.empty([dx.shape[0], pair.a.shape[0]])
            try engine.withProfileScope(ProfileScope.adapter) {
                try engine.gemm(dx, pair.b, into: g)                                                 // g = dx B      [T, r]
                try engine.gemm(dx, t, into: pair.dB, transposeA: true, alpha: s, beta: 1)           // dB += s dx^T t
                try engine.gemm(g, saved.attention, into: pair.dA, transposeA: true, alpha: s, beta: 1) // dA += s g^T a
            }
            terms.append(GemmTerm(g, pair.a, scale: s))                                              // da += s g A
        }
        try engine.withProfileScope(ProfileScope.projInput) { try engine.gemm(sum: terms, into: dAttention, workspace: saved.workspaceInH) }
        return dAttention
    }

    /// qkv = adapted projection of u1 = LN1(x): du1 = dqkv W_qkv (+ the adapters' terms, one
    /// reduction), the adapters' gradients, then LN1's backward into dx.
    private func qkvBackward(_ engine: Engine, input x: Tensor, dqkv: Tensor, dx: Tensor, _ saved: BlockActivations) throws {
        let d = config.width, rows = x.shape[0], s = method.scale
        let wqkv = weights.qkv.weight.value
        let du = try saved.backwardScratch?.narrow ?? engine.empty([rows, d])
        var inputTerms = [GemmTerm(dqkv, wqkv)]
        if let serial = weights.serial {
            let t = try required(saved.serialT, "t = u A^T"), rank = serial.a.shape[0]
            let g = try engine.empty([rows, rank])
            if fusedSerial {
                let projected = try engine.empty([3 * d, rank])
                try engine.withProfileScope(ProfileScope.adapter) {
                    try engine.gemm(dqkv, try required(saved.serialC, "C = W B"), into: g)              // g = G C        [T, r]
                    try engine.gemm(g, saved.u1, into: serial.dA, transposeA: true, alpha: s, beta: 1)   // dA += s g^T u
                    try engine.gemm(dqkv, t, into: projected, transposeA: true)                         // P = G^T t      [3d, r]
                    try engine.gemm(wqkv, projected, into: serial.dB, transposeA: true, alpha: s, beta: 1) // dB += s W^T P
                }
                inputTerms.append(GemmTerm(g, serial.a, scale: s))                                      // du += s g A
            } else {
                // dz = G W; dB += s dz^T t; g = dz B; dA += s g^T u; du = dz + s g A.
                let dz = try engine.empty([rows, d])
                try engine.gemm(dqkv, wqkv, into: dz)
                try engine.gemm(dz, t, into: serial.dB, transposeA: true, alpha: s, beta: 1)
                try engine.gemm(dz, serial.b, into: g)
                try engine.gemm(g, saved.u1, into: serial.dA, transposeA: true, alpha: s, beta: 1)
                try engine.copy(dz, into: du)
                try engine.gemm(g, serial.a, into: du, alpha: s, beta: 1)
                try layerNormBackward(engine, weights.norm1, du: du, x: x, mean: saved.mean1, rstd: saved.rstd1, dx: dx)
                return
            }
        }
        for (target, pair) in weights.lora {
            guard let part = target.qkvIndex else { continue }
            let gx = GemmOperand.strided(try .columns(part * d, d, of: dqkv))                          // G_x [T, d]
            let g = try engine.empty([rows, pair.a.shape[0]])
            let t = try required(saved.loraT[target], "t for LoRA \(target.rawValue)")
            try engine.withProfileScope(ProfileScope.adapter) {
                try engine.gemm(sum: [GemmTerm(gx, .tensor(pair.b))], into: .tensor(g))                  // g = G_x B
                try engine.gemm(sum: [GemmTerm(gx, .tensor(t), transposeA: true)], into: .tensor(pair.dB), alpha: s, beta: 1) // dB += s G_x^T t
                try engine.gemm(g, saved.u1, into: pair.dA, transposeA: true, alpha: s, beta: 1)         // dA += s g^T u
            }
            inputTerms.append(GemmTerm(g, pair.a, scale: s))                                           // du += s g A
        }
        try linearWeightGradients(engine, weights.qkv, dY: dqkv, x: saved.u1)
        // With the adapters' terms this is one reduction over 3d + (number of adapters) r.
        try engine.withProfileScope(inputTerms.count > 1 ? ProfileScope.fusedInput : nil) {
            try engine.gemm(sum: inputTerms, into: du, workspace: saved.workspaceInH)
        }
        try layerNormBackward(engine, weights.norm1, du: du, x: x, mean: saved.mean1, rstd: saved.rstd1, dx: dx)
    }
}

/// Labels for `Engine.withProfileScope`, so that `bench train --profile` can tell what the
/// adapters cost: their own launches, and the GEMMs that reduce over the frozen K plus theirs.
public enum ProfileScope {
    /// Launches that exist only because of the adapters (low-rank GEMMs; gradients of A, B).
    public static let adapter = "adapter"
    /// The Serial LoRA qkv GEMM over K = d + r ([u1 | s t] [W | C]^T).
    public static let fusedQKV = "qkv+adapter"
    /// The input-gradient GEMM over K = 3d + (adapters) r.
    public static let fusedInput = "dqkv+adapter"
    /// The block's frozen products, forward and input gradient (with their epilogues: fc1's
    /// activation and pre-activation store, fc2.dX's activation derivative).
    public static let proj = "proj", fc1 = "fc1", fc2 = "fc2"
    public static let projInput = "proj.dX", fc1Input = "fc1.dX", fc2Input = "fc2.dX"
    /// The recompute plan's rebuild in the backward.
    public static let recompute = "recompute"
}
