//! Model versions of a project: every training run is a version (its configuration, per-epoch
//! metrics, checkpoint folder and the cases it trained and validated on), recorded in the
//! manifest so predictions can say which version made them and the user can switch the active
//! version or roll back.
//!
//! Invariants: version ids are unique and safe as folder names (`v1`, `v2`, …); checkpoint
//! paths are project-relative; the active version, when set, is one of the recorded versions.
//! This layer knows nothing of the network: the checkpoint is a folder the model layer reads.

use serde::{Deserialize, Serialize};
use std::time::{SystemTime, UNIX_EPOCH};

/// How a training run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunOutcome {
    /// Every epoch ran (or early stopping ended it).
    #[default]
    Finished,
    /// The user cancelled it; the checkpoint is the last state saved.
    Cancelled,
}

/// Validation figures of one epoch of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// Epoch number (from 1).
    pub epoch: usize,
    /// Mean training loss of the epoch.
    pub train_loss: f64,
    /// Validation Dice per foreground label (index 0 = label 1); `None` where no validation
    /// case has the label.
    pub dice: Vec<Option<f64>>,
    /// Validation class accuracy.
    pub class_accuracy: f64,
    /// Validation class AUC, where both classes are present.
    pub class_auc: Option<f64>,
}

/// One training run of the project's network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelVersion {
    /// Version id (`v1`, `v2`, …), also its folder name under `models/`.
    pub id: String,
    /// When the run started (UTC, ISO 8601).
    pub created: String,
    /// The version it was fine-tuned from (`None`: trained from scratch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// Checkpoint folder to predict with (project-relative; holds `config.json`, `model.bpk`).
    pub checkpoint: String,
    /// Tasks trained: `joint`, `seg` or `class`.
    pub tasks: String,
    /// Input sequences, in channel order.
    pub sequences: Vec<String>,
    /// Case ids it trained on.
    pub trained_on: Vec<String>,
    /// Case ids it was validated on.
    pub validated_on: Vec<String>,
    /// Per-epoch figures.
    pub epochs: Vec<EpochRecord>,
    /// How the run ended.
    #[serde(default)]
    pub outcome: RunOutcome,
    /// How many of the user's recorded prompted interactions it learned from (a promptable
    /// run replays the training cases' prompt logs).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub learned_prompts: usize,
    /// A promptable network (the Prompt tool's; it never becomes the active automatic model).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub promptable: bool,
    /// Where a version trained elsewhere was added from (`mriloop add-model`: the checkpoint
    /// folder it was copied from); `None` for a run of this project.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub added_from: Option<String>,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl ModelVersion {
    /// The epoch record with the best validation score (mean Dice plus AUC), if any.
    pub fn best_epoch(&self) -> Option<&EpochRecord> {
        let score = |e: &EpochRecord| {
            let d: Vec<f64> = e.dice.iter().flatten().copied().collect();
            let dice = if d.is_empty() {
                0.0
            } else {
                d.iter().sum::<f64>() / d.len() as f64
            };
            dice + e.class_auc.unwrap_or(e.class_accuracy)
        };
        self.epochs
            .iter()
            .max_by(|a, b| score(a).total_cmp(&score(b)))
    }
}

/// The next free version id after `existing` (`v1` for none).
pub fn next_version_id(existing: &[ModelVersion]) -> String {
    let n = existing
        .iter()
        .filter_map(|v| v.id.strip_prefix('v')?.parse::<u64>().ok())
        .max()
        .unwrap_or(0);
    format!("v{}", n + 1)
}

/// Now as an ISO 8601 UTC timestamp (`2026-11-26T17:04:05Z`).
pub fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    utc_timestamp(secs)
}

/// Seconds since 1970 as an ISO 8601 UTC timestamp (civil-from-days, proleptic Gregorian).
pub fn utc_timestamp(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_and_ids() {
        assert_eq!(utc_timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_timestamp(1_795_712_645), "2026-11-26T17:04:05Z");
        assert_eq!(utc_timestamp(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(next_version_id(&[]), "v1");
    }
}
