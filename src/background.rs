//! Background work that must not take the CPU from the window: training, experiments and
//! re-inference run at a lower scheduling priority, in a compute pool of their own, so the UI
//! thread and the rasteriser (Mesa's llvmpipe renders on the CPU) win every contended core.
//! On Linux the threads join the `SCHED_IDLE` class: they run on any core the window leaves
//! idle and give it up at once when the window wakes (plain niceness, tried first, still let
//! training delay frames by a scheduler slice: p99 frame time 39–49 ms instead of 33–36 ms in
//! `mriloop bench loop` on a 2-core machine). While the window draws without pause (the user
//! scrolls on a CPU rasteriser) training slows; it takes the cores back as soon as the window
//! idles, which it does between events.
//!
//! Invariant: only the threads this module creates (and the thread that calls
//! [`run_in_background`]) are lowered; the process's other threads keep their priority. On
//! systems without per-thread priorities the work simply runs at normal priority.

/// Niceness given to background threads: on Linux a nice-10 thread gets about a tenth of a
/// core that a nice-0 thread also wants, and all of an idle one.
pub const BACKGROUND_NICENESS: i32 = 10;

/// Lower the calling thread's scheduling priority: the `SCHED_IDLE` class and
/// [`BACKGROUND_NICENESS`] (Linux). Returns whether the priority was changed.
pub fn lower_current_thread_priority() -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid, sched_setscheduler and setpriority take plain integers and a
        // pointer to a local; on Linux, pid 0 and PRIO_PROCESS with a thread id change only
        // the calling thread.
        unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            let param = libc::sched_param { sched_priority: 0 };
            let idle = libc::sched_setscheduler(0, libc::SCHED_IDLE, &param) == 0;
            let nice = libc::setpriority(libc::PRIO_PROCESS, tid, BACKGROUND_NICENESS) == 0;
            idle || nice
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

/// Whether the calling thread is in the `SCHED_IDLE` class (Linux), for tests and notes.
pub fn current_thread_is_idle_class() -> Option<bool> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: sched_getscheduler takes a plain integer (0: the calling thread).
        let policy = unsafe { libc::sched_getscheduler(0) };
        (policy >= 0).then_some(policy == libc::SCHED_IDLE)
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}
