//! Workers' failures, typed: how a thread's error or panic reaches the window and the CLI
//! (`WorkerError`), and the helpers that turn a panic into one. The lowest layer: every other
//! module may use it.
//!
//! Invariant: a panic payload's message is kept when it is text.

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// How a worker failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorkerError {
    /// The worker panicked (a bug): its message, if it had one.
    #[error("{worker} stopped unexpectedly: {message}")]
    Panicked {
        /// Which worker.
        worker: String,
        /// The panic's message.
        message: String,
    },
    /// The worker reported a failure.
    #[error("{worker} failed: {message}")]
    Failed {
        /// Which worker.
        worker: String,
        /// What went wrong.
        message: String,
    },
    /// The worker was cancelled before it finished.
    #[error("{worker} was cancelled")]
    Cancelled {
        /// Which worker.
        worker: String,
    },
}

/// The text of a panic payload, when it is text (`&str` or `String`).
pub fn panic_text(payload: &(dyn Any + Send)) -> Option<String> {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
}

/// The text of a panic payload (`&str` or `String`), else a placeholder.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    panic_text(payload).unwrap_or_else(|| "a panic without a message".into())
}

/// Run `f`, turning a panic into `WorkerError::Panicked` named `worker`.
pub fn catch_worker<T>(worker: &str, f: impl FnOnce() -> T) -> Result<T, WorkerError> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| WorkerError::Panicked {
        worker: worker.to_string(),
        message: panic_message(p.as_ref()),
    })
}

/// The result of joining a thread, a panic becoming `WorkerError::Panicked`.
pub fn joined<T>(worker: &str, result: std::thread::Result<T>) -> Result<T, WorkerError> {
    result.map_err(|p| WorkerError::Panicked {
        worker: worker.to_string(),
        message: panic_message(p.as_ref()),
    })
}
