import Foundation

/// Decoded images in memory, uint8, each `height x width x channels` (HWC), with labels.
/// Shapes: images.count = count * height * width * channels.
public struct ImageDataset: Sendable {
    public private(set) var name: String
    public let height: Int
    public let width: Int
    public let channels: Int
    public let classNames: [String]
    public private(set) var pixels: [UInt8]
    public private(set) var labels: [Int32]

    public init(name: String, height: Int, width: Int, channels: Int, classNames: [String], pixels: [UInt8], labels: [Int32]) throws {
        guard height > 0, width > 0, [1, 3].contains(channels), pixels.count == labels.count * height * width * channels else {
            throw DatasetError("\(name): \(pixels.count) bytes do not hold \(labels.count) images of \(height)x\(width)x\(channels)")
        }
        if let bad = labels.first(where: { $0 < 0 || Int($0) >= classNames.count }) {
            throw DatasetError("\(name): label \(bad) is outside the \(classNames.count) classes")
        }
        (self.name, self.height, self.width, self.channels) = (name, height, width, channels)
        (self.classNames, self.pixels, self.labels) = (classNames, pixels, labels)
    }

    public var count: Int { labels.count }
    public var imageBytes: Int { height * width * channels }

    public func image(_ index: Int) -> ArraySlice<UInt8> { pixels[index * imageBytes..<(index + 1) * imageBytes] }

    /// The same images under a longer (or equal) list of class names, e.g. the union of the
    /// numbered classes of a train and a test file.
    public func withClassNames(_ names: [String]) throws -> ImageDataset {
        try ImageDataset(name: name, height: height, width: width, channels: channels, classNames: names, pixels: pixels, labels: labels)
    }

    /// A deterministic, stratified hold-out: of each class's images, round(fraction x count)
    /// chosen by a seeded shuffle go to `validation` (at most all but one: no class leaves
    /// training), the rest to `train`; both keep file order.
    /// The split depends only on the data, the fraction and `seed`, never on the training seed,
    /// so that runs with different seeds are scored on the same images.
    public func stratifiedSplit(fraction: Double, seed: UInt64 = 0) throws -> (train: ImageDataset, validation: ImageDataset) {
        guard fraction > 0, fraction < 1 else { throw DatasetError("\(name): a validation fraction must be in (0, 1), got \(fraction)") }
        var held = [Bool](repeating: false, count: count)
        var byClass: [Int32: [Int]] = [:]
        for (index, label) in labels.enumerated() { byClass[label, default: []].append(index) }
        for (label, members) in byClass {
            var shuffled = members
            var random = SplitMix(seed: seed ^ (UInt64(UInt32(bitPattern: label)) &* 0xA24B_AED4_963E_E407))
            for i in stride(from: shuffled.count - 1, to: 0, by: -1) { shuffled.swapAt(i, Int(random.next() % UInt64(i + 1))) }
            for index in shuffled.prefix(min(members.count - 1, Int((fraction * Double(members.count)).rounded()))) { held[index] = true }
        }
        let validationCount = held.filter { $0 }.count
        guard validationCount > 0, validationCount < count else {
            throw DatasetError("\(name): a validation fraction of \(fraction) of \(count) images holds out \(validationCount); give a larger fraction or more images")
        }
        func subset(_ keep: Bool, _ suffix: String) -> ImageDataset {
            var copy = self
            copy.name = "\(name) (\(suffix))"
            let indices = held.indices.filter { held[$0] == keep }
            copy.labels = indices.map { labels[$0] }
            var pixels = [UInt8]()
            pixels.reserveCapacity(indices.count * imageBytes)
            for index in indices { pixels += image(index) }
            copy.pixels = pixels
            return copy
        }
        return (subset(false, "training part"), subset(true, "validation part"))
    }

    /// Shard `index` of `count` contiguous shards whose sizes differ by at most one: images
    /// [index n / count, (index + 1) n / count). The shards cover every image exactly once.
    public func shard(_ index: Int, of count: Int) -> ImageDataset {
        guard count > 1 else { return self }
        let start = index * self.count / count, end = (index + 1) * self.count / count
        var copy = self
        copy.pixels = Array(pixels[start * imageBytes..<end * imageBytes])
        copy.labels = Array(labels[start..<end])
        return copy
    }

    /// The first `limit` images (all when nil or larger; none when negative).
    public func prefix(_ limit: Int?) -> ImageDataset {
        guard let requested = limit, requested < count else { return self }
        let kept = max(0, requested)
        var copy = self
        copy.pixels = Array(pixels[0..<kept * imageBytes])
        copy.labels = Array(labels[0..<kept])
        return copy
    }
}

public struct DatasetError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
