/// One tensor's host values as its file stored them: fp32, or the raw bits of an fp16 or bf16
/// tensor. A 16-bit checkpoint keeps its 16 bits on the host, so that frozen weights stored
/// in 16 bits on the device are uploaded without an fp32 copy ever existing (a ViT-B/16 F16
/// file: 172 MB on the host instead of 344 MB). Anything computed on the way in (LayerScale
/// folded, positions resized) is fp32.
public enum HostTensor: Sendable, Equatable {
    case float32([Float])
    case float16([UInt16])
    case bfloat16([UInt16])

    public var count: Int {
        switch self {
        case .float32(let values): values.count
        case .float16(let bits), .bfloat16(let bits): bits.count
        }
    }

    /// The values widened to fp32 (exactly).
    public var floats: [Float] {
        switch self {
        case .float32(let values): values
        case .float16(let bits): bits.map(SafeTensorsFile.halfToFloat)
        case .bfloat16(let bits): bits.map { Float(bitPattern: UInt32($0) << 16) }
        }
    }

    /// The first non-finite value's flat index, if any (read on the stored bits).
    var firstNonFinite: Int? {
        switch self {
        case .float32(let values): values.firstIndex { !$0.isFinite }
        case .float16(let bits): bits.firstIndex { $0 & 0x7C00 == 0x7C00 }
        case .bfloat16(let bits): bits.firstIndex { $0 & 0x7F80 == 0x7F80 }
        }
    }

    /// The parts one after the other (separate q, k, v rows): 16-bit when all parts are of
    /// one 16-bit type, else fp32.
    static func concatenated(_ parts: [HostTensor]) -> HostTensor {
        let float16 = parts.compactMap { if case .float16(let bits) = $0 { bits } else { nil } }
        if float16.count == parts.count { return .float16(float16.flatMap { $0 }) }
        let bfloat16 = parts.compactMap { if case .bfloat16(let bits) = $0 { bits } else { nil } }
        if bfloat16.count == parts.count { return .bfloat16(bfloat16.flatMap { $0 }) }
        return .float32(parts.flatMap(\.floats))
    }

    /// A [rows, columns] matrix transposed, in its own type.
    func transposed(rows: Int, columns: Int) -> HostTensor {
        switch self {
        case .float32(let values): .float32(transpose(values, rows: rows, columns: columns))
        case .float16(let bits): .float16(transpose(bits, rows: rows, columns: columns))
        case .bfloat16(let bits): .bfloat16(transpose(bits, rows: rows, columns: columns))
        }
    }
}

extension [String: HostTensor] {
    /// Every tensor widened to fp32 (merge and export compute in fp32).
    public var widened: [String: [Float]] { mapValues(\.floats) }
}

extension [String: [Float]] {
    /// The same values as fp32 host tensors.
    public var hostTensors: [String: HostTensor] { mapValues(HostTensor.float32) }
}
