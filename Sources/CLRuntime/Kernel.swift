import COpenCL

/// One argument of a kernel launch, typed so that the size passed to `clSetKernelArg`
/// always matches the value.
public enum KernelArgument {
    case buffer(Buffer)
    case int32(Int32)
    case uint32(UInt32)
    case int64(Int64)
    case float(Float)
    /// `__local` scratch of this many bytes.
    case local(bytes: Int)
}

/// Owns one `cl_kernel`; keeps its program alive. Setting arguments mutates the kernel, so
/// one Kernel must not be launched from two threads at once (OpenCL 1.2, appendix A.2).
public final class Kernel {
    public let handle: cl_kernel
    public let program: Program
    public let name: String

    public init(program: Program, name: String) throws {
        self.program = program
        self.name = name
        handle = try create("clCreateKernel(\(name))") { clCreateKernel(program.handle, name, $0) }
    }

    deinit { clReleaseKernel(handle) }

    public func setArguments(_ arguments: [KernelArgument]) throws {
        for (index, argument) in arguments.enumerated() {
            let call = "clSetKernelArg(\(name), \(index))"
            let index = cl_uint(index)
            switch argument {
            case .buffer(let buffer):
                var memory: cl_mem? = buffer.handle
                try check(clSetKernelArg(handle, index, MemoryLayout<cl_mem>.size, &memory), call)
            case .int32(var value):
                try check(clSetKernelArg(handle, index, MemoryLayout<Int32>.size, &value), call)
            case .uint32(var value):
                try check(clSetKernelArg(handle, index, MemoryLayout<UInt32>.size, &value), call)
            case .int64(var value):
                try check(clSetKernelArg(handle, index, MemoryLayout<Int64>.size, &value), call)
            case .float(var value):
                try check(clSetKernelArg(handle, index, MemoryLayout<Float>.size, &value), call)
            case .local(let bytes):
                try check(clSetKernelArg(handle, index, bytes, nil), call)
            }
        }
    }

    /// Bytes of `__local` memory the compiled kernel uses per work-group on `device`.
    public func localMemoryBytes(on device: Device) throws -> Int {
        Int(try infoValue("clGetKernelWorkGroupInfo", as: UInt64.self) {
            clGetKernelWorkGroupInfo(handle, device.id, cl_kernel_work_group_info(CL_KERNEL_LOCAL_MEM_SIZE), $0, $1, $2)
        })
    }

    /// The largest work-group this kernel can run with on `device` (may be below the device's).
    public func maxWorkGroupSize(on device: Device) throws -> Int {
        try infoValue("clGetKernelWorkGroupInfo", as: Int.self) {
            clGetKernelWorkGroupInfo(handle, device.id, cl_kernel_work_group_info(CL_KERNEL_WORK_GROUP_SIZE), $0, $1, $2)
        }
    }
}
