//! Where a CPU training loop runs: on a worker thread of the rayon pool that its parallel
//! kernels use. A parallel loop started from a thread outside the pool is handed over to the
//! workers while the caller sleeps on a lock, and the caller is woken again when it ends: two
//! thread wake-ups per loop, a few hundred loops per training step, each a system call and on a
//! virtual machine an inter-processor interrupt. Started from a worker, the loop's first share
//! runs on the thread that started it and only the idle workers are woken (`mriloop bench
//! train`, 2 cores: the kernel's wake-up path fell from 10 % to 1.5 % of the samples).
//!
//! A caller outside any pool gets a pool of its own (as many threads as the global pool), not
//! the global one: a whole training loop queued on shared workers would wait for another
//! caller's loop to finish, and a worker waiting inside one loop could take up another's whole
//! loop, so concurrent runs (an experiment's tests, a budgeted run's clock) would stall each
//! other.
//!
//! Invariant: [`on_worker`] runs `work` exactly once, on a worker of a pool no other caller's
//! work runs on (its own, or the pool of a caller already inside one), and returns what it
//! returns; a panic in `work` reaches the caller.

/// Run `work` on a worker of a rayon pool (at once, if the calling thread is one; else in a
/// pool of its own), blocking the caller until it returns.
pub fn on_worker<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    if rayon::current_thread_index().is_some() {
        return work();
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(rayon::current_num_threads())
        .thread_name(|i| format!("mriloop-train-{i}"))
        .build();
    match pool {
        Ok(pool) => pool.install(work),
        Err(_) => work(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Condvar, Mutex};
    use std::time::Duration;

    #[test]
    fn work_runs_once_on_a_pool_worker() {
        assert!(rayon::current_thread_index().is_none());
        let mut runs = 0;
        let on_pool = on_worker(|| {
            runs += 1;
            rayon::current_thread_index().is_some()
        });
        assert!(on_pool);
        assert_eq!(runs, 1);
    }

    #[test]
    fn inside_a_pool_the_work_stays_on_the_calling_worker() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .expect("pool");
        pool.install(|| {
            let here = std::thread::current().id();
            assert_eq!(on_worker(|| std::thread::current().id()), here);
        });
    }

    #[test]
    fn a_panic_in_the_work_reaches_the_caller() {
        let caught = std::panic::catch_unwind(|| on_worker(|| panic!("inside")));
        assert!(caught.is_err());
    }

    /// More callers than the global pool has threads all run at once: none waits for a worker
    /// another caller's work holds.
    #[test]
    fn concurrent_callers_do_not_wait_for_each_other() {
        let callers = rayon::current_num_threads() + 2;
        let arrived = (Mutex::new(0usize), Condvar::new());
        let all_met: Vec<bool> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..callers)
                .map(|_| {
                    scope.spawn(|| {
                        on_worker(|| {
                            let (count, wake) = &arrived;
                            let mut n = count.lock().expect("lock");
                            *n += 1;
                            wake.notify_all();
                            let (n, timeout) = wake
                                .wait_timeout_while(n, Duration::from_secs(20), |n| *n < callers)
                                .expect("wait");
                            *n >= callers && !timeout.timed_out()
                        })
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("caller"))
                .collect()
        });
        assert!(all_met.iter().all(|&met| met), "{all_met:?}");
    }
}
