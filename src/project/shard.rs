//! Prediction results as per-case records, for cohort prediction split into shards that run at
//! once on a cluster (`mriloop predict --shard I/N`, e.g. a Slurm array index): each shard writes
//! only its own cases' files — the predicted mask, its probabilities and
//! `cases/<id>/prediction.json` naming them with the class probabilities — and never the
//! manifest; `mriloop merge-shards` then folds every record into the manifest in one atomic
//! save.
//!
//! Invariants: a shard's cases are those whose index in the manifest is I modulo N, so the N
//! shards cover every case exactly once; a record is written atomically after the files it
//! names; a record is untrusted input when merged (size capped, paths checked inside the
//! project, one finite probability per class) and a bad one is reported by path, not merged.

use super::{invalid, io_err, read_text_capped, Project, ProjectError};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// A case's prediction record's file name inside its case folder.
pub const RECORD_FILE: &str = "prediction.json";
/// Largest record read (bytes).
const MAX_RECORD_BYTES: u64 = 1 << 20;

/// Shard `index` of `count` (0 ≤ index < count).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This shard's number.
    pub index: usize,
    /// How many shards there are.
    pub count: usize,
}

impl Shard {
    /// Parse `I/N` (as a scheduler's array index and size give it).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (i, n) = text
            .split_once('/')
            .ok_or_else(|| format!("{text}: write the shard as I/N, e.g. 0/4"))?;
        let index: usize = i
            .trim()
            .parse()
            .map_err(|_| format!("{text}: I is not a number"))?;
        let count: usize = n
            .trim()
            .parse()
            .map_err(|_| format!("{text}: N is not a number"))?;
        if count == 0 || index >= count {
            return Err(format!("{text}: need 0 <= I < N"));
        }
        Ok(Self { index, count })
    }

    /// Whether the case at manifest index `i` is this shard's.
    pub fn takes(&self, i: usize) -> bool {
        i % self.count == self.index
    }
}

/// One case's prediction: the files written and the class probabilities.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictionRecord {
    /// The case.
    pub case_id: String,
    /// The predicted mask (relative to the project).
    pub mask: String,
    /// The foreground probabilities (relative to the project).
    pub probabilities: String,
    /// Class probabilities, one per project class (empty without a class head match).
    pub class_probabilities: Vec<f32>,
    /// The checkpoint that predicted it: a version id of the project, or a folder.
    pub model: String,
}

impl Project {
    /// Where case `id`'s prediction record lives.
    pub fn prediction_record_path(&self, id: &str) -> PathBuf {
        self.resolve(&format!("{}/{RECORD_FILE}", Project::case_dir_rel(id)))
    }

    /// Write a case's prediction record atomically (after the files it names).
    pub fn write_prediction_record(&self, r: &PredictionRecord) -> Result<(), ProjectError> {
        let path = self.prediction_record_path(&r.case_id);
        let json = serde_json::to_string_pretty(r)
            .map_err(|e| invalid(&path, format!("cannot serialise: {e}")))?;
        crate::atomic::write_atomic(&path, json.as_bytes()).map_err(|e| io_err(&path, e))
    }

    /// Case `id`'s prediction record, if it has one; an error names a malformed one.
    pub fn read_prediction_record(
        &self,
        id: &str,
    ) -> Result<Option<PredictionRecord>, ProjectError> {
        let path = self.prediction_record_path(id);
        if !path.is_file() {
            return Ok(None);
        }
        let text = read_text_capped(&path, MAX_RECORD_BYTES)?;
        let r: PredictionRecord =
            serde_json::from_str(&text).map_err(|e| invalid(&path, e.to_string()))?;
        let classes = self.manifest.classes.len();
        if r.case_id != id {
            return Err(invalid(&path, format!("names case {} not {id}", r.case_id)));
        }
        for rel in [&r.mask, &r.probabilities] {
            super::check_relative_path(rel).map_err(|e| invalid(&path, e))?;
            if !self.resolve(rel).is_file() {
                return Err(invalid(
                    &path,
                    format!("{rel}: no such file in the project"),
                ));
            }
        }
        let probabilities_ok = r.class_probabilities.is_empty()
            || (r.class_probabilities.len() == classes
                && r.class_probabilities.iter().all(|p| p.is_finite()));
        if !probabilities_ok {
            return Err(invalid(&path, "class probabilities do not fit the classes"));
        }
        Ok(Some(r))
    }
}

/// What a merge did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MergeReport {
    /// Cases whose record was merged.
    pub merged: usize,
    /// Cases without a record (not predicted yet, or their shard failed).
    pub missing: Vec<String>,
    /// Records refused, with the reason.
    pub refused: Vec<String>,
}

/// Fold every case's prediction record into the manifest and save it once.
pub fn merge_records(project: &mut Project) -> Result<MergeReport, ProjectError> {
    let mut report = MergeReport::default();
    for i in 0..project.manifest.cases.len() {
        let id = project.manifest.cases[i].id.clone();
        match project.read_prediction_record(&id) {
            Ok(Some(r)) => {
                // A prediction names its version when a version of this project made it.
                let version = project.manifest.models.iter().any(|v| v.id == r.model);
                let c = &mut project.manifest.cases[i];
                c.predicted_by = version.then_some(r.model);
                c.predicted_mask = Some(r.mask);
                c.predicted_probabilities = Some(r.probabilities);
                if !r.class_probabilities.is_empty() {
                    c.predicted_class = Some(r.class_probabilities);
                }
                report.merged += 1;
            }
            Ok(None) => report.missing.push(id),
            Err(e) => report.refused.push(e.to_string()),
        }
    }
    project.save()?;
    Ok(report)
}
