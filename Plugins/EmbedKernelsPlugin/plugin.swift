import Foundation
import PackagePlugin

/// Turns every `Kernels/*.cl` file of the package into a Swift string constant, so that the
/// built binary carries its kernel sources and never needs the source tree at run time.
@main
struct EmbedKernelsPlugin: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: Target) throws -> [Command] {
        let kernelsDirectory = context.package.directoryURL.appending(path: "Kernels")
        let sources = try FileManager.default
            .contentsOfDirectory(at: kernelsDirectory, includingPropertiesForKeys: nil)
            .filter { $0.pathExtension == "cl" }
            .sorted { $0.lastPathComponent < $1.lastPathComponent }
        // Committed GEMM tuning entries (Kernels/tuning/*.json), so a known machine starts tuned.
        let tuningDirectory = kernelsDirectory.appending(path: "tuning")
        let tuning = ((try? FileManager.default.contentsOfDirectory(at: tuningDirectory, includingPropertiesForKeys: nil)) ?? [])
            .filter { $0.pathExtension == "json" }
            .sorted { $0.lastPathComponent < $1.lastPathComponent }
        let output = context.pluginWorkDirectoryURL.appending(path: "EmbeddedKernelSources.swift")
        return [
            .buildCommand(
                displayName: "Embedding \(sources.count) OpenCL kernel sources and \(tuning.count) tuning entries",
                executable: try context.tool(named: "EmbedKernels").url,
                arguments: [output.path] + sources.map(\.path) + ["--tuning"] + tuning.map(\.path),
                inputFiles: sources + tuning,
                outputFiles: [output]
            )
        ]
    }
}
