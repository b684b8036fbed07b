import COpenCL

/// Owns one `cl_program`, built from source or from a binary the same driver produced.
public final class Program: @unchecked Sendable {
    public let handle: cl_program
    public let context: Context

    public init(context: Context, source: String) throws {
        self.context = context
        handle = try source.withCString { text in
            var pointer: UnsafePointer<CChar>? = text
            return try create("clCreateProgramWithSource") {
                clCreateProgramWithSource(context.handle, 1, &pointer, nil, $0)
            }
        }
    }

    /// A program from a device binary (see `binary()`); still needs `build`.
    public init(context: Context, binary: [UInt8]) throws {
        self.context = context
        var deviceID: cl_device_id? = context.device.id
        var length = binary.count
        var binaryStatus: cl_int = CL_SUCCESS
        handle = try binary.withUnsafeBufferPointer { bytes in
            var pointer: UnsafePointer<UInt8>? = bytes.baseAddress
            return try create("clCreateProgramWithBinary") {
                clCreateProgramWithBinary(context.handle, 1, &deviceID, &length, &pointer, &binaryStatus, $0)
            }
        }
        try check(binaryStatus, "clCreateProgramWithBinary (binary status)")
    }

    deinit { clReleaseProgram(handle) }

    /// Compiles (or, for a binary, finalises) the program. A failure carries the build log.
    public func build(options: String) throws {
        var deviceID: cl_device_id? = context.device.id
        let status = clBuildProgram(handle, 1, &deviceID, options, nil, nil)
        if status != CL_SUCCESS {
            throw CLError(call: "clBuildProgram", status: status, buildLog: try? buildLog())
        }
    }

    public func buildLog() throws -> String {
        try infoString("clGetProgramBuildInfo") {
            clGetProgramBuildInfo(handle, context.device.id, cl_program_build_info(CL_PROGRAM_BUILD_LOG), $0, $1, $2)
        }
    }

    /// The device binary of a built program, for the disk cache.
    public func binary() throws -> [UInt8] {
        let size = try infoValue("clGetProgramInfo(CL_PROGRAM_BINARY_SIZES)", as: Int.self) {
            clGetProgramInfo(handle, cl_program_info(CL_PROGRAM_BINARY_SIZES), $0, $1, $2)
        }
        guard size > 0 else { throw CLError(call: "clGetProgramInfo(CL_PROGRAM_BINARY_SIZES)", status: CL_INVALID_PROGRAM_EXECUTABLE) }
        var bytes = [UInt8](repeating: 0, count: size)
        try bytes.withUnsafeMutableBufferPointer { storage in
            var pointer: UnsafeMutablePointer<UInt8>? = storage.baseAddress
            try withUnsafeMutablePointer(to: &pointer) { slot in
                try check(
                    clGetProgramInfo(handle, cl_program_info(CL_PROGRAM_BINARIES), MemoryLayout<UnsafeMutablePointer<UInt8>?>.size, slot, nil),
                    "clGetProgramInfo(CL_PROGRAM_BINARIES)")
            }
        }
        return bytes
    }
}
