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
    @Option(name: .customLong("weights"), help: "Device storage of the frozen weight matrices: fp16 (the default: half the bytes, about 3e-4 relative error in the logits, the default job's accuracy unchanged), bf16 (about 5e-3), int8 (a quarter of fp32's bytes, one scale per output channel: about 1e-2) or fp32. Biases, norms, trainable tensors, gradients and optimizer state are always fp32, and so is the math unless --matmul bf16.")
    var storage: Storage = .fp16
}

/// --matmul: what the GEMMs multiply (Engine.setMatmulPrecision).
struct MatmulOption: ParsableArguments {
    @Option(name: .customLong("matmul"), help: "What the matrix products multiply: fp32 (the default) or bf16: both operands rounded to bfloat16 as they are packed, products summed in fp32, as PyTorch's bf16 autocast does to Linear layers; about 6e-3 relative error in the logits and up to 3e-2 in gradients. On CPUs with AVX512_BF16 (Zen 4 and 5, Intel since Cooper Lake) it doubles the GEMMs' multiply-adds per instruction; elsewhere it is refused. Attention, norms, the loss and the optimizer stay fp32.")
    var precision: MatmulPrecision = .fp32

    func apply(to engine: Engine) throws { try engine.setMatmulPrecision(precision) }
}

extension MatmulPrecision: ExpressibleByArgument {}

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
