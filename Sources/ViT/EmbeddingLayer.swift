import Formats
import Tensors

// Patch embedding + cls + positions (+ CLIP's LayerNorm over the tokens).
// images [B, C, S, S] -> tokens [B * N, d].
// Forward: patches = im2col(images) [B*Np, C*P*P]; patchOut = patches W^T (+ b) [B*Np, d];
// e[b, 0] = cls + pos[0], e[b, 1+p] = patchOut[b, p] + pos[1+p]; tokens = LN(e) or e.
// Backward (full fine-tuning only; the images need no gradient): the LayerNorm's, then
// dPatchOut, dPos, dCls from dE; dW += dPatchOut^T patches, db += column sums.
struct EmbeddingLayer {
    let config: ViTConfig
    let weights: EmbeddingParameters

    func forward(_ engine: Engine, images: Tensor, _ saved: Activations) throws {
        try engine.extractPatches(images, patchSize: config.patchSize, into: saved.patches)
        try engine.gemm(saved.patches, weights.patchWeight.value, into: saved.patchOut, transposeB: true, bias: weights.patchBias?.value)
        try engine.assembleTokens(patchOut: saved.patchOut, cls: weights.cls.value, pos: weights.pos.value,
                                  batch: saved.batch, into: saved.embedded ?? saved.xs[0])
        if let norm = weights.norm, let embedded = saved.embedded, let mean = saved.embeddingMean, let rstd = saved.embeddingRstd {
            try engine.layerNormForward(embedded, gamma: norm.weight.value, beta: norm.bias.value, eps: config.layerNormEpsilon,
                                        into: saved.xs[0], mean: mean, rstd: rstd)
        }
    }

    func backward(_ engine: Engine, dTokens: Tensor, _ saved: Activations) throws {
        guard let dWeight = weights.patchWeight.gradient else { return }
        var dEmbedded = dTokens
        if let norm = weights.norm, let embedded = saved.embedded, let mean = saved.embeddingMean, let rstd = saved.embeddingRstd {
            dEmbedded = try engine.empty(dTokens.shape)
            try engine.layerNormBackward(dTokens, x: embedded, gamma: norm.weight.value, mean: mean, rstd: rstd, dx: dEmbedded,
                                         dGamma: norm.weight.gradient, dBeta: norm.bias.gradient, accumulateParameters: true)
        }
        let dPatchOut = try engine.empty(saved.patchOut.shape)
        try engine.assembleTokensBackward(dEmbedded, batch: saved.batch, dPatchOut: dPatchOut, dPos: weights.pos.gradient,
                                          dCls: weights.cls.gradient, accumulate: true)
        try engine.gemm(dPatchOut, saved.patches, into: dWeight, transposeA: true, beta: 1)
        if let dBias = weights.patchBias?.gradient { try engine.columnSums(dPatchOut, into: dBias, accumulate: true) }
    }
}
