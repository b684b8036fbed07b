// swift-tools-version:6.1
import PackageDescription

// Layers (arrows: depends on): COpenCL -> CLRuntime -> Tensors -> ViT -> Optimizers -> Training -> sloragpu (CLI);
// Formats (the model description and every file format; no device code) -> ViT;
// Datasets (no device code) -> Training; Cluster (the ranks: one process, or MPI) -> Training.
// The trait MPI (on by default) links Open MPI into Cluster; `swift build --disable-default-traits`
// builds without it, and then the binary is exactly the single-process engine.
// Kernels/*.cl are embedded into Tensors at build time by EmbedKernelsPlugin, so the
// built binary never reads the source tree.
let package = Package(
    name: "sloragpu",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "SloraGPU", targets: ["CLRuntime", "Tensors", "Formats", "ViT", "Optimizers", "Datasets", "Cluster", "Training"]),
        .executable(name: "sloragpu", targets: ["sloragpu"]),
    ],
    traits: [
        .trait(name: "MPI", description: "Data-parallel training over Open MPI (libopenmpi-dev, pkg-config ompi-c)."),
        .default(enabledTraits: ["MPI"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        .systemLibrary(
            name: "COpenCL",
            pkgConfig: "OpenCL",
            providers: [.apt(["ocl-icd-opencl-dev", "opencl-headers", "pocl-opencl-icd"])]
        ),
        .target(name: "CLRuntime", dependencies: ["COpenCL"]),
        .executableTarget(name: "EmbedKernels", path: "Sources/EmbedKernels"),
        .plugin(
            name: "EmbedKernelsPlugin",
            capability: .buildTool(),
            dependencies: ["EmbedKernels"]
        ),
        .target(
            name: "Tensors",
            dependencies: ["CLRuntime"],
            plugins: ["EmbedKernelsPlugin"]
        ),
        .target(name: "Formats"),
        .target(name: "ViT", dependencies: ["Tensors", "Formats"]),
        .target(name: "Optimizers", dependencies: ["ViT"]),
        .systemLibrary(
            name: "CImageCodecs",
            providers: [.apt(["zlib1g-dev", "libpng-dev", "libturbojpeg0-dev"])]
        ),
        .target(name: "Datasets", dependencies: ["CImageCodecs"]),
        // pkg-config ompi-c, not mpi-c: that follows Debian's alternatives and may name another
        // MPI than /usr/bin/mpirun. Nothing compiles or links it unless the trait is on.
        .systemLibrary(
            name: "CMPI",
            pkgConfig: "ompi-c",
            providers: [.apt(["libopenmpi-dev", "openmpi-bin"])]
        ),
        .target(name: "Cluster", dependencies: [.target(name: "CMPI", condition: .when(traits: ["MPI"]))]),
        .target(name: "Training", dependencies: ["Formats", "ViT", "Optimizers", "Datasets", "Cluster"]),
        .executableTarget(
            name: "sloragpu",
            dependencies: [
                "Tensors",
                "Formats",
                "ViT",
                "Optimizers",
                "Datasets",
                "Training",
                "Cluster",
                // `sloragpu selftest` checks a device against it where no test toolchain exists.
                "Reference",
                .target(name: "CMalloc", condition: .when(platforms: [.linux])),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // glibc's mallopt, for the CLI's allocator setting (Linux only).
        .systemLibrary(name: "CMalloc"),
        // Slow, obviously correct CPU versions of every kernel (double accumulation), for tests and selftest.
        .target(name: "Reference"),
        .testTarget(
            name: "SloraGPUTests",
            // Depending on the executable makes `swift test` build it: the CLI tests run it
            // as a fresh process (disk-cache hits, exit codes, messages).
            dependencies: ["CLRuntime", "Tensors", "Formats", "ViT", "Optimizers", "Datasets", "Training", "Cluster", "CImageCodecs", "Reference", "sloragpu"]
        ),
    ]
)
