import CLRuntime
import Foundation

/// How a user names a device: `--device` on the CLI or `SLORAGPU_DEVICE`.
///   `P:D`                  platform P, device D (0-based, as `sloragpu devices` lists them)
///   `gpu`, `cpu`, `accelerator`   the first device of that type
///   anything else          a case-insensitive substring of the device or platform name
public enum DeviceSpec: Equatable, Sendable, CustomStringConvertible {
    case index(platform: Int, device: Int)
    case type(DeviceType)
    case name(String)

    public init(parsing text: String) throws {
        let spec = text.trimmingCharacters(in: .whitespaces)
        guard !spec.isEmpty else {
            throw DeviceSelectionError.invalidSpec(text, reason: "it is empty")
        }
        switch spec.lowercased() {
        case "gpu": self = .type(.gpu); return
        case "cpu": self = .type(.cpu); return
        case "accelerator": self = .type(.accelerator); return
        default: break
        }
        // Anything shaped like an index (digits, a colon, signs) must be a valid index, so a
        // typo such as "0:" or "1:-1" is reported instead of silently matching by name.
        if spec.contains(":"), spec.allSatisfy({ $0.isNumber || $0 == ":" || $0 == "-" || $0 == "+" }) {
            let parts = spec.split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count == 2, let platform = Int(parts[0]), let device = Int(parts[1]),
                  platform >= 0, device >= 0, !parts[0].hasPrefix("+"), !parts[1].hasPrefix("+")
            else {
                throw DeviceSelectionError.invalidSpec(text, reason: "an index must be PLATFORM:DEVICE with two non-negative integers, e.g. 0:0")
            }
            self = .index(platform: platform, device: device)
            return
        }
        if spec.allSatisfy(\.isNumber) {
            throw DeviceSelectionError.invalidSpec(text, reason: "a bare number is ambiguous; write PLATFORM:DEVICE, e.g. 0:\(spec)")
        }
        self = .name(spec)
    }

    public var description: String {
        switch self {
        case .index(let platform, let device): "\(platform):\(device)"
        case .type(let type): type.description
        case .name(let name): "name containing '\(name)'"
        }
    }
}

/// A device as the selection policy sees it: plain values, so the policy is testable with
/// lists that include GPUs this machine does not have.
public struct DeviceListing: Sendable, Equatable {
    public var platformIndex: Int
    public var deviceIndex: Int
    public var platformName: String
    public var deviceName: String
    public var type: DeviceType

    public init(platformIndex: Int, deviceIndex: Int, platformName: String, deviceName: String, type: DeviceType) {
        self.platformIndex = platformIndex
        self.deviceIndex = deviceIndex
        self.platformName = platformName
        self.deviceName = deviceName
        self.type = type
    }

    public var isPoCL: Bool { platformName.localizedCaseInsensitiveContains("Portable Computing Language") || platformName.lowercased().hasPrefix("pocl") }

    public var summary: String { "\(platformIndex):\(deviceIndex) \(deviceName) [\(type)] on \(platformName)" }
}

public enum DeviceSelectionError: Error, CustomStringConvertible, Equatable {
    case noPlatform
    case noDevice(platforms: [String])
    case invalidSpec(String, reason: String)
    case noMatch(spec: String, available: [String])

    public var description: String {
        switch self {
        case .noPlatform:
            """
            no OpenCL platform is registered on this machine (the ICD loader found no driver in \
            /etc/OpenCL/vendors). Install one: on Debian or Ubuntu, \
            `apt-get install pocl-opencl-icd ocl-icd-opencl-dev opencl-headers` for the CPU (PoCL), \
            or your GPU vendor's OpenCL driver (NVIDIA: the libnvidia-opencl package of your driver).
            """
        case .noDevice(let platforms):
            "OpenCL platforms exist (\(platforms.joined(separator: ", "))) but none has a device"
        case .invalidSpec(let spec, let reason):
            "invalid device spec '\(spec)': \(reason). Use PLATFORM:DEVICE (e.g. 0:0), gpu, cpu, accelerator, or part of a device name."
        case .noMatch(let spec, let available):
            "no OpenCL device matches '\(spec)'. Available devices:\n" + available.map { "  " + $0 }.joined(separator: "\n")
        }
    }
}

public enum DeviceSelection {
    public static let environmentVariable = "SLORAGPU_DEVICE"

    /// The explicit choice, if any: the CLI flag wins over the environment variable.
    public static func explicitSpec(flag: String?, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> DeviceSpec? {
        if let flag { return try DeviceSpec(parsing: flag) }
        if let value = environment[environmentVariable] { return try DeviceSpec(parsing: value) }
        return nil
    }

    /// The policy: an explicit spec if given; otherwise the GPUs of every platform, else the
    /// PoCL CPU devices, else every device, and of those the `localRank`-th (modulo their
    /// number): one process per device when several ranks share a machine, the first one
    /// otherwise.
    public static func choose(_ spec: DeviceSpec?, from listings: [DeviceListing], localRank: Int = 0) throws -> DeviceListing {
        guard !listings.isEmpty else { throw DeviceSelectionError.noPlatform }
        guard let spec else {
            let gpus = listings.filter { $0.type.contains(.gpu) }, pocl = listings.filter { $0.isPoCL && $0.type.contains(.cpu) }
            let candidates = !gpus.isEmpty ? gpus : !pocl.isEmpty ? pocl : listings
            return candidates[max(0, localRank) % candidates.count]
        }
        let match: DeviceListing?
        switch spec {
        case .index(let platform, let device):
            match = listings.first { $0.platformIndex == platform && $0.deviceIndex == device }
        case .type(let type):
            match = listings.first { $0.type.contains(type) }
        case .name(let name):
            match = listings.first { $0.deviceName.localizedCaseInsensitiveContains(name) }
                ?? listings.first { $0.platformName.localizedCaseInsensitiveContains(name) }
        }
        guard let match else {
            throw DeviceSelectionError.noMatch(spec: spec.description, available: listings.map(\.summary))
        }
        return match
    }

    /// Every device on every platform, with the listing the policy works on.
    public static func enumerate() throws -> [(listing: DeviceListing, device: Device)] {
        let platforms = try Platform.all()
        guard !platforms.isEmpty else { throw DeviceSelectionError.noPlatform }
        var result: [(DeviceListing, Device)] = []
        for (platformIndex, platform) in platforms.enumerated() {
            for (deviceIndex, device) in platform.devices().enumerated() {
                let listing = DeviceListing(platformIndex: platformIndex, deviceIndex: deviceIndex,
                                            platformName: platform.name, deviceName: device.name, type: device.type)
                result.append((listing, device))
            }
        }
        guard !result.isEmpty else { throw DeviceSelectionError.noDevice(platforms: platforms.map(\.name)) }
        return result
    }

    /// Enumerates and applies the policy to the explicit spec (flag, then environment).
    public static func select(flag: String? = nil, localRank: Int = 0,
                              environment: [String: String] = ProcessInfo.processInfo.environment) throws -> Device {
        let spec = try explicitSpec(flag: flag, environment: environment)
        let all = try enumerate()
        let chosen = try choose(spec, from: all.map(\.listing), localRank: localRank)
        return all.first { $0.listing == chosen }!.device
    }
}
