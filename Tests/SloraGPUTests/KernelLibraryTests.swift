import CLRuntime
import Foundation
import Testing
@testable import Tensors

@Suite("Kernel library and disk cache")
struct KernelLibraryTests {
    @Test func sha256MatchesTheStandardVectors() {
        #expect(SHA256.hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
        #expect(SHA256.hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        #expect(SHA256.hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")
            == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1")
        #expect(SHA256.hex(String(repeating: "a", count: 1000))
            == "41edece42d63e8d9bf515a9ba6932e1c20cbc9f5a5d134645adb5db1b9737ea3")
    }

    @Test func embeddedSourcesAreInTheBinary() throws {
        #expect(KernelSources.embeddedNames.contains("elementwise"))
        let source = try KernelSources().source(named: "elementwise")
        #expect(source.contains("__kernel void add_f32"))
        #expect(throws: KernelLibraryError.self) { try KernelSources().source(named: "no_such_program") }
    }

    @Test func overrideDirectoryReplacesEmbeddedSources() throws {
        let directory = try makeTemporaryDirectory()
        // Same kernel name and signature, different behaviour: proves the override is used.
        try """
            __kernel void fill_f32(__global float *y, const int y_offset, const int n, const float value)
            { const int i = get_global_id(0); if (i < n) y[y_offset + i] = value + 1.0f; }
            """.write(to: directory.appendingPathComponent("elementwise.cl"), atomically: true, encoding: .utf8)
        let engine = try makeEngine(kernelOverrideDirectory: directory)
        let tensor = try engine.empty([5])
        try engine.fill(tensor, with: 2)
        #expect(try tensor.download() == [Float](repeating: 3, count: 5))
    }

    @Test func aSyntaxErrorYieldsTheBuildLog() throws {
        let directory = try makeTemporaryDirectory()
        try "__kernel void broken(__global float *x) { x[0] = 1.0f +; }"
            .write(to: directory.appendingPathComponent("broken.cl"), atomically: true, encoding: .utf8)
        let engine = try makeEngine(kernelOverrideDirectory: directory)
        let error = try #require(throws: KernelBuildError.self) { try engine.kernels.program("broken") }
        #expect(error.program == "broken")
        #expect(error.underlying.statusName == "CL_BUILD_PROGRAM_FAILURE")
        #expect(error.buildLog.contains("error"))
        #expect(error.description.contains(error.buildLog))
    }

    @Test func aProgramIsBuiltOncePerLibrary() throws {
        let engine = try makeEngine(cacheDirectory: nil)
        let first = try engine.kernels.program("elementwise")
        let second = try engine.kernels.program("elementwise")
        #expect(first === second)
        #expect(engine.kernels.buildRecords.count == 1)
        #expect(engine.kernels.buildRecords[0].outcome == .compiled)
        // Other options are another binary.
        _ = try engine.kernels.program("elementwise", options: "-DUNUSED_TUNABLE=3")
        #expect(engine.kernels.buildRecords.count == 2)
    }

    @Test func theDiskCacheIsHitByASecondLibraryAndSurvivesCorruption() throws {
        let cacheDirectory = try makeTemporaryDirectory()
        let first = try makeEngine(cacheDirectory: cacheDirectory)
        _ = try first.kernels.program("elementwise")
        #expect(first.kernels.buildRecords.map(\.outcome) == [.compiled])
        let entries = try FileManager.default.contentsOfDirectory(at: cacheDirectory, includingPropertiesForKeys: nil)
        #expect(entries.count == 1)
        let entry = try #require(entries.first)

        let second = try makeEngine(cacheDirectory: cacheDirectory)
        _ = try second.kernels.program("elementwise")
        #expect(second.kernels.buildRecords.map(\.outcome) == [.diskCacheHit])
        try checkAdd(second)

        // Truncated: detected, rebuilt, rewritten whole.
        let whole = try Data(contentsOf: entry)
        try whole.prefix(whole.count / 2).write(to: entry)
        let third = try makeEngine(cacheDirectory: cacheDirectory)
        _ = try third.kernels.program("elementwise")
        guard case .rebuiltInvalidCacheEntry(let reason) = third.kernels.buildRecords[0].outcome else {
            Issue.record("a truncated entry must be rebuilt, got \(third.kernels.buildRecords[0].outcome)")
            return
        }
        #expect(reason.contains("truncated"))
        try checkAdd(third)
        // Rewritten whole: the next library trusts it again. (Not byte-compared: a driver need
        // not produce identical binaries on every build.)
        let afterRepair = try makeEngine(cacheDirectory: cacheDirectory)
        _ = try afterRepair.kernels.program("elementwise")
        #expect(afterRepair.kernels.buildRecords.map(\.outcome) == [.diskCacheHit])

        // One flipped bit in the binary: the checksum catches it.
        var flipped = whole
        flipped[flipped.count - 10] ^= 0x40
        try flipped.write(to: entry)
        let fourth = try makeEngine(cacheDirectory: cacheDirectory)
        _ = try fourth.kernels.program("elementwise")
        #expect(fourth.kernels.buildRecords[0].outcome == .rebuiltInvalidCacheEntry("checksum mismatch in \(entry.lastPathComponent)"))
        try checkAdd(fourth)
    }

    @Test func cacheEntriesAreKeyedByEverythingThatChangesTheBinary() throws {
        let engine = try makeEngine(cacheDirectory: nil)
        let base = engine.kernels.cacheKey(sourceHash: "aa", options: "-cl-std=CL1.2")
        #expect(base.contains(engine.device.info.driverVersion))
        #expect(base.contains(engine.device.info.name))
        #expect(base.contains(engine.device.platform.name))
        #expect(base != engine.kernels.cacheKey(sourceHash: "ab", options: "-cl-std=CL1.2"))
        #expect(base != engine.kernels.cacheKey(sourceHash: "aa", options: "-cl-std=CL1.2 -DX=1"))
    }

    /// Kernel builds are quiet: PoCL printed "2 warnings generated." per GEMM build into every
    /// first run's output (LLVM 15 declines some unroll pragmas); SLORAGPU_KERNEL_WARNINGS=1
    /// brings them back for kernel development.
    @Test func kernelBuildsAreQuietUnlessWarningsAreAskedFor() throws {
        #expect(KernelLibrary.baseOptions(environment: [:]) == "-cl-std=CL1.2 -w")
        #expect(KernelLibrary.baseOptions(environment: ["SLORAGPU_KERNEL_WARNINGS": "1"]) == "-cl-std=CL1.2")
        let result = try runSloragpu(["bench", "gemm", "--filter", "square 512", "--min-seconds", "0"],
                                     environment: ["SLORAGPU_CACHE_DIR": try makeTemporaryDirectory().path, "POCL_KERNEL_CACHE": "0"],
                                     removing: ["SLORAGPU_KERNEL_WARNINGS"])
        #expect(result.status == 0, "\(result.standardError)")
        #expect(!result.standardError.contains("warning"), "\(result.standardError)")
    }

    @Test func aStoredEntryWithAnotherKeyIsNotTrusted() throws {
        let cache = ProgramDiskCache(directory: try makeTemporaryDirectory())
        try cache.store(key: "key one", binary: [1, 2, 3])
        #expect(cache.load(key: "key one") == .hit([1, 2, 3]))
        #expect(cache.load(key: "key two") == .miss)
        // Simulate a colliding file name: the stored key is checked, not just the name.
        try FileManager.default.copyItem(at: cache.fileURL(forKey: "key one"), to: cache.fileURL(forKey: "key two"))
        guard case .invalid(let reason) = cache.load(key: "key two") else {
            Issue.record("a key mismatch must be invalid")
            return
        }
        #expect(reason.contains("key mismatch"))
        try Data("SLGKC001".utf8).write(to: cache.fileURL(forKey: "key one"))
        #expect(cache.load(key: "key one") != .hit([1, 2, 3]))
        try Data("garbage".utf8).write(to: cache.fileURL(forKey: "key one"))
        #expect(cache.load(key: "key one") == .invalid("bad magic in \(cache.fileURL(forKey: "key one").lastPathComponent)"))
    }

    private func checkAdd(_ engine: Engine) throws {
        let a = sampleValues(33, seed: 5), b = sampleValues(33, seed: 6)
        let sum = try engine.add(try engine.tensor(a, shape: [33]), try engine.tensor(b, shape: [33]))
        #expect(try sum.download() == zip(a, b).map { $0 + $1 })
    }
}
