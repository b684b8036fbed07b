import ArgumentParser
import Datasets
import Foundation
import Tensors
import Training
import Formats
import Optimizers
import ViT

struct EvalCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "eval",
        abstract: "Accuracy, loss, per-class accuracy and confusion matrix of an adapter on a test set."
    )

    @Option(help: "Adapter: a run's adapter.safetensors (or checkpoints/best/adapter.safetensors), or a PEFT LoRA adapter directory. Without it, --model must be a classification checkpoint (its own head and id2label).")
    var adapter: String?
    @OptionGroup var modelOptions: ModelOptions
    @OptionGroup var weights: WeightStorageOption
    @OptionGroup var matmul: MatmulOption
    @Flag(help: "Apply the adapter even if it was trained on another base (its recorded base fingerprint differs).")
    var allowOtherBase = false
    @Option(help: "fashion-mnist, idx:DIR, folder:DIR or synthetic.")
    var data = "fashion-mnist"
    @Option(help: "Batch size.")
    var batch = 64
    @Option(help: "Use only the first N test images.")
    var testLimit: Int?
    @Option(help: "Write the logits [N, K] as a float32 .npy file.")
    var dumpLogits: String?
    @OptionGroup var deviceOption: DeviceOption

    func validate() throws {
        guard batch >= 1 else { throw ValidationError("--batch must be at least 1, got \(batch)") }
        if let testLimit, testLimit < 1 { throw ValidationError("--test-limit must be at least 1, got \(testLimit)") }
    }

    func run() throws {
        let engine = try Engine(deviceSpec: deviceOption.device)
        try matmul.apply(to: engine)
        let classifier = try Classifier(adapterPath: adapter, modelOptions: modelOptions, allowOtherBase: allowOtherBase, engine: engine,
                                        weightStorage: weights.storage.dtype)
        let model = classifier.model
        let (_, testSet) = try loadData(data, imageSize: model.config.imageSize, seed: 0)
        let test = testSet.prefix(testLimit)
        try classifier.checkClasses(against: test)
        print("model:    \(classifier.description)")
        fflush(nil)
        let loader = try BatchLoader(dataset: test, preprocessor: Preprocessor(outputSize: model.config.imageSize, mean: model.config.mean, std: model.config.std),
                                     batchSize: batch, shuffle: false, augment: false, seed: 0, repeats: false)
        let progress = EvaluationProgress(total: loader.batchesPerEpoch)
        let (result, logits) = try Evaluator.evaluate(model, loader, collectLogits: dumpLogits != nil, progress: progress.handle)
        progress.finish()
        let names = classifier.classNames.count == model.config.classes ? classifier.classNames : test.classNames
        print(String(format: "accuracy %.4f, loss %.4f on %d images (%@)", result.accuracy, result.loss, result.count, test.name))
        print("per-class accuracy:")
        for (index, accuracy) in result.perClassAccuracy.enumerated() {
            print(String(format: "  %-14@ %.4f", index < names.count ? displayName(names[index]) : "class \(index)", accuracy))
        }
        print("confusion matrix (rows: true class, columns: predicted):")
        for row in result.confusion { print("  " + row.map { String(format: "%5d", $0) }.joined(separator: " ")) }
        if let dumpLogits {
            try writeAtomically(npy(logits, rows: result.count, columns: model.config.classes), to: URL(fileURLWithPath: dumpLogits))
            print("logits: \(dumpLogits)")
        }
    }
}

/// The head must score the data's classes: the same number (else a label indexes past the
/// head), and the same names unless either side only numbers its classes (IDX files, HF's
/// LABEL_k defaults).
func checkClasses(count: Int, names: [String], of what: String, against data: ImageDataset) throws {
    func numbered(_ list: [String]) -> Bool {
        list.isEmpty || list == (0..<list.count).map(String.init) || list == (0..<list.count).map { "LABEL_\($0)" }
    }
    guard count == data.classNames.count, numbered(names) || numbered(data.classNames) || names == data.classNames else {
        throw ValidationError("""
            \(what) scores \(count) classes (\(displayList(names))), but \(displayName(data.name)) has \
            \(data.classNames.count) (\(displayList(data.classNames)))
            """)
    }
}

/// What eval and predict run: an adapter (sloragpu or PEFT) on --model, or --model alone when
/// it is a classification checkpoint.
struct Classifier {
    let model: ViTModel
    let classNames: [String]
    let description: String
    let adapterPath: String?

    init(adapterPath: String?, modelOptions: ModelOptions, allowOtherBase: Bool, engine: Engine, weightStorage: DType) throws {
        self.adapterPath = adapterPath
        if let adapterPath {
            let contents = try loadAdapter(adapterPath, modelOptions: modelOptions)
            let (model, backbone) = try buildModel(engine, modelOptions, method: contents.method, classes: contents.config.classes, seed: 0,
                                                   adapter: contents, adapterPath: adapterPath, allowOtherBase: allowOtherBase,
                                                   weightStorage: weightStorage)
            self.model = model
            classNames = contents.classNames
            description = "\(backbone.source) + \(contents.method) from \(adapterPath); \(model.config.imageSize) px, normalisation from \(backbone.normalization)"
        } else {
            let (model, backbone) = try buildModel(engine, modelOptions, method: .probe, classes: nil, seed: 0, defaultImageSize: nil,
                                                   weightStorage: weightStorage)
            guard backbone.hasHead else {
                throw ValidationError("\(backbone.source) has no classification head: give --adapter, or a checkpoint with a classifier (ViTForImageClassification, the output of merge)")
            }
            self.model = model
            classNames = backbone.classNames
            description = "\(backbone.source) with its own head; \(model.config.imageSize) px, normalisation from \(backbone.normalization)"
        }
    }

    func checkClasses(against data: ImageDataset) throws {
        try sloragpu.checkClasses(count: model.config.classes, names: classNames, of: adapterPath ?? "the model's head", against: data)
    }
}

/// NumPy .npy v1.0: magic, header dict padded to 64 bytes, little-endian float32 data.
func npy(_ values: [Float], rows: Int, columns: Int) -> Data {
    var header = "{'descr': '<f4', 'fortran_order': False, 'shape': (\(rows), \(columns)), }"
    while (10 + header.count + 1) % 64 != 0 { header += " " }
    header += "\n"
    var data = Data([0x93] + Array("NUMPY".utf8) + [1, 0])
    data.append(contentsOf: [UInt8(header.utf8.count & 0xff), UInt8(header.utf8.count >> 8)])
    data.append(contentsOf: Array(header.utf8))
    values.withUnsafeBytes { data.append(contentsOf: $0) }
    return data
}

struct PredictCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "predict",
        abstract: "Top-k classes with probabilities for PNG or JPEG images."
    )

    @Option(help: "Adapter (a sloragpu adapter file or a PEFT LoRA directory); without it --model must be a classification checkpoint.")
    var adapter: String?
    @OptionGroup var modelOptions: ModelOptions
    @OptionGroup var weights: WeightStorageOption
    @OptionGroup var matmul: MatmulOption
    @Flag(help: "Apply the adapter even if it was trained on another base.")
    var allowOtherBase = false
    @Option(help: "How many classes to show per image.")
    var top = 3
    @Argument(help: "PNG or JPEG files.")
    var images: [String]
    @OptionGroup var deviceOption: DeviceOption

    func validate() throws {
        guard !images.isEmpty else { throw ValidationError("give at least one image") }
        guard top >= 1 else { throw ValidationError("--top must be at least 1, got \(top)") }
    }

    func run() throws {
        let engine = try Engine(deviceSpec: deviceOption.device)
        try matmul.apply(to: engine)
        let classifier = try Classifier(adapterPath: adapter, modelOptions: modelOptions, allowOtherBase: allowOtherBase, engine: engine,
                                        weightStorage: weights.storage.dtype)
        let model = classifier.model
        let size = model.config.imageSize, classes = model.config.classes
        let preprocessor = Preprocessor(outputSize: size, mean: model.config.mean, std: model.config.std)
        for path in images {
            let (rgb, width, height) = try ImageFolder.decode(URL(fileURLWithPath: path))
            let dataset = try ImageDataset(name: path, height: height, width: width, channels: 3, classNames: ["?"], pixels: rgb, labels: [0])
            var values = [Float](repeating: 0, count: 3 * size * size)
            preprocessor.prepare(dataset, index: 0, augmentation: nil, into: &values, offset: 0)
            let logits = try model.forward(try engine.tensor(values, shape: [1, 3, size, size]), keepForBackward: false).download()
            let maximum = logits.max()!
            let exps = logits.map { exp(Double($0 - maximum)) }
            let total = exps.reduce(0, +)
            let ranked = (0..<classes).sorted { exps[$0] > exps[$1] }.prefix(top)
            guard logits.allSatisfy(\.isFinite) else {
                throw ValidationError("\(displayName(path)): the model gives non-finite logits (damaged weights or adapter?)")
            }
            print(displayName(path))
            for index in ranked {
                let name = index < classifier.classNames.count ? displayName(classifier.classNames[index]) : "class \(index)"
                print(String(format: "  %-16@ %.4f", name, exps[index] / total))
            }
        }
    }
}

struct MergeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "merge",
        abstract: "Base checkpoint + adapter -> a plain classification checkpoint (model.safetensors, config file, preprocessor_config.json) with the adapter folded in.",
        discussion: "ViT bases (HF ViT, DINOv2, timm) give an HF ViT checkpoint that loads in transformers (ViTForImageClassification, AutoImageProcessor, pipeline(\"image-classification\")); CLIP bases keep their naming (HF CLIP: CLIPForImageClassification; open_clip: visual.* plus the classifier). Both load in sloragpu eval and predict without an adapter."
    )

    @Option(help: "Adapter: a sloragpu adapter file or a PEFT LoRA directory.")
    var adapter: String
    @OptionGroup var modelOptions: ModelOptions
    @Flag(help: "Merge even if the adapter was trained on another base.")
    var allowOtherBase = false
    @OptionGroup var fileType: FileTypeOption
    @Option(help: "Output directory.")
    var output: String

    func run() throws {
        let contents = try loadAdapter(adapter, modelOptions: modelOptions)
        var backbone = try modelOptions.load(classes: contents.config.classes, defaultImageSize: contents.config.imageSize)
        try contents.checkFits(backbone.config, source: backbone.source, checkClasses: false)
        if !allowOtherBase { try contents.checkBase(backbone.fingerprint, path: adapter) }
        var config = contents.config
        // The export's input size is the one the base was loaded at (its positions resized to it).
        (config.mean, config.std, config.imageSize) = (backbone.config.mean, backbone.config.std, backbone.config.imageSize)
        let naming = backbone.naming.exportNaming, dtype = fileType.dtype(base: backbone)
        let merged = try Merge.merged(base: backbone.takeValues(), adapter: contents)
        try CheckpointExport.write(merged, config: config, naming: naming, classNames: contents.classNames, dtype: dtype, to: URL(fileURLWithPath: output))
        print("merged \(contents.method) into \(backbone.source): \(output) (\(naming.rawValue) naming, \(dtype.rawValue))")
    }
}

struct ExportCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "export",
        abstract: "Write models and adapters in the Hugging Face ecosystem's formats.",
        subcommands: [ExportPEFT.self, ExportBase.self]
    )
}

struct ExportPEFT: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "peft",
        abstract: "A LoRA adapter as a PEFT adapter directory (adapter_config.json + adapter_model.safetensors) for an HF ViT base.",
        discussion: """
            Attach it in Python to the HF ViT form of its base (sloragpu export base): \
            PeftModel.from_pretrained(ViTForImageClassification.from_pretrained(BASE), DIR). Training with \
            --method lora writes one into OUTPUT/peft by itself.
            """
    )

    @Option(help: "A sloragpu LoRA adapter file.")
    var adapter: String
    @Option(help: "Module names: transformers5 (vit.layers.N.attention.q_proj) or transformers4 (vit.encoder.layer.N.attention.attention.query).")
    var naming: PEFTNaming = .transformers5
    @Option(help: "base_model_name_or_path to record in adapter_config.json.")
    var baseModel = "base"
    @Option(help: "Output directory.")
    var output: String

    func run() throws {
        let contents = try AdapterFile.load(URL(fileURLWithPath: adapter))
        try PEFTAdapter.write(contents, to: URL(fileURLWithPath: output), naming: naming, baseModel: baseModel)
        print("wrote \(output)/\(PEFTAdapter.configFile) and \(PEFTAdapter.weightsFile) (\(naming.rawValue) names)")
    }
}

struct ExportBase: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "base",
        abstract: "The base model, without any adapter folded in, as a classification checkpoint (HF ViT for ViT bases, the base's own naming for CLIP): the base a PEFT adapter attaches to.",
        discussion: "With --adapter, the head, classes, class names and image size are the adapter's; else the checkpoint's own head."
    )

    @OptionGroup var modelOptions: ModelOptions
    @Option(help: "An adapter whose head, classes and image size the export takes.")
    var adapter: String?
    @OptionGroup var fileType: FileTypeOption
    @Option(help: "Output directory.")
    var output: String

    func run() throws {
        let contents = try adapter.map { try loadAdapter($0, modelOptions: modelOptions) }
        var backbone = try modelOptions.load(classes: contents?.config.classes, defaultImageSize: contents?.config.imageSize)
        var classNames = backbone.classNames
        if let contents {
            backbone.tensors["head.weight"] = contents.values["head.weight"].map(HostTensor.float32)
            backbone.tensors["head.bias"] = contents.values["head.bias"].map(HostTensor.float32)
            backbone.hasHead = true
            classNames = contents.classNames
        }
        guard backbone.hasHead else {
            throw ValidationError("\(backbone.source) has no classification head for \(backbone.config.classes) classes: give --adapter to take its head")
        }
        let naming = backbone.naming.exportNaming, dtype = fileType.dtype(base: backbone)
        let (config, source, fingerprint) = (backbone.config, backbone.source, backbone.fingerprint)
        try CheckpointExport.write(backbone.takeValues(), config: config, naming: naming, classNames: classNames, dtype: dtype,
                                   to: URL(fileURLWithPath: output))
        print("exported \(source) to \(output) (\(naming.rawValue) naming, \(dtype.rawValue), fingerprint \(fingerprint))")
    }
}

extension PEFTNaming: ExpressibleByArgument {}
