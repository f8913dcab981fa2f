//! A scripted editing session (behind the hidden `mriloop edit-script` command): deterministic
//! brush strokes and status changes on one case, each committed through the journal exactly as
//! the app commits them, with periodic saves. The crash test kills it mid-session and checks
//! that reopening recovers every committed edit.
//!
//! Invariants: step `i`'s edit depends only on the seed, `i` and the mask's grid, so a test can
//! recompute the state after any number of steps.

use super::store::{recover, CaseStore, SaveJob};
use super::{journal, Project, ProjectError, ReviewStatus};
use crate::edit::tools::{brush_dab, Brush, BrushShape, BrushSpace, PaintRules};
use crate::edit::{Edit, RecordField};
use crate::volume::Volume;
use glam::DVec3;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;

/// Step `step`'s edit, applied to `mask` (and, for a status change, described by the edit).
pub fn scripted_step(seed: u64, step: usize, mask: &mut Volume<u8>, status_before: &str) -> Edit {
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(step as u64));
    if step % 5 == 4 {
        let after = ReviewStatus::ALL[rng.random_range(0..ReviewStatus::ALL.len())];
        return Edit::Record {
            field: RecordField::Status,
            before: status_before.to_string(),
            after: after.as_str().to_string(),
        };
    }
    let dims = mask.dims3();
    let mut deltas = Vec::new();
    for _ in 0..rng.random_range(1..=3) {
        let idx = DVec3::new(
            rng.random_range(0.0..dims[0] as f64),
            rng.random_range(0.0..dims[1] as f64),
            rng.random_range(0.0..dims[2] as f64),
        );
        let brush = Brush {
            shape: BrushShape::Round,
            radius_mm: rng.random_range(1.0..4.0),
            space: BrushSpace::Volume {
                axes: [DVec3::X, DVec3::Y, DVec3::Z],
            },
            value: rng.random_range(0..4u8),
        };
        let centre = mask.affine().vox_to_mm(idx);
        deltas.extend(brush_dab(
            mask,
            &brush,
            centre,
            &PaintRules::default(),
            None,
        ));
    }
    Edit::Mask(deltas)
}

/// Run `steps` scripted steps on case `case_id` of the project at `dir`, committing each
/// through the journal (waiting until it is on disk) before calling `committed(i)`; saves every
/// `save_every` steps (0: never); sleeps `pause_ms` between steps.
pub fn run_edit_script(
    dir: &Path,
    case_id: &str,
    steps: usize,
    seed: u64,
    save_every: usize,
    pause_ms: u64,
    mut committed: impl FnMut(usize),
) -> Result<(), ProjectError> {
    let mut project = Project::open(dir)?;
    let index = project
        .manifest
        .cases
        .iter()
        .position(|c| c.id == case_id)
        .ok_or_else(|| {
            super::invalid(
                &project.manifest_path(),
                format!("no case {case_id} in the project"),
            )
        })?;
    let case = project.manifest.cases[index].clone();
    let mask_rel = case.reference_mask.clone().ok_or_else(|| {
        super::invalid(&project.manifest_path(), "the case has no reference mask")
    })?;
    let mut mask = project.load_mask(&mask_rel)?;
    recover(&mut project, index, &mut mask)?;
    let store = CaseStore::open(&journal::journal_path(&project, case_id));
    for i in 0..steps {
        let status = project.manifest.cases[index].review.as_str().to_string();
        let edit = scripted_step(seed, i, &mut mask, &status);
        journal::apply_record(&mut project.manifest.cases[index], &edit, true);
        store.append_and_wait(&edit);
        committed(i + 1);
        if save_every > 0 && (i + 1) % save_every == 0 {
            store.save_and_wait(SaveJob {
                project: project.clone(),
                mask: Some((project.resolve(&mask_rel), mask.clone())),
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(pause_ms));
    }
    for e in store.close() {
        if let super::store::StoreEvent::Failed(msg) = e {
            return Err(super::invalid(dir, msg));
        }
    }
    Ok(())
}
