//! A failure on burn's GPU device threads, made visible instead of a silent hang.
//!
//! burn (through cubecl) runs each device's work on service threads of its own, named
//! `DSU-…`/`DSD-…`. A task that panics there is caught and only logged, and whatever waits for
//! its results waits forever: on an H200, a 128³ training step's matrix product asked Vulkan for
//! more workgroups than it allows, panicked inside burn's autotuning, and the step never
//! returned. [`install`] chains a panic hook that counts such failures and keeps the last one
//! ([`failures`], [`failure_since`]: the window ends a run that was going when one came) and,
//! for a headless command ([`OnFailure::Exit`]), ends the process with an error naming it.
//!
//! Invariants: the hook that was there before still runs for every panic; only panics on the
//! device threads are counted; the count only grows; the hook is installed once per process
//! (later calls keep the first action).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, Once};

use crate::worker::WorkerError;

/// What the hook does when a device thread panics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Record it for [`failure`] (the window: the user's work goes on).
    Record,
    /// Record it, print an error naming it and exit with status 3 (a headless command, which
    /// could only wait forever).
    Exit,
}

/// Exit status of a headless command whose GPU device thread failed.
pub const EXIT_STATUS: i32 = 3;

static COUNT: AtomicU64 = AtomicU64::new(0);
static LAST: Mutex<Option<String>> = Mutex::new(None);
static INSTALL: Once = Once::new();

/// How many device-thread failures were recorded so far (a run notes it when it starts).
pub fn failures() -> u64 {
    COUNT.load(Ordering::Acquire)
}

/// The last failure (the thread's name and the panic's message) if any came after `count`
/// ([`failures`] when the caller started).
pub fn failure_since(count: u64) -> Option<String> {
    if failures() <= count {
        return None;
    }
    let last = LAST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    last.clone()
}

/// Record a failure on `thread`.
fn record(thread: &str, message: &str) {
    let mut last = LAST
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    *last = Some(format!("{thread}: {message}"));
    COUNT.fetch_add(1, Ordering::Release);
}

/// Whether `thread` is one of burn's device service threads.
fn is_device_thread(thread: &str) -> bool {
    thread.starts_with("DSU-") || thread.starts_with("DSD-")
}

/// Install the hook (once per process; later calls do nothing).
pub fn install(on_failure: OnFailure) {
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            previous(info);
            let current = std::thread::current();
            let Some(thread) = current.name().filter(|n| is_device_thread(n)) else {
                return;
            };
            let message = crate::worker::panic_message(info.payload())
                .trim()
                .to_string();
            record(thread, &message);
            if on_failure == OnFailure::Exit {
                eprintln!(
                    "error: the GPU backend failed on its device thread {thread} and this command \
                     cannot finish: {message}\nRun it on the CPU (--backend cpu), or with \
                     smaller patches or batches."
                );
                std::process::exit(EXIT_STATUS);
            }
        }));
    });
}

/// `failure` with what to do first when its message says the GPU refused an allocation:
/// burn's "can't allocate buffer of size: N" (a buffer over the largest the device binds, or its
/// memory full: lavapipe refused a 256 MiB one in a 2 × 128³ step) reaches the run as a panic on
/// the thread that reads a result, in burn's words only.
pub fn with_memory_advice(failure: WorkerError) -> WorkerError {
    let advise = |message: String| match refused_allocation(&message) {
        Some(bytes) => format!(
            "the GPU could not allocate a buffer of {} MiB (more than it can hold in one \
             buffer, or than its free memory): use smaller patches or batches, or the CPU \
             (--backend cpu). {message}",
            bytes.div_ceil(1 << 20)
        ),
        None => message,
    };
    match failure {
        WorkerError::Panicked { worker, message } => WorkerError::Panicked {
            worker,
            message: advise(message),
        },
        WorkerError::Failed { worker, message } => WorkerError::Failed {
            worker,
            message: advise(message),
        },
        other => other,
    }
}

/// The size in bytes of the allocation burn says the GPU refused, if `message` says so.
fn refused_allocation(message: &str) -> Option<u64> {
    let rest = message.split("can't allocate buffer of size: ").nth(1)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn panic_on(name: &str, message: &'static str) {
        let thread = std::thread::Builder::new().name(name.to_string());
        let joined = thread.spawn(move || panic!("{message}")).unwrap().join();
        assert!(joined.is_err());
    }

    #[test]
    fn a_refused_gpu_allocation_says_what_to_do_and_keeps_burns_words() {
        // As a lavapipe run at 2 × 128³ ended (the message's first lines).
        let burn = "Error while reading data: use `try_into_data` instead to catch the error at \
                    runtime: An error happened during execution\nCaused by:\n  An IO error \
                    happened\nCaused by:\n  can't allocate buffer of size: 268435456\nNo \
                    backtrace available";
        let failure = WorkerError::Panicked {
            worker: "the training run".into(),
            message: burn.into(),
        };
        let told = with_memory_advice(failure).to_string();
        assert!(
            told.starts_with(
                "the training run stopped unexpectedly: the GPU could not allocate \
                              a buffer of 256 MiB"
            ),
            "{told}"
        );
        assert!(told.contains("smaller patches or batches") && told.ends_with(burn));
        let other = WorkerError::Failed {
            worker: "the training run".into(),
            message: "no cases".into(),
        };
        assert_eq!(with_memory_advice(other.clone()), other);
    }

    #[test]
    fn a_panic_on_a_device_thread_is_recorded_and_others_are_not() {
        install(OnFailure::Record);
        let start = failures();
        panic_on("worker-7", "not the device's");
        assert_eq!(failure_since(start), None);
        panic_on("DSD-4-0", "Cube count too big (131072, 108, 1)");
        let first = failure_since(start);
        let expected = "DSD-4-0: Cube count too big (131072, 108, 1)";
        assert_eq!(first.as_deref(), Some(expected));
        // A run started after it sees nothing until the next one.
        let later = failures();
        assert_eq!(failure_since(later), None);
        panic_on("DSU-4-0", "a later one");
        assert_eq!(
            failure_since(later).as_deref(),
            Some("DSU-4-0: a later one")
        );
    }
}
