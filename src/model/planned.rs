//! A run's fit configuration from the dataset's plan and the user's own choices: what the user
//! set wins, the plan decides the rest. `mriloop train` (its flags) and the window's training
//! panel (its plan fields) both build their configuration here, so the same choices give the
//! same run.
//!
//! Invariants: a setting left `None` takes the plan's value; the plan's sampling and
//! augmentation always apply (see `plan::apply_plan`); numeric choices are clamped to at
//! least 1; a plan that reads the class from the mask (rule 11) makes a joint run train the
//! segmentation only, unless the user set the class steps.

use super::apply::{fit_config_for, FitOptions};
use super::fit::FitConfig;
use super::plan::{apply_plan, Plan, UserSet};
use super::training::TaskMode;
use crate::project::{Project, ProjectError};

/// The settings a user set; `None`: the plan decides.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlanOverrides {
    /// Epochs.
    pub epochs: Option<usize>,
    /// Steps per epoch.
    pub steps_per_epoch: Option<usize>,
    /// Patch edge (voxels; the plan's depth then goes with the configuration's default).
    pub patch: Option<usize>,
    /// Patches per batch.
    pub batch: Option<usize>,
    /// Edge of the whole-head crop the class is learned from.
    pub class_window: Option<usize>,
    /// Channels of the first level.
    pub base_channels: Option<usize>,
    /// Voxel size cases are resampled to (mm, isotropic).
    pub spacing_mm: Option<f64>,
    /// One step in this many is a class step (joint training).
    pub class_every: Option<usize>,
}

impl PlanOverrides {
    /// Epochs of the run: the user's or the plan's.
    pub fn epochs(&self, plan: &Plan) -> usize {
        self.epochs.unwrap_or(plan.epochs).max(1)
    }

    /// Steps per epoch of the run: the user's, or the plan's steps over the run's epochs.
    pub fn steps_per_epoch(&self, plan: &Plan) -> usize {
        self.steps_per_epoch
            .unwrap_or_else(|| plan.steps.div_ceil(self.epochs(plan)))
            .max(1)
    }

    /// Patches per batch of the run.
    pub fn batch(&self, plan: &Plan) -> usize {
        self.batch.unwrap_or(plan.batch).max(1)
    }

    /// Channels of the first level of the run's network.
    pub fn base_channels(&self, plan: &Plan) -> usize {
        self.base_channels.unwrap_or(plan.base_channels).max(1)
    }
}

/// The fit configuration of `project` with `base`'s sequences (none: the plan's), tasks,
/// learning rate and seed, the user's `choices`, and `plan` for everything else.
pub fn planned_config(
    project: &Project,
    base: &FitOptions,
    choices: &PlanOverrides,
    plan: &Plan,
) -> Result<FitConfig, ProjectError> {
    let options = FitOptions {
        epochs: choices.epochs(plan),
        steps_per_epoch: choices.steps_per_epoch(plan),
        patch: choices.patch.unwrap_or(plan.patch[0]).max(1),
        batch: choices.batch(plan),
        class_window: choices.class_window.unwrap_or(plan.class_window[0]).max(1),
        base_channels: choices.base_channels(plan),
        spacing_mm: choices.spacing_mm,
        sequences: if base.sequences.is_empty() {
            plan.sequences.clone()
        } else {
            base.sequences.clone()
        },
        ..base.clone()
    };
    let form = project.manifest.input_form();
    let user = UserSet {
        patch: choices.patch.is_some(),
        class_window: choices.class_window.is_some(),
        spacing: choices.spacing_mm.is_some(),
    };
    let mut config = apply_plan(fit_config_for(project, &options)?, plan, form, user);
    // Rule 11: the class read from the mask, unless the user asked for class steps.
    if let Some(e) = &plan.class_evidence {
        if choices.class_every.is_none() && config.training.mode == TaskMode::Joint {
            config.training.mode = TaskMode::SegmentationOnly;
            config.training.class_evidence = Some(e.clone());
        }
    }
    Ok(config.with_class_every(choices.class_every.unwrap_or(plan.class_every).max(1)))
}
