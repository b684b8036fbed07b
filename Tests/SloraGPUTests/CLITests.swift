import Foundation
import Testing

/// The `sloragpu` executable as a user runs it: fresh processes, exit codes, messages.
@Suite("sloragpu CLI", .serialized)
struct CLITests {
    @Test func devicesListsPoCLAndMarksTheSelectedDevice() throws {
        let result = try runSloragpu(["devices"], removing: ["SLORAGPU_DEVICE"])
        #expect(result.status == 0, "\(result.standardError)")
        #expect(result.standardOutput.contains("Portable Computing Language"))
        #expect(result.standardOutput.contains("<- selected"))
        #expect(result.standardOutput.contains("compute units:"))
        #expect(result.standardOutput.contains("Selected: "))
    }

    @Test func devicesJSONIsOneObjectPerDevice() throws {
        let result = try runSloragpu(["devices", "--json", "--device", "cpu"])
        #expect(result.status == 0, "\(result.standardError)")
        let lines = result.standardOutput.split(separator: "\n")
        #expect(!lines.isEmpty)
        let objects = try lines.map { try JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any] }
        #expect(objects.filter { $0["selected"] as? Bool == true }.count == 1)
        #expect(objects.allSatisfy { $0["compute_units"] is Int && $0["fp64"] is Bool })
    }

    @Test func badDeviceSpecsFailWithAClearMessage() throws {
        let malformed = try runSloragpu(["devices", "--device", "0:"])
        #expect(malformed.status != 0)
        #expect(malformed.standardError.contains("invalid device spec '0:'"))

        let unmatched = try runSloragpu(["devices"], environment: ["SLORAGPU_DEVICE": "no-such-device"])
        #expect(unmatched.status != 0)
        #expect(unmatched.standardError.contains("no OpenCL device matches"))
        #expect(unmatched.standardError.contains("0:0"))
    }

    @Test func noPlatformSaysWhatToInstall() throws {
        let empty = try makeTemporaryDirectory()
        let result = try runSloragpu(["devices"], environment: ["OCL_ICD_VENDORS": empty.path])
        #expect(result.status != 0)
        #expect(result.standardError.contains("no OpenCL platform"))
        #expect(result.standardError.contains("pocl-opencl-icd"))
    }

    @Test func kernelsHitsTheDiskCacheInAFreshProcessAndRebuildsATruncatedEntry() throws {
        let cache = try makeTemporaryDirectory()
        let environment = ["SLORAGPU_CACHE_DIR": cache.path]
        let cold = try runSloragpu(["kernels"], environment: environment)
        #expect(cold.status == 0, "\(cold.standardError)")
        #expect(cold.standardOutput.contains("elementwise  compiled"))

        let warm = try runSloragpu(["kernels"], environment: environment)
        #expect(warm.status == 0, "\(warm.standardError)")
        #expect(warm.standardOutput.contains("elementwise  disk-cache hit"))

        for entry in try FileManager.default.contentsOfDirectory(at: cache, includingPropertiesForKeys: nil) {
            let data = try Data(contentsOf: entry)
            try data.prefix(100).write(to: entry)
        }
        let repaired = try runSloragpu(["kernels"], environment: environment)
        #expect(repaired.status == 0, "\(repaired.standardError)")
        #expect(repaired.standardOutput.contains("elementwise  rebuilt (invalid cache entry: truncated"))

        let again = try runSloragpu(["kernels"], environment: environment)
        #expect(again.standardOutput.contains("elementwise  disk-cache hit"))
    }

    @Test func versionAndHelp() throws {
        let version = try runSloragpu(["--version"])
        #expect(version.status == 0)
        #expect(version.standardOutput.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ".").count == 3)
        let help = try runSloragpu(["--help"])
        #expect(help.status == 0)
        #expect(help.standardOutput.contains("devices"))
        #expect(help.standardOutput.contains("SLORAGPU_DEVICE"))
    }
}

@Suite("sloragpu bench")
struct BenchSmokeTests {
    /// Not a timing test: the benchmark runs, checks its own result and prints valid JSON.
    @Test func gemmBenchVerifiesAndReportsJSON() throws {
        let result = try runSloragpu(["bench", "gemm", "--json", "--filter", "square 512", "--min-seconds", "0"])
        #expect(result.status == 0, "\(result.standardError)")
        let object = try JSONSerialization.jsonObject(with: Data(result.standardOutput.utf8)) as? [String: Any]
        #expect(object?["m"] as? Int == 512)
        #expect((object?["gflops"] as? Double ?? 0) > 0)
    }
}
