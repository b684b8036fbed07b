import ArgumentParser
import Foundation
import Tensors

struct KernelsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "kernels",
        abstract: "Compile every kernel program for the selected device and report whether each came from the disk cache.",
        discussion: "Run it once after installing or upgrading a driver to warm the cache."
    )

    @OptionGroup var deviceOption: DeviceOption

    func run() throws {
        let engine = try Engine(deviceSpec: deviceOption.device)
        print("Device: \(engine.device.name)")
        print("Cache: \(engine.kernels.diskCache?.directory.path ?? "off")")
        for name in KernelSources.embeddedNames {
            _ = try engine.kernels.program(name)
        }
        for record in engine.kernels.buildRecords {
            let outcome: String
            switch record.outcome {
            case .compiled: outcome = "compiled"
            case .diskCacheHit: outcome = "disk-cache hit"
            case .rebuiltInvalidCacheEntry(let reason): outcome = "rebuilt (invalid cache entry: \(reason))"
            }
            print(String(format: "  %@  %@  %.3f s", record.program, outcome, record.seconds))
        }
        for warning in engine.kernels.warnings {
            FileHandle.standardError.write(Data("warning: \(warning)\n".utf8))
        }
    }
}
