//! Where a CPU training loop runs: on a worker thread of the rayon pool that its parallel
//! kernels use. A parallel loop started from a thread outside the pool is handed over to the
//! workers while the caller sleeps on a lock, and the caller is woken again when it ends: two
//! thread wake-ups per loop, a few hundred loops per training step, each a system call and on a
//! virtual machine an inter-processor interrupt. Started from a worker, the loop's first share
//! runs on the thread that started it and only the idle workers are woken (`mriloop bench
//! train`, 2 cores: the kernel's wake-up path fell from 10 % to 1.5 % of the samples).
//!
//! Invariant: [`on_worker`] runs `work` exactly once, on a worker of the pool that is current
//! for the caller (the global pool, or the pool of a caller already inside one), and returns
//! what it returns; a panic in `work` reaches the caller.

/// Run `work` on a worker of the current rayon pool (at once, if the calling thread is one),
/// blocking the caller until it returns.
pub fn on_worker<R: Send>(work: impl FnOnce() -> R + Send) -> R {
    match rayon::current_thread_index() {
        Some(_) => work(),
        None => rayon::scope(|_| work()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
