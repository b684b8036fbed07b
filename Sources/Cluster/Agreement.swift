import Foundation
import Synchronization

extension Communicator {
    /// Every rank's configuration against rank 0's, field by field (names and values as text).
    /// Throws on the first rank that differs, naming the field and both values.
    public func checkSameConfiguration(_ fields: [(name: String, value: String)]) throws {
        guard isDistributed else { return }
        let mine = fields.map { [$0.name, $0.value] }
        let root = try broadcast(mine)
        for (index, field) in mine.enumerated() {
            guard index < root.count, root[index][0] == field[0] else {
                throw ClusterError("rank \(rank): its configuration has other fields than rank 0's (a different sloragpu version?): \(field[0]) where rank 0 has \(index < root.count ? root[index][0] : "nothing")")
            }
            guard root[index][1] == field[1] else {
                throw ClusterError("rank \(rank): its configuration differs from rank 0's in \(field[0]): rank 0 has \(root[index][1]), rank \(rank) has \(field[1])")
            }
        }
        guard root.count == mine.count else { throw ClusterError("rank \(rank): rank 0's configuration has \(root.count) fields, this rank's \(mine.count)") }
    }

    /// Verifies that every rank holds the same `checksum` of `what`; throws naming the ranks
    /// that differ from rank 0.
    public func checkIdentical(_ checksum: UInt64, what: String) throws {
        guard isDistributed else { return }
        // Each rank fills its own two slots (32-bit halves, exact in a Double); the sum is
        // an all-gather.
        var slots = [Double](repeating: 0, count: 2 * size)
        slots[2 * rank] = Double(checksum >> 32)
        slots[2 * rank + 1] = Double(checksum & 0xFFFF_FFFF)
        try sumInRankOrder(&slots)
        let sums = (0..<size).map { UInt64(slots[2 * $0]) << 32 | UInt64(slots[2 * $0 + 1]) }
        let differing = sums.indices.filter { sums[$0] != sums[0] }
        guard differing.isEmpty else {
            throw ClusterError("rank \(rank): \(what) differ between ranks: rank\(differing.count == 1 ? "" : "s") \(differing.map(String.init).joined(separator: ", ")) \(differing.count == 1 ? "does" : "do") not match rank 0 (checksums \(sums.map { String($0, radix: 16) }.joined(separator: " ")))")
        }
    }
}

/// FNV-1a over the bit patterns of `values`: equal only for bitwise-equal arrays (in practice).
public func checksum(_ values: [Float], into hash: inout UInt64) {
    for value in values {
        var bits = UInt64(value.bitPattern)
        for _ in 0..<4 {
            hash = (hash ^ (bits & 0xFF)) &* 0x0000_0100_0000_01B3
            bits >>= 8
        }
    }
}

public func checksum(bytes: [UInt8], into hash: inout UInt64) {
    for byte in bytes { hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01B3 }
}

public let checksumSeed: UInt64 = 0xCBF2_9CE4_8422_2325

/// Ends a rank whose work has not advanced for `timeout` seconds: a hung rank (or one waiting
/// in a collective for a hung peer) would otherwise wait forever, since Open MPI 4 has no
/// fault tolerance. `beat` marks progress; the checks run on their own thread and start at
/// the first beat.
public final class Watchdog: Sendable {
    public let timeout: Double
    private final class Shared: Sendable {
        let progress = Mutex<(beats: Int, label: String)>((0, "starting"))
        let stopped = Atomic<Bool>(false)
    }
    private let shared = Shared()

    /// `expire` runs once on the watchdog's thread with what was last reported (it should not
    /// return: it ends the job).
    public init(timeout: Double, expire: @escaping @Sendable (String) -> Void) {
        self.timeout = timeout
        let thread = Thread { [shared] in
            var last = -1, since = Date()
            while !shared.stopped.load(ordering: .relaxed) {
                Thread.sleep(forTimeInterval: min(1, timeout / 4))
                let (beats, label) = shared.progress.withLock { $0 }
                // Armed by the first beat: what comes before it (loading, compiling kernels in
                // the first step) takes as long as it takes.
                if beats != last || beats == 0 { (last, since) = (beats, Date()); continue }
                if Date().timeIntervalSince(since) >= timeout, !shared.stopped.load(ordering: .relaxed) {
                    expire(label)
                    return
                }
            }
        }
        thread.name = "sloragpu.watchdog"
        thread.start()
    }

    public func beat(_ label: String) { shared.progress.withLock { $0 = ($0.beats &+ 1, label) } }

    public func stop() { shared.stopped.store(true, ordering: .relaxed) }
}

/// Failures a test injects on one rank (SLORAGPU_INJECT_FAULT=RANK:STEP:KIND): at the start of
/// optimizer step STEP, rank RANK is killed (SIGKILL), exits 3 without ending MPI, throws,
/// hangs, trains on non-finite images, or moves one trainable parameter by one ulp (drift).
public enum InjectedFault: String, Sendable {
    case kill, exit, `throw`, hang, nan, drift

    public static let environmentVariable = "SLORAGPU_INJECT_FAULT"

    /// The fault planned for (rank, step) by the environment, if any.
    public static func planned(_ environment: [String: String] = ProcessInfo.processInfo.environment) throws -> (rank: Int, step: Int, fault: InjectedFault)? {
        guard let text = environment[environmentVariable] else { return nil }
        let parts = text.split(separator: ":").map(String.init)
        guard parts.count == 3, let rank = Int(parts[0]), let step = Int(parts[1]), let fault = InjectedFault(rawValue: parts[2]) else {
            throw ClusterError("\(environmentVariable)=\(text): expected RANK:STEP:KIND with KIND one of kill, exit, throw, hang, nan, drift")
        }
        return (rank, step, fault)
    }

    /// Acts out every fault but `nan` and `drift` (which the trainer applies to its data and parameters).
    public func strike(rank: Int, step: Int) throws {
        switch self {
        case .kill: raise(SIGKILL)
        case .exit: Foundation.exit(3)
        case .throw: throw ClusterError("rank \(rank): injected failure at step \(step)")
        case .hang: while true { Thread.sleep(forTimeInterval: 3600) }
        case .nan, .drift: break
        }
    }
}
