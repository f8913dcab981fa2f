//! Applying a trained network to a project: predict every case (mask, foreground probability and
//! class probabilities written into the project) and evaluate against the reference (Dice per
//! label, volume error, class AUC), and choosing the device to run on.
//!
//! Invariants: predictions are written on each case's own grid and affine, atomically; a case
//! that cannot be read is reported with its file and skipped, never half-written.

use super::data::channels_of;
use super::fit::{class_figures, dice_of};
use super::inference::{predict_volume_in, Prediction};
use super::model::MultiTaskUNet;
use super::training::TrainingConfig;
use crate::project::shard::{PredictionRecord, Shard};
use crate::project::{Case, Project, ProjectError, SequenceName};
use crate::volume::write_volume;
use burn::prelude::*;
use std::path::Path;

/// The first hardware GPU wgpu finds (software rasterisers such as lavapipe do not count).
fn hardware_gpu() -> Option<wgpu::AdapterInfo> {
    let instance =
        wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
    pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions::default()))
        .ok()
        .map(|a| a.get_info())
        .filter(|i| i.device_type != wgpu::DeviceType::Cpu)
}

/// burn's CUDA backend, in a build with the `cuda` feature.
#[cfg(feature = "cuda")]
mod cuda {
    use burn::prelude::Device;

    /// The first CUDA GPU, when there is one.
    pub fn device() -> Result<Device, String> {
        match count() {
            0 => Err("no CUDA GPU found (no NVIDIA driver, or no GPU it drives)".into()),
            _ => Ok(Device::cuda(0)),
        }
    }

    /// The CUDA GPUs 0..n, as many as there are.
    pub fn devices(n: usize) -> Vec<Device> {
        (0..n.min(count())).map(Device::cuda).collect()
    }

    /// How many CUDA GPUs burn finds (none without an NVIDIA driver: cudarc panics when it
    /// cannot load the driver; caught here).
    fn count() -> usize {
        std::panic::catch_unwind(|| Device::enumerate(burn::tensor::DeviceType::Cuda).len())
            .unwrap_or(0)
    }
}

/// burn's CUDA backend, absent from this build.
#[cfg(not(feature = "cuda"))]
mod cuda {
    use burn::prelude::Device;

    /// Why there is no CUDA GPU here.
    pub fn device() -> Result<Device, String> {
        Err(
            "this build has no CUDA backend (build it with `cargo build --release --features cuda`)"
                .into(),
        )
    }

    /// None.
    pub fn devices(_n: usize) -> Vec<Device> {
        Vec::new()
    }
}

/// burn's CUDA GPUs 0..n, as many as there are (none in a build without the backend or
/// without a driver).
pub fn cuda_devices(n: usize) -> Vec<Device> {
    cuda::devices(n)
}

/// burn's first CUDA GPU, or why there is none (no backend in this build, or no GPU).
pub fn cuda_device() -> Result<Device, String> {
    cuda::device()
}

/// Whether `device` is one of burn's CUDA devices.
pub fn is_cuda(device: &Device) -> bool {
    cuda::device().is_ok_and(|cuda| device.clone().inner() == cuda)
}

/// The compute device: `cpu` (burn's flex backend), `gpu` (wgpu), `cuda` (burn's CUDA backend,
/// in a build with the `cuda` feature; otherwise `auto`, saying why), or `auto` (a real GPU if
/// one is present, else the CPU). Returns the device and a sentence saying which and why.
pub fn choose_device(backend: &str) -> (Device, String) {
    match backend {
        "cpu" => (Device::flex(), "CPU (burn flex backend)".into()),
        "gpu" => (
            Device::wgpu(DeviceKind::DefaultDevice),
            "GPU (burn wgpu backend)".into(),
        ),
        "cuda" => match cuda::device() {
            Ok(device) => (device, "GPU (burn CUDA backend)".into()),
            Err(why) => {
                let (device, about) = choose_device("auto");
                (device, format!("{about}; --backend cuda: {why}"))
            }
        },
        _ => match hardware_gpu() {
            Some(info) => (
                Device::wgpu(DeviceKind::DefaultDevice),
                format!("GPU: {} (burn wgpu backend)", info.name),
            ),
            None => (
                Device::flex(),
                format!(
                    "CPU (burn flex backend): no hardware GPU found (software Vulkan is too slow \
                     to train on){}",
                    vulkan_hint(Path::new(NVIDIA_DEVICE))
                ),
            ),
        },
    }
}

/// The device node of an NVIDIA driver's first GPU.
const NVIDIA_DEVICE: &str = "/dev/nvidia0";

/// Why a GPU that the driver shows (its device node `nvidia_device` exists) may be missing
/// from Vulkan's list, or nothing. On an H200 server wgpu found no GPU until the Vulkan loader
/// and glvnd were installed: NVIDIA's Vulkan driver lives in its GLX library, which cannot
/// create an instance without glvnd.
fn vulkan_hint(nvidia_device: &Path) -> String {
    match nvidia_device.exists() {
        true => format!(
            "; {} exists, so an NVIDIA GPU is there but Vulkan has no driver for it: install \
             the Vulkan loader and glvnd (Debian/Ubuntu: libvulkan1 libglvnd0 libglx0 \
             libegl1); VK_LOADER_DEBUG=error shows why",
            nvidia_device.display()
        ),
        false => String::new(),
    }
}

/// Whether a fit on `device` can split its batches across `n` devices: always on the CPU (its
/// replicas share the one device), else when wgpu finds `n` discrete GPUs (burn numbers them;
/// counted on the backend that shows the most, as one GPU appears once per graphics API).
pub fn check_data_parallel(device: &Device, n: usize) -> Result<(), String> {
    if n <= 1 || *device == Device::flex() {
        return Ok(());
    }
    if is_cuda(device) {
        let found = cuda::devices(n).len();
        return match found >= n {
            true => Ok(()),
            false => Err(format!(
                "data-parallel training on {n} devices: {found} CUDA GPU(s) found"
            )),
        };
    }
    let desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
    let backends = desc.backends;
    let instance = wgpu::Instance::new(desc);
    let mut per_backend = std::collections::HashMap::new();
    for a in pollster::block_on(instance.enumerate_adapters(backends)) {
        let info = a.get_info();
        if info.device_type == wgpu::DeviceType::DiscreteGpu {
            *per_backend.entry(info.backend).or_insert(0usize) += 1;
        }
    }
    let found = per_backend.values().copied().max().unwrap_or(0);
    match found >= n {
        true => Ok(()),
        false => Err(format!(
            "data-parallel training on {n} devices: {found} discrete GPU(s) found"
        )),
    }
}

/// Which kind of device `backend` (`cpu`, `gpu`, `auto`) trains on, for planning.
pub fn device_class(backend: &str) -> super::plan::DeviceClass {
    use super::plan::DeviceClass;
    match backend {
        "cpu" => DeviceClass::Cpu,
        "gpu" => DeviceClass::Gpu,
        "cuda" if cuda::device().is_ok() => DeviceClass::Gpu,
        _ if hardware_gpu().is_some() => DeviceClass::Gpu,
        _ => DeviceClass::Cpu,
    }
}

/// A case's input as the network sees it: normalised channels, the first sequence in the same
/// layout (its grid and affine), and the reorientation back to the case's own layout (`None`:
/// kept as stored).
pub type CaseInput = (
    Vec<Vec<f32>>,
    crate::volume::Volume<f32>,
    Option<crate::volume::Reorientation>,
);

/// The normalised input channels of a case, in the config's sequence order and in the layout
/// the network works in (RAS for 3D networks).
pub fn case_channels(
    project: &Project,
    case: &Case,
    config: &TrainingConfig,
) -> Result<CaseInput, ProjectError> {
    let vols = config
        .sequences
        .iter()
        .map(|name| {
            Ok(project
                .load_sequence(case, &SequenceName::from(name.clone()))?
                .to_f32())
        })
        .collect::<Result<Vec<_>, ProjectError>>()?;
    let (vols, reorientation) = if config.ras_layout() {
        let mut back = None;
        let ras = vols
            .iter()
            .map(|v| {
                let (r, how) = crate::volume::reorient_to_ras(v);
                back.get_or_insert(how);
                r
            })
            .collect();
        (ras, back)
    } else {
        (vols, None)
    };
    let channels = channels_of(&vols);
    let first = vols
        .into_iter()
        .next()
        .ok_or_else(|| crate::project::ProjectError::Invalid {
            path: project.manifest_path(),
            problem: "the model names no input sequences".into(),
        })?;
    Ok((channels, first, reorientation))
}

/// Predict one case on its own grid, layout and affine, the network in `config.precision` on a
/// GPU (a model trained in mixed precision predicts in it, as nnU-Net's predictor under
/// autocast; f32 on the CPU).
pub fn predict_case(
    project: &Project,
    case: &Case,
    model: &MultiTaskUNet,
    config: &TrainingConfig,
    device: &Device,
) -> Result<Prediction, ProjectError> {
    if config.prompt.is_some() {
        return Err(crate::project::invalid(
            &project.manifest_path(),
            "this model is promptable: it segments from prompts (the Prompt tool, \
             `mriloop eval-prompt`), not on its own",
        ));
    }
    let (channels, first, reorientation) = case_channels(project, case, config)?;
    let mut p = predict_channels(&channels, &first, model, config, device)?;
    p.class_probabilities = config.class_probabilities(
        std::mem::take(&mut p.class_probabilities),
        p.mask.data(),
        Some(p.mask.voxel_volume_mm3()),
    );
    Ok(match reorientation {
        Some(r) => Prediction {
            mask: r.restore(&p.mask)?,
            foreground: r.restore(&p.foreground)?,
            class_probabilities: p.class_probabilities,
        },
        None => p,
    })
}

/// Predict normalised channels on the grid of `first` (resampled to the training spacing and
/// back when the config has one).
fn predict_channels(
    channels: &[Vec<f32>],
    first: &crate::volume::Volume<f32>,
    model: &MultiTaskUNet,
    config: &TrainingConfig,
    device: &Device,
) -> Result<Prediction, ProjectError> {
    let Some(spacing) = config.spacing_mm else {
        return Ok(predict_volume_in(
            model,
            channels,
            (first.dims3(), *first.affine()),
            (config.window, 0.5, config.precision),
            config.class_view(),
            device,
        )?);
    };
    // Predict at the training spacing, then map the result back onto the case's own grid (the
    // labels by largest summed trilinear weight: smoother than the nearest voxel; objects that
    // rule would erase whole kept by the nearest voxel).
    use crate::volume::{resample_labels_keeping_objects, resample_to_grid, Interpolation};
    let orig_dims = first.dims3();
    let PromptContext {
        channels: resampled,
        dims,
        affine,
    } = on_spacing(channels, first, spacing)?;
    let p = predict_volume_in(
        model,
        &resampled,
        (dims, affine),
        (config.window, 0.5, config.precision),
        config.class_view(),
        device,
    )?;
    Ok(Prediction {
        mask: resample_labels_keeping_objects(&p.mask, orig_dims, *first.affine())?,
        foreground: resample_to_grid(
            &p.foreground,
            orig_dims,
            *first.affine(),
            Interpolation::Linear,
        )?,
        class_probabilities: p.class_probabilities,
    })
}

/// `channels` on the grid of `first` resampled (linearly) to `spacing` mm, with the new grid.
fn on_spacing(
    channels: &[Vec<f32>],
    first: &crate::volume::Volume<f32>,
    spacing: [f64; 3],
) -> Result<PromptContext, ProjectError> {
    use crate::volume::{grid_with_spacing, resample_to_grid, Interpolation};
    let (dims, affine) = grid_with_spacing(first.dims3(), first.affine(), spacing);
    let orig_dims = first.dims3();
    let n = first.frame_len();
    let resampled = channels
        .iter()
        .map(|c| {
            let v = crate::volume::Volume::new(
                [orig_dims[0], orig_dims[1], orig_dims[2], 1],
                *first.affine(),
                c[..n.min(c.len())].to_vec(),
            )?;
            Ok(resample_to_grid(&v, dims, affine, Interpolation::Linear)?.into_data())
        })
        .collect::<Result<Vec<_>, ProjectError>>()?;
    Ok(PromptContext {
        channels: resampled,
        dims,
        affine,
    })
}

/// A case's normalised input channels on the grid a model works on (its layout and spacing),
/// with that grid's dims and voxel→world affine: what every prompt on the case reads.
#[derive(Debug, Clone)]
pub struct PromptContext {
    /// The channels (the config's sequences), i fastest.
    pub channels: Vec<Vec<f32>>,
    /// The grid's size.
    pub dims: [usize; 3],
    /// The grid's voxel→world (mm) affine.
    pub affine: crate::volume::Affine,
}

/// The prompt context of `case` for a model trained with `config`.
pub fn prompt_context(
    project: &Project,
    case: &Case,
    config: &TrainingConfig,
) -> Result<PromptContext, ProjectError> {
    let (channels, first, _) = case_channels(project, case, config)?;
    match config.spacing_mm {
        Some(spacing) => on_spacing(&channels, &first, spacing),
        None => Ok(PromptContext {
            channels,
            dims: first.dims3(),
            affine: *first.affine(),
        }),
    }
}

/// Predict every case of the project (or of `shard` only), writing `cases/<id>/predicted.nii.gz`
/// (labels), `predicted_prob.nii.gz` (foreground probability) and the case's prediction record
/// (`project::shard`, naming them with the class probabilities and `model_name`). Without a
/// shard the records are merged into the manifest, saved at the end; a shard leaves the
/// manifest alone (`merge-shards` merges). `progress(done, total)` after each case; returns
/// how many cases it predicted.
pub fn predict_project(
    project: &mut Project,
    (model, config, device): (&MultiTaskUNet, &TrainingConfig, &Device),
    shard: Option<Shard>,
    model_name: &str,
    mut progress: impl FnMut(usize, usize),
) -> Result<usize, ProjectError> {
    let chosen: Vec<usize> = (0..project.manifest.cases.len())
        .filter(|i| shard.is_none_or(|s| s.takes(*i)))
        .collect();
    let classes = project.manifest.classes.len();
    for (k, &i) in chosen.iter().enumerate() {
        let case = project.manifest.cases[i].clone();
        let p = predict_case(project, &case, model, config, device)?;
        let dir = Project::case_dir_rel(&case.id);
        let mask_rel = format!("{dir}/predicted.nii.gz");
        let prob_rel = format!("{dir}/predicted_prob.nii.gz");
        write_volume(&project.resolve(&mask_rel), &p.mask)?;
        write_volume(&project.resolve(&prob_rel), &p.foreground)?;
        let class_probabilities = match p.class_probabilities.len() == classes {
            true => p.class_probabilities,
            false => Vec::new(),
        };
        project.write_prediction_record(&PredictionRecord {
            case_id: case.id.clone(),
            mask: mask_rel,
            probabilities: prob_rel,
            class_probabilities,
            model: model_name.to_string(),
        })?;
        progress(k + 1, chosen.len());
    }
    if shard.is_none() {
        crate::project::shard::merge_records(project)?;
    }
    Ok(chosen.len())
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
    /// HD95 (mm) per foreground label, where both masks have it.
    pub hd95_mm: Vec<Option<f64>>,
    /// Reference class index.
    pub class: Option<usize>,
    /// Predicted class probabilities.
    pub class_probabilities: Vec<f32>,
}

/// Dice (where the reference has the label) and predicted minus reference volume (mm³) of
/// each foreground label `1..=labels`, for two masks on the reference's grid.
pub fn dice_and_volume_error(
    reference: &crate::volume::Volume<u8>,
    predicted: &crate::volume::Volume<u8>,
    labels: usize,
) -> (Vec<Option<f64>>, Vec<f64>) {
    let vox = reference.voxel_volume_mm3();
    let count = |m: &[u8], l: u8| m.iter().filter(|v| **v == l).count() as f64 * vox;
    let (r, p) = (reference.data(), predicted.data());
    (
        (1..=labels).map(|l| dice_of(r, p, l as u8)).collect(),
        (1..=labels)
            .map(|l| count(p, l as u8) - count(r, l as u8))
            .collect(),
    )
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

/// Whether `case` can be evaluated: it has a reference mask or a class.
pub fn is_evaluable(case: &Case) -> bool {
    case.reference_mask.is_some() || case.class_label.is_some()
}

/// Evaluate the cases with a reference mask or a class (`only`: just these case ids, e.g.
/// held-out ones); Dice is computed where there is a reference mask.
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
        .filter(|c| is_evaluable(c))
        .filter(|c| only.is_none_or(|ids| ids.contains(&c.id)))
        .collect();
    let mut out = Vec::new();
    for (n, case) in cases.iter().enumerate() {
        let reference = project.load_reference_mask(case)?;
        let p = predict_case(project, case, model, config, device)?;
        let (dice, volume_error_mm3) = match &reference {
            Some(r) => dice_and_volume_error(r, &p.mask, labels),
            None => (vec![None; labels], vec![0.0; labels]),
        };
        let hd95_mm = (1..=labels)
            .map(|l| {
                reference
                    .as_ref()
                    .and_then(|r| crate::volume::distance::hd95_mm(r, &p.mask, l as u8))
            })
            .collect();
        out.push(CaseEvaluation {
            case_id: case.id.clone(),
            dice,
            volume_error_mm3,
            hd95_mm,
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
    let with_class: Vec<(&[f32], usize)> = out
        .iter()
        .filter_map(|e| e.class.map(|c| (e.class_probabilities.as_slice(), c)))
        .collect();
    let probs: Vec<&[f32]> = with_class.iter().map(|(p, _)| *p).collect();
    let truth: Vec<usize> = with_class.iter().map(|(_, c)| *c).collect();
    let (class_accuracy, class_auc) = class_figures(&probs, &truth, project.manifest.classes.len());
    let cohort = CohortEvaluation {
        dice,
        class_auc,
        class_accuracy,
    };
    Ok((out, cohort))
}

/// The choices `mriloop train` exposes; everything else is derived from the project.
#[derive(Debug, Clone, PartialEq)]
pub struct FitOptions {
    /// Input sequences (empty: the first two of the project; all of a 4D project).
    pub sequences: Vec<String>,
    /// Epochs.
    pub epochs: usize,
    /// Steps per epoch.
    pub steps_per_epoch: usize,
    /// Patch edge (voxels; 1 along z for 2D slices).
    pub patch: usize,
    /// Patches per batch.
    pub batch: usize,
    /// Edge of the whole-head crop the class is learned from.
    pub class_window: usize,
    /// Channels of the first level.
    pub base_channels: usize,
    /// `joint`, `seg` or `class`.
    pub mode: String,
    /// Resample 3D and 2D cases to this voxel size (mm) in-plane and through-plane (3D).
    pub spacing_mm: Option<f64>,
    /// Learning rate.
    pub learning_rate: f64,
    /// Seed.
    pub seed: u64,
}

impl Default for FitOptions {
    /// A small joint run from scratch on each case's own grid (the settings `mriloop train`
    /// used before it had a plan).
    fn default() -> Self {
        Self {
            sequences: Vec::new(),
            epochs: 20,
            steps_per_epoch: 50,
            patch: 32,
            batch: 2,
            class_window: 64,
            base_channels: 8,
            mode: "joint".into(),
            spacing_mm: None,
            learning_rate: 2e-3,
            seed: 1,
        }
    }
}

/// The fit configuration for a project: input form (3D volumes, 2D slices, 4D series), labels
/// and classes from the manifest, and the options. A project with no reference mask trains the
/// classification only.
pub fn fit_config_for(
    project: &Project,
    o: &FitOptions,
) -> Result<super::fit::FitConfig, ProjectError> {
    use crate::project::InputForm;
    let form = project.manifest.input_form();
    let sequences = input_sequences(project, form, o);
    // At least one foreground label, so the network always has a segmentation head.
    let mut label_names = project.manifest.labels.names_by_value();
    if label_names.len() < 2 {
        label_names.push("label1".into());
    }
    let mode = task_mode(project, &o.mode)?;
    let (net, patch, class_window) =
        network_for_form(project, form, o, &sequences, label_names.len())?;
    let training = TrainingConfig::new(
        net.with_base_channels(o.base_channels)
            .with_class_max_pool(true),
    )
    .with_mode(mode)
    .with_learning_rate(o.learning_rate)
    .with_seed(o.seed)
    .with_sequences(sequences)
    .with_label_names(label_names)
    .with_class_names(project.manifest.classes.clone())
    .with_window(patch)
    .with_class_window(class_window)
    .with_spacing_mm(match (o.spacing_mm, form) {
        (Some(s), InputForm::Volume3d) => Some([s; 3]),
        (Some(s), InputForm::Slice2d) => Some([s, s, 0.0]),
        _ => None,
    });
    // A left–right flip swaps lateral pairs (habenula_L ↔ habenula_R).
    let augment =
        super::data::AugmentConfig::new().with_mirror_pairs(project.manifest.labels.mirror_pairs());
    Ok(super::fit::FitConfig::new(training)
        .with_augment(augment)
        .with_epochs(o.epochs)
        .with_steps_per_epoch(o.steps_per_epoch)
        .with_batch_size(o.batch)
        .with_patch(patch))
}

/// An error about the project's manifest.
fn invalid_manifest(project: &Project, problem: String) -> ProjectError {
    ProjectError::Invalid {
        path: project.manifest_path(),
        problem,
    }
}

/// The input sequences: the options' if given, else every sequence of a 4D project or the first
/// two of any other.
fn input_sequences(
    project: &Project,
    form: crate::project::InputForm,
    o: &FitOptions,
) -> Vec<String> {
    if !o.sequences.is_empty() {
        o.sequences.clone()
    } else if form == crate::project::InputForm::TimeSeries4d {
        project
            .manifest
            .sequences
            .iter()
            .map(|s| s.to_string())
            .collect()
    } else {
        project
            .manifest
            .sequences
            .iter()
            .take(2)
            .map(|s| s.to_string())
            .collect()
    }
}

/// The task from the `mode` option (`joint`, `seg` or `class`): classification only when no
/// case has a reference mask, and a joint run segmentation only when no case has one of the
/// project's classes (an nnU-Net dataset has none).
fn task_mode(project: &Project, mode: &str) -> Result<super::training::TaskMode, ProjectError> {
    use super::training::TaskMode;
    let manifest = &project.manifest;
    let any_mask = manifest.cases.iter().any(|c| c.reference_mask.is_some());
    let any_class = manifest.has_classified_case();
    Ok(match (mode, any_mask, any_class) {
        ("joint" | "seg" | "class", false, _) | ("class", _, _) => TaskMode::ClassificationOnly,
        ("seg", _, _) | ("joint", _, false) => TaskMode::SegmentationOnly,
        ("joint", _, true) => TaskMode::Joint,
        (m, _, _) => {
            return Err(invalid_manifest(
                project,
                format!("mode must be joint, seg or class, not {m}"),
            ))
        }
    })
}

/// The network for the input form, with its patch and class window (voxels): 2D for slices,
/// one channel per frame for 4D series, 3D for volumes.
fn network_for_form(
    project: &Project,
    form: crate::project::InputForm,
    o: &FitOptions,
    sequences: &[String],
    num_labels: usize,
) -> Result<(super::model::MultiTaskUNetConfig, [usize; 3], [usize; 3]), ProjectError> {
    use super::model::MultiTaskUNetConfig;
    use crate::project::InputForm;
    let classes = project.manifest.classes.len().max(2);
    Ok(match form {
        InputForm::Slice2d => (
            MultiTaskUNetConfig::new(sequences.len(), num_labels, classes).with_spatial_dims(2),
            [o.patch, o.patch, 1],
            [o.class_window, o.class_window, 1],
        ),
        InputForm::TimeSeries4d => (
            MultiTaskUNetConfig::new(8, num_labels, classes)
                .with_time_points(time_points_4d(project, sequences)?),
            [o.patch; 3],
            [o.class_window; 3],
        ),
        InputForm::Volume3d => (
            MultiTaskUNetConfig::new(sequences.len(), num_labels, classes),
            [o.patch; 3],
            [o.class_window; 3],
        ),
    })
}

/// Time points a 4D network takes (one channel per frame): the frames of the first case's first
/// input sequence times the number of sequences.
fn time_points_4d(project: &Project, sequences: &[String]) -> Result<usize, ProjectError> {
    let bad = |problem: String| invalid_manifest(project, problem);
    let case = project
        .manifest
        .cases
        .first()
        .ok_or_else(|| bad("the project has no case".into()))?;
    let first = sequences
        .first()
        .ok_or_else(|| bad("no input sequence".into()))?;
    let file = case
        .sequence(&SequenceName::from(first.clone()))
        .ok_or_else(|| bad(format!("case {} has no sequence {first}", case.id)))?;
    Ok(crate::volume::read_header(&project.resolve(&file.path))?.dims[3] * sequences.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gpu_the_driver_shows_but_vulkan_does_not_gets_a_hint() {
        let dir = tempfile::tempdir().unwrap();
        let node = dir.path().join("nvidia0");
        assert_eq!(vulkan_hint(&node), "");
        std::fs::write(&node, b"").unwrap();
        let hint = vulkan_hint(&node);
        assert!(hint.contains("an NVIDIA GPU is there"), "{hint}");
        assert!(hint.contains("libvulkan1 libglvnd0"), "{hint}");
    }

    #[test]
    fn cuda_is_chosen_only_where_built_and_a_build_without_it_says_why() {
        let (device, about) = choose_device("cuda");
        if !cuda_devices(1).is_empty() {
            assert_eq!(about, "GPU (burn CUDA backend)");
            assert!(is_cuda(&device));
            return;
        }
        // Without the backend (or a CUDA GPU): the automatic choice, and the reason beside it.
        let (auto, auto_about) = choose_device("auto");
        assert_eq!(device, auto);
        assert!(about.starts_with(&auto_about), "{about}");
        let why = ["--features cuda", "no CUDA GPU found"];
        assert!(why.iter().any(|w| about.contains(w)), "{about}");
        assert!(cuda_devices(2).is_empty() && !is_cuda(&device));
        assert_eq!(device_class("cuda"), device_class("auto"));
    }
}
