import COpenCL

/// Owns one `cl_mem` buffer; keeps its context alive.
public final class Buffer: @unchecked Sendable {
    public let handle: cl_mem
    public let context: Context
    public let byteCount: Int

    public init(context: Context, byteCount: Int, flags: cl_mem_flags = cl_mem_flags(CL_MEM_READ_WRITE)) throws {
        precondition(byteCount > 0, "OpenCL buffers cannot be empty")
        self.context = context
        self.byteCount = byteCount
        handle = try create("clCreateBuffer(\(byteCount) bytes)") {
            clCreateBuffer(context.handle, flags, byteCount, nil, $0)
        }
    }

    deinit { clReleaseMemObject(handle) }
}
