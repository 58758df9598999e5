import NIOCore

/// Runs Swift tasks' jobs on one NIO event loop.
///
/// Why: a connection's task would otherwise run on the global concurrent executor, so every await on
/// the channel (a request part in, a response part out) hops between the event loop thread and a
/// dispatch worker, with a wake-up and a context switch each way. With this executor as the task's
/// preference (`withTaskExecutorPreference`), the task runs on the thread that owns its socket:
/// reads and writes are plain calls on that thread, and only the upstream's answer crosses threads.
///
/// The swift-nio in use here (2.101) has no such executor built in; this is the small adapter.
final class EventLoopExecutor: TaskExecutor {
    let eventLoop: any EventLoop

    init(_ eventLoop: any EventLoop) {
        self.eventLoop = eventLoop
    }

    func enqueue(_ job: consuming ExecutorJob) {
        let job = UnownedJob(job)
        eventLoop.execute {
            job.runSynchronously(on: self.asUnownedTaskExecutor())
        }
    }
}
