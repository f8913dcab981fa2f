//! Background work that must not take the CPU from the window: training, experiments and
//! re-inference run at a lower scheduling priority, in a compute pool of their own, so the UI
//! thread and the rasteriser (Mesa's llvmpipe renders on the CPU) win every contended core.
//!
//! Invariant: only the threads this module creates (and the thread that calls
//! [`run_in_background`]) are lowered; the process's other threads keep their priority. On
//! systems without per-thread priorities the work simply runs at normal priority.

/// Niceness given to background threads: on Linux a nice-10 thread gets about a tenth of a
/// core that a nice-0 thread also wants, and all of an idle one.
pub const BACKGROUND_NICENESS: i32 = 10;

/// Lower the calling thread's scheduling priority to [`BACKGROUND_NICENESS`].
/// Returns whether the priority was changed.
pub fn lower_current_thread_priority() -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and setpriority take plain integers and touch no memory of ours; on
        // Linux, PRIO_PROCESS with a thread id changes only that thread.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, BACKGROUND_NICENESS) == 0
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        false
    }
}

/// Run `work` at background priority: the calling thread is lowered, and every rayon
/// parallel loop inside `work` (burn's CPU kernels among them) runs in a pool of
/// `available cores − 1` lowered threads instead of the global pool. Call it from a worker
/// thread, never from the UI thread.
pub fn run_in_background<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    lower_current_thread_priority();
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(cores.saturating_sub(1).max(1))
        .thread_name(|i| format!("mriloop-background-{i}"))
        .start_handler(|_| {
            lower_current_thread_priority();
        })
        .build();
    match pool {
        Ok(pool) => pool.install(work),
        Err(_) => work(),
    }
}

/// The calling thread's niceness (Linux), for tests and benchmark notes.
pub fn current_thread_niceness() -> Option<i32> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: as above; getpriority may return -1 legitimately, so errno is cleared first.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            *libc::__errno_location() = 0;
            let n = libc::getpriority(libc::PRIO_PROCESS, tid);
            (*libc::__errno_location() == 0).then_some(n)
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}
