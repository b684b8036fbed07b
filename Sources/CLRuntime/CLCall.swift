import COpenCL
import Foundation

// Every `cl*` call in CLRuntime goes through one of these helpers, so no status code is
// ever dropped and every failure names the call that produced it.

@inline(__always)
func check(_ status: cl_int, _ call: @autoclosure () -> String) throws {
    if status != CL_SUCCESS {
        throw CLError(call: call(), status: status)
    }
}

/// For the `clCreate*` family, which report through an `errcode_ret` out-parameter.
func create<Handle>(_ call: String, _ body: (UnsafeMutablePointer<cl_int>) -> Handle?) throws -> Handle {
    var status: cl_int = CL_SUCCESS
    let handle = body(&status)
    try check(status, call)
    guard let handle else { throw CLError(call: call, status: CL_INVALID_VALUE) }
    return handle
}

/// `clGet*Info` signature with the object and parameter already bound.
typealias InfoGetter = (_ size: Int, _ value: UnsafeMutableRawPointer?, _ sizeReturned: UnsafeMutablePointer<Int>?) -> cl_int

func infoBytes(_ call: String, _ get: InfoGetter) throws -> [UInt8] {
    var size = 0
    try check(get(0, nil, &size), call)
    var bytes = [UInt8](repeating: 0, count: size)
    if size > 0 {
        try bytes.withUnsafeMutableBytes { try check(get(size, $0.baseAddress, nil), call) }
    }
    return bytes
}

func infoString(_ call: String, _ get: InfoGetter) throws -> String {
    let bytes = try infoBytes(call, get)
    let terminated = bytes.prefix { $0 != 0 }
    return String(decoding: terminated, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
}

func infoValue<Value: BitwiseCopyable>(_ call: String, as _: Value.Type, _ get: InfoGetter) throws -> Value {
    try withUnsafeTemporaryAllocation(of: Value.self, capacity: 1) { storage in
        let raw = UnsafeMutableRawPointer(storage.baseAddress!)
        try check(get(MemoryLayout<Value>.size, raw, nil), call)
        return raw.load(as: Value.self)
    }
}
