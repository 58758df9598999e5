// What other threads ask the engine thread to do: the commands, their queue and the wakeup.

import Glibc
import Synchronization

extension CurlEventLoop {
    /// What other threads ask the engine thread to do.
    enum Command: Sendable {
        /// Attach the transfer; resume the continuation with the head or the failure.
        case start(UpstreamTransfer, HeadContinuation)
        /// The body consumer drained below the low watermark.
        case resume(UpstreamTransfer)
        /// The caller gave up (task cancelled, body dropped). Harmless if already over.
        case cancel(UpstreamTransfer)
        /// End every transfer with `.shuttingDown`, clean up all handles, exit the thread.
        case shutdown
    }

    struct Inbox {
        var commands: [Command] = []
        var accepting = false
    }

    /// Hands a command to the engine thread. Returns false once the loop stopped accepting (shutdown,
    /// or never started); the caller then owns the consequences (e.g. fails its own continuation).
    @discardableResult
    func enqueue(_ command: Command) -> Bool {
        let (accepted, mustWake) = inbox.withLock { inbox -> (Bool, Bool) in
            guard inbox.accepting else { return (false, false) }
            if case .shutdown = command { inbox.accepting = false }
            inbox.commands.append(command)
            // Only the first command of a batch needs a wakeup; the loop takes the whole batch.
            return (true, inbox.commands.count == 1)
        }
        if mustWake {
            var one: UInt64 = 1
            _ = write(wakeFD, &one, MemoryLayout<UInt64>.size)
        }
        return accepted
    }

    func runCommands() {
        let batch = inbox.withLock { inbox -> [Command] in
            var taken: [Command] = []
            swap(&taken, &inbox.commands)
            return taken
        }
        for command in batch {
            switch command {
            case .start(let transfer, let continuation):
                start(transfer, continuation)
            case .resume(let transfer):
                resume(transfer)
            case .cancel(let transfer):
                end(transfer, .failure(UpstreamError(kind: .cancelled, detail: "cancelled by the caller")))
            case .shutdown:
                stopping = true
                failAll(UpstreamError(kind: .shuttingDown, detail: "the upstream engine is shutting down"))
            }
        }
    }
}
