import ArgumentParser
import Datasets
import Foundation
import Tensors
import Training
import ViT

struct EvalCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "eval",
        abstract: "Accuracy, loss, per-class accuracy and confusion matrix of an adapter on a test set."
    )

    @Option(help: "Adapter file (adapter.safetensors of a run, or checkpoints/best/adapter.safetensors).")
    var adapter: String
    @OptionGroup var modelOptions: ModelOptions
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
        let contents = try AdapterFile.load(URL(fileURLWithPath: adapter))
        let engine = try Engine(deviceSpec: deviceOption.device)
        let (_, testSet) = try loadData(data, imageSize: contents.config.imageSize, seed: 0)
        let test = testSet.prefix(testLimit)
        try checkClasses(of: contents, adapterPath: adapter, against: test)
        let (model, _) = try buildModel(engine, modelOptions, method: contents.method, classes: contents.config.classes, seed: 0, adapter: contents)
        let loader = try BatchLoader(dataset: test, preprocessor: Preprocessor(outputSize: model.config.imageSize, mean: model.config.mean, std: model.config.std),
                                     batchSize: batch, shuffle: false, augment: false, seed: 0, repeats: false)
        let (result, logits) = try Evaluator.evaluate(model, loader, collectLogits: dumpLogits != nil)
        let names = contents.classNames.count == model.config.classes ? contents.classNames : test.classNames
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

/// The adapter's head must score the data's classes: the same number (else a label indexes
/// past the head), and the same names unless the data only numbers its classes (IDX files).
func checkClasses(of adapter: AdapterFile.Contents, adapterPath: String, against data: ImageDataset) throws {
    let numbered = data.classNames == (0..<data.classNames.count).map(String.init)
    guard adapter.config.classes == data.classNames.count,
          adapter.classNames.isEmpty || numbered || adapter.classNames == data.classNames else {
        throw ValidationError("""
            \(adapterPath) was trained on \(adapter.config.classes) classes (\(displayList(adapter.classNames))), \
            but \(displayName(data.name)) has \(data.classNames.count) (\(displayList(data.classNames)))
            """)
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

    @Option(help: "Adapter file.")
    var adapter: String
    @OptionGroup var modelOptions: ModelOptions
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
        let contents = try AdapterFile.load(URL(fileURLWithPath: adapter))
        let engine = try Engine(deviceSpec: deviceOption.device)
        let (model, _) = try buildModel(engine, modelOptions, method: contents.method, classes: contents.config.classes, seed: 0, adapter: contents)
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
                let name = index < contents.classNames.count ? displayName(contents.classNames[index]) : "class \(index)"
                print(String(format: "  %-16@ %.4f", name, exps[index] / total))
            }
        }
    }
}

struct MergeCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "merge",
        abstract: "Base checkpoint + adapter -> a plain HF ViT checkpoint (model.safetensors + config.json) with the adapter folded in."
    )

    @Option(help: "Adapter file.")
    var adapter: String
    @OptionGroup var modelOptions: ModelOptions
    @Option(help: "Output directory for model.safetensors and config.json.")
    var output: String

    func run() throws {
        let contents = try AdapterFile.load(URL(fileURLWithPath: adapter))
        let (config, base, source) = try modelOptions.load(classes: contents.config.classes, defaultImageSize: contents.config.imageSize)
        guard config.width == contents.config.width, config.layers == contents.config.layers else {
            throw ValidationError("the adapter does not fit \(source) (width \(config.width), \(config.layers) layers)")
        }
        let merged = try Merge.merged(base: base, adapter: contents)
        let directory = URL(fileURLWithPath: output)
        let weights = directory.appendingPathComponent("model.safetensors")
        try SafeTensorsFile.write(try HFViTExport.tensors(merged, config: contents.config, file: weights.path), to: weights)
        try writeAtomically(try HFViTExport.configJSON(contents.config, classNames: contents.classNames), to: directory.appendingPathComponent("config.json"))
        print("merged \(contents.method) into \(source): \(weights.path) and config.json (HF ViT naming)")
    }
}
