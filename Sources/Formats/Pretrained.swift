import Foundation

/// A pretrained checkpoint directory: model.safetensors, plus config.json for HF ViT and
/// DINOv2 (timm files carry no config: pass a preset).
public struct PretrainedCheckpoint {
    public let directory: URL
    public let file: SafeTensorsFile
    public let naming: CheckpointNaming
    /// The architecture as stored (image size and classes of the checkpoint).
    public let config: ViTConfig
    public let classNames: [String]
    /// Where the input normalisation (config.mean, config.std) came from, for printing:
    /// preprocessor_config.json (with what sloragpu approximates of it), config.json, or the
    /// ImageNet default.
    public let normalizationSource: String
    /// The input size the checkpoint's preprocessing asks for (preprocessor_config.json, else
    /// config.json's image_size): the default where no other size is given. Checked only when
    /// used, so an explicit size can override a bad one.
    public let preferredImageSize: Int

    public init(directory: URL, preset: ViTConfig? = nil) throws {
        self.directory = directory
        let fileManager = FileManager.default
        let openCLIPConfig = directory.appendingPathComponent("open_clip_config.json")
        // open_clip's hub repositories name the weights open_clip_model.safetensors.
        var weights = directory.appendingPathComponent("model.safetensors")
        if !fileManager.fileExists(atPath: weights.path), fileManager.fileExists(atPath: openCLIPConfig.path) {
            weights = directory.appendingPathComponent("open_clip_model.safetensors")
        }
        guard fileManager.fileExists(atPath: weights.path) else {
            throw CheckpointError(file: weights.path, "no such file (a checkpoint directory holds model.safetensors and config.json)")
        }
        file = try SafeTensorsFile(contentsOf: weights)
        let configURL = directory.appendingPathComponent("config.json")
        var config: ViTConfig
        var source = "the ImageNet default (mean 0.485 0.456 0.406, std 0.229 0.224 0.225)"
        if fileManager.fileExists(atPath: openCLIPConfig.path), !fileManager.fileExists(atPath: configURL.path) {
            guard let data = try? Data(contentsOf: openCLIPConfig) else { throw CheckpointError(file: openCLIPConfig.path, "cannot read the file") }
            (config, naming, classNames) = try ViTConfig.fromOpenCLIP(data, path: openCLIPConfig.path)
            source = "open_clip_config.json"
        } else if fileManager.fileExists(atPath: configURL.path) {
            (config, naming, classNames) = try ViTConfig.fromHuggingFace(configURL)
            if let text = try? Data(contentsOf: configURL), let json = try? JSONSerialization.jsonObject(with: text) as? [String: Any],
               json["image_mean"] != nil {
                source = "config.json"
            } else if naming == .hfCLIP {
                source = "the OpenAI CLIP default (mean 0.481 0.458 0.408, std 0.269 0.261 0.276)"
            }
        } else if let preset, let detected = CheckpointReader.detectNaming(file) {
            (config, naming, classNames) = (preset, detected, [])
        } else {
            throw CheckpointError(file: configURL.path, "missing: HF checkpoints need config.json; for timm files give a preset")
        }
        let preprocessorURL = directory.appendingPathComponent("preprocessor_config.json")
        var preferred = config.imageSize
        if FileManager.default.fileExists(atPath: preprocessorURL.path) {
            let preprocessing = try ImagePreprocessing.read(preprocessorURL)
            (config.mean, config.std) = (preprocessing.mean, preprocessing.std)
            if let size = preprocessing.size { preferred = size }
            source = "preprocessor_config.json"
                + (preprocessing.approximations.isEmpty ? "" : " (approximated: " + preprocessing.approximations.joined(separator: "; ") + ")")
            do { try config.validate() } catch let error as ConfigError { throw ConfigError("\(preprocessorURL.path): \(error.description)") }
        }
        self.config = config
        normalizationSource = source
        preferredImageSize = preferred
    }

    /// DINOv2's LayerScale lambda1 of block `index` (nil for bases without LayerScale), for
    /// adapters written against the unfolded model.
    public func layerScale1(_ index: Int) throws -> [Float]? {
        guard naming == .hfDinov2 else { return nil }
        let prefix = file.entry("dinov2.embeddings.cls_token") != nil ? "dinov2." : ""
        let key = prefix + "encoder.layer.\(index).layer_scale1.lambda1"
        guard file.entry(key) != nil else { return nil }
        return try file.finiteFloats(key)
    }

    /// The model configuration for fine-tuning at `imageSize` with `classes` classes, and the
    /// backbone (positions resized when the size differs; the head when it fits).
    public func load(imageSize: Int? = nil, classes: Int? = nil) throws -> (config: ViTConfig, values: [String: [Float]], loadedHead: Bool) {
        let (target, tensors, loadedHead) = try loadTensors(imageSize: imageSize, classes: classes)
        return (target, tensors.widened, loadedHead)
    }

    /// `load`, with the tensors as the file stores them (16-bit ones not widened; HostTensor).
    public func loadTensors(imageSize: Int? = nil, classes: Int? = nil) throws -> (config: ViTConfig, tensors: [String: HostTensor], loadedHead: Bool) {
        var target = config
        if let imageSize { target.imageSize = imageSize }
        if let classes { target.classes = classes }
        try target.validate()
        let reader = try CheckpointReader(file: file, naming: naming, config: target)
        return (target, reader.tensors, reader.hasHead)
    }
}

/// What sloragpu takes from a transformers image processor's preprocessor_config.json: the
/// normalisation and the input size. Pixels are scaled by 1/255 (another rescale is refused) and
/// resized bilinearly to a square of the input size; what a processor does beyond that (another
/// resampling filter, an aspect-keeping shortest-edge resize, a center crop, no resize) is listed
/// in `approximations`, which every command prints, so the difference is never silent.
public struct ImagePreprocessing: Equatable, Sendable {
    public var mean: [Float]
    public var std: [Float]
    /// The model's input size: crop_size when the processor center-crops, else size.
    public var size: Int?
    /// What sloragpu does differently from the processor.
    public var approximations: [String] = []

    public static func read(_ url: URL) throws -> ImagePreprocessing {
        guard let data = try? Data(contentsOf: url) else { throw ConfigError("\(url.path): cannot read the file") }
        return try parse(data, path: url.path)
    }

    /// From a preprocessor_config.json's bytes; `path` names it in errors.
    public static func parse(_ data: Data, path: String) throws -> ImagePreprocessing {
        let fail = { (problem: String) in ConfigError("\(path): \(problem)") }
        guard let json = try? JSONSerialization.jsonObject(with: data) as? [String: Any] else {
            throw fail("not a readable JSON object")
        }
        func flag(_ key: String, default fallback: Bool) throws -> Bool {
            guard let raw = json[key] else { return fallback }
            guard isJSONBoolean(raw), let value = raw as? Bool else { throw fail("'\(key)' must be true or false, got \(raw)") }
            return value
        }
        func triple(_ key: String) throws -> [Float]? {
            guard let raw = json[key] else { return nil }
            if let number = raw as? NSNumber, !isJSONBoolean(raw), number.doubleValue.isFinite { return [Float](repeating: number.floatValue, count: 3) }
            guard let list = raw as? [NSNumber], list.count == 3, list.allSatisfy({ !isJSONBoolean($0) && $0.doubleValue.isFinite }) else {
                throw fail("'\(key)' must be a number or three finite numbers, got \(raw)")
            }
            return list.map(\.floatValue)
        }
        func side(_ key: String) throws -> Int? {
            guard let raw = json[key] else { return nil }
            if let number = raw as? NSNumber, !isJSONBoolean(raw) { return try checkedSide(number.doubleValue, key) }
            guard let object = raw as? [String: Any] else { throw fail("'\(key)' must be a number or an object with height and width") }
            if let height = object["height"] as? NSNumber, let width = object["width"] as? NSNumber {
                guard height.doubleValue == width.doubleValue else {
                    throw fail("'\(key)' is \(height)x\(width): sloragpu feeds square images, so height and width must agree")
                }
                return try checkedSide(height.doubleValue, key)
            }
            if let edge = object["shortest_edge"] as? NSNumber { return try checkedSide(edge.doubleValue, key) }
            throw fail("'\(key)' must hold height and width, or shortest_edge")
        }
        func checkedSide(_ value: Double, _ key: String) throws -> Int {
            guard value.isFinite, value == value.rounded(), value >= 1, value <= Double(ViTConfig.Limits.imageSize) else {
                throw fail("'\(key)' is \(value), outside 1...\(ViTConfig.Limits.imageSize)")
            }
            return Int(value)
        }
        if try flag("do_rescale", default: true) {
            if let raw = json["rescale_factor"] {
                guard let factor = (raw as? NSNumber)?.doubleValue, abs(factor - 1.0 / 255) < 1e-9 else {
                    throw fail("'rescale_factor' is \(raw); sloragpu scales pixels by 1/255")
                }
            }
        } else {
            throw fail("'do_rescale' false is not supported: sloragpu scales pixels by 1/255")
        }
        var result = ImagePreprocessing(mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5], size: nil)  // transformers' IMAGENET_STANDARD
        if try flag("do_normalize", default: true) {
            let mean = try triple("image_mean"), std = try triple("image_std")
            if let mean { result.mean = mean }
            if let std { result.std = std }
            guard result.std.allSatisfy({ $0 > 0 }) else { throw fail("'image_std' must be positive, got \(result.std)") }
        } else {
            (result.mean, result.std) = ([0, 0, 0], [1, 1, 1])
        }
        let crops = try flag("do_center_crop", default: false)
        let cropSize = crops ? try side("crop_size") : nil
        result.size = try cropSize ?? side("size")
        if let resample = (json["resample"] as? NSNumber)?.intValue, resample != 2 {
            result.approximations.append("resample \(resample) done as bilinear")
        }
        if try !flag("do_resize", default: true) { result.approximations.append("do_resize false, resized anyway") }
        if let object = json["size"] as? [String: Any], object["shortest_edge"] != nil {
            result.approximations.append("shortest-edge resize done as a square resize")
        }
        if crops { result.approximations.append("center crop done as a resize of the whole image") }
        return result
    }

    /// preprocessor_config.json for transformers' ViTImageProcessor: resize to S x S (bilinear),
    /// scale by 1/255, normalise; what AutoImageProcessor and pipeline("image-classification") load.
    public static func viTImageProcessorJSON(_ config: ViTConfig) throws -> Data {
        let object: [String: Any] = [
            "image_processor_type": "ViTImageProcessor", "do_resize": true, "size": ["height": config.imageSize, "width": config.imageSize],
            "resample": 2, "do_rescale": true, "rescale_factor": 1.0 / 255, "do_normalize": true,
            "image_mean": config.mean.map(Double.init), "image_std": config.std.map(Double.init),
        ]
        return try JSONSerialization.data(withJSONObject: object, options: [.prettyPrinted, .sortedKeys])
    }
}
