import Foundation
import Reference
import Testing
@testable import Tensors

@Suite("GEMM")
struct GemmTests {
    struct Case: CustomTestStringConvertible, Sendable {
        var m: Int, n: Int, k: Int
        var testDescription: String { "\(m)x\(n)x\(k)" }
    }

    static let shapes = [Case(m: 1, n: 1, k: 1), Case(m: 3, n: 17, k: 5), Case(m: 17, n: 65, k: 33),
                         Case(m: 65, n: 197, k: 40), Case(m: 197, n: 31, k: 129), Case(m: 7, n: 48, k: 300)]
    static let transposes = [(false, false), (false, true), (true, false), (true, true)]

    /// fp32 accumulation of K products of values in [-1, 1].
    static func tolerance(k: Int) -> Double { 2e-6 * Double(k) + 1e-6 }

    @Test(arguments: shapes, [0, 1, 2, 3])
    func everyTransposeMatchesTheReference(shape: Case, variant: Int) throws {
        let engine = try makeEngine()
        let (transposeA, transposeB) = Self.transposes[variant]
        let (m, n, k) = (shape.m, shape.n, shape.k)
        let a = uniformValues(m * k, seed: 1), b = uniformValues(k * n, seed: 2), c0 = uniformValues(m * n, seed: 3)
        let aTensor = try engine.tensor(a, shape: transposeA ? [k, m] : [m, k])
        let bTensor = try engine.tensor(b, shape: transposeB ? [n, k] : [k, n])
        let c = try engine.tensor(c0, shape: [m, n])
        try engine.gemm(aTensor, bTensor, into: c, transposeA: transposeA, transposeB: transposeB, alpha: 0.5, beta: 0.25)
        let product = Reference.matmul(a, b, m: m, n: n, k: k, transposeA: transposeA, transposeB: transposeB)
        let expected = (0..<m * n).map { 0.5 * product[$0] + 0.25 * Double(c0[$0]) }
        expectClose(try c.download(), expected, atol: Self.tolerance(k: k), rtol: 1e-5,
                    "gemm \(transposeA ? "T" : "N")\(transposeB ? "T" : "N") \(shape.testDescription)")
    }

    /// Products with at most 16 columns (or rows) take the skinny kernels (the adapters'
    /// low-rank GEMMs); every transpose, both kernels, the C^T route, partial row blocks, and
    /// the panel path (SK=0) on the same inputs.
    static let skinnyShapes = [Case(m: 100, n: 8, k: 37), Case(m: 8, n: 100, k: 37), Case(m: 33, n: 16, k: 5),
                               Case(m: 16, n: 1, k: 70), Case(m: 2, n: 300, k: 9)]

    @Test(arguments: skinnyShapes, [0, 1, 2, 3])
    func skinnyProductsMatchTheReferenceAndThePanels(shape: Case, variant: Int) throws {
        let (transposeA, transposeB) = Self.transposes[variant]
        let (m, n, k) = (shape.m, shape.n, shape.k)
        let a = uniformValues(m * k, seed: 11), b = uniformValues(k * n, seed: 12), c0 = uniformValues(m * n, seed: 13)
        let product = Reference.matmul(a, b, m: m, n: n, k: k, transposeA: transposeA, transposeB: transposeB)
        let expected: [Double] = (0..<m * n).map { index in
            let scaled: Double = -1.5 * product[index]
            return scaled + 0.5 * Double(c0[index])
        }
        var results: [[Float]] = []
        for skinny in [true, false] {
            let engine = try makeEngine()
            engine.gemmProfile.skinny = skinny
            let c = try engine.tensor(c0, shape: [m, n])
            try engine.gemm(try engine.tensor(a, shape: transposeA ? [k, m] : [m, k]), try engine.tensor(b, shape: transposeB ? [n, k] : [k, n]),
                            into: c, transposeA: transposeA, transposeB: transposeB, alpha: -1.5, beta: 0.5)
            results.append(try c.download())
            expectClose(results.last!, expected, atol: Self.tolerance(k: k) * 1.5, rtol: 1e-5,
                        "\(skinny ? "skinny" : "panel") gemm \(transposeA ? "T" : "N")\(transposeB ? "T" : "N") \(shape.testDescription)")
        }
    }

    /// The LoRA adapters' form: a strided operand (columns of a qkv-like tensor) in a skinny product.
    @Test func skinnyProductOfStridedColumns() throws {
        let engine = try makeEngine()
        let (rows, width, rank) = (50, 24, 4)
        let wide = uniformValues(rows * 3 * width, seed: 14), bValues = uniformValues(width * rank, seed: 15)
        let wideTensor = try engine.tensor(wide, shape: [rows, 3 * width])
        let g = try engine.empty([rows, rank])
        try engine.gemm(sum: [GemmTerm(.strided(try .columns(width, width, of: wideTensor)), .tensor(try engine.tensor(bValues, shape: [width, rank])))],
                        into: .tensor(g))
        var middle: [Float] = []
        for row in 0..<rows {
            let start = row * 3 * width + width
            middle += wide[start..<start + width]
        }
        expectClose(try g.download(), Reference.matmul(middle, bValues, m: rows, n: rank, k: width), atol: Self.tolerance(k: width), rtol: 1e-5,
                    "skinny gemm of strided columns")
    }

    @Test func betaZeroNeverReadsC() throws {
        let engine = try makeEngine()
        let c = try engine.tensor([Float](repeating: .nan, count: 6), shape: [2, 3])
        try engine.gemm(try engine.tensor([1, 2], shape: [2, 1]), try engine.tensor([1, 2, 3], shape: [1, 3]), into: c)
        #expect(try c.download() == [1, 2, 3, 2, 4, 6])
    }

    /// C = A B^T + beta R + bias with the addend R read in place of C (a residual connection):
    /// C's old contents (NaN) never read, on the CPU kernel (vector and scalar edge columns,
    /// k-blocks: only the first reads R), the GPU tiles and a strided C; a misshapen addend is
    /// refused.
    /// An engine on this device's CPU profile (`""`), that profile with a SLORAGPU_GEMM_PROFILE
    /// override applied, or the GPU tiles (`"tiled"`).
    static func engine(_ override: String) throws -> Engine {
        let engine = try makeEngine()
        let cpu = GemmProfile.cpu(preferredVectorWidth: engine.device.info.preferredFloatVectorWidth)
        engine.gemmProfile = override == "tiled" ? .gpu : override.isEmpty ? cpu : try cpu.overridden(by: override)
        return engine
    }

    @Test(arguments: ["", "KC=16", "tiled"])
    func addendReplacesCInTheEpilogue(override: String) throws {
        let engine = try Self.engine(override)
        let (m, n, k) = (37, 45, 50)
        let a = uniformValues(m * k, seed: 40), b = uniformValues(n * k, seed: 41), r = uniformValues(m * n, seed: 42)
        let bias = uniformValues(n, seed: 43)
        let product = Reference.matmul(a, b, m: m, n: n, k: k, transposeB: true)
        let expected: [Double] = (0..<m * n).map { index in product[index] + 0.5 * Double(r[index]) + Double(bias[index % n]) }
        let c = try engine.tensor([Float](repeating: .nan, count: m * n), shape: [m, n])
        try engine.gemm(try engine.tensor(a, shape: [m, k]), try engine.tensor(b, shape: [n, k]), into: c, transposeB: true,
                        beta: 0.5, addend: try engine.tensor(r, shape: [m, n]), bias: try engine.tensor(bias, shape: [n]))
        expectClose(try c.download(), expected, atol: Self.tolerance(k: k), rtol: 1e-5, "addend \(override)")

        // C as columns 2..<2+n of a [m, n + 5] tensor; the addend with the same row stride.
        let wide = try engine.tensor([Float](repeating: .nan, count: m * (n + 5)), shape: [m, n + 5])
        var rWide = [Float](repeating: .nan, count: m * (n + 5))
        for row in 0..<m { for column in 0..<n { rWide[row * (n + 5) + column] = r[row * n + column] } }
        try engine.gemm(sum: [GemmTerm(try engine.tensor(a, shape: [m, k]), try engine.tensor(b, shape: [n, k]), transposeB: true)],
                        into: .strided(try .columns(2, n, of: wide)), beta: 0.5, addend: try engine.tensor(rWide, shape: [m, n + 5]),
                        bias: try engine.tensor(bias, shape: [n]))
        let out = try wide.download()
        let strided = (0..<m * n).map { out[($0 / n) * (n + 5) + 2 + $0 % n] }
        expectClose(strided, expected, atol: Self.tolerance(k: k), rtol: 1e-5, "strided addend \(override)")
        #expect(throws: TensorError.self) {
            try engine.gemm(try engine.tensor(a, shape: [m, k]), try engine.tensor(b, shape: [n, k]), into: c, transposeB: true,
                            beta: 1, addend: try engine.zeros([m, n + 1]))
        }
    }

    @Test(arguments: [Activation.none, .gelu, .quickGELU])
    func biasGeluAndPreActivationEpilogue(activation: Activation) throws {
        let engine = try makeEngine()
        let (m, n, k) = (37, 53, 24)
        let x = uniformValues(m * k, seed: 4, scale: 2), w = uniformValues(n * k, seed: 5), bias = uniformValues(n, seed: 6)
        let out = try engine.empty([m, n]), pre = try engine.empty([m, n])
        // A linear layer: y = act(x W^T + b), W stored [out, in].
        try engine.gemm(try engine.tensor(x, shape: [m, k]), try engine.tensor(w, shape: [n, k]), into: out,
                        transposeB: true, bias: try engine.tensor(bias, shape: [n]), activation: activation, preActivation: pre)
        let product = Reference.matmul(x, w, m: m, n: n, k: k, transposeB: true)
        let expectedPre = (0..<m * n).map { product[$0] + Double(bias[$0 % n]) }
        let expected = activation == .gelu ? expectedPre.map(Reference.gelu) : activation == .quickGELU ? expectedPre.map(Reference.quickGelu) : expectedPre
        expectClose(try pre.download(), expectedPre, atol: 1e-4, rtol: 1e-5, "pre-activation")
        expectClose(try out.download(), expected, atol: 1e-4, rtol: 1e-5, "output")
    }

    /// The fused activation backward: C = (alpha A B + beta C) * act'(pre) for GELU and quick
    /// GELU, over full and edge vectors (n = 53) and over several k-blocks (the product must be
    /// complete before the multiply).
    @Test(arguments: [24, 700], [Activation.gelu, .quickGELU])
    func geluGradientEpilogue(k: Int, activation: Activation) throws {
        let engine = try makeEngine()
        if k > 256 { engine.gemmProfile.kBlock = 256 }
        let (m, n) = (37, 53)
        let a = uniformValues(m * k, seed: 7), b = uniformValues(k * n, seed: 8)
        let pre = uniformValues(m * n, seed: 9, scale: 3), c0 = uniformValues(m * n, seed: 10)
        let c = try engine.tensor(c0, shape: [m, n])
        try engine.gemm(try engine.tensor(a, shape: [m, k]), try engine.tensor(b, shape: [k, n]), into: c, alpha: 0.5, beta: 0.25,
                        times: ActivationDerivative(activation, at: try engine.tensor(pre, shape: [m, n])))
        let product = Reference.matmul(a, b, m: m, n: n, k: k)
        let derivative = activation == .gelu ? Reference.geluDerivative : Reference.quickGeluDerivative
        let expected = (0..<m * n).map { (0.5 * product[$0] + 0.25 * Double(c0[$0])) * derivative(Double(pre[$0])) }
        expectClose(try c.download(), expected, atol: Self.tolerance(k: k) * 1.2, rtol: 1e-5, "gemm * \(activation)'(pre), k \(k)")
        #expect(throws: TensorError.self) {
            try engine.gemm(try engine.tensor(a, shape: [m, k]), try engine.tensor(b, shape: [k, n]), into: c,
                            activation: .gelu, times: ActivationDerivative(activation, at: try engine.tensor(pre, shape: [m, n])))
        }
        #expect(throws: TensorError.self) {
            try engine.gemm(try engine.tensor(a, shape: [m, k]), try engine.tensor(b, shape: [k, n]), into: c,
                            times: ActivationDerivative(.none, at: try engine.tensor(pre, shape: [m, n])))
        }
    }

    /// dh written over the pre-activation it is the derivative at (the recompute plan's MLP
    /// backward): right in one pass, with k-blocks (whose partial sums in C would overwrite
    /// the input before the last block reads it, unless the engine reads a copy) and on the
    /// GPU tiles. A derivative input that overlaps C at another offset is refused.
    @Test(arguments: ["", "KC=256", "tiled"])
    func derivativeWrittenOverItsInput(override: String) throws {
        let engine = try Self.engine(override)
        let (m, n, k) = (37, 53, 700)
        let a = uniformValues(m * k, seed: 7), b = uniformValues(k * n, seed: 8), pre = uniformValues(m * n, seed: 9, scale: 3)
        let c = try engine.tensor(pre, shape: [m, n])
        try engine.gemm(try engine.tensor(a, shape: [m, k]), try engine.tensor(b, shape: [k, n]), into: c,
                        times: ActivationDerivative(.gelu, at: c))
        let product = Reference.matmul(a, b, m: m, n: n, k: k)
        expectClose(try c.download(), (0..<m * n).map { product[$0] * Reference.geluDerivative(Double(pre[$0])) },
                    atol: Self.tolerance(k: k) * 1.2, rtol: 1e-5, "gemm * GELU'(C) into C, \(override)")
        let wide = try engine.tensor(uniformValues(2 * m * n, seed: 10) + pre, shape: [3 * m * n])
        #expect(throws: TensorError.self) {
            try engine.gemm(try engine.tensor(a, shape: [m, k]), try engine.tensor(b, shape: [k, n]), into: try wide.view(offset: 0, shape: [m, n]),
                            times: ActivationDerivative(.gelu, at: try wide.view(offset: 1, shape: [m, n])))
        }
        // Apart in one buffer is fine.
        let apart = try wide.view(offset: 0, shape: [m, n])
        try engine.gemm(try engine.tensor(a, shape: [m, k]), try engine.tensor(b, shape: [k, n]), into: apart,
                        times: ActivationDerivative(.gelu, at: try wide.view(offset: 2 * m * n, shape: [m, n])))
        #expect(try apart.download() == (try c.download()))
    }

    /// A bf16 pre-activation (keep-bf16's saved copy): written rounded to nearest even, bit for
    /// bit the fp32 pre-activation's rounding, with the output the fp32 one; and read by the
    /// derivative epilogue exactly as the same values widened to fp32, on the CPU kernel (vector
    /// and edge columns, k-blocks) and the GPU tiles.
    @Test(arguments: ["", "KC=16", "tiled"])
    func preActivationStoredInBF16(override: String) throws {
        let engine = try Self.engine(override)
        let (m, n, k) = (37, 53, 40)
        let x = try engine.tensor(uniformValues(m * k, seed: 30, scale: 2), shape: [m, k])
        let w = try engine.tensor(uniformValues(n * k, seed: 31), shape: [n, k]), bias = try engine.tensor(uniformValues(n, seed: 32), shape: [n])
        let out32 = try engine.empty([m, n]), pre32 = try engine.empty([m, n])
        try engine.gemm(x, w, into: out32, transposeB: true, bias: bias, activation: .gelu, preActivation: pre32)
        let out16 = try engine.empty([m, n]), pre16 = try engine.empty([m, n], dtype: .bfloat16)
        try engine.gemm(x, w, into: out16, transposeB: true, bias: bias, activation: .gelu, preActivation: pre16)
        #expect(try out16.download() == (try out32.download()))
        let rounded = try pre32.download().map { BFloat16($0).float }
        #expect(try pre16.download() == rounded)

        let g = try engine.tensor(uniformValues(m * k, seed: 33), shape: [m, k])
        let dh16 = try engine.empty([m, n]), dh32 = try engine.empty([m, n])
        try engine.gemm(g, w, into: dh16, transposeB: true, times: ActivationDerivative(.gelu, at: pre16))
        try engine.gemm(g, w, into: dh32, transposeB: true, times: ActivationDerivative(.gelu, at: try engine.tensor(rounded, shape: [m, n])))
        #expect(try dh16.download() == (try dh32.download()))
    }

    /// B's packed panels in a lent buffer: the same C bit for bit, one buffer fewer from the
    /// pool; a lent view that does not start its buffer is left alone (the kernels address
    /// the panels from the buffer's start), as is a buffer too small.
    @Test(arguments: ["", "tiled"])
    func packedPanelsInALentBuffer(override: String) throws {
        let engine = try Self.engine(override)
        let (m, n, k) = (37, 53, 70)
        let a = try engine.tensor(uniformValues(m * k, seed: 20), shape: [m, k])
        let b = try engine.tensor(uniformValues(n * k, seed: 21), shape: [n, k])
        func product(_ workspace: Workspace?) throws -> (values: [Float], acquired: Int) {
            let c = try engine.empty([m, n])
            let before = engine.pool.statistics
            try engine.gemm(a, b, into: c, transposeB: true, workspace: workspace)
            let after = engine.pool.statistics
            return (try c.download(), after.allocations + after.reuses - before.allocations - before.reuses)
        }
        let fresh = try product(nil)
        let lent = try product(Workspace(lending: [try engine.empty([64 * (m + n) * k])]))
        #expect(lent.values == fresh.values)
        #expect(lent.acquired == fresh.acquired - 1)
        let big = try engine.empty([64 * (m + n) * k + 1])
        for unusable in [try big.view(offset: 1, shape: [64 * (m + n) * k]), try engine.empty([n])] {
            let result = try product(Workspace(lending: [unusable]))
            #expect(result.values == fresh.values)
            #expect(result.acquired == fresh.acquired)
        }
    }

    /// The epilogues' GELU and GELU' (a rational erf, not the library's) over [-8, 8] densely,
    /// through the vector columns and the scalar edge columns (n = 40) of both the CPU and the
    /// tiled kernels: within 1e-6 (absolute, plus 1e-6 relative) of double precision, about
    /// ten fp32 roundoffs at |x| near 1.
    @Test(arguments: [false, true])
    func geluEpiloguesAreAccurateEverywhere(tiled: Bool) throws {
        let engine = try makeEngine()
        if tiled { engine.gemmProfile = .gpu }
        let (m, n) = (801, 40)
        let x = (0..<m).map { Float(-8 + 16 * Double($0) / Double(m - 1)) }
        let column = try engine.tensor(x, shape: [m, 1]), ones = try engine.tensor([Float](repeating: 1, count: n), shape: [1, n])
        let out = try engine.empty([m, n])
        try engine.gemm(column, ones, into: out, activation: .gelu)             // gelu(x_i) in every column
        let grid = (0..<m * n).map { Double(x[$0 / n]) }
        expectClose(try out.download(), grid.map(Reference.gelu), atol: 1e-6, rtol: 1e-6, "gelu, tiled \(tiled)")
        let derivative = try engine.empty([m, n])
        try engine.gemm(try engine.tensor([Float](repeating: 1, count: m), shape: [m, 1]), ones, into: derivative,
                        times: ActivationDerivative(.gelu, at: try engine.tensor(grid.map(Float.init), shape: [m, n])))
        expectClose(try derivative.download(), grid.map(Reference.geluDerivative), atol: 1e-6, rtol: 1e-6, "gelu', tiled \(tiled)")
    }

    @Test func batchedWithSharedAndBatchedOperands() throws {
        let engine = try makeEngine()
        let (batch, m, n, k) = (3, 19, 21, 11)
        let a = uniformValues(batch * m * k, seed: 7), shared = uniformValues(k * n, seed: 8), perBatch = uniformValues(batch * n * k, seed: 9)
        let aTensor = try engine.tensor(a, shape: [batch, m, k])
        let c1 = try engine.empty([batch, m, n]), c2 = try engine.empty([batch, m, n])
        try engine.gemm(aTensor, try engine.tensor(shared, shape: [k, n]), into: c1)
        try engine.gemm(aTensor, try engine.tensor(perBatch, shape: [batch, n, k]), into: c2, transposeB: true)
        var expected1: [Double] = [], expected2: [Double] = []
        for i in 0..<batch {
            let ai = Array(a[i * m * k..<(i + 1) * m * k])
            expected1 += Reference.matmul(ai, shared, m: m, n: n, k: k)
            expected2 += Reference.matmul(ai, Array(perBatch[i * n * k..<(i + 1) * n * k]), m: m, n: n, k: k, transposeB: true)
        }
        expectClose(try c1.download(), expected1, atol: 1e-4, rtol: 1e-5, "shared B")
        expectClose(try c2.download(), expected2, atol: 1e-4, rtol: 1e-5, "batched B^T")
    }

    /// The fused serial-adapter form: [u | s t] [W | C]^T in one reduction of length d + r, its
    /// backward [G | s g] [W ; A] with g a strided column slice, and LoRA's four-term backward
    /// [G | s g_q | s g_k | s g_v]. By default the first term's A is read in place and only the
    /// others are packed (one pack_a launch fewer), also with k-blocks that straddle the terms
    /// (KC=20); DA=0 packs every term. The kernels that ran are checked.
    @Test(arguments: ["", "KC=20", "DA=0"])
    func twoOperandPairsReduceTogether(override: String) throws {
        let engine = try makeEngine()
        let cpu = GemmProfile.cpu(preferredVectorWidth: engine.device.info.preferredFloatVectorWidth)
        engine.gemmProfile = override.isEmpty ? cpu : try cpu.overridden(by: override)
        let profiler = KernelProfiler()
        engine.profiler = profiler
        let inPlace = override != "DA=0"
        func expectPath(_ label: String, terms: Int) throws {
            let launches = Dictionary(try profiler.summary().map { ($0.kernel, $0.launches) }, uniquingKeysWith: +)
            #expect(launches["gemm_packed"] != nil && launches["pack_a"] == (inPlace ? terms - 1 : terms), "\(label) \(override): ran \(launches)")
            profiler.reset()
        }
        let (t, d, r, out) = (65, 48, 4, 144)
        let u = uniformValues(t * d, seed: 10), w = uniformValues(out * d, seed: 11)
        let low = uniformValues(t * r, seed: 12), cw = uniformValues(out * r, seed: 13)
        let bias = uniformValues(out, seed: 14)
        let c = try engine.empty([t, out])
        try engine.gemm(sum: [
            GemmTerm(try engine.tensor(u, shape: [t, d]), try engine.tensor(w, shape: [out, d]), transposeB: true),
            GemmTerm(try engine.tensor(low, shape: [t, r]), try engine.tensor(cw, shape: [out, r]), transposeB: true, scale: 0.5),
        ], into: c, bias: try engine.tensor(bias, shape: [out]))
        let first = Reference.matmul(u, w, m: t, n: out, k: d, transposeB: true)
        let second = Reference.matmul(low, cw, m: t, n: out, k: r, transposeB: true)
        let expected = (0..<t * out).map { first[$0] + 0.5 * second[$0] + Double(bias[$0 % out]) }
        expectClose(try c.download(), expected, atol: 1e-4, rtol: 1e-5, "A1 op(B1) + s A2 op(B2) \(override)")
        try expectPath("forward form", terms: 2)

        // The backward form with mixed transposes: [G | s g] [W ; A], reduction 3d + r, g being
        // columns 3..<3+r of a wider [t, 9] tensor (row stride 9).
        let (g, a) = (uniformValues(t * out, seed: 15), uniformValues(r * d, seed: 17))
        let wide = uniformValues(t * 9, seed: 16)
        var gLow: [Float] = []
        for row in 0..<t { gLow += wide[row * 9 + 3..<row * 9 + 3 + r] }
        let du = try engine.empty([t, d])
        try engine.gemm(sum: [
            GemmTerm(.tensor(try engine.tensor(g, shape: [t, out])), .tensor(try engine.tensor(w, shape: [out, d]))),
            GemmTerm(.strided(try .columns(3, r, of: try engine.tensor(wide, shape: [t, 9]))), .tensor(try engine.tensor(a, shape: [r, d])), scale: 2),
        ], into: .tensor(du))
        let p1: [Double] = Reference.matmul(g, w, m: t, n: d, k: out)
        let p2: [Double] = Reference.matmul(gLow, a, m: t, n: d, k: r)
        let wanted: [Double] = (0..<t * d).map { index in p1[index] + 2 * p2[index] }
        expectClose(try du.download(), wanted, atol: 1e-4, rtol: 1e-5, "backward form \(override)")
        try expectPath("backward form", terms: 2)

        // LoRA's: du = G W + s (g_q A_q + g_k A_k + g_v A_v).
        let lows = (0..<3).map { uniformValues(t * r, seed: 20 + $0) }, downs = (0..<3).map { uniformValues(r * d, seed: 30 + $0) }
        var loraTerms = [GemmTerm(try engine.tensor(g, shape: [t, out]), try engine.tensor(w, shape: [out, d]))]
        var loraWanted = p1
        for index in 0..<3 {
            loraTerms.append(GemmTerm(try engine.tensor(lows[index], shape: [t, r]), try engine.tensor(downs[index], shape: [r, d]), scale: 0.25))
            let part = Reference.matmul(lows[index], downs[index], m: t, n: d, k: r)
            for element in 0..<t * d { loraWanted[element] += 0.25 * part[element] }
        }
        try engine.gemm(sum: loraTerms, into: du)
        expectClose(try du.download(), loraWanted, atol: 1e-4, rtol: 1e-5, "four terms \(override)")
        try expectPath("four terms", terms: 4)
        engine.profiler = nil
    }

    @Test func gpuProfileIsCorrectHereToo() throws {
        // The GPU tile shape runs on PoCL as well; correctness must not depend on the profile.
        let engine = try makeEngine()
        for profile in [GemmProfile.gpu, try GemmProfile.cpu.overridden(by: "MR=3,VW=8,NV=1,UK=2,LX=2,LY=3")] {
            engine.gemmProfile = profile
            let (m, n, k) = (23, 29, 31)
            let a = uniformValues(m * k, seed: 18), b = uniformValues(n * k, seed: 19)
            let c = try engine.empty([m, n])
            try engine.gemm(try engine.tensor(a, shape: [k, m]), try engine.tensor(b, shape: [n, k]), into: c, transposeA: true, transposeB: true)
            expectClose(try c.download(), Reference.matmul(a, b, m: m, n: n, k: k, transposeA: true, transposeB: true),
                        atol: 1e-4, rtol: 1e-5, "profile \(profile)")
        }
    }

    /// The CPU tile follows the device's vector width (AVX-512 16, AVX2 8, SSE/NEON 4), so every
    /// width runs here whatever this machine's CPU: each transpose, A packed and read in place, a
    /// bias + GELU epilogue, a 16-bit B, and the ragged edges of the 6 x 2-vector tiles.
    @Test(arguments: [4, 8, 16])
    func everyCPUVectorWidthMatchesTheReference(width: Int) throws {
        #expect(GemmProfile.cpu(preferredVectorWidth: width).vectorWidth == width)
        let engine = try makeEngine()
        for directA in [true, false] {
            engine.gemmProfile = GemmProfile.cpu(preferredVectorWidth: width)
            engine.gemmProfile.directA = directA
            for shape in Self.shapes + [Case(m: 13, n: 3 * width + 5, k: 21)] {
                let (m, n, k) = (shape.m, shape.n, shape.k)
                for (transposeA, transposeB) in Self.transposes {
                    let a = uniformValues(m * k, seed: 31), b = uniformValues(k * n, seed: 32), bias = uniformValues(n, seed: 33)
                    let bTensor = try engine.tensor(b, shape: transposeB ? [n, k] : [k, n], storage: transposeB ? .float16 : .float32)
                    let c = try engine.empty([m, n])
                    try engine.gemm(try engine.tensor(a, shape: transposeA ? [k, m] : [m, k]), bTensor, into: c,
                                    transposeA: transposeA, transposeB: transposeB, bias: try engine.tensor(bias, shape: [n]), activation: .gelu)
                    let product = Reference.matmul(a, try bTensor.download(), m: m, n: n, k: k, transposeA: transposeA, transposeB: transposeB)
                    expectClose(try c.download(), (0..<m * n).map { Reference.gelu(product[$0] + Double(bias[$0 % n])) },
                                atol: Self.tolerance(k: k), rtol: 1e-5,
                                "VW=\(width) \(directA ? "direct" : "packed") A \(transposeA ? "T" : "N")\(transposeB ? "T" : "N") \(shape.testDescription)")
                }
            }
        }
        let device = engine.device
        let chosen = try GemmProfile.forDevice(device, environment: [:])
        #expect(chosen == (device.type.contains(.gpu) ? .gpu : .cpu(preferredVectorWidth: device.info.preferredFloatVectorWidth)))
    }

    /// Single products with a plain A read it in place (DIRECT_A); the packed route must agree.
    @Test func directAndPackedAAgree() throws {
        let engine = try makeEngine()
        let (m, n, k) = (67, 45, 129)
        let a = uniformValues(m * k, seed: 20), b = uniformValues(n * k, seed: 21), bias = uniformValues(n, seed: 22)
        var results: [[Float]] = []
        for profile in [GemmProfile.cpu, try GemmProfile.cpu.overridden(by: "DA=0")] {
            engine.gemmProfile = profile
            let c = try engine.empty([m, n])
            try engine.gemm(try engine.tensor(a, shape: [m, k]), try engine.tensor(b, shape: [n, k]), into: c, transposeB: true,
                            bias: try engine.tensor(bias, shape: [n]), activation: .gelu)
            results.append(try c.download())
        }
        let product = Reference.matmul(a, b, m: m, n: n, k: k, transposeB: true)
        let expected = (0..<m * n).map { Reference.gelu(product[$0] + Double(bias[$0 % n])) }
        expectClose(results[0], expected, atol: 1e-4, rtol: 1e-5, "direct A")
        expectClose(results[1], expected, atol: 1e-4, rtol: 1e-5, "packed A")
    }

    @Test func shapeErrorsNameTheOperands() throws {
        let engine = try makeEngine()
        let a = try engine.zeros([3, 5]), b = try engine.zeros([4, 7]), c = try engine.zeros([3, 7])
        let error = try #require(throws: TensorError.self) { try engine.gemm(a, b, into: c) }
        #expect(error.description.contains("op(A) is 3x5 but op(B) is 4x7"))
        #expect(throws: TensorError.self) { try engine.gemm(a, try engine.zeros([5, 7]), into: try engine.zeros([3, 6])) }
        #expect(throws: TensorError.self) { try engine.gemm(a, try engine.zeros([5, 7]), into: c, bias: try engine.zeros([6])) }
        #expect(throws: TensorError.self) { try engine.gemm(try engine.zeros([2, 3, 5]), try engine.zeros([5, 7]), into: try engine.zeros([3, 3, 7])) }
        #expect(throws: KernelProfileError.self) { try GemmProfile.cpu.overridden(by: "MR=0") }
        #expect(throws: KernelProfileError.self) { try GemmProfile.cpu.overridden(by: "VW=5") }
    }
}

@Suite("GEMM on strided matrices")
struct StridedGemmTests {
    /// LoRA on q/k/v writes and reads column slices of the qkv tensor [T, 3d] in place.
    @Test func columnSlicesAsOperandsAndOutput() throws {
        let engine = try makeEngine()
        let (t, d, r) = (37, 12, 3)
        let qkv0 = uniformValues(t * 3 * d, seed: 1), low = uniformValues(t * r, seed: 2), b = uniformValues(d * r, seed: 3)
        let qkv = try engine.tensor(qkv0, shape: [t, 3 * d])
        // qkv[:, d..<2d] += 0.5 * low B^T
        try engine.gemm(sum: [GemmTerm(try engine.tensor(low, shape: [t, r]), try engine.tensor(b, shape: [d, r]), transposeB: true)],
                        into: .strided(try .columns(d, d, of: qkv)), alpha: 0.5, beta: 1)
        let update = Reference.matmul(low, b, m: t, n: d, k: r, transposeB: true)
        var expected = qkv0.map(Double.init)
        for i in 0..<t { for j in 0..<d { expected[i * 3 * d + d + j] += 0.5 * update[i * d + j] } }
        expectClose(try qkv.download(), expected, atol: 1e-5, rtol: 1e-5, "column-slice output")

        // (qkv[:, 2d..<3d])^T low: a strided, transposed A.
        let out = try engine.empty([d, r])
        try engine.gemm(sum: [GemmTerm(.strided(try .columns(2 * d, d, of: qkv)), .tensor(try engine.tensor(low, shape: [t, r])), transposeA: true)],
                        into: .tensor(out))
        let slice = (0..<t).flatMap { i in (0..<d).map { Float(expected[i * 3 * d + 2 * d + $0]) } }
        expectClose(try out.download(), Reference.matmul(slice, low, m: d, n: r, k: t, transposeA: true), atol: 1e-4, rtol: 1e-5, "strided A^T")
        #expect(throws: TensorError.self) { try StridedMatrix.columns(2 * d, d + 1, of: qkv) }
    }
}
