//! Training the promptable network with a simulated user (DeepEdit's and nnInteractive's
//! recipe): each patch is centred on a labelled voxel whose label becomes the target (0/1
//! labels); the loader draws the user's first prompt (a point, a box, a scribble, or an
//! imperfect mask with a click on its largest error) into the guidance channels; before the
//! step the training thread lets the network predict, without gradient, for a few rounds and
//! adds the robot's corrective click at the centre of the largest error each time, feeding the
//! prediction back as the current mask — then the step learns from where the user left it.
//!
//! Invariants: a promptable configuration has the sequences plus `GUIDANCE_CHANNELS` input
//! channels and two labels (background, target); the annotators' change bits of the labels
//! survive into the 0/1 targets; nothing here changes weights.

use super::data::{PatchSampler, Sample, CHANGED_BIT};
use super::fit::FitConfig;
use super::model::MultiTaskUNet;
use super::prompt::{corrective_click, initial_prompts, Guidance, PromptConfig, GUIDANCE_CHANNELS};
use super::training::TaskMode;
use burn::prelude::*;
use burn::tensor::TensorData;
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
    let labels = target_labels(&labels, target);
    let truth: Vec<bool> = labels.iter().map(|l| l & 1 == 1).collect();
    let (prompts, prior) = initial_prompts(&truth, p, config, rng);
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
