import CLRuntime

/// Per-kernel device time from event profiling. While an engine has a profiler, every launch
/// keeps its event; `summary()` waits for them and adds up start-to-end times by kernel name.
public final class KernelProfiler {
    public struct Entry: Sendable {
        /// The kernel's name, after "scope/" when launched inside `Engine.withProfileScope`.
        public let kernel: String
        public var launches: Int
        public var seconds: Double
        /// What the launches did, as their launchers count it (0 where not counted).
        public var work = KernelWork()
    }

    private var pending: [(String, Event, KernelWork)] = []
    private var totals: [String: Entry] = [:]

    public init() {}

    func record(_ kernel: String, _ event: Event, _ work: KernelWork) { pending.append((kernel, event, work)) }

    /// Totals so far, most expensive first.
    public func summary() throws -> [Entry] {
        for (name, event, work) in pending {
            try event.wait()
            let seconds = try event.profilingTimes().executionSeconds
            totals[name, default: Entry(kernel: name, launches: 0, seconds: 0)].launches += 1
            totals[name]!.seconds += seconds
            totals[name]!.work.flops += work.flops
            totals[name]!.work.bytes += work.bytes
            totals[name]!.work.bf16Flops += work.bf16Flops
        }
        pending.removeAll()
        return totals.values.sorted { $0.seconds > $1.seconds }
    }

    public func reset() {
        pending.removeAll()
        totals.removeAll()
    }
}

/// Floating-point operations and bytes of device memory moved by a launch, for rates against
/// the device's ceilings (a multiply-add is 2 FLOPs; bytes count each operand read or written once).
public struct KernelWork: Sendable {
    public var flops: Double = 0
    public var bytes: Double = 0
    /// Of `flops`, those done by bf16 dot products (`MatmulPrecision.bf16`), whose peak differs.
    public var bf16Flops: Double = 0

    public init(flops: Double = 0, bytes: Double = 0, bf16Flops: Double = 0) { (self.flops, self.bytes, self.bf16Flops) = (flops, bytes, bf16Flops) }

    /// `count` float32 values read or written.
    static func floats(_ count: Int) -> KernelWork { KernelWork(bytes: 4 * Double(count)) }
}

extension Engine {
    /// Every launcher enqueues through here, so profiling sees every kernel.
    @discardableResult
    func enqueue(_ kernel: Kernel, global: [Int], local: [Int]? = nil, work: KernelWork = KernelWork()) throws -> Event {
        let event = try queue.enqueue(kernel, global: global, local: local)
        profiler?.record(profileScope.map { "\($0)/\(kernel.name)" } ?? kernel.name, event, work)
        return event
    }

    /// Runs `body` with its launches reported as "scope/kernel" (e.g. the adapter's own GEMMs
    /// apart from the frozen ones); nil leaves the names as they are.
    public func withProfileScope<Result>(_ scope: String?, _ body: () throws -> Result) rethrows -> Result {
        let outer = profileScope
        profileScope = scope ?? outer
        defer { profileScope = outer }
        return try body()
    }
}
