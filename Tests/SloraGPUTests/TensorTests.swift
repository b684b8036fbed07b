import CLRuntime
import Foundation
import Testing
@testable import Tensors

@Suite("Tensors")
struct TensorTests {
    // 1 element, an odd count, and 12.5M floats (50 MB).
    @Test(arguments: [1, 1001, 12_500_000])
    func uploadDownloadRoundTrip(count: Int) throws {
        let engine = try makeEngine()
        let values = sampleValues(count, seed: UInt64(count))
        let tensor = try engine.tensor(values, shape: [count])
        #expect(try tensor.download() == values)
    }

    @Test func multiDimensionalShapeKeepsRowMajorOrder() throws {
        let engine = try makeEngine()
        let values = sampleValues(3 * 5 * 7)
        let tensor = try engine.tensor(values, shape: [3, 5, 7])
        #expect(tensor.count == 105)
        #expect(tensor.byteCount == 420)
        let row = try tensor.reshaped([15, 7]).view(offset: 7 * 4, shape: [7])
        #expect(try row.download() == Array(values[28..<35]))
    }

    @Test func viewsReadAndWriteOnlyTheirRange() throws {
        let engine = try makeEngine()
        let values = sampleValues(100)
        let base = try engine.tensor(values, shape: [100])
        let view = try base.view(offset: 17, shape: [3, 11])
        #expect(view.offset == 17)
        #expect(try view.download() == Array(values[17..<50]))

        let replacement = sampleValues(33, seed: 9)
        try view.upload(replacement)
        var expected = values
        expected.replaceSubrange(17..<50, with: replacement)
        #expect(try base.download() == expected)

        // A view of a view composes offsets.
        let inner = try view.view(offset: 5, shape: [4])
        #expect(inner.offset == 22)
        #expect(try inner.download() == Array(replacement[5..<9]))
    }

    @Test func outOfRangeViewsAndBadShapesAreErrors() throws {
        let engine = try makeEngine()
        let base = try engine.zeros([10])
        #expect(throws: TensorError.viewOutOfRange(offset: 8, shape: [3], available: 10)) { try base.view(offset: 8, shape: [3]) }
        #expect(throws: TensorError.self) { try base.view(offset: -1, shape: [2]) }
        #expect(throws: TensorError.self) { try base.reshaped([3, 3]) }
        #expect(throws: TensorError.self) { try engine.empty([4, 0]) }
        #expect(throws: TensorError.self) { try engine.empty([]) }
        #expect(throws: TensorError.countMismatch(operation: "upload", expected: 10, actual: 9)) { try base.upload(sampleValues(9)) }
    }

    @Test func poolReusesFreedBuffersOfTheSameSizeClass() throws {
        let engine = try makeEngine()
        var handle: OpaquePointer?
        do {
            let first = try engine.empty([1000])
            handle = first.buffer.handle
            #expect(engine.pool.statistics.allocations == 1)
            #expect(engine.pool.statistics.liveBytes == BufferPool.sizeClass(for: 4000))
        }
        #expect(engine.pool.statistics.liveBytes == 0)
        #expect(engine.pool.statistics.cachedBytes == BufferPool.sizeClass(for: 4000))
        // 990 floats round to the same size class as 1000: the freed buffer comes back.
        let second = try engine.empty([990])
        #expect(second.buffer.handle == handle)
        #expect(engine.pool.statistics.allocations == 1)
        #expect(engine.pool.statistics.reuses == 1)
        #expect(engine.pool.statistics.cachedBytes == 0)

        // A view keeps the storage alive after the tensor it came from is gone.
        var view: Tensor?
        do {
            let owner = try engine.tensor(sampleValues(64), shape: [64])
            view = try owner.view(offset: 32, shape: [32])
        }
        #expect(try view!.download() == Array(sampleValues(64)[32...]))
        #expect(engine.pool.statistics.allocations == 2)

        engine.pool.trim()
        #expect(engine.pool.statistics.cachedBytes == 0)
    }

    @Test func sizeClassesBoundTheWaste() {
        #expect(BufferPool.sizeClass(for: 1) == 256)
        #expect(BufferPool.sizeClass(for: 256) == 256)
        #expect(BufferPool.sizeClass(for: 257) == 384)
        #expect(BufferPool.sizeClass(for: 384) == 384)
        #expect(BufferPool.sizeClass(for: 385) == 512)
        #expect(BufferPool.sizeClass(for: 4000) == 4096)
        #expect(BufferPool.sizeClass(for: 3000) == 3072)
        for bytes in stride(from: 257, to: 50_000_000, by: 79_193) {
            let size = BufferPool.sizeClass(for: bytes)
            #expect(size >= bytes)
            #expect(Double(size) <= Double(bytes) * (bytes > 1 << 20 ? 1.125 : 1.5))
            #expect(BufferPool.sizeClass(for: size) == size, "a class is its own class")
        }
        #expect(BufferPool.sizeClass(for: 12_779_520) == 13_631_488)  // a ViT-S MLP activation: 13 x 2^20
    }

    /// A workspace carves aligned, disjoint views from what it is lent, takes a buffer of its
    /// own when the rest does not fit, and refuses a shape that is empty, has a non-positive
    /// dimension or whose element count overflows (a library caller's shape) with an error, not a trap.
    @Test func workspaceCarvesAlignedDisjointViewsAndRefusesBadShapes() throws {
        let engine = try makeEngine()
        let lentTensor = try engine.empty([1000]).view(offset: 3, shape: [500])
        let workspace = Workspace(lending: [lentTensor])
        let first = try workspace.tensor(engine, [10, 10]), second = try workspace.tensor(engine, [7])
        for view in [first, second] {
            #expect(view.buffer === lentTensor.buffer && view.offset % 64 == 0, "offset \(view.offset)")
        }
        #expect(second.offset >= first.offset + first.count, "the views overlap")
        let tooLarge = try workspace.tensor(engine, [400])
        #expect(tooLarge.buffer !== lentTensor.buffer)
        for shape in [[], [0], [4, -1], [Int.max, 2], [1 << 32, 1 << 32]] {
            #expect(throws: TensorError.self, "shape \(shape)") { try workspace.tensor(engine, shape) }
            #expect(throws: TensorError.self, "shape \(shape)") { try workspace.tensorAtBufferStart(engine, shape) }
        }
    }
}

@Suite("Elementwise kernels")
struct ElementwiseTests {
    static let counts = [1, 3, 17, 65, 197, 4099, 1_000_003]

    @Test(arguments: counts)
    func fillMatchesLoop(count: Int) throws {
        let engine = try makeEngine()
        let tensor = try engine.tensor(sampleValues(count), shape: [count])
        try engine.fill(tensor, with: -2.75)
        #expect(try tensor.download() == [Float](repeating: -2.75, count: count))
    }

    @Test(arguments: counts)
    func addMatchesLoop(count: Int) throws {
        let engine = try makeEngine()
        let a = sampleValues(count, seed: 1), b = sampleValues(count, seed: 2)
        let sum = try engine.add(try engine.tensor(a, shape: [count]), try engine.tensor(b, shape: [count]))
        var expected = [Float](repeating: 0, count: count)
        for i in 0..<count { expected[i] = a[i] + b[i] }
        #expect(try sum.download() == expected)
    }

    @Test(arguments: counts)
    func scaleMatchesLoop(count: Int) throws {
        let engine = try makeEngine()
        let x = sampleValues(count, seed: 3)
        let tensor = try engine.tensor(x, shape: [count])
        try engine.scale(tensor, by: 0.3, into: tensor)  // in place
        var expected = [Float](repeating: 0, count: count)
        for i in 0..<count { expected[i] = 0.3 * x[i] }
        #expect(try tensor.download() == expected)
    }

    @Test(arguments: counts)
    func copyMatchesLoop(count: Int) throws {
        let engine = try makeEngine()
        let x = sampleValues(count, seed: 4)
        let destination = try engine.zeros([count])
        try engine.copy(try engine.tensor(x, shape: [count]), into: destination)
        #expect(try destination.download() == x)
    }

    @Test func opsOnViewsTouchOnlyTheirRanges() throws {
        let engine = try makeEngine()
        let values = sampleValues(60)
        let base = try engine.tensor(values, shape: [60])
        let left = try base.view(offset: 0, shape: [20])
        let middle = try base.view(offset: 20, shape: [20])
        let right = try base.view(offset: 40, shape: [20])
        try engine.add(left, middle, into: right)
        try engine.scale(middle, by: -1, into: middle)
        try engine.fill(try base.view(offset: 0, shape: [1]), with: 42)

        var expected = values
        for i in 0..<20 { expected[40 + i] = values[i] + values[20 + i] }
        for i in 20..<40 { expected[i] = -values[i] }
        expected[0] = 42
        #expect(try base.download() == expected)
    }

    @Test func mismatchedShapesAreRejectedBeforeLaunch() throws {
        let engine = try makeEngine()
        let a = try engine.zeros([3, 4]), b = try engine.zeros([4, 3])
        let error = try #require(throws: TensorError.self) { try engine.add(a, b, into: a) }
        #expect(error.description.contains("add"))
        #expect(error.description.contains("[3, 4]") && error.description.contains("[4, 3]"))
        #expect(throws: TensorError.self) { try engine.copy(a, into: try engine.zeros([12])) }
    }

    @Test func tensorsOfAnotherEngineAreRejected() throws {
        let first = try makeEngine(), second = try makeEngine()
        let a = try first.zeros([5]), b = try second.zeros([5])
        #expect(throws: TensorError.foreignEngine(operation: "add")) { try first.add(a, b, into: a) }
    }
}

@Suite("README")
struct ReadmeTests {
    /// The library example in README.md, kept honest.
    @Test func libraryExampleComputesWhatTheReadmeSays() throws {
        let engine = try makeEngine()
        let a = try engine.tensor([1, 2, 3, 4, 5, 6], shape: [2, 3])
        let b = try engine.zeros([2, 3])
        try engine.fill(b, with: 0.5)
        let c = try engine.add(a, b)
        try engine.scale(c, by: 2, into: c)
        let row = try c.view(offset: 3, shape: [3])
        #expect(try row.download() == [9, 11, 13])
    }
}

@Suite("Strided copy")
struct StridedCopyTests {
    @Test func gathersScalesAndAccumulatesRows() throws {
        let engine = try makeEngine()
        let (batch, tokens, width) = (3, 5, 4)
        let x = sampleValues(batch * tokens * width)
        let tokensT = try engine.tensor(x, shape: [batch * tokens, width])
        let cls = try engine.tensor([Float](repeating: 1, count: batch * width), shape: [batch, width])
        // The cls row of every image: rows tokens * width apart.
        try engine.copy(try StridedMatrix(tokensT, rows: batch, columns: width, rowStride: tokens * width),
                        into: try StridedMatrix(cls, rows: batch, columns: width, rowStride: width), alpha: 2, accumulate: true)
        var expected: [Float] = []
        for b in 0..<batch {
            for c in 0..<width { expected.append(1 + 2 * x[b * tokens * width + c]) }
        }
        #expect(try cls.download() == expected)
        #expect(throws: TensorError.self) {
            try engine.copy(try StridedMatrix(tokensT, rows: 2, columns: width, rowStride: width),
                            into: try StridedMatrix(cls, rows: 3, columns: width, rowStride: width))
        }
    }
}
