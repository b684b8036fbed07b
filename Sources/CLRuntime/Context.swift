import COpenCL

/// Owns one `cl_context` for a single device.
public final class Context: @unchecked Sendable {
    public let handle: cl_context
    public let device: Device

    public init(device: Device) throws {
        self.device = device
        var deviceID: cl_device_id? = device.id
        handle = try create("clCreateContext") { clCreateContext(nil, 1, &deviceID, nil, nil, $0) }
    }

    deinit { clReleaseContext(handle) }
}
