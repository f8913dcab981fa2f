//! Model versions made elsewhere: a checkpoint trained by `mriloop train --out DIR` on another
//! project or machine (a cluster job, a colleague's run, the demo's shipped models) added to a
//! project as a version like any other — its files copied under `models/<version>/`, its
//! record (tasks, sequences, promptable or not, where it came from) in the manifest — so it can
//! predict, be prompted with, be fine-tuned from and rolled back to.
//!
//! Invariants: the checkpoint is read in full (and so checked) before anything is written; every
//! file is copied atomically and the manifest is saved last, so a failure leaves the project as
//! it was (at most an unreferenced `models/<version>/` folder); the source folder is only read;
//! a model that reads a sequence the project lacks is refused, by name.

use super::training::{load_checkpoint, CheckpointError, TrainingConfig};
use crate::project::models::{next_version_id, utc_now};
use crate::project::{ModelVersion, Project, ProjectError, RunOutcome};
use std::path::Path;

/// Files of a checkpoint folder, and of the run folder above it, that travel with it.
const CHECKPOINT_FILES: &[&str] = &["config.json", "model.bpk"];
const RUN_FILES: &[&str] = &["fit.json", "plan.json"];

/// Errors adding a model version.
#[derive(Debug, thiserror::Error)]
pub enum AddModelError {
    /// The checkpoint could not be read.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The project or its manifest.
    #[error(transparent)]
    Project(#[from] ProjectError),
    /// The model does not fit the project.
    #[error("{model}: {problem}")]
    Mismatch {
        /// The checkpoint folder.
        model: String,
        /// What does not fit.
        problem: String,
    },
    /// Copying a file.
    #[error("{path}: {source}")]
    Io {
        /// The file written.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
}

/// Add the checkpoint in `dir` (`config.json` + `model.bpk`) to `project` as a new version;
/// `activate` makes an automatic model the project's active one (a promptable one never is).
pub fn add_checkpoint(
    project: &mut Project,
    dir: &Path,
    activate: bool,
) -> Result<ModelVersion, AddModelError> {
    // A run's folder stands for its best (else last) checkpoint.
    let dir = &super::training::checkpoint_dir(dir);
    // Read on the CPU: checking the weights needs no GPU (and a server may have none).
    let device = burn::prelude::Device::flex();
    let (config, _) = load_checkpoint(dir, &device)?;
    if let Some(problem) = mismatch(&config, project) {
        return Err(AddModelError::Mismatch {
            model: dir.display().to_string(),
            problem,
        });
    }
    let id = next_version_id(&project.manifest.models);
    let rel = format!("models/{id}");
    // The checkpoint keeps its folder's name when it is a run's (`best` or `last`).
    let name = (dir.file_name().and_then(|n| n.to_str()))
        .filter(|n| ["best", "last"].contains(n))
        .unwrap_or("best");
    let checkpoint = format!("{rel}/{name}");
    copy_files(dir, &project.resolve(&checkpoint), CHECKPOINT_FILES, true)?;
    if let Some(run) = dir.parent() {
        copy_files(run, &project.resolve(&rel), RUN_FILES, false)?;
    }
    let version = ModelVersion {
        id: id.clone(),
        created: utc_now(),
        parent: None,
        checkpoint,
        tasks: config.mode.name().into(),
        sequences: config.sequences.clone(),
        trained_on: Vec::new(),
        validated_on: Vec::new(),
        epochs: Vec::new(),
        outcome: RunOutcome::Finished,
        learned_prompts: 0,
        promptable: config.prompt.is_some(),
        added_from: Some(dir.display().to_string()),
    };
    project.manifest.models.push(version.clone());
    if activate && !version.promptable {
        project.manifest.active_model = Some(id);
    }
    project.save()?;
    Ok(version)
}

/// Why a model with `config` cannot serve `project`: it reads a sequence the project lacks, or
/// (an automatic model) its labels are not the project's, value for value — its masks would
/// name other structures. A promptable model answers "object or not" for any label.
fn mismatch(config: &TrainingConfig, project: &Project) -> Option<String> {
    let missing: Vec<&String> = config
        .sequences
        .iter()
        .filter(|s| !project.manifest.sequences.iter().any(|p| p.as_str() == *s))
        .collect();
    if !missing.is_empty() {
        return Some(format!(
            "reads sequences the project does not have: {missing:?}"
        ));
    }
    let ours = project.manifest.labels.names_by_value();
    let segments = config.mode != super::training::TaskMode::ClassificationOnly;
    let same = config.label_names.iter().zip(&ours).all(|(a, b)| a == b)
        && config.label_names.len() <= ours.len().max(2);
    if config.prompt.is_none() && segments && !same {
        return Some(format!(
            "its labels {:?} are not the project's {:?}",
            config.label_names, ours
        ));
    }
    None
}

/// Copy the `names` files of `from` into `to` atomically; a missing one is an error when
/// `required`, else skipped.
fn copy_files(from: &Path, to: &Path, names: &[&str], required: bool) -> Result<(), AddModelError> {
    let io = |path: &Path, source| AddModelError::Io {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(to).map_err(|e| io(to, e))?;
    for name in names {
        let src = from.join(name);
        if !required && !src.is_file() {
            continue;
        }
        crate::atomic::copy_atomic(&src, &to.join(name)).map_err(|e| io(&src, e))?;
    }
    Ok(())
}
