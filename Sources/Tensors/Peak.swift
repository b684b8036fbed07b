import CLRuntime
import Foundation

/// The instructions whose peak rate `Engine.measurePeak` measures (Kernels/peak.cl).
public enum PeakInstruction: String, Sendable, CaseIterable {
    /// fp32 fused multiply-add: 2 FLOPs per lane.
    case fp32FMA = "fp32-fma"
    /// AVX512_BF16's vdpbf16ps (what `--matmul bf16` multiplies with): two bf16 products added
    /// to an fp32 lane, 4 FLOPs per lane.
    case bf16Dot = "bf16-dot"

    var flopsPerLane: Double { self == .fp32FMA ? 2 : 4 }
}

/// What the device's arithmetic does at most: multiply-add chains that read no memory. A
/// training step's counted FLOPs over this rate is a time no schedule can beat.
public struct PeakMeasurement: Sendable {
    public let instruction: PeakInstruction
    public let flopsPerSecond: Double
    /// The measured launch: work-items x chains x lanes, each `iterations` long.
    public let workItems: Int
    public let chains: Int
    public let lanes: Int
    public let iterations: Int
}

/// One launch's chains (`Engine.runPeakChains`): `values[(item * chains + chain) * lanes + lane]`.
struct PeakChains {
    let values: [Float]
    let chains: Int
    let lanes: Int
}

extension Engine {
    /// Enough independent chains per work-item to cover a multiply-add's latency times its
    /// issue rate (x86-64: 4 cycles, 2 pipes), few enough to stay in 16 registers.
    static let peakChains = 8
    /// fma_peak's x <- fma(x, a, b) with a = 1 and b = 1/256, passed at run time so that no
    /// compiler can drop the multiply: every value stays a multiple of 1/256 below 2^16 while
    /// `iterations` <= 2^23, so each chain ends exactly at its start + iterations / 256, and a
    /// launch that ran any other count is caught.
    static let peakFMA: (a: Float, b: Float) = (1, 1.0 / 256)
    /// bf16_dot_peak's pairs: every product is 1/256 and every sum stays a multiple of 1/256
    /// below 2^16 while `iterations` <= 2^22, so the sums are exact in any order: each chain ends
    /// at its start + iterations / 128.
    static let peakBF16Pair: UInt32 = 0x3D80_3D80   // (1/16, 1/16)

    /// The longest chains whose values stay exact (see `peakFMA`, `peakBF16Pair`).
    static func peakIterationLimit(_ instruction: PeakInstruction) -> Int { instruction == .fp32FMA ? 1 << 23 : 1 << 22 }

    /// Work-items and local size for the chains: on a GPU scalar chains in groups of up to 256, enough
    /// groups to fill every unit several times over; on a CPU a vector of the preferred width
    /// per chain and groups of one work-item, several per core.
    func peakGrid(_ instruction: PeakInstruction) -> (workItems: Int, local: Int, lanes: Int) {
        let units = max(device.info.computeUnits, 1)
        if instruction == .bf16Dot { return (units * 8, 1, 16) }
        if deviceIsCPU { return (units * 8, 1, [1, 2, 4, 8, 16].contains(device.info.preferredFloatVectorWidth) ? device.info.preferredFloatVectorWidth : 16) }
        let local = min(256, max(device.info.maxWorkGroupSize, 1))
        return (units * 8 * local, local, 1)
    }

    /// Runs the chains once and returns their final values and the seconds from the launch to
    /// its end (`iterations` at most `peakIterationLimit`, or the values stop being exact).
    /// `lanes` (fp32 only; 1, 2, 4, 8 or 16) replaces the device's choice, so tests run every width.
    func runPeakChains(_ instruction: PeakInstruction, iterations: Int, workItems: Int? = nil, lanes: Int? = nil) throws -> (chains: PeakChains, seconds: Double) {
        var grid = peakGrid(instruction)
        if let lanes, instruction == .fp32FMA { grid.lanes = lanes }
        let items = workItems.map { roundUp($0, grid.local) } ?? grid.workItems
        let out = try empty([items * Self.peakChains * grid.lanes])
        try synchronize()
        let start = DispatchTime.now().uptimeNanoseconds
        switch instruction {
        case .fp32FMA:
            let kernel = try kernels.kernel("fma_peak", in: "peak", options: "-DVW=\(grid.lanes) -DCHAINS=\(Self.peakChains)")
            try kernel.setArguments([.buffer(out.buffer), .int32(Int32(iterations)), .float(Self.peakFMA.a), .float(Self.peakFMA.b)])
            try enqueue(kernel, global: [items], local: [grid.local])
        case .bf16Dot:
            if !bf16Emulation, let reason = bf16InstructionUnavailability {
                throw MatmulPrecisionError(precision: .bf16, reason: reason)
            }
            // The bf16 GEMM's own build (Kernels/gemm.cl), so the chain runs its DOT_BF16; its
            // PEAK_CHAINS is peakChains.
            let kernel = try kernels.kernel("bf16_dot_peak", in: "gemm", options: bf16PanelOptions(.cpu(preferredVectorWidth: 16)))
            try kernel.setArguments([.buffer(out.buffer), .int32(Int32(iterations)), .uint32(Self.peakBF16Pair), .uint32(Self.peakBF16Pair)])
            try enqueue(kernel, global: [items], local: [grid.local])
        }
        try synchronize()
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9
        return (PeakChains(values: try out.download(), chains: Self.peakChains, lanes: grid.lanes), seconds)
    }

    /// What one lane of one chain must end at: its start plus what each iteration adds, exact in
    /// fp32 (see `peakFMA`, `peakBF16Pair`).
    static func expectedPeakLane(_ instruction: PeakInstruction, item: Int, chain: Int, lane: Int, iterations: Int) -> Float {
        let start = Float(item % 61) / 64 + Float(chain) / 8 + Float(lane) / 256
        let half = Float(bitPattern: (peakBF16Pair & 0xFFFF) << 16)
        let step = instruction == .fp32FMA ? peakFMA.b : 2 * half * half   // peakFMA.a is 1
        return start + Float(iterations) * step
    }

    /// Checks the first and last work-items' first and last lanes of every chain against the host.
    static func checkPeakChains(_ chains: PeakChains, _ instruction: PeakInstruction, iterations: Int) throws {
        let items = chains.values.count / (chains.chains * chains.lanes)
        for item in Set([0, items - 1]) {
            for chain in 0..<chains.chains {
                for lane in Set([0, chains.lanes - 1]) {
                    let got = chains.values[(item * chains.chains + chain) * chains.lanes + lane]
                    let expected = expectedPeakLane(instruction, item: item, chain: chain, lane: lane, iterations: iterations)
                    guard got == expected else {
                        throw PeakError.wrongResult(instruction: instruction, item: item, chain: chain, lane: lane, got: got, expected: expected)
                    }
                }
            }
        }
    }

    /// The device's peak rate for `instruction`: the chains lengthened until one launch takes a
    /// quarter of `minSeconds`, then the best of launches over `minSeconds` (at least three),
    /// the result checked against the host. Throws `MatmulPrecisionError` for bf16 where the
    /// instruction is not available.
    public func measurePeak(_ instruction: PeakInstruction, minSeconds: Double = 0.3) throws -> PeakMeasurement {
        let limit = Self.peakIterationLimit(instruction)
        var iterations = 256
        _ = try runPeakChains(instruction, iterations: iterations)   // builds the program
        var (chains, seconds) = try runPeakChains(instruction, iterations: iterations)
        while seconds < minSeconds / 4, iterations < limit {
            iterations = min(limit, iterations * max(2, min(16, Int(minSeconds / 4 / max(seconds, 1e-6)))))
            (chains, seconds) = try runPeakChains(instruction, iterations: iterations)
        }
        var best = seconds, total = seconds, runs = 1
        while total < minSeconds || runs < 3 {
            let run = try runPeakChains(instruction, iterations: iterations)
            (best, total, runs) = (min(best, run.seconds), total + run.seconds, runs + 1)
        }
        try Self.checkPeakChains(chains, instruction, iterations: iterations)
        let lanes = Double(chains.values.count)   // work-items x chains x lanes
        return PeakMeasurement(instruction: instruction, flopsPerSecond: lanes * Double(iterations) * instruction.flopsPerLane / best,
                               workItems: chains.values.count / (chains.chains * chains.lanes), chains: chains.chains, lanes: chains.lanes,
                               iterations: iterations)
    }
}

public enum PeakError: Error, CustomStringConvertible {
    case wrongResult(instruction: PeakInstruction, item: Int, chain: Int, lane: Int, got: Float, expected: Float)

    public var description: String {
        switch self {
        case let .wrongResult(instruction, item, chain, lane, got, expected):
            "the \(instruction.rawValue) peak kernel computed \(got) for work-item \(item), chain \(chain), lane \(lane); the host computes \(expected): its rate would measure nothing"
        }
    }
}
