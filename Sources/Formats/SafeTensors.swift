import Foundation

/// A problem with a checkpoint or adapter file: which file, which tensor (if any), what.
public struct CheckpointError: Error, CustomStringConvertible, Equatable {
    public let file: String
    public let tensor: String?
    public let problem: String

    public init(file: String, tensor: String? = nil, _ problem: String) {
        self.file = file
        self.tensor = tensor
        self.problem = problem
    }

    public var description: String {
        if let tensor { return "\(file): tensor '\(tensor)': \(problem)" }
        return "\(file): \(problem)"
    }
}

/// Element types a safetensors header may name, with their sizes. Only the float types
/// convert to fp32; the others are understood (so the header can be validated) but refused
/// when read.
public enum SafeTensorsDType: String, Sendable, CaseIterable {
    case F64, F32, F16, BF16, I64, I32, I16, I8, U64, U32, U16, U8, BOOL
    case F8_E4M3, F8_E5M2

    public var byteCount: Int {
        switch self {
        case .F64, .I64, .U64: 8
        case .F32, .I32, .U32: 4
        case .F16, .BF16, .I16, .U16: 2
        case .I8, .U8, .BOOL, .F8_E4M3, .F8_E5M2: 1
        }
    }
}

/// A safetensors file, memory-mapped: 8-byte little-endian header length, a JSON header
/// (name -> dtype, shape, data_offsets; optional `__metadata__` of strings), then raw
/// little-endian data. The header is validated whole on open: offsets inside the data, no
/// overlaps, byte sizes consistent with dtype and shape. A header that lies is an error,
/// never a crash or garbage.
public struct SafeTensorsFile {
    public struct Entry: Sendable, Equatable {
        public let name: String
        public let dtype: SafeTensorsDType
        public let shape: [Int]
        /// Byte range within the data section.
        public let range: Range<Int>
        public var elementCount: Int { shape.reduce(1, *) }
    }

    public let path: String
    public let metadata: [String: String]
    /// Entries in data order.
    public let entries: [Entry]
    private let byName: [String: Entry]
    private let data: Data
    private let dataStart: Int

    public var names: [String] { entries.map(\.name) }

    public init(contentsOf url: URL) throws {
        let data: Data
        do {
            data = try Data(contentsOf: url, options: .alwaysMapped)
        } catch {
            throw CheckpointError(file: url.path, "cannot read file: \((error as NSError).localizedDescription)")
        }
        try self.init(data: data, path: url.path)
    }

    /// Parses a whole safetensors file held in `data`; `path` names it in errors.
    public init(data: Data, path: String) throws {
        self.path = path
        self.data = data
        let fail = { (problem: String) in CheckpointError(file: path, problem) }
        guard data.count >= 8 else { throw fail("file is \(data.count) bytes, too short for a safetensors header length") }
        let headerLength = data.prefix(8).enumerated().reduce(UInt64(0)) { $0 | UInt64($1.element) << (8 * UInt64($1.offset)) }
        guard headerLength <= UInt64(data.count - 8) else {
            throw fail("header length \(headerLength) runs past the end of the \(data.count)-byte file (truncated?)")
        }
        dataStart = 8 + Int(headerLength)
        let json: Any
        do {
            json = try JSONSerialization.jsonObject(with: data.subdata(in: 8..<dataStart))
        } catch {
            throw fail("header is not valid JSON")
        }
        guard let header = json as? [String: Any] else { throw fail("header is not a JSON object") }
        // JSONSerialization keeps the last of two equal keys; the reference reader refuses them.
        if let duplicate = JSONObjectKeys.firstDuplicate(in: data.subdata(in: 8..<dataStart)) {
            throw fail("the header names '\(duplicate)' twice")
        }

        var metadata: [String: String] = [:]
        if let raw = header["__metadata__"] {
            guard let object = raw as? [String: Any], let strings = object as? [String: String] else {
                throw fail("__metadata__ must map strings to strings")
            }
            metadata = strings
        }
        self.metadata = metadata

        let dataSize = data.count - dataStart
        var entries: [Entry] = []
        for (name, raw) in header where name != "__metadata__" {
            let bad = { (problem: String) in CheckpointError(file: path, tensor: name, problem) }
            guard let info = raw as? [String: Any] else { throw bad("header entry is not an object") }
            guard let dtypeName = info["dtype"] as? String else { throw bad("missing dtype") }
            guard let dtype = SafeTensorsDType(rawValue: dtypeName) else { throw bad("unknown dtype '\(dtypeName)'") }
            guard let shapeValues = info["shape"] as? [Any], let shape = Self.integers(shapeValues), shape.allSatisfy({ $0 >= 0 }) else {
                throw bad("shape must be a list of non-negative integers")
            }
            guard let offsetValues = info["data_offsets"] as? [Any], let offsets = Self.integers(offsetValues), offsets.count == 2 else {
                throw bad("data_offsets must be two integers")
            }
            let (begin, end) = (offsets[0], offsets[1])
            guard begin >= 0, begin <= end, end <= dataSize else {
                throw bad("data_offsets [\(begin), \(end)] lie outside the \(dataSize)-byte data section")
            }
            let (elements, overflow) = shape.reduce((1, false)) { partial, dimension in
                let (product, overflowed) = partial.0.multipliedReportingOverflow(by: dimension)
                return (product, partial.1 || overflowed)
            }
            guard !overflow, elements <= Int.max / 8, elements * dtype.byteCount == end - begin else {
                throw bad("shape \(shape) of \(dtype) needs \(overflow ? "too many" : String(elements * dtype.byteCount)) bytes but data_offsets span \(end - begin)")
            }
            entries.append(Entry(name: name, dtype: dtype, shape: shape, range: begin..<end))
        }
        entries.sort { ($0.range.lowerBound, $0.range.upperBound) < ($1.range.lowerBound, $1.range.upperBound) }
        for (previous, next) in zip(entries, entries.dropFirst()) where next.range.lowerBound < previous.range.upperBound {
            throw CheckpointError(file: path, tensor: next.name, "data overlaps tensor '\(previous.name)'")
        }
        self.entries = entries
        byName = Dictionary(uniqueKeysWithValues: entries.map { ($0.name, $0) })
    }

    public func entry(_ name: String) -> Entry? { byName[name] }

    /// The tensor converted to fp32 (from F32, F16 or BF16), row-major.
    ///
    /// Once converted, the tensor's pages of the mapping are handed back to the kernel
    /// (MADV_PAGEOUT: clean file pages are dropped and re-read if touched again; contents never
    /// change). Otherwise a checkpoint being loaded sits in memory twice, mapped and converted:
    /// 800 MB instead of 460 MB for loading a ViT-B/16 file.
    public func floats(_ name: String) throws -> [Float] {
        guard let entry = byName[name] else { throw CheckpointError(file: path, tensor: name, "not in the file") }
        let count = entry.elementCount
        let start = dataStart + entry.range.lowerBound
        return try data.withUnsafeBytes { (raw: UnsafeRawBufferPointer) -> [Float] in
            let bytes = UnsafeRawBufferPointer(rebasing: raw[start..<start + entry.range.count])
            defer { Self.releasePages(of: bytes) }
            switch entry.dtype {
            case .F32:
                return (0..<count).map { Float(bitPattern: bytes.loadUnaligned(fromByteOffset: 4 * $0, as: UInt32.self).littleEndian) }
            case .F16:
                return (0..<count).map { Self.halfToFloat(bytes.loadUnaligned(fromByteOffset: 2 * $0, as: UInt16.self).littleEndian) }
            case .BF16:
                return (0..<count).map { Float(bitPattern: UInt32(bytes.loadUnaligned(fromByteOffset: 2 * $0, as: UInt16.self).littleEndian) << 16) }
            default:
                throw CheckpointError(file: path, tensor: name, "dtype \(entry.dtype) cannot be read as floating point (F32, F16 and BF16 can)")
            }
        }
    }

    /// `floats(name)`, refusing NaN and infinities with the tensor, the index and the value named:
    /// frozen weights and adapters are read through this, so that a damaged file is reported at
    /// load instead of as a NaN loss later.
    public func finiteFloats(_ name: String) throws -> [Float] {
        let values = try floats(name)
        if let index = values.firstIndex(where: { !$0.isFinite }) {
            let count = values.lazy.filter { !$0.isFinite }.count
            throw CheckpointError(file: path, tensor: name, "holds \(count) non-finite value\(count == 1 ? "" : "s") (the first, \(values[index]), at flat index \(index))")
        }
        return values
    }

    /// The tensor as stored: fp32 from F32, the raw bits from F16 and BF16 (see HostTensor);
    /// NaN and infinities refused as by `finiteFloats`. Pages handed back as by `floats`.
    public func finiteHostTensor(_ name: String) throws -> HostTensor {
        guard let entry = byName[name] else { throw CheckpointError(file: path, tensor: name, "not in the file") }
        let tensor: HostTensor
        switch entry.dtype {
        case .F16, .BF16:
            let start = dataStart + entry.range.lowerBound, count = entry.elementCount
            let bits = data.withUnsafeBytes { (raw: UnsafeRawBufferPointer) -> [UInt16] in
                let bytes = UnsafeRawBufferPointer(rebasing: raw[start..<start + entry.range.count])
                defer { Self.releasePages(of: bytes) }
                return (0..<count).map { bytes.loadUnaligned(fromByteOffset: 2 * $0, as: UInt16.self).littleEndian }
            }
            tensor = entry.dtype == .F16 ? .float16(bits) : .bfloat16(bits)
        default:
            return .float32(try finiteFloats(name))
        }
        if let index = tensor.firstNonFinite {
            let values = tensor.floats
            let count = values.lazy.filter { !$0.isFinite }.count
            throw CheckpointError(file: path, tensor: name, "holds \(count) non-finite value\(count == 1 ? "" : "s") (the first, \(values[index]), at flat index \(index))")
        }
        return tensor
    }

    /// Advises the kernel that the whole pages inside `bytes` are not needed for now. Only a
    /// hint: failure (an old kernel, memory that is not a file mapping) changes nothing.
    private static func releasePages(of bytes: UnsafeRawBufferPointer) {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return }
        let page = UInt(max(1, sysconf(Int32(_SC_PAGESIZE))))
        let start = UInt(bitPattern: base), end = start + UInt(bytes.count)
        let first = (start + page - 1) / page * page, last = end / page * page
        guard last > first, let pointer = UnsafeMutableRawPointer(bitPattern: first) else { return }
        _ = madvise(pointer, Int(last - first), 21 /* MADV_PAGEOUT, Linux 5.4 */)
    }

    /// IEEE binary16 -> binary32, exact (subnormals, infinities and NaN included).
    static func halfToFloat(_ half: UInt16) -> Float {
        let sign = UInt32(half >> 15) << 31
        let exponent = Int((half >> 10) & 0x1f)
        let mantissa = UInt32(half & 0x3ff)
        if exponent == 0x1f { return Float(bitPattern: sign | 0x7f80_0000 | mantissa << 13) }
        if exponent == 0 {
            let magnitude = Float(mantissa) * 0x1p-24
            return sign == 0 ? magnitude : -magnitude
        }
        return Float(bitPattern: sign | UInt32(exponent - 15 + 127) << 23 | mantissa << 13)
    }

    private static func integers(_ values: [Any]) -> [Int]? {
        var result: [Int] = []
        for value in values {
            // JSONSerialization gives NSNumber; reject fractions and strings.
            guard let number = value as? NSNumber else { return nil }
            let double = number.doubleValue
            guard double == double.rounded(), abs(double) < 9e15 else { return nil }
            result.append(number.intValue)
        }
        return result
    }

    /// Writes tensors (in the given order) and string metadata, to a temporary file in the same
    /// directory that is then renamed over `url`: no reader ever sees half a file. `dtype` F32,
    /// or F16 / BF16 rounded to nearest even (BF16 keeps NaNs NaN).
    public static func write(_ tensors: [(name: String, shape: [Int], values: [Float])], metadata: [String: String] = [:],
                             dtype: SafeTensorsDType = .F32, to url: URL) throws {
        guard [.F32, .F16, .BF16].contains(dtype) else {
            throw CheckpointError(file: url.path, "tensors are written as F32, F16 or BF16, not \(dtype)")
        }
        let width = dtype.byteCount
        var header: [String: Any] = [:]
        if !metadata.isEmpty { header["__metadata__"] = metadata }
        var offset = 0
        for tensor in tensors {
            guard tensor.shape.reduce(1, *) == tensor.values.count else {
                throw CheckpointError(file: url.path, tensor: tensor.name, "shape \(tensor.shape) does not hold \(tensor.values.count) values")
            }
            guard header[tensor.name] == nil else { throw CheckpointError(file: url.path, tensor: tensor.name, "written twice") }
            header[tensor.name] = ["dtype": dtype.rawValue, "shape": tensor.shape, "data_offsets": [offset, offset + width * tensor.values.count]]
            offset += width * tensor.values.count
        }
        var headerBytes = [UInt8](try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys]))
        // Pad with spaces so the data section starts 8-byte aligned, as the reference writer does.
        while headerBytes.count % 8 != 0 { headerBytes.append(0x20) }
        var bytes = [UInt8]()
        bytes.reserveCapacity(8 + headerBytes.count + offset)
        for shift in 0..<8 { bytes.append(UInt8(truncatingIfNeeded: UInt64(headerBytes.count) >> (8 * UInt64(shift)))) }
        bytes += headerBytes
        // Little-endian hosts only (x86-64, arm64), as the reader.
        for tensor in tensors {
            switch dtype {
            case .F16: tensor.values.map { Float16($0) }.withUnsafeBytes { bytes += $0 }
            case .BF16: tensor.values.map(bfloat16Bits).withUnsafeBytes { bytes += $0 }
            default: tensor.values.withUnsafeBytes { bytes += $0 }
            }
        }
        try writeAtomically(Data(bytes), to: url)
    }
}

/// fp32 -> bf16 bits, rounded to nearest even; a NaN stays a quiet NaN (the rounding alone would
/// turn some NaN payloads into Inf).
func bfloat16Bits(_ value: Float) -> UInt16 {
    let u = value.bitPattern
    return value.isNaN ? UInt16(truncatingIfNeeded: u >> 16) | 0x0040 : UInt16(truncatingIfNeeded: (u &+ 0x7FFF &+ ((u >> 16) & 1)) >> 16)
}

/// Temporary file in the destination's directory, then rename: the destination is either the
/// old file or the complete new one.
public func writeAtomically(_ data: Data, to url: URL) throws {
    let directory = url.deletingLastPathComponent()
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    let temporary = directory.appendingPathComponent(".\(url.lastPathComponent).\(ProcessInfo.processInfo.processIdentifier).\(UInt32.random(in: 0...UInt32.max)).tmp")
    do {
        try data.write(to: temporary)
        guard rename(temporary.path, url.path) == 0 else {
            throw CheckpointError(file: url.path, "cannot rename the temporary file into place (errno \(errno))")
        }
    } catch {
        try? FileManager.default.removeItem(at: temporary)
        throw error
    }
}

/// The keys of JSON objects as written in the text, for what JSONSerialization hides: a key
/// given twice. Scans the top-level object and every object nested in it.
enum JSONObjectKeys {
    /// The first key that appears twice in one object (after unescaping), or nil. Text that is
    /// not well-formed JSON gives nil: the caller has already parsed it.
    static func firstDuplicate(in data: Data) -> String? {
        struct Container {
            let isObject: Bool
            var expectingKey: Bool
            var keys: Set<String> = []
        }
        let bytes = [UInt8](data)
        var position = 0
        var open: [Container] = []
        while position < bytes.count {
            switch bytes[position] {
            case UInt8(ascii: "{"):
                open.append(Container(isObject: true, expectingKey: true))
                position += 1
            case UInt8(ascii: "["):
                open.append(Container(isObject: false, expectingKey: false))
                position += 1
            case UInt8(ascii: "}"), UInt8(ascii: "]"):
                _ = open.popLast()
                position += 1
            case UInt8(ascii: ","):
                if let last = open.indices.last, open[last].isObject { open[last].expectingKey = true }
                position += 1
            case UInt8(ascii: "\""):
                guard let (text, end) = string(bytes, from: position) else { return nil }
                position = end
                if let last = open.indices.last, open[last].expectingKey {
                    if open[last].keys.contains(text) { return text }
                    open[last].keys.insert(text)
                    open[last].expectingKey = false
                }
            default:
                position += 1
            }
        }
        return nil
    }

    /// The unescaped string starting at the quote at `start`, and the index after its closing quote.
    private static func string(_ bytes: [UInt8], from start: Int) -> (String, Int)? {
        var index = start + 1
        var scalars = String.UnicodeScalarView()
        var raw: [UInt8] = []
        func flush() {
            scalars.append(contentsOf: String(decoding: raw, as: UTF8.self).unicodeScalars)
            raw.removeAll()
        }
        func hex4(_ at: Int) -> UInt32? {
            guard at + 4 <= bytes.count, let text = String(bytes: bytes[at..<at + 4], encoding: .ascii) else { return nil }
            return UInt32(text, radix: 16)
        }
        while index < bytes.count {
            let byte = bytes[index]
            if byte == UInt8(ascii: "\"") {
                flush()
                return (String(scalars), index + 1)
            }
            if byte == UInt8(ascii: "\\") {
                guard index + 1 < bytes.count else { return nil }
                let escaped = bytes[index + 1]
                let simple: [UInt8: UInt8] = [UInt8(ascii: "n"): 0x0A, UInt8(ascii: "t"): 0x09, UInt8(ascii: "r"): 0x0D,
                                              UInt8(ascii: "b"): 0x08, UInt8(ascii: "f"): 0x0C]
                if escaped == UInt8(ascii: "u") {
                    guard var code = hex4(index + 2) else { return nil }
                    index += 6
                    if (0xD800..<0xDC00).contains(code), index + 1 < bytes.count, bytes[index] == UInt8(ascii: "\\"),
                       bytes[index + 1] == UInt8(ascii: "u"), let low = hex4(index + 2), (0xDC00..<0xE000).contains(low) {
                        code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                        index += 6
                    }
                    flush()
                    scalars.append(Unicode.Scalar(code) ?? "\u{FFFD}")
                    continue
                }
                raw.append(simple[escaped] ?? escaped)
                index += 2
                continue
            }
            raw.append(byte)
            index += 1
        }
        return nil
    }
}
