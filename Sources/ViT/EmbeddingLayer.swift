import Tensors

// Patch embedding + cls + positions. images [B, C, S, S] -> tokens [B * N, d].
// Forward: patches = im2col(images) [B*Np, C*P*P]; patchOut = patches W^T + b [B*Np, d];
// tokens[b, 0] = cls + pos[0], tokens[b, 1+p] = patchOut[b, p] + pos[1+p].
// Backward (full fine-tuning only; the images need no gradient): dPatchOut, dPos, dCls from
// dTokens; dW += dPatchOut^T patches, db += column sums.
struct EmbeddingLayer {
    let config: ViTConfig

    func forward(_ engine: Engine, _ parameters: ViTParameters, images: Tensor, _ saved: Activations) throws {
        try engine.extractPatches(images, patchSize: config.patchSize, into: saved.patches)
        try engine.gemm(saved.patches, parameters.tensor("patch.weight"), into: saved.patchOut, transposeB: true,
                        bias: parameters.tensor("patch.bias"))
        try engine.assembleTokens(patchOut: saved.patchOut, cls: parameters.tensor("cls"), pos: parameters.tensor("pos"),
                                  batch: saved.batch, into: saved.xs[0])
    }

    func backward(_ engine: Engine, _ parameters: ViTParameters, dTokens: Tensor, _ saved: Activations) throws {
        guard let dWeight = parameters.gradient("patch.weight"), let dBias = parameters.gradient("patch.bias") else { return }
        let dPatchOut = try engine.empty(saved.patchOut.shape)
        try engine.assembleTokensBackward(dTokens, batch: saved.batch, dPatchOut: dPatchOut, dPos: parameters.gradient("pos"),
                                          dCls: parameters.gradient("cls"), accumulate: true)
        try engine.gemm(dPatchOut, saved.patches, into: dWeight, transposeA: true, beta: 1)
        try engine.columnSums(dPatchOut, into: dBias, accumulate: true)
    }
}
