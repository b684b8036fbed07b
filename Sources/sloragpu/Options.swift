import ArgumentParser
import Tensors
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

/// --weights: how the frozen weight matrices are stored on the device.
struct WeightStorageOption: ParsableArguments {
    enum Storage: String, ExpressibleByArgument, CaseIterable {
        case fp32, fp16, bf16, int8
        var dtype: DType {
            switch self {
            case .fp32: .float32
            case .fp16: .float16
            case .bf16: .bfloat16
            case .int8: .int8
            }
        }
    }

    /// fp16 by measurement (docs/BENCHMARKS.md): the default job's accuracy 0.8382 against 0.8380
    /// in fp32, the same images/s, and the frozen matrices at half the bytes.
    @Option(name: .customLong("weights"), help: "Device storage of the frozen weight matrices: fp16 (the default: half the bytes, about 3e-4 relative error in the logits, the default job's accuracy unchanged), bf16 (about 5e-3), int8 (a quarter of fp32's bytes, one scale per output channel: about 1e-2) or fp32. Math, biases, norms, trainable tensors, gradients and optimizer state are always fp32.")
    var storage: Storage = .fp16
}

/// --dtype: the floating-point type merge and export write (default: the base's own).
struct FileTypeOption: ParsableArguments {
    enum FileType: String, ExpressibleByArgument, CaseIterable {
        case base, f32, f16, bf16
    }

    @Option(name: .customLong("dtype"), help: "The written weights' type: base (the default: F16 or BF16 when the base file stores all its tensors so, else F32), f32, f16 or bf16.")
    var type: FileType = .base

    func dtype(base: Backbone) -> SafeTensorsDType {
        switch type {
        case .base: base.fileDType
        case .f32: .F32
        case .f16: .F16
        case .bf16: .BF16
        }
    }
}
