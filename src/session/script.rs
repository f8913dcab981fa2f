//! A scripted editing session (behind the hidden `mriloop edit-script` command): deterministic
//! brush dabs and status changes on one case — of a project, or loose files — given to a
//! headless `Session` as the window gives them (tool, label, radius, a 3D dab, release), each
//! waited for until its journal record is on disk, with periodic autosaves. The crash test kills
//! it mid-session and checks that reopening recovers every committed edit (and, for loose
//! files, that the user's files are untouched).
//!
//! Invariants: step `i` depends only on the seed, `i` and the mask's grid, so a test can
//! recompute the state after any number of steps (`scripted_step` applies the same dab to a
//! mask directly).

use super::load::{spawn_load, CaseSource, LoadMessage};
use super::{EditCommand, Input, Message, Session, Tool};
use crate::edit::tools::{brush_dab, Brush, BrushShape, BrushSpace, PaintRules};
use crate::edit::{Edit, RecordField};
use crate::project::{Project, ReviewStatus};
use crate::render::Orientation;
use crate::volume::{Affine, Volume};
use glam::DVec3;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::PathBuf;

/// One scripted step.
#[derive(Debug, Clone, PartialEq)]
pub enum ScriptStep {
    /// A round 3D dab painting `value` (0 erases).
    Dab {
        /// Label painted.
        value: u8,
        /// Radius (mm).
        radius_mm: f64,
        /// Centre (world mm).
        centre_mm: DVec3,
    },
    /// A review status change.
    Status(ReviewStatus),
}

/// Step `step` of the script with `seed` on a mask grid.
pub fn script_step(seed: u64, step: usize, affine: &Affine, dims: [usize; 3]) -> ScriptStep {
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(step as u64));
    if step % 5 == 4 {
        return ScriptStep::Status(ReviewStatus::ALL[rng.random_range(0..ReviewStatus::ALL.len())]);
    }
    let idx = DVec3::new(
        rng.random_range(0.0..dims[0] as f64),
        rng.random_range(0.0..dims[1] as f64),
        rng.random_range(0.0..dims[2] as f64),
    );
    ScriptStep::Dab {
        radius_mm: rng.random_range(1.0..4.0),
        value: rng.random_range(0..4u8),
        centre_mm: affine.vox_to_mm(idx),
    }
}

/// Step `step`'s edit applied to `mask` directly (a status change is only described).
pub fn scripted_step(seed: u64, step: usize, mask: &mut Volume<u8>, status_before: &str) -> Edit {
    match script_step(seed, step, mask.affine(), mask.dims3()) {
        ScriptStep::Status(after) => Edit::Record {
            field: RecordField::Status,
            before: status_before.to_string(),
            after: after.as_str().to_string(),
        },
        ScriptStep::Dab {
            value,
            radius_mm,
            centre_mm,
        } => {
            let brush = Brush {
                shape: BrushShape::Round,
                radius_mm,
                space: BrushSpace::Volume {
                    axes: [DVec3::X, DVec3::Y, DVec3::Z],
                },
                value,
            };
            let d = brush_dab(mask, &brush, centre_mm, &PaintRules::default(), None);
            Edit::Mask(d.into_iter().collect())
        }
    }
}

/// The inputs the window would give for a step.
fn inputs_of(step: ScriptStep) -> Vec<Input> {
    let edit = |e| Input::Edit(e);
    match step {
        ScriptStep::Status(s) => vec![edit(EditCommand::SetStatus(s))],
        ScriptStep::Dab {
            value,
            radius_mm,
            centre_mm,
        } => vec![
            edit(EditCommand::SetTool(if value == 0 {
                Tool::Eraser
            } else {
                Tool::Brush
            })),
            edit(EditCommand::SetLabel(value.max(1))),
            edit(EditCommand::SetRadius(radius_mm)),
            edit(EditCommand::Set3d(true)),
            edit(EditCommand::Dab(Orientation::Axial, centre_mm)),
            edit(EditCommand::EndStroke),
        ],
    }
}

/// What the script edits.
#[derive(Debug, Clone, PartialEq)]
pub enum ScriptTarget {
    /// Case `case_id` of the project at `dir`.
    Project {
        /// Project folder.
        dir: PathBuf,
        /// Case id.
        case_id: String,
    },
    /// Loose files, their working copy under `loose_root`.
    Files {
        /// Images.
        images: Vec<PathBuf>,
        /// Label file.
        mask: Option<PathBuf>,
        /// Where working copies go.
        loose_root: PathBuf,
    },
}

/// A headless session with `target` open (its journal replayed, as the window opens it).
pub fn open_session(target: &ScriptTarget) -> Result<Session, String> {
    let (mut session, source, index) = match target {
        ScriptTarget::Project { dir, case_id } => {
            let project = Project::open(dir).map_err(|e| e.to_string())?;
            let index = project
                .manifest
                .cases
                .iter()
                .position(|c| &c.id == case_id)
                .ok_or_else(|| format!("{}: no case {case_id} in the project", dir.display()))?;
            let source = CaseSource::from_project(&project, &project.manifest.cases[index]);
            let mut s = Session::new(Session::default_loose_root(), super::jobs::no_wake());
            s.apply(Input::ProjectOpened(Box::new(project)));
            (s, source, Some(index))
        }
        ScriptTarget::Files {
            images,
            mask,
            loose_root,
        } => {
            let source = CaseSource::from_files(images, mask.clone()).with_working_copy(loose_root);
            let s = Session::new(loose_root.clone(), super::jobs::no_wake());
            (s, source, None)
        }
    };
    let case = load_now(&source)?;
    let changes = session.apply(Input::CaseLoaded {
        case: Box::new(case),
        index,
        source,
    });
    for m in changes.messages {
        if let Message::Error(e) = m {
            return Err(e);
        }
    }
    Ok(session)
}

/// Load a case in this thread (waiting for the loader).
pub fn load_now(source: &CaseSource) -> Result<super::LoadedCase, String> {
    let rx = spawn_load(source.clone(), Vec::new(), || {});
    for msg in rx {
        match msg {
            LoadMessage::Progress { .. } => {}
            LoadMessage::Done(case) => return Ok(*case),
            LoadMessage::Failed(e) => return Err(e),
        }
    }
    Err(format!(
        "loading {} stopped without a result",
        source.case_id
    ))
}

/// Run `steps` scripted steps on `target`, each through the session and on disk before
/// `committed(i)`; autosaves every `save_every` steps (0: never); sleeps `pause_ms` between.
pub fn run_edit_script(
    target: &ScriptTarget,
    steps: usize,
    seed: u64,
    save_every: usize,
    pause_ms: u64,
    mut committed: impl FnMut(usize),
) -> Result<(), String> {
    let mut session = open_session(target)?;
    let (affine, dims) = {
        let mask = session
            .open_case()
            .and_then(|o| o.reference.as_ref())
            .ok_or("the case has no mask to edit")?;
        (*mask.affine(), mask.dims3())
    };
    for i in 0..steps {
        for input in inputs_of(script_step(seed, i, &affine, dims)) {
            errors_of(session.apply(input))?;
        }
        session.flush();
        committed(i + 1);
        if save_every > 0 && (i + 1) % save_every == 0 {
            errors_of(session.apply(Input::Autosave))?;
            session.flush();
        }
        std::thread::sleep(std::time::Duration::from_millis(pause_ms));
    }
    errors_of(session.apply(Input::CloseCase { wait: true }))
}

fn errors_of(changes: super::Changes) -> Result<(), String> {
    match changes.messages.into_iter().find_map(|m| match m {
        Message::Error(e) => Some(e),
        _ => None,
    }) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
