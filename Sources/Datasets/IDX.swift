import CImageCodecs
import Foundation

/// IDX files (the MNIST family), gzipped or not: big-endian magic 0x00000803 (images:
/// n, rows, columns) or 0x00000801 (labels: n), then raw uint8.
public enum IDX {
    public static func read(images imagesURL: URL, labels labelsURL: URL, name: String, classNames: [String]) throws -> ImageDataset {
        try parse(images: try load(imagesURL), imagesPath: imagesURL.path, labels: try load(labelsURL), labelsPath: labelsURL.path,
                  name: name, classNames: classNames)
    }

    /// Parses the (already gunzipped) bytes of an images file and a labels file; the paths name
    /// them in errors. Sizes are computed from the header with overflow checks and compared
    /// with the bytes present before anything is copied.
    public static func parse(images: [UInt8], imagesPath: String, labels: [UInt8], labelsPath: String,
                             name: String, classNames: [String]) throws -> ImageDataset {
        func header(_ bytes: [UInt8], _ path: String, magic: UInt32, dimensions: Int) throws -> [Int] {
            guard bytes.count >= 4 + 4 * dimensions else { throw DatasetError("\(path): too short for an IDX header") }
            let read = { (offset: Int) in (0..<4).reduce(UInt32(0)) { $0 << 8 | UInt32(bytes[offset + $1]) } }
            guard read(0) == magic else {
                throw DatasetError(String(format: "%@: magic 0x%08x, expected 0x%08x", path, read(0), magic))
            }
            return (0..<dimensions).map { Int(read(4 + 4 * $0)) }
        }
        let imageDims = try header(images, imagesPath, magic: 0x0000_0803, dimensions: 3)
        let labelDims = try header(labels, labelsPath, magic: 0x0000_0801, dimensions: 1)
        let (count, rows, columns) = (imageDims[0], imageDims[1], imageDims[2])
        guard rows > 0, columns > 0 else { throw DatasetError("\(imagesPath): images of \(rows)x\(columns) pixels") }
        let (perImage, overflow1) = rows.multipliedReportingOverflow(by: columns)
        let (pixelBytes, overflow2) = count.multipliedReportingOverflow(by: perImage)
        guard !overflow1, !overflow2, images.count - 16 == pixelBytes else {
            throw DatasetError("\(imagesPath): \(images.count - 16) pixel bytes for \(count) images of \(rows)x\(columns) (truncated?)")
        }
        guard labelDims[0] == count, labels.count == 8 + count else {
            throw DatasetError("\(labelsPath): \(labelDims[0]) labels (and \(labels.count - 8) label bytes) for \(count) images")
        }
        let labelValues = labels[8...].map { Int32($0) }
        let classes = classNames.isEmpty ? (0...Int(labelValues.max() ?? 0)).map(String.init) : classNames
        return try ImageDataset(name: name, height: rows, width: columns, channels: 1, classNames: classes,
                                pixels: Array(images[16...]), labels: labelValues)
    }

    /// Gunzipped IDX files larger than this are refused (a gzip bomb would otherwise fill memory).
    public static let maximumDecompressedBytes = 1 << 32

    /// The file's bytes, gunzipped when it starts with the gzip magic.
    static func load(_ url: URL) throws -> [UInt8] {
        guard let data = FileManager.default.contents(atPath: url.path) else { throw DatasetError("\(url.path): cannot read the file") }
        let bytes = [UInt8](data)
        guard bytes.count >= 2, bytes[0] == 0x1f, bytes[1] == 0x8b else { return bytes }
        guard let file = gzopen(url.path, "rb") else { throw DatasetError("\(url.path): gzopen failed") }
        defer { gzclose(file) }
        var output: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let read = chunk.withUnsafeMutableBytes { gzread(file, $0.baseAddress, UInt32($0.count)) }
            if read < 0 { throw DatasetError("\(url.path): corrupt gzip data") }
            if read == 0 { break }
            output += chunk[0..<Int(read)]
            guard output.count <= maximumDecompressedBytes else {
                throw DatasetError("\(url.path): decompresses to more than \(maximumDecompressedBytes >> 30) GiB; not an IDX file of a sensible size")
            }
        }
        return output
    }
}

/// Fashion-MNIST as Debian's dataset-fashion-mnist installs it.
public enum FashionMNIST {
    public static let directory = URL(fileURLWithPath: "/usr/share/datasets/fashion-mnist")
    public static let classNames = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
    public static let installHint = "install it with: sudo apt-get install dataset-fashion-mnist (or run scripts/setup.sh)"

    /// train or test split from `directory` (files {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]).
    public static func load(split: String, from directory: URL = directory) throws -> ImageDataset {
        let prefix = split == "train" ? "train" : "t10k"
        func file(_ stem: String) throws -> URL {
            for name in ["\(prefix)-\(stem)-ubyte.gz", "\(prefix)-\(stem)-ubyte"] {
                let url = directory.appendingPathComponent(name)
                if FileManager.default.fileExists(atPath: url.path) { return url }
            }
            throw DatasetError("no \(prefix)-\(stem)-ubyte[.gz] in \(directory.path); \(directory == Self.directory ? installHint : "expected MNIST-style IDX files")")
        }
        let names = directory == Self.directory ? classNames : []
        return try IDX.read(images: try file("images-idx3"), labels: try file("labels-idx1"), name: "\(directory.lastPathComponent)/\(split)", classNames: names)
    }
}

/// A small learnable set for smoke tests: class k is a bright square whose position depends on
/// k, on a noisy background.
public enum Synthetic {
    public static func make(count: Int, size: Int = 28, classes: Int = 10, seed: UInt64) throws -> ImageDataset {
        var state = seed | 1
        func next() -> UInt64 {
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            return state
        }
        var pixels = [UInt8](repeating: 0, count: count * size * size)
        var labels: [Int32] = []
        let square = max(2, size / 4)
        for index in 0..<count {
            let label = Int(next() % UInt64(classes))
            labels.append(Int32(label))
            let cells = max(1, (size - square) / max(1, classes - 1))
            let (top, left) = ((label * cells) % (size - square + 1), ((label * 7) * cells) % (size - square + 1))
            for y in 0..<size {
                for x in 0..<size {
                    let inside = (top..<top + square).contains(y) && (left..<left + square).contains(x)
                    pixels[index * size * size + y * size + x] = UInt8(truncatingIfNeeded: inside ? 200 + Int(next() % 56) : Int(next() % 60))
                }
            }
        }
        return try ImageDataset(name: "synthetic", height: size, width: size, channels: 1, classNames: (0..<classes).map { "class \($0)" },
                                pixels: pixels, labels: labels)
    }
}
