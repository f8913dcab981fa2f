//! Workers started by the session (reading a new prediction, a seed map): each is a thread whose
//! result comes back as an `Input`, taken once per frame by `Session::apply(Input::Tick)`. And
//! `WorkerError`: how any worker's failure or panic reaches the window and the CLI, typed.
//!
//! Invariants: a job never panics its caller: a panic inside it is caught and becomes
//! `WorkerError::Panicked` naming the worker; a job whose thread cannot be started is reported
//! the same way; polling never waits.

use super::Input;
use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::Arc;

/// Called from a worker thread when it has a result (the window asks for a repaint).
pub type Waker = Arc<dyn Fn() + Send + Sync>;

/// A waker that does nothing (headless use).
pub fn no_wake() -> Waker {
    Arc::new(|| {})
}

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

/// The text of a panic payload (`&str` or `String`), else a placeholder.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Run `f`, turning a panic into `WorkerError::Panicked` named `worker`.
pub fn catch_worker<T>(worker: &str, f: impl FnOnce() -> T) -> Result<T, WorkerError> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| WorkerError::Panicked {
        worker: worker.to_string(),
        message: panic_message(p.as_ref()),
    })
}

/// The result of joining a thread, a panic becoming `WorkerError::Panicked`.
pub fn joined<T>(
    worker: &str,
    result: std::thread::Result<T>,
) -> Result<T, WorkerError> {
    result.map_err(|p| WorkerError::Panicked {
        worker: worker.to_string(),
        message: panic_message(p.as_ref()),
    })
}

struct Job {
    name: String,
    rx: Receiver<Input>,
}

/// The session's running jobs.
pub(crate) struct Jobs {
    wake: Waker,
    running: Vec<Job>,
}

impl Jobs {
    pub(crate) fn new(wake: Waker) -> Self {
        Self {
            wake,
            running: Vec::new(),
        }
    }

    /// Start `f` in a thread named `name`; its `Input` is applied at a later tick.
    pub(crate) fn spawn(&mut self, name: &str, f: impl FnOnce() -> Input + Send + 'static) {
        let (tx, rx): (Sender<Input>, Receiver<Input>) = channel();
        let (wake, worker) = (self.wake.clone(), name.to_string());
        let spawned = std::thread::Builder::new()
            .name(format!("mriloop-{name}"))
            .spawn(move || {
                let input = catch_worker(&worker, f).unwrap_or_else(Input::WorkerFailed);
                let _ = tx.send(input);
                wake();
            });
        match spawned {
            Ok(_) => self.running.push(Job {
                name: name.to_string(),
                rx,
            }),
            Err(e) => {
                let (tx, rx) = channel();
                let _ = tx.send(Input::WorkerFailed(WorkerError::Failed {
                    worker: name.to_string(),
                    message: format!("cannot start a thread: {e}"),
                }));
                self.running.push(Job {
                    name: name.to_string(),
                    rx,
                });
            }
        }
    }

    /// Finished jobs' inputs (never waits).
    pub(crate) fn poll(&mut self) -> Vec<Input> {
        let mut out = Vec::new();
        self.running.retain(|job| match job.rx.try_recv() {
            Ok(input) => {
                out.push(input);
                false
            }
            Err(TryRecvError::Empty) => true,
            Err(TryRecvError::Disconnected) => {
                out.push(Input::WorkerFailed(WorkerError::Panicked {
                    worker: job.name.clone(),
                    message: "it ended without a result".into(),
                }));
                false
            }
        });
        out
    }

    /// The waker, for workers the session runs itself.
    pub(crate) fn waker(&self) -> Waker {
        self.wake.clone()
    }

    /// Jobs still running.
    pub(crate) fn running(&self) -> usize {
        self.running.len()
    }
}
