//! A training plan from a dataset fingerprint, by stated rules (nnU-Net's idea: the data decide
//! the recipe, nobody tunes it), for the device it will run on:
//!
//! 1. **Spacing**: the median voxel size per axis; when the coarsest median axis is over 3× the
//!    finest (anisotropic data), that axis takes the 10th percentile of its spacings instead.
//! 2. **Patch**: the median case size at that spacing, each axis rounded down to a multiple of
//!    8 (at least 8); while it holds more voxels than the device's patch budget, the axis
//!    spanning the most millimetres (the last of a tie) among those over 16 voxels loses 8. A 2D
//!    form has one voxel through-plane.
//! 3. **Depth**: the most levels (1–4) whose pooling divides every patch axis and leaves at
//!    least 3 voxels at the bottleneck. **Width**: 8 channels on a CPU, 16 on a GPU. Batch 2.
//!    The patch budget is 24³ voxels on a CPU (a time budget there buys 2.4× the steps of 32³,
//!    and 24 voxels still hold a small structure with its surroundings), 96³ on a GPU.
//! 4. **Normalisation**: each sequence z-scored inside the head (voxels above 5 % of its 99th
//!    percentile).
//! 5. **Foreground sampling**: a third of patches centred on a labelled voxel, a half when the
//!    smallest label's median volume fills under 1 % of a patch; the label to centre on is drawn
//!    with weight ∝ 1/√(median volume) (small structures more often).
//! 6. **Class crop**: the median head extent at the plan's spacing, rounded up to the depth's
//!    multiple; while over the device's crop budget, the longest axis shrinks by that multiple.
//!    A class step costs r = crop voxels / (batch × patch voxels) segmentation steps, so one
//!    step in k = ⌈r + 1⌉ (at least 2) is a class step: class steps take at most half of the
//!    training time (a third left the class behind the segmentation on a foreign dataset).
//! 7. **Class balance**: weight n / (k · n_c) per class (k classes with cases, n cases with a
//!    class); a class with no case gets 0 and a warning.
//! 8. **Augmentation**: strong under 30 cases, medium under 200, light from there.
//! 9. **Steps**: 75 per case, within 600–4 000, in 12 epochs.
//! 10. **Inputs**: every sequence of the project, in the project's order (nnU-Net's choice:
//!     what a sequence adds is for the network to learn, not for the user to guess).
//!
//! Invariants: the plan is a pure function of the fingerprint and the device class; every rule
//! that fired is said in `rationale`, every gap the data leave (a class or label in too few
//! cases) in `warnings`.

use super::fingerprint::Fingerprint;
use crate::project::InputForm;
use serde::{Deserialize, Serialize};

/// Where the plan will train: it sets the patch and crop budgets and the width.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceClass {
    /// burn's flex backend on the CPU.
    Cpu,
    /// A GPU through wgpu.
    Gpu,
}

impl DeviceClass {
    /// Most voxels in a training patch.
    pub fn max_patch_voxels(self) -> usize {
        match self {
            DeviceClass::Cpu => 24 * 24 * 24,
            DeviceClass::Gpu => 96 * 96 * 96,
        }
    }

    /// Most voxels in the class head's whole-head crop.
    pub fn max_class_voxels(self) -> usize {
        match self {
            DeviceClass::Cpu => 48 * 48 * 48,
            DeviceClass::Gpu => 128 * 128 * 128,
        }
    }

    /// Channels of the network's first level.
    pub fn base_channels(self) -> usize {
        match self {
            DeviceClass::Cpu => 8,
            DeviceClass::Gpu => 16,
        }
    }
}

/// How strongly patches are augmented.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Augmentation {
    /// Few cases: large scale, shift, gamma and noise ranges.
    Strong,
    /// The default ranges.
    Medium,
    /// Many cases: small ranges.
    Light,
}

/// A training plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// The device class it was made for.
    pub device: DeviceClass,
    /// Voxel size the cases are resampled to (mm per axis).
    pub spacing_mm: [f64; 3],
    /// The axis resampled at its 10th-percentile spacing (anisotropic data), if any.
    pub anisotropic_axis: Option<usize>,
    /// Training patch (voxels per axis).
    pub patch: [usize; 3],
    /// Network levels.
    pub depth: usize,
    /// Channels of the first level.
    pub base_channels: usize,
    /// Patches per batch.
    pub batch: usize,
    /// The input sequences, in channel order.
    #[serde(default)]
    pub sequences: Vec<String>,
    /// Per sequence, how it is normalised.
    pub normalisation: Vec<(String, String)>,
    /// Share of patches centred on a labelled voxel.
    pub foreground_fraction: f64,
    /// Per label value, the weight of centring a patch on it (summing to 1).
    pub label_weights: Vec<(u8, f64)>,
    /// The class head's whole-head crop (voxels per axis).
    pub class_window: [usize; 3],
    /// One step in this many is a class step (joint training).
    #[serde(default = "default_class_every")]
    pub class_every: usize,
    /// Per class, its weight in the class loss.
    pub class_weights: Vec<(String, f64)>,
    /// Augmentation strength.
    pub augmentation: Augmentation,
    /// Optimisation steps.
    pub steps: usize,
    /// Epochs the steps are split into.
    pub epochs: usize,
    /// Which rules decided what, in words.
    pub rationale: Vec<String>,
    /// What the data cannot support well.
    pub warnings: Vec<String>,
}

/// Make the plan for `fp` on `device`.
pub fn plan(fp: &Fingerprint, device: DeviceClass) -> Plan {
    let mut rationale = Vec::new();
    let (spacing_mm, anisotropic_axis) = target_spacing(fp, &mut rationale);
    let two_d = fp.form == InputForm::Slice2d;
    let size_mm = fp.median_size_mm();
    let size_vox = [0, 1, 2].map(|a| (size_mm[a] / spacing_mm[a]).round().max(1.0) as usize);
    let patch = patch_for(size_vox, spacing_mm, two_d, device.max_patch_voxels());
    rationale.push(format!(
        "patch {patch:?}: median case {size_vox:?} voxels at the plan's spacing, within {} voxels",
        device.max_patch_voxels()
    ));
    let depth = depth_for(patch);
    let class_window = class_window_for(fp, spacing_mm, depth, two_d, device);
    let (foreground_fraction, label_weights) = foreground_sampling(fp, patch, spacing_mm);
    let class_every = class_every_for(class_window, patch, BATCH);
    let (steps, epochs) = steps_for(fp.cases.len());
    let mut warnings = Vec::new();
    Plan {
        device,
        spacing_mm,
        anisotropic_axis,
        patch,
        depth,
        base_channels: device.base_channels(),
        batch: BATCH,
        sequences: fp.sequences.iter().map(|s| s.name.clone()).collect(),
        normalisation: fp
            .sequences
            .iter()
            .map(|s| (s.name.clone(), "z-score inside the head".to_string()))
            .collect(),
        foreground_fraction,
        label_weights,
        class_window,
        class_every,
        class_weights: class_weights(fp, &mut warnings),
        augmentation: augmentation_for(fp.cases.len()),
        steps,
        epochs,
        rationale,
        warnings: data_warnings(fp, warnings),
    }
}

/// Rule 1: the median spacing, the coarse axis of anisotropic data at its 10th percentile.
fn target_spacing(fp: &Fingerprint, rationale: &mut Vec<String>) -> ([f64; 3], Option<usize>) {
    let mut s = fp.median_spacing_mm();
    let (coarse, fine) = (0..3).fold((0, 0), |(c, f), a| {
        (
            if s[a] > s[c] { a } else { c },
            if s[a] < s[f] { a } else { f },
        )
    });
    if s[fine] > 0.0 && s[coarse] > 3.0 * s[fine] {
        s[coarse] = fp.spacing_quantile_mm(coarse, 0.1);
        rationale.push(format!(
            "anisotropic: axis {coarse} at its 10th-percentile spacing {:.3} mm",
            s[coarse]
        ));
        (s, Some(coarse))
    } else {
        rationale.push(format!("spacing: the median {s:.3?} mm"));
        (s, None)
    }
}

/// Rule 2: the median case size, multiples of 8, shrunk to the budget along its longest axis.
pub fn patch_for(
    size_vox: [usize; 3],
    spacing_mm: [f64; 3],
    two_d: bool,
    budget: usize,
) -> [usize; 3] {
    let mut p = size_vox.map(|n| (n / 8 * 8).max(8));
    if two_d {
        p[2] = 1;
    }
    while p.iter().product::<usize>() > budget {
        let longest = (0..3).filter(|a| p[*a] > 16).max_by(|a, b| {
            (p[*a] as f64 * spacing_mm[*a]).total_cmp(&(p[*b] as f64 * spacing_mm[*b]))
        });
        match longest {
            Some(a) => p[a] -= 8,
            None => break,
        }
    }
    p
}

/// Rule 3: the most levels (1–4) whose pooling divides every axis and leaves ≥ 3 voxels.
pub fn depth_for(patch: [usize; 3]) -> usize {
    let axes: Vec<usize> = patch.into_iter().filter(|n| *n > 1).collect();
    (1..=4)
        .rev()
        .find(|d| {
            let m = 1usize << d;
            axes.iter().all(|n| n % m == 0 && n / m >= 3)
        })
        .unwrap_or(1)
}

/// Rule 6: the head at the plan's spacing, in multiples of the depth's pooling, within budget.
fn class_window_for(
    fp: &Fingerprint,
    spacing_mm: [f64; 3],
    depth: usize,
    two_d: bool,
    device: DeviceClass,
) -> [usize; 3] {
    let m = 1usize << depth;
    let head = fp.median_head_extent_mm();
    let mut w = [0, 1, 2].map(|a| {
        ((head[a] / spacing_mm[a]).ceil() as usize)
            .div_ceil(m)
            .max(1)
            * m
    });
    if two_d {
        w[2] = 1;
    }
    while w.iter().product::<usize>() > device.max_class_voxels() {
        let Some(a) = (0..3).filter(|a| w[*a] > m).max_by_key(|a| w[*a]) else {
            break;
        };
        w[a] -= m;
    }
    w
}

/// Patches per batch.
const BATCH: usize = 2;

/// The class steps' share (rule 6) when a plan.json predates it.
fn default_class_every() -> usize {
    3
}

/// Rule 6: one step in k = ⌈r + 1⌉ (at least 2) a class step, r the class step's cost in
/// segmentation steps (crop voxels over the batch's patch voxels).
pub fn class_every_for(class_window: [usize; 3], patch: [usize; 3], batch: usize) -> usize {
    let crop: usize = class_window.iter().product();
    let patches: usize = batch.max(1) * patch.iter().product::<usize>();
    let r = crop as f64 / patches.max(1) as f64;
    ((r + 1.0).ceil() as usize).max(2)
}

/// Rule 5: the foreground share and each label's weight ∝ 1/√(median volume).
fn foreground_sampling(
    fp: &Fingerprint,
    patch: [usize; 3],
    spacing_mm: [f64; 3],
) -> (f64, Vec<(u8, f64)>) {
    let patch_mm3: f64 = (0..3).map(|a| patch[a] as f64 * spacing_mm[a]).product();
    let smallest = fp
        .labels
        .iter()
        .map(|l| l.median_volume_mm3)
        .fold(f64::INFINITY, f64::min);
    let fraction = if smallest.is_finite() && smallest < 0.01 * patch_mm3 {
        0.5
    } else {
        1.0 / 3.0
    };
    let raw: Vec<(u8, f64)> = fp
        .labels
        .iter()
        .map(|l| (l.value, 1.0 / l.median_volume_mm3.max(1e-6).sqrt()))
        .collect();
    let total: f64 = raw.iter().map(|r| r.1).sum();
    let weights = raw
        .into_iter()
        .map(|(v, w)| (v, if total > 0.0 { w / total } else { 0.0 }))
        .collect();
    (fraction, weights)
}

/// Rule 7: inverse-frequency class weights.
fn class_weights(fp: &Fingerprint, warnings: &mut Vec<String>) -> Vec<(String, f64)> {
    let n: usize = fp.classes.iter().map(|c| c.1).sum();
    let k = fp.classes.iter().filter(|c| c.1 > 0).count();
    fp.classes
        .iter()
        .map(|(name, n_c)| {
            if *n_c == 0 {
                warnings.push(format!("class {name} has no case: it cannot be learned"));
                (name.clone(), 0.0)
            } else {
                (name.clone(), n as f64 / (k as f64 * *n_c as f64))
            }
        })
        .collect()
}

/// Rule 8.
fn augmentation_for(cases: usize) -> Augmentation {
    match cases {
        0..30 => Augmentation::Strong,
        30..200 => Augmentation::Medium,
        _ => Augmentation::Light,
    }
}

/// Rule 9: (steps, epochs).
fn steps_for(cases: usize) -> (usize, usize) {
    ((75 * cases).clamp(600, 4000), 12)
}

/// What the data leave the training unable to learn or validate well.
fn data_warnings(fp: &Fingerprint, mut warnings: Vec<String>) -> Vec<String> {
    for c in &fp.classes {
        if (1..3).contains(&c.1) {
            warnings.push(format!(
                "class {} has only {} case(s): too few to learn and validate",
                c.0, c.1
            ));
        }
    }
    for l in &fp.labels {
        if l.cases < 3 {
            warnings.push(format!(
                "label {} ({}) is in only {} case(s)",
                l.value, l.name, l.cases
            ));
        }
    }
    if fp.cases_with_mask == 0 {
        warnings.push("no case has a reference mask: only the class can be trained".into());
    }
    warnings
}

impl Augmentation {
    /// How much the default augmentation ranges are scaled.
    pub fn factor(self) -> f32 {
        match self {
            Augmentation::Strong => 1.5,
            Augmentation::Medium => 1.0,
            Augmentation::Light => 0.5,
        }
    }
}

/// Which of a fit configuration's settings the user set (those keep their value; the plan
/// decides the others).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UserSet {
    /// The patch edge (the plan's depth then goes with the configuration's default).
    pub patch: bool,
    /// The class crop edge.
    pub class_window: bool,
    /// The voxel size.
    pub spacing: bool,
}

/// `config` with the plan's geometry where the user did not set it: patch and depth, class crop,
/// voxel size (3D and 2D forms; a 4D series keeps its own grid); and always the plan's sampling
/// (foreground share, label weights, class-balanced class steps) and augmentation ranges scaled
/// by its strength. Epochs, steps, batch and width are scalars the caller fills from the plan
/// before building `config`.
pub fn apply_plan(
    mut config: super::fit::FitConfig,
    plan: &Plan,
    form: InputForm,
    user: UserSet,
) -> super::fit::FitConfig {
    if !user.patch {
        config.patch = plan.patch;
        config.training.window = plan.patch;
        config.training.model.depth = plan.depth;
    }
    if !user.class_window {
        // In multiples of the network's pooling (the user's patch keeps the default depth).
        let m = 1usize << config.training.model.depth;
        config.training.class_window =
            plan.class_window
                .map(|n| if n > 1 { n.div_ceil(m) * m } else { n });
    }
    if !user.spacing {
        let [x, y, z] = plan.spacing_mm;
        config.training.spacing_mm = match form {
            InputForm::Volume3d => Some([x, y, z]),
            InputForm::Slice2d => Some([x, y, 0.0]),
            InputForm::TimeSeries4d => config.training.spacing_mm,
        };
    }
    config.foreground_one_in = if plan.foreground_fraction >= 0.5 {
        2
    } else {
        3
    };
    config.label_weights = plan.label_weights.clone();
    config.class_weights = plan.class_weights.iter().map(|c| c.1).collect();
    let f = plan.augmentation.factor();
    let a = &mut config.augment;
    a.scale *= f;
    a.shift *= f;
    a.gamma *= f;
    a.noise *= f;
    a.rotate_deg *= f;
    a.zoom *= f;
    config
}
