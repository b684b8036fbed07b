import Foundation
import Synchronization
import Testing
@testable import Cluster
@testable import Datasets
@testable import Training

/// The pieces of data-parallel training that need no second process.
@Suite("Cluster: shards, parts, rank-order sums, launchers, injected faults")
struct ClusterTests {
    static func dataset(_ count: Int) throws -> ImageDataset {
        try ImageDataset(name: "d", height: 2, width: 2, channels: 1, classNames: ["a", "b"],
                         pixels: (0..<count * 4).map { UInt8($0 % 251) }, labels: (0..<count).map { Int32($0 % 2) })
    }

    @Test(arguments: [(10, 3), (7, 2), (2, 4), (128, 2), (5, 1)])
    func shardsCoverEveryImageOnce(count: Int, shards: Int) throws {
        let whole = try Self.dataset(count)
        let parts = (0..<shards).map { whole.shard($0, of: shards) }
        #expect(parts.flatMap(\.pixels) == whole.pixels)
        #expect(parts.flatMap(\.labels) == whole.labels)
        #expect((parts.map(\.count).max() ?? 0) - (parts.map(\.count).min() ?? 0) <= 1)
    }

    @Test func loaderPartsAreContiguousSlicesOfTheWholeBatch() throws {
        let data = try Self.dataset(24)
        let preprocessor = Preprocessor(outputSize: 2, mean: [0, 0, 0], std: [1, 1, 1])
        func loader(_ part: (Int, Int)) throws -> BatchLoader {
            try BatchLoader(dataset: data, preprocessor: preprocessor, batchSize: 8, shuffle: true, augment: true, seed: 5, repeats: true,
                            position: LoaderPosition(epoch: 1, batch: 2), part: part)
        }
        let whole = try loader((0, 1)), halves = [try loader((0, 2)), try loader((1, 2))]
        for _ in 0..<4 {  // across an epoch boundary (3 batches per epoch)
            let full = try #require(whole.next())
            let parts = halves.map { $0.next()! }
            #expect(parts.flatMap(\.labels) == full.labels)
            #expect(parts.flatMap(\.images) == full.images)
            #expect(halves.allSatisfy { $0.position == whole.position })
        }
        #expect(throws: DatasetError.self) { try loader((0, 3)) }  // 8 does not split into 3
    }

    @Test func rankOrderSumsAddSlicesInOrder() {
        var values: [Float] = [0, 0, 0]
        sumSlices([1, 2, 3, 1e8, -1e8, 0.5, -1e8, 1e8, 0.25], into: &values, size: 3)
        // (1 + 1e8) - 1e8 = 0 in fp32: the order is rank 0, 1, 2, whatever the values.
        #expect(values == [0, 2 + 1e8 - 1e8, 3.75])
    }

    @Test func singleProcessCollectivesAreTheIdentity() throws {
        let one = SingleProcess()
        var values: [Float] = [1, 2]
        try one.sumInRankOrder(&values)
        #expect(values == [1, 2] && one.size == 1 && one.isRoot && !one.isDistributed)
        #expect(try one.broadcast(["x": 3]) == ["x": 3])
        try one.checkSameConfiguration([("a", "1")])
        try one.checkIdentical(7, what: "x")
    }

    @Test func launchersAreReadFromTheEnvironment() throws {
        #expect(Launcher.detect([:]) == nil)
        #expect(Launcher.detect(["OMPI_COMM_WORLD_SIZE": "4"])?.size == 4)
        #expect(Launcher.detect(["PMI_SIZE": "2", "PMI_RANK": "1"])?.size == 2)
        #expect(Launcher.detect(["PMIX_RANK": "0"]) == Launcher(name: "a PMIx launcher", size: nil))
        // Without a launcher the job is this process, MPI or not.
        #expect(try Cluster.join([:]).size == 1)
    }

    @Test func injectedFaultsParseOrAreRefused() throws {
        #expect(try InjectedFault.planned([:]) == nil)
        let planned = try #require(try InjectedFault.planned([InjectedFault.environmentVariable: "1:3:hang"]))
        #expect(planned.rank == 1 && planned.step == 3 && planned.fault == .hang)
        for bad in ["1:3", "a:3:kill", "1:3:explode", "1:3:kill:4"] {
            #expect(throws: ClusterError.self) { try InjectedFault.planned([InjectedFault.environmentVariable: bad]) }
        }
    }

    @Test func evaluationTalliesRoundTripAndAdd() throws {
        var tally = EvaluationTally(classes: 2)
        tally.confusion = [[3, 1], [0, 4]]
        (tally.lossSum, tally.count) = (2.5, 8)
        #expect(EvaluationTally(classes: 2, flattened: tally.flattened) == tally)
        let doubled = EvaluationTally(classes: 2, flattened: zip(tally.flattened, tally.flattened).map { $0 + $1 })
        let result = try doubled.result(dataset: "d")
        #expect(result.count == 16 && result.accuracy == 14.0 / 16 && result.loss == 5.0 / 16)
    }

    /// Silent until armed; then beats 20x more often than the limit (the full suite loads both
    /// cores), then stops.
    @Test func theWatchdogFiresOnlyWithoutProgress() throws {
        let fired = Mutex<String?>(nil)
        let dog = Watchdog(timeout: 2) { label in fired.withLock { $0 = label } }
        defer { dog.stop() }
        Thread.sleep(forTimeInterval: 2.5)
        #expect(fired.withLock { $0 } == nil, "fired before it was armed")
        dog.arm()
        for i in 0..<10 {
            dog.beat("beat \(i)")
            Thread.sleep(forTimeInterval: 0.1)
        }
        #expect(fired.withLock { $0 } == nil)
        let deadline = Date().addingTimeInterval(30)
        while fired.withLock({ $0 }) == nil, Date() < deadline { Thread.sleep(forTimeInterval: 0.1) }
        #expect(fired.withLock { $0 } == "beat 9")
    }
}
