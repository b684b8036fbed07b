import CLRuntime
import Testing
@testable import Tensors

@Suite("Device selection")
struct DeviceSelectionTests {
    @Test func parsesEveryValidForm() throws {
        #expect(try DeviceSpec(parsing: "0:0") == .index(platform: 0, device: 0))
        #expect(try DeviceSpec(parsing: " 2:13 ") == .index(platform: 2, device: 13))
        #expect(try DeviceSpec(parsing: "gpu") == .type(.gpu))
        #expect(try DeviceSpec(parsing: "CPU") == .type(.cpu))
        #expect(try DeviceSpec(parsing: "accelerator") == .type(.accelerator))
        #expect(try DeviceSpec(parsing: "H200") == .name("H200"))
        #expect(try DeviceSpec(parsing: "pthread") == .name("pthread"))
    }

    @Test(arguments: ["", "   ", "0:", ":0", "1:2:3", "-1:0", "0:-2", "+1:0", "3"])
    func rejectsMalformedSpecs(spec: String) {
        let error = #expect(throws: DeviceSelectionError.self) { try DeviceSpec(parsing: spec) }
        #expect(error?.description.contains("invalid device spec") == true)
    }

    static let machine = [
        DeviceListing(platformIndex: 0, deviceIndex: 0, platformName: "Portable Computing Language", deviceName: "pthread-skylake", type: .cpu),
        DeviceListing(platformIndex: 1, deviceIndex: 0, platformName: "Intel(R) OpenCL", deviceName: "Intel Xeon", type: .cpu),
        DeviceListing(platformIndex: 2, deviceIndex: 0, platformName: "NVIDIA CUDA", deviceName: "NVIDIA H200", type: .gpu),
        DeviceListing(platformIndex: 2, deviceIndex: 1, platformName: "NVIDIA CUDA", deviceName: "NVIDIA A100", type: .gpu),
    ]

    @Test func defaultPolicyPrefersTheFirstGPU() throws {
        #expect(try DeviceSelection.choose(nil, from: Self.machine) == Self.machine[2])
    }

    @Test func localRanksTakeTheDevicesOfTheirClassInTurn() throws {
        let gpus = [Self.machine[2], Self.machine[3]]
        #expect(try (0..<4).map { try DeviceSelection.choose(nil, from: Self.machine, localRank: $0) } == gpus + gpus)
        let twoPoCL = [Self.machine[0], Self.machine[1], DeviceListing(platformIndex: 0, deviceIndex: 1, platformName: "Portable Computing Language",
                                                                        deviceName: "pthread-second", type: .cpu)]
        #expect(try DeviceSelection.choose(nil, from: twoPoCL, localRank: 1) == twoPoCL[2])
        #expect(try DeviceSelection.choose(nil, from: [Self.machine[1]], localRank: 3) == Self.machine[1])
        // An explicit spec wins over the local rank.
        #expect(try DeviceSelection.choose(.name("h200"), from: Self.machine, localRank: 1) == Self.machine[2])
    }

    @Test func withoutAGPUThePolicyPicksPoCLOverOtherCPUs() throws {
        let cpus = [Self.machine[1], Self.machine[0]]
        #expect(try DeviceSelection.choose(nil, from: cpus) == Self.machine[0])
        #expect(try DeviceSelection.choose(nil, from: [Self.machine[1]]) == Self.machine[1])
    }

    @Test func explicitSpecsSelectByIndexTypeAndName() throws {
        #expect(try DeviceSelection.choose(.index(platform: 2, device: 1), from: Self.machine).deviceName == "NVIDIA A100")
        #expect(try DeviceSelection.choose(.type(.cpu), from: Self.machine) == Self.machine[0])
        #expect(try DeviceSelection.choose(.name("a100"), from: Self.machine).deviceName == "NVIDIA A100")
        #expect(try DeviceSelection.choose(.name("intel"), from: Self.machine).deviceName == "Intel Xeon")
    }

    @Test func anUnmatchedSpecListsWhatExists() {
        let error = #expect(throws: DeviceSelectionError.self) {
            try DeviceSelection.choose(.index(platform: 5, device: 0), from: Self.machine)
        }
        let text = error?.description ?? ""
        #expect(text.contains("no OpenCL device matches '5:0'"))
        for listing in Self.machine { #expect(text.contains(listing.deviceName)) }
        #expect(throws: DeviceSelectionError.self) { try DeviceSelection.choose(.type(.accelerator), from: Self.machine) }
    }

    @Test func noPlatformNamesThePackagesToInstall() {
        #expect(throws: DeviceSelectionError.noPlatform) { try DeviceSelection.choose(nil, from: []) }
        #expect(DeviceSelectionError.noPlatform.description.contains("pocl-opencl-icd"))
    }

    @Test func theFlagWinsOverTheEnvironment() throws {
        let environment = [DeviceSelection.environmentVariable: "gpu"]
        #expect(try DeviceSelection.explicitSpec(flag: "0:0", environment: environment) == .index(platform: 0, device: 0))
        #expect(try DeviceSelection.explicitSpec(flag: nil, environment: environment) == .type(.gpu))
        #expect(try DeviceSelection.explicitSpec(flag: nil, environment: [:]) == nil)
        #expect(throws: DeviceSelectionError.self) { try DeviceSelection.explicitSpec(flag: nil, environment: [DeviceSelection.environmentVariable: "0:"]) }
    }

    @Test func selectsTheRealPoCLDeviceHere() throws {
        let device = try DeviceSelection.select(flag: "cpu", environment: [:])
        #expect(device.type.contains(.cpu))
    }
}
