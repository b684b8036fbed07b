import Foundation
import Reference
import Testing
@testable import Tensors

/// The GPU GEMM (`gemm_tiled`: `__local` staging, barriers) forced on PoCL, at the GPU
/// profile's seed tiles and at other valid tiles, over odd shapes, every transpose, the
/// epilogues, batches, strided operands and multi-term sums, against Reference.
@Suite("GEMM, work-group tiled (GPU path)")
struct TiledGemmTests {
    /// The seed, and two other valid shapes of tile and work-group (a 32 x 64 tile of 128
    /// work-items with 2-wide copies; a 64 x 32 tile of 64 work-items with scalar copies).
    static let tiles: [GemmTiles] = [
        .seed,
        GemmTiles(large: TiledGemm(mwg: 32, nwg: 64, kwg: 32, mdimc: 8, ndimc: 16, vwm: 2),
                  narrowColumns: TiledGemm(mwg: 64, nwg: 16, kwg: 8, mdimc: 16, ndimc: 4, vwm: 1),
                  narrowRows: TiledGemm(mwg: 16, nwg: 64, kwg: 8, mdimc: 2, ndimc: 16, vwm: 4)),
        GemmTiles(large: TiledGemm(mwg: 64, nwg: 32, kwg: 8, mdimc: 8, ndimc: 8, vwm: 1),
                  narrowColumns: GemmTiles.seed.narrowColumns, narrowRows: GemmTiles.seed.narrowRows),
    ]

    static func engine(_ tiles: GemmTiles, localPacking: Bool = true) throws -> Engine {
        let engine = try makeEngine()
        engine.gemmProfile = .gpu
        engine.gemmProfile.tiles = tiles
        engine.gemmProfile.localPacking = localPacking
        return engine
    }

    /// The three tile sets with the `__local` packing (the GPU default), then the second set
    /// with the CPU's row-per-work-item packing (`LP=0`).
    static func engine(configuration: Int) throws -> Engine {
        configuration < tiles.count ? try engine(tiles[configuration]) : try engine(tiles[1], localPacking: false)
    }

    static let shapes = [GemmTests.Case(m: 1, n: 1, k: 1), GemmTests.Case(m: 65, n: 197, k: 40), GemmTests.Case(m: 197, n: 65, k: 129),
                         GemmTests.Case(m: 7, n: 48, k: 300), GemmTests.Case(m: 100, n: 8, k: 37), GemmTests.Case(m: 8, n: 100, k: 37),
                         GemmTests.Case(m: 130, n: 70, k: 17)]

    @Test(arguments: 0..<4, shapes)
    func everyTransposeMatchesTheReference(tileIndex: Int, shape: GemmTests.Case) throws {
        let engine = try Self.engine(configuration: tileIndex)
        let (m, n, k) = (shape.m, shape.n, shape.k)
        let a = uniformValues(m * k, seed: 1), b = uniformValues(k * n, seed: 2), c0 = uniformValues(m * n, seed: 3)
        for (transposeA, transposeB) in GemmTests.transposes {
            let c = try engine.tensor(c0, shape: [m, n])
            try engine.gemm(try engine.tensor(a, shape: transposeA ? [k, m] : [m, k]), try engine.tensor(b, shape: transposeB ? [n, k] : [k, n]),
                            into: c, transposeA: transposeA, transposeB: transposeB, alpha: 0.5, beta: 0.25)
            let product = Reference.matmul(a, b, m: m, n: n, k: k, transposeA: transposeA, transposeB: transposeB)
            expectClose(try c.download(), (0..<m * n).map { 0.5 * product[$0] + 0.25 * Double(c0[$0]) }, atol: GemmTests.tolerance(k: k), rtol: 1e-5,
                        "tiles \(tileIndex) \(transposeA ? "T" : "N")\(transposeB ? "T" : "N") \(shape.testDescription)")
        }
    }

    @Test(arguments: 0..<4)
    func epiloguesBatchesStridesAndSums(tileIndex: Int) throws {
        let engine = try Self.engine(configuration: tileIndex)
        // Bias, GELU and the pre-activation copy (a linear layer, W stored [out, in]).
        let (m, n, k) = (65, 53, 24)
        let x = uniformValues(m * k, seed: 4, scale: 2), w = uniformValues(n * k, seed: 5), bias = uniformValues(n, seed: 6)
        let out = try engine.empty([m, n]), pre = try engine.empty([m, n])
        try engine.gemm(try engine.tensor(x, shape: [m, k]), try engine.tensor(w, shape: [n, k]), into: out, transposeB: true,
                        bias: try engine.tensor(bias, shape: [n]), activation: .gelu, preActivation: pre)
        let linear = Reference.matmul(x, w, m: m, n: n, k: k, transposeB: true).enumerated().map { $0.element + Double(bias[$0.offset % n]) }
        expectClose(try pre.download(), linear, atol: 1e-4, rtol: 1e-5, "pre-activation")
        expectClose(try out.download(), linear.map(Reference.gelu), atol: 1e-4, rtol: 1e-5, "GELU output")
        try engine.gemm(try engine.tensor(x, shape: [m, k]), try engine.tensor(w, shape: [n, k]), into: out, transposeB: true,
                        bias: try engine.tensor(bias, shape: [n]), activation: .quickGELU)
        expectClose(try out.download(), linear.map(Reference.quickGelu), atol: 1e-4, rtol: 1e-5, "quick GELU output")

        // The GELU backward epilogue with beta.
        let g = uniformValues(m * n, seed: 7), c0 = uniformValues(m * k, seed: 8), hPre = uniformValues(m * k, seed: 9, scale: 3)
        let dh = try engine.tensor(c0, shape: [m, k])
        try engine.gemm(try engine.tensor(g, shape: [m, n]), try engine.tensor(w, shape: [n, k]), into: dh, alpha: 0.5, beta: 0.25,
                        times: ActivationDerivative(.gelu, at: try engine.tensor(hPre, shape: [m, k])))
        let back = Reference.matmul(g, w, m: m, n: k, k: n)
        expectClose(try dh.download(), (0..<m * k).map { (0.5 * back[$0] + 0.25 * Double(c0[$0])) * Reference.geluDerivative(Double(hPre[$0])) },
                    atol: 1e-4, rtol: 1e-5, "GELU' epilogue")
        let dhQuick = try engine.tensor(c0, shape: [m, k])
        try engine.gemm(try engine.tensor(g, shape: [m, n]), try engine.tensor(w, shape: [n, k]), into: dhQuick, alpha: 0.5, beta: 0.25,
                        times: ActivationDerivative(.quickGELU, at: try engine.tensor(hPre, shape: [m, k])))
        expectClose(try dhQuick.download(), (0..<m * k).map { (0.5 * back[$0] + 0.25 * Double(c0[$0])) * Reference.quickGeluDerivative(Double(hPre[$0])) },
                    atol: 1e-4, rtol: 1e-5, "quick GELU' epilogue")

        // Batched A with a shared and with a batched B.
        let (batch, bm, bn, bk) = (3, 19, 21, 11)
        let a3 = uniformValues(batch * bm * bk, seed: 10), shared = uniformValues(bk * bn, seed: 11), perBatch = uniformValues(batch * bn * bk, seed: 12)
        let aTensor = try engine.tensor(a3, shape: [batch, bm, bk])
        let c1 = try engine.empty([batch, bm, bn]), c2 = try engine.empty([batch, bm, bn])
        try engine.gemm(aTensor, try engine.tensor(shared, shape: [bk, bn]), into: c1)
        try engine.gemm(aTensor, try engine.tensor(perBatch, shape: [batch, bn, bk]), into: c2, transposeB: true)
        var e1: [Double] = [], e2: [Double] = []
        for i in 0..<batch {
            let ai = Array(a3[i * bm * bk..<(i + 1) * bm * bk])
            e1 += Reference.matmul(ai, shared, m: bm, n: bn, k: bk)
            e2 += Reference.matmul(ai, Array(perBatch[i * bn * bk..<(i + 1) * bn * bk]), m: bm, n: bn, k: bk, transposeB: true)
        }
        expectClose(try c1.download(), e1, atol: 1e-4, rtol: 1e-5, "batched, shared B")
        expectClose(try c2.download(), e2, atol: 1e-4, rtol: 1e-5, "batched B^T")

        // The fused serial adapter: [u | s t] [W | C]^T, one reduction of d + r, with a bias.
        let (t, d, r, o) = (65, 48, 4, 144)
        let u = uniformValues(t * d, seed: 13), wq = uniformValues(o * d, seed: 14), low = uniformValues(t * r, seed: 15)
        let cw = uniformValues(o * r, seed: 16), qb = uniformValues(o, seed: 17)
        let qkv = try engine.empty([t, o])
        try engine.gemm(sum: [GemmTerm(try engine.tensor(u, shape: [t, d]), try engine.tensor(wq, shape: [o, d]), transposeB: true),
                              GemmTerm(try engine.tensor(low, shape: [t, r]), try engine.tensor(cw, shape: [o, r]), transposeB: true, scale: 0.5)],
                        into: qkv, bias: try engine.tensor(qb, shape: [o]))
        let p1 = Reference.matmul(u, wq, m: t, n: o, k: d, transposeB: true), p2 = Reference.matmul(low, cw, m: t, n: o, k: r, transposeB: true)
        expectClose(try qkv.download(), (0..<t * o).map { p1[$0] + 0.5 * p2[$0] + Double(qb[$0 % o]) }, atol: 1e-4, rtol: 1e-5, "two-term sum")

        // Column slices of qkv as output (LoRA's update of k) and as a transposed input.
        let qkv0 = try qkv.download(), bk2 = uniformValues(d * r, seed: 18)
        let width = o / 3
        try engine.gemm(sum: [GemmTerm(try engine.tensor(low, shape: [t, r]), try engine.tensor(Array(bk2.prefix(width * r)), shape: [width, r]), transposeB: true)],
                        into: .strided(try .columns(width, width, of: qkv)), alpha: 0.5, beta: 1)
        let update = Reference.matmul(low, Array(bk2.prefix(width * r)), m: t, n: width, k: r, transposeB: true)
        var expected = qkv0.map(Double.init)
        for i in 0..<t { for j in 0..<width { expected[i * o + width + j] += 0.5 * update[i * width + j] } }
        expectClose(try qkv.download(), expected, atol: 1e-4, rtol: 1e-5, "column-slice output")
        let sliceT = try engine.empty([width, r])
        try engine.gemm(sum: [GemmTerm(.strided(try .columns(2 * width, width, of: qkv)), .tensor(try engine.tensor(low, shape: [t, r])), transposeA: true)],
                        into: .tensor(sliceT))
        let slice = (0..<t).flatMap { i in (0..<width).map { Float(expected[i * o + 2 * width + $0]) } }
        expectClose(try sliceT.download(), Reference.matmul(slice, low, m: width, n: r, k: t, transposeA: true), atol: 1e-4, rtol: 1e-5, "strided A^T")
    }

    @Test func narrowProductsTakeNarrowTiles() {
        let tiles = GemmTiles.seed
        #expect(tiles.tile(m: 1576, n: 8) == tiles.narrowColumns)
        #expect(tiles.tile(m: 8, n: 384) == tiles.narrowRows)
        #expect(tiles.tile(m: 1576, n: 1152) == tiles.large && tiles.tile(m: 8, n: 8) == tiles.large)
    }

    static let wide = TiledGemm(mwg: 32, nwg: 64, kwg: 16, mdimc: 8, ndimc: 8, vwm: 2)

    /// The wide tile goes to large products whose grid at it has at least wideGroupsPerUnit
    /// work-groups per compute unit: on 132 units at 16 per unit, a ViT-B step's products
    /// (6304 rows) take it, a ViT-S step's (2080 rows) keep the large tile; narrow products
    /// keep theirs; an overflowing threshold never picks it.
    @Test func wideTilesGoToProductsThatFillTheDevice() throws {
        var tiles = GemmTiles.seed
        tiles.wide = Self.wide
        tiles.wideGroupsPerUnit = 16
        #expect(tiles.tile(m: 6304, n: 768, computeUnits: 132) == Self.wide)          // 197 x 12 = 2364 groups
        #expect(tiles.tile(m: 2080, n: 1536, computeUnits: 132) == tiles.large)       // 65 x 24 = 1560 < 2112
        #expect(tiles.tile(m: 2080, n: 1536, batches: 2, computeUnits: 132) == Self.wide)
        #expect(tiles.tile(m: 6304, n: 8, computeUnits: 132) == tiles.narrowColumns)
        #expect(tiles.tile(m: 8, n: 6304, computeUnits: 132) == tiles.narrowRows)
        tiles.wideGroupsPerUnit = Int.max
        #expect(tiles.tile(m: 6304, n: 768, computeUnits: 132) == tiles.large)
        tiles.wide = nil
        tiles.wideGroupsPerUnit = 1
        #expect(tiles.tile(m: 6304, n: 768, computeUnits: 132) == tiles.large)

        let profile = try GemmProfile.gpu.overridden(by: "WIDE=32x64x16x8x8x2,WGPU=8")
        #expect(profile.tiles?.wide == Self.wide && profile.tiles?.wideGroupsPerUnit == 8)
        #expect(try GemmProfile.gpu.overridden(by: "WIDE=32x64x16x8x8x2").tiles?.wideGroupsPerUnit == 16)
        for bad in ["WIDE=32x64", "WIDE=18x64x16x2x16x1", "WIDE=32x64x16x8x8x2,WGPU=0", "WIDE=axbxcxdxexf",
                    "WIDE=32x64x16x4611686018427387904x4611686018427387904x2", "WIDE=-32x-64x16x8x8x2"] {
            #expect(throws: KernelProfileError.self, "\(bad)") { try GemmProfile.gpu.overridden(by: bad) }
        }
    }

    /// How many chunks split-k cuts a reduction into: enough for every compute unit, each at
    /// least 256 long, none for a grid that already fills the device.
    @Test func splitKChunksFillTheDevice() {
        #expect(Engine.splitChunks(groups: 12, k: 6304, computeUnits: 132) == 11)       // dA = g^T u on an H200
        #expect(Engine.splitChunks(groups: 36, k: 6304, computeUnits: 132) == 4)        // P = G^T t
        #expect(Engine.splitChunks(groups: 12, k: 768, computeUnits: 132) == 3)         // short: 256 per chunk at least
        #expect(Engine.splitChunks(groups: 99, k: 768, computeUnits: 132) == 2)
        #expect(Engine.splitChunks(groups: 132, k: 6304, computeUnits: 132) == 1)
        #expect(Engine.splitChunks(groups: 1, k: 200, computeUnits: 132) == 1)
    }

    /// Split-k forced (`SPLITK=1`) on PoCL's 2 compute units: single-group products (8 x 100 on the
    /// m <= 16 tile, 70 x 9 on the n <= 16 one) over k = 601 and 1500 (a shorter last chunk),
    /// every transpose, with alpha and beta, a bias + GELU + pre-activation epilogue, and an fp16
    /// operand, against the reference; the split kernels are checked to have run.
    @Test func splitKMatchesTheReference() throws {
        let engine = try makeEngine()
        engine.gemmProfile = try GemmProfile.gpu.overridden(by: "SPLITK=1")
        let profiler = KernelProfiler()
        engine.profiler = profiler
        #expect(engine.device.info.computeUnits >= 2, "split-k needs a device of at least 2 compute units to be tested here")
        for (m, n, k) in [(8, 100, 601), (70, 9, 1500)] {
            let a = uniformValues(m * k, seed: 60), b = uniformValues(k * n, seed: 61), c0 = uniformValues(m * n, seed: 62)
            for (transposeA, transposeB) in GemmTests.transposes {
                profiler.reset()
                let c = try engine.tensor(c0, shape: [m, n])
                try engine.gemm(try engine.tensor(a, shape: transposeA ? [k, m] : [m, k]), try engine.tensor(b, shape: transposeB ? [n, k] : [k, n]),
                                into: c, transposeA: transposeA, transposeB: transposeB, alpha: 0.5, beta: 1)
                let product = Reference.matmul(a, b, m: m, n: n, k: k, transposeA: transposeA, transposeB: transposeB)
                let label = "split-k \(m)x\(n)x\(k) \(transposeA ? "T" : "N")\(transposeB ? "T" : "N")"
                expectClose(try c.download(), (0..<m * n).map { 0.5 * product[$0] + Double(c0[$0]) }, atol: GemmTests.tolerance(k: k), rtol: 1e-5, label)
                let ran = Set(try profiler.summary().map(\.kernel))
                #expect(ran.isSuperset(of: ["gemm_tiled", "gemm_split_sum", "pack_panels_a", "pack_panels_b"]), "\(label): ran \(ran.sorted())")
            }
            // The epilogue in the second pass: bias, GELU, the pre-activation; an fp16 A (a frozen weight).
            let bias = uniformValues(n, seed: 63)
            let out = try engine.empty([m, n]), pre = try engine.empty([m, n])
            let stored = try engine.tensor(a, shape: [m, k], storage: .float16)
            try engine.gemm(stored, try engine.tensor(b, shape: [k, n]), into: out, bias: try engine.tensor(bias, shape: [n]),
                            activation: .gelu, preActivation: pre)
            let linear = Reference.matmul(try stored.download(), b, m: m, n: n, k: k).enumerated().map { $0.element + Double(bias[$0.offset % n]) }
            expectClose(try pre.download(), linear, atol: GemmTests.tolerance(k: k), rtol: 1e-5, "split-k pre-activation \(m)x\(n)x\(k)")
            expectClose(try out.download(), linear.map(Reference.gelu), atol: GemmTests.tolerance(k: k), rtol: 1e-5, "split-k GELU \(m)x\(n)x\(k)")
        }
        // A grid that fills the device, or a sum of terms, is not split.
        profiler.reset()
        let (m, n, k) = (100, 130, 600)
        try engine.gemm(try engine.tensor(uniformValues(m * k, seed: 64), shape: [m, k]), try engine.tensor(uniformValues(k * n, seed: 65), shape: [k, n]),
                        into: try engine.empty([m, n]))
        #expect(!(try profiler.summary().map(\.kernel)).contains("gemm_split_sum"))
    }

    /// Products routed to the wide tile on PoCL (two compute units, one group per unit is
    /// enough) agree with the reference, in every transpose and with a sum of two terms.
    @Test func productsOnTheWideTileMatchTheReference() throws {
        let engine = try makeEngine()
        engine.gemmProfile = try GemmProfile.gpu.overridden(by: "TILED=1,MWG=64,NWG=64,KWG=16,MDIMC=8,NDIMC=16,VWM=4,WIDE=32x64x16x8x8x2,WGPU=1")
        let profiler = KernelProfiler()
        engine.profiler = profiler
        let (m, n, k) = (197, 130, 70)
        let a = uniformValues(m * k, seed: 50), b = uniformValues(k * n, seed: 51)
        for (transposeA, transposeB) in GemmTests.transposes {
            let c = try engine.empty([m, n])
            try engine.gemm(try engine.tensor(a, shape: transposeA ? [k, m] : [m, k]), try engine.tensor(b, shape: transposeB ? [n, k] : [k, n]),
                            into: c, transposeA: transposeA, transposeB: transposeB)
            expectClose(try c.download(), Reference.matmul(a, b, m: m, n: n, k: k, transposeA: transposeA, transposeB: transposeB),
                        atol: GemmTests.tolerance(k: k), rtol: 1e-5, "wide \(transposeA ? "T" : "N")\(transposeB ? "T" : "N")")
        }
        #expect(engine.gemmProfile.tiles?.tile(m: m, n: n, computeUnits: engine.device.info.computeUnits) == Self.wide)
        #expect(try profiler.summary().contains { $0.kernel == "gemm_tiled" })
    }

    /// Every tile the tests and the profile use fits NVIDIA's limits (48 KiB of __local, whole
    /// warps, at most 1024 work-items), as compiled here (CL_KERNEL_LOCAL_MEM_SIZE); tiles that
    /// break a rule are refused before anything is built.
    @Test func tilesStayWithinGPULimits() throws {
        let engine = try makeEngine()
        for tiles in Self.tiles {
            for tile in [tiles.large, tiles.narrowColumns, tiles.narrowRows, Self.wide] {
                try tile.validate()
                let kernel = try engine.kernels.kernel("gemm_tiled", in: "gemm", options: tile.buildOptions)
                let used = try kernel.localMemoryBytes(on: engine.device)
                #expect(used >= tile.localBytes && used <= TiledGemm.localLimit, "\(tile): \(used) bytes of __local")
                #expect(tile.workGroupSize % 32 == 0 && tile.workGroupSize <= 1024)
            }
        }
        let bad = [TiledGemm(mwg: 128, nwg: 128, kwg: 64, mdimc: 16, ndimc: 16, vwm: 4),  // 64 KiB of __local
                   TiledGemm(mwg: 64, nwg: 64, kwg: 16, mdimc: 4, ndimc: 4, vwm: 4),      // 16 work-items
                   TiledGemm(mwg: 64, nwg: 64, kwg: 16, mdimc: 64, ndimc: 32, vwm: 4),    // 2048 work-items
                   TiledGemm(mwg: 18, nwg: 64, kwg: 16, mdimc: 2, ndimc: 16, vwm: 1)]     // 18 rows: not a multiple of 4
        for tile in bad { #expect(throws: KernelProfileError.self, "\(tile)") { try tile.validate() } }
        #expect(throws: KernelProfileError.self) { try GemmProfile.gpu.overridden(by: "KWG=64,MWG=128,NWG=128") }
        #expect(try GemmProfile.cpu.overridden(by: "TILED=1,MWG=32").tiles?.large.mwg == 32)
        #expect(try GemmProfile.gpu.overridden(by: "TILED=0").tiles == nil)
    }
}

@Suite("GEMM tuner", .serialized)
struct GemmTunerTests {
    static let small = [("large", 70, 65, 33), ("large", 40, 24, 50), ("narrowColumns", 67, 8, 40), ("narrowRows", 8, 66, 40),
                        ("wide", 150, 140, 30)]

    @Test func tuningOnPoCLGivesAValidatedCachedEntryThatEnginesUse() throws {
        let cacheDirectory = try makeTemporaryDirectory()
        let engine = try makeEngine(cacheDirectory: cacheDirectory)
        var lines: [String] = []
        let entry = try GemmTuner.tune(engine, budget: 60, maxCandidates: 2, shapes: Self.small,
                                       attentionShape: AttentionShape(batch: 1, tokens: 33, heads: 2, headDimension: 16),
                                       reductionRows: 197, reductionWidth: 65) { lines.append($0) }
        // A class named twice is checked and timed on both of its products.
        #expect(lines.contains { $0.hasPrefix("large (70x65x33 + 40x24x50): ") }, "\(lines)")
        #expect(entry.classes["large"]?.shape == [70, 65, 33])
        #expect(GemmTuner.reductionSizes.contains(entry.reductionSize ?? 0))
        #expect(entry.classes.count == 4 && entry.classes.values.allSatisfy { $0.tried >= 1 && $0.rejected == 0 && $0.gflops > 0 })
        // The wide class times the large tile and larger ones; one is kept only if it beat it.
        #expect(entry.classes["wide"]?.tried == 3, "\(lines)")
        #expect(lines.contains { $0.hasPrefix("wide: ") }, "\(lines)")
        if let wide = entry.tiles.wide {
            #expect(wide.mwg * wide.nwg > entry.tiles.large.mwg * entry.tiles.large.nwg && entry.tiles.wideGroupsPerUnit == GemmTuner.wideGroupsPerUnit)
            #expect(lines.contains { $0.hasPrefix("wide: ") && $0.contains("faster") })
        } else {
            #expect(entry.tiles.wideGroupsPerUnit == nil && lines.contains("wide: no larger tile beat the large one by 5%; none kept"))
        }
        #expect([32, 64, 128].contains(entry.attentionRows ?? 0))
        for tile in [entry.tiles.large, entry.tiles.narrowColumns, entry.tiles.narrowRows] { try tile.validate() }
        let cache = try #require(engine.tuningCache)
        try cache.store(entry)
        #expect(cache.load(try TuningKey(engine: engine), device: engine.device) == .hit(entry))
        // A GPU-profile engine on this device picks the entry up.
        let second = try makeEngine(cacheDirectory: cacheDirectory)
        second.gemmProfile = .gpu
        second.attentionPath = .flash(rows: 32)
        second.reductionPath = .workGroup(size: 1024)
        #expect(second.applyCachedTuning(cache: second.tuningCache) == .hit(entry))
        #expect(second.gemmProfile.tiles == entry.tiles && second.attentionPath == .flash(rows: entry.attentionRows!))
        #expect(second.reductionPath == .workGroup(size: entry.reductionSize!))
        // The search space honours the limits.
        for name in ["large", "narrowColumns", "narrowRows"] {
            let space = GemmTuner.candidates(for: name, device: engine.device)
            #expect(space.count >= 20 && space.count <= 400, "\(name): \(space.count) candidates")
            #expect(space.allSatisfy { $0.localBytes <= TiledGemm.localLimit && $0.workGroupSize % 32 == 0 })
        }
    }

    @Test func theSearchOrderSamplesTheWholeSpaceEarly() throws {
        let engine = try makeEngine(cacheDirectory: try makeTemporaryDirectory())
        let space = GemmTuner.candidates(for: "large", device: engine.device)
        #expect(space.first == GemmTiles.seed.large && Set(space).count == space.count)
        #expect(space == GemmTuner.candidates(for: "large", device: engine.device), "the order is fixed")
        // A budget that ends after 30 candidates has seen every value of every tunable.
        let early = space.prefix(30)
        #expect(Set(early.map(\.mwg)) == [32, 64, 128] && Set(early.map(\.nwg)) == [32, 64, 128])
        #expect(Set(early.map(\.kwg)) == [8, 16, 32] && Set(early.map(\.vwm)) == [2, 4])
        for name in ["narrowColumns", "narrowRows"] {
            let narrow = GemmTuner.candidates(for: name, device: engine.device).prefix(20)
            #expect(Set(narrow.map { max($0.mwg, $0.nwg) }) == [64, 128, 256], "\(name)")
        }
        #expect(GemmTuner.shuffled(Array(0..<100)).sorted() == Array(0..<100) && GemmTuner.shuffled(Array(0..<100)) != Array(0..<100))
    }

    @Test func damagedOrForeignEntriesAreNeverTrusted() throws {
        let engine = try makeEngine(cacheDirectory: try makeTemporaryDirectory())
        let key = try TuningKey(engine: engine)
        var entry = TuningEntry(key: key, tiles: .seed, classes: [:], attentionRows: 64, version: SloraGPU.version, date: "now")
        let encode = { (entry: TuningEntry) in try JSONEncoder().encode(entry) }
        #expect(TuningCache.verify(try encode(entry), key: key, device: engine.device, name: "e") == .hit(entry))
        #expect(TuningCache.verify(Data("{\"key\":".utf8), key: key, device: engine.device, name: "e") == .invalid("e is not a tuning entry"))
        var other = entry
        other.key.driver = "another driver"
        guard case .invalid = TuningCache.verify(try encode(other), key: key, device: engine.device, name: "e") else { Issue.record("foreign key accepted"); return }
        var badRows = entry
        badRows.attentionRows = 48
        guard case .invalid = TuningCache.verify(try encode(badRows), key: key, device: engine.device, name: "e") else { Issue.record("flash rows 48 accepted"); return }
        var badReduction = entry
        badReduction.reductionSize = 96
        guard case .invalid = TuningCache.verify(try encode(badReduction), key: key, device: engine.device, name: "e") else { Issue.record("reduction work-group 96 accepted"); return }
        entry.tiles.large = TiledGemm(mwg: 128, nwg: 128, kwg: 64, mdimc: 16, ndimc: 16, vwm: 4)  // 64 KiB of __local
        guard case .invalid = TuningCache.verify(try encode(entry), key: key, device: engine.device, name: "e") else { Issue.record("oversized tile accepted"); return }
    }

    /// Committed entries (Kernels/tuning/*.json) match by platform, device and GEMM source;
    /// another driver is accepted, another GEMM source or an over-limit tile is not.
    @Test func committedEntriesMatchTheDeviceAndKernelSource() throws {
        let engine = try makeEngine(cacheDirectory: try makeTemporaryDirectory())
        let key = try TuningKey(engine: engine)
        var entry = TuningEntry(key: key, tiles: .seed, classes: [:], attentionRows: 32, version: "0", date: "d")
        entry.key.driver = "an older driver"
        let text = { (entry: TuningEntry) in String(decoding: try JSONEncoder().encode(entry), as: UTF8.self) }
        #expect(TuningCache.committed(for: key, device: engine.device, entries: ["a": try text(entry)]) == entry)
        var stale = entry
        stale.key.gemmSource = "another source"
        var oversized = entry
        oversized.tiles.large = TiledGemm(mwg: 128, nwg: 128, kwg: 64, mdimc: 16, ndimc: 16, vwm: 4)
        var wideWithoutThreshold = entry
        wideWithoutThreshold.tiles.wide = TiledGemmTests.wide
        #expect(TuningCache.committed(for: key, device: engine.device, entries: ["a": try text(stale), "b": try text(oversized), "c": "{",
                                                                                 "d": try text(wideWithoutThreshold)]) == nil)
        wideWithoutThreshold.tiles.wideGroupsPerUnit = 16
        #expect(TuningCache.committed(for: key, device: engine.device, entries: ["a": try text(wideWithoutThreshold)])?.tiles.wide == TiledGemmTests.wide)
        #expect(EmbeddedKernelSources.tuning.values.allSatisfy { (try? JSONDecoder().decode(TuningEntry.self, from: Data($0.utf8))) != nil })
    }

    @Test func theTuneCommandRetunesADamagedEntry() throws {
        let cache = try makeTemporaryDirectory()
        let environment = ["SLORAGPU_CACHE_DIR": cache.path]
        let first = try runSloragpu(["tune", "--small", "--budget", "30", "--max-candidates", "1"], environment: environment)
        #expect(first.status == 0, "\(first.standardError)")
        #expect(first.standardOutput.contains("cached: "))
        let again = try runSloragpu(["tune", "--small", "--budget", "30", "--max-candidates", "1"], environment: environment)
        #expect(again.standardOutput.contains("a tuned entry is cached"))
        for file in try FileManager.default.contentsOfDirectory(at: cache.appendingPathComponent("tuning"), includingPropertiesForKeys: nil) {
            try Data("{ damaged".utf8).write(to: file)
        }
        let repaired = try runSloragpu(["tune", "--small", "--budget", "30", "--max-candidates", "1"], environment: environment)
        #expect(repaired.status == 0 && repaired.standardOutput.contains("re-tuning: the cached entry cannot be used"), "\(repaired.standardOutput)")
        #expect(repaired.standardOutput.contains("cached: "))
    }
}

/// scripts/device-check.sh in its dry mode (PoCL, toy sizes, the GPU kernels forced), so the
/// script a GPU machine runs cannot rot.
@Suite("Device check, dry run")
struct DeviceCheckTests {
    @Test func theDryRunRunsEveryStepAndWritesTheReport() throws {
        let root = parityFixtures.deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let out = try makeTemporaryDirectory()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/bin/bash")
        process.arguments = [root.appendingPathComponent("scripts/device-check.sh").path, "--dry-run", "--out", out.path]
        var environment = ProcessInfo.processInfo.environment
        environment["SLORAGPU_BIN"] = try sloragpuExecutable().path
        process.environment = environment
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        process.waitUntilExit()
        let report = try String(contentsOf: out.appendingPathComponent("device-check-report.md"), encoding: .utf8)
        #expect(process.terminationStatus == 0, "\(report)")
        for step in ["probe", "selftest", "tune", "bench-gemm", "peak", "bench-train-vit-ti", "profile-vit-ti"] {
            #expect(report.contains("## \(step) (exit 0,"), "\(step) missing or failed")
        }
        #expect(report.contains("selftest: all checks passed") && report.contains("## Summary"))
        #expect(report.contains("adapter share of the step"), "the profile step prints the kernel table")
        #expect(report.contains("fp32-fma peak") && report.contains("roofline: "), "the peak and the profile's roofline")
        #expect(FileManager.default.fileExists(atPath: out.appendingPathComponent("tuning.json").path))
    }
}
