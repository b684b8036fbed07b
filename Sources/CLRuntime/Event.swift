import COpenCL

/// Owns one `cl_event`: completion of an enqueued command and its profiling times.
public final class Event: @unchecked Sendable {
    public let handle: cl_event

    init(handle: cl_event) { self.handle = handle }
    deinit { clReleaseEvent(handle) }

    public func wait() throws {
        var event: cl_event? = handle
        try check(clWaitForEvents(1, &event), "clWaitForEvents")
    }

    public var isComplete: Bool {
        get throws {
            let status = try infoValue("clGetEventInfo", as: cl_int.self) {
                clGetEventInfo(handle, cl_event_info(CL_EVENT_COMMAND_EXECUTION_STATUS), $0, $1, $2)
            }
            if status < 0 { throw CLError(call: "command execution", status: status) }
            return status == CL_COMPLETE
        }
    }

    /// Device timestamps in nanoseconds. Needs a profiling queue and a completed command.
    public struct ProfilingTimes: Sendable {
        public var queued: UInt64
        public var submitted: UInt64
        public var started: UInt64
        public var ended: UInt64
        public var executionSeconds: Double { Double(ended &- started) * 1e-9 }
    }

    public func profilingTimes() throws -> ProfilingTimes {
        func time(_ param: Int32) throws -> UInt64 {
            try infoValue("clGetEventProfilingInfo", as: cl_ulong.self) {
                clGetEventProfilingInfo(handle, cl_profiling_info(param), $0, $1, $2)
            }
        }
        return ProfilingTimes(
            queued: try time(CL_PROFILING_COMMAND_QUEUED),
            submitted: try time(CL_PROFILING_COMMAND_SUBMIT),
            started: try time(CL_PROFILING_COMMAND_START),
            ended: try time(CL_PROFILING_COMMAND_END)
        )
    }

    /// Runs `body` on a driver thread once the command completes (or fails). Used to free
    /// host staging memory without making the caller wait.
    public func onCompletion(_ body: @escaping @Sendable () -> Void) throws {
        let box = Unmanaged.passRetained(CompletionBox(body))
        let status = clSetEventCallback(handle, CL_COMPLETE, { _, _, userData in
            let box = Unmanaged<CompletionBox>.fromOpaque(userData!).takeRetainedValue()
            box.body()
        }, box.toOpaque())
        if status != CL_SUCCESS {
            box.release()
            throw CLError(call: "clSetEventCallback", status: status)
        }
    }
}

private final class CompletionBox {
    let body: @Sendable () -> Void
    init(_ body: @escaping @Sendable () -> Void) { self.body = body }
}
