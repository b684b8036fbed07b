import Foundation

/// Linear warm-up then cosine decay, with the semantics of PyTorch's LambdaLR around
/// transformers' `get_cosine_schedule_with_warmup`: the update that makes step n (1-based) uses
/// lambda(n - 1), where lambda(t) = t / warmup for t < warmup and
/// 0.5 (1 + cos(pi (t - warmup) / (total - warmup))) after. So the first warm-up update runs at
/// 0 (as in PyTorch), and the last update runs above 0: `--steps 1` without warm-up trains at
/// the full rate, where a decay that reaches 0 at step n = total would train nothing.
public struct LearningRateSchedule: Sendable, Codable, Equatable {
    public var base: Float
    public var warmup: Int
    public var total: Int

    public init(base: Float, warmup: Int, total: Int) { (self.base, self.warmup, self.total) = (base, warmup, total) }

    public func rate(step: Int) -> Float {
        let t = step - 1
        if t < warmup { return base * Float(t) / Float(max(1, warmup)) }
        let progress = min(1, Double(t - warmup) / Double(max(1, total - warmup)))
        return base * Float(0.5 * (1 + cos(Double.pi * progress)))
    }
}
