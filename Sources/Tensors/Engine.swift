import CLRuntime
import Foundation

/// Where an engine finds kernel sources and keeps compiled binaries.
public struct EngineConfiguration: Sendable {
    /// `<name>.cl` files here replace the embedded sources (kernel development).
    public var kernelOverrideDirectory: URL?
    /// Compiled-program cache; nil disables it.
    public var cacheDirectory: URL?

    public init(kernelOverrideDirectory: URL? = nil, cacheDirectory: URL? = EngineConfiguration.defaultCacheDirectory()) {
        self.kernelOverrideDirectory = kernelOverrideDirectory
        self.cacheDirectory = cacheDirectory
    }

    /// `SLORAGPU_KERNEL_DIR` sets the override directory; `SLORAGPU_CACHE_DIR` the cache
    /// directory (`off` disables the cache).
    public static func fromEnvironment(_ environment: [String: String] = ProcessInfo.processInfo.environment) -> EngineConfiguration {
        let overrideDirectory = environment["SLORAGPU_KERNEL_DIR"].flatMap { $0.isEmpty ? nil : URL(fileURLWithPath: $0) }
        return EngineConfiguration(kernelOverrideDirectory: overrideDirectory,
                                   cacheDirectory: defaultCacheDirectory(environment))
    }

    public static func defaultCacheDirectory(_ environment: [String: String] = ProcessInfo.processInfo.environment) -> URL? {
        if let explicit = environment["SLORAGPU_CACHE_DIR"], !explicit.isEmpty {
            return explicit == "off" ? nil : URL(fileURLWithPath: explicit)
        }
        if let xdg = environment["XDG_CACHE_HOME"], !xdg.isEmpty {
            return URL(fileURLWithPath: xdg).appendingPathComponent("sloragpu/kernels")
        }
        let home = environment["HOME"].map { URL(fileURLWithPath: $0) } ?? FileManager.default.homeDirectoryForCurrentUser
        return home.appendingPathComponent(".cache/sloragpu/kernels")
    }
}

/// One device, its context, one in-order command queue, the kernel library and the buffer
/// pool. Everything runs on that single queue, which is what makes pooled buffer reuse safe
/// without events: a recycled buffer's next use is enqueued after all of its earlier uses.
/// An Engine and its tensors are used from one thread at a time.
public final class Engine {
    public let device: Device
    public let context: Context
    public let queue: CommandQueue
    public let kernels: KernelLibrary
    public let pool: BufferPool
    /// GEMM tunables for this device class (`SLORAGPU_GEMM_PROFILE` overrides for tuning).
    public var gemmProfile: GemmProfile
    /// Attention work-item mapping for this device class.
    public var attentionPath: AttentionPath
    /// The tiled attention backward keeps dS [B, H, N, N] (padded) between its dkv and dq
    /// kernels when it takes at most this many bytes, and recomputes the scores for dq past it.
    public var attentionScoreBufferLimit = 64 << 20
    /// On the flash path, dK and dV from two kernels rather than one that spills its registers
    /// (Kernels/attention.cl). Off until a GPU has measured it (the device check times both);
    /// `SLORAGPU_FLASH_SPLIT=1` (or 0) overrides.
    public var flashSplitBackward = false
    /// What the GEMMs multiply (`setMatmulPrecision`, which checks the device can).
    public internal(set) var matmulPrecision: MatmulPrecision = .fp32
    /// bf16 products computed without AVX512_BF16 (`-DBF16_EMULATE`, the same sums in fp32):
    /// for tests of the bf16 layout and packing on CPUs that lack the instruction.
    var bf16Emulation = false
    /// Row-reduction (LayerNorm) work-item mapping for this device class.
    public var reductionPath: ReductionPath
    /// When set, every kernel launch is timed (see `KernelProfiler`).
    public var profiler: KernelProfiler?
    /// The label `withProfileScope` puts in front of kernel names.
    public internal(set) var profileScope: String?

    /// `SLORAGPU_FLASH_SPLIT` (0 or 1), nil when unset.
    static func flashSplit(environment: [String: String]) throws -> Bool? {
        guard let split = environment["SLORAGPU_FLASH_SPLIT"], !split.isEmpty else { return nil }
        guard split == "0" || split == "1" else { throw KernelProfileError.invalidVariable("SLORAGPU_FLASH_SPLIT", split, reason: "expected 0 or 1") }
        return split == "1"
    }

    public init(device: Device, configuration: EngineConfiguration = .fromEnvironment()) throws {
        self.device = device
        context = try Context(device: device)
        queue = try CommandQueue(context: context, profiling: true)
        kernels = KernelLibrary(context: context,
                                sources: KernelSources(overrideDirectory: configuration.kernelOverrideDirectory),
                                diskCache: configuration.cacheDirectory.map(ProgramDiskCache.init(directory:)))
        pool = BufferPool(context: context)
        gemmProfile = try GemmProfile.forDevice(device)
        attentionPath = try AttentionPath.forDevice(device)
        reductionPath = ReductionPath.forDevice(device)
        if let split = try Self.flashSplit(environment: ProcessInfo.processInfo.environment) { flashSplitBackward = split }
        tuningCache = configuration.cacheDirectory.map(TuningCache.init(kernelCache:))
        // Explicit tunables win over a tuning entry.
        if ProcessInfo.processInfo.environment["SLORAGPU_GEMM_PROFILE"] == nil { applyCachedTuning(cache: tuningCache) }
    }

    /// Where GEMM tuning entries live (beside the compiled-kernel cache); nil with the cache off.
    public let tuningCache: TuningCache?

    /// Selects a device by the policy in `DeviceSelection` (`deviceSpec`, then
    /// `SLORAGPU_DEVICE`, then the first GPU, then PoCL's CPU device).
    /// `localRank`: this process among the data-parallel ranks on its machine (see
    /// `DeviceSelection.choose`).
    public convenience init(deviceSpec: String? = nil, localRank: Int = 0, configuration: EngineConfiguration = .fromEnvironment()) throws {
        try self.init(device: try DeviceSelection.select(flag: deviceSpec, localRank: localRank), configuration: configuration)
    }

    /// Waits until every enqueued command has finished.
    public func synchronize() throws { try queue.finish() }
}
