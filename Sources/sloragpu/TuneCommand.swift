import ArgumentParser
import Foundation
import Tensors

struct TuneCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "tune",
        abstract: "Tune the GPU GEMM's work-group tiles on the selected device and cache the result.",
        discussion: """
            Searches tile shapes per shape class (large products, and the low-rank ones with at most 16 \
            columns or rows) within the device's limits, seeds first; checks every candidate's result \
            against the host before timing it; keeps the fastest. The entry is cached beside the compiled \
            kernels, keyed by platform, device, driver and GEMM source, and used by every later run on that \
            device; an entry that does not verify is re-tuned. On a GPU the first train tunes by itself \
            (--no-tune skips). On a CPU device the tiled kernel is not used, but tuning runs there too (slowly).
            """
    )

    @OptionGroup var deviceOption: DeviceOption
    @Option(help: "Seconds for the whole search.")
    var budget: Double = 180
    @Option(help: "At most this many candidates per shape class.")
    var maxCandidates: Int?
    @Flag(help: "Time small products (256 x 256 x 256 and narrow ones, 197 x 384 reductions) instead of a ViT-B/16 step's: for trying the tuner on a CPU.")
    var small = false
    @Flag(help: "Tune even if a valid entry is cached.")
    var force = false
    @Option(help: "Also write the entry to this JSON file (to commit it for a known machine).")
    var export: String?
    @Option(name: .customLong("import"), help: "Install an entry from this JSON file for this device (verified first), without tuning.")
    var importFile: String?

    func validate() throws {
        guard budget > 0, budget <= 3600 else { throw ValidationError("--budget must be in (0, 3600] seconds, got \(budget)") }
        if let maxCandidates, maxCandidates < 1 { throw ValidationError("--max-candidates must be at least 1, got \(maxCandidates)") }
    }

    func run() throws {
        let engine = try Engine(deviceSpec: deviceOption.device)
        guard let cache = engine.tuningCache else { throw ValidationError("the kernel cache is off (SLORAGPU_CACHE_DIR=off): nowhere to keep a tuning entry") }
        let key = try TuningKey(engine: engine)
        print("device: \(engine.device.name), driver \(key.driver)")
        if let importFile {
            let lookup = TuningCache.verify(FileManager.default.contents(atPath: importFile), key: key, device: engine.device, name: importFile)
            guard case .hit(let entry) = lookup else {
                if case .invalid(let reason) = lookup { throw ValidationError("--import: \(reason)") }
                throw ValidationError("--import: cannot read \(importFile)")
            }
            try cache.store(entry)
            print("installed \(importFile): \(entry.tiles)")
            return
        }
        switch cache.load(key, device: engine.device) {
        case .hit(let entry) where !force:
            print("a tuned entry is cached (\(cache.url(for: key).path)): \(entry.tiles); --force tunes again")
            try export.map { try write(entry, to: $0) }
            return
        case .invalid(let reason):
            print("re-tuning: the cached entry cannot be used (\(reason))")
        default:
            break
        }
        let shapes = small ? [("large", 256, 256, 256), ("narrowColumns", 256, 8, 256), ("narrowRows", 8, 256, 256), ("wide", 512, 256, 128)] : GemmTuner.vitBase
        let attention = small ? AttentionShape(batch: 1, tokens: 33, heads: 1, headDimension: 16) : AttentionShape(batch: 8, tokens: 197, heads: 12, headDimension: 64)
        let entry = try GemmTuner.tune(engine, budget: budget, maxCandidates: maxCandidates, shapes: shapes, attentionShape: attention,
                                       reductionRows: small ? 197 : 1576, reductionWidth: small ? 384 : 768) { line in
            print(line)
            fflush(nil)
        }
        try cache.store(entry)
        print("tiles: \(entry.tiles)")
        print("cached: \(cache.url(for: key).path)")
        try export.map { try write(entry, to: $0) }
    }

    private func write(_ entry: TuningEntry, to path: String) throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try encoder.encode(entry).write(to: URL(fileURLWithPath: path), options: .atomic)
        print("exported: \(path)")
    }
}
