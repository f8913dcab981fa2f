//! Workers started by the session (reading a new prediction, a seed map): each is a thread whose
//! result comes back as an `Input`, taken once per frame by `Session::apply(Input::Tick)`. And
//! `WorkerError`: how any worker's failure or panic reaches the window and the CLI, typed.
//!
//! Invariants: a job never panics its caller: a panic inside it is caught and becomes
//! `WorkerError::Panicked` naming the worker; a job whose thread cannot be started is reported
//! the same way; polling never waits.

use super::Input;
pub use crate::worker::{catch_worker, joined, panic_message, WorkerError};
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::Arc;

/// A gate a worker passes before its heavy part: open unless held. Holding it keeps a worker
/// mid-job (tests: the window must keep handling input meanwhile).
#[derive(Debug, Clone, Default)]
pub struct Gate(Arc<(std::sync::Mutex<bool>, std::sync::Condvar)>);

impl Gate {
    /// Close the gate: workers arriving wait.
    pub fn hold(&self) {
        if let Ok(mut held) = self.0 .0.lock() {
            *held = true;
        }
    }

    /// Open the gate: waiting workers go on.
    pub fn release(&self) {
        if let Ok(mut held) = self.0 .0.lock() {
            *held = false;
        }
        self.0 .1.notify_all();
    }

    /// Wait while the gate is held.
    pub fn pass(&self) {
        let (lock, cv) = &*self.0;
        if let Ok(mut held) = lock.lock() {
            while *held {
                match cv.wait(held) {
                    Ok(h) => held = h,
                    Err(_) => return,
                }
            }
        }
    }
}

/// Called from a worker thread when it has a result (the window asks for a repaint).
pub type Waker = Arc<dyn Fn() + Send + Sync>;

/// A waker that does nothing (headless use).
pub fn no_wake() -> Waker {
    Arc::new(|| {})
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
