import Dispatch
import Foundation

/// One prepared batch: images [B, 3, S, S] and labels [B].
public struct Batch: Sendable {
    public let images: [Float]
    public let labels: [Int32]
    public let count: Int
}

/// Where a pass over the data stands; all that resume needs, because the order of an epoch and
/// every augmentation are pure functions of (seed, epoch, sample).
public struct LoaderPosition: Codable, Sendable, Equatable {
    public var epoch: Int
    /// Batches already taken in this epoch.
    public var batch: Int

    public init(epoch: Int = 0, batch: Int = 0) { (self.epoch, self.batch) = (epoch, batch) }
}

/// Batches in a seeded order, prepared on a background thread one batch ahead of the consumer.
/// Training loaders drop the last partial batch of an epoch and continue into the next epoch;
/// evaluation loaders (shuffle and augmentation off) end after one pass, last batch included.
public final class BatchLoader: @unchecked Sendable {
    public let dataset: ImageDataset
    public let preprocessor: Preprocessor
    public let batchSize: Int
    public let shuffle: Bool
    public let augment: Bool
    public let seed: UInt64
    public let repeats: Bool
    /// Which part of every batch this loader prepares: shard `part.index` of `part.count`
    /// contiguous equal parts (data-parallel rank r of N takes images [r B/N, (r+1) B/N) of
    /// every global batch). Order, augmentation and positions are those of the whole batch.
    public let part: (index: Int, count: Int)
    public private(set) var position: LoaderPosition

    private let queue = DispatchQueue(label: "sloragpu.batch-loader")
    private var pending: (LoaderPosition, DispatchWorkItem, UnsafeSendableBox<Batch?>)?

    public init(dataset: ImageDataset, preprocessor: Preprocessor, batchSize: Int, shuffle: Bool, augment: Bool, seed: UInt64,
                repeats: Bool, position: LoaderPosition = LoaderPosition(), part: (index: Int, count: Int) = (0, 1)) throws {
        guard batchSize > 0, !repeats || dataset.count >= batchSize else {
            throw DatasetError("\(dataset.name): \(dataset.count) images cannot fill a batch of \(batchSize)")
        }
        guard part.count >= 1, (0..<part.count).contains(part.index), batchSize % part.count == 0, part.count == 1 || repeats else {
            throw DatasetError("a batch of \(batchSize) does not split into \(part.count) equal parts (part \(part.index)); only a repeating (training) loader, whose batches are all full, splits them")
        }
        self.part = part
        (self.dataset, self.preprocessor, self.batchSize, self.shuffle) = (dataset, preprocessor, batchSize, shuffle)
        (self.augment, self.seed, self.repeats, self.position) = (augment, seed, repeats, position)
    }

    public var batchesPerEpoch: Int { repeats ? dataset.count / batchSize : (dataset.count + batchSize - 1) / batchSize }

    /// The sample order of an epoch.
    public func order(epoch: Int) -> [Int] {
        var indices = Array(0..<dataset.count)
        guard shuffle else { return indices }
        var random = SplitMix(seed: seed &+ UInt64(epoch) &* 0x9E37_79B9_7F4A_7C15)
        for i in stride(from: indices.count - 1, to: 0, by: -1) {
            indices.swapAt(i, Int(random.next() % UInt64(i + 1)))
        }
        return indices
    }

    /// The next batch (nil at the end of an evaluation pass). Starts preparing the one after.
    public func next() -> Batch? {
        let batch: Batch?
        if let (at, work, box) = pending, at == position {
            work.wait()
            batch = box.value
        } else {
            batch = make(position)
        }
        guard batch != nil else { return nil }
        advance(&position)
        let upcoming = position, box = UnsafeSendableBox<Batch?>(nil)
        let work = DispatchWorkItem { [self] in box.value = make(upcoming) }
        pending = (upcoming, work, box)
        queue.async(execute: work)
        return batch
    }

    private func advance(_ position: inout LoaderPosition) {
        position.batch += 1
        if repeats, position.batch >= batchesPerEpoch {
            position.epoch += 1
            position.batch = 0
        }
    }

    private func make(_ at: LoaderPosition) -> Batch? {
        guard at.batch < batchesPerEpoch else { return nil }
        let order = order(epoch: at.epoch)
        let start = at.batch * batchSize + part.index * (batchSize / part.count)
        let indices = Array(order[start..<min(start + batchSize / part.count, order.count)])
        let size = preprocessor.outputSize
        var images = [Float](repeating: 0, count: indices.count * 3 * size * size)
        for (slot, index) in indices.enumerated() {
            var random: UInt64?
            if augment {
                var mixer = SplitMix(seed: seed ^ (UInt64(at.epoch) << 32) ^ UInt64(index) &* 0xD1B5_4A32_D192_ED03)
                random = mixer.next()
            }
            preprocessor.prepare(dataset, index: index, augmentation: random, into: &images, offset: slot * 3 * size * size)
        }
        return Batch(images: images, labels: indices.map { dataset.labels[$0] }, count: indices.count)
    }
}

final class UnsafeSendableBox<Value>: @unchecked Sendable {
    var value: Value
    init(_ value: Value) { self.value = value }
}

/// SplitMix64, for orders and augmentation draws.
struct SplitMix {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
