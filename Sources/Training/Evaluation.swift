import Datasets
import Foundation
import Tensors
import Formats
import Optimizers
import ViT

/// Accuracy, mean loss, per-class accuracy and the confusion matrix (rows: true class,
/// columns: predicted) over a whole evaluation pass.
public struct EvaluationResult: Codable, Sendable {
    public var count: Int
    public var accuracy: Double
    public var loss: Double
    public var perClassAccuracy: [Double]
    public var confusion: [[Int]]
}

/// The sums an evaluation pass accumulates: they add across shards (data-parallel ranks) and
/// give the result only at the end.
public struct EvaluationTally: Sendable, Equatable {
    public var classes: Int
    /// [true class][predicted class] counts.
    public var confusion: [[Int]]
    public var lossSum: Double
    public var count: Int

    public init(classes: Int) {
        self.classes = classes
        confusion = [[Int]](repeating: [Int](repeating: 0, count: classes), count: classes)
        lossSum = 0
        count = 0
    }

    /// As doubles (counts are exact below 2^53): K*K confusion, loss sum, count.
    public var flattened: [Double] { confusion.flatMap { $0.map(Double.init) } + [lossSum, Double(count)] }

    public init(classes: Int, flattened values: [Double]) {
        self.init(classes: classes)
        for row in 0..<classes { for column in 0..<classes { confusion[row][column] = Int(values[row * classes + column]) } }
        lossSum = values[classes * classes]
        count = Int(values[classes * classes + 1])
    }

    /// `dataset`: the name errors give.
    public func result(dataset: String) throws -> EvaluationResult {
        guard count > 0 else { throw EvaluationError("\(dataset): no images to evaluate") }
        guard lossSum.isFinite else {
            throw EvaluationError("the loss on \(dataset) is \(lossSum / Double(count)): the model gives non-finite logits (damaged weights or adapter?); no accuracy is reported")
        }
        let correct = (0..<classes).reduce(0) { $0 + confusion[$1][$1] }
        let perClass = confusion.enumerated().map { index, row in
            let total = row.reduce(0, +)
            return total == 0 ? 0 : Double(row[index]) / Double(total)
        }
        return EvaluationResult(count: count, accuracy: Double(correct) / Double(count), loss: lossSum / Double(count),
                                perClassAccuracy: perClass, confusion: confusion)
    }
}

public enum Evaluator {
    /// Runs the model over every batch of `loader` (a non-repeating pass). When
    /// `collectLogits` is set, the logits [count, K] come back too, in order.
    /// `progress` is called after each batch with (batches done, batches in the pass).
    public static func evaluate(_ model: ViTModel, _ loader: BatchLoader, collectLogits: Bool = false,
                                progress: (Int, Int) -> Void = { _, _ in }) throws -> (result: EvaluationResult, logits: [Float]) {
        var collected: [Float] = []
        let tally = try self.tally(model, loader, progress: progress) { if collectLogits { collected += $0 } }
        return (try tally.result(dataset: loader.dataset.name), collected)
    }

    /// The sums of a pass over `loader`; `logits` sees each batch's logits [count, K].
    public static func tally(_ model: ViTModel, _ loader: BatchLoader, progress: (Int, Int) -> Void = { _, _ in },
                             logits: ([Float]) -> Void = { _ in }) throws -> EvaluationTally {
        let engine = model.engine, classes = model.config.classes, size = model.config.imageSize
        var tally = EvaluationTally(classes: classes)
        while let batch = loader.next() {
            if let label = batch.labels.first(where: { $0 < 0 || Int($0) >= classes }) {
                throw EvaluationError("\(loader.dataset.name) has label \(label), but the model's head has \(classes) classes")
            }
            let images = try engine.tensor(batch.images, shape: [batch.count, 3, size, size])
            let labels = try engine.tensor(batch.labels, shape: [batch.count])
            let output = try model.forward(images, keepForBackward: false)
            let (loss, _) = try model.loss(labels: labels)
            let rows = try output.download()
            tally.lossSum += Double(try loss.download()[0]) * Double(batch.count)
            logits(rows)
            for (row, label) in batch.labels.enumerated() {
                let scores = rows[row * classes..<(row + 1) * classes]
                let predicted = scores.indices.max { scores[$0] < scores[$1] }! - row * classes
                tally.confusion[Int(label)][predicted] += 1
            }
            tally.count += batch.count
            progress((tally.count + loader.batchSize - 1) / loader.batchSize, loader.batchesPerEpoch)
        }
        return tally
    }
}

public struct EvaluationError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
