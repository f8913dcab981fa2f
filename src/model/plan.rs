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
//! 6. **Class crop**: the whole head, so the class sees all it may depend on (a lesion
//!    anywhere): the median head extent at the plan's spacing, each axis rounded up to the
//!    depth's multiple. While that holds over 1.5× the device's crop budget, the axis with the
//!    finest effective voxel (spacing × stride; the longest of a tie) is averaged over one more
//!    voxel (its stride grows by 1; a 2D form keeps 1 through-plane); then, while over budget,
//!    the longest axis shrinks by the multiple (the crop loses at most the head's outer shell).
//!    A class step costs r = crop voxels / (batch × patch voxels) segmentation steps, so one
//!    step in k = ⌈r + 1⌉ (at least 2) is a class step: class steps take at most half of the
//!    training time (a third left the class behind the segmentation on a foreign dataset).
//! 7. **Class balance**: weight n / (k · n_c) per class (k classes with cases, n cases with a
//!    class); a class with no case gets 0 and a warning.
//! 8. **Augmentation**: strong under 30 cases, medium under 200, light from there.
//! 9. **Steps**: 75 per case, within 600–4 000, in 12 epochs.
//! 10. **Inputs**: every sequence of the project, in the project's order (nnU-Net's choice:
//!     what a sequence adds is for the network to learn, not for the user to guess).
//! 11. **Class from the mask**: with two classes of at least 3 cases each and every 3D case
//!     masked, take the labels held by ≤ 10 % of one class's cases and by more of the other's
//!     (lesions, infarcts, tumours: in patients, not in controls); when at least one of them is
//!     in ≥ 90 % of the other class's cases and in ≤ 10 % of this class's, they tell the class:
//!     it is read from their predicted volume (even at half the smallest reference volume of
//!     the set in a case holding it, a logistic in ln(1 + volume)), and the run trains the
//!     segmentation only (no class steps; the user's own class-step setting brings the class
//!     head back). A whole-head class head must find
//!     at a coarse scale what the segmentation finds at full resolution: on a foreign dataset
//!     whose patients have white-matter lesions it reached a held-out AUC of 0.63 in 30
//!     minutes while the segmentation found the lesions (Dice 0.85).
//! 12. **Promptable runs**: the automatic network learns every label of a patch in one step;
//!     the promptable one learns one object of one label (the simulated user's target), so a
//!     run that starts a promptable network takes rule 9's steps once per label (within
//!     600–12 000): on `phantom --cases 24` (5 labels) rule 9's 1 800 steps left held-out
//!     infarcts and tumours at 6.1 and 6.2 clicks to Dice 0.9, where 9 000 (30 minutes on a
//!     2-core CPU) reached 1.1 and 1.1.
//!
//! Invariants: the plan is a pure function of the fingerprint and the device class; every rule
//! that fired is said in `rationale`, every gap the data leave (a class or label in too few
//! cases) in `warnings`.

use super::fingerprint::Fingerprint;
pub use super::training::ClassEvidence;
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
    /// The class head's whole-head crop (coarse voxels per axis).
    pub class_window: [usize; 3],
    /// The class crop is taken from the volume averaged over blocks of this many voxels.
    #[serde(default = "unit_stride")]
    pub class_stride: [usize; 3],
    /// One step in this many is a class step (joint training).
    #[serde(default = "default_class_every")]
    pub class_every: usize,
    /// Per class, its weight in the class loss.
    pub class_weights: Vec<(String, f64)>,
    /// Rule 11: the label whose presence tells the class, if the data have one.
    #[serde(default)]
    pub class_evidence: Option<ClassEvidence>,
    /// Augmentation strength.
    pub augmentation: Augmentation,
    /// Optimisation steps.
    pub steps: usize,
    /// Epochs the steps are split into.
    pub epochs: usize,
    /// Rule 12 applied: the steps are a promptable run's.
    #[serde(default)]
    pub promptable: bool,
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
    let (class_window, class_stride) = class_view_for(
        fp.median_head_extent_mm(),
        spacing_mm,
        depth,
        two_d,
        device.max_class_voxels(),
    );
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
        class_stride,
        class_every,
        class_weights: class_weights(fp, &mut warnings),
        class_evidence: class_evidence(fp, &mut rationale),
        augmentation: augmentation_for(fp.cases.len()),
        steps,
        epochs,
        promptable: false,
        rationale,
        warnings: data_warnings(fp, warnings),
    }
}

impl Plan {
    /// Rule 12: the plan of a run that starts a promptable network (applied once).
    pub fn for_prompting(mut self) -> Plan {
        if self.promptable {
            return self;
        }
        let labels = self.label_weights.len().max(1);
        let steps = (self.steps * labels).clamp(600, 12_000);
        self.rationale.push(format!(
            "steps {steps}: a promptable run learns one object of one label a patch: {} steps \
             for each of {labels} labels (at most 12 000)",
            self.steps
        ));
        self.steps = steps;
        self.promptable = true;
        self
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

/// Rule 6: the head (`head_mm`, its extent) at the plan's spacing, coarsened by per-axis
/// strides until the window is within 1.5× the crop budget (`budget` voxels), then cropped
/// into it. Returns the window (coarse voxels, multiples of the depth's pooling) and the
/// strides.
pub fn class_view_for(
    head_mm: [f64; 3],
    spacing_mm: [f64; 3],
    depth: usize,
    two_d: bool,
    budget: usize,
) -> ([usize; 3], [usize; 3]) {
    let m = 1usize << depth;
    let head = head_mm;
    let head_vox = [0, 1, 2].map(|a| (head[a] / spacing_mm[a]).ceil().max(1.0) as usize);
    let window_of = |stride: [usize; 3]| {
        let mut w = [0, 1, 2].map(|a| head_vox[a].div_ceil(stride[a]).div_ceil(m).max(1) * m);
        if two_d {
            w[2] = 1;
        }
        w
    };
    let mut stride = [1usize; 3];
    let axes = if two_d { 0..2 } else { 0..3 };
    while window_of(stride).iter().product::<usize>() * 2 > budget * 3 {
        let w = window_of(stride);
        // The finest effective voxel coarsens first (the longest window of a tie).
        let effective = |a: usize| spacing_mm[a] * stride[a] as f64;
        let Some(a) = axes.clone().filter(|a| w[*a] > m).min_by(|a, b| {
            effective(*a)
                .total_cmp(&effective(*b))
                .then(w[*b].cmp(&w[*a]))
        }) else {
            break;
        };
        stride[a] += 1;
    }
    let mut w = window_of(stride);
    while w.iter().product::<usize>() > budget {
        let Some(a) = (0..3).filter(|a| w[*a] > m).max_by_key(|a| w[*a]) else {
            break;
        };
        w[a] -= m;
    }
    (w, stride)
}

/// Patches per batch.
const BATCH: usize = 2;

/// The class crop's stride when a plan.json predates it (the volume's own grid).
fn unit_stride() -> [usize; 3] {
    [1, 1, 1]
}

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

/// Share of one class's cases that must hold the evidence (and at most 1 − this of the other's).
const EVIDENCE_SHARE: f64 = 0.9;

/// Rule 11: with two classes of at least 3 cases each and every 3D case masked, the labels
/// that tell the class, if any (see the module's header); the orientation with the wider gap
/// wins.
pub fn class_evidence(fp: &Fingerprint, rationale: &mut Vec<String>) -> Option<ClassEvidence> {
    let [(a, na), (b, nb)] = fp.classes.as_slice() else {
        return None;
    };
    let all_masked = fp.cases_with_mask == fp.cases.len();
    if *na < 3 || *nb < 3 || !all_masked || fp.form != InputForm::Volume3d {
        return None;
    }
    let (sp, sa, e) = [(a, b), (b, a)]
        .into_iter()
        .filter_map(|(present, absent)| evidence_for(fp, present, absent))
        .max_by(|x, y| (x.0 - x.1).total_cmp(&(y.0 - y.1)))?;
    rationale.push(format!(
        "class: read from the predicted {} volume (in {:.0} % of {} cases, {:.0} % of {} cases): no class steps",
        e.label_names.join(" + "),
        100.0 * sp,
        e.present_class,
        100.0 * sa,
        e.absent_class
    ));
    Some(e)
}

/// The evidence that `present` is told from `absent`, with the shares of their cases holding
/// it: the labels held by ≤ 10 % of `absent`'s cases and more of `present`'s, if their union
/// is held by ≥ 90 % of `present`'s cases and ≤ 10 % of `absent`'s.
fn evidence_for(
    fp: &Fingerprint,
    present: &str,
    absent: &str,
) -> Option<(f64, f64, ClassEvidence)> {
    use super::fingerprint::CaseFingerprint;
    let cases_of = |class: &str| {
        let class = class.to_string();
        fp.cases
            .iter()
            .filter(move |c| c.class.as_deref() == Some(class.as_str()))
    };
    let holds = |c: &CaseFingerprint, set: &[u8]| c.labels.iter().any(|l| set.contains(&l.0));
    let share = |class: &str, set: &[u8]| {
        let n = cases_of(class).count().max(1);
        cases_of(class).filter(|c| holds(c, set)).count() as f64 / n as f64
    };
    let labels: Vec<&super::fingerprint::LabelStats> = fp
        .labels
        .iter()
        .filter(|l| {
            let (sp, sa) = (share(present, &[l.value]), share(absent, &[l.value]));
            sa <= 1.0 - EVIDENCE_SHARE && sp > sa
        })
        .collect();
    let set: Vec<u8> = labels.iter().map(|l| l.value).collect();
    let (sp, sa) = (share(present, &set), share(absent, &set));
    if set.is_empty() || sp < EVIDENCE_SHARE || sa > 1.0 - EVIDENCE_SHARE {
        return None;
    }
    // Half the smallest volume of the set in a case of `present` that holds it.
    let smallest_mm3 = cases_of(present)
        .filter_map(|c| {
            let voxels: usize = c
                .labels
                .iter()
                .filter(|l| set.contains(&l.0))
                .map(|l| l.1)
                .sum();
            (voxels > 0).then(|| voxels as f64 * c.spacing_mm.iter().product::<f64>())
        })
        .fold(f64::INFINITY, f64::min);
    Some((
        sp,
        sa,
        ClassEvidence {
            labels: set,
            label_names: labels.iter().map(|l| l.name.clone()).collect(),
            present_class: present.to_string(),
            absent_class: absent.to_string(),
            threshold_mm3: 0.5 * smallest_mm3,
        },
    ))
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
        config.training.class_stride = plan.class_stride;
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
