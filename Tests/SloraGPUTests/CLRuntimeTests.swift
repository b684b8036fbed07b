import COpenCL
import CLRuntime
import Foundation
import Testing

@Suite("CLRuntime")
struct CLRuntimeTests {
    @Test func enumeratesPlatformsAndDevicesWithTypedInfo() throws {
        let platforms = try Platform.all()
        #expect(!platforms.isEmpty, "CI installs PoCL, so at least one platform must exist")
        let devices = platforms.flatMap { $0.devices() }
        #expect(!devices.isEmpty)
        for device in devices {
            let info = device.info
            #expect(!info.name.isEmpty)
            #expect(!info.vendor.isEmpty)
            #expect(!info.driverVersion.isEmpty)
            #expect(info.openCLVersion.hasPrefix("OpenCL "))
            #expect(info.computeUnits >= 1)
            #expect(info.globalMemoryBytes > 0)
            #expect(info.localMemoryBytes > 0)
            #expect(info.maxWorkGroupSize >= 1)
            #expect(info.maxAllocationBytes > 0 && info.maxAllocationBytes <= info.globalMemoryBytes)
            #expect(!info.type.isEmpty)
            #expect(info.supportsFP16 == info.extensions.contains("cl_khr_fp16"))
        }
    }

    @Test func pocLExposesItsCPUDevice() throws {
        let pocl = try Platform.all().first { $0.name.contains("Portable Computing Language") }
        try #require(pocl != nil, "pocl-opencl-icd must be installed for the tests")
        let cpu = pocl!.devices().first { $0.type.contains(.cpu) }
        #expect(cpu != nil)
        #expect(cpu?.info.supportsFP64 == true)
    }

    @Test(arguments: [
        (CL_SUCCESS, "CL_SUCCESS"),
        (CL_DEVICE_NOT_FOUND, "CL_DEVICE_NOT_FOUND"),
        (CL_OUT_OF_RESOURCES, "CL_OUT_OF_RESOURCES"),
        (CL_OUT_OF_HOST_MEMORY, "CL_OUT_OF_HOST_MEMORY"),
        (CL_BUILD_PROGRAM_FAILURE, "CL_BUILD_PROGRAM_FAILURE"),
        (CL_INVALID_VALUE, "CL_INVALID_VALUE"),
        (CL_INVALID_KERNEL_NAME, "CL_INVALID_KERNEL_NAME"),
        (CL_INVALID_WORK_GROUP_SIZE, "CL_INVALID_WORK_GROUP_SIZE"),
        (CL_INVALID_DEVICE_PARTITION_COUNT, "CL_INVALID_DEVICE_PARTITION_COUNT"),
        (CL_PLATFORM_NOT_FOUND_KHR, "CL_PLATFORM_NOT_FOUND_KHR"),
    ])
    func statusCodesMapToTheirHeaderNames(code: Int32, name: String) {
        #expect(CLStatus.name(of: code) == name)
    }

    @Test func everyStatusCodeFromMinus1ToMinus68HasADistinctName() {
        let codes = Array(-19...0) + Array(-68 ... -30)
        let names = codes.map { CLStatus.name(of: Int32($0)) }
        #expect(names.allSatisfy { $0.hasPrefix("CL_") })
        #expect(Set(names).count == codes.count)
        #expect(CLStatus.name(of: -20) == "unknown OpenCL status -20")
    }

    @Test func errorDescriptionNamesCallAndStatus() {
        let error = CLError(call: "clEnqueueNDRangeKernel(add_f32)", status: CL_OUT_OF_RESOURCES)
        #expect(error.description == "clEnqueueNDRangeKernel(add_f32) failed: CL_OUT_OF_RESOURCES (-5)")
    }

    @Test func failedBuildCarriesTheBuildLog() throws {
        let device = try #require(try Platform.all().flatMap { $0.devices() }.first)
        let context = try Context(device: device)
        let program = try Program(context: context, source: "__kernel void broken(__global float *x) { x[0] = undefined_name; }")
        let error = try #require(throws: CLError.self) { try program.build(options: "-cl-std=CL1.2") }
        #expect(error.status == CL_BUILD_PROGRAM_FAILURE)
        #expect(error.call == "clBuildProgram")
        #expect(error.buildLog?.contains("undefined_name") == true)
        #expect(error.description.contains("CL_BUILD_PROGRAM_FAILURE"))
        #expect(error.description.contains("undefined_name"))
    }

    @Test func unknownKernelNameIsAnError() throws {
        let device = try #require(try Platform.all().flatMap { $0.devices() }.first)
        let context = try Context(device: device)
        let program = try Program(context: context, source: "__kernel void present(__global float *x) { x[0] = 1.0f; }")
        try program.build(options: "")
        let error = try #require(throws: CLError.self) { try Kernel(program: program, name: "absent") }
        #expect(error.statusName == "CL_INVALID_KERNEL_NAME")
        #expect(error.call.contains("absent"))
    }

    @Test func kernelRunsAndReportsProfilingTimes() throws {
        let device = try #require(try Platform.all().flatMap { $0.devices() }.first)
        let context = try Context(device: device)
        let queue = try CommandQueue(context: context, profiling: true)
        let program = try Program(context: context, source: "__kernel void iota(__global int *x) { x[get_global_id(0)] = (int)get_global_id(0) * 3; }")
        try program.build(options: "")
        let kernel = try Kernel(program: program, name: "iota")
        let buffer = try Buffer(context: context, byteCount: 37 * 4)
        try kernel.setArguments([.buffer(buffer)])
        let event = try queue.enqueue(kernel, global: [37])
        var result = [Int32](repeating: -1, count: 37)
        try result.withUnsafeMutableBytes { try queue.read(buffer, offsetBytes: 0, into: $0) }
        #expect(result == (0..<37).map { Int32($0 * 3) })
        #expect(try event.isComplete)
        let times = try event.profilingTimes()
        #expect(times.queued <= times.submitted && times.submitted <= times.started && times.started <= times.ended)
    }

    @Test func programBinaryRoundTrips() throws {
        let device = try #require(try Platform.all().flatMap { $0.devices() }.first)
        let context = try Context(device: device)
        let source = try Program(context: context, source: "__kernel void one(__global float *x) { x[0] = 1.0f; }")
        try source.build(options: "")
        let binary = try source.binary()
        #expect(!binary.isEmpty)
        let loaded = try Program(context: context, binary: binary)
        try loaded.build(options: "")
        _ = try Kernel(program: loaded, name: "one")
    }
}
