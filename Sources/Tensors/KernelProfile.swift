import CLRuntime
import Foundation

/// Tunables for one device class, passed to kernels as `-D` defines. The CPU profile targets
/// PoCL on AVX-512 (one work-item owns a register tile of 16-float vectors, so LLVM maps it to
/// zmm registers); the GPU profile keeps tiles small so there are many work-items.
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

    public static func == (a: GemmProfile, b: GemmProfile) -> Bool {
        a.rowsPerItem == b.rowsPerItem && a.vectorWidth == b.vectorWidth && a.vectorsPerRow == b.vectorsPerRow
            && a.kUnroll == b.kUnroll && a.kBlock == b.kBlock && a.directA == b.directA && a.skinny == b.skinny
            && a.localSize?.0 == b.localSize?.0 && a.localSize?.1 == b.localSize?.1
    }

    public var columnsPerItem: Int { vectorWidth * vectorsPerRow }

    public var buildOptions: String { "-DMR=\(rowsPerItem) -DVW=\(vectorWidth) -DNV=\(vectorsPerRow) -DUK=\(kUnroll)" }

    public var description: String {
        "MR=\(rowsPerItem),VW=\(vectorWidth),NV=\(vectorsPerRow),UK=\(kUnroll),KC=\(kBlock)" + (localSize.map { ",LX=\($0.0),LY=\($0.1)" } ?? "") + (directA ? "" : ",DA=0") + (skinny ? "" : ",SK=0")
    }

    public static let cpu = GemmProfile(rowsPerItem: 6, vectorWidth: 16, vectorsPerRow: 2, kUnroll: 4, kBlock: 0, localSize: nil)
    /// The skinny kernels give a GPU too few work-items (one per 16 rows): panels there.
    public static let gpu = {
        var profile = GemmProfile(rowsPerItem: 4, vectorWidth: 4, vectorsPerRow: 1, kUnroll: 4, kBlock: 0, localSize: (16, 8))
        profile.skinny = false
        return profile
    }()

    public static func forDevice(_ device: Device, environment: [String: String] = ProcessInfo.processInfo.environment) throws -> GemmProfile {
        let base = device.type.contains(.gpu) ? gpu : cpu
        guard let override = environment["SLORAGPU_GEMM_PROFILE"], !override.isEmpty else { return base }
        return try base.overridden(by: override)
    }

    /// Applies `KEY=VALUE,...` (keys MR, VW, NV, UK, KC, LX, LY, DA and SK = 0 or 1) on top of this profile, for tuning.
    public func overridden(by text: String) throws -> GemmProfile {
        var profile = self
        var local = localSize ?? (0, 0)
        for item in text.split(separator: ",") {
            let parts = item.split(separator: "=")
            guard parts.count == 2, let value = Int(parts[1]), value > 0 || (["DA", "SK"].contains(parts[0].uppercased()) && value == 0) else {
                throw KernelProfileError.invalid(text, reason: "'\(item)' is not KEY=POSITIVE_INTEGER")
            }
            // Upper bounds keep a typo from building a kernel with a million-register tile or
            // launch sizes that overflow.
            let limits = ["MR": 64, "NV": 16, "UK": 64, "KC": 1 << 20, "LX": 1024, "LY": 1024]
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
            default: throw KernelProfileError.invalid(text, reason: "unknown key '\(parts[0])' (MR, VW, NV, UK, KC, LX, LY, DA, SK)")
            }
        }
        profile.localSize = local.0 > 0 && local.1 > 0 ? local : nil
        return profile
    }
}

public enum KernelProfileError: Error, CustomStringConvertible {
    case invalid(String, reason: String)
    public var description: String {
        switch self {
        case .invalid(let text, let reason): "invalid SLORAGPU_GEMM_PROFILE '\(text)': \(reason)"
        }
    }
}
