import ArgumentParser
import CLRuntime
import Foundation
import Tensors

struct DevicesCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "devices",
        abstract: "List every OpenCL platform and device and mark the one sloragpu would use."
    )

    @OptionGroup var deviceOption: DeviceOption

    @Flag(help: "Print one JSON object per device instead of the table.")
    var json = false

    func run() throws {
        let devices = try DeviceSelection.enumerate()
        let spec = try DeviceSelection.explicitSpec(flag: deviceOption.device)
        let chosen = try DeviceSelection.choose(spec, from: devices.map(\.listing))

        if json {
            for (listing, device) in devices {
                print(try jsonLine(listing, device, selected: listing == chosen))
            }
            return
        }

        var lastPlatform = -1
        for (listing, device) in devices {
            if listing.platformIndex != lastPlatform {
                lastPlatform = listing.platformIndex
                let platform = device.platform
                print("Platform \(listing.platformIndex): \(platform.name) (\(platform.vendor)), \(platform.version)")
            }
            let info = device.info
            let mark = listing == chosen ? "*" : " "
            print("  \(mark) \(listing.platformIndex):\(listing.deviceIndex)  \(info.name)  [\(info.type)]\(listing == chosen ? "  <- selected" : "")")
            print("        vendor: \(info.vendor)   driver: \(info.driverVersion)   \(info.openCLVersion)")
            print("        compute units: \(info.computeUnits)   global memory: \(bytes(info.globalMemoryBytes))   local memory: \(bytes(info.localMemoryBytes))   max allocation: \(bytes(info.maxAllocationBytes))")
            print("        max work-group size: \(info.maxWorkGroupSize)   preferred float vector width: \(info.preferredFloatVectorWidth)   fp16: \(info.supportsFP16 ? "yes" : "no")   fp64: \(info.supportsFP64 ? "yes" : "no")")
        }
        let reason: String
        if let flag = deviceOption.device {
            reason = "--device \(flag)"
        } else if let environment = ProcessInfo.processInfo.environment[DeviceSelection.environmentVariable] {
            reason = "\(DeviceSelection.environmentVariable)=\(environment)"
        } else if chosen.type.contains(.gpu) {
            reason = "default policy: first GPU"
        } else if chosen.isPoCL {
            reason = "default policy: no GPU, PoCL CPU device"
        } else {
            reason = "default policy: no GPU and no PoCL, first device"
        }
        print("Selected: \(chosen.summary) (\(reason))")
    }

    private func bytes(_ count: UInt64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var value = Double(count)
        var unit = 0
        while value >= 1024, unit < units.count - 1 {
            value /= 1024
            unit += 1
        }
        return unit == 0 ? "\(count) B" : String(format: "%.1f %@", value, units[unit])
    }

    private func jsonLine(_ listing: DeviceListing, _ device: Device, selected: Bool) throws -> String {
        let info = device.info
        let object: [String: Any] = [
            "platform_index": listing.platformIndex, "device_index": listing.deviceIndex,
            "platform": device.platform.name, "name": info.name, "vendor": info.vendor,
            "type": info.type.description, "driver_version": info.driverVersion,
            "opencl_version": info.openCLVersion, "compute_units": info.computeUnits,
            "global_memory_bytes": info.globalMemoryBytes, "local_memory_bytes": info.localMemoryBytes,
            "max_allocation_bytes": info.maxAllocationBytes, "max_work_group_size": info.maxWorkGroupSize,
            "preferred_float_vector_width": info.preferredFloatVectorWidth,
            "fp16": info.supportsFP16, "fp64": info.supportsFP64, "selected": selected,
        ]
        let data = try JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])
        return String(decoding: data, as: UTF8.self)
    }
}
