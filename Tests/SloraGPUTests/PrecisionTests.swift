import Foundation
import Reference
import Testing
@testable import Formats
@testable import Tensors
@testable import ViT

/// Frozen weights stored in 16 bits (fp16, bf16) or 8 (int8 with row scales): the conversions,
/// every GEMM path reading such an operand, and the model under each storage type against the
/// fp32 PyTorch fixtures.
@Suite("Frozen-weight storage: fp16, bf16, int8")
struct PrecisionTests {
    @Test func bfloat16RoundsToNearestEvenAndKeepsNaNAndInf() {
        #expect(BFloat16(1).bits == 0x3F80 && BFloat16(-0.0).bits == 0x8000)
        // Halfway cases go to the even neighbour; just above halfway rounds up.
        #expect(BFloat16(Float(bitPattern: 0x3F80_8000)).bits == 0x3F80)
        #expect(BFloat16(Float(bitPattern: 0x3F81_8000)).bits == 0x3F82)
        #expect(BFloat16(Float(bitPattern: 0x3F80_8001)).bits == 0x3F81)
        #expect(BFloat16(.infinity).float == .infinity && BFloat16(-.infinity).float == -.infinity)
        #expect(BFloat16(.greatestFiniteMagnitude).float == .infinity)      // beyond bf16's largest finite value
        // Every NaN stays NaN, including payloads the plain rounding would carry into Inf.
        for bits: UInt32 in [0x7FC0_0000, 0x7F80_0001, 0x7FFF_FFFF, 0xFF80_0001, 0x7F80_FFFF] {
            #expect(BFloat16(Float(bitPattern: bits)).float.isNaN, "NaN \(String(bits, radix: 16))")
        }
        // The widening is exact: every bf16 value survives a round trip.
        for bits: UInt16 in [0x0001, 0x3F80, 0x4049, 0x7F7F, 0x8001, 0xC2F7] { #expect(BFloat16(BFloat16(bits: bits).float).bits == bits) }
    }

    @Test(arguments: [DType.float16, .bfloat16])
    func storageRoundTripsThroughTheDevice(storage: DType) throws {
        let engine = try makeEngine()
        let values = uniformValues(1001, seed: 1, scale: 3) + [0, -0.0, 65504, 1e-8, .infinity, -.infinity]
        let tensor = try engine.tensor(values, shape: [values.count], storage: storage)
        #expect(tensor.dtype == storage && tensor.byteCount == 2 * values.count)
        let expected = storage == .float16 ? values.map { Float(Float16($0)) } : values.map { BFloat16($0).float }
        #expect(try tensor.download() == expected)
        #expect(throws: TensorError.self) { _ = try engine.tensor(values, shape: [values.count], storage: .int32) }
    }

    /// The device's conversions (saved activations) round exactly as the host's (weights,
    /// files): nearest even, halfway cases, overflow to Inf, subnormals, every NaN kept; and
    /// widening back is exact.
    @Test(arguments: [DType.float16, .bfloat16])
    func deviceConversionsRoundAsTheHost(storage: DType) throws {
        let engine = try makeEngine()
        let nans: [UInt32] = [0x7FC0_0000, 0x7F80_0001, 0x7FFF_FFFF, 0xFF80_0001, 0x7F80_FFFF]
        let halfway: [UInt32] = [0x3F80_8000, 0x3F81_8000, 0x3F80_8001, 0x3F80_1000, 0x3F80_3000, 0x3F80_2000]
        let values = uniformValues(1003, seed: 11, scale: 5) + [0, -0.0, 65504, 65520, 1e-8, 6e-5, Float.leastNormalMagnitude * 0x1p-7, .greatestFiniteMagnitude, .infinity, -.infinity]
            + (halfway + nans).map { Float(bitPattern: $0) }
        let source = try engine.tensor(values, shape: [values.count])
        let narrow = try engine.empty([values.count], dtype: storage)
        try engine.convert(source, into: narrow)
        let host = storage == .float16 ? values.map { Float(Float16($0)) } : values.map { BFloat16($0).float }
        let widened = try engine.empty([values.count])
        try engine.convert(narrow, into: widened)
        for (index, (device, expected)) in zip(try widened.download(), host).enumerated() {
            #expect(device.bitPattern == expected.bitPattern || (device.isNaN && expected.isNaN),
                    "\(storage) of \(values[index]) (0x\(String(values[index].bitPattern, radix: 16))): device \(device), host \(expected)")
        }
        #expect(try narrow.download().elementsEqual(try widened.download()) { $0.bitPattern == $1.bitPattern })
        // Views at odd offsets whose length is no multiple of the kernels' 8 values per work-item
        // (the NaNs fall in the one-by-one tail).
        let count = values.count - 5
        let partNarrow = try engine.empty([count + 1], dtype: storage), partWidened = try engine.empty([count + 2])
        try engine.convert(try source.view(offset: 3, shape: [count]), into: try partNarrow.view(offset: 1, shape: [count]))
        try engine.convert(try partNarrow.view(offset: 1, shape: [count]), into: try partWidened.view(offset: 2, shape: [count]))
        for (device, expected) in zip(try partWidened.download().dropFirst(2), host[3..<3 + count]) {
            #expect(device.bitPattern == expected.bitPattern || (device.isNaN && expected.isNaN), "\(storage) at an offset: device \(device), host \(expected)")
        }
        #expect(throws: TensorError.self) { try engine.convert(source, into: try engine.empty([values.count])) }
        #expect(throws: TensorError.self) { try engine.convert(source, into: try engine.empty([values.count - 1], dtype: storage)) }
    }

    /// int8: one scale per row (the largest magnitude / 127), every value within half a step,
    /// zero rows exact, the scales shared by views; what cannot be quantized is refused.
    @Test func int8QuantizesPerRowWithinHalfAStep() throws {
        let engine = try makeEngine()
        let (rows, columns) = (7, 33)
        var values = uniformValues(rows * columns, seed: 21, scale: 2)
        for c in 0..<columns { values[3 * columns + c] = 0 }            // an all-zero row
        values[5 * columns + 4] = -40                                    // a row with an outlier
        let tensor = try engine.tensor(values, shape: [rows, columns], storage: .int8)
        #expect(tensor.dtype == .int8 && tensor.byteCount == rows * columns)
        let stored = try tensor.download()
        for row in 0..<rows {
            let range = row * columns..<(row + 1) * columns
            let step = values[range].reduce(0) { max($0, abs($1)) } / 127
            for index in range { #expect(abs(stored[index] - values[index]) <= step / 2 * 1.0001, "row \(row) index \(index)") }
            #expect(values[range].contains { $0 != 0 } || stored[range].allSatisfy { $0 == 0 })
        }
        #expect(stored[5 * columns + 4] == -40)                         // the row's largest is exact
        let view = try tensor.view(offset: 2 * columns, shape: [2, columns])
        #expect(try view.download() == Array(stored[2 * columns..<4 * columns]))
        // A view at an offset, as either operand and transposed, finds its rows' scales.
        let other = uniformValues(5 * columns, seed: 22)
        for transposed in [false, true] {
            let out = try engine.empty(transposed ? [5, 2] : [2, 5])
            let dense = try engine.tensor(other, shape: [5, columns])
            if transposed {
                try engine.gemm(dense, view, into: out, transposeB: true)
            } else {
                try engine.gemm(view, dense, into: out, transposeB: true)
            }
            let (a, b) = transposed ? (other, Array(stored[2 * columns..<4 * columns])) : (Array(stored[2 * columns..<4 * columns]), other)
            let expected = Reference.matmul(a, b, m: transposed ? 5 : 2, n: transposed ? 2 : 5, k: columns, transposeB: true)
            expectClose(try out.download(), expected, atol: 1e-5, rtol: 1e-5, "int8 view as \(transposed ? "B" : "A")")
        }
        #expect(throws: TensorError.self) { _ = try engine.tensor([1, 2, 3], shape: [3], storage: .int8) }
        #expect(throws: TensorError.self) { _ = try engine.tensor([1, .nan, 3, 4], shape: [2, 2], storage: .int8) }
        // An int8 tensor that was not quantized (no scales) is no GEMM operand.
        #expect(throws: TensorError.self) {
            try engine.gemm(try engine.empty([2, 2], dtype: .int8), try engine.zeros([2, 2]), into: try engine.empty([2, 2]))
        }
    }

    /// GEMM paths x stored type: the CPU profile (fp16 and bf16 read in place by DIRECT_A and
    /// the skinny kernels, int8 always dequantized in packing), the CPU profile with both in-place
    /// paths off (everything packed), the GPU profile's tiled kernel; transposes; and a two-term
    /// sum mixing a 16-bit weight with an fp32 adapter term (Serial LoRA's fused qkv). The kernels
    /// that ran are checked, so each path is known to be the one tested. The reference multiplies
    /// the stored values, so results agree up to fp32 accumulation order.
    @Test(arguments: [DType.float16, .bfloat16, .int8], ["cpu", "cpu, packed only", "tiled", "tiled, LP=0"])
    func everyGemmPathReadsTheStoredType(storage: DType, path: String) throws {
        let engine = try makeEngine()
        let cpu = GemmProfile.cpu(preferredVectorWidth: engine.device.info.preferredFloatVectorWidth)
        switch path {
        case "tiled": engine.gemmProfile = .gpu
        case "tiled, LP=0": engine.gemmProfile = try GemmProfile.gpu.overridden(by: "LP=0")
        case "cpu, packed only": engine.gemmProfile = try cpu.overridden(by: "DA=0,SK=0")
        default: engine.gemmProfile = cpu
        }
        let profiler = KernelProfiler()
        engine.profiler = profiler
        for (m, n, k) in [(65, 72, 40), (197, 8, 33), (8, 100, 37), (3, 5, 7)] {
            for (storedA, storedB) in [(true, false), (false, true), (true, true)] {
                for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                    let a0 = uniformValues(m * k, seed: 2), b0 = uniformValues(k * n, seed: 3)
                    let a = try engine.tensor(a0, shape: ta ? [k, m] : [m, k], storage: storedA ? storage : .float32)
                    let b = try engine.tensor(b0, shape: tb ? [n, k] : [k, n], storage: storedB ? storage : .float32)
                    let c = try engine.empty([m, n])
                    profiler.reset()
                    try engine.gemm(a, b, into: c, transposeA: ta, transposeB: tb)
                    let ran = Set(try profiler.summary().map(\.kernel))
                    let label = "\(storage) \(path) \(m)x\(n)x\(k) A\(storedA ? "\(storage)" : "fp32")\(ta ? "T" : "N") B\(storedB ? "\(storage)" : "fp32")\(tb ? "T" : "N")"
                    let expected = Reference.matmul(try a.download(), try b.download(), m: m, n: n, k: k, transposeA: ta, transposeB: tb)
                    expectClose(try c.download(), expected, atol: GemmTests.tolerance(k: k), rtol: 1e-5, label)

                    let skinny = ran.contains("gemm_small_rows") || ran.contains("gemm_small_lanes")
                    switch path {
                    case "tiled":
                        #expect(ran.contains("gemm_tiled") && !skinny && ran.isSuperset(of: ["pack_panels_a", "pack_panels_b"])
                                    && ran.isDisjoint(with: ["pack_a", "pack_b", "pack_b_transposed"]), "\(label): ran \(ran.sorted())")
                    case "tiled, LP=0":
                        #expect(ran.contains("gemm_tiled") && ran.contains("pack_a") && !ran.contains("pack_panels_a"), "\(label): ran \(ran.sorted())")
                    case "cpu, packed only":
                        #expect(ran.contains("pack_a") && ran.contains("gemm_packed") && !skinny, "\(label): ran \(ran.sorted())")
                    default:
                        if storage == .int8 {
                            // A quantized A packs; a quantized B leaves a plain fp32 A in place.
                            #expect(!skinny && ran.contains("pack_a") == (storedA || ta), "\(label): ran \(ran.sorted())")
                        } else if min(m, n) <= 16 {
                            #expect(skinny && !ran.contains("gemm_packed"), "\(label): ran \(ran.sorted())")
                        } else {
                            #expect(ran.contains("gemm_packed") && ran.contains("pack_a") == ta, "\(label): ran \(ran.sorted())")
                        }
                    }
                }
            }
        }
        engine.profiler = nil
        // [u | s t] [W | C]^T + b with W stored in 16 bits, C and the rest fp32.
        let (rows, d, r) = (37, 24, 4)
        let u = uniformValues(rows * d, seed: 4), t = uniformValues(rows * r, seed: 5), w0 = uniformValues(3 * d * d, seed: 6)
        let c0 = uniformValues(3 * d * r, seed: 7), bias = uniformValues(3 * d, seed: 8)
        let w = try engine.tensor(w0, shape: [3 * d, d], storage: storage)
        let out = try engine.empty([rows, 3 * d])
        try engine.gemm(sum: [GemmTerm(try engine.tensor(u, shape: [rows, d]), w, transposeB: true),
                              GemmTerm(try engine.tensor(t, shape: [rows, r]), try engine.tensor(c0, shape: [3 * d, r]), transposeB: true, scale: 0.5)],
                        into: out, bias: try engine.tensor(bias, shape: [3 * d]))
        let first = Reference.matmul(u, try w.download(), m: rows, n: 3 * d, k: d, transposeB: true)
        let second = Reference.matmul(t, c0, m: rows, n: 3 * d, k: r, transposeB: true)
        var wanted = [Double](repeating: 0, count: rows * 3 * d)
        for index in 0..<wanted.count { wanted[index] = first[index] + 0.5 * second[index] + Double(bias[index % (3 * d)]) }
        expectClose(try out.download(), wanted, atol: 1e-4, rtol: 1e-5, "\(storage) two-term sum")
        // C must stay fp32.
        #expect(throws: TensorError.self) { try engine.gemm(w, try engine.zeros([d, 2]), into: try engine.empty([3 * d, 2], dtype: storage)) }
    }

    /// The parity fixtures with the frozen matrices stored in 16 or 8 bits, against PyTorch's
    /// fp32 results. The bound is 8 unit roundoffs of the format (2^-11 for fp16, 2^-8 for bf16,
    /// one step of 1/127 for int8, whose error is relative to each row's largest magnitude rather
    /// than to each value: 3.9e-3, 3.1e-2 and 6.3e-2) on the relative error of each whole tensor:
    /// the weights' rounding error passes through two blocks and the head. Measured here: fp16
    /// logits 2.8e-4 to 3.7e-4 and gradients up to 1.5e-3 (LoRA); bf16 logits 4.4e-3 to 4.8e-3
    /// and gradients up to 1.8e-2; int8 logits 6.8e-3 to 1.35e-2 and gradients up to 5.2e-2
    /// (LoRA; 3.3e-2 Serial LoRA). The fp32 path stays the exact-parity path (ParityTests).
    @Test(arguments: [DType.float16, .bfloat16, .int8], ["serial", "lora", "probe"])
    func modelUnderStoredWeightsStaysNearPyTorch(storage: DType, method: String) throws {
        let engine = try makeEngine()
        let adapter = try AdapterFile.load(parityFixtures.appendingPathComponent("\(method)/initial.safetensors"))
        let backbone = try CheckpointReader(file: try SafeTensorsFile(contentsOf: parityFixtures.appendingPathComponent("hf-vit/model.safetensors")),
                                            naming: .hfViT, config: adapter.config)
        let model = try ViTModel.assemble(engine, config: adapter.config, method: adapter.method, backbone: backbone.values, adapter: adapter,
                                          seed: 0, weightStorage: storage)
        #expect(try model.parameters.tensor("blocks.0.qkv.weight").dtype == storage)
        #expect(try model.parameters.tensor("blocks.0.qkv.bias").dtype == .float32 && model.parameters.slab.dtype == .float32)
        let expected = try SafeTensorsFile(contentsOf: parityFixtures.appendingPathComponent("\(method)/expected.safetensors"))
        let (images, labels) = try fixtureBatch(engine)
        let unitRoundoff: Double = switch storage {
        case .float16: 0x1p-11
        case .bfloat16: 0x1p-8
        default: 1.0 / 127     // int8: one step, relative to the row's largest magnitude
        }
        let bound = 8 * unitRoundoff
        try model.parameters.zeroGradients()
        let logits = try model.forward(images).download()
        let logitsError = relativeError(logits, try expected.floats("logits"))
        #expect(logitsError <= bound, "\(storage) \(method) logits: relative error \(logitsError)")
        try model.backward(try model.loss(labels: labels).dLogits)
        for name in model.parameters.trainableNames {
            let error = relativeError(try model.parameters.gradient(name)!.download(), try expected.floats("grad/" + name))
            #expect(error <= bound, "\(storage) \(method) gradient of \(name): relative error \(error)")
        }
        // 16-bit is not exact: the errors are there, and of the format's size.
        #expect(logitsError > 0)
    }

    /// Files: F16 and BF16 written (rounded to nearest even) and read back; a base stored in F16
    /// merges into an F16 checkpoint by default, and `--dtype f32` overrides.
    @Test func sixteenBitFilesAndMergeKeepingTheBasesType() throws {
        let directory = try makeTemporaryDirectory()
        let values: [Float] = [1, -2.5, 3.14159, 1e-3, 65504, .nan]
        for (dtype, rounded) in [(SafeTensorsDType.F16, values.map { Float(Float16($0)) }), (.BF16, values.map { BFloat16($0).float })] {
            let url = directory.appendingPathComponent("\(dtype).safetensors")
            try SafeTensorsFile.write([("t", [2, 3], values)], dtype: dtype, to: url)
            let file = try SafeTensorsFile(contentsOf: url)
            #expect(file.entry("t")?.dtype == dtype)
            let read = try file.floats("t")
            #expect(read.prefix(5).elementsEqual(rounded.prefix(5)) && read[5].isNaN, "\(dtype): \(read)")
        }
        // The fixture base in F16, with its config.
        let base = directory.appendingPathComponent("base16")
        try FileManager.default.createDirectory(at: base, withIntermediateDirectories: true)
        let source = try SafeTensorsFile(contentsOf: parityFixtures.appendingPathComponent("hf-vit/model.safetensors"))
        try SafeTensorsFile.write(try source.names.map { ($0, source.entry($0)!.shape, try source.floats($0)) }, dtype: .F16,
                                  to: base.appendingPathComponent("model.safetensors"))
        try FileManager.default.copyItem(at: parityFixtures.appendingPathComponent("hf-vit/config.json"), to: base.appendingPathComponent("config.json"))
        let loaded = try Backbone.load(directory: base, imageSize: nil, classes: nil)
        #expect(loaded.fileDType == .F16)
        // The F16 tensors stay 16-bit on the host (q, k, v stacked in their own type), and an
        // fp16-stored model built from them holds the same device weights and gives the same
        // logits as one built from the widened values; the fingerprint is that of the values.
        for name in ["blocks.0.qkv.weight", "blocks.1.fc1.weight", "blocks.0.qkv.bias"] {
            guard case .float16 = loaded.tensors[name] else { Issue.record("\(name) was not kept in F16"); continue }
        }
        #expect(loaded.fingerprint == BaseFingerprint.of(loaded.values, config: loaded.config))
        let engine = try makeEngine()
        let (images, _) = try fixtureBatch(engine)
        var logits: [[Float]] = [], weights: [[Float]] = []
        for tensors in [loaded.tensors, loaded.values.hostTensors] {
            let model = try ViTModel.assemble(engine, config: loaded.config, method: .probe, backbone: tensors, seed: 0, weightStorage: .float16)
            weights.append(try model.parameters.tensor("blocks.0.qkv.weight").download())
            logits.append(try model.forward(images, keepForBackward: false).download())
        }
        #expect(weights[0] == weights[1] && logits[0] == logits[1])
        // A 16-bit tensor holding an Inf (70000 overflows F16) is refused, named, as in F32.
        let broken = directory.appendingPathComponent("broken16")
        try FileManager.default.createDirectory(at: broken, withIntermediateDirectories: true)
        let key = "vit.encoder.layer.1.attention.attention.key.weight"
        try SafeTensorsFile.write(try source.names.map { name in
            var values = try source.floats(name)
            if name == key { values[5] = 70000 }
            return (name, source.entry(name)!.shape, values)
        }, dtype: .F16, to: broken.appendingPathComponent("model.safetensors"))
        try FileManager.default.copyItem(at: parityFixtures.appendingPathComponent("hf-vit/config.json"), to: broken.appendingPathComponent("config.json"))
        let error = #expect(throws: CheckpointError.self) { try Backbone.load(directory: broken, imageSize: nil, classes: nil) }
        #expect(error?.tensor == key && error?.description.contains("non-finite") == true && error?.description.contains("index 5") == true,
                "\(String(describing: error))")
        let adapter = parityFixtures.appendingPathComponent("serial/initial.safetensors").path
        for (option, expected) in [([String](), SafeTensorsDType.F16), (["--dtype", "f32"], .F32)] {
            let merged = directory.appendingPathComponent("merged\(expected)")
            let merge = try runSloragpu(["merge", "--adapter", adapter, "--model", base.path, "--output", merged.path] + option)
            #expect(merge.status == 0 && merge.standardOutput.contains(expected.rawValue), "\(merge.standardOutput)\(merge.standardError)")
            let file = try SafeTensorsFile(contentsOf: merged.appendingPathComponent("model.safetensors"))
            #expect(file.entries.allSatisfy { $0.dtype == expected })
            #expect(try PretrainedCheckpoint(directory: merged).load().loadedHead)
        }
    }
}

