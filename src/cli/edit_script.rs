//! `mriloop edit-script` (hidden): a scripted editing session on one case — of a project, or
//! loose files with `--files` — each step given to a headless `Session` as the window gives it
//! and journaled, printing `committed N` as soon as it is on disk (the crash-recovery tests kill
//! it mid-session).
//!
//! Invariant: a `committed N` line is flushed only after step N's journal record is durable.

use crate::session::script::{run_edit_script, ScriptTarget};
use anyhow::{bail, Result};
use std::path::PathBuf;

/// Arguments of `mriloop edit-script`.
#[derive(clap::Args, Debug)]
pub struct EditScriptArgs {
    /// The project folder.
    pub project: Option<PathBuf>,
    /// The case id (with a project).
    #[arg(long)]
    pub case: Option<String>,
    /// Loose image files instead of a project.
    #[arg(long, num_args = 1..)]
    pub files: Vec<PathBuf>,
    /// The loose files' label file.
    #[arg(long)]
    pub seg: Option<PathBuf>,
    /// Where loose files' working copies go (default: mriloop's data folder).
    #[arg(long)]
    pub loose_root: Option<PathBuf>,
    /// Steps to run.
    #[arg(long, default_value_t = 50)]
    pub steps: usize,
    /// Seed of the script.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Save every this many steps (0: never).
    #[arg(long, default_value_t = 0)]
    pub save_every: usize,
    /// Pause between steps (ms).
    #[arg(long, default_value_t = 10)]
    pub pause_ms: u64,
}

/// What the script edits: a project's case, or loose files.
fn target(args: &mut EditScriptArgs) -> Result<ScriptTarget> {
    Ok(match (args.project.take(), args.case.take()) {
        (Some(dir), Some(case_id)) => ScriptTarget::Project { dir, case_id },
        (None, None) if !args.files.is_empty() => ScriptTarget::Files {
            images: std::mem::take(&mut args.files),
            mask: args.seg.take(),
            loose_root: args
                .loose_root
                .take()
                .unwrap_or_else(crate::session::Session::default_loose_root),
        },
        _ => bail!("give a project folder and --case, or --files (and --seg)"),
    })
}

/// `mriloop edit-script`.
pub fn run(mut args: EditScriptArgs) -> Result<()> {
    use std::io::Write;
    let target = target(&mut args)?;
    let committed = |n| {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "committed {n}");
        let _ = out.flush();
    };
    let (steps, seed) = (args.steps, args.seed);
    run_edit_script(
        &target,
        steps,
        seed,
        args.save_every,
        args.pause_ms,
        committed,
    )
    .map_err(anyhow::Error::msg)
}
