import CLRuntime
import Foundation

/// Tunables for one device class, passed to kernels as `-D` defines. The CPU profile gives one
/// work-item a register tile of the device's native vectors (16 floats: AVX-512's zmm; 8: AVX2's
/// ymm), so LLVM keeps it in registers; the GPU profile keeps tiles small so there are many
/// work-items.
public struct GemmProfile: Sendable, Equatable, CustomStringConvertible {
    /// Rows of C per work-item.
    public var rowsPerItem: Int
    /// Floats per vector.
    public var vectorWidth: Int
    /// Vectors per row of the tile (columns per item = vectorWidth * vectorsPerRow).
    public var vectorsPerRow: Int
    /// k-loop unroll.
    public var kUnroll: Int
    /// Reduction block length per launch (0: the whole reduction in one launch).
    public var kBlock: Int
    /// Work-group shape over (column panels, row panels); nil lets the driver choose.
    public var localSize: (Int, Int)?
    /// Read a plain A in place instead of packing it (single products only).
    public var directA = true
    /// Route single products with at most 16 columns (or rows, computing C^T) to the skinny
    /// kernels, which read both operands in place.
    public var skinny = true
    /// The work-group tiled kernel (`__local` staging, GPUs) instead of the register-tiled
    /// one, with a tile per shape class; nil on CPU devices.
    public var tiles: GemmTiles?
    /// With tiles: pack the operands through `__local` blocks, coalesced on both sides
    /// (pack_panels_a/b) rather than a panel row per work-item (pack_a/b, the CPU's kernels).
    public var localPacking = true
    /// With tiles and `localPacking`: single products whose grid leaves compute units idle
    /// reduce in chunks (split-k, `launchSplit`). Off until a GPU has timed it.
    public var splitK = false

    public static func == (a: GemmProfile, b: GemmProfile) -> Bool {
        a.rowsPerItem == b.rowsPerItem && a.vectorWidth == b.vectorWidth && a.vectorsPerRow == b.vectorsPerRow
            && a.kUnroll == b.kUnroll && a.kBlock == b.kBlock && a.directA == b.directA && a.skinny == b.skinny
            && a.localSize?.0 == b.localSize?.0 && a.localSize?.1 == b.localSize?.1 && a.tiles == b.tiles && a.localPacking == b.localPacking && a.splitK == b.splitK
    }

    public var columnsPerItem: Int { vectorWidth * vectorsPerRow }

    public var buildOptions: String { "-DMR=\(rowsPerItem) -DVW=\(vectorWidth) -DNV=\(vectorsPerRow) -DUK=\(kUnroll)" }

    public var description: String {
        if let tiles { return "tiled: \(tiles)" + (localPacking ? "" : ",LP=0") + (splitK ? ",SPLITK=1" : "") }
        return "MR=\(rowsPerItem),VW=\(vectorWidth),NV=\(vectorsPerRow),UK=\(kUnroll),KC=\(kBlock)" + (localSize.map { ",LX=\($0.0),LY=\($0.1)" } ?? "") + (directA ? "" : ",DA=0") + (skinny ? "" : ",SK=0")
    }

    /// The kernels' vector width (16, 8 or 4 floats) for a CPU device's preferred float width,
    /// shared by the GEMM tile and the attention tiles.
    static func cpuVectorWidth(preferred: Int) -> Int { preferred >= 16 ? 16 : preferred >= 8 ? 8 : 4 }

    /// AVX-512's tile: 6 x 2 vectors of 16 floats, 12 of the 32 zmm registers.
    public static let cpu = GemmProfile(rowsPerItem: 6, vectorWidth: 16, vectorsPerRow: 2, kUnroll: 4, kBlock: 0, localSize: nil)

    /// The CPU tile for a device's preferred float vector width (PoCL reports 16 where it
    /// compiles for AVX-512, 8 for AVX2, 4 for SSE or NEON): 6 x 2 vectors of that width, 12
    /// accumulators, as in the BLAS micro-kernels for those ISAs. AVX-512's 16-float tile on an
    /// AVX2 device needs 24 of its 16 ymm registers and spills on every FMA.
    public static func cpu(preferredVectorWidth: Int) -> GemmProfile {
        var profile = cpu
        profile.vectorWidth = cpuVectorWidth(preferred: preferredVectorWidth)
        return profile
    }

    /// The skinny kernels give a GPU too few work-items (one per 16 rows): tiles there, with
    /// narrow tiles for the low-rank products.
    public static let gpu = {
        var profile = GemmProfile(rowsPerItem: 4, vectorWidth: 4, vectorsPerRow: 1, kUnroll: 4, kBlock: 0, localSize: (16, 8))
        profile.skinny = false
        profile.tiles = .seed
        return profile
    }()

    public static func forDevice(_ device: Device, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> GemmProfile {
        let base = device.type.contains(.gpu) ? gpu : cpu(preferredVectorWidth: device.info.preferredFloatVectorWidth)
        guard let override = environment["SLORAGPU_GEMM_PROFILE"], !override.isEmpty else { return base }
        return try base.overridden(by: override)
    }

    /// Applies `KEY=VALUE,...` (keys MR, VW, NV, UK, KC, LX, LY, DA and SK = 0 or 1) on top of this profile, for tuning.
    public func overridden(by text: String) throws -> GemmProfile {
        var profile = self
        var local = localSize ?? (0, 0)
        for item in text.split(separator: ",") {
            let parts = item.split(separator: "=")
            if parts.count == 2, parts[0].uppercased() == "WIDE" {
                // WIDE=MWGxNWGxKWGxMDIMCxNDIMCxVWM: the wide tile (WGPU sets from how many groups per unit).
                let numbers = parts[1].split(separator: "x").compactMap { Int($0) }
                guard numbers.count == 6 else { throw KernelProfileError.invalid(text, reason: "WIDE takes MWGxNWGxKWGxMDIMCxNDIMCxVWM, got '\(parts[1])'") }
                let wide = TiledGemm(mwg: numbers[0], nwg: numbers[1], kwg: numbers[2], mdimc: numbers[3], ndimc: numbers[4], vwm: numbers[5])
                do { try wide.validate() } catch let error as KernelProfileError { throw KernelProfileError.invalid(text, reason: "WIDE: \(error)") }
                var tiles = profile.tiles ?? .seed
                tiles.wide = wide
                tiles.wideGroupsPerUnit = tiles.wideGroupsPerUnit ?? 16
                profile.tiles = tiles
                continue
            }
            guard parts.count == 2, let value = Int(parts[1]), value > 0 || (["DA", "SK", "TILED", "LP", "SPLITK"].contains(parts[0].uppercased()) && value == 0) else {
                throw KernelProfileError.invalid(text, reason: "'\(item)' is not KEY=POSITIVE_INTEGER")
            }
            // Upper bounds keep a typo from building a kernel with a million-register tile or
            // launch sizes that overflow.
            let limits = ["MR": 64, "NV": 16, "UK": 64, "KC": 1 << 20, "LX": 1024, "LY": 1024, "MWG": 512, "NWG": 512, "KWG": 128,
                          "MDIMC": 1024, "NDIMC": 1024, "VWM": 4, "TILED": 1, "LP": 1, "SPLITK": 1, "WGPU": 1 << 16]
            if let limit = limits[parts[0].uppercased()], value > limit {
                throw KernelProfileError.invalid(text, reason: "\(parts[0]) must be at most \(limit), got \(value)")
            }
            switch parts[0].uppercased() {
            case "MR": profile.rowsPerItem = value
            case "VW":
                guard [1, 2, 4, 8, 16].contains(value) else { throw KernelProfileError.invalid(text, reason: "VW must be 1, 2, 4, 8 or 16") }
                profile.vectorWidth = value
            case "NV": profile.vectorsPerRow = value
            case "UK": profile.kUnroll = value
            case "KC": profile.kBlock = value
            case "DA": profile.directA = value != 0
            case "SK": profile.skinny = value != 0
            case "LX": local.0 = value
            case "LY": local.1 = value
            case "TILED": profile.tiles = value == 0 ? nil : profile.tiles ?? .seed
            case "LP": profile.localPacking = value != 0
            case "SPLITK": profile.splitK = value != 0
            case "WGPU":
                var tiles = profile.tiles ?? .seed
                tiles.wideGroupsPerUnit = value
                profile.tiles = tiles
            case "MWG", "NWG", "KWG", "MDIMC", "NDIMC", "VWM":
                // Sets the tile of large products (the narrow classes keep theirs).
                var tiles = profile.tiles ?? .seed
                switch parts[0].uppercased() {
                case "MWG": tiles.large.mwg = value
                case "NWG": tiles.large.nwg = value
                case "KWG": tiles.large.kwg = value
                case "MDIMC": tiles.large.mdimc = value
                case "NDIMC": tiles.large.ndimc = value
                default: tiles.large.vwm = value
                }
                profile.tiles = tiles
            default: throw KernelProfileError.invalid(text, reason: "unknown key '\(parts[0])' (MR, VW, NV, UK, KC, LX, LY, DA, SK, TILED, LP, SPLITK, MWG, NWG, KWG, MDIMC, NDIMC, VWM, WIDE, WGPU)")
            }
        }
        if let tiles = profile.tiles {
            do { try tiles.large.validate() } catch let error as KernelProfileError {
                throw KernelProfileError.invalid(text, reason: "\(error)")
            }
        }
        profile.localSize = local.0 > 0 && local.1 > 0 ? local : nil
        return profile
    }
}

public enum KernelProfileError: Error, CustomStringConvertible {
    case invalid(String, reason: String)
    case invalidVariable(String, String, reason: String)
    case tile(TiledGemm, reason: String)
    public var description: String {
        switch self {
        case .invalid(let text, let reason): "invalid SLORAGPU_GEMM_PROFILE '\(text)': \(reason)"
        case .invalidVariable(let variable, let text, let reason): "invalid \(variable) '\(text)': \(reason)"
        case .tile(let tile, let reason): "GEMM tile \(tile): \(reason)"
        }
    }
}

/// One configuration of the work-group tiled GEMM (`gemm_tiled` in Kernels/gemm.cl): an
/// MWG x NWG tile of C per work-group of NDIMC x MDIMC work-items, K in KWG chunks through
/// `__local`, VWM-wide copies.
public struct TiledGemm: Sendable, Equatable, Hashable, Codable, CustomStringConvertible {
    public var mwg: Int, nwg: Int, kwg: Int, mdimc: Int, ndimc: Int, vwm: Int

    public init(mwg: Int, nwg: Int, kwg: Int, mdimc: Int, ndimc: Int, vwm: Int) {
        (self.mwg, self.nwg, self.kwg, self.mdimc, self.ndimc, self.vwm) = (mwg, nwg, kwg, mdimc, ndimc, vwm)
    }

    public var workGroupSize: Int { mdimc * ndimc }
    /// `__local` bytes per work-group: the two staged chunks.
    public var localBytes: Int { 4 * kwg * (mwg + nwg) }
    /// NVIDIA's OpenCL allows 48 KiB of `__local` per work-group; the tiles stay within it on
    /// every device so that a configuration tested here is valid there.
    public static let localLimit = 48 * 1024

    /// The packing kernels of the same program build panels of MWG rows and NWG columns.
    public var buildOptions: String {
        "-DTILED -DMWG=\(mwg) -DNWG=\(nwg) -DKWG=\(kwg) -DMDIMC=\(mdimc) -DNDIMC=\(ndimc) -DVWM=\(vwm) -DMR=\(mwg) -DVW=4 -DNV=\(nwg / 4)"
    }

    public var description: String { "MWG=\(mwg),NWG=\(nwg),KWG=\(kwg),MDIMC=\(mdimc),NDIMC=\(ndimc),VWM=\(vwm)" }

    /// The kernel's constraints: tiles divisible by the work-group's sides and by 4 (the packing
    /// vectors) and VWM, a work-group of whole warps (32) and at most `maxWorkGroup` (1024 on
    /// NVIDIA), and `__local` within `localLimit` and the device's own limit.
    public func validate(maxWorkGroup: Int = 1024, deviceLocalBytes: Int = Int.max) throws {
        func bad(_ reason: String) -> KernelProfileError { .tile(self, reason: reason) }
        // Bounded before anything multiplies them (a tuning file or WIDE= may hold any integer).
        guard [mwg, nwg, kwg, mdimc, ndimc].allSatisfy({ (1...1024).contains($0) }), [1, 2, 4].contains(vwm) else {
            throw bad("sizes must be 1 to 1024, VWM 1, 2 or 4")
        }
        guard mwg % mdimc == 0, nwg % ndimc == 0 else { throw bad("MWG must divide by MDIMC and NWG by NDIMC") }
        guard mwg % 4 == 0, nwg % 4 == 0, mwg % vwm == 0, nwg % vwm == 0 else { throw bad("MWG and NWG must divide by 4 and by VWM") }
        guard workGroupSize % 32 == 0, workGroupSize <= min(1024, maxWorkGroup) else {
            throw bad("the work-group (\(workGroupSize) work-items) must be a multiple of 32 and at most \(min(1024, maxWorkGroup))")
        }
        guard localBytes <= min(Self.localLimit, deviceLocalBytes) else {
            throw bad("\(localBytes) bytes of __local exceed \(min(Self.localLimit, deviceLocalBytes))")
        }
    }
}

/// Tiles per shape class: large products, and the narrow low-rank ones (at most 16 columns, or
/// at most 16 rows), which a square tile would mostly pad.
public struct GemmTiles: Sendable, Equatable, Hashable, Codable, CustomStringConvertible {
    public var large: TiledGemm
    public var narrowColumns: TiledGemm
    public var narrowRows: TiledGemm
    /// A larger tile for the large products whose grid it still fills: a product takes it when
    /// it makes at least `wideGroupsPerUnit` work-groups per compute unit, else `large`. No one
    /// large tile suits both a ViT-S and a ViT-B step on an H200 (32 x 32 and 32 x 64 each lose
    /// 10-16% on the other's, docs/BENCHMARKS.md); nil: `large` serves every product.
    public var wide: TiledGemm? = nil
    public var wideGroupsPerUnit: Int? = nil

    /// Starting points before tuning (CLBlast's RTX 3090 row for large products).
    public static let seed = GemmTiles(
        large: TiledGemm(mwg: 64, nwg: 64, kwg: 16, mdimc: 16, ndimc: 16, vwm: 4),
        narrowColumns: TiledGemm(mwg: 128, nwg: 16, kwg: 16, mdimc: 32, ndimc: 4, vwm: 4),
        narrowRows: TiledGemm(mwg: 16, nwg: 128, kwg: 16, mdimc: 4, ndimc: 32, vwm: 4))

    /// The tile for an m x n product (`batches` of them) on a device of `computeUnits`.
    public func tile(m: Int, n: Int, batches: Int = 1, computeUnits: Int = 1) -> TiledGemm {
        if n <= 16 && m > 16 { return narrowColumns }
        if m <= 16 && n > 16 { return narrowRows }
        if let wide, let wideGroupsPerUnit {
            let groups = (m + wide.mwg - 1) / wide.mwg * ((n + wide.nwg - 1) / wide.nwg) * batches
            let (needed, overflow) = wideGroupsPerUnit.multipliedReportingOverflow(by: computeUnits)
            if !overflow && groups >= needed { return wide }
        }
        return large
    }

    public var description: String {
        "large \(large); n<=16 \(narrowColumns); m<=16 \(narrowRows)"
            + (wide.map { wide in "; from \(wideGroupsPerUnit ?? 0) groups per unit \(wide)" } ?? "")
    }
}
