import Foundation

/// The collectives data-parallel training needs, over whatever runs the ranks: one process
/// (`SingleProcess`) or MPI (`MPICommunicator`, with the package trait MPI). Every call is
/// collective: all ranks make the same calls in the same order.
public protocol Communicator: AnyObject, Sendable {
    /// This process's rank in 0..<size.
    var rank: Int { get }
    var size: Int { get }
    /// This rank among the ranks on its machine, which picks its device.
    var localRank: Int { get }
    /// Every rank's `values` (the same count on each), summed element by element in rank
    /// order 0, 1, ..., size-1 on every rank, so that all ranks get bitwise the same sums
    /// (an MPI all-reduce may add in a rank-dependent order: open-mpi/ompi#11721).
    func sumInRankOrder(_ values: inout [Float]) throws
    func sumInRankOrder(_ values: inout [Double]) throws
    /// `root`'s bytes on every rank (any length; the others' `bytes` are replaced).
    func broadcast(_ bytes: inout [UInt8], root: Int) throws
    func barrier() throws
    /// Ends every rank of the job with `code` (never returns). A plain exit is not enough:
    /// under some launchers an exit before MPI_Finalize reads as success.
    func abort(code: Int32) -> Never
    /// The end of a successful run (MPI_Finalize).
    func finish() throws
}

extension Communicator {
    public var isRoot: Bool { rank == 0 }
    public var isDistributed: Bool { size > 1 }

    /// `root`'s value of a Codable on every rank.
    public func broadcast<Value: Codable>(_ value: Value, root: Int = 0) throws -> Value {
        var bytes = rank == root ? [UInt8](try JSONEncoder().encode(value)) : []
        try broadcast(&bytes, root: root)
        do { return try JSONDecoder().decode(Value.self, from: Data(bytes)) } catch {
            throw ClusterError("rank \(rank): the value broadcast by rank \(root) does not decode as \(Value.self): \(error)")
        }
    }

    /// `root`'s floats on every rank; their count must match.
    public func broadcast(_ values: inout [Float], root: Int = 0) throws {
        var bytes = values.withUnsafeBytes { [UInt8]($0) }
        try broadcast(&bytes, root: root)
        guard bytes.count == values.count * MemoryLayout<Float>.size else {
            throw ClusterError("rank \(rank): rank \(root) broadcast \(bytes.count / 4) values where this rank holds \(values.count)")
        }
        values.withUnsafeMutableBytes { $0.copyBytes(from: bytes) }
    }
}

public struct ClusterError: Error, CustomStringConvertible, Equatable {
    public let description: String
    public init(_ description: String) { self.description = description }
}

/// One process: every collective is the identity.
public final class SingleProcess: Communicator {
    public init() {}
    public var rank: Int { 0 }
    public var size: Int { 1 }
    public var localRank: Int { 0 }
    public func sumInRankOrder(_ values: inout [Float]) throws {}
    public func sumInRankOrder(_ values: inout [Double]) throws {}
    public func broadcast(_ bytes: inout [UInt8], root: Int) throws {}
    public func barrier() throws {}
    public func abort(code: Int32) -> Never { exit(code) }
    public func finish() throws {}
}

/// Sums `size` rank-ordered slices of `gathered` into `values`, in rank order.
func sumSlices<Element: FloatingPoint>(_ gathered: [Element], into values: inout [Element], size: Int) {
    let count = values.count
    gathered.withUnsafeBufferPointer { all in
        values.withUnsafeMutableBufferPointer { out in
            for i in 0..<count { out[i] = all[i] }
            for rank in 1..<max(size, 1) {
                let base = rank * count
                for i in 0..<count { out[i] += all[base + i] }
            }
        }
    }
}
