import Formats
import Tensors

/// What the forward saves for the backward, for one batch size; allocated once per batch size
/// and reused across steps. T = B * N tokens, d width, m MLP width, r rank.
///
/// Outside full fine-tuning no weight gradient needs the block's intermediates, so under
/// `ActivationMemory.recompute` each block keeps only its input (xs), the attention output
/// a [T, d] and lse [B, H, N]: 2d floats per
/// token instead of 10d + 4m. The backward rebuilds u1, qkv, xMid, u2 and the fc1
/// pre-activation in scratch shared by all blocks, rerunning the forward's kernels (the qkv,
/// proj and fc1 GEMMs and two LayerNorms per block, about 20% of a ViT-S step; the attention
/// and the adapters' t and C are never rerun). On ViT-B/16 at 224 px, batch 8, that is 187 MB
/// saved instead of 427 MB. `ActivationMemory.keep` trades that back: blocks keep u1, qkv, xMid
/// and the pre-activation (11d floats per token) and nothing is recomputed; only u2 and h,
/// which no backward of these methods reads, stay shared. `selective` (the default) sits
/// between them: blocks keep qkv and the pre-activation (9d floats per token), the outputs of
/// the two dearest reruns, and the backward rebuilds u1 with LN1 and xMid with the proj GEMM
/// (0.5x PyTorch's peak at keep's speed within 3% on ViT-S). `keepBF16` reruns no GEMM either but
/// keeps the backward's tensors as bfloat16 copies: the block input, qkv, the attention
/// output, xMid and the pre-activation (6d + m values per token at 2 bytes, the bytes of 5d
/// floats at m = 4d). The forward computes in fp32 scratch shared by all blocks (the residual
/// stream alternates between two buffers) and rounds into the copies, the pre-activation in
/// fc1's epilogue; the backward widens them back into the scratch (fc2.dX's epilogue reads the
/// pre-activation's as it is) and rebuilds u1 with LN1 (no GEMM). The forward and the loss are
/// exactly the fp32 ones; only the backward reads rounded values (bf16 for its range:
/// pre-activations and residual streams can exceed fp16's). Full fine-tuning keeps everything its weight gradients read. A linear probe's
/// backward never enters the blocks, and a forward for evaluation has no backward: then all
/// blocks share one set of block tensors and the residual stream alternates between two buffers.
final class Activations {
    let batch: Int
    let patches: Tensor     // [B * Np, C * P * P], outside full fine-tuning a view of the blocks' h
    let patchOut: Tensor    // [B * Np, d], outside full fine-tuning a view of the blocks' u2
    /// With an embedding LayerNorm (CLIP): the tokens before it [T, d] and its stats [T];
    /// xs[0] is then its output.
    let embedded: Tensor?
    let embeddingMean: Tensor?, embeddingRstd: Tensor?
    /// The residual stream entering block i (xs[0] = tokens) and leaving the last: L + 1 x [T, d].
    let xs: [Tensor]
    let blocks: [BlockActivations]
    let clsRows: Tensor     // [B, d]
    let pooled: Tensor      // [B, d] final LayerNorm of the cls rows, or the mean of the patch tokens
    /// What the head reads [B, f]: the projected pooled features, or `pooled` itself.
    let features: Tensor
    let finalMean: Tensor   // [B]
    let finalRstd: Tensor   // [B]
    let logits: Tensor      // [B, K]

    /// Bytes of device memory held for the backward (shared buffers counted once).
    var bytes: Int {
        var seen: Set<ObjectIdentifier> = []
        var total = 0
        func add(_ tensor: Tensor?) {
            guard let tensor, seen.insert(ObjectIdentifier(tensor.buffer)).inserted else { return }
            total += tensor.buffer.byteCount
        }
        for tensor in [patches, patchOut, clsRows, pooled, features, finalMean, finalRstd, logits] + xs { add(tensor) }
        for tensor in [embedded, embeddingMean, embeddingRstd] { add(tensor) }
        for block in blocks {
            for tensor in [block.u1, block.mean1, block.rstd1, block.qkv, block.attention, block.lse, block.xMid,
                           block.u2, block.mean2, block.rstd2, block.hPre, block.h] { add(tensor) }
            if let copies = block.sixteenBit { for tensor in copies.all { add(tensor) } }
            add(block.serialC)
            add(block.serialT)
            for tensor in block.loraT.values { add(tensor) }
        }
        return total
    }

    /// Laid out for a forward only (shared block tensors, as for a probe).
    let inference: Bool

    init(engine: Engine, config: ViTConfig, method: FineTuningMethod, batch: Int, memory: ActivationMemory,
         inference: Bool = false) throws {
        self.batch = batch
        self.inference = inference
        let d = config.width, t = batch * config.tokens
        let embeddingNorm = config.architecture.embeddingNorm
        embedded = embeddingNorm ? try engine.empty([t, d]) : nil
        embeddingMean = embeddingNorm ? try engine.empty([t]) : nil
        embeddingRstd = embeddingNorm ? try engine.empty([t]) : nil
        if method == .probe || inference {
            let (even, odd) = (try engine.empty([t, d]), try engine.empty([t, d]))
            xs = (0...config.layers).map { $0 % 2 == 0 ? even : odd }
            let shared = try BlockActivations(engine: engine, config: config, method: method, tokens: t, batch: batch,
                                              scratch: BlockScratch(), plan: .keep)
            blocks = Array(repeating: shared, count: config.layers)
        } else {
            let plan: ActivationMemory = method == .full ? .keep : memory
            var scratch = BlockScratch()
            if plan == .keepBF16 {
                // Each block keeps a bf16 copy of its input; the fp32 stream alternates between
                // two buffers, and the backward widens the copy into scratch of its own.
                let (even, odd) = (try engine.empty([t, d]), try engine.empty([t, d]))
                xs = (0...config.layers).map { $0 % 2 == 0 ? even : odd }
                scratch.input = try engine.empty([t, d])
            } else {
                xs = try (0...config.layers).map { _ in try engine.empty([t, d]) }
            }
            if method != .full {
                scratch.u2 = try engine.empty([t, d])
                scratch.h = try engine.empty([t, config.mlpWidth])
            }
            if !plan.keepsOwn(.normalizedInput) { scratch.u1 = try engine.empty([t, d]) }
            if !plan.keepsOwn(.qkv) { scratch.qkv = try engine.empty([t, 3 * d]) }
            if !plan.keepsOwn(.mid) { scratch.xMid = try engine.empty([t, d]) }
            if plan == .keepBF16 { scratch.attention = try engine.empty([t, d]) }
            blocks = try (0..<config.layers).map { _ in
                try BlockActivations(engine: engine, config: config, method: method, tokens: t, batch: batch,
                                     scratch: scratch, plan: plan)
            }
        }
        // The embedding runs before any block writes its scratch, and outside full fine-tuning
        // (whose patch-weight gradient reads the patches) nothing reads the patches or their
        // projection afterwards: they live in the blocks' shared h and u2.
        let patchRows = batch * config.patchCount
        let scratch = blocks.first?.backwardScratch
        if let scratch, patchRows * config.patchValues <= scratch.mlp.count {
            patches = try scratch.mlp.view(offset: 0, shape: [patchRows, config.patchValues])
        } else {
            patches = try engine.empty([patchRows, config.patchValues])
        }
        patchOut = try scratch?.narrow.view(offset: 0, shape: [patchRows, d]) ?? engine.empty([patchRows, d])
        clsRows = try engine.empty([batch, d])
        pooled = try engine.empty([batch, d])
        features = config.architecture.projection == nil ? pooled : try engine.empty([batch, config.featureWidth])
        finalMean = try engine.empty([batch])
        finalRstd = try engine.empty([batch])
        logits = try engine.empty([batch, config.classes])
    }
}

final class BlockActivations {
    let u1: Tensor, mean1: Tensor, rstd1: Tensor     // LN1 output [T, d], stats [T]
    /// Serial: t = u1 A^T [T, r] and C = W_qkv B [3d, r], computed in the forward from the
    /// current weights.
    let serialT: Tensor?, serialC: Tensor?
    /// LoRA: per target u A^T [T, r] (u = u1, or the attention output for o).
    let loraT: [LoRATarget: Tensor]
    let qkv: Tensor                                   // [T, 3d]
    let attention: Tensor                             // [T, d] heads concatenated
    let lse: Tensor                                   // [B, H, N]
    let xMid: Tensor                                  // [T, d] after the attention residual
    let u2: Tensor, mean2: Tensor, rstd2: Tensor      // LN2
    let hPre: Tensor, h: Tensor                       // [T, m] before and after GELU (hPre bf16 under keepBF16)

    /// recompute: u1, qkv, xMid, u2 and the fc1 pre-activation are in shared scratch and the
    /// backward rebuilds them; hPre then shares h's buffer (the forward does not write it, and
    /// the backward no longer needs h: fc2 is frozen). keepBF16: the same tensors are scratch
    /// (attention too) and `sixteenBit` holds the block's own rounded copies, but hPre is the
    /// block's own bf16 tensor, written and read by the fc1 and fc2.dX epilogues.
    let plan: ActivationMemory
    let sixteenBit: SixteenBitActivations?
    /// keepBF16: shared scratch the block's input is widened into for the backward.
    let widenedInput: Tensor?
    /// Shared scratch whose values no backward reads (nil under full fine-tuning, whose weight
    /// gradients read h and u2): the backward writes its temporaries there instead of taking
    /// new buffers. See `BackwardScratch`.
    let backwardScratch: BackwardScratch?

    /// `scratch`: the buffers shared by all blocks (the others are the block's own).
    init(engine: Engine, config: ViTConfig, method: FineTuningMethod, tokens t: Int, batch: Int,
         scratch: BlockScratch, plan: ActivationMemory) throws {
        let d = config.width, m = config.mlpWidth
        u1 = try scratch.u1 ?? engine.empty([t, d])
        mean1 = try engine.empty([t])
        rstd1 = try engine.empty([t])
        switch method {
        case .serial(let rank, _):
            (serialT, serialC, loraT) = (try engine.empty([t, rank]), try engine.empty([3 * d, rank]), [:])
        case .lora(let rank, _, let targets):
            (serialT, serialC) = (nil, nil)
            loraT = try Dictionary(uniqueKeysWithValues: targets.map { ($0, try engine.empty([t, rank])) })
        case .full, .probe:
            (serialT, serialC, loraT) = (nil, nil, [:])
        }
        qkv = try scratch.qkv ?? engine.empty([t, 3 * d])
        attention = try scratch.attention ?? engine.empty([t, d])
        lse = try engine.empty([batch, config.heads, config.tokens])
        xMid = try scratch.xMid ?? engine.empty([t, d])
        u2 = try scratch.u2 ?? engine.empty([t, d])
        mean2 = try engine.empty([t])
        rstd2 = try engine.empty([t])
        h = try scratch.h ?? engine.empty([t, m])
        sixteenBit = plan == .keepBF16
            ? SixteenBitActivations(qkv: try engine.empty([t, 3 * d], dtype: .bfloat16), attention: try engine.empty([t, d], dtype: .bfloat16),
                                    xMid: try engine.empty([t, d], dtype: .bfloat16), input: try engine.empty([t, d], dtype: .bfloat16))
            : nil
        switch plan {
        case .recompute: hPre = h
        // fc1's epilogue rounds it into the block's bf16 tensor and fc2.dX's widens it: no fp32 copy.
        case .keepBF16: hPre = try engine.empty([t, m], dtype: .bfloat16)
        case .keep, .selective: hPre = try engine.empty([t, m])
        }
        self.plan = plan
        widenedInput = plan == .keepBF16 ? try scratch.input ?? engine.empty([t, d]) : nil
        backwardScratch = method == .full ? nil : BackwardScratch(mlp: h, narrow: u2, mid: scratch.xMid)
    }

    /// h lent, outside full fine-tuning, to the qkv and proj products (forward, rerun and input
    /// gradients) for their packed weights and to the attention forward for K's transpose:
    /// none of them reads or writes h.
    var workspaceInH: Workspace? { backwardScratch.map { Workspace(lending: [$0.mlp]) } }

    /// keepBF16, end of the block's forward: round what the backward reads, the block's input
    /// x among it, into the block's copies.
    func storeSixteenBit(_ engine: Engine, input x: Tensor) throws {
        guard let sixteenBit else { return }
        for (value, copy) in zip(fullPrecision + [x], sixteenBit.all) { try engine.convert(value, into: copy) }
    }

    /// keepBF16, start of the block's backward: widen the copies back into the shared scratch;
    /// returns the widened input (the residual stream's buffer holds a later block's by now).
    func loadSixteenBit(_ engine: Engine) throws -> Tensor? {
        guard let sixteenBit, let widenedInput else { return nil }
        for (copy, value) in zip(sixteenBit.all, fullPrecision + [widenedInput]) { try engine.convert(copy, into: value) }
        return widenedInput
    }

    private var fullPrecision: [Tensor] { [qkv, attention, xMid] }
}

/// A block's bfloat16 copies of the tensors its backward reads (the keepBF16 plan).
struct SixteenBitActivations {
    let qkv: Tensor         // [T, 3d]
    let attention: Tensor   // [T, d]
    let xMid: Tensor        // [T, d]
    let input: Tensor       // [T, d], the block's input x
    var all: [Tensor] { [qkv, attention, xMid, input] }
}

/// Shared block scratch that a backward outside full fine-tuning may overwrite: no frozen
/// weight's gradient is computed, so h and u2 are read by no backward, and a shared xMid is
/// last read by LN2's backward. The block's backward puts there the MLP's input gradient dh
/// (over the recompute plan's pre-activation, which shares h's buffer: fc2.dX reads each
/// element of it before writing that element), LN2's and LN1's input gradients, the attention
/// output's gradient, and the attention backward's temporaries. Without it those take buffers
/// of their own, about 50 MB of ViT-B/16's peak at batch 8.
struct BackwardScratch {
    let mlp: Tensor       // [T, m]
    let narrow: Tensor    // [T, d]
    /// [T, d], when xMid is shared scratch (recompute, keep-bf16); keep's own xMid stays intact.
    let mid: Tensor?

    /// What the attention backward may use for its temporaries (after the MLP's backward).
    var attentionWorkspace: Workspace { Workspace(lending: [mlp, narrow]) }
}

/// Block intermediates shared by all blocks (nil: each block has its own).
struct BlockScratch {
    var u1: Tensor?      // [T, d]
    var qkv: Tensor?     // [T, 3d]
    var xMid: Tensor?    // [T, d]
    var u2: Tensor?      // [T, d]
    var h: Tensor?       // [T, m], also the recomputed pre-activation
    var attention: Tensor?  // [T, d]
    var input: Tensor?   // [T, d], the block's input widened from its bf16 copy (keepBF16)
}

/// What the forward keeps for the backward outside full fine-tuning (see Activations).
public enum ActivationMemory: String, Sendable, CaseIterable {
    /// Blocks keep their input, attention output and lse; the backward reruns the qkv, proj
    /// and fc1 GEMMs and two LayerNorms per block (exact: the least memory, 0.25-0.3x
    /// PyTorch's peak, for about 20% fewer images/s than selective).
    case recompute
    /// Blocks keep everything the backward reads; nothing is rerun (about 25% more images/s for
    /// 3-4x the saved activations).
    case keep
    /// As keep, no GEMM rerun, with the kept tensors (the block input among them) rounded to
    /// bfloat16 and u1 rebuilt by a LayerNorm: about 0.55x keep's saved bytes; the backward
    /// reads values within bf16's rounding of the fp32 ones, the forward and loss are exact.
    case keepBF16 = "keep-bf16"
    /// The library's and the CLI's default. Blocks keep the two GEMM outputs that cost most to
    /// rerun, qkv and fc1's pre-activation, besides their input and attention output (9d floats
    /// per token at m = 4d, against keep's 11d and recompute's 2d); the backward reruns LN1 and
    /// the proj GEMM (xMid), a twelfth of the block's forward products. Exact: gives keep's
    /// gradients bit for bit.
    case selective

    /// The block tensors a plan keeps per block in fp32 (the others live in shared scratch and
    /// the backward rebuilds them, or widens them from 16-bit copies).
    enum BlockTensor { case normalizedInput, qkv, mid }

    func keepsOwn(_ tensor: BlockTensor) -> Bool {
        switch (self, tensor) {
        case (.keep, _), (.selective, .qkv): true
        default: false
        }
    }
}
