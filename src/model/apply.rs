//! Applying a trained network to a project: predict every case (mask, foreground probability and
//! class probabilities written into the project) and evaluate against the reference (Dice per
//! label, volume error, class AUC), and choosing the device to run on.
//!
//! Invariants: predictions are written on each case's own grid and affine, atomically; a case
//! that cannot be read is reported with its file and skipped, never half-written.

use super::data::zscore_in_head;
use super::fit::{auc, dice_of};
use super::inference::{predict_volume, Prediction};
use super::model::MultiTaskUNet;
use super::training::TrainingConfig;
use crate::project::{Case, Project, ProjectError, SequenceName};
use crate::volume::write_volume;
use burn::prelude::*;

/// The compute device: `cpu` (burn's flex backend), `gpu` (wgpu), or `auto` (a real GPU if one is
/// present, else the CPU). Returns the device and a sentence saying which and why.
pub fn choose_device(backend: &str) -> (Device, String) {
    let gpu_present = || {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
            .ok()
            .map(|a| a.get_info())
            .filter(|i| i.device_type != wgpu::DeviceType::Cpu)
    };
    match backend {
        "cpu" => (Device::flex(), "CPU (burn flex backend)".into()),
        "gpu" => (
            Device::wgpu(DeviceKind::DefaultDevice),
            "GPU (burn wgpu backend)".into(),
        ),
        _ => match gpu_present() {
            Some(info) => (
                Device::wgpu(DeviceKind::DefaultDevice),
                format!("GPU: {} (burn wgpu backend)", info.name),
            ),
            None => (
                Device::flex(),
                "CPU (burn flex backend): no hardware GPU found (software Vulkan is too slow to train on)"
                    .into(),
            ),
        },
    }
}

/// The normalised input channels of a case, in the config's sequence order.
pub fn case_channels(
    project: &Project,
    case: &Case,
    config: &TrainingConfig,
) -> Result<(Vec<Vec<f32>>, crate::volume::Volume<f32>), ProjectError> {
    let mut channels = Vec::new();
    let mut first = None;
    for name in &config.sequences {
        let v = project
            .load_sequence(case, &SequenceName::from(name.clone()))?
            .to_f32();
        channels.push(zscore_in_head(&v.data()[..v.frame_len()]));
        first.get_or_insert(v);
    }
    let first = first.ok_or_else(|| crate::project::ProjectError::Invalid {
        path: project.manifest_path(),
        problem: "the model names no input sequences".into(),
    })?;
    Ok((channels, first))
}

/// Predict one case on its own grid.
pub fn predict_case(
    project: &Project,
    case: &Case,
    model: &MultiTaskUNet,
    config: &TrainingConfig,
    device: &Device,
) -> Result<Prediction, ProjectError> {
    let (channels, first) = case_channels(project, case, config)?;
    Ok(predict_volume(
        model,
        &channels,
        first.dims3(),
        *first.affine(),
        config.window,
        config.class_window,
        0.5,
        device,
    )?)
}

/// Predict every case of the project, writing `cases/<id>/predicted.nii.gz` (labels) and
/// `predicted_prob.nii.gz` (foreground probability) and the class probabilities into the
/// manifest, which is saved at the end. `progress(done, total)` after each case.
pub fn predict_project(
    project: &mut Project,
    model: &MultiTaskUNet,
    config: &TrainingConfig,
    device: &Device,
    mut progress: impl FnMut(usize, usize),
) -> Result<usize, ProjectError> {
    let total = project.manifest.cases.len();
    for i in 0..total {
        let case = project.manifest.cases[i].clone();
        let p = predict_case(project, &case, model, config, device)?;
        let dir = Project::case_dir_rel(&case.id);
        let mask_rel = format!("{dir}/predicted.nii.gz");
        let prob_rel = format!("{dir}/predicted_prob.nii.gz");
        write_volume(&project.resolve(&mask_rel), &p.mask)?;
        write_volume(&project.resolve(&prob_rel), &p.foreground)?;
        let c = &mut project.manifest.cases[i];
        c.predicted_mask = Some(mask_rel);
        c.predicted_probabilities = Some(prob_rel);
        if p.class_probabilities.len() == project.manifest.classes.len() {
            c.predicted_class = Some(p.class_probabilities);
        }
        progress(i + 1, total);
    }
    project.save()?;
    Ok(total)
}

/// One case's evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseEvaluation {
    /// Case id.
    pub case_id: String,
    /// Dice per foreground label (index 0 = label 1), where the reference has it.
    pub dice: Vec<Option<f64>>,
    /// Predicted minus reference labelled volume (mm³), per foreground label.
    pub volume_error_mm3: Vec<f64>,
    /// Reference class index.
    pub class: Option<usize>,
    /// Predicted class probabilities.
    pub class_probabilities: Vec<f32>,
}

/// Cohort figures.
#[derive(Debug, Clone, PartialEq)]
pub struct CohortEvaluation {
    /// Mean Dice per foreground label.
    pub dice: Vec<Option<f64>>,
    /// Class AUC (one-vs-rest, averaged over classes).
    pub class_auc: Option<f64>,
    /// Class accuracy.
    pub class_accuracy: f64,
}

/// Evaluate the cases with a reference mask (`only`: just these case ids, e.g. held-out ones).
pub fn evaluate_project(
    project: &Project,
    model: &MultiTaskUNet,
    config: &TrainingConfig,
    device: &Device,
    only: Option<&[String]>,
    mut progress: impl FnMut(usize, usize),
) -> Result<(Vec<CaseEvaluation>, CohortEvaluation), ProjectError> {
    let labels = config.model.num_labels.saturating_sub(1);
    let cases: Vec<&Case> = project
        .manifest
        .cases
        .iter()
        .filter(|c| c.reference_mask.is_some())
        .filter(|c| only.is_none_or(|ids| ids.contains(&c.id)))
        .collect();
    let mut out = Vec::new();
    for (n, case) in cases.iter().enumerate() {
        let Some(reference) = project.load_reference_mask(case)? else {
            continue;
        };
        let p = predict_case(project, case, model, config, device)?;
        let vox = reference.voxel_volume_mm3();
        let count = |m: &[u8], l: u8| m.iter().filter(|v| **v == l).count() as f64 * vox;
        out.push(CaseEvaluation {
            case_id: case.id.clone(),
            dice: (1..=labels)
                .map(|l| dice_of(reference.data(), p.mask.data(), l as u8))
                .collect(),
            volume_error_mm3: (1..=labels)
                .map(|l| count(p.mask.data(), l as u8) - count(reference.data(), l as u8))
                .collect(),
            class: case
                .class_label
                .as_ref()
                .and_then(|c| project.manifest.classes.iter().position(|x| x == c)),
            class_probabilities: p.class_probabilities,
        });
        progress(n + 1, cases.len());
    }
    let dice = (0..labels)
        .map(|l| {
            let v: Vec<f64> = out.iter().filter_map(|e| e.dice[l]).collect();
            (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
        })
        .collect();
    let with_class: Vec<&CaseEvaluation> = out.iter().filter(|e| e.class.is_some()).collect();
    let k = project.manifest.classes.len();
    let aucs: Vec<f64> = (0..k)
        .filter_map(|c| {
            let scores: Vec<f64> = with_class
                .iter()
                .map(|e| f64::from(e.class_probabilities.get(c).copied().unwrap_or(0.0)))
                .collect();
            let pos: Vec<bool> = with_class.iter().map(|e| e.class == Some(c)).collect();
            auc(&scores, &pos)
        })
        .collect();
    let correct = with_class
        .iter()
        .filter(|e| {
            e.class_probabilities
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(i, _)| i)
                == e.class
        })
        .count();
    let cohort = CohortEvaluation {
        dice,
        class_auc: (!aucs.is_empty()).then(|| aucs.iter().sum::<f64>() / aucs.len() as f64),
        class_accuracy: correct as f64 / with_class.len().max(1) as f64,
    };
    Ok((out, cohort))
}
