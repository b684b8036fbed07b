import Foundation
import Reference
import Testing
@testable import Formats
@testable import Tensors
@testable import ViT

/// bf16 products (`Engine.setMatmulPrecision(.bf16)`): the panel GEMM packs both operands
/// rounded to bf16 and multiplies them with AVX512_BF16's vdpbf16ps, summing in fp32. The
/// reference rounds the operands the same way and sums in double, so the kernel is held to fp32
/// accumulation's tolerance; the fp32 product is shown to differ, so rounding did happen.
/// On a CPU without AVX512_BF16 the kernels run with the instruction emulated in fp32
/// (`-DBF16_EMULATE`), so the layout and packing are tested there too.
///
/// Serialized: PoCL 3.1 aborts (`pocl_release_dlhandle_cache: Assertion found->ref_count > 0`)
/// when two engines in one process run the same kernel build at once with different grid
/// widths: a launch reuses a cached work-group function built for a wider grid, but the release
/// decrements the first cached function with the same hash and local size, which can be the other
/// launch's. These cases are all the in-process users of the bf16 builds, at many grid sizes.
@Suite("bf16 products", .serialized)
struct BF16ProductTests {
    static let available: Bool = {
        guard let engine = try? makeEngine() else { return false }
        return (try? engine.setMatmulPrecision(.bf16)) != nil
    }()

    /// An engine with bf16 products: the instruction where the CPU has it, else the kernels'
    /// fp32 emulation of it (the same pair layout, packing and sums) on the AVX-512 tile.
    static func bf16Engine(_ override: String = "") throws -> Engine {
        let engine = try makeEngine()
        if available {
            if !override.isEmpty { engine.gemmProfile = try engine.gemmProfile.overridden(by: override) }
            try engine.setMatmulPrecision(.bf16)
        } else {
            let cpu = GemmProfile.cpu(preferredVectorWidth: 16)
            engine.gemmProfile = override.isEmpty ? cpu : try cpu.overridden(by: override)
            engine.bf16Emulation = true
            engine.matmulPrecision = .bf16
        }
        return engine
    }

    static func rounded(_ values: [Float]) -> [Float] { values.map { BFloat16($0).float } }

    @Test func availabilityFollowsTheCPUAndTheDevice() throws {
        let cpuinfo = "processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 fma\nbugs\t\t: none\n"
        #expect(Engine.hostCPUFlags(cpuinfo: cpuinfo) == ["fpu", "avx512f", "avx512_bf16", "fma"])
        #expect(Engine.hostCPUFlags(cpuinfo: "processor : 0\n") == nil && Engine.hostCPUFlags(cpuinfo: nil) == nil)
        let cpu = GemmProfile.cpu(preferredVectorWidth: 16), flags: Set<String> = ["avx512f", "avx512_bf16"]
        #expect(Engine.bf16ProductsUnavailable(deviceIsCPU: true, gemmProfile: cpu, cpuFlags: flags) == nil)
        #expect(Engine.bf16ProductsUnavailable(deviceIsCPU: true, gemmProfile: cpu, cpuFlags: ["avx512f"])?.contains("avx512_bf16") == true)
        #expect(Engine.bf16ProductsUnavailable(deviceIsCPU: true, gemmProfile: cpu, cpuFlags: nil) != nil)
        #expect(Engine.bf16ProductsUnavailable(deviceIsCPU: false, gemmProfile: cpu, cpuFlags: flags)?.contains("CPU devices") == true)
        #expect(Engine.bf16ProductsUnavailable(deviceIsCPU: true, gemmProfile: .gpu, cpuFlags: flags) != nil)
        #expect(Engine.bf16ProductsUnavailable(deviceIsCPU: true, gemmProfile: .cpu(preferredVectorWidth: 8), cpuFlags: flags)?.contains("VW=16") == true)

        // This machine: available exactly when its CPU says so; a refusal keeps fp32.
        let engine = try makeEngine()
        let hostHasIt = Engine.hostCPUFlags()?.contains("avx512_bf16") == true && engine.gemmProfile.vectorWidth == 16
            && engine.gemmProfile.tiles == nil
        #expect(Self.available == hostHasIt)
        engine.gemmProfile = try engine.gemmProfile.overridden(by: "VW=8")
        #expect(throws: MatmulPrecisionError.self) { try engine.setMatmulPrecision(.bf16) }
        #expect(engine.matmulPrecision == .fp32)
        if !Self.available { print("bf16 products: not available on this machine, their kernel tests run the emulation") }
    }

    /// A compiler that cannot build the bf16 kernels (here a kernel file that refuses to) is
    /// caught when the precision is set, with its message, and the engine stays fp32.
    @Test(.enabled(if: available)) func kernelsThatDoNotBuildAreRefusedWhenThePrecisionIsSet() throws {
        let directory = try makeTemporaryDirectory()
        let source = try KernelSources().source(named: "gemm")
        try ("#ifdef BF16_PANELS\n#error \"no bf16 here\"\n#endif\n" + source).write(to: directory.appendingPathComponent("gemm.cl"),
                                                                                       atomically: true, encoding: .utf8)
        let engine = try makeEngine(kernelOverrideDirectory: directory, cacheDirectory: nil)
        #expect {
            try engine.setMatmulPrecision(.bf16)
        } throws: { error in
            "\(error)".contains("did not build or run here") && "\(error)".contains("no bf16 here")
        }
        #expect(engine.matmulPrecision == .fp32)
        // fp32 products from the same file still work.
        let c = try engine.empty([2, 2])
        try engine.gemm(try engine.tensor([1, 2, 3, 4], shape: [2, 2]), try engine.tensor([1, 0, 0, 1], shape: [2, 2]), into: c)
        #expect(try c.download() == [1, 2, 3, 4])
    }

    /// The emulation the kernel tests fall back to computes what the instruction computes, bit
    /// for bit (away from denormals), so that its passing means something where it stands in.
    @Test(.enabled(if: available)) func theEmulationMatchesTheInstruction() throws {
        let hardware = try Self.bf16Engine()
        let emulated = try makeEngine()
        emulated.bf16Emulation = true
        emulated.matmulPrecision = .bf16
        let (m, n, k) = (37, 50, 301)
        let a = uniformValues(m * k, seed: 71), b = uniformValues(n * k, seed: 72)
        var results: [[Float]] = []
        for engine in [hardware, emulated] {
            let c = try engine.empty([m, n])
            try engine.gemm(try engine.tensor(a, shape: [m, k]), try engine.tensor(b, shape: [n, k]), into: c, transposeB: true)
            results.append(try c.download())
        }
        #expect(results[0] == results[1])
    }

    /// A profile switched to the GPU's tiled kernel after bf16 was chosen is refused, not run in fp32.
    @Test func aTiledProfileRefusesBF16() throws {
        let engine = try Self.bf16Engine()
        engine.gemmProfile = .gpu
        #expect(throws: MatmulPrecisionError.self) { try engine.gemm(try engine.zeros([20, 20]), try engine.zeros([20, 20]), into: try engine.empty([20, 20])) }
    }

    /// The arithmetic peak's bf16 chain (Kernels/gemm.cl, bf16_dot_peak; PeakTests for the rest):
    /// the instruction where the CPU has it, the kernels' fp32 emulation of it everywhere.
    @Test(arguments: [false, true]) func bf16DotChainsMatchTheHost(emulated: Bool) throws {
        let engine = try makeEngine()
        if emulated {
            engine.bf16Emulation = true
        } else if let reason = engine.bf16InstructionUnavailability {
            #expect(throws: MatmulPrecisionError.self) { try engine.runPeakChains(.bf16Dot, iterations: 4) }
            print("bf16 dot instruction not run: \(reason)")
            return
        }
        for iterations in [0, 3, 4096] {
            let chains = try engine.runPeakChains(.bf16Dot, iterations: iterations, workItems: 3).chains
            #expect(chains.lanes == 16)
            PeakTests.checkEveryLane(chains, .bf16Dot, iterations: iterations)
        }
        // Each iteration adds two products of 1/16 x 1/16 to every lane.
        #expect(Engine.expectedPeakLane(.bf16Dot, item: 0, chain: 0, lane: 0, iterations: 4096) == 32)
    }

    /// The roofline (`bench train --profile`) reads bf16 products against the bf16 dot peak: the
    /// profiler must know which FLOPs they are, in k-blocks too.
    @Test(arguments: ["", "KC=7"]) func theProfilerCountsBF16ProductsApart(override: String) throws {
        let (m, n, k) = (24, 40, 19)
        for engine in [try Self.bf16Engine(override), try makeEngine()] {
            let profiler = KernelProfiler()
            engine.profiler = profiler
            try engine.gemm(try engine.zeros([m, k]), try engine.zeros([k, n]), into: try engine.empty([m, n]))
            let entries = try profiler.summary().filter { $0.work.flops > 0 }
            let flops = entries.reduce(0) { $0 + $1.work.flops }, bf16Flops = entries.reduce(0) { $0 + $1.work.bf16Flops }
            #expect(flops == Double(2 * m * n * k))
            #expect(bf16Flops == (engine.matmulPrecision == .bf16 ? flops : 0))
        }
    }

    struct Case: CustomTestStringConvertible, Sendable {
        var m: Int, n: Int, k: Int
        var testDescription: String { "\(m)x\(n)x\(k)" }
    }

    /// Every transpose (A packed from rows and from columns; B through pack_b and
    /// pack_b_transposed), odd reductions (a zero pad at the end of the last pair), edges in both
    /// dimensions, k-blocks whose length is rounded up to even (KC=7 runs as 8).
    @Test(arguments: [Case(m: 1, n: 1, k: 1), Case(m: 7, n: 33, k: 5), Case(m: 65, n: 72, k: 40),
                                               Case(m: 197, n: 40, k: 129), Case(m: 13, n: 100, k: 300)], ["", "KC=7"])
    func everyTransposeMatchesTheRoundedReference(shape: Case, override: String) throws {
        let engine = try Self.bf16Engine(override + (override.isEmpty ? "" : ",") + "SK=0")
        let profiler = KernelProfiler()
        engine.profiler = profiler
        defer { engine.profiler = nil }
        let (m, n, k) = (shape.m, shape.n, shape.k)
        for (ta, tb) in GemmTests.transposes {
            profiler.reset()
            let a = uniformValues(m * k, seed: 41), b = uniformValues(k * n, seed: 42), c0 = uniformValues(m * n, seed: 43)
            let c = try engine.tensor(c0, shape: [m, n])
            try engine.gemm(try engine.tensor(a, shape: ta ? [k, m] : [m, k]), try engine.tensor(b, shape: tb ? [n, k] : [k, n]),
                            into: c, transposeA: ta, transposeB: tb, alpha: 0.5, beta: 0.25)
            let product = Reference.matmul(Self.rounded(a), Self.rounded(b), m: m, n: n, k: k, transposeA: ta, transposeB: tb)
            let expected = (0..<m * n).map { 0.5 * product[$0] + 0.25 * Double(c0[$0]) }
            let label = "bf16 gemm \(ta ? "T" : "N")\(tb ? "T" : "N") \(shape.testDescription) \(override)"
            let got = try c.download()
            // A's rows pack 16 k per work-item; a transposed A a pair per work-item (one row of
            // it is contiguous either way).
            let ran = Set(try profiler.summary().map(\.kernel))
            #expect(ran.contains(ta && m > 1 ? "pack_a_pairs" : "pack_a_rows") && ran.contains("gemm_packed"), "\(label): ran \(ran.sorted())")
            expectClose(got, expected, atol: GemmTests.tolerance(k: k), rtol: 1e-5, label)
            if k >= 5 {
                let exact = Reference.matmul(a, b, m: m, n: n, k: k, transposeA: ta, transposeB: tb)
                var largest = 0.0
                for index in 0..<m * n {
                    let fp32: Double = 0.5 * exact[index] + 0.25 * Double(c0[index])
                    largest = max(largest, abs(Double(got[index]) - fp32))
                }
                #expect(largest > 1e-4, "\(label): no bf16 rounding visible (largest difference from fp32 \(largest))")
            }
        }
    }

    /// Stored weights (fp16, bf16, int8) are widened and then rounded to bf16 as they pack;
    /// sums of terms (Serial LoRA's fused qkv: an odd weight reduction plus a scaled adapter term,
    /// so a pair straddles the terms), a bias and GELU epilogue with its pre-activation, and a
    /// batched product over a shared operand.
    @Test(arguments: [DType.float32, .float16, .bfloat16, .int8], ["", "KC=7"])
    func storedWeightsTermSumsEpiloguesAndBatches(storage: DType, override: String) throws {
        let engine = try Self.bf16Engine(override)
        let profiler = KernelProfiler()
        engine.profiler = profiler
        let (rows, d, r, out) = (37, 33, 4, 72)
        let u = uniformValues(rows * d, seed: 51), t = uniformValues(rows * r, seed: 52), w0 = uniformValues(out * d, seed: 53)
        let c0 = uniformValues(out * r, seed: 54), bias = uniformValues(out, seed: 55)
        let w = try engine.tensor(w0, shape: [out, d], storage: storage)
        let result = try engine.empty([rows, out]), pre = try engine.empty([rows, out])
        try engine.gemm(sum: [GemmTerm(try engine.tensor(u, shape: [rows, d]), w, transposeB: true),
                              GemmTerm(try engine.tensor(t, shape: [rows, r]), try engine.tensor(c0, shape: [out, r]), transposeB: true, scale: 0.5)],
                        into: result, bias: try engine.tensor(bias, shape: [out]), activation: .gelu, preActivation: pre)
        let stored = try w.download()
        let first = Reference.matmul(Self.rounded(u), Self.rounded(stored), m: rows, n: out, k: d, transposeB: true)
        let second = Reference.matmul(Self.rounded(t.map { 0.5 * $0 }), Self.rounded(c0), m: rows, n: out, k: r, transposeB: true)
        let wantedPre = (0..<rows * out).map { first[$0] + second[$0] + Double(bias[$0 % out]) }
        expectClose(try pre.download(), wantedPre, atol: 1e-4, rtol: 1e-5, "\(storage) two-term sum, pre-activation")
        expectClose(try result.download(), wantedPre.map { 0.5 * $0 * (1 + erf($0 / 2.0.squareRoot())) }, atol: 1e-4, rtol: 1e-5,
                    "\(storage) two-term sum, GELU")

        // Batched: [2, rows, d] x shared [d, out].
        let x = uniformValues(2 * rows * d, seed: 56)
        let batched = try engine.empty([2, rows, out])
        try engine.gemm(try engine.tensor(x, shape: [2, rows, d]), try engine.tensor(w0, shape: [d, out], storage: storage), into: batched)
        let shared = Self.rounded(try engine.tensor(w0, shape: [d, out], storage: storage).download())
        var wanted: [Double] = []
        for index in 0..<2 { wanted += Reference.matmul(Self.rounded(Array(x[index * rows * d..<(index + 1) * rows * d])), shared, m: rows, n: out, k: d) }
        expectClose(try batched.download(), wanted, atol: 1e-4, rtol: 1e-5, "\(storage) batched over a shared operand")

        // The backward form, [G | 2 g] [W ; A] with plain B operands: the second term starts at
        // an odd k, so both operands pack per k there and per pair in the first term.
        let g = uniformValues(rows * d, seed: 57), low = uniformValues(rows * r, seed: 58)
        let w2 = uniformValues(d * out, seed: 59), a2 = uniformValues(r * out, seed: 60)
        let w2Tensor = try engine.tensor(w2, shape: [d, out], storage: storage)
        let du = try engine.empty([rows, out])
        try engine.gemm(sum: [GemmTerm(try engine.tensor(g, shape: [rows, d]), w2Tensor),
                              GemmTerm(try engine.tensor(low, shape: [rows, r]), try engine.tensor(a2, shape: [r, out]), scale: 2)], into: du)
        let p1 = Reference.matmul(Self.rounded(g), Self.rounded(try w2Tensor.download()), m: rows, n: out, k: d)
        let p2 = Reference.matmul(Self.rounded(low.map { 2 * $0 }), Self.rounded(a2), m: rows, n: out, k: r)
        expectClose(try du.download(), (0..<rows * out).map { p1[$0] + p2[$0] }, atol: 1e-4, rtol: 1e-5, "\(storage) backward form")
        // Every bf16 packing kernel ran: per pair and per k, for both operands.
        let ran = Set(try profiler.summary().map(\.kernel))
        let expected: Set<String> = storage == .int8 ? ["pack_a", "pack_a_rows", "pack_b", "pack_b_pairs", "gemm_packed"]
            : ["pack_a", "pack_a_rows", "pack_b", "pack_b_pairs", "pack_b_transposed", "gemm_packed"]
        #expect(ran.isSuperset(of: expected) && !ran.contains("gemm_small_rows"), "\(storage): ran \(ran.sorted())")
        engine.profiler = nil
    }

    /// The whole model with bf16 products against PyTorch's fp32 fixtures, for every method:
    /// within 16 bf16 unit roundoffs (6.3e-2) on each whole tensor, twice the bound for
    /// bf16-stored weights (PrecisionTests), since both operands of every product round here.
    /// Measured: logits 5.8e-3 to 6.5e-3 (PyTorch's bf16 autocast: 5.7e-3, docs/BENCHMARKS.md),
    /// worst gradients 4.7e-3 (probe), 1.1e-2 (serial), 1.4e-2 (full), 3.2e-2 (LoRA's q.A).
    @Test(arguments: ["serial", "lora", "full", "probe"])
    func modelWithBF16ProductsStaysNearPyTorch(method: String) throws {
        let engine = try Self.bf16Engine()
        let adapter = try AdapterFile.load(parityFixtures.appendingPathComponent("\(method)/initial.safetensors"))
        let backbone = try CheckpointReader(file: try SafeTensorsFile(contentsOf: parityFixtures.appendingPathComponent("hf-vit/model.safetensors")),
                                            naming: .hfViT, config: adapter.config)
        let model = try ViTModel.assemble(engine, config: adapter.config, method: adapter.method, backbone: backbone.values, adapter: adapter, seed: 0)
        let expected = try SafeTensorsFile(contentsOf: parityFixtures.appendingPathComponent("\(method)/expected.safetensors"))
        let (images, labels) = try fixtureBatch(engine)
        let bound = 16 * 0x1p-8
        try model.parameters.zeroGradients()
        let logits = try model.forward(images).download()
        let logitsError = relativeError(logits, try expected.floats("logits"))
        #expect(logitsError <= bound && logitsError > 1e-5, "\(method) logits: relative error \(logitsError)")
        try model.backward(try model.loss(labels: labels).dLogits)
        for name in model.parameters.trainableNames {
            let error = relativeError(try model.parameters.gradient(name)!.download(), try expected.floats("grad/" + name))
            #expect(error <= bound, "\(method) gradient of \(name): relative error \(error)")
        }
    }
}
