import Foundation

/// Decoded images in memory, uint8, each `height x width x channels` (HWC), with labels.
/// Shapes: images.count = count * height * width * channels.
public struct ImageDataset: Sendable {
    public let name: String
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

    /// The first `limit` images (all when nil or larger).
    public func prefix(_ limit: Int?) -> ImageDataset {
        guard let limit, limit < count else { return self }
        var copy = self
        copy.pixels = Array(pixels[0..<limit * imageBytes])
        copy.labels = Array(labels[0..<limit])
        return copy
    }
}

public struct DatasetError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
