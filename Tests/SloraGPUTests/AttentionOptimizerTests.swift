import Foundation
import Reference
import Testing
@testable import Tensors

private func doubles(_ values: [Float]) -> [Double] { values.map(Double.init) }

@Suite("Attention")
struct AttentionTests {
    struct Case: Sendable, CustomTestStringConvertible {
        var batch: Int, tokens: Int, heads: Int, headDimension: Int
        var testDescription: String { "B\(batch) N\(tokens) H\(heads) dh\(headDimension)" }
    }

    /// The qkv GEMM's output [B*N, 3W] read in place, as the model does.
    static let cases = [Case(batch: 2, tokens: 1, heads: 2, headDimension: 32), Case(batch: 2, tokens: 65, heads: 3, headDimension: 32),
                        Case(batch: 1, tokens: 197, heads: 2, headDimension: 64), Case(batch: 1, tokens: 37, heads: 1, headDimension: 128),
                        Case(batch: 1, tokens: 1025, heads: 1, headDimension: 32), Case(batch: 2, tokens: 17, heads: 2, headDimension: 40),
                        Case(batch: 1, tokens: 50, heads: 2, headDimension: 20), Case(batch: 1, tokens: 9, heads: 1, headDimension: 6)]

    /// Tiled: AVX-512's default (4 x 16, one accumulation pass), AVX2's (4 queries, 3 keys of 8
    /// floats, passes of two vectors, or one where DH / 8 is odd: dh 40), 4-float vectors, and
    /// odd tiles; each with dq from the stored dS (the default) and, with no room for dS, from
    /// recomputed scores.
    @Test(arguments: cases, [AttentionPath.rowPerItem, .block(rows: 16), .block(rows: 8), .tiled(queries: 4, keys: 4),
                             .tiled(queries: 3, keys: 3), .tiled(queries: 4, keys: 3, vectorWidth: 8), .tiled(queries: 2, keys: 2, vectorWidth: 8),
                             .tiled(queries: 1, keys: 3, vectorWidth: 4)])
    func forwardAndBackwardMatchTheReference(shape c: Case, path: AttentionPath) throws {
        try checkAgainstReference(c, path)
        if case .tiled = path { try checkAgainstReference(c, path, scoreBufferLimit: 0) }
    }

    /// SLORAGPU_ATTENTION_PATH: every path's printed form parses back to it, the variable wins
    /// over the device's default, and malformed values are refused with the variable named.
    @Test func attentionPathFromTheEnvironment() throws {
        for path in [AttentionPath.rowPerItem, .block(rows: 16), .tiled(queries: 2, keys: 1, vectorWidth: 8), .flash(rows: 128)] {
            #expect(try AttentionPath.parse(path.description) == path)
        }
        let device = try makeEngine().device
        #expect(try AttentionPath.forDevice(device, environment: ["SLORAGPU_ATTENTION_PATH": "tiled:3,1,4"]) == .tiled(queries: 3, keys: 1, vectorWidth: 4))
        #expect(try AttentionPath.forDevice(device, environment: [:]) == (device.type.contains(.gpu) ? .flash(rows: 64)
            : .cpu(preferredVectorWidth: device.info.preferredFloatVectorWidth)))
        for bad in ["tiled:2,2", "tiled:2,2,5", "tiled:0,2,8", "tiled:9,1,8", "block", "flash:48", "row:1", "tiles:2,2,8", "block:x", "block:-1", ":", "", "tiled:2,,8"] {
            let error = try #require(throws: KernelProfileError.self, "\(bad)") { try AttentionPath.parse(bad) }
            #expect(error.description.contains("SLORAGPU_ATTENTION_PATH '\(bad)'"))
        }
    }

    /// The GPU kernels on PoCL, where a work-group's barriers serialise its work-items (slow, so
    /// fewer cases): ragged last tiles (65, 197, 17, 9 tokens), one token, head dimensions 64,
    /// 40, 6 and 128 (which shrinks the tile to 32 rows), both tile heights.
    @Test(arguments: [(Case(batch: 2, tokens: 65, heads: 3, headDimension: 32), 64), (Case(batch: 1, tokens: 197, heads: 2, headDimension: 64), 64),
                      (Case(batch: 2, tokens: 17, heads: 2, headDimension: 40), 32), (Case(batch: 1, tokens: 9, heads: 1, headDimension: 6), 64),
                      (Case(batch: 2, tokens: 1, heads: 2, headDimension: 32), 32), (Case(batch: 1, tokens: 37, heads: 1, headDimension: 128), 64),
                      (Case(batch: 1, tokens: 70, heads: 2, headDimension: 20), 32)])
    func flashForwardAndBackwardMatchTheReference(shape c: Case, rows: Int) throws {
        try checkAgainstReference(c, .flash(rows: rows))
    }

    /// dK and dV from two flash kernels (`SLORAGPU_FLASH_SPLIT=1`; the default fuses them).
    @Test(arguments: [(Case(batch: 2, tokens: 65, heads: 3, headDimension: 32), 64), (Case(batch: 1, tokens: 197, heads: 2, headDimension: 64), 32),
                      (Case(batch: 1, tokens: 37, heads: 1, headDimension: 128), 64), (Case(batch: 1, tokens: 70, heads: 2, headDimension: 20), 32)])
    func splitFlashKeyGradientsMatchTheReference(shape c: Case, rows: Int) throws {
        try checkAgainstReference(c, .flash(rows: rows), splitKeys: true)
    }

    @Test func theFlashSplitVariableTakesZeroOrOne() throws {
        #expect(try Engine.flashSplit(environment: [:]) == nil && Engine.flashSplit(environment: ["SLORAGPU_FLASH_SPLIT": ""]) == nil)
        #expect(try Engine.flashSplit(environment: ["SLORAGPU_FLASH_SPLIT": "0"]) == false)
        #expect(try Engine.flashSplit(environment: ["SLORAGPU_FLASH_SPLIT": "1"]) == true)
        for bad in ["yes", "2", " 1"] {
            let error = try #require(throws: KernelProfileError.self) { try Engine.flashSplit(environment: ["SLORAGPU_FLASH_SPLIT": bad]) }
            #expect(error.description.contains("SLORAGPU_FLASH_SPLIT '\(bad)'"))
        }
    }

    private func checkAgainstReference(_ c: Case, _ path: AttentionPath, scoreBufferLimit: Int? = nil, splitKeys: Bool = false) throws {
        let engine = try makeEngine()
        engine.attentionPath = path
        engine.flashSplitBackward = splitKeys
        if let scoreBufferLimit { engine.attentionScoreBufferLimit = scoreBufferLimit }
        let profiler = KernelProfiler()
        engine.profiler = profiler
        let width = c.heads * c.headDimension, rows = c.batch * c.tokens
        let qkv = uniformValues(rows * 3 * width, seed: 1, scale: 2)
        let dO = uniformValues(rows * width, seed: 2)
        func columns(_ part: Int) -> [Float] {
            var out: [Float] = []
            for r in 0..<rows {
                let start = r * 3 * width + part * width
                out += qkv[start..<start + width]
            }
            return out
        }
        let q = columns(0), k = columns(1), v = columns(2)

        let qkvT = try engine.tensor(qkv, shape: [rows, 3 * width])
        let layout = { (column: Int) in HeadLayout(try qkvT.view(offset: column, shape: [rows * 3 * width - column]), rowStride: 3 * width) }
        let shape = AttentionShape(batch: c.batch, tokens: c.tokens, heads: c.heads, headDimension: c.headDimension)
        let o = try engine.empty([rows, width]), lse = try engine.empty([c.batch, c.heads, c.tokens])
        try engine.attentionForward(shape, q: try layout(0), k: try layout(width), v: try layout(2 * width), output: o, lse: lse)
        let expected = Reference.attention(q: doubles(q), k: doubles(k), v: doubles(v), batch: c.batch, tokens: c.tokens, heads: c.heads, headDimension: c.headDimension)
        expectClose(try o.download(), expected.o, atol: 1e-5, rtol: 1e-4, "attention output \(c.testDescription) \(path)")
        // lse is stored per (b, h, i); the reference appends in the same order.
        expectClose(try lse.download(), expected.lse, atol: 1e-5, rtol: 1e-5, "lse \(c.testDescription)")

        let dqkv = try engine.zeros([rows, 3 * width])
        let dLayout = { (column: Int) in HeadLayout(try dqkv.view(offset: column, shape: [rows * 3 * width - column]), rowStride: 3 * width) }
        try engine.attentionBackward(shape, q: try layout(0), k: try layout(width), v: try layout(2 * width), output: o, lse: lse,
                                     dOutput: try engine.tensor(dO, shape: [rows, width]),
                                     dq: try dLayout(0), dk: try dLayout(width), dv: try dLayout(2 * width))
        let grads = Reference.attentionBackward(q: doubles(q), k: doubles(k), v: doubles(v), dO: doubles(dO), batch: c.batch,
                                                tokens: c.tokens, heads: c.heads, headDimension: c.headDimension)
        var expectedQKV: [Double] = []
        for r in 0..<rows {
            expectedQKV += grads.dq[r * width..<(r + 1) * width]
            expectedQKV += grads.dk[r * width..<(r + 1) * width]
            expectedQKV += grads.dv[r * width..<(r + 1) * width]
        }
        expectClose(try dqkv.download(), expectedQKV, atol: 2e-5, rtol: 1e-3, "attention dq|dk|dv \(c.testDescription) \(path)")
        if case .flash = path.resolved(headDimension: c.headDimension) {
            let ran = Set(try profiler.summary().map(\.kernel))
            #expect(ran.isSuperset(of: ["attention_backward_dk_flash", "attention_backward_dv_flash"]) == splitKeys
                        && ran.contains("attention_backward_dkv_flash") == !splitKeys, "\(c.testDescription) \(path): ran \(ran.sorted())")
        }
        if case .tiled = path.resolved(headDimension: c.headDimension) {
            let ran = Set(try profiler.summary().map(\.kernel))
            let fromDS = scoreBufferLimit.map { $0 > 0 } ?? true
            #expect(ran.contains("attention_backward_dq_ds_tiled") == fromDS && ran.contains("attention_backward_dq_tiled") == !fromDS,
                    "\(c.testDescription) \(path): ran \(ran.sorted())")
        }
    }

    /// An engine on `path`, with dS^T stored or not, and the case's shape.
    static func engine(_ path: AttentionPath, storeScores: Bool, _ c: Case) throws -> (Engine, AttentionShape) {
        let engine = try makeEngine()
        engine.attentionPath = path
        if !storeScores { engine.attentionScoreBufferLimit = 0 }
        return (engine, AttentionShape(batch: c.batch, tokens: c.tokens, heads: c.heads, headDimension: c.headDimension))
    }

    /// The backward's temporaries (delta, dS^T, the transposed heads) carved from lent tensors:
    /// the same dq, dk, dv bit for bit as from fresh buffers, on every path that has them, and
    /// no buffer taken from the pool when the lent room suffices (one lent view starts at an
    /// odd offset: carving aligns). With room for only part, the rest is allocated.
    @Test(arguments: [AttentionPath.rowPerItem, .tiled(queries: 2, keys: 2, vectorWidth: 8), .tiled(queries: 4, keys: 4)], [true, false])
    func backwardTemporariesInLentTensors(path: AttentionPath, storeScores: Bool) throws {
        let c = Case(batch: 2, tokens: 65, heads: 3, headDimension: 32)
        let (engine, shape) = try Self.engine(path, storeScores: storeScores, c)
        let width = c.heads * c.headDimension, rows = c.batch * c.tokens
        let qkv = try engine.tensor(uniformValues(rows * 3 * width, seed: 1, scale: 2), shape: [rows, 3 * width])
        let layout = { (tensor: Tensor, column: Int) in HeadLayout(try tensor.view(offset: column, shape: [rows * 3 * width - column]), rowStride: 3 * width) }
        let o = try engine.empty([rows, width]), lse = try engine.empty([c.batch, c.heads, c.tokens])
        try engine.attentionForward(shape, q: try layout(qkv, 0), k: try layout(qkv, width), v: try layout(qkv, 2 * width), output: o, lse: lse)
        let dO = try engine.tensor(uniformValues(rows * width, seed: 2), shape: [rows, width])
        func backward(_ workspace: Workspace?) throws -> (values: [Float], acquired: Int) {
            let dqkv = try engine.zeros([rows, 3 * width])
            let before = engine.pool.statistics
            try engine.attentionBackward(shape, q: try layout(qkv, 0), k: try layout(qkv, width), v: try layout(qkv, 2 * width), output: o, lse: lse,
                                         dOutput: dO, dq: try layout(dqkv, 0), dk: try layout(dqkv, width), dv: try layout(dqkv, 2 * width),
                                         workspace: workspace)
            let after = engine.pool.statistics
            return (try dqkv.download(), after.allocations + after.reuses - before.allocations - before.reuses)
        }
        let fresh = try backward(nil)
        #expect(fresh.acquired > 0)
        let roomy = try engine.empty([16 * rows * width]), small = try engine.empty([rows * width + 7])
        let lent = try backward(Workspace(lending: [try small.view(offset: 3, shape: [rows * width]), roomy]))
        #expect(lent.values == fresh.values, "\(path)")
        #expect(lent.acquired == 0, "\(path): \(lent.acquired) buffers taken with room lent")
        let partial = try backward(Workspace(lending: [try engine.empty([c.batch * c.heads * c.tokens])]))
        #expect(partial.values == fresh.values, "\(path)")
        #expect(partial.acquired == fresh.acquired - 1, "\(path): only delta fits")
    }

    /// dq, dk, dv written over q, k, v (the model's backward): bit for bit the gradients written
    /// elsewhere, on the path that runs in place (tiled, stored dS) and on those that read
    /// copies (tiled recomputing dq, row, block, flash); also with the outputs over the inputs
    /// in another order (dq over k, dk over q), which must read copies.
    @Test(arguments: [AttentionPath.rowPerItem, .block(rows: 8), .tiled(queries: 2, keys: 2, vectorWidth: 8), .flash(rows: 32)], [true, false])
    func gradientsWrittenOverTheirInputs(path: AttentionPath, storeScores: Bool) throws {
        let c = Case(batch: 2, tokens: 33, heads: 2, headDimension: 32)
        let (engine, shape) = try Self.engine(path, storeScores: storeScores, c)
        let width = c.heads * c.headDimension, rows = c.batch * c.tokens
        let values = uniformValues(rows * 3 * width, seed: 1, scale: 2)
        let qkv = try engine.tensor(values, shape: [rows, 3 * width])
        let layout = { (tensor: Tensor, part: Int) in
            HeadLayout(try tensor.view(offset: part * width, shape: [rows * 3 * width - part * width]), rowStride: 3 * width)
        }
        let o = try engine.empty([rows, width]), lse = try engine.empty([c.batch, c.heads, c.tokens])
        try engine.attentionForward(shape, q: try layout(qkv, 0), k: try layout(qkv, 1), v: try layout(qkv, 2), output: o, lse: lse)
        let dO = try engine.tensor(uniformValues(rows * width, seed: 2), shape: [rows, width])
        let apart = try engine.zeros([rows, 3 * width])
        try engine.attentionBackward(shape, q: try layout(qkv, 0), k: try layout(qkv, 1), v: try layout(qkv, 2), output: o, lse: lse,
                                     dOutput: dO, dq: try layout(apart, 0), dk: try layout(apart, 1), dv: try layout(apart, 2))
        let expected = try apart.download()
        let inPlace = try engine.tensor(values, shape: [rows, 3 * width])
        try engine.attentionBackward(shape, q: try layout(inPlace, 0), k: try layout(inPlace, 1), v: try layout(inPlace, 2), output: o, lse: lse,
                                     dOutput: dO, dq: try layout(inPlace, 0), dk: try layout(inPlace, 1), dv: try layout(inPlace, 2))
        #expect(try inPlace.download() == expected, "\(path), dS stored: \(storeScores)")
        let swapped = try engine.tensor(values, shape: [rows, 3 * width])
        try engine.attentionBackward(shape, q: try layout(swapped, 0), k: try layout(swapped, 1), v: try layout(swapped, 2), output: o, lse: lse,
                                     dOutput: dO, dq: try layout(swapped, 1), dk: try layout(swapped, 0), dv: try layout(swapped, 2))
        var swappedExpected = expected
        for r in 0..<rows {
            for x in 0..<width {
                swappedExpected[r * 3 * width + x] = expected[r * 3 * width + width + x]
                swappedExpected[r * 3 * width + width + x] = expected[r * 3 * width + x]
            }
        }
        #expect(try swapped.download() == swappedExpected, "\(path), dS stored: \(storeScores), dq over k")
    }

    /// The flash kernels' work-groups are whole warps and their __local fits NVIDIA's 48 KiB as
    /// compiled here; tiles shrink for wide heads, and past 160 the row path takes over.
    @Test func flashKernelsStayWithinGPULimits() throws {
        let engine = try makeEngine()
        for dh in [20, 32, 40, 64, 128, 160, 256] {
            let path = AttentionPath.flash(rows: 64).resolved(headDimension: dh)
            guard case .flash(let rows) = path else {
                #expect(dh > 160 && path == .rowPerItem, "dh \(dh): \(path)")
                continue
            }
            #expect(rows % 32 == 0 && rows <= 1024)
            for name in ["attention_forward_flash", "attention_backward_dq_flash", "attention_backward_dkv_flash",
                         "attention_backward_dk_flash", "attention_backward_dv_flash"] {
                let kernel = try engine.kernels.kernel(name, in: "attention", options: path.options(headDimension: dh))
                let bytes = try kernel.localMemoryBytes(on: engine.device)
                #expect(bytes <= TiledGemm.localLimit && bytes <= AttentionPath.flashLocalBytes(rows: rows, headDimension: dh), "\(name) dh \(dh): \(bytes) bytes")
            }
        }
        #expect(AttentionPath.flash(rows: 64).resolved(headDimension: 128) == .flash(rows: 32))
    }

    /// The reference backward against central differences of the reference forward, on every
    /// coordinate of a small case.
    @Test func referenceBackwardMatchesFiniteDifferences() {
        let (batch, tokens, heads, dh) = (1, 4, 2, 3)
        let width = heads * dh, count = batch * tokens * width
        let q = doubles(uniformValues(count, seed: 3)), k = doubles(uniformValues(count, seed: 4))
        let v = doubles(uniformValues(count, seed: 5)), dO = doubles(uniformValues(count, seed: 6))
        let grads = Reference.attentionBackward(q: q, k: k, v: v, dO: dO, batch: batch, tokens: tokens, heads: heads, headDimension: dh)
        func loss(_ q: [Double], _ k: [Double], _ v: [Double]) -> Double {
            zip(Reference.attention(q: q, k: k, v: v, batch: batch, tokens: tokens, heads: heads, headDimension: dh).o, dO).reduce(0) { $0 + $1.0 * $1.1 }
        }
        for index in 0..<count {
            let numericQ = Reference.centralDifference({ loss($0, k, v) }, at: q, index: index)
            let numericK = Reference.centralDifference({ loss(q, $0, v) }, at: k, index: index)
            let numericV = Reference.centralDifference({ loss(q, k, $0) }, at: v, index: index)
            #expect(abs(grads.dq[index] - numericQ) < 1e-8)
            #expect(abs(grads.dk[index] - numericK) < 1e-8)
            #expect(abs(grads.dv[index] - numericV) < 1e-8)
        }
    }

    @Test func badLayoutsAreRejected() throws {
        let engine = try makeEngine()
        let shape = AttentionShape(batch: 2, tokens: 5, heads: 2, headDimension: 4)
        let small = HeadLayout(try engine.zeros([10, 8]), rowStride: 24)
        #expect(throws: TensorError.self) {
            try engine.attentionForward(shape, q: small, k: small, v: small, output: try engine.zeros([10, 8]), lse: try engine.zeros([2, 2, 5]))
        }
    }
}

@Suite("Optimizers")
struct OptimizerTests {
    /// Two groups: group 0 decays at the base rate, group 1 (LoRA+'s B) runs at 16x without decay.
    func groups(_ engine: Engine, _ n: Int) throws -> (ParameterGroups, [UInt8]) {
        let ids = (0..<n).map { UInt8($0 % 3 == 0 ? 1 : 0) }
        return (ParameterGroups(ids: try engine.tensor(ids, shape: [n]), learningRateScale: try engine.tensor([1, 16], shape: [2]),
                                decay: try engine.tensor([1, 0], shape: [2])), ids)
    }

    @Test func adamWMatchesTorchSemanticsOverThreeSteps() throws {
        let engine = try makeEngine()
        let n = 1003
        let (groupTable, ids) = try groups(engine, n)
        var p = doubles(uniformValues(n, seed: 1)), m = [Double](repeating: 0, count: n), v = m
        let params = try engine.tensor(p.map(Float.init), shape: [n])
        let mT = try engine.zeros([n]), vT = try engine.zeros([n])
        let settings = AdamWSettings(learningRate: 1e-2, weightDecay: 0.05)
        for step in 1...3 {
            let g = uniformValues(n, seed: UInt64(10 + step))
            let gT = try engine.tensor(g, shape: [n])
            // Clip to norm 1 on the device, as the trainer will.
            let factor = try engine.clipFactor(sumOfSquares: try engine.sumOfSquares(gT), maxNorm: 1)
            try engine.adamWStep(parameters: params, gradients: gT, firstMoment: mT, secondMoment: vT, groups: groupTable,
                                 gradientScale: factor, settings: settings, step: step)
            let norm = g.reduce(0.0) { $0 + Double($1) * Double($1) }.squareRoot()
            let clip = min(1, 1 / (norm + 1e-6))
            for i in 0..<n {
                let rate = 1e-2 * (ids[i] == 1 ? 16 : 1), decay = ids[i] == 1 ? 0 : 0.05
                p[i] = Reference.adamW(p[i], Double(g[i]) * clip, m: &m[i], v: &v[i], lr: rate, beta1: 0.9, beta2: 0.999,
                                       eps: 1e-8, weightDecay: decay, step: step)
            }
        }
        expectClose(try params.download(), p, atol: 1e-5, rtol: 1e-5, "AdamW parameters after 3 steps")
        expectClose(try mT.download(), m, atol: 1e-6, rtol: 1e-5, "AdamW m")
        expectClose(try vT.download(), v, atol: 1e-7, rtol: 1e-4, "AdamW v")
    }

    @Test func sgdWithMomentumMatchesTorchSemantics() throws {
        let engine = try makeEngine()
        let n = 515
        let (groupTable, ids) = try groups(engine, n)
        var p = doubles(uniformValues(n, seed: 2)), buffer = [Double](repeating: 0, count: n)
        let params = try engine.tensor(p.map(Float.init), shape: [n]), momentum = try engine.zeros([n])
        let one = try engine.tensor([1], shape: [1])
        for step in 1...3 {
            let g = uniformValues(n, seed: UInt64(20 + step))
            try engine.sgdStep(parameters: params, gradients: try engine.tensor(g, shape: [n]), momentum: momentum, groups: groupTable,
                               gradientScale: one, learningRate: 0.1, momentumFactor: 0.9, weightDecay: 1e-3)
            for i in 0..<n {
                let gradient = Double(g[i]) + (ids[i] == 1 ? 0 : 1e-3) * p[i]
                buffer[i] = 0.9 * buffer[i] + gradient
                p[i] -= 0.1 * (ids[i] == 1 ? 16 : 1) * buffer[i]
            }
        }
        expectClose(try params.download(), p, atol: 1e-5, rtol: 1e-5, "SGD parameters after 3 steps")
    }

    @Test func clipFactorIsOneBelowTheLimit() throws {
        let engine = try makeEngine()
        let g = try engine.tensor([0.3, 0.4], shape: [2])
        #expect(try engine.clipFactor(sumOfSquares: try engine.sumOfSquares(g), maxNorm: 1).download() == [1])
        expectClose(try engine.clipFactor(sumOfSquares: try engine.sumOfSquares(g), maxNorm: 0.25).download(), [0.25 / (0.5 + 1e-6)],
                    atol: 1e-7, rtol: 1e-6, "clip factor")
    }

    @Test func slabMismatchesAreRejected() throws {
        let engine = try makeEngine()
        let (groupTable, _) = try groups(engine, 10)
        #expect(throws: TensorError.self) {
            try engine.adamWStep(parameters: try engine.zeros([10]), gradients: try engine.zeros([9]), firstMoment: try engine.zeros([10]),
                                 secondMoment: try engine.zeros([10]), groups: groupTable, gradientScale: try engine.zeros([1]),
                                 settings: AdamWSettings(learningRate: 1), step: 1)
        }
    }
}
