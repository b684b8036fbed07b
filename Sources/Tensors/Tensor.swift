import CLRuntime
import Foundation

/// Element types of device storage: fp32 for all math; int32 for labels; uint8 for
/// per-parameter group ids; fp16 and bf16 for storing frozen weights at half the bytes, int8
/// (with an fp32 scale per row) at a quarter (the GEMM converts them to fp32 as it packs, so
/// the math stays fp32).
public enum DType: String, Sendable, CustomStringConvertible, CaseIterable {
    case float32
    case int32
    case uint8
    case float16
    case bfloat16
    /// Symmetric int8 with one fp32 scale per row of the stored matrix (its last dimension is
    /// a row): value = q * scale, scale = the row's largest magnitude / 127.
    case int8

    public var byteCount: Int {
        switch self {
        case .float32, .int32: 4
        case .uint8, .int8: 1
        case .float16, .bfloat16: 2
        }
    }

    /// fp32 and the two 16-bit float storage types.
    public var isFloatingPoint: Bool { self == .float32 || self == .float16 || self == .bfloat16 }

    /// The types a GEMM operand may be stored in (widened to fp32 as it is packed).
    public var isWeightStorage: Bool { isFloatingPoint || self == .int8 }

    public var description: String { rawValue }
}

/// Host element types that map one-to-one onto a device dtype.
public protocol DeviceElement: BitwiseCopyable {
    static var dtype: DType { get }
    static var zero: Self { get }
}

extension Float: DeviceElement {
    public static var dtype: DType { .float32 }
}

extension Int32: DeviceElement {
    public static var dtype: DType { .int32 }
}

extension UInt8: DeviceElement {
    public static var dtype: DType { .uint8 }
}

extension Int8: DeviceElement {
    public static var dtype: DType { .int8 }
}

extension Float16: DeviceElement {
    public static var dtype: DType { .float16 }
}

/// bfloat16 storage: the upper 16 bits of an fp32. OpenCL has no such type; the kernels read
/// it as ushort and widen it exactly with a shift.
public struct BFloat16: DeviceElement, Equatable {
    public var bits: UInt16
    public static var dtype: DType { .bfloat16 }
    public static var zero: BFloat16 { BFloat16(bits: 0) }

    public init(bits: UInt16) { self.bits = bits }

    /// Rounded to nearest, ties to even. A NaN stays a (quiet) NaN: the rounding formula alone
    /// would carry some NaN payloads into the exponent and give Inf.
    public init(_ value: Float) {
        let u = value.bitPattern
        if value.isNaN {
            bits = UInt16(truncatingIfNeeded: u >> 16) | 0x0040
        } else {
            bits = UInt16(truncatingIfNeeded: (u &+ 0x7FFF &+ ((u >> 16) & 1)) >> 16)
        }
    }

    public var float: Float { Float(bitPattern: UInt32(bits) << 16) }
}

/// A pooled device buffer; it returns to its engine's pool when the last tensor using it goes.
final class DeviceStorage {
    let engine: Engine
    let buffer: Buffer
    /// Elements of the dtype the storage was created for.
    let capacity: Int

    /// int8 storage: the fp32 scale of each stored row (set once, by the quantizing upload).
    var rowScales: RowScales?

    init(engine: Engine, elementCount: Int, dtype: DType) throws {
        self.engine = engine
        buffer = try engine.pool.acquire(byteCount: elementCount * dtype.byteCount)
        capacity = elementCount
    }

    deinit { engine.pool.release(buffer) }
}

/// The scales of an int8 storage: element e of the storage (views included) is
/// q[e] * scales[e / rowLength].
struct RowScales {
    let scales: Tensor
    let rowLength: Int
}

/// A device-backed tensor: a row-major shape over a range of a device buffer. Copies of a
/// Tensor and its views share storage. Creating, filling or computing into a tensor only
/// enqueues work; `download()` and `Engine.synchronize()` are the only waits.
public struct Tensor {
    public let shape: [Int]
    public let dtype: DType
    /// Offset of the first element into the storage, in elements.
    public let offset: Int
    let storage: DeviceStorage

    public var count: Int { shape.reduce(1, *) }
    public var engine: Engine { storage.engine }
    public var buffer: Buffer { storage.buffer }
    public var byteOffset: Int { offset * dtype.byteCount }
    public var byteCount: Int { count * dtype.byteCount }

    init(shape: [Int], dtype: DType, offset: Int, storage: DeviceStorage) {
        self.shape = shape
        self.dtype = dtype
        self.offset = offset
        self.storage = storage
    }

    /// A tensor of `shape` starting `offset` elements into this one, sharing its storage.
    public func view(offset: Int, shape: [Int]) throws -> Tensor {
        try Tensor.validate(shape)
        let viewCount = shape.reduce(1, *)
        guard offset >= 0, offset + viewCount <= count else {
            throw TensorError.viewOutOfRange(offset: offset, shape: shape, available: count)
        }
        return Tensor(shape: shape, dtype: dtype, offset: self.offset + offset, storage: storage)
    }

    /// The same elements under another shape with the same element count.
    public func reshaped(_ shape: [Int]) throws -> Tensor {
        try Tensor.validate(shape)
        guard shape.reduce(1, *) == count else {
            throw TensorError.invalidShape(shape, reason: "reshape of \(self.shape) needs \(count) elements")
        }
        return Tensor(shape: shape, dtype: dtype, offset: offset, storage: storage)
    }

    /// Copies the tensor to the host, waiting for all enqueued work that precedes it (16-bit
    /// storage widened to fp32 exactly).
    public func download() throws -> [Float] {
        switch dtype {
        case .float16: try download(as: Float16.self).map(Float.init)
        case .bfloat16: try download(as: BFloat16.self).map(\.float)
        case .int8:
            // Dequantized as the GEMM's packing does: Float(q) * scale, one fp32 product.
            try dequantized()
        default: try download(as: Float.self)
        }
    }

    private func dequantized() throws -> [Float] {
        guard let rowScales = storage.rowScales else { return try download(as: Int8.self).map(Float.init) }
        let scales = try rowScales.scales.download()
        return try download(as: Int8.self).enumerated().map { index, q in Float(q) * scales[(offset + index) / rowScales.rowLength] }
    }

    /// int8 storage's row scales (nil for other types).
    var rowScales: RowScales? { storage.rowScales }

    public func download<Element: DeviceElement>(as _: Element.Type) throws -> [Element] {
        try expect(Element.dtype, "download")
        var values = [Element](repeating: .zero, count: count)
        try values.withUnsafeMutableBytes { try engine.queue.read(buffer, offsetBytes: byteOffset, into: $0) }
        return values
    }

    /// Enqueues a copy of `values` into the tensor and returns without waiting. The values are
    /// staged in host memory that is freed when the copy completes.
    public func upload<Element: DeviceElement>(_ values: [Element]) throws {
        try expect(Element.dtype, "upload")
        guard values.count == count else {
            throw TensorError.countMismatch(operation: "upload", expected: count, actual: values.count)
        }
        let staging = UnsafeMutableRawBufferPointer.allocate(byteCount: byteCount, alignment: 64)
        values.withUnsafeBytes { staging.copyMemory(from: $0) }
        let event: Event
        do {
            event = try engine.queue.write(buffer, offsetBytes: byteOffset, from: UnsafeRawBufferPointer(staging))
        } catch {
            staging.deallocate()
            throw error
        }
        let address = UInt(bitPattern: staging.baseAddress)
        try event.onCompletion {
            UnsafeMutableRawPointer(bitPattern: address)?.deallocate()
        }
    }

    /// Copies `values` into the tensor and waits, without a staging copy: for loading large
    /// weights, where a second host copy of every tensor would double the loading peak.
    public func uploadAndWait<Element: DeviceElement>(_ values: [Element]) throws {
        try expect(Element.dtype, "upload")
        guard values.count == count else {
            throw TensorError.countMismatch(operation: "upload", expected: count, actual: values.count)
        }
        try values.withUnsafeBytes { try engine.queue.writeAndWait(buffer, offsetBytes: byteOffset, from: $0) }
    }

    func expect(_ expected: DType, _ operation: String) throws {
        guard dtype == expected else {
            throw TensorError.dtypeMismatch(operation: operation, expected: expected, actual: dtype)
        }
    }

    static func validate(_ shape: [Int]) throws {
        guard !shape.isEmpty else { throw TensorError.invalidShape(shape, reason: "a tensor needs at least one dimension") }
        guard shape.allSatisfy({ $0 > 0 }) else {
            throw TensorError.invalidShape(shape, reason: "every dimension must be positive")
        }
        let (_, overflow) = shape.reduce((1, false)) { partial, dimension in
            let (product, overflowed) = partial.0.multipliedReportingOverflow(by: dimension)
            return (product, partial.1 || overflowed)
        }
        guard !overflow else { throw TensorError.invalidShape(shape, reason: "element count overflows") }
    }
}

extension Tensor: CustomStringConvertible {
    public var description: String { "Tensor(\(shape.map(String.init).joined(separator: "x")), \(dtype), offset \(offset))" }
}

public enum TensorError: Error, CustomStringConvertible, Equatable {
    case invalidShape([Int], reason: String)
    case shapeMismatch(operation: String, details: String)
    case countMismatch(operation: String, expected: Int, actual: Int)
    case dtypeMismatch(operation: String, expected: DType, actual: DType)
    case viewOutOfRange(offset: Int, shape: [Int], available: Int)
    case foreignEngine(operation: String)
    case tooLarge(operation: String, elements: Int)

    public var description: String {
        switch self {
        case .invalidShape(let shape, let reason):
            "invalid shape \(shape): \(reason)"
        case .shapeMismatch(let operation, let details):
            "\(operation): shape mismatch: \(details)"
        case .countMismatch(let operation, let expected, let actual):
            "\(operation): expected \(expected) values, got \(actual)"
        case .dtypeMismatch(let operation, let expected, let actual):
            "\(operation): expected \(expected) tensor, got \(actual)"
        case .viewOutOfRange(let offset, let shape, let available):
            "view of shape \(shape) at offset \(offset) does not fit in \(available) elements"
        case .foreignEngine(let operation):
            "\(operation): tensors belong to different engines"
        case .tooLarge(let operation, let elements):
            "\(operation): \(elements) elements exceed the 32-bit index range of the kernels"
        }
    }
}

extension Engine {
    /// Uninitialised device memory (possibly a recycled buffer's old contents).
    public func empty(_ shape: [Int], dtype: DType = .float32) throws -> Tensor {
        try Tensor.validate(shape)
        let count = shape.reduce(1, *)
        return Tensor(shape: shape, dtype: dtype, offset: 0,
                      storage: try DeviceStorage(engine: self, elementCount: count, dtype: dtype))
    }

    public func zeros(_ shape: [Int]) throws -> Tensor {
        let tensor = try empty(shape)
        try fill(tensor, with: 0)
        return tensor
    }

    /// fp32 from host values (array literals land here).
    public func tensor(_ values: [Float], shape: [Int]) throws -> Tensor {
        try tensor(values as [Float], elementsShape: shape)
    }

    /// fp32 host values stored as `storage` (fp32, or rounded to nearest even into fp16 or
    /// bf16, or quantized per row into int8), uploaded and waited for (weights: no staging copy).
    public func tensor(_ values: [Float], shape: [Int], storage: DType) throws -> Tensor {
        let tensor = try empty(shape, dtype: storage)
        switch storage {
        case .float32: try tensor.uploadAndWait(values)
        case .float16: try tensor.uploadAndWait(values.map { Float16($0) })
        case .bfloat16: try tensor.uploadAndWait(values.map(BFloat16.init))
        case .int8: try tensor.quantize(values)
        case .int32, .uint8: throw TensorError.dtypeMismatch(operation: "tensor(storage:)", expected: .float16, actual: storage)
        }
        return tensor
    }

    public func tensor<Element: DeviceElement>(_ values: [Element], shape: [Int]) throws -> Tensor {
        try tensor(values, elementsShape: shape)
    }

    private func tensor<Element: DeviceElement>(_ values: [Element], elementsShape shape: [Int]) throws -> Tensor {
        let tensor = try empty(shape, dtype: Element.dtype)
        try tensor.upload(values)
        return tensor
    }
}

extension Tensor {
    /// Symmetric per-row int8 of finite `values` (rows of the last dimension): scale = the row's
    /// largest magnitude / 127 (1 for an all-zero row), q = round(v / scale) to nearest even,
    /// so |q| <= 127 and every value is within scale / 2 of q * scale.
    fileprivate func quantize(_ values: [Float]) throws {
        guard shape.count >= 2, let rowLength = shape.last, rowLength > 0 else {
            throw TensorError.invalidShape(shape, reason: "int8 storage needs a matrix (one scale per row)")
        }
        guard values.count == count else { throw TensorError.countMismatch(operation: "upload", expected: count, actual: values.count) }
        if let index = values.firstIndex(where: { !$0.isFinite }) {
            throw TensorError.invalidShape(shape, reason: "int8 storage of a non-finite value (\(values[index]) at flat index \(index))")
        }
        let rows = count / rowLength
        var scales = [Float](repeating: 1, count: rows)
        var quantized = [Int8](repeating: 0, count: count)
        for row in 0..<rows {
            let range = row * rowLength..<(row + 1) * rowLength
            let largest = values[range].reduce(0) { max($0, abs($1)) }
            // A row too small for its scale to be a normal fp32 (or all zeros) keeps scale 1.
            let scale = largest / 127 >= Float.leastNormalMagnitude ? largest / 127 : 1
            scales[row] = scale
            for index in range { quantized[index] = Int8(max(-127, min(127, (values[index] / scale).rounded(.toNearestOrEven)))) }
        }
        try uploadAndWait(quantized)
        storage.rowScales = RowScales(scales: try engine.tensor(scales, shape: [rows], storage: .float32), rowLength: rowLength)
    }
}
