/// How a model is fine-tuned. The classifier head always trains.
public enum FineTuningMethod: Sendable, Equatable, CustomStringConvertible {
    /// Serial LoRA: one pair (A [r, d], B [d, r]) per block applied to the tokens entering
    /// q/k/v: z = u + s (u A^T) B^T, s = alpha / r.
    case serial(rank: Int, alpha: Float)
    /// LoRA: one pair per target projection (q, k, v, o): W' = W + s B A.
    case lora(rank: Int, alpha: Float, targets: [LoRATarget])
    /// Everything trains.
    case full
    /// Only the head trains (linear probe).
    case probe

    public var name: String {
        switch self {
        case .serial: "serial"
        case .lora: "lora"
        case .full: "full"
        case .probe: "probe"
        }
    }

    public var rank: Int? {
        switch self {
        case .serial(let rank, _), .lora(let rank, _, _): rank
        case .full, .probe: nil
        }
    }

    public var scale: Float {
        switch self {
        case .serial(let rank, let alpha), .lora(let rank, let alpha, _): alpha / Float(rank)
        case .full, .probe: 0
        }
    }

    public var description: String {
        switch self {
        case .serial(let rank, let alpha): "serial (rank \(rank), alpha \(alpha))"
        case .lora(let rank, let alpha, let targets): "lora (rank \(rank), alpha \(alpha), targets \(targets.map(\.rawValue).joined(separator: ",")))"
        case .full: "full"
        case .probe: "probe"
        }
    }

    public func validate(width: Int) throws {
        if let rank, !(1...width).contains(rank) {
            throw ConfigError("rank \(rank) must be between 1 and the width \(width)")
        }
        if case .lora(_, _, let targets) = self {
            guard !targets.isEmpty, Set(targets).count == targets.count else {
                throw ConfigError("LoRA targets must be a non-empty list without repeats, got \(targets.map(\.rawValue))")
            }
        }
    }
}

public enum LoRATarget: String, Sendable, CaseIterable, Codable {
    case q, k, v, o

    /// Index of q/k/v within the fused qkv projection.
    public var qkvIndex: Int? {
        switch self {
        case .q: 0
        case .k: 1
        case .v: 2
        case .o: nil
        }
    }
}
