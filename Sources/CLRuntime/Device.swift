import COpenCL

public struct DeviceType: OptionSet, Sendable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    public static let cpu = DeviceType(rawValue: UInt64(CL_DEVICE_TYPE_CPU))
    public static let gpu = DeviceType(rawValue: UInt64(CL_DEVICE_TYPE_GPU))
    public static let accelerator = DeviceType(rawValue: UInt64(CL_DEVICE_TYPE_ACCELERATOR))
    public static let custom = DeviceType(rawValue: UInt64(CL_DEVICE_TYPE_CUSTOM))

    public var description: String {
        var names: [String] = []
        if contains(.gpu) { names.append("gpu") }
        if contains(.cpu) { names.append("cpu") }
        if contains(.accelerator) { names.append("accelerator") }
        if contains(.custom) { names.append("custom") }
        return names.isEmpty ? "other" : names.joined(separator: "+")
    }
}

/// What a device is and can do, read once when the device is enumerated.
public struct DeviceInfo: Sendable {
    public var name: String
    public var vendor: String
    public var type: DeviceType
    /// The driver's own version string (changes when the compiler may produce other binaries).
    public var driverVersion: String
    /// "OpenCL <major>.<minor> <vendor-specific>".
    public var openCLVersion: String
    public var computeUnits: Int
    public var globalMemoryBytes: UInt64
    public var localMemoryBytes: UInt64
    public var maxAllocationBytes: UInt64
    public var maxWorkGroupSize: Int
    /// Alignment, in bytes, of a sub-buffer origin (CL_DEVICE_MEM_BASE_ADDR_ALIGN is in bits).
    public var baseAddressAlignmentBytes: Int
    public var preferredFloatVectorWidth: Int
    public var supportsFP16: Bool
    public var supportsFP64: Bool
    public var extensions: [String]
}

/// A device of a platform. Root devices are not reference counted in OpenCL 1.2.
public final class Device: @unchecked Sendable {
    public let id: cl_device_id
    public let platform: Platform
    public let info: DeviceInfo

    init(id: cl_device_id, platform: Platform) throws {
        self.id = id
        self.platform = platform
        let call = "clGetDeviceInfo"
        func get(_ param: Int32) -> InfoGetter {
            { clGetDeviceInfo(id, cl_device_info(param), $0, $1, $2) }
        }
        func string(_ param: Int32) throws -> String { try infoString(call, get(param)) }
        func uint(_ param: Int32) throws -> Int { Int(try infoValue(call, as: cl_uint.self, get(param))) }
        func ulong(_ param: Int32) throws -> UInt64 { try infoValue(call, as: cl_ulong.self, get(param)) }

        let extensions = try string(CL_DEVICE_EXTENSIONS).split(separator: " ").map(String.init)
        let doubleConfig = try infoValue(call, as: cl_device_fp_config.self, get(CL_DEVICE_DOUBLE_FP_CONFIG))
        info = DeviceInfo(
            name: try string(CL_DEVICE_NAME),
            vendor: try string(CL_DEVICE_VENDOR),
            type: DeviceType(rawValue: try infoValue(call, as: cl_device_type.self, get(CL_DEVICE_TYPE))),
            driverVersion: try string(CL_DRIVER_VERSION),
            openCLVersion: try string(CL_DEVICE_VERSION),
            computeUnits: try uint(CL_DEVICE_MAX_COMPUTE_UNITS),
            globalMemoryBytes: try ulong(CL_DEVICE_GLOBAL_MEM_SIZE),
            localMemoryBytes: try ulong(CL_DEVICE_LOCAL_MEM_SIZE),
            maxAllocationBytes: try ulong(CL_DEVICE_MAX_MEM_ALLOC_SIZE),
            maxWorkGroupSize: try infoValue(call, as: Int.self, get(CL_DEVICE_MAX_WORK_GROUP_SIZE)),
            baseAddressAlignmentBytes: try uint(CL_DEVICE_MEM_BASE_ADDR_ALIGN) / 8,
            preferredFloatVectorWidth: try uint(CL_DEVICE_PREFERRED_VECTOR_WIDTH_FLOAT),
            supportsFP16: extensions.contains("cl_khr_fp16"),
            supportsFP64: extensions.contains("cl_khr_fp64") || doubleConfig != 0,
            extensions: extensions
        )
    }

    public var name: String { info.name }
    public var type: DeviceType { info.type }
}
