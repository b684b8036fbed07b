import Tensors

// Patch embedding + cls + positions (+ CLIP's LayerNorm over the tokens).
// images [B, C, S, S] -> tokens [B * N, d].
// Forward: patches = im2col(images) [B*Np, C*P*P]; patchOut = patches W^T (+ b) [B*Np, d];
// e[b, 0] = cls + pos[0], e[b, 1+p] = patchOut[b, p] + pos[1+p]; tokens = LN(e) or e.
// Backward (full fine-tuning only; the images need no gradient): the LayerNorm's, then
// dPatchOut, dPos, dCls from dE; dW += dPatchOut^T patches, db += column sums.
struct EmbeddingLayer {
    let config: ViTConfig

    func forward(_ engine: Engine, _ parameters: ViTParameters, images: Tensor, _ saved: Activations) throws {
        try engine.extractPatches(images, patchSize: config.patchSize, into: saved.patches)
        try engine.gemm(saved.patches, parameters.tensor("patch.weight"), into: saved.patchOut, transposeB: true,
                        bias: config.architecture.patchBias ? parameters.tensor("patch.bias") : nil)
        try engine.assembleTokens(patchOut: saved.patchOut, cls: parameters.tensor("cls"), pos: parameters.tensor("pos"),
                                  batch: saved.batch, into: saved.embedded ?? saved.xs[0])
        if let embedded = saved.embedded, let mean = saved.embeddingMean, let rstd = saved.embeddingRstd {
            try engine.layerNormForward(embedded, gamma: parameters.tensor("embedding_norm.weight"), beta: parameters.tensor("embedding_norm.bias"),
                                        eps: config.layerNormEpsilon, into: saved.xs[0], mean: mean, rstd: rstd)
        }
    }

    func backward(_ engine: Engine, _ parameters: ViTParameters, dTokens: Tensor, _ saved: Activations) throws {
        guard let dWeight = parameters.gradient("patch.weight") else { return }
        var dEmbedded = dTokens
        if let embedded = saved.embedded, let mean = saved.embeddingMean, let rstd = saved.embeddingRstd {
            dEmbedded = try engine.empty(dTokens.shape)
            try engine.layerNormBackward(dTokens, x: embedded, gamma: parameters.tensor("embedding_norm.weight"), mean: mean, rstd: rstd,
                                         dx: dEmbedded, dGamma: parameters.gradient("embedding_norm.weight"),
                                         dBeta: parameters.gradient("embedding_norm.bias"), accumulateParameters: true)
        }
        let dPatchOut = try engine.empty(saved.patchOut.shape)
        try engine.assembleTokensBackward(dEmbedded, batch: saved.batch, dPatchOut: dPatchOut, dPos: parameters.gradient("pos"),
                                          dCls: parameters.gradient("cls"), accumulate: true)
        try engine.gemm(dPatchOut, saved.patches, into: dWeight, transposeA: true, beta: 1)
        if let dBias = parameters.gradient("patch.bias") { try engine.columnSums(dPatchOut, into: dBias, accumulate: true) }
    }
}
