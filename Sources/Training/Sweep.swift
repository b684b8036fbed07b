import Foundation

/// One training of a sweep: a method (with LoRA targets), a rank, a learning rate, a LoRA+
/// ratio and a seed. Cells that differ only in the seed form a group, which the report
/// summarises by the mean and spread over its seeds.
public struct SweepCell: Codable, Hashable, Sendable {
    public var method: String
    /// LoRA's targets (comma list), nil for the other methods.
    public var targets: String?
    /// nil for methods without adapters (full, probe).
    public var rank: Int?
    public var learningRate: Float
    public var loraPlusRatio: Float
    public var seed: UInt64

    /// A file-system-safe name: serial-r8-lr0.001-s0, lora_qv-r8-lr0.0003-lp16.0-s1, probe-lr0.01-s2.
    public var name: String { group + "-s\(seed)" }

    public var group: String {
        var text = method + (targets.map { "_" + $0.replacingOccurrences(of: ",", with: "") } ?? "")
        if let rank { text += "-r\(rank)" }
        text += "-lr\(learningRate)"
        if loraPlusRatio != 1 { text += "-lp\(loraPlusRatio)" }
        return text
    }

    /// The series a plot draws across learning rates: the group without the rate.
    public var series: String {
        var text = method + (targets.map { "(\($0))" } ?? "")
        if let rank { text += " r\(rank)" }
        if loraPlusRatio != 1 { text += " LoRA+ \(loraPlusRatio)" }
        return text
    }

    /// The `train` options this cell sets.
    public var trainArguments: [String] {
        var arguments = ["--method", method, "--lr", "\(learningRate)", "--seed", "\(seed)", "--lora-plus-ratio", "\(loraPlusRatio)"]
        if let rank { arguments += ["--rank", "\(rank)"] }
        if let targets { arguments += ["--targets", targets] }
        return arguments
    }
}

/// The grid: every method x rank x learning rate x LoRA+ ratio x seed, in that nesting (seeds
/// innermost, so each group's seeds finish together). Full fine-tuning and probing have no
/// rank, so they appear once per rate whatever the ranks; LoRA+ ratios other than 1 apply to
/// methods with adapters only.
public struct SweepGrid: Codable, Equatable, Sendable {
    /// NAME or lora:TARGETS (e.g. lora:q,v).
    public var methods: [String]
    public var ranks: [Int]
    public var learningRates: [Float]
    public var loraPlusRatios: [Float]
    public var seeds: [UInt64]

    public init(methods: [String], ranks: [Int], learningRates: [Float], loraPlusRatios: [Float], seeds: [UInt64]) throws {
        (self.methods, self.ranks, self.learningRates, self.loraPlusRatios, self.seeds) = (methods, ranks, learningRates, loraPlusRatios, seeds)
        func bad(_ text: String) -> TrainingError { .invalidOptions("sweep: " + text) }
        guard !methods.isEmpty, !ranks.isEmpty, !learningRates.isEmpty, !loraPlusRatios.isEmpty, !seeds.isEmpty else {
            throw bad("every list (methods, ranks, learning rates, LoRA+ ratios, seeds) needs at least one value")
        }
        for method in methods {
            let (name, targets) = Self.split(method)
            guard ["serial", "lora", "full", "probe"].contains(name) else { throw bad("unknown method '\(method)': use serial, lora, lora:TARGETS, full or probe") }
            if let targets {
                guard name == "lora" else { throw bad("'\(method)': only lora takes targets (lora:q,v)") }
                let parts = targets.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
                guard !parts.isEmpty, parts.allSatisfy({ ["q", "k", "v", "o"].contains($0) }), Set(parts).count == parts.count else {
                    throw bad("'\(method)': targets are a comma list of distinct q, k, v, o")
                }
            }
        }
        // Before building them: a product of long lists is refused, not enumerated.
        let product = [methods.count, ranks.count, learningRates.count, loraPlusRatios.count, seeds.count].reduce(1) { total, count in
            total > 10_000 ? total : total * count
        }
        guard product <= 10_000 else { throw bad("the grid has more than 10000 cells") }
        guard ranks.allSatisfy({ $0 >= 1 }) else { throw bad("ranks must be at least 1, got \(ranks)") }
        guard learningRates.allSatisfy({ $0 > 0 && $0.isFinite }) else { throw bad("learning rates must be positive and finite, got \(learningRates)") }
        guard loraPlusRatios.allSatisfy({ $0 > 0 && $0.isFinite }) else { throw bad("LoRA+ ratios must be positive and finite, got \(loraPlusRatios)") }
        guard cells.count <= 10_000 else { throw bad("\(cells.count) cells is more than a sweep should be (10000)") }
    }

    static func split(_ method: String) -> (name: String, targets: String?) {
        guard let colon = method.firstIndex(of: ":") else { return (method, nil) }
        return (String(method[..<colon]), String(method[method.index(after: colon)...]))
    }

    public var cells: [SweepCell] {
        var result: [SweepCell] = [], seen = Set<SweepCell>()
        for method in methods {
            let (name, targets) = Self.split(method)
            let adapters = name == "serial" || name == "lora"
            // Canonical order, so that lora:v,q and lora:q,v are one cell.
            let resolvedTargets = name == "lora"
                ? ["q", "k", "v", "o"].filter { (targets ?? "q,k,v,o").split(separator: ",").map(String.init).contains($0) }.joined(separator: ",") : nil
            for rank in adapters ? ranks.map(Optional.some) : [nil] {
                for rate in learningRates {
                    for ratio in adapters ? loraPlusRatios : [1] {
                        for seed in seeds {
                            let cell = SweepCell(method: name, targets: resolvedTargets, rank: rank, learningRate: rate, loraPlusRatio: ratio, seed: seed)
                            if seen.insert(cell).inserted { result.append(cell) }
                        }
                    }
                }
            }
        }
        return result
    }
}

/// A finished cell: its validation result and what it cost.
public struct SweepRow: Codable, Equatable, Sendable {
    public var cell: SweepCell
    public var accuracy: Double
    public var loss: Double
    public var images: Int
    public var trainableParameters: Int
    /// Median of the steps' images/s.
    public var imagesPerSecond: Double
    public var peakResidentBytes: Int?
    public var seconds: Double
    /// Why the cell's train failed (a diverging learning rate, say); such a cell scores 0.
    public var failure: String?

    public init(failed cell: SweepCell, reason: String) {
        (self.cell, accuracy, loss, images, trainableParameters, imagesPerSecond, seconds, failure) = (cell, 0, 0, 0, 0, 0, 0, reason)
    }

    init(cell: SweepCell, accuracy: Double, loss: Double, images: Int, trainableParameters: Int, imagesPerSecond: Double, peakResidentBytes: Int?,
         seconds: Double) {
        (self.cell, self.accuracy, self.loss, self.images, self.trainableParameters) = (cell, accuracy, loss, images, trainableParameters)
        (self.imagesPerSecond, self.peakResidentBytes, self.seconds) = (imagesPerSecond, peakResidentBytes, seconds)
    }

    /// The row of a finished run directory (summary.json and metrics.jsonl).
    public static func read(_ cell: SweepCell, from directory: URL) throws -> SweepRow {
        let summaryURL = directory.appendingPathComponent("summary.json")
        let summary: TrainingSummary
        do { summary = try JSONDecoder().decode(TrainingSummary.self, from: Data(contentsOf: summaryURL)) } catch {
            throw TrainingError.invalidOptions("sweep: \(summaryURL.path) is unreadable: \(error)")
        }
        guard let result = summary.validation else {
            throw TrainingError.invalidOptions("sweep: \(summaryURL.path) has no validation result (the cell was not trained with a validation split)")
        }
        let text = (try? String(contentsOf: directory.appendingPathComponent("metrics.jsonl"), encoding: .utf8)) ?? ""
        let rates = text.split(separator: "\n").compactMap { line -> Double? in
            guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any], object["kind"] as? String == "step" else { return nil }
            return (object["images_per_second"] as? NSNumber)?.doubleValue
        }.sorted()
        return SweepRow(cell: cell, accuracy: result.accuracy, loss: result.loss, images: result.count, trainableParameters: summary.trainableParameters,
                        imagesPerSecond: rates.isEmpty ? 0 : rates[rates.count / 2], peakResidentBytes: summary.peakResidentBytes, seconds: summary.seconds)
    }
}

/// Groups, tables, CSV and a plot of a sweep's rows.
public enum SweepReport {
    public struct Group: Equatable, Sendable {
        public var group: String
        public var first: SweepCell
        public var accuracies: [Double]
        /// Seeds whose train failed (each counted as accuracy 0).
        public var failures = 0
        public var mean: Double { accuracies.reduce(0, +) / Double(max(accuracies.count, 1)) }
        /// Sample standard deviation (0 for one seed).
        public var spread: Double {
            guard accuracies.count > 1 else { return 0 }
            let m = mean
            return (accuracies.map { ($0 - m) * ($0 - m) }.reduce(0, +) / Double(accuracies.count - 1)).squareRoot()
        }
    }

    /// In the order their first cell appears.
    public static func groups(_ rows: [SweepRow]) -> [Group] {
        var result: [Group] = []
        for row in rows {
            if let index = result.firstIndex(where: { $0.group == row.cell.group }) {
                result[index].accuracies.append(row.accuracy)
                result[index].failures += row.failure == nil ? 0 : 1
            } else {
                result.append(Group(group: row.cell.group, first: row.cell, accuracies: [row.accuracy], failures: row.failure == nil ? 0 : 1))
            }
        }
        return result
    }

    public static func rowLine(_ row: SweepRow) -> String {
        if let failure = row.failure { return "\(row.cell.name) failed: \(failure)" }
        return String(format: "%@ val acc %.4f  loss %.4f  %8d trainable  %6.1f img/s  %@  %.0f s", padded(row.cell.name, 32), row.accuracy, row.loss,
               row.trainableParameters, row.imagesPerSecond, row.peakResidentBytes.map { String(format: "%5.0f MB", Double($0) / 1e6) } ?? "   ? MB",
               row.seconds)
    }

    public static func groupLine(_ group: Group) -> String {
        String(format: "%@ %.4f +- %.4f over %d seed%@", padded(group.group, 28), group.mean, group.spread, group.accuracies.count, group.accuracies.count == 1 ? "" : "s")
            + (group.failures > 0 ? " (\(group.failures) failed, counted as 0)" : "")
    }

    /// Every group, each series' best learning rate marked with *.
    public static func table(_ rows: [SweepRow]) -> String {
        let all = groups(rows)
        var best: [String: String] = [:]
        for series in Set(all.map(\.first.series)) {
            best[series] = all.filter { $0.first.series == series }.max { $0.mean < $1.mean }?.group
        }
        var lines = [padded("group", 28) + " validation accuracy: mean +- sd over seeds; * the best rate of its series"]
        for group in all { lines.append(groupLine(group) + (best[group.first.series] == group.group ? "  *" : "")) }
        return lines.joined(separator: "\n")
    }

    static func padded(_ text: String, _ width: Int) -> String { text.count >= width ? text : text + String(repeating: " ", count: width - text.count) }

    public static func csv(_ rows: [SweepRow]) -> String {
        var lines = ["cell,method,targets,rank,learning_rate,lora_plus_ratio,seed,val_accuracy,val_loss,val_images,trainable_parameters,images_per_second,peak_rss_bytes,seconds,failure"]
        for row in rows {
            let cell = row.cell
            let targets: String = cell.targets.map { "\"\($0)\"" } ?? ""
            let rank: String = cell.rank.map(String.init) ?? ""
            let peak: String = row.peakResidentBytes.map(String.init) ?? ""
            let failure: String = row.failure.map { "\"" + $0.replacingOccurrences(of: "\"", with: "'") + "\"" } ?? ""
            let fields: [String] = [cell.name, cell.method, targets, rank, "\(cell.learningRate)", "\(cell.loraPlusRatio)", "\(cell.seed)",
                                    "\(row.accuracy)", "\(row.loss)", "\(row.images)", "\(row.trainableParameters)", "\(row.imagesPerSecond)",
                                    peak, "\(row.seconds)", failure]
            lines.append(fields.joined(separator: ","))
        }
        return lines.joined(separator: "\n") + "\n"
    }

    /// Validation accuracy against the learning rate (log axis), one line per series through
    /// the group means, bars from the lowest to the highest seed.
    public static func svg(_ rows: [SweepRow]) -> String {
        let all = groups(rows)
        let width = 640.0, height = 360.0, left = 60.0, right = 200.0, top = 30.0, bottom = 50.0
        let rates = all.map { log10(Double($0.first.learningRate)) }, accuracies = all.flatMap(\.accuracies)
        let xRange = (rates.min() ?? -4)...max(rates.max() ?? -2, (rates.min() ?? -4) + 1e-9)
        let yRange = (accuracies.min() ?? 0)...max(accuracies.max() ?? 1, (accuracies.min() ?? 0) + 1e-9)
        func px(_ rate: Double) -> Double {
            xRange.upperBound == xRange.lowerBound ? left + (width - left - right) / 2
                : left + (rate - xRange.lowerBound) / (xRange.upperBound - xRange.lowerBound) * (width - left - right)
        }
        func py(_ value: Double) -> Double { top + (1 - (value - yRange.lowerBound) / (yRange.upperBound - yRange.lowerBound)) * (height - top - bottom) }
        let colors = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"]
        var svg = "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width))\" height=\"\(Int(height))\" viewBox=\"0 0 \(Int(width)) \(Int(height))\">"
        svg += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>"
        svg += "<rect x=\"\(left)\" y=\"\(top)\" width=\"\(width - left - right)\" height=\"\(height - top - bottom)\" fill=\"none\" stroke=\"#888\"/>"
        svg += "<text x=\"\((width - right + left) / 2)\" y=\"20\" text-anchor=\"middle\" font-family=\"sans-serif\" font-size=\"14\">validation accuracy by learning rate</text>"
        var seriesNames: [String] = []
        for group in all where !seriesNames.contains(group.first.series) { seriesNames.append(group.first.series) }
        for (index, series) in seriesNames.enumerated() {
            let color = colors[index % colors.count]
            let members = all.filter { $0.first.series == series }.sorted { $0.first.learningRate < $1.first.learningRate }
            let points = members.map { String(format: "%.1f,%.1f", px(log10(Double($0.first.learningRate))), py($0.mean)) }.joined(separator: " ")
            svg += "<polyline fill=\"none\" stroke=\"\(color)\" stroke-width=\"1.5\" points=\"\(points)\"/>"
            for member in members {
                let x = px(log10(Double(member.first.learningRate)))
                svg += String(format: "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"%@\"/>", x, x, py(member.accuracies.min()!), py(member.accuracies.max()!), color)
                svg += String(format: "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%@\"/>", x, py(member.mean), color)
            }
            svg += String(format: "<text x=\"%.1f\" y=\"%.1f\" font-family=\"sans-serif\" font-size=\"11\" fill=\"%@\">%@</text>", width - right + 10,
                          top + 14 + Double(index) * 16, color, series)
        }
        for value in [yRange.lowerBound, yRange.upperBound] {
            svg += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\" font-family=\"sans-serif\" font-size=\"11\">%.4f</text>", left - 5, py(value) + 4, value)
        }
        for rate in Set(all.map { log10(Double($0.first.learningRate)) }) {
            svg += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-family=\"sans-serif\" font-size=\"11\">%g</text>", px(rate),
                          height - bottom + 16, pow(10, rate))
        }
        svg += "<text x=\"\((width - right + left) / 2)\" y=\"\(height - 12)\" text-anchor=\"middle\" font-family=\"sans-serif\" font-size=\"12\">learning rate</text>"
        return svg + "</svg>\n"
    }
}
