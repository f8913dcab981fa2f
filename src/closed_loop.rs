//! The closed loop, scripted end to end on a phantom project: a weak first model makes
//! mistakes; an annotator accepts its predictions on some cases and corrects them with the
//! editing tools (erasing what it wrongly labelled, painting what it missed, fixing the class),
//! marking them reviewed; the model is fine-tuned on the corrections through the same code path
//! as the app's training panel (`model::runs`), the unreviewed cases are re-predicted, and
//! the held-out cases' Dice against the phantom's truth is compared before and after.
//!
//! Invariants: the truth masks are kept outside the project (the model never sees a held-out
//! case's truth); every correction is a real tool delta on the accepted prediction; the result
//! is deterministic for a configuration.

use crate::edit::tools::{accept_prediction, paint_voxels, PaintRules};
use crate::model::runs::{
    record_prediction, register_version, start_reinfer, start_run, InferEvent, RunEvent, RunRequest,
};
use crate::model::{dice_of, FitOptions};
use crate::phantom::{generate_project, PhantomConfig};
use crate::project::{ModelVersion, Project, ProjectError, ReviewStatus};
use crate::volume::{write_volume, Volume};
use std::path::Path;

/// Sizes of a scripted loop.
#[derive(Debug, Clone, PartialEq)]
pub struct LoopConfig {
    /// Phantom cases in all.
    pub cases: usize,
    /// Phantom grid (mm field of view).
    pub grid: usize,
    /// Cases annotated by hand before any model exists (the first model trains on them).
    pub seed_cases: usize,
    /// Cases corrected from the first model's predictions.
    pub corrected_cases: usize,
    /// Training steps of the first (weak) model.
    pub first_steps: usize,
    /// Fine-tuning epochs and steps per epoch.
    pub fine_tune_epochs: usize,
    /// Steps per fine-tuning epoch.
    pub fine_tune_steps: usize,
    /// Network and patch choices.
    pub options: FitOptions,
    /// Loss weight of corrected voxels.
    pub changed_weight: f64,
    /// Phantom seed.
    pub seed: u64,
}

/// What the loop measured.
#[derive(Debug, Clone, PartialEq)]
pub struct LoopReport {
    /// Held-out case ids.
    pub held_out: Vec<String>,
    /// Label names (index 0 = label 1).
    pub labels: Vec<String>,
    /// Mean held-out Dice per label before fine-tuning (first model).
    pub dice_before: Vec<Option<f64>>,
    /// The same after fine-tuning on the corrections.
    pub dice_after: Vec<Option<f64>>,
    /// Mean held-out foreground Dice (any label) before and after.
    pub foreground_before: f64,
    /// After.
    pub foreground_after: f64,
    /// Voxels the annotator changed on the accepted predictions.
    pub voxels_corrected: usize,
    /// The first and the fine-tuned version ids.
    pub versions: (String, String),
}

fn invalid(path: &Path, problem: impl Into<String>) -> ProjectError {
    ProjectError::Invalid {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

/// Run a training request to its end (as the app's panel does, without a window).
fn train(project: &mut Project, request: RunRequest) -> Result<ModelVersion, ProjectError> {
    let handle = start_run(project.clone(), request, || {});
    for e in handle.events.iter() {
        match e {
            RunEvent::Finished(v) => {
                register_version(&mut project.manifest, v.clone(), true);
                project.save()?;
                return Ok(v);
            }
            RunEvent::Failed(e) => return Err(invalid(&project.manifest_path(), e.to_string())),
            _ => {}
        }
    }
    Err(invalid(
        &project.manifest_path(),
        "training ended without a result",
    ))
}

/// Predict `ids` with `version` and record the predictions (as the app does after a run).
fn reinfer(
    project: &mut Project,
    version: &ModelVersion,
    ids: Vec<String>,
    backend: &str,
) -> Result<(), ProjectError> {
    let handle = start_reinfer(project.clone(), version.clone(), ids, backend.into(), || {});
    let classes = project.manifest.classes.len();
    for e in handle.events.iter() {
        match e {
            InferEvent::Case(p) => {
                if let Some(c) = project
                    .manifest
                    .cases
                    .iter_mut()
                    .find(|c| c.id == p.case_id)
                {
                    record_prediction(c, &p, classes);
                }
            }
            InferEvent::CaseFailed { message, .. } => {
                return Err(invalid(&project.manifest_path(), message))
            }
            InferEvent::Failed(e) => return Err(invalid(&project.manifest_path(), e.to_string())),
            InferEvent::Finished { .. } => break,
            InferEvent::Started { .. } => {}
        }
    }
    project.save()
}

/// Mean Dice per label and foreground Dice of the held-out cases' predictions against truth.
fn held_out_dice(
    project: &Project,
    truth: &[(String, Volume<u8>)],
    labels: usize,
) -> Result<(Vec<Option<f64>>, f64), ProjectError> {
    let mut per_label = vec![Vec::new(); labels];
    let mut fg = Vec::new();
    for (id, t) in truth {
        let case = project
            .manifest
            .case(id)
            .ok_or_else(|| invalid(&project.manifest_path(), format!("no case {id}")))?;
        let rel = case
            .predicted_mask
            .as_deref()
            .ok_or_else(|| invalid(&project.manifest_path(), format!("{id} has no prediction")))?;
        let p = project.load_mask(rel)?;
        for (l, acc) in per_label.iter_mut().enumerate() {
            if let Some(d) = dice_of(t.data(), p.data(), (l + 1) as u8) {
                acc.push(d);
            }
        }
        let binary = |m: &[u8]| m.iter().map(|v| u8::from(*v > 0)).collect::<Vec<u8>>();
        fg.push(dice_of(&binary(t.data()), &binary(p.data()), 1).unwrap_or(0.0));
    }
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    Ok((
        per_label.iter().map(|v| mean(v)).collect(),
        mean(&fg).unwrap_or(0.0),
    ))
}

/// Run the loop in `dir` (a new folder): `dir/project` and `dir/truth`.
pub fn run_closed_loop(dir: &Path, cfg: &LoopConfig) -> Result<LoopReport, ProjectError> {
    let root = dir.join("project");
    let phantom = PhantomConfig {
        cases: cfg.cases,
        seed: cfg.seed,
        grid: cfg.grid,
        ..PhantomConfig::default()
    };
    let mut project = generate_project(&root, &phantom, |_, _| {})?;
    let truth = set_truth_aside(&mut project, &dir.join("truth"), cfg.seed_cases)?;
    let labels = project.manifest.labels.labels().len();
    let backend = "cpu".to_string();
    // A first, weak model from the hand-annotated seed cases.
    let v1 = train(
        &mut project,
        run_request(cfg, 1, cfg.first_steps, None, 1.0),
    )?;
    let unreviewed: Vec<String> = project.manifest.cases[cfg.seed_cases..]
        .iter()
        .map(|c| c.id.clone())
        .collect();
    reinfer(&mut project, &v1, unreviewed.clone(), &backend)?;
    let corrected_end = (cfg.seed_cases + cfg.corrected_cases).min(project.manifest.cases.len());
    let held_out: Vec<(String, Volume<u8>)> = truth[corrected_end..]
        .iter()
        .map(|t| (t.id.clone(), t.mask.clone()))
        .collect();
    let (dice_before, foreground_before) = held_out_dice(&project, &held_out, labels)?;
    // The annotator accepts each prediction, then corrects it with the tools.
    let mut voxels_corrected = 0;
    for (i, t) in truth
        .iter()
        .enumerate()
        .take(corrected_end)
        .skip(cfg.seed_cases)
    {
        voxels_corrected += correct_case(&mut project, i, t, labels)?;
    }
    project.save()?;
    // Fine-tune the first model on every reviewed case, corrected voxels weighted.
    let fine_tune = run_request(
        cfg,
        cfg.fine_tune_epochs,
        cfg.fine_tune_steps,
        Some(v1.id.clone()),
        cfg.changed_weight,
    );
    let v2 = train(&mut project, fine_tune)?;
    let still_unreviewed: Vec<String> =
        unreviewed[cfg.corrected_cases.min(unreviewed.len())..].to_vec();
    reinfer(&mut project, &v2, still_unreviewed, &backend)?;
    let (dice_after, foreground_after) = held_out_dice(&project, &held_out, labels)?;
    Ok(LoopReport {
        held_out: held_out.iter().map(|(id, _)| id.clone()).collect(),
        labels: project
            .manifest
            .labels
            .labels()
            .iter()
            .map(|l| l.name.clone())
            .collect(),
        dice_before,
        dice_after,
        foreground_before,
        foreground_after,
        voxels_corrected,
        versions: (v1.id, v2.id),
    })
}

/// One phantom case's truth, kept outside the project.
struct TruthCase {
    /// Case id.
    id: String,
    /// The phantom's label mask.
    mask: Volume<u8>,
    /// The phantom's class.
    class: Option<String>,
}

/// Keep every case's phantom mask and class aside as the truth (masks written to `truth_dir`),
/// mark the first `seed_cases` reviewed (they keep their annotation) and strip the others'
/// mask and class; the project is saved.
fn set_truth_aside(
    project: &mut Project,
    truth_dir: &Path,
    seed_cases: usize,
) -> Result<Vec<TruthCase>, ProjectError> {
    std::fs::create_dir_all(truth_dir).map_err(|e| ProjectError::Io {
        path: truth_dir.to_path_buf(),
        source: e,
    })?;
    let mut truth = Vec::new();
    for i in 0..project.manifest.cases.len() {
        let case = project.manifest.cases[i].clone();
        let mask = project
            .load_reference_mask(&case)?
            .ok_or_else(|| invalid(&project.manifest_path(), format!("{} has no mask", case.id)))?;
        write_volume(&truth_dir.join(format!("{}.nii.gz", case.id)), &mask)?;
        truth.push(TruthCase {
            id: case.id.clone(),
            mask,
            class: case.class_label.clone(),
        });
        let c = &mut project.manifest.cases[i];
        if i < seed_cases {
            c.review = ReviewStatus::Reviewed;
        } else {
            c.reference_mask = None;
            c.class_label = None;
        }
    }
    project.save()?;
    Ok(truth)
}

/// A training request on the reviewed cases with the loop's network options, on the CPU.
fn run_request(
    cfg: &LoopConfig,
    epochs: usize,
    steps: usize,
    from: Option<String>,
    weight: f64,
) -> RunRequest {
    RunRequest {
        options: FitOptions {
            epochs,
            steps_per_epoch: steps,
            ..cfg.options.clone()
        },
        backend: "cpu".to_string(),
        fine_tune_from: from,
        only_reviewed: true,
        changed_weight: weight,
        masks: Vec::new(),
        minutes: None,
        plan: Default::default(),
        promptable: false,
        devices: 1,
        precision: Default::default(),
    }
}

/// The annotator on case `i`: accept its prediction, paint every voxel that differs from the
/// truth with the truth's label, set the truth's class and mark it reviewed (the manifest is
/// not saved). Returns the voxels painted.
fn correct_case(
    project: &mut Project,
    i: usize,
    truth: &TruthCase,
    labels: usize,
) -> Result<usize, ProjectError> {
    let rules = PaintRules::default();
    let case = project.manifest.cases[i].clone();
    let rel = case.predicted_mask.clone().ok_or_else(|| {
        invalid(
            &project.manifest_path(),
            format!("{} has no prediction", case.id),
        )
    })?;
    let predicted = project.load_mask(&rel)?;
    let [nx, ny, nz] = predicted.dims3();
    let mut mask = Volume::filled([nx, ny, nz, 1], *predicted.affine(), 0u8)?;
    accept_prediction(&mut mask, &predicted, None, &rules);
    let [nx, ny, _] = mask.dims3();
    let mut voxels_corrected = 0;
    for value in 0..=labels as u8 {
        let wrong: Vec<[usize; 3]> = truth
            .mask
            .data()
            .iter()
            .zip(mask.data())
            .enumerate()
            .filter(|(_, (t, m))| **t == value && **m != value)
            .map(|(n, _)| [n % nx, (n / nx) % ny, n / (nx * ny)])
            .collect();
        voxels_corrected += wrong.len();
        paint_voxels(&mut mask, &wrong, value, &rules, None);
    }
    let mask_rel = format!("{}/reference.nii.gz", Project::case_dir_rel(&case.id));
    write_volume(&project.resolve(&mask_rel), &mask)?;
    let c = &mut project.manifest.cases[i];
    c.reference_mask = Some(mask_rel);
    c.class_label = truth.class.clone();
    c.review = ReviewStatus::Reviewed;
    Ok(voxels_corrected)
}
