import Foundation

/// Linear warm-up from 0 to `base` over `warmup` steps, then cosine decay to 0 at `total`.
/// Steps are 1-based (the rate of the update that makes step n).
public struct LearningRateSchedule: Sendable, Codable, Equatable {
    public var base: Float
    public var warmup: Int
    public var total: Int

    public init(base: Float, warmup: Int, total: Int) { (self.base, self.warmup, self.total) = (base, warmup, total) }

    public func rate(step: Int) -> Float {
        if warmup > 0, step <= warmup { return base * Float(step) / Float(warmup) }
        let span = max(1, total - warmup)
        let progress = min(1, Double(step - warmup) / Double(span))
        return base * Float(0.5 * (1 + cos(Double.pi * progress)))
    }
}
