import ArgumentParser
import Foundation
import Reference
import Tensors
import Formats
import Optimizers
import ViT

/// Correctness of the device's kernels against the slow, obvious references, on the device at
/// hand: what the device check runs first on a GPU machine, where no test toolchain exists.
struct SelftestCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "selftest",
        abstract: "Check the selected device's GEMM, attention and reduction kernels against the reference implementations (odd shapes, every transpose, the epilogues, forward and backward).",
        discussion: "Exits non-zero if any check fails. --gpu-kernels forces the GPU kernels (tiled GEMM, flash attention) on any device, e.g. PoCL."
    )

    @OptionGroup var deviceOption: DeviceOption
    @Flag(help: "Use the GPU kernels whatever the device type.")
    var gpuKernels = false
    @Option(help: "The PyTorch parity fixtures (a training step of a tiny ViT: logits, loss, every gradient) to check the whole model against; skipped when absent.")
    var fixtures = "Tests/Fixtures/parity"

    func run() throws {
        let engine = try Engine(deviceSpec: deviceOption.device)
        if gpuKernels {
            let tiles = engine.gemmProfile.tiles ?? .seed
            engine.gemmProfile = .gpu
            engine.gemmProfile.tiles = tiles
            engine.attentionPath = .flash(rows: 64)
            engine.reductionPath = .workGroup(size: 128)
        }
        print("device: \(engine.device.name)   gemm: \(engine.gemmProfile)   attention: \(engine.attentionPath)   rows: \(engine.reductionPath)")
        var failures = 0
        func report(_ name: String, _ got: [Float], _ want: [Double], atol: Double, rtol: Double) {
            var worst = 0.0
            var ok = got.count == want.count
            for (g, w) in zip(got, want) {
                let excess = abs(Double(g) - w) - (atol + rtol * abs(w))
                if !(excess <= 0) { ok = false }
                worst = max(worst, abs(Double(g) - w))
            }
            if !ok { failures += 1 }
            print(String(format: "%@  %@  max |error| %.2e", ok ? "ok  " : "FAIL", name, worst))
            fflush(nil)
        }
        func values(_ count: Int, _ seed: UInt64) -> [Float] { CheckValues.uniform(count, seed: seed) }

        for (m, n, k) in [(1, 1, 1), (65, 197, 40), (197, 65, 129), (1576, 384, 64), (100, 8, 37), (8, 100, 37)] {
            let a = values(m * k, 1), b = values(k * n, 2), c0 = values(m * n, 3)
            for (ta, tb) in [(false, false), (false, true), (true, false), (true, true)] {
                let c = try engine.tensor(c0, shape: [m, n])
                try engine.gemm(try engine.tensor(a, shape: ta ? [k, m] : [m, k]), try engine.tensor(b, shape: tb ? [n, k] : [k, n]), into: c,
                                transposeA: ta, transposeB: tb, alpha: 0.5, beta: 0.25)
                let product = Reference.matmul(a, b, m: m, n: n, k: k, transposeA: ta, transposeB: tb)
                report("gemm \(ta ? "T" : "N")\(tb ? "T" : "N") \(m)x\(n)x\(k)", try c.download(), (0..<m * n).map { 0.5 * product[$0] + 0.25 * Double(c0[$0]) },
                       atol: 2e-6 * Double(k) + 1e-6, rtol: 1e-5)
            }
        }
        do {
            let (m, n, k) = (197, 72, 48)
            let x = values(m * k, 4), w = values(n * k, 5), bias = values(n, 6)
            let out = try engine.empty([m, n])
            try engine.gemm(try engine.tensor(x, shape: [m, k]), try engine.tensor(w, shape: [n, k]), into: out, transposeB: true,
                            bias: try engine.tensor(bias, shape: [n]), activation: .gelu)
            let linear = Reference.matmul(x, w, m: m, n: n, k: k, transposeB: true)
            report("gemm bias + GELU epilogue \(m)x\(n)x\(k)", try out.download(), (0..<m * n).map { Reference.gelu(linear[$0] + Double(bias[$0 % n])) },
                   atol: 1e-4, rtol: 1e-5)
            let low = values(m * 8, 7), cw = values(n * 8, 8), sum = try engine.empty([m, n])
            try engine.gemm(sum: [GemmTerm(try engine.tensor(x, shape: [m, k]), try engine.tensor(w, shape: [n, k]), transposeB: true),
                                  GemmTerm(try engine.tensor(low, shape: [m, 8]), try engine.tensor(cw, shape: [n, 8]), transposeB: true, scale: 0.5)],
                            into: sum)
            let second = Reference.matmul(low, cw, m: m, n: n, k: 8, transposeB: true)
            report("gemm two-term sum (fused serial adapter) \(m)x\(n)x\(k)+8", try sum.download(), (0..<m * n).map { linear[$0] + 0.5 * second[$0] },
                   atol: 1e-4, rtol: 1e-5)
        }
        if engine.gemmProfile.tiles != nil {
            // The opt-in split-k (SPLITK=1) on the adapter's dA = g^T u at ViT-B's batch 32: one
            // group of the m <= 16 tile, so it splits on any device of two or more compute units.
            let (m, n, k) = (8, 768, 6304)
            let g = values(k * m, 15), u = values(k * n, 16), c0 = values(m * n, 17)
            let saved = engine.gemmProfile
            defer { engine.gemmProfile = saved }
            for split in [true, false] {
                engine.gemmProfile.splitK = split
                let c = try engine.tensor(c0, shape: [m, n])
                try engine.gemm(try engine.tensor(g, shape: [k, m]), try engine.tensor(u, shape: [k, n]), into: c, transposeA: true, alpha: 0.5, beta: 1)
                let product = Reference.matmul(g, u, m: m, n: n, k: k, transposeA: true)
                report("gemm \(split ? "split-k" : "one pass") TN \(m)x\(n)x\(k) (the adapter's dA)", try c.download(),
                       (0..<m * n).map { 0.5 * product[$0] + Double(c0[$0]) }, atol: 2e-6 * Double(k) + 1e-6, rtol: 1e-5)
            }
        }

        for (batch, tokens, heads, dh) in [(2, 65, 3, 64), (1, 197, 2, 64), (2, 17, 2, 40), (1, 9, 1, 6)] {
            let width = heads * dh, rows = batch * tokens
            let qkv = values(rows * 3 * width, 9).map { $0 * 2 }, dO = values(rows * width, 10)
            func columns(_ part: Int) -> [Double] {
                var out: [Double] = []
                for r in 0..<rows {
                    let start: Int = r * 3 * width + part * width
                    out += qkv[start..<start + width].map(Double.init)
                }
                return out
            }
            let qkvTensor = try engine.tensor(qkv, shape: [rows, 3 * width])
            let layout = { (tensor: Tensor, column: Int) in HeadLayout(try tensor.view(offset: column, shape: [rows * 3 * width - column]), rowStride: 3 * width) }
            let shape = AttentionShape(batch: batch, tokens: tokens, heads: heads, headDimension: dh)
            let o = try engine.empty([rows, width]), lse = try engine.empty([batch, heads, tokens])
            try engine.attentionForward(shape, q: try layout(qkvTensor, 0), k: try layout(qkvTensor, width), v: try layout(qkvTensor, 2 * width), output: o, lse: lse)
            let expected = Reference.attention(q: columns(0), k: columns(1), v: columns(2), batch: batch, tokens: tokens, heads: heads, headDimension: dh)
            let name = "B\(batch) N\(tokens) H\(heads) dh\(dh)"
            report("attention forward \(name)", try o.download(), expected.o, atol: 1e-5, rtol: 1e-4)
            // The opt-in split dK/dV flash kernels too (SLORAGPU_FLASH_SPLIT), on the first shape.
            let splits: [Bool]
            if case .flash = engine.attentionPath, batch == 2, tokens == 65 { splits = [engine.flashSplitBackward, !engine.flashSplitBackward] } else { splits = [engine.flashSplitBackward] }
            let defaultSplit = engine.flashSplitBackward
            defer { engine.flashSplitBackward = defaultSplit }
            for split in splits {
            engine.flashSplitBackward = split
            let name = split == defaultSplit ? name : name + (split ? " (dK, dV split)" : " (dK, dV fused)")
            let dqkv = try engine.zeros([rows, 3 * width])
            try engine.attentionBackward(shape, q: try layout(qkvTensor, 0), k: try layout(qkvTensor, width), v: try layout(qkvTensor, 2 * width), output: o, lse: lse,
                                         dOutput: try engine.tensor(dO, shape: [rows, width]),
                                         dq: try layout(dqkv, 0), dk: try layout(dqkv, width), dv: try layout(dqkv, 2 * width))
            let grads = Reference.attentionBackward(q: columns(0), k: columns(1), v: columns(2), dO: dO.map(Double.init), batch: batch,
                                                    tokens: tokens, heads: heads, headDimension: dh)
            var want: [Double] = []
            for r in 0..<rows {
                let range = r * width..<(r + 1) * width
                want += grads.dq[range]
                want += grads.dk[range]
                want += grads.dv[range]
            }
            report("attention backward \(name)", try dqkv.download(), want, atol: 2e-5, rtol: 1e-3)
            }
        }
        for (rows, width) in [(197, 384), (65, 31), (3, 768)] {
            let x = values(rows * width, 11).enumerated().map { $1 * 3 + Float($0 % 7) * 0.5 }
            let gamma = values(width, 12).map { 1 + 0.5 * $0 }, beta = values(width, 13), dy = values(rows * width, 14)
            let xTensor = try engine.tensor(x, shape: [rows, width]), gammaTensor = try engine.tensor(gamma, shape: [width])
            let y = try engine.empty([rows, width]), mean = try engine.empty([rows]), rstd = try engine.empty([rows])
            try engine.layerNormForward(xTensor, gamma: gammaTensor, beta: try engine.tensor(beta, shape: [width]), eps: 1e-6, into: y, mean: mean, rstd: rstd)
            let doubles = { (v: [Float]) in v.map(Double.init) }
            let expected = Reference.layerNorm(doubles(x), gamma: doubles(gamma), beta: doubles(beta), rows: rows, width: width, eps: 1e-6)
            report("layernorm forward \(rows)x\(width)", try y.download(), expected.y, atol: 1e-5, rtol: 1e-5)
            let dx = try engine.empty([rows, width])
            try engine.layerNormBackward(try engine.tensor(dy, shape: [rows, width]), x: xTensor, gamma: gammaTensor, mean: mean, rstd: rstd, dx: dx)
            let grads = Reference.layerNormBackward(doubles(dy), x: doubles(x), gamma: doubles(gamma), rows: rows, width: width, eps: 1e-6)
            report("layernorm backward \(rows)x\(width)", try dx.download(), grads.dx, atol: 1e-5, rtol: 1e-4)
        }
        for (batch, classes) in [(8, 1000), (17, 10), (3, 21843)] {
            let logits = values(batch * classes, 15).map { $0 * 8 + 40 }, labels = (0..<batch).map { Int32($0 * 61 % classes) }
            let losses = try engine.empty([batch]), dLogits = try engine.empty([batch, classes])
            try engine.softmaxCrossEntropy(logits: try engine.tensor(logits, shape: [batch, classes]), labels: try engine.tensor(labels, shape: [batch]),
                                           smoothing: 0.1, losses: losses, dLogits: dLogits)
            let expected = Reference.softmaxCrossEntropy(logits.map(Double.init), labels: labels.map(Int.init), classes: classes, smoothing: 0.1)
            report("softmax cross-entropy \(batch)x\(classes)", try losses.download(), expected.losses, atol: 1e-5, rtol: 1e-5)
            report("softmax cross-entropy gradient \(batch)x\(classes)", try dLogits.download(), expected.dlogits, atol: 1e-7, rtol: 1e-4)
        }
        do {
            let (rows, columns) = (197, 65)
            let dy = values(rows * columns, 16), sums = try engine.empty([columns])
            try engine.columnSums(try engine.tensor(dy, shape: [rows, columns]), into: sums)
            report("column sums \(rows)x\(columns)", try sums.download(),
                   (0..<columns).map { c in (0..<rows).reduce(0.0) { $0 + Double(dy[$1 * columns + c]) } }, atol: 1e-4, rtol: 1e-5)
        }
        let fixtureDirectory = URL(fileURLWithPath: fixtures)
        if FileManager.default.fileExists(atPath: fixtureDirectory.appendingPathComponent("batch.safetensors").path) {
            // The parity tests' tolerances (fp32 against PyTorch fp32).
            let batch = try SafeTensorsFile(contentsOf: fixtureDirectory.appendingPathComponent("batch.safetensors"))
            guard let imageShape = batch.entry("images")?.shape, let labelCount = batch.entry("labels")?.shape.first else {
                throw ValidationError("\(batch.path): expected tensors 'images' and 'labels'")
            }
            let images = try engine.tensor(try batch.floats("images"), shape: imageShape)
            let labels = try engine.tensor(try batch.floats("labels").map { Int32($0) }, shape: [labelCount])
            let base = try ModelOptions.parse(["--model", fixtureDirectory.appendingPathComponent("hf-vit").path])
            for method in ["serial", "lora", "full", "probe"] {
                let adapter = try AdapterFile.load(fixtureDirectory.appendingPathComponent("\(method)/initial.safetensors"))
                let (model, _) = try buildModel(engine, base, method: adapter.method, classes: adapter.config.classes, seed: 0, adapter: adapter)
                let parameters = model.parameters
                let expected = try SafeTensorsFile(contentsOf: fixtureDirectory.appendingPathComponent("\(method)/expected.safetensors"))
                try parameters.zeroGradients()
                let logits = try model.forward(images)
                report("model \(method) logits against PyTorch", try logits.download(), try expected.floats("logits").map(Double.init), atol: 2e-5, rtol: 1e-4)
                let (loss, dLogits) = try model.loss(labels: labels)
                report("model \(method) loss against PyTorch", try loss.download(), try expected.floats("loss").map(Double.init), atol: 2e-5, rtol: 1e-4)
                try model.backward(dLogits)
                var gradients: [Float] = [], wanted: [Double] = []
                for name in parameters.trainableNames {
                    gradients += try parameters.gradient(name)!.download()
                    wanted += try expected.floats("grad/" + name).map(Double.init)
                }
                report("model \(method) gradients against PyTorch (\(parameters.trainableNames.count) tensors)", gradients, wanted, atol: 2e-5, rtol: 1e-3)
            }
        } else {
            print("skip  model against PyTorch: no fixtures at \(fixtures)")
        }
        print(failures == 0 ? "selftest: all checks passed" : "selftest: \(failures) checks FAILED")
        if failures > 0 { throw ExitCode(1) }
    }
}
