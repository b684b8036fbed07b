import ArgumentParser
#if canImport(CMalloc)
import CMalloc
#endif
import Tensors

@main
struct SloraGPUCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "sloragpu",
        abstract: "Parameter-efficient fine-tuning of Vision Transformers on any OpenCL device.",
        discussion: """
            The device is chosen by --device or SLORAGPU_DEVICE (PLATFORM:DEVICE, gpu, cpu, or part \
            of a device name); without either, the first GPU on any platform, else PoCL's CPU device.
            Compiled kernels are cached in SLORAGPU_CACHE_DIR (default ~/.cache/sloragpu/kernels; \
            'off' disables); SLORAGPU_KERNEL_DIR overrides the embedded kernel sources.
            """,
        version: SloraGPU.version,
        subcommands: [TrainCommand.self, SweepCommand.self, EvalCommand.self, PredictCommand.self, MergeCommand.self, ExportCommand.self, DevicesCommand.self, KernelsCommand.self, TuneCommand.self, SelftestCommand.self, BenchCommand.self]
    )

    static func main() {
        #if canImport(CMalloc)
        // Large host allocations (a checkpoint's fp32 tensors while they are converted and
        // uploaded, PoCL's device buffers) get pages of their own, returned when freed: with
        // glibc's default, whose threshold rises to 32 MB after the first large free, they
        // share the heap and the holes the loading leaves stay resident (14-16 MB of the
        // training peak, docs/BENCHMARKS.md).
        _ = mallopt(M_MMAP_THRESHOLD, 64 * 1024)
        #endif
        main(nil)
    }
}

/// The `--device` option every device-using command shares.
struct DeviceOption: ParsableArguments {
    @Option(name: .long, help: ArgumentHelp("Device: PLATFORM:DEVICE, gpu, cpu, accelerator, or part of a device name.", valueName: "spec"))
    var device: String?
}
