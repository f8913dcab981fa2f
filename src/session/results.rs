//! Workers' results that change the project: a training run's model version, the active
//! version, re-inference predictions. A prediction of the open case is read again by a worker
//! and replaces the shown prediction, its class and the agreement with the corrected mask —
//! the corrected mask itself is never touched, so it happens mid-edit too.
//!
//! Invariants: the manifest changes only here (and in edits); each change is saved.

use super::{Input, Message, Session};
use crate::model::runs::{record_prediction, register_version, CasePrediction};
use crate::project::ModelVersion;
use crate::volume::Volume;

impl Session {
    /// A run ended: its version joins the project (active if it finished).
    pub(super) fn run_finished(&mut self, version: ModelVersion, activate: bool) {
        let Some(p) = self.project.as_mut() else {
            return;
        };
        let promptable = version.promptable;
        register_version(&mut p.manifest, version, activate);
        if promptable {
            // The next prompt reads the newest promptable version.
            self.forget_prompt_model();
        }
        self.pending.manifest = true;
        self.save_manifest();
    }

    /// Make version `id` the active one (if the project has it).
    pub(super) fn set_active_model(&mut self, id: &str) {
        let Some(p) = self.project.as_mut() else {
            return;
        };
        if p.manifest.models.iter().any(|m| m.id == id) {
            p.manifest.active_model = Some(id.to_string());
            self.pending.manifest = true;
            self.save_manifest();
        }
    }

    /// Re-inference predicted a case: record it; the open case's new mask is read by a worker.
    pub(super) fn predicted(&mut self, pred: CasePrediction) {
        let Some(p) = self.project.as_mut() else {
            return;
        };
        let classes = p.manifest.classes.len();
        let Some(case) = p.manifest.cases.iter_mut().find(|c| c.id == pred.case_id) else {
            return;
        };
        record_prediction(case, &pred, classes);
        self.pending.manifest = true;
        self.save_manifest();
        let is_open = self
            .open
            .as_ref()
            .is_some_and(|o| o.case_index.is_some() && o.case_id == pred.case_id);
        let Some(path) = is_open
            .then(|| self.project.as_ref().map(|p| p.resolve(&pred.mask)))
            .flatten()
        else {
            return;
        };
        let case_id = pred.case_id.clone();
        self.jobs.spawn("reading the new prediction", move || {
            Input::PredictionRead {
                mask: super::load::read_mask(&path).map(Box::new),
                case_id,
            }
        });
    }

    /// The open case's new prediction was read: show it and recompute the agreement.
    pub(super) fn prediction_read(&mut self, case_id: &str, mask: Result<Volume<u8>, String>) {
        let mask = match mask {
            Ok(m) => m,
            Err(e) => return self.message(Message::Error(e)),
        };
        let Some(open) = self.open.as_mut().filter(|o| o.case_id == case_id) else {
            return;
        };
        let same_grid = open
            .reference
            .as_ref()
            .is_none_or(|r| r.dims3() == mask.dims3());
        if !same_grid {
            return self.message(Message::Error(format!(
                "case {case_id}: the new prediction is not on the mask's grid"
            )));
        }
        open.predicted = Some(mask);
        open.predicted_revision += 1;
        open.agreement =
            super::open::agreement_of(open.reference.as_ref(), open.predicted.as_ref());
        self.pending.predicted = true;
        self.message(Message::Notice(format!(
            "case {case_id}: showing the new prediction"
        )));
    }
}
