import CLRuntime

// Launchers for Kernels/embedding.cl.
// images [B, Ch, H, W]; patches [B * Np, Ch * P * P]; patchOut [B * Np, D]; cls [D];
// pos [1 + Np, D]; tokens [B * (1 + Np), D].

extension Engine {
    public func extractPatches(_ images: Tensor, patchSize: Int, into patches: Tensor) throws {
        let operation = "extractPatches"
        guard images.shape.count == 4 else {
            throw TensorError.shapeMismatch(operation: operation, details: "images must be [B, C, H, W], got \(images.shape)")
        }
        let (batch, channels, height, width) = (images.shape[0], images.shape[1], images.shape[2], images.shape[3])
        guard patchSize > 0, height % patchSize == 0, width % patchSize == 0 else {
            throw TensorError.shapeMismatch(operation: operation, details: "image size \(height)x\(width) is not divisible by the patch size \(patchSize)")
        }
        let patchCount = (height / patchSize) * (width / patchSize)
        try checkOperands(operation, [images, patches])
        try expectShape(operation, "patches", patches, [batch * patchCount, channels * patchSize * patchSize])
        try launch("im2col_patches", in: "embedding", global: [patches.count / patchSize], work: .floats(2 * patches.count),
            images, patches, batch, channels, height, width, patchSize)
    }

    public func assembleTokens(patchOut: Tensor, cls: Tensor, pos: Tensor, batch: Int, into tokens: Tensor) throws {
        let operation = "assembleTokens"
        let (patchCount, width) = try tokenGeometry(operation, patchOut: patchOut, batch: batch)
        try checkOperands(operation, [patchOut, cls, pos, tokens])
        try expectShape(operation, "cls", cls, [width])
        try expectShape(operation, "pos", pos, [patchCount + 1, width])
        try expectShape(operation, "tokens", tokens, [batch * (patchCount + 1), width])
        try launch("tokens_forward", in: "embedding", global: [width, patchCount + 1, batch], work: .floats(3 * tokens.count),
            patchOut, cls, pos, tokens, batch, patchCount, width)
    }

    /// dPatchOut = the patch rows of dTokens; dPos / dCls (+)= batch sums when given (full fine-tuning).
    public func assembleTokensBackward(_ dTokens: Tensor, batch: Int, dPatchOut: Tensor,
                                       dPos: Tensor? = nil, dCls: Tensor? = nil, accumulate: Bool = false) throws {
        let operation = "assembleTokensBackward"
        let (patchCount, width) = try tokenGeometry(operation, patchOut: dPatchOut, batch: batch)
        try checkOperands(operation, [dTokens, dPatchOut] + [dPos, dCls].compactMap { $0 })
        try expectShape(operation, "dTokens", dTokens, [batch * (patchCount + 1), width])
        try launch("tokens_backward_patches", in: "embedding", global: [dPatchOut.count],
            dTokens, dPatchOut, batch, patchCount, width)
        guard dPos != nil || dCls != nil else { return }
        if let dPos { try expectShape(operation, "dPos", dPos, [patchCount + 1, width]) }
        if let dCls { try expectShape(operation, "dCls", dCls, [width]) }
        let placeholder = dPos ?? dCls!
        try launch("tokens_backward_params", in: "embedding", global: [(patchCount + 1) * width],
            dTokens, dPos ?? placeholder, dCls ?? placeholder, batch, patchCount + 1, width, dPos != nil, dCls != nil, accumulate)
    }

    /// pooled [B, d] = the mean of the patch tokens (all but token 0) of tokens [B * N, d].
    public func meanOfPatchTokens(_ tokens: Tensor, batch: Int, into pooled: Tensor) throws {
        let (n, width) = try pooledGeometry("meanOfPatchTokens", tokens: tokens, pooled: pooled, batch: batch)
        try launch("mean_patch_tokens", in: "embedding", global: [width, batch], work: .floats(tokens.count + pooled.count),
            tokens, pooled, n, width)
    }

    /// dTokens [B * N, d] = dPooled / (N - 1) on the patch tokens, 0 on the cls tokens.
    public func meanOfPatchTokensBackward(_ dPooled: Tensor, batch: Int, into dTokens: Tensor) throws {
        let (n, width) = try pooledGeometry("meanOfPatchTokensBackward", tokens: dTokens, pooled: dPooled, batch: batch)
        try launch("mean_patch_tokens_backward", in: "embedding", global: [width, n, batch], work: .floats(dTokens.count + dPooled.count),
            dPooled, dTokens, n, width)
    }

    private func pooledGeometry(_ operation: String, tokens: Tensor, pooled: Tensor, batch: Int) throws -> (Int, Int) {
        try checkOperands(operation, [tokens, pooled])
        guard tokens.shape.count == 2, batch > 0, tokens.shape[0] % batch == 0, tokens.shape[0] / batch >= 2 else {
            throw TensorError.shapeMismatch(operation: operation, details: "tokens must be [B * N, d] with B = \(batch) and N >= 2, got \(tokens.shape)")
        }
        try expectShape(operation, "pooled", pooled, [batch, tokens.shape[1]])
        return (tokens.shape[0] / batch, tokens.shape[1])
    }

    private func tokenGeometry(_ operation: String, patchOut: Tensor, batch: Int) throws -> (Int, Int) {
        guard patchOut.shape.count == 2, batch > 0, patchOut.shape[0] % batch == 0 else {
            throw TensorError.shapeMismatch(operation: operation, details: "patch rows must be [B * Np, D] with B = \(batch), got \(patchOut.shape)")
        }
        return (patchOut.shape[0] / batch, patchOut.shape[1])
    }
}
