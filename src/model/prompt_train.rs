//! Training the promptable network with a simulated user (DeepEdit's and nnInteractive's
//! recipe): each patch is centred on a labelled voxel (objects of a label alike: a small lesion
//! as often as a large one) whose object — its 6-connected region of that label — becomes the
//! target (0/1 labels); the loader draws the user's first prompt (a point, a box or a scribble)
//! into the guidance channels — or, refining, an automatic mask's stand-in for every object of
//! the label in the patch (then all of them are the target; at times it also holds a
//! neighbouring object of another label, as an automatic model confuses labels) with a click
//! on its largest error;
//! before the
//! step the training thread lets the network predict, without gradient, for a few rounds and
//! adds the robot's corrective click at the centre of the largest error each time, feeding the
//! prediction back as the current mask — then the step learns from where the user left it.
//!
//! The user's own prompting is replayed too: each recorded interaction of a case's prompt log
//! (its prompts, the object it started from, the object it produced) becomes a patch around
//! its newest prompt with the user's prompts and starting object as guidance, the case's saved
//! mask as the target, and the voxels the user fixed after the answer marked changed (they
//! weigh `changed_weight` in the loss).
//!
//! Invariants: a promptable configuration has the sequences plus `GUIDANCE_CHANNELS` input
//! channels and two labels (background, target); the annotators' change bits of the labels
//! survive into the 0/1 targets; nothing here changes weights.

use super::data::{PatchSampler, Sample, CHANGED_BIT};
use super::fit::FitConfig;
use super::model::MultiTaskUNet;
use super::prompt::{
    corrective_click, initial_prompts, prompt_on_grid, refine_start, Guidance, Prompt,
    PromptConfig, GUIDANCE_CHANNELS,
};
use super::training::TaskMode;
use crate::project::prompt_log::{decode_bits, PromptRecord};
use burn::prelude::*;
use burn::tensor::TensorData;
use rand::RngExt;
use rand_chacha::ChaCha8Rng;

/// `config` made promptable: guidance channels after the sequences, a target-or-not output,
/// the segmentation trained alone, every patch on a labelled voxel.
pub fn promptable(mut config: FitConfig, prompt: PromptConfig) -> FitConfig {
    let t = &mut config.training;
    if t.prompt.is_none() {
        t.model.in_channels += GUIDANCE_CHANNELS;
    }
    t.model.num_labels = 2;
    t.mode = TaskMode::SegmentationOnly;
    t.class_evidence = None;
    t.prompt = Some(prompt);
    config.class_every = 0;
    config.foreground_one_in = 1;
    config
}

/// The 0/1 target of patch `labels` for label `target` (change bits kept).
fn target_labels(labels: &[i32], target: i32) -> Vec<i32> {
    labels
        .iter()
        .map(|l| i32::from(l & (CHANGED_BIT - 1) == target) | (l & CHANGED_BIT))
        .collect()
}

/// The 0/1 target `labels` (change bits kept) cut to one object: the 6-connected region at the
/// patch's centre, else the largest. A click in one lesion asks for that lesion, not for its
/// neighbours in the patch — the window keeps one object per prompt and the robot user judges
/// one object at a time, so training on every object of the label taught the network to spill.
fn one_object(labels: &mut [i32], patch: [usize; 3]) {
    let centre = patch[0] / 2 + patch[0] * (patch[1] / 2 + patch[1] * (patch[2] / 2));
    let regions = crate::volume::regions::connected_regions(patch, |i| labels[i] & 1 == 1);
    let keep = regions
        .iter()
        .find(|r| r.contains(&centre))
        .or_else(|| regions.iter().max_by_key(|r| r.len()));
    let mut object = vec![false; labels.len()];
    for &i in keep.into_iter().flatten() {
        object[i] = true;
    }
    for (l, o) in labels.iter_mut().zip(object) {
        *l = i32::from(o) | (*l & CHANGED_BIT);
    }
}

/// The label a patch targets: the one at its centre, else the most frequent one in it.
fn patch_target(labels: &[i32], patch: [usize; 3]) -> Option<i32> {
    let centre = patch[0] / 2 + patch[0] * (patch[1] / 2 + patch[1] * (patch[2] / 2));
    let at = labels.get(centre).map(|l| l & (CHANGED_BIT - 1))?;
    if at > 0 {
        return Some(at);
    }
    let mut counts = [0usize; 256];
    for l in labels {
        counts[(l & 0xff) as usize] += 1;
    }
    (1..256)
        .filter(|v| counts[*v] > 0)
        .max_by_key(|v| counts[*v])
        .map(|v| v as i32)
}

/// One training patch of `sample` for the promptable network: its channels followed by the
/// first prompt's guidance, and the 0/1 target labels; `None` when the patch holds no label.
pub fn prompt_patch(
    sampler: &mut PatchSampler,
    sample: &Sample,
    config: &PromptConfig,
    rng: &mut ChaCha8Rng,
) -> Option<(Vec<Vec<f32>>, Vec<i32>)> {
    let p = sampler.patch;
    let (mut channels, labels) = sampler.patch(sample);
    let target = patch_target(&labels, p)?;
    let others: Vec<bool> = labels
        .iter()
        .map(|l| l & (CHANGED_BIT - 1))
        .map(|v| v != 0 && v != target)
        .collect();
    let mut labels = target_labels(&labels, target);
    let truth = |labels: &[i32]| labels.iter().map(|l| l & 1 == 1).collect::<Vec<bool>>();
    let (prompts, prior) = if rng.random_range(0.0..1.0) < config.refine_share {
        // Refining a mask of the whole label: the answer is every object in the patch.
        let (prompts, prior) = refine_start(&truth(&labels), &others, p, rng);
        (prompts, Some(prior))
    } else {
        one_object(&mut labels, p);
        (initial_prompts(&truth(&labels), p, config, rng), None)
    };
    let mut guidance = Guidance::empty(p);
    for prompt in &prompts {
        guidance.draw(prompt, [0; 3], config.point_radius_vox);
    }
    if let Some(prior) = prior {
        guidance.set_prior(&prior);
    }
    channels.extend(guidance.into_channels());
    Some((channels, labels))
}

/// A recorded prompted interaction on a sample's grid.
#[derive(Debug, Clone, PartialEq)]
pub struct Replay {
    /// The label prompted.
    pub label: u8,
    /// The prompts so far (the last one is the interaction's).
    pub prompts: Vec<Prompt>,
    /// Voxels (linear, on the sample's grid) of the object the network refined.
    pub prior: Vec<usize>,
    /// Voxels where the answer differs from the saved mask: what the user fixed after it.
    pub fixed: Vec<usize>,
}

impl Replay {
    /// Where its patch is centred: the middle of its newest prompt.
    pub fn centre_vox(&self) -> Option<[usize; 3]> {
        let (lo, hi) = self.prompts.last()?.bounds_vox()?;
        Some([0, 1, 2].map(|a| (lo[a] + hi[a]) / 2))
    }
}

/// `record` on `sample`'s grid (its prompts must meet the grid; the masks are read by nearest
/// voxel), or `None`.
pub fn replay_on_grid(record: &PromptRecord, sample: &Sample) -> Option<Replay> {
    let dims = sample.dims;
    let prompts: Vec<Prompt> = record
        .prompts
        .iter()
        .map(|p| prompt_on_grid(p, &sample.affine, dims))
        .collect::<Option<_>>()?;
    let w = &record.window;
    let len = w.dims.iter().product();
    let before = decode_bits(&record.before, len)?;
    let after = decode_bits(&record.after, len)?;
    let (min, max) = crate::edit::tools::world_box_of_voxels(&w.affine, [0; 3], w.dims);
    let region = crate::edit::tools::voxel_box_of_world_box(&sample.affine, dims, min, max);
    let (mut prior, mut fixed) = (Vec::new(), Vec::new());
    for v in region.iter() {
        let mm = sample
            .affine
            .vox_to_mm(glam::DVec3::from_array(v.map(|x| x as f64)));
        let Some(r) = w.affine.mm_to_vox(mm).map(|r| r.round()) else {
            continue;
        };
        if (0..3).any(|a| r[a] < 0.0 || r[a] >= w.dims[a] as f64) {
            continue;
        }
        let at = r.x as usize + w.dims[0] * (r.y as usize + w.dims[1] * r.z as usize);
        let here = v[0] + dims[0] * (v[1] + dims[1] * v[2]);
        if before[at] {
            prior.push(here);
        }
        if after[at] != (sample.mask.get(here) == Some(&record.label)) {
            fixed.push(here);
        }
    }
    Some(Replay {
        label: record.label,
        prompts,
        prior,
        fixed,
    })
}

/// A training patch replaying `replay` of `sample`: centred on its newest prompt, no
/// geometric augmentation, its prompts and starting object as guidance, the saved mask's
/// target with the fixed voxels marked changed.
pub fn replay_patch(
    sampler: &mut PatchSampler,
    sample: &Sample,
    replay: &Replay,
    config: &PromptConfig,
) -> Option<(Vec<Vec<f32>>, Vec<i32>)> {
    let p = sampler.patch;
    let (mut channels, labels, origin) = sampler.crop_in_place(sample, replay.centre_vox()?, p);
    let local = |idx: usize| {
        let [nx, ny, _] = sample.dims;
        let v = [idx % nx, (idx / nx) % ny, idx / (nx * ny)];
        let l = [0, 1, 2].map(|a| v[a] as i64 - origin[a]);
        (0..3)
            .all(|a| l[a] >= 0 && (l[a] as usize) < p[a])
            .then(|| l[0] as usize + p[0] * (l[1] as usize + p[1] * l[2] as usize))
    };
    let mut labels: Vec<i32> = labels
        .iter()
        .map(|l| i32::from(l & (CHANGED_BIT - 1) == i32::from(replay.label)))
        .collect();
    for at in replay.fixed.iter().filter_map(|i| local(*i)) {
        labels[at] |= CHANGED_BIT;
    }
    let mut prior = vec![false; labels.len()];
    for at in replay.prior.iter().filter_map(|i| local(*i)) {
        prior[at] = true;
    }
    let mut guidance = Guidance::empty(p);
    for prompt in &replay.prompts {
        guidance.draw(prompt, origin, config.point_radius_vox);
    }
    guidance.set_prior(&prior);
    channels.extend(guidance.into_channels());
    Some((channels, labels))
}

/// The simulated user's corrections of a host batch before its step: `rounds` times, the
/// network (`model`, no gradient) predicts the `n` patches of `patch` voxels (`images`
/// `[n][c][voxels]`, the last `GUIDANCE_CHANNELS` channels the guidance), and each patch gets
/// a click at the centre of its largest error and its prediction as the current mask.
#[allow(clippy::too_many_arguments)]
pub fn simulate_corrections(
    model: &MultiTaskUNet,
    images: &mut [f32],
    masks: &[i32],
    n: usize,
    c: usize,
    patch: [usize; 3],
    rounds: usize,
    radius_vox: f64,
    device: &Device,
) {
    let len = patch[0] * patch[1] * patch[2];
    if c < GUIDANCE_CHANNELS || images.len() != n * c * len || masks.len() != n * len {
        return;
    }
    for _ in 0..rounds {
        let x = Tensor::<5>::from_data(
            TensorData::new(images.to_vec(), [n, c, patch[2], patch[1], patch[0]]),
            device,
        );
        let (seg, _) = model.forward(x);
        let [_, k, _, _, _] = seg.dims();
        if k < 2 {
            return;
        }
        let margin = seg.clone().slice([0..n, 1..2]) - seg.slice([0..n, 0..1]);
        let Ok(margin) = margin.try_into_vec_as::<f32>() else {
            return;
        };
        for b in 0..n {
            let predicted: Vec<bool> = margin[b * len..(b + 1) * len]
                .iter()
                .map(|m| *m > 0.0)
                .collect();
            let truth: Vec<bool> = masks[b * len..(b + 1) * len]
                .iter()
                .map(|l| l & 1 == 1)
                .collect();
            let at = |ch: usize| (b * c + ch) * len;
            let g0 = c - GUIDANCE_CHANNELS;
            let mut guidance = Guidance {
                dims: patch,
                include: images[at(g0)..at(g0) + len].to_vec(),
                exclude: images[at(g0 + 1)..at(g0 + 1) + len].to_vec(),
                prior: vec![0.0; len],
            };
            if let Some(click) = corrective_click(&truth, &predicted, patch) {
                guidance.draw(&click, [0; 3], radius_vox);
            }
            guidance.set_prior(&predicted);
            for (g, values) in guidance.into_channels().into_iter().enumerate() {
                images[at(g0 + g)..at(g0 + g) + len].copy_from_slice(&values);
            }
        }
    }
}

/// How many corrective rounds step `step` simulates: spread evenly over `0..=most`,
/// deterministically from the step and the seed (the training thread holds no generator).
pub fn rounds_for_step(step: usize, seed: u64, most: usize) -> usize {
    let mixed = (step as u64 ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    (mixed % (most as u64 + 1)) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_is_the_object_at_the_centre_with_its_change_bits() {
        // A 6³ patch: one object through the centre (3, 3, 3), another in a corner, both of
        // the target label; one voxel of each marked changed.
        let p = [6usize; 3];
        let at = |i: usize, j: usize, k: usize| i + 6 * (j + 6 * k);
        let mut labels = vec![0i32; 216];
        for i in 2..5 {
            labels[at(i, 3, 3)] = 1;
        }
        labels[at(0, 0, 0)] = 1;
        labels[at(0, 1, 0)] = 1;
        labels[at(4, 3, 3)] |= CHANGED_BIT;
        labels[at(0, 0, 0)] |= CHANGED_BIT;
        one_object(&mut labels, p);
        let kept: Vec<usize> = (0..216).filter(|i| labels[*i] & 1 == 1).collect();
        assert_eq!(kept, vec![at(2, 3, 3), at(3, 3, 3), at(4, 3, 3)]);
        assert_eq!(labels[at(4, 3, 3)], 1 | CHANGED_BIT);
        assert_eq!(labels[at(0, 0, 0)], CHANGED_BIT);
        // Nothing at the centre: the largest object.
        let mut labels = vec![0i32; 216];
        labels[at(0, 0, 0)] = 1;
        for k in 0..3 {
            labels[at(5, 5, k)] = 1;
        }
        one_object(&mut labels, p);
        let kept: Vec<usize> = (0..216).filter(|i| labels[*i] & 1 == 1).collect();
        assert_eq!(kept, vec![at(5, 5, 0), at(5, 5, 1), at(5, 5, 2)]);
    }
}
