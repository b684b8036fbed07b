import CImageCodecs
import Foundation
import Testing
@testable import Tensors
@testable import Training
@testable import Formats
@testable import Optimizers
@testable import ViT

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

    @Test func peakBenchReportsJSON() throws {
        let result = try runSloragpu(["bench", "peak", "--json", "--min-seconds", "0", "--device", "cpu"])   // PoCL: the host's CPU flags apply
        #expect(result.status == 0, "\(result.standardError)")
        let object = try JSONSerialization.jsonObject(with: Data(result.standardOutput.utf8)) as? [String: Any]
        #expect((object?["fp32_fma_gflops"] as? Double ?? 0) > 0)
        #expect((object?["gemm_1024_fp32_gflops"] as? Double ?? 0) > 0)
        #expect((object?["bf16_dot_gflops"] != nil) == (Engine.hostCPUFlags()?.contains("avx512_bf16") == true))
    }
}

/// `sloragpu train/eval/predict/merge` as a user runs them, on the tiny fixture checkpoint.
@Suite("sloragpu train, eval, predict, merge", .serialized)
struct TrainingCLITests {
    let fixtureModel = parityFixtures.appendingPathComponent("hf-vit").path
    var common: [String] { ["--model", fixtureModel, "--image-size", "16", "--data", "synthetic", "--batch", "8"] }

    @Test func trainThenEvalPredictAndMerge() throws {
        let output = try makeTemporaryDirectory()
        let train = try runSloragpu(["train"] + common + ["--steps", "4", "--warmup", "1", "--checkpoint-interval", "2", "--output", output.path])
        #expect(train.status == 0, "\(train.standardError)")
        #expect(train.standardOutput.contains("method:   serial (rank 8, alpha 8.0): 1024 trainable parameters without the head"))
        #expect(train.standardOutput.contains("test accuracy"))
        let adapter = output.appendingPathComponent("adapter.safetensors").path
        #expect(train.standardOutput.contains("adapter:  \(adapter)"))

        let logits = output.appendingPathComponent("logits.npy")
        let eval = try runSloragpu(["eval", "--adapter", adapter, "--model", fixtureModel, "--data", "synthetic", "--dump-logits", logits.path])
        #expect(eval.status == 0, "\(eval.standardError)")
        #expect(eval.standardOutput.contains("accuracy") && eval.standardOutput.contains("confusion matrix"))
        let npy = try Data(contentsOf: logits)
        #expect(npy.starts(with: [0x93] + Array("NUMPY".utf8)))
        #expect(String(decoding: npy.prefix(128), as: UTF8.self).contains("'shape': (128, 10)"))
        #expect(npy.count % 64 == (128 * 10 * 4) % 64)

        var image = png_image()
        image.version = UInt32(PNG_IMAGE_VERSION)
        (image.width, image.height, image.format) = (20, 20, UInt32(PNG_FORMAT_RGB))
        let png = output.appendingPathComponent("x.png").path
        let pixels = [UInt8](repeating: 200, count: 20 * 20 * 3)
        #expect(pixels.withUnsafeBytes { png_image_write_to_file(&image, png, 0, $0.baseAddress, 0, nil) } != 0)
        let predict = try runSloragpu(["predict", "--adapter", adapter, "--model", fixtureModel, "--top", "2", png])
        #expect(predict.status == 0, "\(predict.standardError)")
        #expect(predict.standardOutput.contains(png) && predict.standardOutput.split(separator: "\n").count == 3)

        let merged = output.appendingPathComponent("merged")
        let merge = try runSloragpu(["merge", "--adapter", adapter, "--model", fixtureModel, "--output", merged.path])
        #expect(merge.status == 0, "\(merge.standardError)")
        let checkpoint = try PretrainedCheckpoint(directory: merged)
        #expect(checkpoint.naming == .hfViT && checkpoint.config.classes == 10 && checkpoint.config.imageSize == 16)
    }

    @Test func sixteenBitWeightsOnTheCommandLine() throws {
        let output = try makeTemporaryDirectory()
        let train = try runSloragpu(["train"] + common + ["--steps", "2", "--warmup", "1", "--weights", "fp16", "--output", output.path])
        #expect(train.status == 0, "\(train.standardError)")
        #expect(train.standardOutput.contains("frozen weights in fp16") && train.standardOutput.contains("test accuracy"))
        let saved = try JSONDecoder().decode([String].self, from: Data(contentsOf: output.appendingPathComponent("run.json")))
        #expect(saved.contains("--weights") && saved.contains("fp16"))
        let eval = try runSloragpu(["eval", "--adapter", output.appendingPathComponent("adapter.safetensors").path, "--model", fixtureModel,
                                    "--data", "synthetic", "--weights", "bf16"])
        #expect(eval.status == 0 && eval.standardOutput.contains("accuracy"), "\(eval.standardError)")
        // Without --weights and --activations the defaults (fp16, selective) are recorded; a
        // run.json from before they were recorded resumes in fp32, recompute and lr 1e-3, as it trained.
        let plain = try makeTemporaryDirectory()
        let first = try runSloragpu(["train"] + common + ["--steps", "2", "--warmup", "1", "--output", plain.path])
        #expect(first.status == 0 && first.standardOutput.contains("frozen weights in fp16")
                && first.standardOutput.contains("activations selective") && first.standardOutput.contains("adamw lr 0.003,"), "\(first.standardOutput)\(first.standardError)")
        let runFile = plain.appendingPathComponent("run.json")
        var recorded = try JSONDecoder().decode([String].self, from: Data(contentsOf: runFile))
        #expect(recorded.suffix(6) == ["--weights", "fp16", "--activations", "selective", "--lr", "0.003"])
        recorded.removeLast(6)
        recorded = recorded.map { $0 == "2" ? "3" : $0 }   // one more step to resume into
        try JSONEncoder().encode(recorded).write(to: runFile)
        let resumed = try runSloragpu(["train", "--resume", plain.path])
        #expect(resumed.status == 0 && resumed.standardOutput.contains("resuming:") && !resumed.standardOutput.contains("frozen weights in")
                && resumed.standardOutput.contains("activations recompute") && resumed.standardOutput.contains("adamw lr 0.001,"),
                "\(resumed.standardOutput)\(resumed.standardError)")
        let bad = try runSloragpu(["train"] + common + ["--weights", "int4"])
        #expect(bad.status != 0 && bad.standardError.contains("fp32") && bad.standardError.contains("bf16"), "\(bad.standardError)")
    }

    @Test func ctrlCSavesACheckpointAndResumeFinishesTheRun() throws {
        let output = try makeTemporaryDirectory()
        let (process, errorPipe) = try startTrainingUntilTwoSteps(common + ["--steps", "400"], output: output)
        process.interrupt()
        let stderr = String(decoding: errorPipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus == 130, "\(stderr)")
        #expect(stderr.contains("interrupted after step") && stderr.contains("--resume"))
        let state = try TrainingCheckpoint.loadState(output.appendingPathComponent("checkpoints/last"))
        #expect(state.step >= 2 && state.step < 400)

        let resumed = try runSloragpu(["train", "--resume", output.path, "--checkpoint-interval", "1000"])
        #expect(resumed.status == 0, "\(resumed.standardError)")
        #expect(resumed.standardOutput.contains("resuming:") && resumed.standardOutput.contains("test accuracy"))
        let finalState = try TrainingCheckpoint.loadState(output.appendingPathComponent("checkpoints/last"))
        #expect(finalState.step == 400)
    }

    /// --matmul bf16 trains, is recorded for a resume and evaluates where the CPU has AVX512_BF16;
    /// elsewhere it fails before anything is written, saying why.
    @Test func bf16ProductsOnTheCommandLine() throws {
        let output = try makeTemporaryDirectory()
        let train = try runSloragpu(["train"] + common + ["--steps", "2", "--warmup", "1", "--matmul", "bf16", "--output", output.path])
        let runFile = output.appendingPathComponent("run.json")
        if BF16ProductTests.available {
            #expect(train.status == 0 && train.standardOutput.contains("products in bf16") && train.standardOutput.contains("test accuracy"),
                    "\(train.standardOutput)\(train.standardError)")
            let saved = try JSONDecoder().decode([String].self, from: Data(contentsOf: runFile))
            #expect(saved.contains("--matmul") && saved.contains("bf16"))
            let eval = try runSloragpu(["eval", "--adapter", output.appendingPathComponent("adapter.safetensors").path, "--model", fixtureModel,
                                        "--data", "synthetic", "--matmul", "bf16"])
            #expect(eval.status == 0 && eval.standardOutput.contains("accuracy"), "\(eval.standardError)")
        } else {
            #expect(train.status != 0 && train.standardError.contains("matmul precision bf16 is not available on this device"), "\(train.standardError)")
            #expect(!FileManager.default.fileExists(atPath: runFile.path))
        }
        // Refused on any machine: a GEMM profile of 8-float vectors cannot hold bf16 pairs.
        let narrow = try makeTemporaryDirectory()
        let refused = try runSloragpu(["train"] + common + ["--matmul", "bf16", "--output", narrow.path], environment: ["SLORAGPU_GEMM_PROFILE": "VW=8"])
        #expect(refused.status != 0 && refused.standardError.contains("matmul precision bf16 is not available on this device")
                && refused.standardError.contains("VW=16"), "\(refused.standardError)")
        #expect(!FileManager.default.fileExists(atPath: narrow.appendingPathComponent("run.json").path))
        let unknown = try runSloragpu(["train"] + common + ["--matmul", "fp8"])
        #expect(unknown.status != 0 && unknown.standardError.contains("fp8"), "\(unknown.standardError)")
    }

    @Test func badInputFailsWithAClearMessage() throws {
        let cases: [([String], String)] = [
            (["train", "--model", "/no/such/dir", "--data", "synthetic"], "no such checkpoint directory"),
            (["train", "--model", fixtureModel, "--data", "imagenet"], "use fashion-mnist, idx:DIR, folder:DIR or synthetic"),
            (["train", "--model", "vit-s/14", "--image-size", "100", "--data", "synthetic"], "not divisible by the patch size 14"),
            (["train"] + common + ["--rank", "0"], "rank 0 must be between 1 and the width 32"),
            (["train"] + common + ["--method", "dora"], "unknown method 'dora'"),
            (["train"] + common + ["--targets", "q,x"], "unknown LoRA target 'x'"),
            (["train"] + common + ["--steps", "5", "--warmup", "9"], "warm-up (9) must be below the number of steps (5)"),
            (["train", "--resume", "/no/such/run"], "no readable run.json"),
            (["train", "--model", fixtureModel, "--data", "idx:/no/such/dir"], "no train-images-idx3-ubyte"),
            (["eval", "--adapter", "/no/such/adapter.safetensors", "--model", fixtureModel], "/no/such/adapter.safetensors: cannot read file"),
        ]
        for (arguments, message) in cases {
            let result = try runSloragpu(arguments)
            #expect(result.status != 0, "\(arguments) should fail")
            #expect(result.standardError.contains(message), "\(arguments): '\(message)' not in: \(result.standardError)")
        }
    }

    @Test func missingDefaultWeightsSayWhichCommandFetchesThem() throws {
        let empty = try makeTemporaryDirectory()
        // Else the weights beside this checkout, when fetched, are found from any directory.
        let result = try runSloragpu(["train", "--data", "synthetic"], environment: ["SLORAGPU_DEFAULT_MODEL": empty.appendingPathComponent("none").path],
                                     in: empty)
        let stderr = result.standardError
        #expect(result.status != 0)
        #expect(stderr.contains("scripts/fetch_weights.sh"), "\(stderr)")
    }
}
