import Formats
import Foundation
import Tensors

/// The parameters on the device: frozen tensors each in their own buffer; trainable tensors
/// as views of one slab (so the optimizer is one launch), with gradients as views of a second
/// slab of the same layout.
public final class ViTParameters {
    public let engine: Engine
    public let specs: [ParameterSpec]
    public private(set) var tensors: [String: Tensor] = [:]
    public private(set) var gradients: [String: Tensor] = [:]
    /// [P] trainable values, [P] their gradients, [P] uint8 group ids.
    public let slab: Tensor
    public let gradientSlab: Tensor
    public let groupIDs: Tensor
    public let trainableNames: [String]
    /// How the frozen weight matrices are stored (everything else is fp32).
    public let weightStorage: DType

    /// `values` holds every spec's host values under its internal name. `weightStorage` (fp32,
    /// fp16, bf16 or int8 with a scale per output channel) is the device storage of the frozen weight matrices (patch, qkv, proj, fc1,
    /// fc2, projection): the GEMM widens them as it packs, so all math stays fp32. Biases,
    /// norms, cls and positions, trainable tensors, gradients and optimizer state stay fp32.
    /// Consumes `values`: each frozen tensor's host copy is dropped as soon as it is on the
    /// device, so loading peaks near one copy of the weights rather than two (pass a temporary
    /// or `consume` a local, or the caller's reference keeps every array alive).
    public convenience init(engine: Engine, specs: [ParameterSpec], values: consuming [String: [Float]], weightStorage: DType = .float32) throws {
        // Moved, not copied, so that each array is freed once it is on the device.
        var tensors: [String: HostTensor] = [:]
        for (name, host) in consume values { tensors[name] = .float32(host) }
        try self.init(engine: engine, specs: specs, tensors: consume tensors, weightStorage: weightStorage)
    }

    /// `tensors` as a checkpoint stores them: a 16-bit weight matrix whose type is
    /// `weightStorage` is uploaded as it is; everything else is widened (exactly) one tensor at
    /// a time and rounded or quantized for its storage.
    public init(engine: Engine, specs: [ParameterSpec], tensors values: consuming [String: HostTensor], weightStorage: DType = .float32) throws {
        guard weightStorage.isWeightStorage else {
            throw ConfigError("weights cannot be stored as \(weightStorage): use float32, float16, bfloat16 or int8")
        }
        self.engine = engine
        self.specs = specs
        self.weightStorage = weightStorage
        let trainable = specs.filter(\.trainable)
        trainableNames = trainable.map(\.name)
        let total = trainable.reduce(0) { $0 + $1.count }
        var slabValues: [Float] = []
        slabValues.reserveCapacity(total)
        var groups: [UInt8] = []
        groups.reserveCapacity(total)
        for spec in specs {
            guard let host = values.removeValue(forKey: spec.name) else { throw ConfigError("no values for parameter '\(spec.name)'") }
            guard host.count == spec.count else {
                throw ConfigError("parameter '\(spec.name)' needs \(spec.count) values for \(spec.shape), got \(host.count)")
            }
            if spec.trainable {
                slabValues += host.floats
                let group: ParameterGroup = spec.isUpProjection ? .upProjection : spec.decays ? .decay : .noDecay
                groups += [UInt8](repeating: group.rawValue, count: spec.count)
            } else {
                tensors[spec.name] = try engine.upload(host, shape: spec.shape, storage: spec.isWeightMatrix ? weightStorage : .float32)
            }
        }
        slab = try engine.tensor(slabValues, shape: [total])
        gradientSlab = try engine.zeros([total])
        groupIDs = try engine.tensor(groups, shape: [total])
        var offset = 0
        for spec in trainable {
            tensors[spec.name] = try slab.view(offset: offset, shape: spec.shape)
            gradients[spec.name] = try gradientSlab.view(offset: offset, shape: spec.shape)
            offset += spec.count
        }
    }

    public var trainableCount: Int { slab.count }

    /// The named parameter, or an error naming it (names come from ParameterTable).
    public func tensor(_ name: String) throws -> Tensor {
        guard let tensor = tensors[name] else { throw ConfigError("no parameter '\(name)' in this model") }
        return tensor
    }

    /// The gradient view of a trainable parameter, nil for a frozen one.
    public func gradient(_ name: String) -> Tensor? { gradients[name] }

    public func zeroGradients() throws { try engine.fill(gradientSlab, with: 0) }

    /// Host copies of the named parameters (waits for the device).
    public func download(_ names: [String]) throws -> [String: [Float]] {
        var result: [String: [Float]] = [:]
        for name in names { result[name] = try tensor(name).download() }
        return result
    }
}

extension Engine {
    /// Host values into a tensor stored as `storage`. fp16 or bf16 bits into their own type
    /// go up unconverted (no fp32 copy); otherwise the values are widened and rounded as
    /// `tensor(_:shape:storage:)` does.
    func upload(_ host: HostTensor, shape: [Int], storage: DType) throws -> Tensor {
        switch (host, storage) {
        case (.float16(let bits), .float16):
            let tensor = try empty(shape, dtype: .float16)
            try tensor.uploadAndWait(bits.map { Float16(bitPattern: $0) })
            return tensor
        case (.bfloat16(let bits), .bfloat16):
            let tensor = try empty(shape, dtype: .bfloat16)
            try tensor.uploadAndWait(bits.map { BFloat16(bits: $0) })
            return tensor
        default:
            return try tensor(host.floats, shape: shape, storage: storage)
        }
    }
}
