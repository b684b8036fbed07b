import COpenCL

/// Owns one in-order `cl_command_queue` with profiling enabled. Commands run in the order
/// they are enqueued; only `finish`, a blocking read or `Event.wait` make the host wait.
public final class CommandQueue: @unchecked Sendable {
    public let handle: cl_command_queue
    public let context: Context

    public init(context: Context, profiling: Bool = true) throws {
        self.context = context
        let properties = cl_command_queue_properties(profiling ? CL_QUEUE_PROFILING_ENABLE : 0)
        handle = try create("clCreateCommandQueue") {
            clCreateCommandQueue(context.handle, context.device.id, properties, $0)
        }
    }

    deinit { clReleaseCommandQueue(handle) }

    public func finish() throws { try check(clFinish(handle), "clFinish") }
    public func flush() throws { try check(clFlush(handle), "clFlush") }

    /// Launches `kernel` over `global` work-items (1 to 3 dimensions). `local == nil` lets
    /// the driver choose the work-group shape (and frees `global` from divisibility).
    @discardableResult
    public func enqueue(_ kernel: Kernel, global: [Int], local: [Int]? = nil) throws -> Event {
        precondition((1...3).contains(global.count) && (local == nil || local!.count == global.count))
        var event: cl_event?
        let status = global.withUnsafeBufferPointer { globalSizes in
            if let local {
                return local.withUnsafeBufferPointer { localSizes in
                    clEnqueueNDRangeKernel(handle, kernel.handle, cl_uint(global.count), nil,
                                           globalSizes.baseAddress, localSizes.baseAddress, 0, nil, &event)
                }
            }
            return clEnqueueNDRangeKernel(handle, kernel.handle, cl_uint(global.count), nil,
                                          globalSizes.baseAddress, nil, 0, nil, &event)
        }
        try check(status, "clEnqueueNDRangeKernel(\(kernel.name), global \(global), local \(local.map { "\($0)" } ?? "auto"))")
        return Event(handle: event!)
    }

    /// Copies device memory into `destination`, waiting for it (and everything before it).
    public func read(_ buffer: Buffer, offsetBytes: Int, into destination: UnsafeMutableRawBufferPointer) throws {
        guard destination.count > 0 else { return }
        try check(clEnqueueReadBuffer(handle, buffer.handle, cl_bool(CL_TRUE), offsetBytes, destination.count,
                                      destination.baseAddress, 0, nil, nil),
                  "clEnqueueReadBuffer(\(destination.count) bytes at \(offsetBytes))")
    }

    /// Starts a copy of host memory into the buffer without waiting. `source` must stay valid
    /// until the returned event completes.
    public func write(_ buffer: Buffer, offsetBytes: Int, from source: UnsafeRawBufferPointer) throws -> Event {
        var event: cl_event?
        try check(clEnqueueWriteBuffer(handle, buffer.handle, cl_bool(CL_FALSE), offsetBytes, source.count,
                                       source.baseAddress, 0, nil, &event),
                  "clEnqueueWriteBuffer(\(source.count) bytes at \(offsetBytes))")
        return Event(handle: event!)
    }

    /// Copies host memory into the buffer and waits: `source` may be freed on return.
    public func writeAndWait(_ buffer: Buffer, offsetBytes: Int, from source: UnsafeRawBufferPointer) throws {
        guard source.count > 0 else { return }
        try check(clEnqueueWriteBuffer(handle, buffer.handle, cl_bool(CL_TRUE), offsetBytes, source.count,
                                       source.baseAddress, 0, nil, nil),
                  "clEnqueueWriteBuffer(\(source.count) bytes at \(offsetBytes), blocking)")
    }

    @discardableResult
    public func copy(from source: Buffer, offsetBytes sourceOffset: Int, to destination: Buffer,
                     offsetBytes destinationOffset: Int, byteCount: Int) throws -> Event {
        var event: cl_event?
        try check(clEnqueueCopyBuffer(handle, source.handle, destination.handle, sourceOffset, destinationOffset,
                                      byteCount, 0, nil, &event),
                  "clEnqueueCopyBuffer(\(byteCount) bytes)")
        return Event(handle: event!)
    }
}
