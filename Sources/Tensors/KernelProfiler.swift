import CLRuntime

/// Per-kernel device time from event profiling. While an engine has a profiler, every launch
/// keeps its event; `summary()` waits for them and adds up start-to-end times by kernel name.
public final class KernelProfiler {
    public struct Entry: Sendable {
        public let kernel: String
        public var launches: Int
        public var seconds: Double
    }

    private var pending: [(String, Event)] = []
    private var totals: [String: Entry] = [:]

    public init() {}

    func record(_ kernel: String, _ event: Event) { pending.append((kernel, event)) }

    /// Totals so far, most expensive first.
    public func summary() throws -> [Entry] {
        for (name, event) in pending {
            try event.wait()
            let seconds = try event.profilingTimes().executionSeconds
            totals[name, default: Entry(kernel: name, launches: 0, seconds: 0)].launches += 1
            totals[name]!.seconds += seconds
        }
        pending.removeAll()
        return totals.values.sorted { $0.seconds > $1.seconds }
    }

    public func reset() {
        pending.removeAll()
        totals.removeAll()
    }
}

extension Engine {
    /// Every launcher enqueues through here, so profiling sees every kernel.
    @discardableResult
    func enqueue(_ kernel: Kernel, global: [Int], local: [Int]? = nil) throws -> Event {
        let event = try queue.enqueue(kernel, global: global, local: local)
        profiler?.record(kernel.name, event)
        return event
    }
}
