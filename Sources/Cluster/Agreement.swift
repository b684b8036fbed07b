import Foundation
import Synchronization

extension Communicator {
    /// Every rank's configuration against rank 0's, field by field (names and values as text;
    /// a field one side lacks, such as an option that is off, reads "absent"). Throws on the
    /// first field that differs, naming it and both values.
    public func checkSameConfiguration(_ fields: [(name: String, value: String)]) throws {
        guard isDistributed else { return }
        let root = Dictionary(try broadcast(fields.map { [$0.name, $0.value] }).map { ($0[0], $0[1]) }) { first, _ in first }
        let mine = Dictionary(fields.map { ($0.name, $0.value) }) { first, _ in first }
        for name in fields.map(\.name) + root.keys.sorted() where root[name] != mine[name] {
            throw ClusterError("rank \(rank): its configuration differs from rank 0's in \(name): rank 0 has \(root[name] ?? "absent"), rank \(rank) has \(mine[name] ?? "absent")")
        }
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
/// fault tolerance. `beat` marks progress; the checks run on their own thread from `arm()` on
/// (the trainer arms it after the first step, which compiles kernels). A rank that marks itself
/// waiting in a collective gets a grace period on top, so that the rank that hung, not the
/// ones waiting for it, is the one that reports.
public final class Watchdog: Sendable {
    public let timeout: Double
    /// The extra time a rank waiting for its peers gets.
    public var grace: Double { max(2, timeout / 10) }
    private final class Shared: Sendable {
        let progress = Mutex<(label: String, at: Date, waiting: Bool, armed: Bool)>(("starting", Date(), false, false))
        let stopped = Atomic<Bool>(false)
    }
    private let shared = Shared()

    /// `expire` runs once on the watchdog's thread with what was last reported (it should not
    /// return: it ends the job).
    public init(timeout: Double, expire: @escaping @Sendable (String) -> Void) {
        self.timeout = timeout
        let grace = max(2, timeout / 10)
        let thread = Thread { [shared] in
            while !shared.stopped.load(ordering: .relaxed) {
                Thread.sleep(forTimeInterval: min(0.1, timeout / 10))
                let (label, at, waiting, armed) = shared.progress.withLock { $0 }
                guard armed else { continue }
                if Date().timeIntervalSince(at) >= timeout + (waiting ? grace : 0), !shared.stopped.load(ordering: .relaxed) {
                    expire(label)
                    return
                }
            }
        }
        thread.name = "sloragpu.watchdog"
        thread.start()
    }

    /// `waiting`: the rank is about to wait in a collective for the others.
    public func beat(_ label: String, waiting: Bool = false) {
        shared.progress.withLock { $0 = (label, Date(), waiting, $0.armed) }
    }

    /// Starts the checks (idempotent); the clock starts at the last beat.
    public func arm() { shared.progress.withLock { $0.armed = true } }

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
