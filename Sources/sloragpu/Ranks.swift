import ArgumentParser
import Cluster
import Foundation

/// Runs `body` as this process's rank of the job the launcher started (one process without
/// one). With several ranks every way out is collective: success ends MPI cleanly on every
/// rank; an error is printed with the rank's number and ends the whole job through
/// MPI_Abort with the error's exit code (a plain exit before MPI_Finalize can read as
/// success under some launchers); an agreed interrupt (all ranks stopped at the same step and
/// rank 0 saved) ends MPI and exits with its code.
func runAsRank<Command: ParsableCommand>(_ command: Command.Type, _ body: (Communicator) throws -> Void) throws {
    let communicator = try Cluster.join()
    // `mpirun -np 1` is MPI too: it must end with MPI_Finalize or MPI_Abort like any job.
    guard !(communicator is SingleProcess) else { return try body(communicator) }
    do {
        try body(communicator)
        try communicator.finish()
    } catch let exit as ExitCode where exit == ExitCode(130) || exit == ExitCode(143) {
        try communicator.finish()
        throw exit
    } catch {
        let code = Command.exitCode(for: error)
        let message = Command.message(for: error)
        // Library errors of a rank already name it.
        let prefix = "rank \(communicator.rank): "
        if !message.isEmpty {
            FileHandle.standardError.write(Data("\(prefix)error: \(message.hasPrefix(prefix) ? String(message.dropFirst(prefix.count)) : message)\n".utf8))
        }
        communicator.abort(code: code.rawValue == 0 ? 1 : code.rawValue)
    }
}

/// Ends the job when this rank's work stops advancing (a hang here, or a wait for a hung peer).
func startWatchdog(_ communicator: Communicator, seconds: Double) -> Watchdog? {
    guard communicator.isDistributed, seconds > 0 else { return nil }
    return Watchdog(timeout: seconds) { last in
        FileHandle.standardError.write(Data("rank \(communicator.rank): error: no progress for \(Int(seconds)) s (last: \(last)); ending the job (--watchdog sets the limit)\n".utf8))
        communicator.abort(code: 124)
    }
}
