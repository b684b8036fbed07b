import Formats
import Tensors

// Pooling, CLIP's projection and the classifier head.
// Forward: cls pooling: clsRows = x[b, 0] [B, d], pooled = LN(clsRows); mean pooling: pooled =
// the mean of x[b, 1...] [B, d]; features = pooled Wp^T [B, f] with a projection, else pooled;
// logits = features W^T + b [B, K].
// Backward: dW += dLogits^T features, db += column sums, dFeatures = dLogits W; through the
// projection (dWp += dFeatures^T pooled when it trains) and the pooling; returns dx [T, d]
// (nil for a linear probe: nothing below trains).
struct HeadLayer {
    let config: ViTConfig
    let weights: HeadParameters

    func forward(_ engine: Engine, _ saved: Activations) throws {
        let d = config.width, last = saved.xs[config.layers]
        switch config.architecture.pooling {
        case .cls:
            try engine.copy(try StridedMatrix(last, rows: saved.batch, columns: d, rowStride: config.tokens * d),
                            into: try StridedMatrix(saved.clsRows, rows: saved.batch, columns: d, rowStride: d))
            try engine.layerNormForward(saved.clsRows, gamma: weights.norm.weight.value, beta: weights.norm.bias.value,
                                        eps: config.layerNormEpsilon, into: saved.pooled, mean: saved.finalMean, rstd: saved.finalRstd)
        case .meanPatches:
            try engine.meanOfPatchTokens(last, batch: saved.batch, into: saved.pooled)
        }
        if let projection = weights.projection {
            try engine.gemm(saved.pooled, projection.value, into: saved.features, transposeB: true)
        }
        try engine.gemm(saved.features, weights.weight, into: saved.logits, transposeB: true, bias: weights.bias)
    }

    func backward(_ engine: Engine, dLogits: Tensor, _ saved: Activations, needInputGradient: Bool) throws -> Tensor? {
        try engine.gemm(dLogits, saved.features, into: weights.dWeight, transposeA: true, beta: 1)
        try engine.columnSums(dLogits, into: weights.dBias, accumulate: true)
        guard needInputGradient else { return nil }
        let d = config.width
        var dPooled = try engine.empty([saved.batch, config.featureWidth])
        try engine.gemm(dLogits, weights.weight, into: dPooled)
        if let projection = weights.projection {
            let dFeatures = dPooled
            if let dProjection = projection.gradient {
                try engine.gemm(dFeatures, saved.pooled, into: dProjection, transposeA: true, beta: 1)
            }
            dPooled = try engine.empty([saved.batch, d])
            try engine.gemm(dFeatures, projection.value, into: dPooled)
        }
        switch config.architecture.pooling {
        case .cls:
            let dCls = try engine.empty([saved.batch, d])
            try engine.layerNormBackward(dPooled, x: saved.clsRows, gamma: weights.norm.weight.value, mean: saved.finalMean,
                                         rstd: saved.finalRstd, dx: dCls, dGamma: weights.norm.weight.gradient,
                                         dBeta: weights.norm.bias.gradient, accumulateParameters: true)
            let dx = try engine.zeros([saved.batch * config.tokens, d])
            try engine.copy(try StridedMatrix(dCls, rows: saved.batch, columns: d, rowStride: d),
                            into: try StridedMatrix(dx, rows: saved.batch, columns: d, rowStride: config.tokens * d))
            return dx
        case .meanPatches:
            let dx = try engine.empty([saved.batch * config.tokens, d])
            try engine.meanOfPatchTokensBackward(dPooled, batch: saved.batch, into: dx)
            return dx
        }
    }
}
