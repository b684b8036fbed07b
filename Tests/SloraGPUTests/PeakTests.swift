import Foundation
import Testing
@testable import Tensors

/// Kernels/peak.cl: multiply-add chains that read no memory, whose rate is the device's
/// arithmetic peak. Their values are checked here in full against the host's recurrence (the
/// rate would mean nothing if the loop were folded or the instruction wrong), on every lane of
/// every chain of a small launch, and the check itself is shown to catch a wrong value.
/// Serialized for the PoCL race BF16ProductTests describes; the bf16 dot product's chain runs
/// in that suite, since it is in the bf16 GEMMs' build.
@Suite("arithmetic peak", .serialized)
struct PeakTests {
    static func checkEveryLane(_ chains: PeakChains, _ instruction: PeakInstruction, iterations: Int) {
        let items = chains.values.count / (chains.chains * chains.lanes)
        #expect(items >= 3 && chains.chains == Engine.peakChains)
        var wrong = 0
        for item in 0..<items {
            for chain in 0..<chains.chains {
                for lane in 0..<chains.lanes {
                    let expected = Engine.expectedPeakLane(instruction, item: item, chain: chain, lane: lane, iterations: iterations)
                    if chains.values[(item * chains.chains + chain) * chains.lanes + lane] != expected { wrong += 1 }
                }
            }
        }
        #expect(wrong == 0, "\(wrong) of \(chains.values.count) lanes differ from the host")
    }

    /// Every lane width: the device's own (16 on AVX-512), and the scalar chains GPUs run.
    @Test(arguments: [0, 1, 37, 100_000], [nil, 1, 2, 4, 8, 16]) func fmaChainsMatchTheHost(iterations: Int, lanes: Int?) throws {
        let engine = try makeEngine()
        let chains = try engine.runPeakChains(.fp32FMA, iterations: iterations, workItems: 5, lanes: lanes).chains
        #expect(chains.lanes == lanes ?? engine.peakGrid(.fp32FMA).lanes)
        Self.checkEveryLane(chains, .fp32FMA, iterations: iterations)
        // Every iteration moves every value (exactly, by 1/256), so a loop that ran a different
        // count cannot match, however long the chains.
        if iterations > 0 {
            #expect(Engine.expectedPeakLane(.fp32FMA, item: 1, chain: 2, lane: 0, iterations: iterations)
                != Engine.expectedPeakLane(.fp32FMA, item: 1, chain: 2, lane: 0, iterations: iterations - 1))
        }
    }

    @Test func theCheckRejectsAWrongValue() throws {
        let engine = try makeEngine()
        let chains = try engine.runPeakChains(.fp32FMA, iterations: 10, workItems: 4).chains
        try Engine.checkPeakChains(chains, .fp32FMA, iterations: 10)
        #expect(throws: PeakError.self) { try Engine.checkPeakChains(chains, .fp32FMA, iterations: 11) }
        var values = chains.values
        values[values.count - 1] += 1   // the last work-item's last chain, last lane
        let corrupted = PeakChains(values: values, chains: chains.chains, lanes: chains.lanes)
        #expect(throws: PeakError.self) { try Engine.checkPeakChains(corrupted, .fp32FMA, iterations: 10) }
    }

    /// Not a timing test: a measurement runs, checks itself and counts its FLOPs from its launch.
    @Test func aMeasurementReportsItsLaunch() throws {
        let engine = try makeEngine()
        let peak = try engine.measurePeak(.fp32FMA, minSeconds: 0)
        #expect(peak.flopsPerSecond > 0 && peak.iterations >= 256)
        #expect(peak.workItems == engine.peakGrid(.fp32FMA).workItems && peak.chains == Engine.peakChains)
    }
}
