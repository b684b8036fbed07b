import CLRuntime
import Foundation

/// What the GEMMs multiply. Every product accumulates in fp32 either way.
public enum MatmulPrecision: String, Sendable, CaseIterable {
    /// fp32 operands: the default, and the reference every parity test is held to.
    case fp32
    /// Operands rounded to bfloat16 (nearest even) as they are packed, products summed in fp32:
    /// what PyTorch's bf16 autocast does to Linear layers, with twice fp32's multiply-adds per
    /// instruction on CPUs with AVX512_BF16. Only the panel GEMMs change (the blocks' products,
    /// forward and backward, and the adapters' and weight gradients' products that are not
    /// skinny); attention, LayerNorm, the loss, the skinny adapter products and the optimizer stay fp32.
    /// As the instruction defines it, denormal bf16 inputs count as zero and denormal sums flush
    /// to zero (autocast's oneDNN kernels do the same).
    case bf16
}

public struct MatmulPrecisionError: Error, CustomStringConvertible, Equatable {
    public let precision: MatmulPrecision
    public let reason: String
    public var description: String { "matmul precision \(precision.rawValue) is not available on this device: \(reason)" }
}

extension Engine {
    /// Chooses what the GEMMs multiply; throws (and keeps the current precision) where the
    /// device cannot run it.
    public func setMatmulPrecision(_ precision: MatmulPrecision) throws {
        if precision == .bf16 {
            if let reason = Self.bf16ProductsUnavailable(deviceIsCPU: deviceIsCPU,
                                                         gemmProfile: gemmProfile, cpuFlags: Self.hostCPUFlags()) {
                throw MatmulPrecisionError(precision: precision, reason: reason)
            }
            try checkBF16Products()
        }
        matmulPrecision = precision
    }

    /// Two small products through the bf16 kernels against the host, before any real work relies
    /// on them: a plain fp32 B, and an fp16-stored B read transposed (the default frozen weights'
    /// forward form), each its own kernel build. Another OpenCL compiler or a broken kernel file is
    /// refused here, with the compiler's words, rather than failing a training halfway.
    private func checkBF16Products() throws {
        let previous = matmulPrecision
        defer { matmulPrecision = previous }
        matmulPrecision = .bf16
        let (m, n, k) = (24, 40, 7)   // past the skinny kernels' 16, an odd reduction
        // Exact in bf16 and fp16 (multiples of 1/8 below 2), so every product and sum is exact.
        let a = (0..<m * k).map { Float(($0 * 7) % 13) / 4 - 1.5 }, b = (0..<k * n).map { Float(($0 * 5) % 11) / 8 - 0.625 }
        for transposedHalfB in [false, true] {
            let result: [Float]
            do {
                let c = try empty([m, n])
                let bTensor = transposedHalfB
                    ? try tensor((0..<n * k).map { b[($0 % k) * n + $0 / k] }, shape: [n, k], storage: .float16)
                    : try tensor(b, shape: [k, n])
                try gemm(try tensor(a, shape: [m, k]), bTensor, into: c, transposeB: transposedHalfB)
                result = try c.download()
            } catch {
                throw MatmulPrecisionError(precision: .bf16, reason: "its kernels did not build or run here: \(error)")
            }
            for row in 0..<m {
                for column in 0..<n {
                    let expected = (0..<k).reduce(Float(0)) { $0 + a[row * k + $1] * b[$1 * n + column] }
                    guard abs(result[row * n + column] - expected) <= 1e-5 * max(1, abs(expected)) else {
                        throw MatmulPrecisionError(precision: .bf16, reason: "its kernels computed C[\(row)][\(column)] = \(result[row * n + column]), expected \(expected)")
                    }
                }
            }
        }
    }

    /// Why bf16 products cannot run, nil when they can: they are the CPU panel kernel's
    /// (16-float vectors, x86-64's AVX512_BF16 dot product); GPUs have no bf16 kernels yet.
    static func bf16ProductsUnavailable(deviceIsCPU: Bool, gemmProfile: GemmProfile, cpuFlags: Set<String>?) -> String? {
        bf16InstructionUnavailable(deviceIsCPU: deviceIsCPU, cpuFlags: cpuFlags) ?? bf16ProfileUnsupported(gemmProfile)
    }

    /// Why the kernels cannot issue AVX512_BF16's dot product here, nil when they can.
    static func bf16InstructionUnavailable(deviceIsCPU: Bool, cpuFlags: Set<String>?) -> String? {
        guard deviceIsCPU else { return cpuDevicesOnly }
        guard let cpuFlags else { return "the CPU's features are unknown (no /proc/cpuinfo)" }
        guard cpuFlags.contains("avx512_bf16") else { return "the CPU lacks AVX512_BF16 (its flags do not list avx512_bf16)" }
        return nil
    }

    /// Why this device cannot issue bf16 dot products, nil when it can.
    public var bf16InstructionUnavailability: String? { Self.bf16InstructionUnavailable(deviceIsCPU: deviceIsCPU, cpuFlags: Self.hostCPUFlags()) }

    /// PoCL's CPU device (a GPU's type may also say CPU on some drivers; it is not one).
    var deviceIsCPU: Bool { device.type.contains(.cpu) && !device.type.contains(.gpu) }

    private static let cpuDevicesOnly = "bf16 products are implemented for CPU devices (PoCL) only"

    /// Why a GEMM profile cannot run bf16 products, nil when it can; also checked at every GEMM,
    /// since the profile may change after the precision was set.
    static func bf16ProfileUnsupported(_ profile: GemmProfile) -> String? {
        if profile.tiles != nil { return cpuDevicesOnly }
        guard profile.vectorWidth == 16 else {
            return "the GEMM profile's vector width is \(profile.vectorWidth), and bf16 products take 16 floats (VW=16)"
        }
        return nil
    }

    /// The host CPU's feature flags (Linux's /proc/cpuinfo), nil where they cannot be read.
    /// PoCL's CPU device is the host CPU.
    static func hostCPUFlags(cpuinfo: String? = try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) -> Set<String>? {
        guard let cpuinfo, let line = cpuinfo.split(separator: "\n").first(where: { $0.hasPrefix("flags") }),
              let colon = line.firstIndex(of: ":") else { return nil }
        return Set(line[line.index(after: colon)...].split(separator: " ").map(String.init))
    }
}
