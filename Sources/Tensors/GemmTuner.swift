import CLRuntime
import Foundation

// The GEMM auto-tuner: searches work-group tiles for `gemm_tiled` on the device itself, checks
// every candidate's result against the host before timing it, and caches the winner per device,
// driver and kernel source next to the compiled-kernel cache. Kernel Tuner's and CLBlast's
// structure: a small space filtered by the device's limits, seeds first, a few timed runs per
// candidate with an early stop at 3x the best, and a cache entry that is re-tuned, never
// trusted, when it does not verify.


/// What a tuning result is valid for: the same platform, device, driver and GEMM source.
public struct TuningKey: Codable, Equatable, Sendable {
    public var platform: String
    public var device: String
    public var driver: String
    /// SHA-256 of Kernels/gemm.cl as built.
    public var gemmSource: String

    public init(engine: Engine) throws {
        platform = engine.device.platform.name
        device = engine.device.name
        driver = engine.device.info.driverVersion
        gemmSource = SHA256.hex(try engine.kernels.sources.source(named: "gemm"))
    }
}

/// One tuned shape class: the winner, its rate, and how many candidates were tried.
public struct TunedClass: Codable, Equatable, Sendable {
    public var shape: [Int]
    public var tile: TiledGemm
    public var gflops: Double
    public var tried: Int
    public var rejected: Int
}

public struct TuningEntry: Codable, Equatable, Sendable {
    public var key: TuningKey
    public var tiles: GemmTiles
    public var classes: [String: TunedClass]
    /// The flash attention work-group height that was fastest (nil: not tuned).
    public var attentionRows: Int?
    /// The row-reduction work-group size (LayerNorm, softmax cross-entropy, sums) that was
    /// fastest (nil: not tuned; entries written before it existed decode with nil).
    public var reductionSize: Int?
    public var version: String
    public var date: String
}

/// Tuning entries on disk: `<kernel cache>/tuning/<hash of the key>.json`.
public struct TuningCache: Sendable {
    public let directory: URL

    public init(kernelCache: URL) { directory = kernelCache.appendingPathComponent("tuning") }

    public func url(for key: TuningKey) -> URL {
        let text = "\(key.platform)|\(key.device)|\(key.driver)|\(key.gemmSource)"
        return directory.appendingPathComponent(String(SHA256.hex(text).prefix(32)) + ".json")
    }

    public enum Lookup: Equatable, Sendable {
        case hit(TuningEntry)
        case miss
        /// Present but not usable (damaged, another key, tiles the device cannot run).
        case invalid(String)
    }

    public func load(_ key: TuningKey, device: Device) -> Lookup {
        let url = url(for: key)
        guard FileManager.default.fileExists(atPath: url.path) else { return .miss }
        return Self.verify(try? Data(contentsOf: url), key: key, device: device, name: url.lastPathComponent)
    }

    /// An entry's bytes checked against `key` and the device's limits.
    public static func verify(_ data: Data?, key: TuningKey, device: Device, name: String) -> Lookup {
        guard let data, let entry = try? JSONDecoder().decode(TuningEntry.self, from: data) else { return .invalid("\(name) is not a tuning entry") }
        guard entry.key == key else { return .invalid("\(name) was tuned for another device, driver or kernel source") }
        for tile in [entry.tiles.large, entry.tiles.narrowColumns, entry.tiles.narrowRows] + (entry.tiles.wide.map { [$0] } ?? []) {
            do { try tile.validate(maxWorkGroup: device.info.maxWorkGroupSize, deviceLocalBytes: Int(clamping: device.info.localMemoryBytes)) } catch {
                return .invalid("\(name): \(error)")
            }
        }
        if entry.tiles.wide != nil, (entry.tiles.wideGroupsPerUnit ?? 0) < 1 {
            return .invalid("\(name): a wide tile needs wideGroupsPerUnit of at least 1")
        }
        if let rows = entry.attentionRows, ![32, 64, 128].contains(rows) { return .invalid("\(name): flash rows \(rows) is not 32, 64 or 128") }
        if let size = entry.reductionSize, !GemmTuner.reductionSizes.contains(size) || size > device.info.maxWorkGroupSize {
            return .invalid("\(name): reduction work-group \(size) is not one of \(GemmTuner.reductionSizes) within the device's \(device.info.maxWorkGroupSize)")
        }
        return .hit(entry)
    }

    /// A committed entry (Kernels/tuning/*.json, embedded at build time) for this platform,
    /// device and GEMM source, so a fresh machine of a known kind starts tuned. Another driver
    /// version is accepted (the tiles are re-checked against this device's limits); a different
    /// GEMM source is not.
    public static func committed(for key: TuningKey, device: Device, entries: [String: String]? = nil) -> TuningEntry? {
        let entries = entries ?? EmbeddedKernelSources.tuning
        for name in entries.keys.sorted() {
            guard let text = entries[name], let entry = try? JSONDecoder().decode(TuningEntry.self, from: Data(text.utf8)),
                  entry.key.platform == key.platform, entry.key.device == key.device, entry.key.gemmSource == key.gemmSource,
                  case .hit(let verified) = verify(Data(text.utf8), key: entry.key, device: device, name: name) else { continue }
            return verified
        }
        return nil
    }

    public func store(_ entry: TuningEntry) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        let data = try encoder.encode(entry)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let url = url(for: entry.key)
        let temporary = directory.appendingPathComponent(".\(url.lastPathComponent).\(ProcessInfo.processInfo.processIdentifier).tmp")
        try data.write(to: temporary)
        guard rename(temporary.path, url.path) == 0 else {
            try? FileManager.default.removeItem(at: temporary)
            throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: url.path])
        }
    }
}

public enum GemmTuner {
    /// The shape classes and the products each is timed on (a ViT-B/16 step at batch 8: 1576
    /// tokens, width 768; the low-rank factors at r = 8). A class named more than once is timed
    /// on the sum of its products: the large tile must also fill a GPU on ViT-S's narrow fc2
    /// (2080 x 384 x 1536 at batch 32), where a 128 x 128 tile leaves most multiprocessors idle.
    /// "wide" (after "large"): a tile larger than the large one, kept only if it beats the large
    /// tile by 5% on a product big enough to fill the device with it (ViT-B's qkv at batch 32).
    public static let vitBase: [(name: String, m: Int, n: Int, k: Int)] = [
        ("large", 1576, 2304, 768), ("large", 2080, 384, 1536), ("narrowColumns", 1576, 8, 768), ("narrowRows", 8, 768, 1576),
        ("wide", 6304, 2304, 768),
    ]

    /// The work-groups per compute unit from which a product takes the wide tile: not tuned, the
    /// H200's threshold sweep (2-16 equal on ViT-B, 32 too high; docs/BENCHMARKS.md).
    public static let wideGroupsPerUnit = 16

    /// The larger tiles (64 or 32 outputs per work-item) that a nested-loop order reaches last,
    /// tried right after the seeds; on the H200 none of them won (docs/BENCHMARKS.md).
    static let largeFavourites = [
        TiledGemm(mwg: 128, nwg: 128, kwg: 16, mdimc: 16, ndimc: 16, vwm: 4),
        TiledGemm(mwg: 128, nwg: 128, kwg: 8, mdimc: 16, ndimc: 16, vwm: 4),
        TiledGemm(mwg: 128, nwg: 64, kwg: 16, mdimc: 16, ndimc: 16, vwm: 4),
        TiledGemm(mwg: 64, nwg: 128, kwg: 16, mdimc: 16, ndimc: 16, vwm: 4),
        TiledGemm(mwg: 64, nwg: 64, kwg: 16, mdimc: 8, ndimc: 16, vwm: 4),
    ]

    /// The search space, seeds first, filtered by the kernel's and the device's limits:
    /// MWG, NWG in {32, 64, 128}, KWG in {8, 16, 32}, MDIMC, NDIMC in {8, 16, 32}, VWM in {2, 4}
    /// for large products; for the narrow classes the narrow side is 16 wide. After the seeds
    /// (and, for large products, `largeFavourites`) the space comes in a fixed shuffled order, so
    /// that a budget that ends early has sampled all of it rather than its first corner (the
    /// first GPU run tried 55 of the large class's candidates, all with MWG = 32).
    public static func candidates(for className: String, device: Device) -> [TiledGemm] {
        var first: [TiledGemm] = [], rest: [TiledGemm] = []
        let seed = GemmTiles.seed
        switch className {
        case "narrowColumns":
            first.append(seed.narrowColumns)
            for mwg in [64, 128, 256] { for kwg in [8, 16, 32] { for mdimc in [16, 32, 64] { for ndimc in [2, 4] { for vwm in [2, 4] {
                rest.append(TiledGemm(mwg: mwg, nwg: 16, kwg: kwg, mdimc: mdimc, ndimc: ndimc, vwm: vwm))
            } } } } }
        case "narrowRows":
            first.append(seed.narrowRows)
            for nwg in [64, 128, 256] { for kwg in [8, 16, 32] { for ndimc in [16, 32, 64] { for mdimc in [2, 4] { for vwm in [2, 4] {
                rest.append(TiledGemm(mwg: 16, nwg: nwg, kwg: kwg, mdimc: mdimc, ndimc: ndimc, vwm: vwm))
            } } } } }
        default:
            // CLBlast's tuned rows for the RTX 3090 and A100 come first.
            first += [seed.large, TiledGemm(mwg: 32, nwg: 64, kwg: 32, mdimc: 8, ndimc: 16, vwm: 4)] + largeFavourites
            for mwg in [32, 64, 128] { for nwg in [32, 64, 128] { for kwg in [8, 16, 32] { for mdimc in [8, 16, 32] { for ndimc in [8, 16, 32] { for vwm in [2, 4] {
                rest.append(TiledGemm(mwg: mwg, nwg: nwg, kwg: kwg, mdimc: mdimc, ndimc: ndimc, vwm: vwm))
            } } } } } }
        }
        var seen = Set<TiledGemm>()
        return (first + shuffled(rest)).filter { tile in
            guard seen.insert(tile).inserted else { return false }
            guard (try? tile.validate(maxWorkGroup: device.info.maxWorkGroupSize, deviceLocalBytes: Int(clamping: device.info.localMemoryBytes))) != nil else { return false }
            // At least 4 outputs per work-item, at most 64 (registers).
            let outputs = (tile.mwg / tile.mdimc) * (tile.nwg / tile.ndimc)
            return (4...64).contains(outputs) && (64...512).contains(tile.workGroupSize)
        }
    }

    /// Fisher-Yates with a fixed linear congruential generator: the same order on every machine
    /// and every run, so a tuning run can be repeated.
    static func shuffled<Element>(_ elements: [Element]) -> [Element] {
        var result = elements, state: UInt64 = 0x9E37_79B9_7F4A_7C15
        for index in stride(from: result.count - 1, to: 0, by: -1) {
            state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
            result.swapAt(index, Int((state >> 33) % UInt64(index + 1)))
        }
        return result
    }

    /// One product of a class, on the device, with the host's operands for the check.
    private struct TimedProduct {
        let m: Int, n: Int, k: Int
        let a: [Float], b: [Float]
        let aTensor: Tensor, bTensor: Tensor, c: Tensor
        var flops: Double { 2 * Double(m) * Double(n) * Double(k) }
    }

    /// Tunes every shape class within `budget` seconds (shared, the large class getting twice a
    /// narrow one's share; a class runs at least its seed). `shapes` overrides the products timed
    /// (tests use small ones).
    public static func tune(_ engine: Engine, budget: Double, maxCandidates: Int? = nil,
                            shapes: [(name: String, m: Int, n: Int, k: Int)] = vitBase,
                            attentionShape: AttentionShape = AttentionShape(batch: 8, tokens: 197, heads: 12, headDimension: 64),
                            reductionRows: Int = 1576, reductionWidth: Int = 768,
                            progress: (String) -> Void = { _ in }) throws -> TuningEntry {
        let started = Date()
        var tiles = GemmTiles.seed
        var classes: [String: TunedClass] = [:]
        let saved = engine.gemmProfile
        defer { engine.gemmProfile = saved }
        var names: [String] = []
        for shape in shapes where !names.contains(shape.name) { names.append(shape.name) }
        let weight = { (name: String) -> Double in name == "large" ? 2 : 1 }
        for (index, name) in names.enumerated() {
            let remainingWeight = names[index...].map(weight).reduce(0, +)
            let classBudget = (budget - Date().timeIntervalSince(started)) * weight(name) / remainingWeight
            let classStarted = Date()
            var pool: [TiledGemm]
            if name == "wide" {
                // The large tile first, as the baseline, then only larger tiles.
                let area = tiles.large.mwg * tiles.large.nwg
                pool = candidates(for: "large", device: engine.device).filter { $0.mwg * $0.nwg > area }
                if let maxCandidates { pool = Array(pool.prefix(maxCandidates)) }
                pool.insert(tiles.large, at: 0)
            } else {
                pool = candidates(for: name, device: engine.device)
                if let maxCandidates { pool = Array(pool.prefix(maxCandidates)) }
            }
            let products = try shapes.filter { $0.name == name }.enumerated().map { offset, shape in
                let a = tunerValues(shape.m * shape.k, seed: 1 + 2 * UInt64(offset)), b = tunerValues(shape.k * shape.n, seed: 2 + 2 * UInt64(offset))
                return TimedProduct(m: shape.m, n: shape.n, k: shape.k, a: a, b: b,
                                    aTensor: try engine.tensor(a, shape: [shape.m, shape.k]), bTensor: try engine.tensor(b, shape: [shape.k, shape.n]),
                                    c: try engine.empty([shape.m, shape.n]))
            }
            let shapeText = products.map { "\($0.m)x\($0.n)x\($0.k)" }.joined(separator: " + ")
            var best: (tile: TiledGemm, seconds: Double)?
            var baselineSeconds = Double.infinity
            var tried = 0, rejected = 0
            for tile in pool {
                if tried > 0, Date().timeIntervalSince(classStarted) > classBudget { break }
                tried += 1
                engine.gemmProfile = .gpu
                engine.gemmProfile.tiles = GemmTiles(large: tile, narrowColumns: tile, narrowRows: tile)
                do {
                    // Each product checked against the host in double precision before any timing.
                    var wrong = false
                    for product in products where !wrong {
                        try engine.fill(product.c, with: .nan)
                        try engine.gemm(product.aTensor, product.bTensor, into: product.c)
                        wrong = !agreesWithHost(try product.c.download(), product)
                    }
                    if wrong { rejected += 1; progress("  \(name) \(tile): wrong result, rejected"); continue }
                    var fastest = Double.infinity
                    for _ in 0..<3 {
                        try engine.synchronize()
                        let t0 = DispatchTime.now().uptimeNanoseconds
                        for product in products { try engine.gemm(product.aTensor, product.bTensor, into: product.c) }
                        try engine.synchronize()
                        fastest = min(fastest, Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
                        if let best, fastest > 3 * best.seconds { break }
                    }
                    if name == "wide" && tried == 1 { baselineSeconds = fastest }
                    if best == nil || fastest < best!.seconds { best = (tile, fastest) }
                } catch {
                    rejected += 1
                    progress("  \(name) \(tile): \(error)")
                }
            }
            guard let best else { throw TensorError.shapeMismatch(operation: "tune", details: "no tile of the \(name) class ran correctly") }
            let gflops = products.map(\.flops).reduce(0, +) / best.seconds / 1e9
            progress(String(format: "%@ (%@): %@ at %.1f GFLOP/s, %d tried, %d rejected", name, shapeText, "\(best.tile)", gflops, tried, rejected))
            classes[name] = TunedClass(shape: [products[0].m, products[0].n, products[0].k], tile: best.tile, gflops: gflops, tried: tried, rejected: rejected)
            switch name {
            case "narrowColumns": tiles.narrowColumns = best.tile
            case "narrowRows": tiles.narrowRows = best.tile
            case "wide":
                let wins = best.tile != tiles.large && best.seconds < 0.95 * baselineSeconds
                (tiles.wide, tiles.wideGroupsPerUnit) = wins ? (best.tile, wideGroupsPerUnit) : (nil, nil)
                progress(wins ? String(format: "wide: %.0f%% faster than the large tile there; used from %d groups per unit",
                                       100 * (baselineSeconds / best.seconds - 1), wideGroupsPerUnit)
                              : "wide: no larger tile beat the large one by 5%; none kept")
            default: tiles.large = best.tile
            }
        }
        let formatter = ISO8601DateFormatter()
        return TuningEntry(key: try TuningKey(engine: engine), tiles: tiles, classes: classes,
                           attentionRows: try tuneAttention(engine, shape: attentionShape, progress: progress),
                           reductionSize: try tuneReductions(engine, rows: reductionRows, width: reductionWidth, progress: progress),
                           version: SloraGPU.version, date: formatter.string(from: Date()))
    }

    /// Flash attention's work-group height (32, 64 or 128 rows): each candidate's forward and
    /// backward checked against the row-per-item kernels on the same inputs, then timed.
    static func tuneAttention(_ engine: Engine, shape: AttentionShape, progress: (String) -> Void) throws -> Int? {
        let saved = engine.attentionPath
        defer { engine.attentionPath = saved }
        let rows = shape.batch * shape.tokens, width = shape.width
        let qkv = try engine.tensor(CheckValues.uniform(rows * 3 * width, seed: 3), shape: [rows, 3 * width])
        let dO = try engine.tensor(CheckValues.uniform(rows * width, seed: 4), shape: [rows, width])
        let o = try engine.empty([rows, width]), lse = try engine.empty([shape.batch, shape.heads, shape.tokens])
        let dqkv = try engine.empty([rows, 3 * width])
        func heads(_ tensor: Tensor, _ part: Int) throws -> HeadLayout {
            HeadLayout(try tensor.view(offset: part * width, shape: [tensor.count - part * width]), rowStride: 3 * width)
        }
        func run() throws -> [Float] {
            try engine.attentionForward(shape, q: try heads(qkv, 0), k: try heads(qkv, 1), v: try heads(qkv, 2), output: o, lse: lse)
            try engine.attentionBackward(shape, q: try heads(qkv, 0), k: try heads(qkv, 1), v: try heads(qkv, 2), output: o, lse: lse,
                                         dOutput: dO, dq: try heads(dqkv, 0), dk: try heads(dqkv, 1), dv: try heads(dqkv, 2))
            return try o.download() + dqkv.download()
        }
        engine.attentionPath = .rowPerItem
        let reference = try run()
        let candidates = [64, 32, 128].filter { rows in
            let path = AttentionPath.flash(rows: rows)
            return path.resolved(headDimension: shape.headDimension, deviceLocalBytes: Int(clamping: engine.device.info.localMemoryBytes),
                                 maxWorkGroup: engine.device.info.maxWorkGroupSize) == path
        }
        let best = try fastestCorrect(candidates, engine: engine, reference: reference, atol: 1e-4, label: "attention flash rows", progress: progress) {
            engine.attentionPath = .flash(rows: $0)
            return try run()
        }
        if let best { progress(String(format: "attention (B%d N%d H%d dh%d): flash rows %d, %.2f ms forward + backward", shape.batch, shape.tokens, shape.heads, shape.headDimension, best.candidate, best.seconds * 1e3)) }
        return best?.candidate
    }

    /// Of `candidates`, the fastest whose result (`run` after applying it) matches `reference`
    /// within atol + 1e-3 relative; a wrong one is reported and skipped, never timed. Each is
    /// timed as the best of 3 runs.
    static func fastestCorrect(_ candidates: [Int], engine: Engine, reference: [Float], atol: Float, label: String,
                               progress: (String) -> Void, run: (Int) throws -> [Float]) throws -> (candidate: Int, seconds: Double)? {
        var best: (candidate: Int, seconds: Double)?
        for candidate in candidates {
            let result = try run(candidate)
            guard result.count == reference.count, zip(result, reference).allSatisfy({ abs($0 - $1) <= atol + 1e-3 * abs($1) }) else {
                progress("  \(label) \(candidate): wrong result, rejected")
                continue
            }
            var fastest = Double.infinity
            for _ in 0..<3 {
                try engine.synchronize()
                let t0 = DispatchTime.now().uptimeNanoseconds
                _ = try run(candidate)
                fastest = min(fastest, Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
            }
            if fastest < best?.seconds ?? .infinity { best = (candidate, fastest) }
        }
        return best
    }

    /// The row-reduction work-group sizes tried (powers of two; the kernels' trees need one).
    public static let reductionSizes = [32, 64, 128, 256, 512]

    /// The row-reduction work-group size: each candidate's LayerNorm forward and backward,
    /// column sums and softmax cross-entropy (over `rows` x `width`, ViT-B/16's at batch 8 by
    /// default) checked against the row-per-item kernels on the same inputs, then timed.
    static func tuneReductions(_ engine: Engine, rows: Int, width: Int, progress: (String) -> Void) throws -> Int? {
        let saved = engine.reductionPath
        defer { engine.reductionPath = saved }
        let classes = 1000
        let x = try engine.tensor(CheckValues.uniform(rows * width, seed: 5).map { $0 * 3 + 1 }, shape: [rows, width])
        let gamma = try engine.tensor(CheckValues.uniform(width, seed: 6).map { 1 + $0 / 2 }, shape: [width])
        let beta = try engine.tensor(CheckValues.uniform(width, seed: 7), shape: [width])
        let dy = try engine.tensor(CheckValues.uniform(rows * width, seed: 8), shape: [rows, width])
        let logitRows = max(1, rows / 197)
        let logits = try engine.tensor(CheckValues.uniform(logitRows * classes, seed: 9).map { $0 * 8 }, shape: [logitRows, classes])
        let labels = try engine.tensor((0..<logitRows).map { Int32($0 * 61 % classes) }, shape: [logitRows])
        let y = try engine.empty([rows, width]), mean = try engine.empty([rows]), rstd = try engine.empty([rows])
        let dx = try engine.empty([rows, width]), dGamma = try engine.empty([width]), dBeta = try engine.empty([width])
        let bias = try engine.empty([width]), losses = try engine.empty([logitRows]), dLogits = try engine.empty([logitRows, classes])
        func run() throws -> [Float] {
            try engine.layerNormForward(x, gamma: gamma, beta: beta, eps: 1e-6, into: y, mean: mean, rstd: rstd)
            try engine.layerNormBackward(dy, x: x, gamma: gamma, mean: mean, rstd: rstd, dx: dx, accumulate: false, dGamma: dGamma, dBeta: dBeta)
            try engine.columnSums(dy, into: bias)
            try engine.softmaxCrossEntropy(logits: logits, labels: labels, losses: losses, dLogits: dLogits)
            return try y.download() + dx.download() + dGamma.download() + dBeta.download() + bias.download()
                + losses.download() + dLogits.download() + engine.sumOfSquares(dy).download()
        }
        engine.reductionPath = .rowPerItem
        let reference = try run()
        // Sums over up to `rows` terms in another order: atol relative to the values' scale.
        let best = try fastestCorrect(reductionSizes.filter { $0 <= engine.device.info.maxWorkGroupSize }, engine: engine, reference: reference,
                                      atol: 1e-3, label: "reductions, work-group", progress: progress) {
            engine.reductionPath = .workGroup(size: $0)
            return try run()
        }
        if let best { progress(String(format: "reductions (%d x %d): work-group %d, %.2f ms", rows, width, best.candidate, best.seconds * 1e3)) }
        return best?.candidate
    }

    /// 64 scattered elements of C against the host's double-precision sum, within 1e-5 of the
    /// sum of the terms' magnitudes.
    private static func agreesWithHost(_ result: [Float], _ product: TimedProduct) -> Bool {
        (0..<64).allSatisfy { index in
            let (i, j) = (index * 7919 % product.m, index * 104_729 % product.n)
            var sum = 0.0, magnitude = 0.0
            for p in 0..<product.k {
                let term = Double(product.a[i * product.k + p]) * Double(product.b[p * product.n + j])
                sum += term
                magnitude += abs(term)
            }
            return abs(Double(result[i * product.n + j]) - sum) <= 1e-5 * magnitude + 1e-6
        }
    }

    private static func tunerValues(_ count: Int, seed: UInt64) -> [Float] { CheckValues.uniform(count, seed: seed) }
}

/// Deterministic operands for the on-device checks (tuner, selftest): xorshift64, uniform in
/// [-1, 1), non-trivial and reproducible.
public enum CheckValues {
    public static func uniform(_ count: Int, seed: UInt64) -> [Float] {
        var state = seed &* 0x9E37_79B9_7F4A_7C15 | 1
        return (0..<count).map { _ in
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            return Float(state >> 40) / Float(1 << 24) * 2 - 1
        }
    }
}

extension Engine {
    /// Uses the cached tuning entry for this device when one verifies, else a committed one
    /// (GPUs only: the CPU profile has no tiles). Returns what happened.
    @discardableResult
    public func applyCachedTuning(cache: TuningCache?) -> TuningCache.Lookup {
        guard gemmProfile.tiles != nil, let key = try? TuningKey(engine: self) else { return .miss }
        var lookup = cache?.load(key, device: device) ?? .miss
        if lookup == .miss, let entry = TuningCache.committed(for: key, device: device) { lookup = .hit(entry) }
        if case .hit(let entry) = lookup {
            gemmProfile.tiles = entry.tiles
            if let rows = entry.attentionRows, case .flash = attentionPath,
               ProcessInfo.processInfo.environment[AttentionPath.environmentVariable] == nil { attentionPath = .flash(rows: rows) }
            if let size = entry.reductionSize, case .workGroup = reductionPath { reductionPath = .workGroup(size: size) }
        }
        return lookup
    }
}
