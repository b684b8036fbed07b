import Foundation

/// An SVG of the training loss per step and the validation (else test) accuracy per evaluation, from
/// metrics.jsonl. Plain SVG: any browser or image viewer shows it.
public enum CurvePlot {
    public static func svg(metricsURL: URL) throws -> String {
        var losses: [(Double, Double)] = [], bySplit: [String: [(Double, Double)]] = [:]
        let text = (try? String(contentsOf: metricsURL, encoding: .utf8)) ?? ""
        for line in text.split(separator: "\n") {
            guard let object = try? JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any],
                  let step = (object["step"] as? NSNumber)?.doubleValue else { continue }
            if object["kind"] as? String == "step", let loss = (object["loss"] as? NSNumber)?.doubleValue { losses.append((step, loss)) }
            if object["kind"] as? String == "evaluation", let accuracy = (object["accuracy"] as? NSNumber)?.doubleValue {
                // Records before the split was recorded are test evaluations.
                bySplit[object["split"] as? String ?? "test", default: []].append((step, accuracy))
            }
        }
        // The curve of the set the run selected on: validation when it had one.
        let split = bySplit["validation"] != nil ? "validation" : "test"
        let accuracies = bySplit[split] ?? []
        let width = 420.0, height = 260.0
        // Both panels share the training run's step axis.
        let steps = (losses + accuracies).map(\.0)
        let axis = (steps.min() ?? 0)...(steps.max() ?? 1)
        func panel(_ points: [(Double, Double)], x: Double, title: String, color: String, fixedRange: ClosedRange<Double>?) -> String {
            var svg = "<g transform=\"translate(\(x),0)\"><rect x=\"50\" y=\"30\" width=\"\(width - 70)\" height=\"\(height - 70)\" fill=\"none\" stroke=\"#888\"/>"
            svg += "<text x=\"\(width / 2)\" y=\"20\" text-anchor=\"middle\" font-family=\"sans-serif\" font-size=\"14\">\(title)</text>"
            guard !points.isEmpty else { return svg + "</g>" }
            let (firstStep, lastStep) = (axis.lowerBound, axis.upperBound)
            let values = points.map(\.1)
            let range = fixedRange ?? (values.min()!...max(values.max()!, values.min()! + 1e-9))
            let stepSpan = max(lastStep - firstStep, 1)
            func px(_ step: Double) -> Double { 50 + (step - firstStep) / stepSpan * (width - 70) }
            func py(_ value: Double) -> Double { 30 + (1 - (value - range.lowerBound) / (range.upperBound - range.lowerBound)) * (height - 70) }
            let path = points.map { String(format: "%.1f,%.1f", px($0.0), py($0.1)) }.joined(separator: " ")
            svg += "<polyline fill=\"none\" stroke=\"\(color)\" stroke-width=\"1.5\" points=\"\(path)\"/>"
            for point in points where points.count <= 20 {
                svg += String(format: "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%@\"/>", px(point.0), py(point.1), color)
                if points.count == 1 {
                    svg += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\" font-family=\"sans-serif\" font-size=\"11\">%.4f</text>", px(point.0) - 6, py(point.1) + 4, point.1)
                }
            }
            for (value, label) in [(range.lowerBound, range.lowerBound), (range.upperBound, range.upperBound)] {
                svg += String(format: "<text x=\"45\" y=\"%.1f\" text-anchor=\"end\" font-family=\"sans-serif\" font-size=\"11\">%.3g</text>", py(value) + 4, label)
            }
            svg += String(format: "<text x=\"50\" y=\"%.1f\" font-family=\"sans-serif\" font-size=\"11\">step %.0f</text>", height - 24, firstStep)
            svg += String(format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\" font-family=\"sans-serif\" font-size=\"11\">step %.0f</text>", width - 20, height - 24, lastStep)
            return svg + "</g>"
        }
        return """
            <svg xmlns="http://www.w3.org/2000/svg" width="\(Int(2 * width))" height="\(Int(height))" viewBox="0 0 \(Int(2 * width)) \(Int(height))">
            <rect width="100%" height="100%" fill="white"/>
            \(panel(losses, x: 0, title: "training loss", color: "#1f77b4", fixedRange: nil))
            \(panel(accuracies, x: width, title: "\(split) accuracy", color: "#d62728", fixedRange: accuracies.count > 1 ? nil : 0...1))
            </svg>

            """
    }
}
