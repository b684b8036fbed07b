@testable import Datasets
import Foundation
import Testing
@testable import Tensors
@testable import Training
@testable import Formats
@testable import Optimizers
@testable import ViT

/// Inputs per parser: a short fixed-seed run in the suite; set SLORAGPU_FUZZ_ITERATIONS for a
/// long one (docs/BENCHMARKS.md has the command and the counts of the last long run). A parser
/// that traps kills the test process, which fails the run; an error thrown is the right answer.
let fuzzIterations = ProcessInfo.processInfo.environment["SLORAGPU_FUZZ_ITERATIONS"].flatMap(Int.init) ?? 300

/// A seeded mutator in the style of libFuzzer's: bit flips, random and boundary bytes and
/// integers, inserted, deleted and duplicated ranges, truncation, and for text formats JSON
/// tokens spliced in. `focus` is the prefix most mutations land in (a header).
struct Mutator {
    var random: SplitMix

    init(seed: UInt64) { random = SplitMix(seed: seed) }

    mutating func next() -> UInt64 { random.next() }

    mutating func below(_ bound: Int) -> Int { bound <= 1 ? 0 : Int(next() % UInt64(bound)) }

    static let boundaryIntegers: [UInt64] = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFF, 0xFFFF, 0x7FFF_FFFF, 0x8000_0000, 0xFFFF_FFFF,
                                             0x7FFF_FFFF_FFFF_FFFF, 0x8000_0000_0000_0000, .max]
    static let jsonTokens = ["-1", "0", "1e308", "-1e308", "9999999999999999999", "1.5", "\"", "\\", "\\u0000", "\\ud800", "{", "}", "[", "]",
                             ",", ":", "null", "true", "false", "\"__metadata__\"", "\"shape\"", "\"data_offsets\"", "\"dtype\"", "\"F16\"", " "]

    mutating func mutate(_ input: [UInt8], focus: Int? = nil, text: Bool = false) -> [UInt8] {
        var bytes = input
        for _ in 0..<(1 + below(4)) {
            let limit = max(1, min(bytes.count, focus.map { below(4) == 0 ? bytes.count : $0 } ?? bytes.count))
            let at = below(limit)
            switch below(text ? 9 : 8) {
            case 0 where !bytes.isEmpty: bytes[at] ^= UInt8(1 << below(8))
            case 1 where !bytes.isEmpty: bytes[at] = UInt8(truncatingIfNeeded: next())
            case 2 where !bytes.isEmpty: bytes[at] = [0, 0xFF, 0x7F, 0x80, 1][below(5)]
            case 3 where bytes.count >= 8:
                let width = [2, 4, 8][below(3)], start = min(at, bytes.count - width)
                let value = Self.boundaryIntegers[below(Self.boundaryIntegers.count)]
                let bigEndian = below(2) == 0
                for i in 0..<width { bytes[start + i] = UInt8(truncatingIfNeeded: value >> UInt64(8 * (bigEndian ? width - 1 - i : i))) }
            case 4: bytes.insert(contentsOf: (0..<(1 + below(16))).map { _ in UInt8(truncatingIfNeeded: next()) }, at: min(at, bytes.count))
            case 5 where !bytes.isEmpty: bytes.removeSubrange(at..<min(bytes.count, at + 1 + below(32)))
            case 6 where !bytes.isEmpty:
                let start = below(bytes.count), chunk = Array(bytes[start..<min(bytes.count, start + 1 + below(64))])
                bytes.insert(contentsOf: chunk, at: min(at, bytes.count))
            case 7 where !bytes.isEmpty: bytes.removeLast(below(bytes.count))
            case 8: bytes.insert(contentsOf: Array(Self.jsonTokens[below(Self.jsonTokens.count)].utf8), at: min(at, bytes.count))
            default: break
            }
        }
        return bytes
    }
}

/// Runs `parse` on `fuzzIterations` mutants of each seed; returns how many were accepted.
@discardableResult
func fuzz(_ name: String, seeds: [[UInt8]], seed: UInt64, focus: (([UInt8]) -> Int)? = nil, text: Bool = false,
          _ parse: ([UInt8]) throws -> Void) -> Int {
    var mutator = Mutator(seed: seed)
    var accepted = 0
    for iteration in 0..<fuzzIterations {
        let original = seeds[iteration % seeds.count]
        let input = mutator.mutate(original, focus: focus?(original), text: text)
        if (try? parse(input)) != nil { accepted += 1 }
    }
    if fuzzIterations > 10_000 { print("fuzz \(name): \(fuzzIterations) inputs, \(accepted) accepted, \(fuzzIterations - accepted) refused, no crash") }
    return accepted
}

/// The 8-byte length prefix plus the JSON header of a safetensors file.
func safetensorsHeaderEnd(_ bytes: [UInt8]) -> Int {
    guard bytes.count >= 8 else { return bytes.count }
    let length = bytes.prefix(8).enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
    return Int(min(UInt64(bytes.count), 8 + length))
}

@Suite("Fuzzing the parsers")
struct FuzzTests {
    @Test func safetensorsHeadersAndAdapterMetadata() throws {
        let seeds = try ["serial/initial.safetensors", "lora/initial.safetensors", "hf-vit/model.safetensors"].map {
            [UInt8](try Data(contentsOf: parityFixtures.appendingPathComponent($0)))
        }
        fuzz("safetensors", seeds: seeds, seed: 1, focus: safetensorsHeaderEnd, text: true) { bytes in
            let file = try SafeTensorsFile(data: Data(bytes), path: "fuzz")
            for entry in file.entries {
                #expect(entry.range.upperBound <= bytes.count)
                if let values = try? file.floats(entry.name) { #expect(values.count == entry.elementCount) }
            }
            _ = try AdapterFile.load(file)
        }
    }

    @Test func idxFiles() {
        func header(_ magic: UInt32, _ dimensions: [UInt32]) -> [UInt8] {
            ([magic] + dimensions).flatMap { value in (0..<4).map { UInt8(truncatingIfNeeded: value >> (24 - 8 * UInt32($0))) } }
        }
        let images = header(0x803, [3, 2, 3]) + (0..<18).map { UInt8($0 * 13) }
        let labels = header(0x801, [3]) + [0, 2, 1]
        var mutator = Mutator(seed: 99)
        fuzz("IDX", seeds: [images + [0xAA] + labels], seed: 2) { joined in
            // One input split at the first 0xAA after the image header: both files mutate.
            let split = joined.dropFirst(16).firstIndex(of: 0xAA) ?? joined.count
            let imageBytes = Array(joined[..<split]), labelBytes = Array(joined[min(joined.count, split + 1)...])
            let set = try IDX.parse(images: mutator.below(3) == 0 ? images : imageBytes, imagesPath: "i", labels: labelBytes, labelsPath: "l",
                                    name: "fuzz", classNames: [])
            #expect(set.pixels.count == set.count * set.imageBytes)
        }
    }

    @Test func pngAndJpegImages() {
        fuzz("PNG", seeds: [pngBytes(), pngBytes(width: 3, height: 17)], seed: 3, focus: { _ in 64 }) { bytes in
            let (rgb, width, height) = try ImageFolder.decode(bytes, path: "fuzz.png")
            #expect(rgb.count == width * height * 3 && width * height <= ImageFolder.maximumPixels)
        }
        fuzz("JPEG", seeds: [jpegBytes(), jpegBytes(width: 17, height: 3)], seed: 4, focus: { _ in 200 }) { bytes in
            let (rgb, width, height) = try ImageFolder.decode(bytes, path: "fuzz.jpg")
            #expect(rgb.count == width * height * 3 && width * height <= ImageFolder.maximumPixels)
        }
    }

    @Test func trainingStates() throws {
        let state = TrainingState(step: 12, position: LoaderPosition(epoch: 1, batch: 3), bestAccuracy: 0.5, bestStep: 10, seed: 7)
        let directory = try makeTemporaryDirectory()
        let url = directory.appendingPathComponent("state.json")
        fuzz("state.json", seeds: [[UInt8](try JSONEncoder().encode(state))], seed: 5, text: true) { bytes in
            try Data(bytes).write(to: url)
            let loaded = try TrainingCheckpoint.loadState(directory)
            #expect(loaded.step >= 0 && loaded.position.batch >= 0 && loaded.position.epoch >= 0)
        }
    }

    @Test func compiledKernelCacheEntries() throws {
        let cache = ProgramDiskCache(directory: try makeTemporaryDirectory())
        try cache.store(key: "platform|device|driver|hash|-DOPT=1", binary: (0..<300).map { UInt8($0 % 251) })
        let entry = [UInt8](try Data(contentsOf: cache.fileURL(forKey: "platform|device|driver|hash|-DOPT=1")))
        let accepted = fuzz("cache entry", seeds: [entry], seed: 6, focus: { _ in 90 }) { bytes in
            guard case .hit = ProgramDiskCache.parse(bytes, key: "platform|device|driver|hash|-DOPT=1", name: "fuzz") else { throw CocoaError(.fileReadCorruptFile) }
        }
        // A mutant that still parses must be the original (the checksum covers the binary).
        #expect(accepted < fuzzIterations / 10)
    }

    @Test func peftAdapterConfigsAndWeights() throws {
        let directory = peftFixtures.appendingPathComponent("vit-t5")
        let config = [UInt8](try Data(contentsOf: directory.appendingPathComponent("adapter_config.json")))
        let weightBytes = [UInt8](try Data(contentsOf: directory.appendingPathComponent("adapter_model.safetensors")))
        let weights = try SafeTensorsFile(data: Data(weightBytes), path: "w")
        let base = try hfViTBase()
        fuzz("adapter_config.json", seeds: [config], seed: 8, text: true) { bytes in
            _ = try PEFTAdapter.load(configData: Data(bytes), configPath: "fuzz", weights: weights, base: base)
        }
        fuzz("adapter_model.safetensors", seeds: [weightBytes], seed: 9, focus: safetensorsHeaderEnd, text: true) { bytes in
            _ = try PEFTAdapter.load(configData: Data(config), configPath: "c", weights: try SafeTensorsFile(data: Data(bytes), path: "fuzz"), base: base)
        }
    }

    @Test func preprocessorConfigsAndTuningEntries() throws {
        let preprocessor = [UInt8](try Data(contentsOf: peftFixtures.appendingPathComponent("preprocessor/preprocessor_config.json")))
        fuzz("preprocessor_config.json", seeds: [preprocessor], seed: 10, text: true) { bytes in
            let parsed = try ImagePreprocessing.parse(Data(bytes), path: "fuzz")
            #expect(parsed.std.allSatisfy { $0 > 0 } && (parsed.size ?? 1) >= 1)
        }
        let engine = try makeEngine()
        let key = try TuningKey(engine: engine)
        var tiles = GemmTiles.seed
        (tiles.wide, tiles.wideGroupsPerUnit) = (TiledGemm(mwg: 32, nwg: 64, kwg: 16, mdimc: 8, ndimc: 8, vwm: 2), 16)
        let entry = TuningEntry(key: key, tiles: tiles, classes: ["large": TunedClass(shape: [1, 2, 3], tile: GemmTiles.seed.large, gflops: 1, tried: 1, rejected: 0)],
                                attentionRows: 64, version: "0", date: "d")
        let seedBytes = [UInt8](try JSONEncoder().encode(entry))
        fuzz("tuning entry", seeds: [seedBytes], seed: 11, text: true) { bytes in
            guard case .hit(let parsed) = TuningCache.verify(Data(bytes), key: key, device: engine.device, name: "fuzz") else { throw CocoaError(.fileReadCorruptFile) }
            try parsed.tiles.large.validate()
            _ = parsed.tiles.tile(m: 6304, n: 768, batches: 32, computeUnits: 132)
        }
    }

    @Test func configFiles() throws {
        let seeds = try ["hf-vit", "hf-dinov2"].map { [UInt8](try Data(contentsOf: parityFixtures.appendingPathComponent("\($0)/config.json"))) }
            + [[UInt8](try Data(contentsOf: clipFixtures.appendingPathComponent("hf-clip/config.json")))]
        fuzz("config.json", seeds: seeds, seed: 7, text: true) { bytes in
            let (config, _, _) = try ViTConfig.fromHuggingFace(Data(bytes), path: "fuzz")
            try config.validate()
        }
        let openCLIP = [[UInt8](try Data(contentsOf: clipFixtures.appendingPathComponent("open-clip/open_clip_config.json")))]
        fuzz("open_clip_config.json", seeds: openCLIP, seed: 8, text: true) { bytes in
            let (config, _, _) = try ViTConfig.fromOpenCLIP(Data(bytes), path: "fuzz")
            try config.validate()
        }
    }
}
