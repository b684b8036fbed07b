import Datasets
import Formats
import Foundation
import Testing
@testable import Training

@Suite("Validation split and sweeps", .serialized)
struct SweepTests {
    @Test func theValidationSplitIsStratifiedDeterministicAndDisjoint() throws {
        // 3 classes of 10, 20 and 30 images, interleaved.
        let labels: [Int32] = (0..<60).map { $0 % 6 == 0 ? 0 : $0 % 6 < 3 ? 1 : 2 }
        let data = try ImageDataset(name: "d", height: 1, width: 1, channels: 1, classNames: ["a", "b", "c"],
                                    pixels: (0..<60).map(UInt8.init), labels: labels)
        let (train, validation) = try data.stratifiedSplit(fraction: 0.2)
        // Each pixel is its image's index, so the parts can be traced back.
        #expect(Set(train.pixels).isDisjoint(with: validation.pixels))
        #expect(Set(train.pixels + validation.pixels) == Set(data.pixels))
        #expect([0, 1, 2].map { c in validation.labels.filter { $0 == c }.count } == [2, 4, 6])
        #expect(train.pixels == train.pixels.sorted() && validation.pixels == validation.pixels.sorted(), "file order kept")
        #expect(zip(validation.pixels, validation.labels).allSatisfy { labels[Int($0)] == $1 })
        let again = try data.stratifiedSplit(fraction: 0.2)
        #expect(again.validation.pixels == validation.pixels)
        #expect(try data.stratifiedSplit(fraction: 0.2, seed: 9).validation.pixels != validation.pixels)
        // No class leaves training, however small.
        let tiny = try ImageDataset(name: "t", height: 1, width: 1, channels: 1, classNames: ["a", "b"], pixels: [0, 1, 2, 3], labels: [0, 1, 1, 1])
        let tinySplit = try tiny.stratifiedSplit(fraction: 0.9)
        #expect(Set(tinySplit.train.labels) == [0, 1] && tinySplit.validation.labels == [1, 1])
        for bad in [0.0, 1.0, -0.5, .nan, 0.001] {
            #expect(throws: DatasetError.self) { try data.stratifiedSplit(fraction: bad) }
        }
    }

    /// Periodic evaluations and "best" use the validation part; the test set is scored once, at the end.
    @Test func aValidationSplitTakesOverSelectionAndTheTestSetOnlyEnds() throws {
        let engine = try makeEngine()
        let model = try tinyModel(engine, method: .serial(rank: 4, alpha: 4))
        let (train, validation) = try Synthetic.make(count: 96, size: 16, seed: 1).stratifiedSplit(fraction: 0.25)
        let test = try Synthetic.make(count: 32, size: 16, seed: 2)
        var settings = TrainingOptions()
        (settings.steps, settings.warmupSteps, settings.batchSize, settings.evaluationInterval, settings.checkpointInterval) = (6, 1, 8, 2, 0)
        let output = try makeTemporaryDirectory()
        var evaluations: [(Int, EvaluationSplit, Int)] = []
        let summary = try Trainer(model: model, train: train, validation: validation, test: test, options: settings, output: output,
                                  classNames: train.classNames).run { event in
            if case .evaluation(let step, let split, let result) = event { evaluations.append((step, split, result.count)) }
        }
        #expect(evaluations.map(\.0) == [2, 4, 6, 6])
        #expect(evaluations.map(\.1) == [.validation, .validation, .validation, .test])
        #expect(evaluations.map(\.2) == [validation.count, validation.count, validation.count, 32])
        #expect(summary.validation?.count == validation.count && summary.final?.count == 32)
        #expect(summary.bestStep.map { [2, 4, 6].contains($0) } == true)
        let records = try String(contentsOf: output.appendingPathComponent("metrics.jsonl"), encoding: .utf8)
        #expect(records.components(separatedBy: "\"split\":\"validation\"").count == 4 && records.components(separatedBy: "\"split\":\"test\"").count == 2)
        #expect(try String(contentsOf: output.appendingPathComponent("curves.svg"), encoding: .utf8).contains("validation accuracy"))

        // Without a test set (--no-test) the run ends on validation alone.
        let noTest = try Trainer(model: try tinyModel(engine, method: .probe), train: train, validation: validation, test: nil, options: settings,
                                 output: try makeTemporaryDirectory(), classNames: train.classNames).run()
        #expect(noTest.final == nil && noTest.validation != nil)
    }

    @Test func theGridExpandsNamesAndArgumentsOnce() throws {
        let grid = try SweepGrid(methods: ["serial", "lora:q,v", "probe"], ranks: [4, 8], learningRates: [1e-3, 3e-3], loraPlusRatios: [1, 16], seeds: [0, 1])
        let cells = grid.cells
        // serial and lora: 2 ranks x 2 rates x 2 ratios x 2 seeds each; probe: 2 rates x 2 seeds.
        #expect(cells.count == 16 + 16 + 4)
        #expect(Set(cells.map(\.name)).count == cells.count)
        #expect(cells.first?.name == "serial-r4-lr0.001-s0" && cells[1].name == "serial-r4-lr0.001-s1")
        #expect(cells.contains { $0.name == "lora_qv-r8-lr0.003-lp16.0-s1" })
        #expect(cells.last?.name == "probe-lr0.003-s1")
        let lora = try #require(cells.first { $0.method == "lora" })
        #expect(lora.trainArguments == ["--method", "lora", "--lr", "0.001", "--seed", "0", "--lora-plus-ratio", "1.0", "--rank", "4", "--targets", "q,v"])
        #expect(try SweepGrid(methods: ["lora"], ranks: [8], learningRates: [1e-3], loraPlusRatios: [1], seeds: [0]).cells[0].targets == "q,k,v,o")
        // Targets in any order are one cell, named in q, k, v, o order.
        #expect(try SweepGrid(methods: ["lora:v,q", "lora:q,v"], ranks: [8], learningRates: [1e-3], loraPlusRatios: [1], seeds: [0]).cells.map(\.name)
                == ["lora_qv-r8-lr0.001-s0"])
        for (methods, rates) in [(["bogus"], [Float(1e-3)]), (["serial:q"], [1e-3]), (["serial"], [0]), (["serial"], [.nan]), ([], [1e-3]),
                                 (["lora:q,x"], [1e-3]), (["lora:q,,v"], [1e-3]), (["lora:q,q"], [1e-3])] {
            #expect(throws: TrainingError.self) { try SweepGrid(methods: methods, ranks: [8], learningRates: rates, loraPlusRatios: [1], seeds: [0]) }
        }
    }

    @Test func reportsGroupSeedsAndMarkTheBestRate() throws {
        let cells = try SweepGrid(methods: ["serial"], ranks: [8], learningRates: [1e-3, 3e-3], loraPlusRatios: [1], seeds: [0, 1]).cells
        func row(_ index: Int, _ accuracy: Double) -> SweepRow {
            SweepRow(cell: cells[index], accuracy: accuracy, loss: 1, images: 10, trainableParameters: 100, imagesPerSecond: 5, peakResidentBytes: nil, seconds: 2)
        }
        let rows = [row(0, 0.5), row(1, 0.7), row(2, 0.8), SweepRow(failed: cells[3], reason: "the loss became nan")]
        let groups = SweepReport.groups(rows)
        #expect(groups.count == 2)
        #expect(abs(groups[0].mean - 0.6) < 1e-12 && abs(groups[0].spread - 0.2 / 2.0.squareRoot()) < 1e-12)
        #expect(groups[1].accuracies == [0.8, 0] && groups[1].failures == 1)
        let table = SweepReport.table(rows)
        #expect(table.contains("serial-r8-lr0.001") && table.split(separator: "\n").filter { $0.hasSuffix("*") }.count == 1)
        #expect(table.split(separator: "\n").first { $0.hasPrefix("serial-r8-lr0.001 ") }?.hasSuffix("*") == true)
        let csv = SweepReport.csv(rows).split(separator: "\n")
        #expect(csv.count == 5 && csv[4].hasSuffix("\"the loss became nan\""))
        #expect(SweepReport.svg(rows).contains("<polyline"))
    }

    var cellArguments: [String] {
        ["--model", parityFixtures.appendingPathComponent("hf-vit").path, "--image-size", "16", "--data", "synthetic", "--batch", "8", "--steps", "3", "--warmup", "1"]
    }

    /// A sweep that is run again keeps its finished cells, runs what the grid added, and refuses
    /// other cell arguments in the same directory.
    @Test func theSweepCommandResumesWithoutRerunningCells() throws {
        let output = try makeTemporaryDirectory()
        let first = try runSloragpu(["sweep", "--output", output.path, "--lr", "1e-3", "--seed", "0,1", "--validation-split", "0.2", "--"] + cellArguments)
        #expect(first.status == 0, "\(first.standardError)")
        #expect(first.standardOutput.contains("group:    serial-r8-lr0.001") && first.standardOutput.contains("over 2 seeds"))
        let summary = output.appendingPathComponent("cells/serial-r8-lr0.001-s0/summary.json")
        let written = try FileManager.default.attributesOfItem(atPath: summary.path)[.modificationDate] as? Date

        let second = try runSloragpu(["sweep", "--output", output.path, "--lr", "1e-3,2e-3", "--seed", "0,1", "--validation-split", "0.2", "--"] + cellArguments)
        #expect(second.status == 0, "\(second.standardError)")
        #expect(second.standardOutput.contains("4 cells (2 already done)"))
        #expect(!second.standardOutput.contains("cell:     serial-r8-lr0.001-s0"))
        #expect(try FileManager.default.attributesOfItem(atPath: summary.path)[.modificationDate] as? Date == written)
        let rows = try String(contentsOf: output.appendingPathComponent("sweep.jsonl"), encoding: .utf8).split(separator: "\n")
        #expect(rows.count == 4)
        #expect(try String(contentsOf: output.appendingPathComponent("sweep.csv"), encoding: .utf8).split(separator: "\n").count == 5)
        // The cells never saw the test set.
        let cellSummary = try JSONSerialization.jsonObject(with: Data(contentsOf: summary)) as? [String: Any]
        #expect(cellSummary?["final"] == nil && cellSummary?["validation"] != nil)

        let other = try runSloragpu(["sweep", "--output", output.path, "--lr", "1e-3", "--"] + cellArguments + ["--label-smoothing", "0.1"])
        #expect(other.status != 0 && other.standardError.contains("holds a sweep with other cell arguments"))
        let reserved = try runSloragpu(["sweep", "--output", output.path, "--", "--lr", "1"])
        #expect(reserved.status != 0 && reserved.standardError.contains("the sweep sets it for every cell"))
        let typo = try runSloragpu(["sweep", "--output", try makeTemporaryDirectory().path, "--"] + cellArguments + ["--stepz", "3"])
        #expect(typo.status != 0 && typo.standardError.contains("do not parse") && typo.standardError.contains("--stepz"), "\(typo.standardError)")

        // A diverging rate is an outcome: the cell scores 0, the sweep goes on and succeeds.
        let diverging = try makeTemporaryDirectory()
        let wild = try runSloragpu(["sweep", "--output", diverging.path, "--lr", "1e30,1e-3", "--validation-split", "0.2", "--"] + cellArguments)
        #expect(wild.status == 0 && wild.standardOutput.contains("serial-r8-lr1e+30-s0 failed:") && wild.standardOutput.contains("the loss became"),
                "\(wild.standardOutput)\(wild.standardError)")
        #expect(wild.standardOutput.contains("done:     serial-r8-lr0.001-s0"))
    }
}
