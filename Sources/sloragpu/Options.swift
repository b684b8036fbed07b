import ArgumentParser
import Formats
import Optimizers
import ViT

/// `--method` and friends -> a FineTuningMethod, with errors worded for the command line.
func parseMethod(_ name: String, rank: Int, alpha: Float, targets: [LoRATarget]) throws -> FineTuningMethod {
    switch name {
    case "serial": return .serial(rank: rank, alpha: alpha)
    case "lora": return .lora(rank: rank, alpha: alpha, targets: targets)
    case "full": return .full
    case "probe": return .probe
    default: throw ValidationError("unknown method '\(name)': use serial, lora, full or probe")
    }
}

func parseTargets(_ text: String) throws -> [LoRATarget] {
    try text.split(separator: ",").map { name in
        guard let target = LoRATarget(rawValue: name.trimmingCharacters(in: .whitespaces)) else {
            throw ValidationError("unknown LoRA target '\(name)': use a comma list of q, k, v, o")
        }
        return target
    }
}
