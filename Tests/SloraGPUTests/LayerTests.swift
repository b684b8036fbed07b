import Foundation
import Reference
import Testing
@testable import Tensors

private func doubles(_ values: [Float]) -> [Double] { values.map(Double.init) }
private func dot(_ a: [Double], _ b: [Double]) -> Double { zip(a, b).reduce(0) { $0 + $1.0 * $1.1 } }

@Suite("Layer kernels")
struct LayerTests {
    /// Both row mappings: one work-item per row (CPU) and a work-group per row with a __local
    /// tree (GPU; 32 and 128 work-items, rows narrower and wider than the group).
    @Test(arguments: [(1, 8), (3, 17), (65, 384), (197, 31), (2, 16), (9, 768)],
          [ReductionPath.rowPerItem, .workGroup(size: 32), .workGroup(size: 128)])
    func layerNormForwardAndBackward(shape: (rows: Int, width: Int), path: ReductionPath) throws {
        let (rows, width) = shape
        let engine = try makeEngine()
        engine.reductionPath = path
        let eps: Float = 1e-6
        let x = uniformValues(rows * width, seed: 1, scale: 3).enumerated().map { $1 + Float($0 % 7) * 0.5 }  // non-zero means
        let gamma = uniformValues(width, seed: 2).map { 1 + 0.5 * $0 }, beta = uniformValues(width, seed: 3)
        let dy = uniformValues(rows * width, seed: 4)
        let xT = try engine.tensor(x, shape: [rows, width])
        let gammaT = try engine.tensor(gamma, shape: [width]), betaT = try engine.tensor(beta, shape: [width])
        let y = try engine.empty([rows, width]), mean = try engine.empty([rows]), rstd = try engine.empty([rows])
        try engine.layerNormForward(xT, gamma: gammaT, beta: betaT, eps: eps, into: y, mean: mean, rstd: rstd)
        let expected = Reference.layerNorm(doubles(x), gamma: doubles(gamma), beta: doubles(beta), rows: rows, width: width, eps: Double(eps))
        expectClose(try y.download(), expected.y, atol: 1e-5, rtol: 1e-5, "layernorm y")
        expectClose(try mean.download(), expected.mean, atol: 1e-6, rtol: 1e-6, "layernorm mean")
        expectClose(try rstd.download(), expected.rstd, atol: 1e-6, rtol: 1e-5, "layernorm rstd")

        // Accumulating into an existing gradient (the residual stream's) adds to it.
        let dx0 = uniformValues(rows * width, seed: 5)
        let dx = try engine.tensor(dx0, shape: [rows, width])
        let dGamma = try engine.empty([width]), dBeta = try engine.empty([width])
        try engine.layerNormBackward(try engine.tensor(dy, shape: [rows, width]), x: xT, gamma: gammaT, mean: mean, rstd: rstd,
                                     dx: dx, accumulate: true, dGamma: dGamma, dBeta: dBeta)
        let grads = Reference.layerNormBackward(doubles(dy), x: doubles(x), gamma: doubles(gamma), rows: rows, width: width, eps: Double(eps))
        expectClose(try dx.download(), (0..<dx0.count).map { Double(dx0[$0]) + grads.dx[$0] }, atol: 1e-5, rtol: 1e-4, "layernorm dx")
        expectClose(try dGamma.download(), grads.dgamma, atol: 1e-4, rtol: 1e-4, "layernorm dgamma")
        expectClose(try dBeta.download(), grads.dbeta, atol: 1e-4, rtol: 1e-4, "layernorm dbeta")

        // The backward formula against finite differences of the forward definition.
        let f = { (input: [Double]) in
            dot(Reference.layerNorm(input, gamma: doubles(gamma), beta: doubles(beta), rows: rows, width: width, eps: Double(eps)).y, doubles(dy))
        }
        for index in [0, x.count / 2, x.count - 1] {
            let numeric = Reference.centralDifference(f, at: doubles(x), index: index)
            #expect(abs(grads.dx[index] - numeric) <= 1e-6 + 1e-5 * abs(numeric), "dx[\(index)] analytic \(grads.dx[index]) vs numeric \(numeric)")
        }
    }

    @Test func geluForwardAndBackward() throws {
        let engine = try makeEngine()
        let n = 1001
        let x = uniformValues(n, seed: 6, scale: 6), dy = uniformValues(n, seed: 7)
        let xT = try engine.tensor(x, shape: [n]), y = try engine.empty([n]), dx = try engine.empty([n])
        try engine.geluForward(xT, into: y)
        try engine.geluBackward(try engine.tensor(dy, shape: [n]), preActivation: xT, into: dx)
        expectClose(try y.download(), x.map { Reference.gelu(Double($0)) }, atol: 1e-6, rtol: 1e-5, "gelu")
        expectClose(try dx.download(), (0..<n).map { Double(dy[$0]) * Reference.geluDerivative(Double(x[$0])) }, atol: 1e-6, rtol: 1e-5, "gelu'")
        for value in [-3.0, -0.5, 0.0, 0.7, 2.5] {
            let numeric = (Reference.gelu(value + 1e-6) - Reference.gelu(value - 1e-6)) / 2e-6
            #expect(abs(Reference.geluDerivative(value) - numeric) < 1e-8)
            let quick = (Reference.quickGelu(value + 1e-6) - Reference.quickGelu(value - 1e-6)) / 2e-6
            #expect(abs(Reference.quickGeluDerivative(value) - quick) < 1e-8)
        }
        #expect(Reference.quickGelu(-1000) == 0 && Reference.quickGeluDerivative(-1000) == 0)
    }

    /// Column sums in one pass (CPU) and as row-block partials plus a second pass (GPU), over
    /// a row count that is not a multiple of the 64-row block.
    @Test(arguments: [ReductionPath.rowPerItem, .workGroup(size: 128)])
    func biasAddAndColumnSums(path: ReductionPath) throws {
        let engine = try makeEngine()
        engine.reductionPath = path
        let (rows, columns) = (197, 65)
        let y0 = uniformValues(rows * columns, seed: 8), bias = uniformValues(columns, seed: 9)
        let y = try engine.tensor(y0, shape: [rows, columns])
        try engine.addBias(try engine.tensor(bias, shape: [columns]), to: y)
        #expect(try y.download() == (0..<y0.count).map { y0[$0] + bias[$0 % columns] })
        let sums = try engine.tensor(bias, shape: [columns])
        try engine.columnSums(try engine.tensor(y0, shape: [rows, columns]), into: sums, accumulate: true)
        let expected = (0..<columns).map { c in Double(bias[c]) + (0..<rows).reduce(0.0) { $0 + Double(y0[$1 * columns + c]) } }
        expectClose(try sums.download(), expected, atol: 1e-4, rtol: 1e-5, "column sums")
    }

    /// One work-item per row (CPU) and a work-group per row (GPU), over class counts smaller
    /// than, not a multiple of, and several times the work-group.
    @Test(arguments: [Float(0), 0.1], [(ReductionPath.rowPerItem, 10), (.workGroup(size: 32), 10), (.workGroup(size: 32), 1000), (.workGroup(size: 128), 397)])
    func softmaxCrossEntropy(smoothing: Float, path: (ReductionPath, Int)) throws {
        let engine = try makeEngine()
        engine.reductionPath = path.0
        let (batch, classes) = (17, path.1)
        let logits = uniformValues(batch * classes, seed: 10, scale: 8).map { $0 + 40 }  // large: needs the max subtraction
        let labels = (0..<batch).map { Int32(($0 * 61) % classes) }
        let logitsT = try engine.tensor(logits, shape: [batch, classes])
        let losses = try engine.empty([batch]), dLogits = try engine.empty([batch, classes])
        try engine.softmaxCrossEntropy(logits: logitsT, labels: try engine.tensor(labels, shape: [batch]), smoothing: smoothing,
                                       losses: losses, dLogits: dLogits)
        let expected = Reference.softmaxCrossEntropy(doubles(logits), labels: labels.map(Int.init), classes: classes, smoothing: Double(smoothing))
        expectClose(try losses.download(), expected.losses, atol: 1e-5, rtol: 1e-5, "losses")
        expectClose(try dLogits.download(), expected.dlogits, atol: 1e-7, rtol: 1e-4, "dlogits")
        let mean = try engine.sum(losses, scale: 1 / Float(batch))
        expectClose(try mean.download(), [expected.losses.reduce(0, +) / Double(batch)], atol: 1e-5, rtol: 1e-6, "mean loss")

        let f = { (z: [Double]) in
            Reference.softmaxCrossEntropy(z, labels: labels.map(Int.init), classes: classes, smoothing: Double(smoothing)).losses.reduce(0, +) / Double(batch)
        }
        for index in classes == 10 ? [0, 33, batch * classes - 1] : [] {
            let numeric = Reference.centralDifference(f, at: doubles(logits), index: index)
            #expect(abs(expected.dlogits[index] - numeric) < 1e-7, "dlogits[\(index)] analytic \(expected.dlogits[index]) vs numeric \(numeric)")
        }
        #expect(throws: TensorError.self) {
            try engine.softmaxCrossEntropy(logits: logitsT, labels: try engine.tensor([Float](repeating: 0, count: batch), shape: [batch]), losses: losses)
        }
    }

    @Test(arguments: [ReductionPath.rowPerItem, .workGroup(size: 128), .workGroup(size: 32)])
    func sumAndSumOfSquaresOfLongVectors(path: ReductionPath) throws {
        let engine = try makeEngine()
        engine.reductionPath = path
        for n in [1, 5, 16, 17, 1023, 1025, 16_385, 300_001] {
            // A view at an odd offset, so vector loads start unaligned.
            let x = uniformValues(n, seed: UInt64(n))
            let tensor = try engine.tensor([7] + x, shape: [n + 1]).view(offset: 1, shape: [n])
            expectClose(try engine.sum(tensor).download(), [doubles(x).reduce(0, +)], atol: 1e-4, rtol: 1e-5, "sum n=\(n)")
            expectClose(try engine.sumOfSquares(tensor).download(), [doubles(x).reduce(0) { $0 + $1 * $1 }], atol: 1e-4, rtol: 1e-5, "sum of squares n=\(n)")
        }
    }

    @Test func patchExtractionAndTokens() throws {
        let engine = try makeEngine()
        let (batch, channels, height, width, patch, dim) = (2, 3, 12, 8, 4, 5)
        let patchCount = (height / patch) * (width / patch)
        let images = uniformValues(batch * channels * height * width, seed: 11)
        let patches = try engine.empty([batch * patchCount, channels * patch * patch])
        try engine.extractPatches(try engine.tensor(images, shape: [batch, channels, height, width]), patchSize: patch, into: patches)
        #expect(try patches.download().map(Double.init) == Reference.patches(doubles(images), batch: batch, channels: channels, height: height, width: width, patch: patch))
        #expect(throws: TensorError.self) {
            try engine.extractPatches(try engine.zeros([1, 3, 10, 8]), patchSize: 4, into: try engine.zeros([5, 48]))
        }

        let patchOut = uniformValues(batch * patchCount * dim, seed: 12), cls = uniformValues(dim, seed: 13), pos = uniformValues((patchCount + 1) * dim, seed: 14)
        let tokens = try engine.empty([batch * (patchCount + 1), dim])
        try engine.assembleTokens(patchOut: try engine.tensor(patchOut, shape: [batch * patchCount, dim]), cls: try engine.tensor(cls, shape: [dim]),
                                  pos: try engine.tensor(pos, shape: [patchCount + 1, dim]), batch: batch, into: tokens)
        var expected: [Float] = []
        for b in 0..<batch {
            for t in 0...patchCount {
                for c in 0..<dim { expected.append((t == 0 ? cls[c] : patchOut[(b * patchCount + t - 1) * dim + c]) + pos[t * dim + c]) }
            }
        }
        #expect(try tokens.download() == expected)

        // Backward: the adjoint of the forward, checked through <dTokens, forward(...)> identities.
        let dTokens = uniformValues(batch * (patchCount + 1) * dim, seed: 15)
        let dPatch = try engine.empty([batch * patchCount, dim]), dPos = try engine.empty([patchCount + 1, dim]), dCls = try engine.empty([dim])
        try engine.assembleTokensBackward(try engine.tensor(dTokens, shape: [batch * (patchCount + 1), dim]), batch: batch,
                                          dPatchOut: dPatch, dPos: dPos, dCls: dCls)
        var expectedPatch: [Float] = [], expectedPos = [Double](repeating: 0, count: (patchCount + 1) * dim)
        for b in 0..<batch {
            for t in 0...patchCount {
                for c in 0..<dim {
                    let g = dTokens[(b * (patchCount + 1) + t) * dim + c]
                    if t > 0 { expectedPatch.append(g) }
                    expectedPos[t * dim + c] += Double(g)
                }
            }
        }
        #expect(try dPatch.download() == expectedPatch)
        expectClose(try dPos.download(), expectedPos, atol: 1e-6, rtol: 1e-6, "dpos")
        expectClose(try dCls.download(), Array(expectedPos[0..<dim]), atol: 1e-6, rtol: 1e-6, "dcls")
    }
}
