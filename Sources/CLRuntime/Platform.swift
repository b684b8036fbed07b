import COpenCL

/// An OpenCL platform (one installed driver: PoCL, NVIDIA, ...). Platform ids are not
/// reference counted by OpenCL, so there is nothing to release.
public final class Platform: @unchecked Sendable {
    public let id: cl_platform_id
    public let name: String
    public let vendor: String
    public let version: String

    init(id: cl_platform_id) throws {
        self.id = id
        func string(_ param: Int32) throws -> String {
            try infoString("clGetPlatformInfo") { clGetPlatformInfo(id, cl_platform_info(param), $0, $1, $2) }
        }
        name = try string(CL_PLATFORM_NAME)
        vendor = try string(CL_PLATFORM_VENDOR)
        version = try string(CL_PLATFORM_VERSION)
    }

    /// Every platform the ICD loader knows, with its devices. Empty (not an error) when none
    /// is registered, which is what the loader reports when no vendor `.icd` file is installed.
    ///
    /// Discovered once per process: the ICD loader and PoCL initialise themselves on the first
    /// call and crash when several threads make it at once, and the set of devices cannot
    /// change while a process runs anyway.
    public static func all() throws -> [Platform] { try discovered.get() }

    private static let discovered = Result { try discover() }

    /// Every device of this platform, in the driver's order. Empty when it has none.
    public func devices() -> [Device] { deviceList }

    private var deviceList: [Device] = []

    private static func discover() throws -> [Platform] {
        var count: cl_uint = 0
        let status = clGetPlatformIDs(0, nil, &count)
        if status == CL_PLATFORM_NOT_FOUND_KHR || (status == CL_SUCCESS && count == 0) {
            return []
        }
        try check(status, "clGetPlatformIDs")
        var ids = [cl_platform_id?](repeating: nil, count: Int(count))
        try check(clGetPlatformIDs(count, &ids, nil), "clGetPlatformIDs")
        let platforms = try ids.compactMap { $0 }.map(Platform.init(id:))
        for platform in platforms {
            platform.deviceList = try platform.discoverDevices()
        }
        return platforms
    }

    private func discoverDevices() throws -> [Device] {
        var count: cl_uint = 0
        let all = cl_device_type(CL_DEVICE_TYPE_ALL)
        let status = clGetDeviceIDs(id, all, 0, nil, &count)
        if status == CL_DEVICE_NOT_FOUND || (status == CL_SUCCESS && count == 0) {
            return []
        }
        try check(status, "clGetDeviceIDs")
        var ids = [cl_device_id?](repeating: nil, count: Int(count))
        try check(clGetDeviceIDs(id, all, count, &ids, nil), "clGetDeviceIDs")
        return try ids.compactMap { $0 }.map { try Device(id: $0, platform: self) }
    }
}
