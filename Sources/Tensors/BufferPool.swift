import CLRuntime

/// Reuses device buffers of freed tensors. Requests are rounded up to a size class so that
/// tensors of similar sizes share buffers across steps: below 1 MiB, powers of two and their
/// midpoints 1.5 x 2^k (at least 256 bytes; waste at most a third); from 1 MiB, eight classes
/// per octave (waste at most an eighth), because the large buffers are the saved activations
/// and a third of those was 140 MB of a ViT-S step.
public final class BufferPool {
    public let context: Context

    public struct Statistics: Sendable, Equatable {
        /// Buffers created with clCreateBuffer.
        public var allocations = 0
        /// Requests served from the free lists.
        public var reuses = 0
        /// Bytes in buffers currently held by tensors.
        public var liveBytes = 0
        /// Bytes in free buffers waiting for reuse.
        public var cachedBytes = 0
        /// The most bytes held at once, live and cached: the pool's share of the peak.
        public var peakBytes = 0
    }

    public private(set) var statistics = Statistics()
    private var freeBuffers: [Int: [Buffer]] = [:]

    init(context: Context) { self.context = context }

    public static func sizeClass(for byteCount: Int) -> Int {
        let minimum = 256
        guard byteCount > minimum else { return minimum }
        let power = 1 << (Int.bitWidth - (byteCount - 1).leadingZeroBitCount)  // next power of two >= byteCount
        if power > 1 << 20 {
            let step = power / 16                                                  // eighths of the octave below
            return (byteCount + step - 1) / step * step
        }
        let midpoint = power / 2 + power / 4
        return byteCount <= midpoint ? midpoint : power
    }

    func acquire(byteCount: Int) throws -> Buffer {
        let size = Self.sizeClass(for: byteCount)
        if let buffer = freeBuffers[size]?.popLast() {
            statistics.reuses += 1
            statistics.cachedBytes -= size
            statistics.liveBytes += size
            return buffer
        }
        let buffer: Buffer
        do {
            buffer = try Buffer(context: context, byteCount: size)
        } catch let error as CLError where error.status == -4 || error.status == -5 || error.status == -6 {
            // Out of device memory: give the cached buffers back and try once more.
            trim()
            buffer = try Buffer(context: context, byteCount: size)
        }
        statistics.allocations += 1
        statistics.liveBytes += size
        statistics.peakBytes = max(statistics.peakBytes, statistics.liveBytes + statistics.cachedBytes)
        return buffer
    }

    func release(_ buffer: Buffer) {
        statistics.liveBytes -= buffer.byteCount
        statistics.cachedBytes += buffer.byteCount
        freeBuffers[buffer.byteCount, default: []].append(buffer)
    }

    /// Frees every cached buffer (tensors still alive keep theirs).
    public func trim() {
        freeBuffers.removeAll()
        statistics.cachedBytes = 0
    }
}

/// Tensors whose values are dead for the length of one operation, lent to that operation's
/// temporaries so that they take no new buffers: each request is carved from the first lent
/// tensor with room left, or allocated as usual when none has room. Freed temporaries stay in
/// the pool for the next step, so without this every distinct temporary of a backward adds to
/// the peak even while a shared scratch buffer of the same size sits unused.
public final class Workspace {
    private var lent: [(tensor: Tensor, used: Int)]

    /// `tensors`: float32 tensors the caller will not read again before overwriting them.
    public init(lending tensors: [Tensor]) {
        lent = tensors.filter { $0.dtype == .float32 }.map { ($0, 0) }
    }

    /// Views start on 256-byte boundaries of the lent storage (the kernels load vectors).
    private static let alignment = 64

    /// A float32 tensor of `shape` at the very start of a lent buffer nothing was carved from
    /// yet, or nil: for kernels that address an operand from its buffer's start (the GEMM's
    /// packed panels).
    func tensorAtBufferStart(_ engine: Engine, _ shape: [Int]) throws -> Tensor? {
        try Tensor.validate(shape)
        let count = shape.reduce(1, *)
        guard let index = lent.indices.first(where: {
            lent[$0].tensor.engine === engine && lent[$0].tensor.offset == 0 && lent[$0].used == 0 && count <= lent[$0].tensor.count
        }) else { return nil }
        lent[index].used = count
        return try lent[index].tensor.view(offset: 0, shape: shape)
    }

    /// A float32 tensor of `shape` with undefined contents.
    public func tensor(_ engine: Engine, _ shape: [Int]) throws -> Tensor {
        try Tensor.validate(shape)
        let count = shape.reduce(1, *)
        for index in lent.indices where lent[index].tensor.engine === engine {
            let start = roundUp(lent[index].used, Self.alignment)
            // The lent tensor's own offset may not be aligned; align the absolute position.
            let misalignment = (lent[index].tensor.offset + start) % Self.alignment
            let begin = misalignment == 0 ? start : start + Self.alignment - misalignment
            guard begin <= lent[index].tensor.count, count <= lent[index].tensor.count - begin else { continue }
            lent[index].used = begin + count
            return try lent[index].tensor.view(offset: begin, shape: shape)
        }
        return try engine.empty(shape)
    }
}

extension Engine {
    /// A float32 temporary from the workspace when one is lent and has room, else from the pool.
    func temporary(_ shape: [Int], _ workspace: Workspace?) throws -> Tensor {
        try workspace?.tensor(self, shape) ?? empty(shape)
    }
}
