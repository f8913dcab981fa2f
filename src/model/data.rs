//! Training data from a mriloop project: each usable case (what its run trains on: a reference
//! mask, a class label, or both) becomes a `Sample` (its sequences as channels, z-scored inside the head, and its mask), and
//! `PatchSampler` draws random patches with foreground oversampling (a third of patches by
//! default are centred on a labelled voxel, as nnU-Net does, so a tiny structure is seen; the
//! plan may raise the share and weight small labels, `ForegroundSampling`) and augmentation
//! (flips, small rotations and zoom, intensity scale/shift, gamma, noise), deterministically
//! from a seed.
//!
//! Invariants: all sequences of a sample share the mask's grid (checked when loading); patches
//! are taken inside the volume (zero-padded where the volume is smaller than the patch).

use crate::project::{Project, ProjectError};
use crate::volume::Volume;
use burn::prelude::*;
use burn::tensor::{Int, TensorData};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::training::Batch;

/// One case ready for training.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Case id.
    pub case_id: String,
    /// Normalised channels, each `dims` voxels, i fastest.
    pub channels: Vec<Vec<f32>>,
    /// Label mask on the same grid.
    pub mask: Vec<u8>,
    /// Grid size `[nx, ny, nz]`.
    pub dims: [usize; 3],
    /// Class index in the project's class list (`None`: the case has none, which only a
    /// segmentation-only run takes).
    pub class: Option<usize>,
    /// Linear indices of labelled voxels (for foreground oversampling).
    pub foreground: Vec<usize>,
    /// The same, grouped by label value, so a rare label is picked as often as a common one;
    /// within a label, grouped by object (6-connected region).
    pub foreground_by_label: Vec<(u8, Vec<usize>)>,
    /// Per entry of `foreground_by_label`, where each object's voxels start in its list.
    pub object_starts: Vec<Vec<usize>>,
    /// Voxels an annotator changed from the model's prediction (empty: none known); they can
    /// weigh more in the loss when fine-tuning on corrections.
    pub changed: Vec<bool>,
    /// The grid's voxel→world (mm) affine.
    pub affine: crate::volume::Affine,
    /// The user's recorded prompted interactions on this case, on this grid (promptable
    /// training replays them).
    pub replays: Vec<super::prompt_train::Replay>,
}

/// `values` on the grid `dims` averaged over blocks of `stride` voxels per axis (an axis's last
/// block may be partial), and the coarse grid's size: the class head's whole-head view.
pub fn block_mean(values: &[f32], dims: [usize; 3], stride: [usize; 3]) -> (Vec<f32>, [usize; 3]) {
    let s = stride.map(|v| v.max(1));
    let out = [0, 1, 2].map(|a| dims[a].div_ceil(s[a]));
    let mut sum = vec![0f32; out[0] * out[1] * out[2]];
    let mut count = vec![0u32; sum.len()];
    for (f, v) in values.iter().enumerate().take(dims[0] * dims[1] * dims[2]) {
        let (i, j, k) = (
            f % dims[0],
            (f / dims[0]) % dims[1],
            f / (dims[0] * dims[1]),
        );
        let g = i / s[0] + out[0] * (j / s[1] + out[1] * (k / s[2]));
        sum[g] += v;
        count[g] += 1;
    }
    let mean = sum
        .iter()
        .zip(&count)
        .map(|(v, n)| v / (*n).max(1) as f32)
        .collect();
    (mean, out)
}

impl Sample {
    /// The sample averaged over blocks of `stride` voxels (`block_mean`), for class crops: the
    /// mask keeps each block's first voxel; no foreground lists (class steps centre-crop).
    pub fn coarsened(&self, stride: [usize; 3]) -> Sample {
        let s = stride.map(|v| v.max(1));
        let (channels, dims): (Vec<Vec<f32>>, Vec<[usize; 3]>) = self
            .channels
            .iter()
            .map(|c| block_mean(c, self.dims, s))
            .unzip();
        let dims = dims
            .first()
            .copied()
            .unwrap_or([0, 1, 2].map(|a| self.dims[a].div_ceil(s[a])));
        let [nx, ny, _] = self.dims;
        let mask = (0..dims[0] * dims[1] * dims[2])
            .map(|g| {
                let (i, j, k) = (
                    g % dims[0],
                    (g / dims[0]) % dims[1],
                    g / (dims[0] * dims[1]),
                );
                let f = i * s[0] + nx * (j * s[1] + ny * k * s[2]);
                self.mask.get(f).copied().unwrap_or(0)
            })
            .collect();
        Sample {
            case_id: self.case_id.clone(),
            channels,
            mask,
            dims,
            class: self.class,
            foreground: Vec::new(),
            foreground_by_label: Vec::new(),
            object_starts: Vec::new(),
            changed: Vec::new(),
            affine: self.affine,
            replays: Vec::new(),
        }
    }
}

/// Z-score normalisation inside the head: mean and standard deviation of the non-zero voxels.
pub fn zscore_in_head(values: &[f32]) -> Vec<f32> {
    let inside: Vec<f64> = values
        .iter()
        .filter(|v| **v != 0.0 && v.is_finite())
        .map(|v| f64::from(*v))
        .collect();
    let n = inside.len().max(1) as f64;
    let mean = inside.iter().sum::<f64>() / n;
    let var = inside.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    let sd = var.sqrt().max(1e-6);
    values
        .iter()
        .map(|v| {
            if v.is_finite() {
                ((f64::from(*v) - mean) / sd) as f32
            } else {
                0.0
            }
        })
        .collect()
}

/// The input channels of a case's sequences: one per 3D volume, one per frame of a 4D series
/// (each z-scored inside the head).
pub fn channels_of(sequences: &[Volume<f32>]) -> Vec<Vec<f32>> {
    sequences
        .iter()
        .flat_map(|s| {
            let n = s.frame_len();
            (0..s.dims()[3]).map(move |t| zscore_in_head(&s.data()[t * n..(t + 1) * n]))
        })
        .collect()
}

impl Sample {
    /// Build from volumes on one grid (a 4D sequence gives one channel per frame), of class
    /// index `class`.
    pub fn new(
        case_id: &str,
        sequences: &[Volume<f32>],
        mask: &Volume<u8>,
        class: usize,
    ) -> Result<Self, String> {
        let dims = mask.dims3();
        if let Some(bad) = sequences.iter().find(|s| s.dims3() != dims) {
            return Err(format!(
                "case {case_id}: a sequence has dims {:?}, the mask {dims:?}",
                bad.dims3()
            ));
        }
        let mask_data = mask.data()[..mask.frame_len()].to_vec();
        let foreground: Vec<usize> = mask_data
            .iter()
            .enumerate()
            .filter(|(_, v)| **v > 0)
            .map(|(i, _)| i)
            .collect();
        let (by_label, object_starts) = objects_by_label(&mask_data, &foreground, dims);
        Ok(Self {
            case_id: case_id.to_string(),
            foreground_by_label: by_label,
            object_starts,
            channels: channels_of(sequences),
            mask: mask_data,
            dims,
            class: Some(class),
            foreground,
            changed: Vec::new(),
            affine: *mask.affine(),
            replays: Vec::new(),
        })
    }

    /// Record which voxels differ between the reference and the model's `predicted` mask (same
    /// grid); returns how many.
    pub fn mark_changed(&mut self, predicted: &[u8]) -> usize {
        if predicted.len() != self.mask.len() {
            return 0;
        }
        self.changed = self
            .mask
            .iter()
            .zip(predicted)
            .map(|(r, p)| r != p)
            .collect();
        self.changed.iter().filter(|c| **c).count()
    }
}

/// Bit set on a patch label where the annotator changed the voxel (see `split_labels`).
pub(crate) const CHANGED_BIT: i32 = 1 << 8;

/// Split patch labels into the label values and, when `changed_weight` is not 1 and a voxel is
/// marked changed, per-voxel loss weights (`changed_weight` there, 1 elsewhere).
pub fn split_labels(labels: Vec<i32>, changed_weight: f32) -> (Vec<i32>, Option<Vec<f32>>) {
    let any = labels.iter().any(|v| v & CHANGED_BIT != 0);
    let weights = (any && changed_weight != 1.0).then(|| {
        labels
            .iter()
            .map(|v| {
                if v & CHANGED_BIT != 0 {
                    changed_weight
                } else {
                    1.0
                }
            })
            .collect()
    });
    let labels = if any {
        labels.into_iter().map(|v| v & (CHANGED_BIT - 1)).collect()
    } else {
        labels
    };
    (labels, weights)
}

/// Which cases become samples, and how.
#[derive(Debug, Clone, Default)]
pub struct SampleSelection {
    /// Input sequences, in channel order.
    pub sequences: Vec<crate::project::SequenceName>,
    /// Skip cases without a reference mask.
    pub require_mask: bool,
    /// Resample to this spacing (mm).
    pub spacing_mm: Option<[f64; 3]>,
    /// Only these case ids (`None`: every case).
    pub only: Option<Vec<String>>,
    /// Reference masks to use instead of the file (the open case's unsaved corrections).
    pub masks: Vec<(String, Volume<u8>)>,
    /// Mark the voxels where the reference differs from the case's predicted mask.
    pub mark_changed: bool,
    /// Bring 3D volumes to the RAS voxel layout first (whole axes permuted and flipped, no
    /// interpolation), so every case shows the network the same anatomy directions whatever
    /// its storage orientation; prediction does the same and restores the case's layout.
    pub ras_layout: bool,
    /// Label values the network has outputs for (background included; 0: not checked). A
    /// mask holding a higher value is refused, naming the case and the value.
    pub label_count: usize,
    /// Read each case's prompt log into its sample's replays (promptable training).
    pub prompt_logs: bool,
    /// Take cases without a class too (segmentation-only training, e.g. an nnU-Net dataset,
    /// which has no case classes).
    pub class_optional: bool,
}

impl SampleSelection {
    /// What training with `config` needs: its sequences, a mask unless it trains the class
    /// only, its spacing, and the RAS layout for 3D networks.
    pub fn for_training(config: &super::training::TrainingConfig) -> Self {
        Self {
            sequences: config
                .sequences
                .iter()
                .map(|s| crate::project::SequenceName::from(s.clone()))
                .collect(),
            require_mask: config.mode != super::training::TaskMode::ClassificationOnly,
            spacing_mm: config.spacing_mm,
            ras_layout: config.ras_layout(),
            // A promptable network answers target-or-not for any of the project's labels.
            label_count: match config.prompt {
                Some(_) => config.label_names.len(),
                None => config.model.num_labels,
            },
            prompt_logs: config.prompt.is_some(),
            class_optional: config.mode == super::training::TaskMode::SegmentationOnly,
            ..Self::default()
        }
    }
}

/// The class index a batch carries for `s`. A case without a class carries 0: only
/// segmentation-only training takes such cases, and its loss leaves the class term out.
pub(crate) fn class_target(s: &Sample) -> i32 {
    s.class.map_or(0, |c| c as i32)
}

/// Load the project's cases that have a class label (unless `class_optional`) and (with
/// `require_mask`) a reference mask, with the selection's sequences (in that order) as
/// channels. Without `require_mask`, a case with no mask gets an empty one
/// (classification-only training, e.g. the 4D form).
pub fn load_samples_with(
    project: &Project,
    selection: &SampleSelection,
) -> Result<Vec<Sample>, ProjectError> {
    let mut out = Vec::new();
    for case in &project.manifest.cases {
        if let Some(sample) = load_sample(project, selection, case)? {
            out.push(sample);
        }
    }
    Ok(out)
}

/// Whether `case` becomes a sample: its class index (if it has one) and the reference mask the
/// selection gives for it (if any), or `None` when the selection leaves it out or it lacks a
/// required class or mask.
fn usable_case(
    project: &Project,
    selection: &SampleSelection,
    case: &crate::project::Case,
) -> Option<(Option<usize>, Option<Volume<u8>>)> {
    if selection
        .only
        .as_ref()
        .is_some_and(|ids| !ids.contains(&case.id))
    {
        return None;
    }
    let given = selection
        .masks
        .iter()
        .find(|(id, _)| *id == case.id)
        .map(|(_, m)| m.clone());
    if selection.require_mask && case.reference_mask.is_none() && given.is_none() {
        return None;
    }
    let class = case
        .class_label
        .as_ref()
        .and_then(|label| project.manifest.classes.iter().position(|c| c == label));
    if class.is_none() && !selection.class_optional {
        return None;
    }
    Some((class, given))
}

/// One case as a sample (`None` when it is not used, see [`usable_case`]): its sequences, its
/// reference mask (the given one, the file, or an empty mask), brought to the selection's
/// layout and spacing, with the voxels changed from its predicted mask marked if asked.
fn load_sample(
    project: &Project,
    selection: &SampleSelection,
    case: &crate::project::Case,
) -> Result<Option<Sample>, ProjectError> {
    let Some((class, given)) = usable_case(project, selection, case) else {
        return Ok(None);
    };
    let vols = selection
        .sequences
        .iter()
        .map(|s| Ok(project.load_sequence(case, s)?.to_f32()))
        .collect::<Result<Vec<_>, ProjectError>>()?;
    let reference = match given {
        Some(m) => Some(m),
        None => project.load_reference_mask(case)?,
    };
    let mask = match reference {
        Some(m) => check_labels(project, case, selection.label_count, m)?,
        None => {
            let Some(first) = vols.first() else {
                return Ok(None);
            };
            let [nx, ny, nz] = first.dims3();
            Volume::filled([nx, ny, nz, 1], *first.affine(), 0u8)?
        }
    };
    let predicted = match (&case.predicted_mask, selection.mark_changed) {
        (Some(rel), true) => Some(project.load_mask(rel)?),
        _ => None,
    };
    let volumes = CaseVolumes {
        sequences: vols,
        mask,
        predicted,
    };
    let CaseVolumes {
        sequences: vols,
        mask,
        predicted,
    } = to_training_grid(selection, volumes)?;
    let mut sample = Sample::new(&case.id, &vols, &mask, 0).map_err(|e| {
        crate::project::ProjectError::Invalid {
            path: project.manifest_path(),
            problem: e,
        }
    })?;
    sample.class = class;
    if let Some(p) = predicted.filter(|p| p.dims3() == mask.dims3()) {
        sample.mark_changed(&p.data()[..p.frame_len()]);
    }
    if selection.prompt_logs {
        let path = project.resolve(&crate::project::prompt_log::prompt_log_rel(&case.id));
        let log = crate::project::prompt_log::read_prompt_log(&path)?;
        for skipped in &log.skipped {
            eprintln!("warning: skipped a prompt record: {skipped}");
        }
        sample.replays = log
            .records
            .iter()
            .filter_map(|r| super::prompt_train::replay_on_grid(r, &sample))
            .collect();
    }
    Ok(Some(sample))
}

/// `mask`, if its labels are all below `label_count` (0: any); else an error naming the case,
/// the label and what the label table holds.
fn check_labels(
    project: &Project,
    case: &crate::project::Case,
    label_count: usize,
    mask: Volume<u8>,
) -> Result<Volume<u8>, ProjectError> {
    let highest = mask.data().iter().copied().max().unwrap_or(0);
    if label_count == 0 || usize::from(highest) < label_count {
        return Ok(mask);
    }
    let path = case
        .reference_mask
        .as_deref()
        .map_or_else(|| project.manifest_path(), |r| project.resolve(r));
    Err(ProjectError::Invalid {
        path,
        problem: format!(
            "case {}: the mask holds label {highest}, but the project's label table names \
             labels 1 to {} only; add the missing labels to the table",
            case.id,
            label_count - 1
        ),
    })
}

/// A case's volumes on one grid.
struct CaseVolumes {
    /// Its sequences, in channel order.
    sequences: Vec<Volume<f32>>,
    /// Its reference mask.
    mask: Volume<u8>,
    /// Its predicted mask (when voxels changed from it are marked).
    predicted: Option<Volume<u8>>,
}

/// A case's sequences, mask and predicted mask brought to the selection's voxel layout (RAS if
/// asked) and then to its spacing (if any; labels by their largest trilinear weight, as
/// `resample_case` does).
fn to_training_grid(
    selection: &SampleSelection,
    case: CaseVolumes,
) -> Result<CaseVolumes, ProjectError> {
    let CaseVolumes {
        sequences: vols,
        mask,
        predicted,
    } = case;
    let (vols, mask, predicted) = if selection.ras_layout {
        let ras = |v: &Volume<f32>| crate::volume::reorient_to_ras(v).0;
        (
            vols.iter().map(ras).collect(),
            crate::volume::reorient_to_ras(&mask).0,
            predicted.map(|p| crate::volume::reorient_to_ras(&p).0),
        )
    } else {
        (vols, mask, predicted)
    };
    let Some(sp) = selection.spacing_mm else {
        return Ok(CaseVolumes {
            sequences: vols,
            mask,
            predicted,
        });
    };
    let (dims, affine) = crate::volume::grid_with_spacing(mask.dims3(), mask.affine(), sp);
    let predicted = match predicted {
        Some(p) => Some(crate::volume::resample_labels_smooth(&p, dims, affine)?),
        None => None,
    };
    let (sequences, mask) = resample_case(vols, &mask, sp)?;
    Ok(CaseVolumes {
        sequences,
        mask,
        predicted,
    })
}

/// Sequences (trilinear) and mask (each label's indicator trilinear, the largest taken)
/// resampled to `spacing_mm` on the mask's field of view and voxel axes. Nearest-voxel labels
/// put a staircase of the source grid into the reference that no network can read from the
/// images (the phantoms' 0.73 mm voxels on a 1.02 mm grid).
pub fn resample_case(
    sequences: Vec<Volume<f32>>,
    mask: &Volume<u8>,
    spacing_mm: [f64; 3],
) -> Result<(Vec<Volume<f32>>, Volume<u8>), crate::volume::VolumeError> {
    use crate::volume::{
        grid_with_spacing, resample_labels_smooth, resample_to_grid, Interpolation,
    };
    let (dims, affine) = grid_with_spacing(mask.dims3(), mask.affine(), spacing_mm);
    let seqs = sequences
        .iter()
        .map(|v| resample_to_grid(v, dims, affine, Interpolation::Linear))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((seqs, resample_labels_smooth(mask, dims, affine)?))
}

/// Augmentation settings.
#[derive(Config, Debug, PartialEq)]
pub struct AugmentConfig {
    /// Mirror along x (left–right) with probability 0.5.
    #[config(default = true)]
    pub flip_x: bool,
    /// Intensity scale range (± fraction).
    #[config(default = 0.1)]
    pub scale: f32,
    /// Intensity shift range (± z-score units).
    #[config(default = 0.1)]
    pub shift: f32,
    /// Gamma range (± around 1), applied to min–max normalised values.
    #[config(default = 0.2)]
    pub gamma: f32,
    /// Gaussian noise standard deviation (z-score units).
    #[config(default = 0.05)]
    pub noise: f32,
    /// In-plane rotation range (± degrees).
    #[config(default = 10.0)]
    pub rotate_deg: f32,
    /// Isotropic zoom range (± fraction).
    #[config(default = 0.1)]
    pub zoom: f32,
    /// Label pairs swapped by a left–right flip (e.g. `[habenula_L, habenula_R]`), so a mirrored
    /// left structure is labelled right. Patches are in RAS layout: x is left–right.
    #[config(default = "Vec::new()")]
    pub mirror_pairs: Vec<[u8; 2]>,
}

/// Which patches are centred on labelled voxels, and on which labels.
#[derive(Debug, Clone, PartialEq)]
pub struct ForegroundSampling {
    /// One patch in this many is centred on a labelled voxel.
    pub one_in: usize,
    /// Per label value, its weight when choosing the label to centre on (empty: alike).
    pub label_weights: Vec<(u8, f64)>,
    /// Within a label, pick an object (6-connected region) alike, then a voxel of it — a small
    /// lesion as often as a large one — instead of any voxel alike.
    pub by_object: bool,
}

impl Default for ForegroundSampling {
    fn default() -> Self {
        Self {
            one_in: 3,
            label_weights: Vec::new(),
            by_object: false,
        }
    }
}

/// Labelled voxels per label value.
type LabelVoxels = Vec<(u8, Vec<usize>)>;

/// The labelled voxels (`foreground`, of `mask` on a `dims` grid) per label value in
/// increasing order, each list grouped by object (6-connected region), and where each object
/// starts in its list.
fn objects_by_label(
    mask: &[u8],
    foreground: &[usize],
    dims: [usize; 3],
) -> (LabelVoxels, Vec<Vec<usize>>) {
    let mut values: Vec<u8> = foreground.iter().map(|i| mask[*i]).collect();
    values.sort_unstable();
    values.dedup();
    values
        .into_iter()
        .map(|l| {
            let regions = crate::volume::regions::connected_regions(dims, |i| mask[i] == l);
            let starts = regions
                .iter()
                .scan(0, |at, r| {
                    let start = *at;
                    *at += r.len();
                    Some(start)
                })
                .collect();
            ((l, regions.concat()), starts)
        })
        .unzip()
}

/// The first voxel of a `p`-voxel patch centred on `centre` of a `dims` grid, kept inside
/// the grid where it fits.
fn crop_origin(dims: [usize; 3], centre: [usize; 3], p: [usize; 3]) -> [i64; 3] {
    [0, 1, 2].map(|a| {
        let n = dims[a] as i64;
        let lo = centre[a] as i64 - p[a] as i64 / 2;
        lo.clamp((n - p[a] as i64).min(0), (n - p[a] as i64).max(0))
    })
}

/// Draws augmented patches deterministically from a seed.
pub struct PatchSampler {
    rng: ChaCha8Rng,
    /// Patch size `[px, py, pz]`.
    pub patch: [usize; 3],
    /// Augmentation.
    pub augment: AugmentConfig,
    /// Foreground share and label weights.
    pub foreground: ForegroundSampling,
}

impl PatchSampler {
    /// A sampler of `patch`-sized patches.
    pub fn new(seed: u64, patch: [usize; 3], augment: AugmentConfig) -> Self {
        Self {
            rng: ChaCha8Rng::seed_from_u64(seed),
            patch,
            augment,
            foreground: ForegroundSampling::default(),
        }
    }

    /// The same with `foreground` sampling.
    pub fn with_foreground(mut self, foreground: ForegroundSampling) -> Self {
        self.foreground = foreground;
        self
    }

    /// A random index drawn with probability ∝ `weights[i]` (uniform when they sum to 0).
    pub fn pick_weighted(&mut self, weights: &[f64]) -> usize {
        let total: f64 = weights.iter().filter(|w| **w > 0.0).sum();
        if total <= 0.0 {
            return self.pick(weights.len());
        }
        let mut r = self.rng.random_range(0.0..total);
        for (i, w) in weights.iter().enumerate() {
            if *w > 0.0 {
                if r < *w {
                    return i;
                }
                r -= w;
            }
        }
        weights.len().saturating_sub(1)
    }

    /// A random index below `n` (which sample to draw a patch from).
    pub fn pick(&mut self, n: usize) -> usize {
        self.rng.random_range(0..n.max(1))
    }

    /// One patch of `sample`: channels `[C][px·py·pz]` (i fastest) and its labels.
    pub fn patch(&mut self, sample: &Sample) -> (Vec<Vec<f32>>, Vec<i32>) {
        let [nx, ny, nz] = sample.dims;
        let p = self.patch;
        // One patch in `one_in` (a third by default) is centred on a labelled voxel, of a label
        // picked among those present — alike, or by the plan's weights (small ones more often).
        let labels = &sample.foreground_by_label;
        let one_in = self.foreground.one_in.max(1);
        let centre = if !labels.is_empty() && self.rng.random_range(0..one_in) == 0 {
            let which = if self.foreground.label_weights.is_empty() {
                self.rng.random_range(0..labels.len())
            } else {
                let w: Vec<f64> = labels
                    .iter()
                    .map(|(v, _)| {
                        let of = self.foreground.label_weights.iter().find(|l| l.0 == *v);
                        of.map_or(0.0, |l| l.1)
                    })
                    .collect();
                self.pick_weighted(&w)
            };
            let (_, voxels) = &labels[which];
            let starts = sample
                .object_starts
                .get(which)
                .filter(|_| self.foreground.by_object);
            let f = match starts.filter(|s| !s.is_empty()) {
                Some(starts) => {
                    let o = self.rng.random_range(0..starts.len());
                    let end = starts.get(o + 1).copied().unwrap_or(voxels.len());
                    voxels[self.rng.random_range(starts[o]..end)]
                }
                None => voxels[self.rng.random_range(0..voxels.len())],
            };
            [f % nx, (f / nx) % ny, f / (nx * ny)]
        } else {
            [
                self.rng.random_range(0..nx),
                self.rng.random_range(0..ny),
                self.rng.random_range(0..nz),
            ]
        };
        self.crop_at(sample, centre, p)
    }

    /// A patch of `size` around the volume's centre (whole-volume context, for the class).
    pub fn centre_crop(&mut self, sample: &Sample, size: [usize; 3]) -> (Vec<Vec<f32>>, Vec<i32>) {
        let [nx, ny, nz] = sample.dims;
        self.crop_at(sample, [nx / 2, ny / 2, nz / 2], size)
    }

    /// A patch of `p` voxels centred (as far as the volume allows) on `centre`, with the
    /// intensity augmentation but no flip, rotation or zoom (its voxels keep their places, so
    /// prompts given on the sample's grid can be drawn into it), and its first voxel.
    pub fn crop_in_place(
        &mut self,
        sample: &Sample,
        centre: [usize; 3],
        p: [usize; 3],
    ) -> (Vec<Vec<f32>>, Vec<i32>, [i64; 3]) {
        let augment = self.augment.clone();
        self.augment.flip_x = false;
        self.augment.rotate_deg = 0.0;
        self.augment.zoom = 0.0;
        let (channels, labels) = self.crop_at(sample, centre, p);
        self.augment = augment;
        (channels, labels, crop_origin(sample.dims, centre, p))
    }

    /// An augmented patch of `p` voxels centred (as far as the volume allows) on `centre`.
    fn crop_at(
        &mut self,
        sample: &Sample,
        centre: [usize; 3],
        p: [usize; 3],
    ) -> (Vec<Vec<f32>>, Vec<i32>) {
        let [nx, ny, nz] = sample.dims;
        let origin = crop_origin(sample.dims, centre, p);
        let flip = self.augment.flip_x && self.rng.random_range(0..2) == 1;
        let mut mirror: [u8; 256] = std::array::from_fn(|v| v as u8);
        if flip {
            for [a, b] in &self.augment.mirror_pairs {
                mirror.swap(*a as usize, *b as usize);
            }
        }
        // A small in-plane rotation and an isotropic zoom about the patch centre (nearest voxel).
        let r = self.augment.rotate_deg.abs();
        let angle = self.rng.random_range(-r..=r).to_radians();
        let z = self.augment.zoom.abs();
        let zoom = 1.0 + self.rng.random_range(-z..=z);
        let (sin, cos) = (angle.sin() / zoom, angle.cos() / zoom);
        let half = p.map(|v| (v as f32 - 1.0) / 2.0);
        let len = p[0] * p[1] * p[2];
        let mut labels = vec![0i32; len];
        let mut channels = vec![vec![0f32; len]; sample.channels.len()];
        for k in 0..p[2] {
            for j in 0..p[1] {
                for i in 0..p[0] {
                    let (dx, dy) = (i as f32 - half[0], j as f32 - half[1]);
                    let dz = (k as f32 - half[2]) / zoom;
                    let src = [
                        origin[0] + (half[0] + cos * dx - sin * dy).round() as i64,
                        origin[1] + (half[1] + sin * dx + cos * dy).round() as i64,
                        origin[2] + (half[2] + dz).round() as i64,
                    ];
                    if (0..3).any(|a| src[a] < 0 || src[a] >= [nx, ny, nz][a] as i64) {
                        continue;
                    }
                    let si = src[0] as usize + nx * (src[1] as usize + ny * src[2] as usize);
                    let di = if flip { p[0] - 1 - i } else { i } + p[0] * (j + p[1] * k);
                    labels[di] = i32::from(mirror[sample.mask[si] as usize])
                        | if sample.changed.get(si).copied().unwrap_or(false) {
                            CHANGED_BIT
                        } else {
                            0
                        };
                    for (c, ch) in channels.iter_mut().enumerate() {
                        ch[di] = sample.channels[c][si];
                    }
                }
            }
        }
        let a = &self.augment;
        for ch in &mut channels {
            let scale = 1.0 + self.rng.random_range(-a.scale..=a.scale);
            let shift = self.rng.random_range(-a.shift..=a.shift);
            let gamma = 1.0 + self.rng.random_range(-a.gamma..=a.gamma);
            let (lo, hi) = ch
                .iter()
                .fold((f32::INFINITY, f32::NEG_INFINITY), |(l, h), v| {
                    (l.min(*v), h.max(*v))
                });
            let range = (hi - lo).max(1e-6);
            for v in ch.iter_mut() {
                let g = ((*v - lo) / range).powf(gamma) * range + lo;
                let noise = a.noise * (self.rng.random_range(-1.0f32..1.0) * 1.732);
                *v = g * scale + shift + noise;
            }
        }
        (channels, labels)
    }

    /// A batch of `n` patches from random samples, on `device`.
    pub fn batch(&mut self, samples: &[Sample], n: usize, device: &Device) -> Batch {
        let p = self.patch;
        let c = samples.first().map_or(1, |s| s.channels.len());
        let mut images = Vec::with_capacity(n * c * p[0] * p[1] * p[2]);
        let mut masks = Vec::with_capacity(n * p[0] * p[1] * p[2]);
        let mut classes = Vec::with_capacity(n);
        for _ in 0..n {
            if samples.is_empty() {
                break;
            }
            let s = &samples[self.pick(samples.len())];
            let (ch, lab) = self.patch(s);
            ch.into_iter().for_each(|x| images.extend(x));
            masks.extend(split_labels(lab, 1.0).0);
            classes.push(class_target(s));
        }
        let n = classes.len();
        // Patches are i fastest; tensors are [N, C, D=z, H=y, W=x], which is the same order.
        Batch {
            images: Tensor::from_data(TensorData::new(images, [n, c, p[2], p[1], p[0]]), device),
            masks: Tensor::<4, Int>::from_data(
                TensorData::new(masks, [n, p[2], p[1], p[0]]),
                device,
            ),
            classes: Tensor::<1, Int>::from_data(TensorData::new(classes, [n]), device),
            weights: None,
        }
    }
}
