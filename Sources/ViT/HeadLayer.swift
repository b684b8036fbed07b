import Tensors

// Final LayerNorm of the cls rows and the classifier head.
// Forward: clsRows = x[b, 0] [B, d]; pooled = LN(clsRows); logits = pooled W^T + b [B, K].
// Backward: dW += dLogits^T pooled, db += column sums, dPooled = dLogits W; LN backward;
// returns dx [T, d], zero except the cls rows (nil for a linear probe: nothing below trains).
struct HeadLayer {
    let config: ViTConfig

    func forward(_ engine: Engine, _ parameters: ViTParameters, _ saved: Activations) throws {
        let d = config.width
        try engine.copy(try StridedMatrix(saved.xs[config.layers], rows: saved.batch, columns: d, rowStride: config.tokens * d),
                        into: try StridedMatrix(saved.clsRows, rows: saved.batch, columns: d, rowStride: d))
        try engine.layerNormForward(saved.clsRows, gamma: parameters.tensor("norm.weight"), beta: parameters.tensor("norm.bias"),
                                    eps: config.layerNormEpsilon, into: saved.pooled, mean: saved.finalMean, rstd: saved.finalRstd)
        try engine.gemm(saved.pooled, parameters.tensor("head.weight"), into: saved.logits, transposeB: true,
                        bias: parameters.tensor("head.bias"))
    }

    func backward(_ engine: Engine, _ parameters: ViTParameters, dLogits: Tensor, _ saved: Activations, needInputGradient: Bool) throws -> Tensor? {
        try engine.gemm(dLogits, saved.pooled, into: parameters.gradient("head.weight")!, transposeA: true, beta: 1)
        try engine.columnSums(dLogits, into: parameters.gradient("head.bias")!, accumulate: true)
        guard needInputGradient else { return nil }
        let d = config.width
        let dPooled = try engine.empty([saved.batch, d])
        try engine.gemm(dLogits, parameters.tensor("head.weight"), into: dPooled)
        let dCls = try engine.empty([saved.batch, d])
        try engine.layerNormBackward(dPooled, x: saved.clsRows, gamma: parameters.tensor("norm.weight"), mean: saved.finalMean,
                                     rstd: saved.finalRstd, dx: dCls, dGamma: parameters.gradient("norm.weight"),
                                     dBeta: parameters.gradient("norm.bias"), accumulateParameters: true)
        let dx = try engine.zeros([saved.batch * config.tokens, d])
        try engine.copy(try StridedMatrix(dCls, rows: saved.batch, columns: d, rowStride: d),
                        into: try StridedMatrix(dx, rows: saved.batch, columns: d, rowStride: config.tokens * d))
        return dx
    }
}
