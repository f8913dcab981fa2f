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

/// Settings of the process for the headless commands (not the window), made before any other
/// thread starts:
/// - End quietly, as `grep` or `ls` do, when what it prints goes to a pipe whose reader has
///   gone (`mriloop plan P | head`): the default SIGPIPE action, which Rust's runtime turns off
///   (a closed pipe then makes `println!` panic). The window keeps the runtime's choice, so a
///   closed display socket is an error it reports.
/// - With no Wayland session (no `XDG_RUNTIME_DIR`, as under Slurm or cron), Mesa's Vulkan
///   device-select layer, which only orders GPUs for a display, is left out
///   (`NODEVICE_SELECT=1`): looking for a Wayland display it prints libwayland's "error:
///   XDG_RUNTIME_DIR is invalid or not set" under every command that looks for a GPU.
pub fn prepare_headless_process() {
    #[cfg(unix)]
    // SAFETY: setting a signal's disposition to its default is async-signal-safe; done at the
    // start of `main`, before any thread writes to a pipe.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let no_wayland = std::env::var_os("XDG_RUNTIME_DIR").is_none_or(|d| d.is_empty())
        && std::env::var_os("WAYLAND_DISPLAY").is_none();
    if no_wayland && std::env::var_os("NODEVICE_SELECT").is_none() {
        // Single-threaded still (the start of `main`), so no other thread reads the
        // environment meanwhile.
        std::env::set_var("NODEVICE_SELECT", "1");
    }
}

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
