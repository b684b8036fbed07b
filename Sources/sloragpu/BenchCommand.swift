import ArgumentParser
import Cluster
import Foundation
import Tensors
import Formats
import Optimizers
import Training
import ViT

struct BenchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Benchmarks. Compare against a reference measured in the same run (see scripts/).",
        subcommands: [GemmBench.self, AttentionBench.self, TrainBench.self, PeakBench.self]
    )
}

/// One GEMM shape: op(A) is m x k, op(B) is k x n.
struct GemmShape: Sendable {
    var name: String
    var m: Int, n: Int, k: Int
    var transposeA: Bool, transposeB: Bool

    var flops: Double { 2 * Double(m) * Double(n) * Double(k) }

    /// The GEMMs of one training step of ViT-S/14 at 112 px, batch 32 (T = 32 x 65 = 2080
    /// tokens, d = 384, MLP 1536, 2048 patches of 3 x 14 x 14 = 588), plus squares.
    static let vitSmallStep: [GemmShape] = {
        let t = 2080, d = 384, hidden = 1536
        let layers: [(String, Int, Int, Int)] = [("qkv", t, 3 * d, d), ("proj", t, d, d), ("fc1", t, hidden, d), ("fc2", t, d, hidden)]
        var shapes: [GemmShape] = []
        // Forward: Y = X W^T, W stored [out, in].
        for (name, m, n, k) in layers { shapes.append(GemmShape(name: "fwd \(name)", m: m, n: n, k: k, transposeA: false, transposeB: true)) }
        shapes.append(GemmShape(name: "fwd patch", m: 2048, n: d, k: 588, transposeA: false, transposeB: true))
        // Input gradients: dX = dY W.
        for (name, m, n, k) in layers { shapes.append(GemmShape(name: "dX \(name)", m: m, n: k, k: n, transposeA: false, transposeB: false)) }
        // Weight gradients (full fine-tuning): dW = dY^T X.
        for (name, m, n, k) in layers { shapes.append(GemmShape(name: "dW \(name)", m: n, n: k, k: m, transposeA: true, transposeB: false)) }
        shapes.append(GemmShape(name: "dW patch", m: d, n: 588, k: 2048, transposeA: true, transposeB: false))
        for size in [512, 1024, 2048] {
            shapes.append(GemmShape(name: "square \(size)", m: size, n: size, k: size, transposeA: false, transposeB: false))
        }
        return shapes
    }()
}

struct GemmBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "gemm",
        abstract: "GFLOP/s of the GEMMs of one ViT-S/14 training step (112 px, batch 32) and of square sizes.",
        discussion: "scripts/bench_gemm.py runs this and numpy (OpenBLAS) on the same shapes in one run and prints the ratios."
    )

    @OptionGroup var deviceOption: DeviceOption

    @Flag(help: "One JSON object per shape (name, m, n, k, transpose_a, transpose_b, seconds, gflops).")
    var json = false

    @Option(help: "Minimum measuring time per shape, in seconds.")
    var minSeconds = 0.5

    @Option(help: "Only shapes whose name contains this text.")
    var filter: String?

    @Flag(help: "Also print device time per kernel (packing vs. the micro-kernel) for each shape.")
    var profile = false

    @OptionGroup var matmul: MatmulOption

    func validate() throws { try validateMinSeconds(minSeconds) }

    func run() throws {
        let engine = try Engine(deviceSpec: deviceOption.device)
        try matmul.apply(to: engine)
        if !json { print("device: \(engine.device.name)   gemm profile: \(engine.gemmProfile)   products: \(matmul.precision.rawValue)") }
        for shape in GemmShape.vitSmallStep where filter.map({ shape.name.contains($0) }) ?? true {
            let a = try engine.empty(shape.transposeA ? [shape.k, shape.m] : [shape.m, shape.k])
            let b = try engine.empty(shape.transposeB ? [shape.n, shape.k] : [shape.k, shape.n])
            let c = try engine.empty([shape.m, shape.n])
            let aValues = benchValues(a.count, seed: 1), bValues = benchValues(b.count, seed: 2)
            try a.upload(aValues)
            try b.upload(bValues)
            let seconds = try measure(minSeconds: minSeconds) {
                try engine.gemm(a, b, into: c, transposeA: shape.transposeA, transposeB: shape.transposeB)
                try engine.synchronize()
            }
            try verify(shape, aValues, bValues, try c.download(), precision: matmul.precision)
            if profile {
                let profiler = KernelProfiler()
                engine.profiler = profiler
                try engine.gemm(a, b, into: c, transposeA: shape.transposeA, transposeB: shape.transposeB)
                let entries = try profiler.summary()
                engine.profiler = nil
                let parts = entries.map { String(format: "%@ %.3f ms", $0.kernel, $0.seconds * 1e3) }
                if !json { print("    " + parts.joined(separator: ", ")) }
            }
            let gflops = shape.flops / seconds / 1e9
            if json {
                let object: [String: Any] = [
                    "name": shape.name, "m": shape.m, "n": shape.n, "k": shape.k,
                    "transpose_a": shape.transposeA, "transpose_b": shape.transposeB,
                    "seconds": seconds, "gflops": gflops,
                ]
                print(String(decoding: try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]), as: UTF8.self))
            } else {
                let op = "\(shape.transposeA ? "T" : "N")\(shape.transposeB ? "T" : "N")"
                print(String(format: "%-12@ %5d x %5d x %5d  %@  %9.3f ms  %7.1f GFLOP/s", shape.name, shape.m, shape.n, shape.k, op, seconds * 1e3, gflops))
            }
        }
    }
}

struct AttentionBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "attention",
        abstract: "Attention forward + backward time: ViT-S (batch 32, 6 heads of 64) at N = 65 and 257 tokens, ViT-B/16 at 224 px (batch 8, 12 heads, N = 197).",
        discussion: """
            FLOP counts are the standard ones: forward 4 B H N^2 dh (QK^T and PV), backward 8 B H N^2 dh \
            (dV, dP, dQ, dK); the flash backward also recomputes the scores, which is not counted. The \
            same run measures a 1024^3 GEMM as the device's practical ceiling, and on a CPU the block \
            kernels as the reference for the tiled ones (the CPU default).
            """
    )

    @OptionGroup var deviceOption: DeviceOption

    @Option(help: "Minimum measuring time per case, in seconds.")
    var minSeconds = 0.5

    func validate() throws { try validateMinSeconds(minSeconds) }

    func run() throws {
        let engine = try Engine(deviceSpec: deviceOption.device)
        let ceiling = try DeviceCeilings.measureGemm(engine, minSeconds: minSeconds) / 1e9
        print(String(format: "device: %@   GEMM 1024^3 ceiling: %.1f GFLOP/s", engine.device.name, ceiling))
        let defaultPath = engine.attentionPath
        let paths = defaultPath == .block(rows: 16) || defaultPath == .rowPerItem ? [defaultPath] : [defaultPath, .block(rows: 16)]
        for (batch, tokens, headCount) in [(32, 65, 6), (32, 257, 6), (8, 197, 12)] {
            let shape = AttentionShape(batch: batch, tokens: tokens, heads: headCount, headDimension: 64)
            let rows = shape.batch * tokens, width = shape.width
            let qkv = try engine.empty([rows, 3 * width]), dqkv = try engine.empty([rows, 3 * width])
            try qkv.upload(benchValues(qkv.count, seed: 4))
            let dO = try engine.empty([rows, width])
            try dO.upload(benchValues(dO.count, seed: 5))
            func heads(_ tensor: Tensor, _ part: Int) throws -> HeadLayout {
                HeadLayout(try tensor.view(offset: part * width, shape: [tensor.count - part * width]), rowStride: 3 * width)
            }
            let o = try engine.empty([rows, width]), lse = try engine.empty([shape.batch, shape.heads, tokens])
            var times: [(forward: Double, backward: Double)] = []
            for path in paths {
                engine.attentionPath = path
                let forward = try measure(minSeconds: minSeconds) {
                    try engine.attentionForward(shape, q: try heads(qkv, 0), k: try heads(qkv, 1), v: try heads(qkv, 2), output: o, lse: lse)
                    try engine.synchronize()
                }
                let backward = try measure(minSeconds: minSeconds) {
                    try engine.attentionBackward(shape, q: try heads(qkv, 0), k: try heads(qkv, 1), v: try heads(qkv, 2), output: o, lse: lse,
                                                 dOutput: dO, dq: try heads(dqkv, 0), dk: try heads(dqkv, 1), dv: try heads(dqkv, 2))
                    try engine.synchronize()
                }
                times.append((forward, backward))
                let unit = Double(shape.batch * shape.heads) * Double(tokens * tokens) * Double(shape.headDimension)
                let (forwardRate, backwardRate) = (4 * unit / forward / 1e9, 8 * unit / backward / 1e9)
                print(String(format: "B=%2d H=%2d N=%4d %@  forward %8.3f ms  %6.1f GFLOP/s (%.2f of GEMM)   backward %8.3f ms  %6.1f GFLOP/s (%.2f of GEMM)",
                             batch, headCount, tokens, "\(path)".padding(toLength: 30, withPad: " ", startingAt: 0), forward * 1e3, forwardRate,
                             forwardRate / ceiling, backward * 1e3, backwardRate, backwardRate / ceiling))
            }
            if times.count == 2 {
                print(String(format: "    %@ against %@: forward %.2fx, backward %.2fx, both %.2fx", "\(paths[0])", "\(paths[1])",
                             times[1].forward / times[0].forward, times[1].backward / times[0].backward,
                             (times[1].forward + times[1].backward) / (times[0].forward + times[0].backward)))
            }
        }
        engine.attentionPath = defaultPath
    }
}

struct TrainBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "train",
        abstract: "Training-step throughput (images/s) and peak memory for a model, method and batch (random weights).",
        discussion: "scripts/bench_train.py runs this and PyTorch CPU on the same config in the same run and prints the ratio. Under mpirun -np N, --batch is the global batch: every rank computes batch/N images per step and the step includes the gradient all-reduce; rank 0 reports each rank's images/s, the global rate and the all-reduce's bytes and time."
    )

    @OptionGroup var deviceOption: DeviceOption

    @Option(help: "Preset: vit-ti, vit-s, vit-b, vit-l.")
    var model = "vit-s"
    @Option(help: "Patch size.")
    var patch = 14
    @Option(help: "Image size in pixels.")
    var imageSize = 112
    @Option(help: "Batch size.")
    var batch = 32
    @Option(help: "serial, lora, full or probe.")
    var method = "serial"
    @Option(help: "Adapter rank.")
    var rank = 8
    @Option(help: "LoRA targets, a comma list of q, k, v, o.")
    var targets = "q,k,v,o"
    @Option(help: "Timed steps (after warm-up steps).")
    var steps = 5
    @Option(help: "Untimed warm-up steps.")
    var warmup = 2
    @Option(help: "The activation plan: selective (train's default), recompute, keep-bf16 or keep (see train --help).")
    var activations: ActivationMemory = .selective
    @OptionGroup var weights: WeightStorageOption
    @OptionGroup var matmul: MatmulOption
    @Flag(help: "Print device time per kernel (over as many steps again, after the timed ones) and the roofline: the step's counted FLOPs at the device's arithmetic peak (see bench peak).")
    var profile = false
    @Flag(help: "One JSON object instead of text.")
    var json = false

    func validate() throws {
        guard steps >= 1, steps <= 1_000_000 else { throw ValidationError("--steps must be in 1...1000000, got \(steps)") }
        guard warmup >= 0, warmup <= 1_000_000 else { throw ValidationError("--warmup must be in 0...1000000, got \(warmup)") }
        guard batch >= 1 else { throw ValidationError("--batch must be at least 1, got \(batch)") }
        guard rank >= 1 else { throw ValidationError("--rank must be at least 1, got \(rank)") }
        guard (1...ViTConfig.Limits.imageSize).contains(imageSize) else {
            throw ValidationError("--image-size must be in 1...\(ViTConfig.Limits.imageSize), got \(imageSize)")
        }
        guard (1...imageSize).contains(patch) else { throw ValidationError("--patch must be in 1...\(imageSize), got \(patch)") }
    }

    func run() throws { try runAsRank(Self.self, bench) }

    private func bench(_ communicator: Communicator) throws {
        let started = DispatchTime.now().uptimeNanoseconds
        let ranks = communicator.size
        guard batch % ranks == 0 else { throw ValidationError("--batch \(batch) is the global batch and must divide by the \(ranks) ranks") }
        if ranks > 1, json || profile { throw ValidationError("--json and --profile report one process; under MPI the report is rank 0's text") }
        let batch = self.batch / ranks
        let engine = try Engine(deviceSpec: deviceOption.device, localRank: communicator.localRank)
        try matmul.apply(to: engine)
        let config = try ViTConfig.preset(model, patchSize: patch, imageSize: imageSize, classes: 10)
        let fineTuning = try parseMethod(method, rank: rank, alpha: Float(rank), targets: try parseTargets(targets))
        try fineTuning.validate(width: config.width)  // before the random backbone is built for it
        var generator = SeededGenerator(seed: 1)
        // The host copies of the weights are a temporary: once uploaded they are gone, as in a
        // real run, so the peak RSS measures what training holds.
        let network = try ViTModel.assemble(engine, config: config, method: fineTuning, backbone: randomBackboneValues(for: config, seed: 3), seed: 2,
                                            weightStorage: weights.storage.dtype)
        let parameters = network.parameters
        network.activationMemory = activations
        let optimizer = try AdamW(parameters: parameters, settings: AdamWSettings(learningRate: 1e-4))
        let images = try engine.tensor(generator.uniform(batch * 3 * imageSize * imageSize, bound: 2), shape: [batch, 3, imageSize, imageSize])
        let labels = try engine.tensor((0..<batch).map { Int32($0 % 10) }, shape: [batch])
        var reduceSeconds = 0.0, reduceBytes = 0
        func step() throws -> Float {
            try parameters.zeroGradients()
            _ = try network.forward(images)
            let (loss, dLogits) = try network.loss(labels: labels)
            try network.backward(dLogits)
            if ranks > 1 {
                // Throughput only: the gradients are summed, not averaged (no 1/N); one rider
                // stands for the loss train's buffer carries.
                let reduction = try sumGradients(parameters, riders: [0], communicator)
                (reduceSeconds, reduceBytes) = (reduceSeconds + reduction.seconds, reduction.bytes)
            }
            try optimizer.update()
            return try loss.download()[0]
        }
        _ = try step()
        let firstStep = Double(DispatchTime.now().uptimeNanoseconds - started) * 1e-9
        let compiled = engine.kernels.buildRecords.filter { $0.outcome != .diskCacheHit }.count
        for _ in 1..<max(warmup, 1) { _ = try step() }
        reduceSeconds = 0
        let start = DispatchTime.now().uptimeNanoseconds
        for _ in 0..<steps { _ = try step() }
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9 / Double(steps)
        // Profiling keeps an event per launch, which slows short steps: the kernel table comes
        // from as many steps again, after the timed ones.
        let profiler = KernelProfiler()
        if profile {
            engine.profiler = profiler
            for _ in 0..<steps { _ = try step() }
            engine.profiler = nil
        }
        let imagesPerSecond = Double(batch) / seconds
        if ranks > 1 {
            // Every rank's step time (each fills its own slot of the sum).
            var perRank = [Double](repeating: 0, count: ranks)
            perRank[communicator.rank] = seconds
            try communicator.sumInRankOrder(&perRank)
            // The reduction alone, ranks in step (after a barrier): its cost without the wait
            // for the slowest rank that the in-step time includes.
            try communicator.barrier()
            let rounds = 20
            var alone = 0.0
            for _ in 0..<rounds { alone += try sumGradients(parameters, riders: [0], communicator).seconds }
            guard communicator.isRoot else { return }
            let slowest = perRank.max() ?? seconds
            print(String(format: "%@/%d at %d px, global batch %d over %d ranks (%d each), %@: %.1f ms/step, %.2f images/s globally",
                         model, patch, imageSize, self.batch, ranks, batch, fineTuning.description, slowest * 1e3, Double(self.batch) / slowest))
            for (rank, rankSeconds) in perRank.enumerated() {
                print(String(format: "  rank %d: %.1f ms/step, %.2f images/s", rank, rankSeconds * 1e3, Double(batch) / rankSeconds))
            }
            print(String(format: "  all-reduce (rank 0): %.3f MB per step, %.2f ms per step = %.1f%% of the step (with the wait for the slowest rank); alone %.2f ms",
                         Double(reduceBytes) / 1e6, reduceSeconds / Double(steps) * 1e3, reduceSeconds / Double(steps) / seconds * 100,
                         alone / Double(rounds) * 1e3))
            return
        }
        let peak = peakResidentBytes()
        let activationBytes = network.savedActivationBytes, optimizerBytes = 2 * 4 * parameters.trainableCount
        // The plan only applies between the two extremes: full fine-tuning keeps everything, a
        // probe's backward never enters the blocks.
        let activationPlan = fineTuning == .full ? "keep (full fine-tuning)" : fineTuning == .probe ? "none (probe)" : activations.rawValue
        if json {
            let object: [String: Any] = ["model": model, "patch": patch, "image_size": imageSize, "batch": batch, "method": method,
                                         "rank": rank, "activations": activationPlan, "weights": weights.storage.rawValue, "matmul": matmul.precision.rawValue, "trainable": parameters.trainableCount, "step_seconds": seconds,
                                         "images_per_second": imagesPerSecond, "peak_rss_bytes": peak,
                                         "saved_activation_bytes": activationBytes, "optimizer_state_bytes": optimizerBytes,
                                         "device_buffer_peak_bytes": engine.pool.statistics.peakBytes,
                                         "seconds_to_first_step": firstStep, "programs_compiled": compiled]
            print(String(decoding: try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]), as: UTF8.self))
        } else {
            print(String(format: "%@/%d at %d px, batch %d, %@ (%d trainable, activations: %@, weights %@, products %@): %.1f ms/step, %.2f images/s, peak RSS %.0f MB",
                         model, patch, imageSize, batch, fineTuning.description, parameters.trainableCount, activationPlan, weights.storage.rawValue,
                         matmul.precision.rawValue, seconds * 1e3,
                         imagesPerSecond, Double(peak) / 1e6))
            print(String(format: "  saved activations %.1f MB, optimizer state %.2f MB, device buffers at most %.1f MB, process start to first step done %.2f s (%d programs compiled, %d from the disk cache)",
                         Double(activationBytes) / 1e6, Double(optimizerBytes) / 1e6, Double(engine.pool.statistics.peakBytes) / 1e6, firstStep, compiled,
                         engine.kernels.buildRecords.count - compiled))
        }
        if profile {
            let ceilings = try DeviceCeilings.measure(engine)
            try printProfile(try profiler.summary(), ceilings: ceilings, steps: steps, stepSeconds: seconds, batch: batch,
                             method: fineTuning, width: config.width)
        }
    }

    /// Per kernel: launches, device time, share, and the rate against the ceilings (FLOP-counted
    /// kernels in GFLOP/s against the GEMM, the others in GB/s against a copy); then what the
    /// adapters cost: their own launches (scope "adapter"), the optimizer, and their share r / K
    /// of the GEMMs that reduce over the frozen K and theirs in one pass.
    private func printProfile(_ entries: [KernelProfiler.Entry], ceilings: DeviceCeilings, steps: Int, stepSeconds: Double, batch: Int,
                              method: FineTuningMethod, width: Int) throws {
        let total = entries.reduce(0) { $0 + $1.seconds }
        print(String(format: "  ceilings measured in this run: GEMM 1024^3 %.1f GFLOP/s, copy %.1f GB/s, %@", ceilings.gemmFlops / 1e9,
                     ceilings.copyBytes / 1e9, ceilings.peakText))
        for entry in entries {
            var rate = ""
            if entry.work.flops > 0 {
                let flops = entry.work.flops / entry.seconds
                rate = String(format: "%7.1f GFLOP/s (%.2f of GEMM)", flops / 1e9, flops / ceilings.gemmFlops)
            } else if entry.work.bytes > 0 {
                let bytes = entry.work.bytes / entry.seconds
                rate = String(format: "%7.1f GB/s    (%.2f of copy)", bytes / 1e9, bytes / ceilings.copyBytes)
            }
            print(String(format: "  %@ %5d launches %9.2f ms/step %5.1f%%  %@", entry.kernel.padding(toLength: 40, withPad: " ", startingAt: 0), entry.launches,
                         entry.seconds * 1e3 / Double(steps), 100 * entry.seconds / total, rate))
        }
        // The roofline: the counted work (GEMMs and attention; the rest is memory-bound) at the
        // arithmetic peak is a step time no kernel schedule can beat.
        let flops = entries.reduce(0) { $0 + $1.work.flops } / Double(steps), bf16Flops = entries.reduce(0) { $0 + $1.work.bf16Flops } / Double(steps)
        let floor = ceilings.arithmeticSeconds(flops: flops, bf16Flops: bf16Flops)
        print(String(format: "  roofline: %.1f GFLOP/step counted (%.1f in bf16 products); at the peaks that takes %.1f ms: at most %.2f images/s, and this run's %.1f ms/step is %.2f of it",
                     flops / 1e9, bf16Flops / 1e9, floor * 1e3, Double(batch) / floor, stepSeconds * 1e3, floor / stepSeconds))
        guard let rank = method.rank else { return }
        func seconds(_ matches: (String) -> Bool) -> Double { entries.filter { matches($0.kernel) }.reduce(0) { $0 + $1.seconds } }
        let own = seconds { $0.hasPrefix(ProfileScope.adapter + "/") }
        let optimizer = seconds { $0 == "adamw_step" }
        let adapters = Double(method.name == "serial" ? 1 : 3)  // LoRA: q, k, v enter the input gradient's reduction
        let extraK = adapters * Double(rank)
        let fused = seconds { $0.hasPrefix(ProfileScope.fusedQKV + "/") } * Double(rank) / Double(width + rank)
            + seconds { $0.hasPrefix(ProfileScope.fusedInput + "/") } * extraK / (Double(3 * width) + extraK)
        let share = own + optimizer + fused
        print(String(format: "  adapter share of the step: %.1f ms/step = %.1f%% (own launches %.1f ms, optimizer %.2f ms, its K-share of the fused GEMMs %.1f ms)",
                     share * 1e3 / Double(steps), 100 * share / total, own * 1e3 / Double(steps), optimizer * 1e3 / Double(steps),
                     fused * 1e3 / Double(steps)))
    }
}

struct PeakBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "peak",
        abstract: "The device's arithmetic peak beside its 1024^3 GEMM and a copy: the ceilings a step's rates are read against.",
        discussion: """
            The peak runs chains of multiply-adds that read no memory (Kernels/peak.cl): fp32 FMA, and \
            bf16 dot products (vdpbf16ps) where the CPU has AVX512_BF16; their results are checked \
            against the host. `bench train --profile` sets the step's counted FLOPs against the same \
            peaks (the roofline).
            """
    )

    @OptionGroup var deviceOption: DeviceOption

    @Option(help: "Minimum measuring time per ceiling, in seconds.")
    var minSeconds = 0.5

    @Flag(help: "One JSON object.")
    var json = false

    func validate() throws { try validateMinSeconds(minSeconds) }

    func run() throws {
        let engine = try Engine(deviceSpec: deviceOption.device)
        let ceilings = try DeviceCeilings.measure(engine, minSeconds: minSeconds)
        var bf16Gemm: Double?
        if ceilings.bf16Peak != nil, (try? engine.setMatmulPrecision(.bf16)) != nil {
            bf16Gemm = try DeviceCeilings.measureGemm(engine, minSeconds: minSeconds)
        }
        if json {
            var object: [String: Any] = ["device": engine.device.name, "fp32_fma_gflops": ceilings.fp32Peak.flopsPerSecond / 1e9,
                                         "gemm_1024_fp32_gflops": ceilings.gemmFlops / 1e9, "copy_gbps": ceilings.copyBytes / 1e9]
            if let peak = ceilings.bf16Peak { object["bf16_dot_gflops"] = peak.flopsPerSecond / 1e9 }
            if let bf16Gemm { object["gemm_1024_bf16_gflops"] = bf16Gemm / 1e9 }
            print(String(decoding: try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys]), as: UTF8.self))
            return
        }
        print("device: \(engine.device.name)   gemm profile: \(engine.gemmProfile)")
        for peak in [ceilings.fp32Peak] + (ceilings.bf16Peak.map { [$0] } ?? []) {
            print(String(format: "%-9@ peak       %8.1f GFLOP/s  (%d work-items x %d chains x %d lanes, %d iterations)", peak.instruction.rawValue,
                         peak.flopsPerSecond / 1e9, peak.workItems, peak.chains, peak.lanes, peak.iterations))
        }
        if ceilings.bf16Peak == nil { print("bf16-dot  peak       not available: \(engine.bf16InstructionUnavailability ?? "")") }
        print(String(format: "GEMM 1024^3 fp32     %8.1f GFLOP/s  (%.2f of the fp32 FMA peak)", ceilings.gemmFlops / 1e9,
                     ceilings.gemmFlops / ceilings.fp32Peak.flopsPerSecond))
        if let bf16Gemm, let peak = ceilings.bf16Peak {
            print(String(format: "GEMM 1024^3 bf16     %8.1f GFLOP/s  (%.2f of the bf16 dot peak)", bf16Gemm / 1e9, bf16Gemm / peak.flopsPerSecond))
        }
        print(String(format: "copy 64 MiB          %8.1f GB/s", ceilings.copyBytes / 1e9))
    }
}

/// The device's practical ceilings, measured in the same run as what is compared with them.
struct DeviceCeilings {
    var gemmFlops: Double   // FLOP/s of a 1024^3 GEMM, in the engine's matmul precision
    var copyBytes: Double   // bytes/s read + written by a 64 MiB copy
    var fp32Peak: PeakMeasurement
    var bf16Peak: PeakMeasurement?   // nil where the device has no bf16 dot product

    /// FLOP/s of a 1024^3 GEMM in the engine's matmul precision.
    static func measureGemm(_ engine: Engine, minSeconds: Double) throws -> Double {
        let square = try engine.empty([1024, 1024]), product = try engine.empty([1024, 1024])
        try square.upload(benchValues(square.count, seed: 3))
        let seconds = try sloragpu.measure(minSeconds: minSeconds) {
            try engine.gemm(square, square, into: product)
            try engine.synchronize()
        }
        return 2 * pow(1024.0, 3) / seconds
    }

    /// The least time `flops` (of which `bf16Flops` in bf16 dot products) can take at the peaks.
    func arithmeticSeconds(flops: Double, bf16Flops: Double) -> Double {
        (flops - bf16Flops) / fp32Peak.flopsPerSecond + bf16Flops / (bf16Peak ?? fp32Peak).flopsPerSecond
    }

    var peakText: String {
        String(format: "fp32 FMA peak %.1f GFLOP/s", fp32Peak.flopsPerSecond / 1e9)
            + (bf16Peak.map { String(format: ", bf16 dot peak %.1f GFLOP/s", $0.flopsPerSecond / 1e9) } ?? "")
    }

    static func measure(_ engine: Engine, minSeconds: Double = 0.3) throws -> DeviceCeilings {
        let gemmFlops = try measureGemm(engine, minSeconds: minSeconds)
        let count = 16 << 20
        let source = try engine.zeros([count]), destination = try engine.empty([count])
        let copySeconds = try sloragpu.measure(minSeconds: minSeconds) {
            try engine.copy(source, into: destination)
            try engine.synchronize()
        }
        let bf16Peak: PeakMeasurement?
        do { bf16Peak = try engine.measurePeak(.bf16Dot, minSeconds: minSeconds) } catch is MatmulPrecisionError { bf16Peak = nil }
        return DeviceCeilings(gemmFlops: gemmFlops, copyBytes: 8 * Double(count) / copySeconds,
                              fp32Peak: try engine.measurePeak(.fp32FMA, minSeconds: minSeconds), bf16Peak: bf16Peak)
    }
}

/// Small deterministic values in [-1, 1), so a wrong result cannot hide behind constants.
func benchValues(_ count: Int, seed: UInt64) -> [Float] {
    var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
    return (0..<count).map { _ in
        state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        return Float(state >> 40) / Float(1 << 23) - 1
    }
}

/// A benchmark that computes garbage measures nothing: check 64 entries against a host dot
/// product in Double.
/// `precision` bf16: the host rounds the operands as the kernels do.
func verify(_ shape: GemmShape, _ a: [Float], _ b: [Float], _ c: [Float], precision: MatmulPrecision = .fp32) throws {
    let operand: (Float) -> Double = precision == .bf16 ? { Double(BFloat16($0).float) } : { Double($0) }
    var state: UInt64 = 12345
    for _ in 0..<64 {
        state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        let i = Int(state >> 33) % shape.m, j = Int(state >> 13) % shape.n
        var sum = 0.0, magnitude = 0.0
        for p in 0..<shape.k {
            let x = operand(shape.transposeA ? a[p * shape.m + i] : a[i * shape.k + p])
            let y = operand(shape.transposeB ? b[j * shape.k + p] : b[p * shape.n + j])
            sum += x * y
            magnitude += abs(x * y)
        }
        guard abs(Double(c[i * shape.n + j]) - sum) <= 1e-5 * magnitude + 1e-5 else {
            throw ValidationError("\(shape.name): C[\(i), \(j)] = \(c[i * shape.n + j]) but the host computes \(sum)")
        }
    }
}

/// Best time of one call of `body`, after a warm-up call, repeated for at least `minSeconds`
/// and at least three times. The best run is the least disturbed by other load.
func measure(minSeconds: Double, _ body: () throws -> Void) throws -> Double {
    try body()
    var best = Double.infinity
    var total = 0.0
    var runs = 0
    while total < minSeconds || runs < 3 {
        let start = DispatchTime.now().uptimeNanoseconds
        try body()
        let elapsed = Double(DispatchTime.now().uptimeNanoseconds - start) * 1e-9
        best = min(best, elapsed)
        total += elapsed
        runs += 1
    }
    return best
}

func validateMinSeconds(_ seconds: Double) throws {
    guard seconds >= 0, seconds <= 3600 else { throw ValidationError("--min-seconds must be in [0, 3600], got \(seconds)") }
}
