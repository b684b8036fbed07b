import Foundation
#if MPI
import CMPI
#endif

/// What started this process, read from the launcher's environment: nothing (a plain run),
/// or an MPI launcher that says how many ranks it started.
public struct Launcher: Equatable, Sendable {
    public var name: String
    /// Ranks the launcher started (nil: it does not say).
    public var size: Int?

    /// nil without a launcher. Open MPI's mpirun sets OMPI_COMM_WORLD_SIZE; MPICH's hydra and
    /// other PMI launchers PMI_SIZE; PMIx launchers (srun --mpi=pmix, prterun) PMIX_RANK.
    public static func detect(_ environment: [String: String] = ProcessInfo.processInfo.environment) -> Launcher? {
        if let size = environment["OMPI_COMM_WORLD_SIZE"] { return Launcher(name: "Open MPI's mpirun", size: Int(size)) }
        if let size = environment["PMI_SIZE"] { return Launcher(name: "a PMI launcher (MPICH's mpiexec, srun)", size: Int(size)) }
        if environment["PMIX_RANK"] != nil { return Launcher(name: "a PMIx launcher", size: nil) }
        return nil
    }
}

public enum Cluster {
    /// Whether this build can join an MPI job (the package trait MPI).
    public static var hasMPI: Bool {
        #if MPI
        true
        #else
        false
        #endif
    }

    /// The ranks this process trains with: one process without a launcher (MPI is not even
    /// initialised, so a plain run behaves exactly as a build without MPI); under a launcher,
    /// the MPI job. A launcher of N > 1 ranks whose MPI job has one rank (a binary linked to
    /// another MPI than the launcher's starts as N singletons) is an error, as is a launcher
    /// of several ranks for a build without MPI: either would train N independent copies.
    public static func join(_ environment: [String: String] = ProcessInfo.processInfo.environment) throws -> Communicator {
        guard let launcher = Launcher.detect(environment) else { return SingleProcess() }
        #if MPI
        let communicator = try MPICommunicator()
        if let expected = launcher.size, expected > 1, communicator.size != expected {
            let message = "started by \(launcher.name) as one of \(expected) ranks, but MPI sees a job of \(communicator.size): this binary is linked to Open MPI (pkg-config ompi-c); start it with that MPI's mpirun (/usr/bin/mpirun from openmpi-bin)"
            FileHandle.standardError.write(Data("error: \(message)\n".utf8))
            communicator.abort(code: 1)
        }
        return communicator
        #else
        if let expected = launcher.size, expected == 1 { return SingleProcess() }
        throw ClusterError("started by \(launcher.name)\(launcher.size.map { " as one of \($0) ranks" } ?? ""), but this build has no MPI (it was built without the package trait MPI): each rank would train alone. Rebuild with the default traits, or run without a launcher")
        #endif
    }
}

#if MPI
/// The MPI job this process belongs to (MPI_COMM_WORLD).
public final class MPICommunicator: Communicator {
    public let rank: Int
    public let size: Int
    public let localRank: Int
    public let localSize: Int
    /// What MPI_Init_thread provided (MPI_THREAD_MULTIPLE is 3).
    public let threadLevel: Int

    /// Collectives move at most this many elements per MPI call (MPI counts are Int32).
    static let chunk = 1 << 26

    init() throws {
        guard sloragpu_mpi_initialized() == 0 else { throw ClusterError("MPI is already initialised in this process") }
        let provided = sloragpu_mpi_init()
        guard provided >= 0 else { throw ClusterError("MPI_Init failed") }
        threadLevel = Int(provided)
        rank = Int(sloragpu_mpi_rank())
        size = Int(sloragpu_mpi_size())
        var local: Int32 = 0
        localRank = Int(sloragpu_mpi_local_rank(&local))
        localSize = Int(local)
        guard rank >= 0, size >= 1, localRank >= 0 else { throw ClusterError("MPI gave rank \(rank) of \(size), local rank \(localRank)") }
    }

    private func check(_ code: Int32, _ what: String) throws {
        guard code == 0 else { throw ClusterError("rank \(rank): \(what) failed (MPI error \(code))") }
    }

    public func sumInRankOrder(_ values: inout [Float]) throws {
        guard size > 1 else { return }
        try gatherAndSum(&values) { sloragpu_mpi_allgather_floats($0, $1, $2) }
    }

    public func sumInRankOrder(_ values: inout [Double]) throws {
        guard size > 1 else { return }
        try gatherAndSum(&values) { sloragpu_mpi_allgather_doubles($0, $1, $2) }
    }

    /// All-gather then add in rank order on every rank: the same sums everywhere by
    /// construction. The gathered copy is size times the buffer: a few MB for adapters.
    private func gatherAndSum<Element: FloatingPoint>(_ values: inout [Element],
                                                       _ gather: (UnsafePointer<Element>, UnsafeMutablePointer<Element>, Int32) -> Int32) throws {
        var start = 0
        while start < values.count {
            let count = min(Self.chunk, values.count - start)
            var gathered = [Element](repeating: 0, count: count * size)
            let code = values.withUnsafeBufferPointer { local in
                gathered.withUnsafeMutableBufferPointer { gather(local.baseAddress! + start, $0.baseAddress!, Int32(count)) }
            }
            try check(code, "the gradient all-gather")
            var part = Array(values[start..<start + count])
            sumSlices(gathered, into: &part, size: size)
            values.replaceSubrange(start..<start + count, with: part)
            start += count
        }
    }

    public func broadcast(_ bytes: inout [UInt8], root: Int) throws {
        guard size > 1 else { return }
        var length = Int64(bytes.count)
        try check(sloragpu_mpi_broadcast_int64(&length, Int32(root)), "a broadcast's length")
        if rank != root { bytes = [UInt8](repeating: 0, count: Int(length)) }
        var start = 0
        while start < bytes.count {
            let count = min(Self.chunk, bytes.count - start)
            let code = bytes.withUnsafeMutableBytes { sloragpu_mpi_broadcast_bytes($0.baseAddress! + start, Int32(count), Int32(root)) }
            try check(code, "a broadcast")
            start += count
        }
    }

    public func barrier() throws { try check(sloragpu_mpi_barrier(), "a barrier") }

    /// From a thread other than the main one (the watchdog's) MPI may only be called under
    /// MPI_THREAD_MULTIPLE; without it the rank exits, which the launcher also answers by ending
    /// the job (non-zero).
    public func abort(code: Int32) -> Never {
        fflush(nil)
        if Thread.isMainThread || threadLevel >= 3 { sloragpu_mpi_abort(code) }
        exit(code)
    }

    public func finish() throws { try check(sloragpu_mpi_finalize(), "MPI_Finalize") }
}
#endif
