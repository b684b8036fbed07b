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

public enum Evaluator {
    /// Runs the model over every batch of `loader` (a non-repeating pass). When `logits` is
    /// `collectLogits` is set, the logits [count, K] come back too, in order.
    /// `progress` is called after each batch with (batches done, batches in the pass).
    public static func evaluate(_ model: ViTModel, _ loader: BatchLoader, collectLogits: Bool = false,
                                progress: (Int, Int) -> Void = { _, _ in }) throws -> (result: EvaluationResult, logits: [Float]) {
        var collected: [Float] = []
        let engine = model.engine, classes = model.config.classes, size = model.config.imageSize
        var confusion = [[Int]](repeating: [Int](repeating: 0, count: classes), count: classes)
        var lossSum = 0.0, count = 0
        while let batch = loader.next() {
            if let label = batch.labels.first(where: { $0 < 0 || Int($0) >= classes }) {
                throw EvaluationError("\(loader.dataset.name) has label \(label), but the model's head has \(classes) classes")
            }
            let images = try engine.tensor(batch.images, shape: [batch.count, 3, size, size])
            let labels = try engine.tensor(batch.labels, shape: [batch.count])
            let output = try model.forward(images, keepForBackward: false)
            let (loss, _) = try model.loss(labels: labels)
            let rows = try output.download()
            lossSum += Double(try loss.download()[0]) * Double(batch.count)
            if collectLogits { collected += rows }
            for (row, label) in batch.labels.enumerated() {
                let scores = rows[row * classes..<(row + 1) * classes]
                let predicted = scores.indices.max { scores[$0] < scores[$1] }! - row * classes
                confusion[Int(label)][predicted] += 1
            }
            count += batch.count
            progress((count + loader.batchSize - 1) / loader.batchSize, loader.batchesPerEpoch)
        }
        guard count > 0 else { throw EvaluationError("\(loader.dataset.name): no images to evaluate") }
        guard lossSum.isFinite else {
            throw EvaluationError("the loss on \(loader.dataset.name) is \(lossSum / Double(count)): the model gives non-finite logits (damaged weights or adapter?); no accuracy is reported")
        }
        let correct = (0..<classes).reduce(0) { $0 + confusion[$1][$1] }
        let perClass = confusion.enumerated().map { index, row in
            let total = row.reduce(0, +)
            return total == 0 ? 0 : Double(row[index]) / Double(total)
        }
        return (EvaluationResult(count: count, accuracy: count == 0 ? 0 : Double(correct) / Double(count),
                                 loss: count == 0 ? 0 : lossSum / Double(count), perClassAccuracy: perClass, confusion: confusion), collected)
    }
}

public struct EvaluationError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
