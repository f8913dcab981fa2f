//! A fit's state at the end of its last finished epoch, so a run killed (a preempted cluster
//! job, a crash) continues where that epoch ended (`mriloop train --continue OUT`): the weights,
//! the optimiser's state (AdamW moments, keyed by the parameters' ids, which the weights file
//! keeps), the epoch and step reached and the best-checkpoint tracking. The split and the
//! configuration are the run's `fit.json` and `validation.txt`; the batches are drawn from a
//! stream seeded per epoch, so the continued epochs draw what the uninterrupted run would have.
//!
//! Invariants: `OUT/continue/` is replaced whole at each epoch end — written into
//! `continue.new/` (`state.json` last, marking it complete), then swapped in by renames — so a
//! kill at any moment leaves one complete state; a state is untrusted input when read (size
//! capped, epoch and step within the run's plan).

use super::model::MultiTaskUNet;
use super::training::{save_checkpoint, CheckpointError, TrainingConfig};
use burn::optim::ModuleOptimizer;
use burn::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The state's folder inside a run's output folder.
pub const STATE_DIR: &str = "continue";
/// Largest `state.json` read (bytes).
const MAX_STATE_BYTES: u64 = 1 << 16;

/// Where a fit stands after an epoch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FitState {
    /// Epochs finished (1-based: 1 after the first).
    pub epoch: usize,
    /// Optimisation steps taken.
    pub step: usize,
    /// Best smoothed validation score so far (`None` before any).
    pub best_score: Option<f64>,
    /// The last epoch's smoothed score.
    pub smoothed: Option<f64>,
    /// Epochs since the best one.
    pub since: usize,
    /// The f16 loss scale reached (`None` in f32 and bf16, and in states written before it).
    #[serde(default)]
    pub loss_scale: Option<super::precision::LossScale>,
}

fn err(path: &Path, problem: impl ToString) -> CheckpointError {
    CheckpointError::File {
        path: path.display().to_string(),
        problem: problem.to_string(),
    }
}

/// Write `state` with `model` and `optim` as `out/continue/`, replacing the previous one whole.
pub fn save_state(
    out: &Path,
    config: &TrainingConfig,
    (model, optim): (&MultiTaskUNet, &ModuleOptimizer),
    state: &FitState,
) -> Result<(), CheckpointError> {
    let (dir, new, old) = state_dirs(out);
    if new.exists() {
        std::fs::remove_dir_all(&new).map_err(|e| err(&new, e))?;
    }
    save_checkpoint(&new, config, model)?;
    let optim_path = new.join("optim.bpk");
    optim.save(&optim_path).map_err(|e| err(&optim_path, e))?;
    let json = serde_json::to_string_pretty(state).map_err(|e| err(&new, e))?;
    let state_path = new.join("state.json");
    crate::atomic::write_atomic(&state_path, json.as_bytes()).map_err(|e| err(&state_path, e))?;
    if dir.exists() {
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(|e| err(&old, e))?;
        }
        std::fs::rename(&dir, &old).map_err(|e| err(&dir, e))?;
    }
    std::fs::rename(&new, &dir).map_err(|e| err(&new, e))?;
    if old.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| err(&old, e))?;
    }
    Ok(())
}

/// `out/continue`, `out/continue.new` and `out/continue.old`.
fn state_dirs(out: &Path) -> (PathBuf, PathBuf, PathBuf) {
    (
        out.join(STATE_DIR),
        out.join(format!("{STATE_DIR}.new")),
        out.join(format!("{STATE_DIR}.old")),
    )
}

/// The complete state folder: `continue/`, else a `continue.new/` whose `state.json` was
/// written, else `continue.old/` (a kill between the swap's renames).
fn complete_state_dir(out: &Path) -> Option<PathBuf> {
    let (dir, new, old) = state_dirs(out);
    [dir, new, old]
        .into_iter()
        .find(|d| d.join("state.json").is_file())
}

/// Read the state of the run in `out` (planned for `epochs` of `steps_per_epoch`): where it
/// stands, its weights (trainable, on `device`) and its optimiser (`fresh` with the state
/// loaded into it).
pub fn load_state(
    out: &Path,
    config: &TrainingConfig,
    (epochs, steps_per_epoch): (usize, usize),
    device: &Device,
    fresh: ModuleOptimizer,
) -> Result<(FitState, MultiTaskUNet, ModuleOptimizer), CheckpointError> {
    let dir = complete_state_dir(out).ok_or_else(|| {
        err(
            out,
            "no saved state to continue from (no epoch finished yet?)",
        )
    })?;
    let state_path = dir.join("state.json");
    let len = std::fs::metadata(&state_path)
        .map_err(|e| err(&state_path, e))?
        .len();
    if len > MAX_STATE_BYTES {
        return Err(err(&state_path, format!("{len} bytes is not a fit state")));
    }
    let text = std::fs::read_to_string(&state_path).map_err(|e| err(&state_path, e))?;
    let state: FitState = serde_json::from_str(&text).map_err(|e| err(&state_path, e))?;
    if state.epoch == 0 || state.epoch > epochs || state.step > epochs * steps_per_epoch {
        return Err(err(
            &state_path,
            format!(
                "epoch {} step {} do not fit the run's plan of {epochs} epochs of \
                 {steps_per_epoch} steps",
                state.epoch, state.step
            ),
        ));
    }
    let weights = dir.join("model.bpk");
    let model = config
        .model
        .init(device)
        .try_load_file(&weights)
        .map_err(|e| err(&weights, e))?
        .train();
    let optim_path = dir.join("optim.bpk");
    let optim = fresh.load(&optim_path).map_err(|e| err(&optim_path, e))?;
    Ok((state, model, optim))
}
