import CImageCodecs
import Foundation

/// An image folder: one sub-folder per class (sorted names are the classes), PNG and JPEG files
/// inside, decoded by libpng and libjpeg-turbo to RGB and resized (bilinear) to a common
/// `size` x `size` so the set is one array.
public enum ImageFolder {
    public static func load(_ directory: URL, size: Int, name: String? = nil) throws -> ImageDataset {
        guard size > 0, size <= 8192 else { throw DatasetError("\(directory.path): image size \(size) is outside 1...8192") }
        let fileManager = FileManager.default
        guard let classes = try? fileManager.contentsOfDirectory(atPath: directory.path).filter({ entry in
            var isDirectory: ObjCBool = false
            return fileManager.fileExists(atPath: directory.appendingPathComponent(entry).path, isDirectory: &isDirectory) && isDirectory.boolValue
        }).sorted(), !classes.isEmpty else {
            throw DatasetError("\(directory.path): not a directory with one sub-folder per class")
        }
        var pixels: [UInt8] = [], labels: [Int32] = []
        for (label, className) in classes.enumerated() {
            let classDirectory = directory.appendingPathComponent(className)
            let files = try fileManager.contentsOfDirectory(atPath: classDirectory.path).sorted()
                .filter { ["png", "jpg", "jpeg"].contains(($0 as NSString).pathExtension.lowercased()) }
            for file in files {
                let url = classDirectory.appendingPathComponent(file)
                let (rgb, width, height) = try decode(url)
                pixels += resize(rgb, width: width, height: height, to: size)
                labels.append(Int32(label))
            }
        }
        guard !labels.isEmpty else { throw DatasetError("\(directory.path): no PNG or JPEG files in the class folders") }
        return try ImageDataset(name: name ?? directory.lastPathComponent, height: size, width: size, channels: 3,
                                classNames: classes, pixels: pixels, labels: labels)
    }

    /// The most pixels a decoded image may have (8192 x 8192; 192 MiB as RGB). Checked from the
    /// header, before the decoder allocates.
    public static let maximumPixels = 8192 * 8192

    /// RGB bytes (HWC), width, height.
    public static func decode(_ url: URL) throws -> ([UInt8], Int, Int) {
        guard let data = FileManager.default.contents(atPath: url.path) else { throw DatasetError("\(url.path): cannot read the file") }
        return try decode([UInt8](data), path: url.path)
    }

    /// Decodes a PNG or JPEG held in `bytes`; `path` names it in errors.
    public static func decode(_ bytes: [UInt8], path: String) throws -> ([UInt8], Int, Int) {
        if bytes.starts(with: [0x89, 0x50, 0x4E, 0x47]) { return try decodePNG(bytes, path) }
        if bytes.starts(with: [0xFF, 0xD8]) { return try decodeJPEG(bytes, path) }
        throw DatasetError("\(path): neither PNG nor JPEG")
    }

    /// Refuses header dimensions that are zero, above `maximumPixels`, or (PNG) more than the
    /// file's bytes can encode: deflate expands at most 1032-fold and a 1-bit image packs 8
    /// pixels a byte, so a PNG of n bytes holds at most 8256 n pixels.
    private static func checkDimensions(width: Int, height: Int, fileBytes: Int, isPNG: Bool, _ path: String) throws {
        let format = isPNG ? "PNG" : "JPEG"
        guard width > 0, height > 0 else { throw DatasetError("\(path): \(format) header says \(width)x\(height) pixels") }
        guard width <= maximumPixels / height else {
            throw DatasetError("\(path): \(format) header says \(width)x\(height) pixels, more than the limit of \(maximumPixels) pixels")
        }
        if isPNG, width * height > 8256 * fileBytes {
            throw DatasetError("\(path): PNG header says \(width)x\(height) pixels, more than \(fileBytes) bytes of PNG can hold (damaged or hostile file)")
        }
    }

    private static func decodePNG(_ bytes: [UInt8], _ path: String) throws -> ([UInt8], Int, Int) {
        var image = png_image()
        image.version = UInt32(PNG_IMAGE_VERSION)
        guard bytes.withUnsafeBytes({ png_image_begin_read_from_memory(&image, $0.baseAddress, $0.count) }) != 0 else {
            throw DatasetError("\(path): invalid PNG (\(message(&image)))")
        }
        image.format = UInt32(PNG_FORMAT_RGB)
        let (width, height) = (Int(image.width), Int(image.height))
        do { try checkDimensions(width: width, height: height, fileBytes: bytes.count, isPNG: true, path) } catch {
            png_image_free(&image)
            throw error
        }
        var rgb = [UInt8](repeating: 0, count: width * height * 3)
        let ok = rgb.withUnsafeMutableBytes { png_image_finish_read(&image, nil, $0.baseAddress, 0, nil) }
        guard ok != 0 else {
            let text = message(&image)
            png_image_free(&image)
            throw DatasetError("\(path): invalid PNG (\(text))")
        }
        return (rgb, width, height)
    }

    private static func message(_ image: inout png_image) -> String {
        withUnsafeBytes(of: &image.message) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
    }

    private static func decodeJPEG(_ bytes: [UInt8], _ path: String) throws -> ([UInt8], Int, Int) {
        guard let handle = tjInitDecompress() else { throw DatasetError("\(path): cannot start the JPEG decoder") }
        defer { tjDestroy(handle) }
        var width: Int32 = 0, height: Int32 = 0, subsampling: Int32 = 0, colorspace: Int32 = 0
        var source = bytes
        let error = { String(cString: tjGetErrorStr2(handle)) }
        guard source.withUnsafeMutableBufferPointer({ tjDecompressHeader3(handle, $0.baseAddress, UInt($0.count), &width, &height, &subsampling, &colorspace) }) == 0 else {
            throw DatasetError("\(path): invalid JPEG (\(error()))")
        }
        try checkDimensions(width: Int(width), height: Int(height), fileBytes: bytes.count, isPNG: false, path)
        var rgb = [UInt8](repeating: 0, count: Int(width) * Int(height) * 3)
        let status = source.withUnsafeMutableBufferPointer { input in
            rgb.withUnsafeMutableBufferPointer { output in
                tjDecompress2(handle, input.baseAddress, UInt(input.count), output.baseAddress, width, 0, height, Int32(TJPF_RGB.rawValue),
                             TJFLAG_LIMITSCANS)  // a progressive file with thousands of scans is refused, not decoded for minutes
            }
        }
        guard status == 0 else { throw DatasetError("\(path): invalid JPEG (\(error()))") }
        return (rgb, Int(width), Int(height))
    }

    /// Bilinear (align_corners False) resize of RGB bytes to size x size.
    static func resize(_ rgb: [UInt8], width: Int, height: Int, to size: Int) -> [UInt8] {
        if width == size && height == size { return rgb }
        var out = [UInt8](repeating: 0, count: size * size * 3)
        let scaleY = Float(height) / Float(size), scaleX = Float(width) / Float(size)
        for oy in 0..<size {
            let fy = max(0, (Float(oy) + 0.5) * scaleY - 0.5)
            let y0 = min(Int(fy), height - 1), y1 = min(y0 + 1, height - 1), ly = fy - Float(y0)
            for ox in 0..<size {
                let fx = max(0, (Float(ox) + 0.5) * scaleX - 0.5)
                let x0 = min(Int(fx), width - 1), x1 = min(x0 + 1, width - 1), lx = fx - Float(x0)
                for c in 0..<3 {
                    let p = { (y: Int, x: Int) in Float(rgb[(y * width + x) * 3 + c]) }
                    let value = (1 - ly) * ((1 - lx) * p(y0, x0) + lx * p(y0, x1)) + ly * ((1 - lx) * p(y1, x0) + lx * p(y1, x1))
                    out[(oy * size + ox) * 3 + c] = UInt8(max(0, min(255, value.rounded())))
                }
            }
        }
        return out
    }
}
