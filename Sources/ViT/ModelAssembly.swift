import Formats
import Foundation
import Tensors

extension ViTModel {
    /// A model of `config` under `method` on `backbone`'s values (its head too when they hold
    /// one), with `adapter`'s trainable tensors when given, else fresh ones (A Kaiming-uniform,
    /// B zero, a new head) from `seed`. Consumes the values: each host array is freed once on
    /// the device.
    /// `weightStorage`: how the frozen weight matrices are stored on the device (ViTParameters).
    public static func assemble(_ engine: Engine, config: ViTConfig, method: FineTuningMethod, backbone: consuming [String: [Float]],
                                adapter: AdapterFile.Contents? = nil, seed: UInt64, weightStorage: DType = .float32) throws -> ViTModel {
        // Moved, not copied: the arrays must have no other owner for ViTParameters to free each
        // one once it is on the device.
        var tensors: [String: HostTensor] = [:]
        for (name, values) in consume backbone { tensors[name] = .float32(values) }
        return try assemble(engine, config: config, method: method, backbone: consume tensors, adapter: adapter, seed: seed,
                            weightStorage: weightStorage)
    }

    /// `assemble` on tensors as a checkpoint stores them: 16-bit weight matrices stored in
    /// their own 16-bit type go to the device as they are.
    public static func assemble(_ engine: Engine, config: ViTConfig, method: FineTuningMethod, backbone: consuming [String: HostTensor],
                                adapter: AdapterFile.Contents? = nil, seed: UInt64, weightStorage: DType = .float32) throws -> ViTModel {
        let specs = ParameterTable.specs(config, method)
        var values = initialValues(for: specs, seed: seed).hostTensors
        values.merge(backbone) { $1 }
        if let adapter {
            for (name, value) in adapter.values { values[name] = .float32(value) }
        }
        let parameters = try ViTParameters(engine: engine, specs: specs, tensors: consume values, weightStorage: weightStorage)
        return try ViTModel(engine: engine, config: config, method: method, parameters: parameters)
    }

    /// A model on a loaded backbone, with `adapter` checked against it first (shape,
    /// architecture and, unless `allowOtherBase`, the base fingerprint; `adapterPath` names it
    /// in errors). `backbone.tensors` is emptied, so that the model holds the only copy.
    public static func build(_ engine: Engine, backbone: inout Backbone, method: FineTuningMethod, seed: UInt64,
                             adapter: AdapterFile.Contents? = nil, adapterPath: String = "the adapter", allowOtherBase: Bool = false,
                             weightStorage: DType = .float32) throws -> ViTModel {
        let config = backbone.config
        try method.validate(width: config.width)
        if let adapter {
            try adapter.checkFits(config, source: backbone.source)
            if !allowOtherBase { try adapter.checkBase(backbone.fingerprint, path: adapterPath) }
        }
        let values = backbone.tensors
        backbone.tensors = [:]
        let model = try assemble(engine, config: config, method: method, backbone: consume values, adapter: adapter, seed: seed,
                                 weightStorage: weightStorage)
        model.baseFingerprint = backbone.fingerprint
        return model
    }
}
