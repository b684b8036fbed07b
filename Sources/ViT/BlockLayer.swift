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
//   the same in reverse; frozen weights get no weight gradients; every gradient accumulates.
//   Under the recompute plan (Activations.swift) it first rebuilds u1, qkv, xMid, u2 and the
//   fc1 pre-activation from the saved input and attention output.
struct BlockLayer {
    let config: ViTConfig
    let method: FineTuningMethod
    let index: Int
    /// Serial LoRA through the fused two-operand GEMMs (default), or the unfused reference
    /// path that materialises z = u + s t B^T [T, d] and dz, kept for cross-checking.
    let fusedSerial: Bool

    private func name(_ suffix: String) -> String { "blocks.\(index).\(suffix)" }

    private func heads(_ qkv: Tensor, _ part: Int) throws -> HeadLayout {
        let d = config.width
        return HeadLayout(try qkv.view(offset: part * d, shape: [qkv.count - part * d]), rowStride: 3 * d)
    }

    func forward(_ engine: Engine, _ p: ViTParameters, input x: Tensor, output: Tensor, _ saved: BlockActivations, batch: Int) throws {
        try projectQKV(engine, p, input: x, saved)
        let shape = AttentionShape(batch: batch, tokens: config.tokens, heads: config.heads, headDimension: config.headDimension)
        try engine.attentionForward(shape, q: try heads(saved.qkv, 0), k: try heads(saved.qkv, 1), v: try heads(saved.qkv, 2),
                                    output: saved.attention, lse: saved.lse)
        try projectOutput(engine, p, input: x, saved)
        try engine.layerNormForward(saved.xMid, gamma: p.tensor(name("norm2.weight")), beta: p.tensor(name("norm2.bias")),
                                    eps: config.layerNormEpsilon, into: saved.u2, mean: saved.mean2, rstd: saved.rstd2)
        // When the backward recomputes the pre-activation, hPre shares h's buffer: not written here.
        try engine.gemm(saved.u2, p.tensor(name("fc1.weight")), into: saved.h, transposeB: true, bias: p.tensor(name("fc1.bias")),
                        activation: config.architecture.activation, preActivation: saved.recompute ? nil : saved.hPre)
        try engine.copy(saved.xMid, into: output)
        try engine.gemm(saved.h, p.tensor(name("fc2.weight")), into: output, transposeB: true, beta: 1, bias: p.tensor(name("fc2.bias")))
    }

    /// u1 = LN1(x) and qkv = adapted projection of u1 (+ the method's low-rank intermediates).
    /// The backward calls it again (`rebuilding`) to rebuild u1 and qkv: the same kernels on the
    /// same inputs give the forward's values bit for bit; the low-rank intermediates (t, C) are
    /// kept per block, so those are not recomputed.
    private func projectQKV(_ engine: Engine, _ p: ViTParameters, input x: Tensor, _ saved: BlockActivations,
                            rebuilding: Bool = false) throws {
        let d = config.width
        try engine.layerNormForward(x, gamma: p.tensor(name("norm1.weight")), beta: p.tensor(name("norm1.bias")),
                                    eps: config.layerNormEpsilon, into: saved.u1, mean: saved.mean1, rstd: saved.rstd1)
        let wqkv = p.tensor(name("qkv.weight")), bqkv = p.tensor(name("qkv.bias"))
        switch method {
        case .serial(_, _) where fusedSerial:
            let t = saved.lowRank["serial"]!, c = saved.serialC!
            if !rebuilding {
                try engine.withProfileScope(ProfileScope.adapter) {
                    try engine.gemm(saved.u1, p.tensor(name("serial.A")), into: t, transposeB: true)
                    try engine.gemm(wqkv, p.tensor(name("serial.B")), into: c)
                }
            }
            try engine.withProfileScope(ProfileScope.fusedQKV) {
                try engine.gemm(sum: [GemmTerm(saved.u1, wqkv, transposeB: true), GemmTerm(t, c, transposeB: true, scale: method.scale)],
                                into: saved.qkv, bias: bqkv)
            }
        case .serial(_, _):
            let t = saved.lowRank["serial"]!
            try engine.gemm(saved.u1, p.tensor(name("serial.A")), into: t, transposeB: true)
            let z = try engine.empty(saved.u1.shape)
            try engine.copy(saved.u1, into: z)
            try engine.gemm(t, p.tensor(name("serial.B")), into: z, transposeB: true, alpha: method.scale, beta: 1)
            try engine.gemm(z, wqkv, into: saved.qkv, transposeB: true, bias: bqkv)
        case .lora(_, _, let targets):
            try engine.gemm(saved.u1, wqkv, into: saved.qkv, transposeB: true, bias: bqkv)
            try engine.withProfileScope(ProfileScope.adapter) {
                for target in targets {
                    guard let part = target.qkvIndex else { continue }
                    let t = saved.lowRank[target.rawValue]!
                    if !rebuilding { try engine.gemm(saved.u1, p.tensor(name("lora.\(target.rawValue).A")), into: t, transposeB: true) }
                    try engine.gemm(sum: [GemmTerm(t, p.tensor(name("lora.\(target.rawValue).B")), transposeB: true)],
                                    into: .strided(try .columns(part * d, d, of: saved.qkv)), alpha: method.scale, beta: 1)
                }
            }
        case .full, .probe:
            try engine.gemm(saved.u1, wqkv, into: saved.qkv, transposeB: true, bias: bqkv)
        }
    }

    /// xMid = x + a W_o^T + b_o (+ the LoRA o term); rerun by the backward like projectQKV.
    private func projectOutput(_ engine: Engine, _ p: ViTParameters, input x: Tensor, _ saved: BlockActivations,
                               rebuilding: Bool = false) throws {
        try engine.copy(x, into: saved.xMid)
        try engine.gemm(saved.attention, p.tensor(name("proj.weight")), into: saved.xMid, transposeB: true, beta: 1,
                        bias: p.tensor(name("proj.bias")))
        if case .lora(_, _, let targets) = method, targets.contains(.o) {
            let t = saved.lowRank["o"]!
            try engine.withProfileScope(ProfileScope.adapter) {
                if !rebuilding { try engine.gemm(saved.attention, p.tensor(name("lora.o.A")), into: t, transposeB: true) }
                try engine.gemm(t, p.tensor(name("lora.o.B")), into: saved.xMid, transposeB: true, alpha: method.scale, beta: 1)
            }
        }
    }

    /// dW += dY^T X and db += column sums of dY, when the layer trains.
    private func linearWeightGradients(_ engine: Engine, _ p: ViTParameters, _ layer: String, dY: Tensor, x: Tensor) throws {
        guard let dWeight = p.gradient(name(layer + ".weight")), let dBias = p.gradient(name(layer + ".bias")) else { return }
        try engine.gemm(dY, x, into: dWeight, transposeA: true, beta: 1)
        try engine.columnSums(dY, into: dBias, accumulate: true)
    }

    func backward(_ engine: Engine, _ p: ViTParameters, input x: Tensor, dx: Tensor, _ saved: BlockActivations, batch: Int) throws {
        let d = config.width, m = config.mlpWidth, rows = x.shape[0]
        let s = method.scale

        if saved.recompute {
            // Everything but the block input, the attention output and lse lives in scratch shared
            // by all blocks: rebuild u1, qkv, xMid, u2 and the fc1 pre-activation with the
            // forward's own kernels (bit-identical values).
            try projectQKV(engine, p, input: x, saved, rebuilding: true)
            try projectOutput(engine, p, input: x, saved, rebuilding: true)
            try engine.layerNormForward(saved.xMid, gamma: p.tensor(name("norm2.weight")), beta: p.tensor(name("norm2.bias")),
                                        eps: config.layerNormEpsilon, into: saved.u2, mean: saved.mean2, rstd: saved.rstd2)
            try engine.gemm(saved.u2, p.tensor(name("fc1.weight")), into: saved.hPre, transposeB: true, bias: p.tensor(name("fc1.bias")))
        }

        // MLP: out = xMid + GELU(u2 W1^T + b1) W2^T + b2.
        // With recompute, h's buffer holds the pre-activation by now; only full fine-tuning
        // (which keeps h) trains fc2.
        precondition(!saved.recompute || p.gradient(name("fc2.weight")) == nil, "fc2 trains but h was not kept")
        try linearWeightGradients(engine, p, "fc2", dY: dx, x: saved.h)
        let dh = try engine.empty([rows, m])                                   // (dx W2) * GELU'(hPre)
        try engine.gemm(dx, p.tensor(name("fc2.weight")), into: dh, times: ActivationDerivative(config.architecture.activation, at: saved.hPre))
        try linearWeightGradients(engine, p, "fc1", dY: dh, x: saved.u2)
        let du = try engine.empty([rows, d])
        try engine.gemm(dh, p.tensor(name("fc1.weight")), into: du)
        try engine.layerNormBackward(du, x: saved.xMid, gamma: p.tensor(name("norm2.weight")), mean: saved.mean2, rstd: saved.rstd2,
                                     dx: dx, accumulate: true, dGamma: p.gradient(name("norm2.weight")),
                                     dBeta: p.gradient(name("norm2.bias")), accumulateParameters: true)

        // Output projection (dx is now the gradient of xMid).
        try linearWeightGradients(engine, p, "proj", dY: dx, x: saved.attention)
        let dAttention = try engine.empty([rows, d])
        var attentionTerms = [GemmTerm(dx, p.tensor(name("proj.weight")))]
        if case .lora(_, _, let targets) = method, targets.contains(.o) {
            let a = p.tensor(name("lora.o.A")), b = p.tensor(name("lora.o.B")), t = saved.lowRank["o"]!
            let g = try engine.empty([rows, a.shape[0]])
            try engine.withProfileScope(ProfileScope.adapter) {
                try engine.gemm(dx, b, into: g)                                                       // g = dx B      [T, r]
                try engine.gemm(dx, t, into: p.gradient(name("lora.o.B"))!, transposeA: true, alpha: s, beta: 1)  // dB += s dx^T t
                try engine.gemm(g, saved.attention, into: p.gradient(name("lora.o.A"))!, transposeA: true, alpha: s, beta: 1) // dA += s g^T a
            }
            attentionTerms.append(GemmTerm(g, a, scale: s))                                           // da += s g A
        }
        try engine.gemm(sum: attentionTerms, into: dAttention)

        let dqkv = try engine.empty([rows, 3 * d])
        let shape = AttentionShape(batch: batch, tokens: config.tokens, heads: config.heads, headDimension: config.headDimension)
        try engine.attentionBackward(shape, q: try heads(saved.qkv, 0), k: try heads(saved.qkv, 1), v: try heads(saved.qkv, 2),
                                     output: saved.attention, lse: saved.lse, dOutput: dAttention,
                                     dq: try heads(dqkv, 0), dk: try heads(dqkv, 1), dv: try heads(dqkv, 2))

        // qkv projection and its adapters: du1 = dqkv W_qkv (+ adapter terms), one reduction.
        let wqkv = p.tensor(name("qkv.weight"))
        var inputTerms = [GemmTerm(dqkv, wqkv)]
        switch method {
        case .serial(let rank, _) where !fusedSerial:
            // dz = G W; dB += s dz^T t; g = dz B; dA += s g^T u; du = dz + s g A.
            let a = p.tensor(name("serial.A")), b = p.tensor(name("serial.B")), t = saved.lowRank["serial"]!
            let dz = try engine.empty([rows, d])
            try engine.gemm(dqkv, wqkv, into: dz)
            try engine.gemm(dz, t, into: p.gradient(name("serial.B"))!, transposeA: true, alpha: s, beta: 1)
            let g = try engine.empty([rows, rank])
            try engine.gemm(dz, b, into: g)
            try engine.gemm(g, saved.u1, into: p.gradient(name("serial.A"))!, transposeA: true, alpha: s, beta: 1)
            try engine.copy(dz, into: du)
            try engine.gemm(g, a, into: du, alpha: s, beta: 1)
            try engine.layerNormBackward(du, x: x, gamma: p.tensor(name("norm1.weight")), mean: saved.mean1, rstd: saved.rstd1,
                                         dx: dx, accumulate: true, dGamma: p.gradient(name("norm1.weight")),
                                         dBeta: p.gradient(name("norm1.bias")), accumulateParameters: true)
            return
        case .serial(let rank, _):
            let a = p.tensor(name("serial.A")), t = saved.lowRank["serial"]!
            let g = try engine.empty([rows, rank])
            let projected = try engine.empty([3 * d, rank])
            try engine.withProfileScope(ProfileScope.adapter) {
                try engine.gemm(dqkv, saved.serialC!, into: g)                                         // g = G C        [T, r]
                try engine.gemm(g, saved.u1, into: p.gradient(name("serial.A"))!, transposeA: true, alpha: s, beta: 1)  // dA += s g^T u
                try engine.gemm(dqkv, t, into: projected, transposeA: true)                            // P = G^T t      [3d, r]
                try engine.gemm(wqkv, projected, into: p.gradient(name("serial.B"))!, transposeA: true, alpha: s, beta: 1) // dB += s W^T P
            }
            inputTerms.append(GemmTerm(g, a, scale: s))                                                // du += s g A
        case .lora(let rank, _, let targets):
            for target in targets {
                guard let part = target.qkvIndex else { continue }
                let key = target.rawValue
                let gx = GemmOperand.strided(try .columns(part * d, d, of: dqkv))                     // G_x [T, d]
                let g = try engine.empty([rows, rank])
                try engine.withProfileScope(ProfileScope.adapter) {
                    try engine.gemm(sum: [GemmTerm(gx, .tensor(p.tensor(name("lora.\(key).B"))))], into: .tensor(g))  // g = G_x B
                    try engine.gemm(sum: [GemmTerm(gx, .tensor(saved.lowRank[key]!), transposeA: true)],
                                    into: .tensor(p.gradient(name("lora.\(key).B"))!), alpha: s, beta: 1)           // dB += s G_x^T t
                    try engine.gemm(g, saved.u1, into: p.gradient(name("lora.\(key).A"))!, transposeA: true, alpha: s, beta: 1) // dA += s g^T u
                }
                inputTerms.append(GemmTerm(g, p.tensor(name("lora.\(key).A")), scale: s))               // du += s g A
            }
        case .full, .probe:
            break
        }
        try linearWeightGradients(engine, p, "qkv", dY: dqkv, x: saved.u1)
        // With the adapters' terms this is one reduction over 3d + (number of adapters) r.
        try engine.withProfileScope(inputTerms.count > 1 ? ProfileScope.fusedInput : nil) {
            try engine.gemm(sum: inputTerms, into: du)
        }
        try engine.layerNormBackward(du, x: x, gamma: p.tensor(name("norm1.weight")), mean: saved.mean1, rstd: saved.rstd1,
                                     dx: dx, accumulate: true, dGamma: p.gradient(name("norm1.weight")),
                                     dBeta: p.gradient(name("norm1.bias")), accumulateParameters: true)
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
}
