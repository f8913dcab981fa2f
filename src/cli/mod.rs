//! The headless commands of `mriloop` (everything but the review window): each submodule holds
//! one group's clap arguments and the function that runs them; `src/main.rs` only parses and
//! dispatches. Errors are `anyhow` here, at the edge, with the file or flag named; the library
//! below keeps its typed errors.
//!
//! Invariants: nothing here imports the window's module `src/app/` (no window, no egui; plots
//! are drawn on the CPU by `crate::plot`), so every command runs on a server with no display or
//! graphics adapter (a command that asks for the GPU, e.g. `--backend gpu` or a render
//! benchmark, says so when none is found); progress goes to a bar on a terminal and plain
//! lines otherwise.

pub mod bench;
pub mod closed_loop;
pub mod edit_script;
pub mod exchange;
pub mod experiment;
pub mod gpu;
pub mod info;
pub mod mesh;
pub mod plan;
pub mod prompt;
pub mod train;

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread::ScopedJoinHandle;
use std::time::Duration;

/// Hand each event from `rx` to `on` until `worker` has finished (or dropped its sender) and
/// nothing is left to receive.
pub fn relay_events<E, T>(
    rx: &Receiver<E>,
    worker: &ScopedJoinHandle<'_, T>,
    mut on: impl FnMut(E),
) {
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(event) => on(event),
            Err(RecvTimeoutError::Timeout) => {
                if worker.is_finished() {
                    break;
                }
            }
            Err(RecvTimeoutError::Disconnected) => break,
        }
    }
}

/// A progress bar over `total` training steps (hidden when the output is not a terminal).
pub fn steps_bar(total: u64) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:40} {pos}/{len} steps {msg} [{elapsed} < {eta}]",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar
}

/// Print `line` above `bar`; a hidden bar (output not a terminal) drops its lines, so print
/// plainly then.
pub fn say(bar: &indicatif::ProgressBar, line: String) {
    if bar.is_hidden() {
        println!("{line}");
    } else {
        bar.println(line);
    }
}

/// Write to standard output; a closed pipe (e.g. `| head`) is not an error.
pub fn emit(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
