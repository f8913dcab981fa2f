//! Sliding-window inference over a whole volume: overlapping windows, each prediction weighted by
//! a Gaussian centred on its window (edges count less), summed and normalised; the label is the
//! arg-max, on the case's exact grid and affine. The class comes from one centre crop of the
//! whole head (averaged over voxel blocks when the plan coarsened it), through the encoder
//! only, as it was trained.
//!
//! Invariants: the output has the input's dims and affine; a volume smaller than the window is
//! zero-padded; windows never read outside the volume; working memory beyond the output is
//! bounded by the window (on the CPU a ring of z-planes and at most 4 windows in flight; on a
//! GPU, `window_slab`: window-deep slabs of input and sums on the device, passes of up to 32
//! stacked windows), not by the volume; windows predicted at once land as if predicted one by
//! one, in order.

use super::model::MultiTaskUNet;
use super::precision::Precision;
use crate::volume::{Affine, Volume, VolumeError};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use burn::tensor::TensorData;
use rayon::prelude::*;

/// A prediction on a case's grid.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// Arg-max labels.
    pub mask: Volume<u8>,
    /// Probability of any foreground label (1 − p(background)).
    pub foreground: Volume<f32>,
    /// Class probabilities (from the centre crop).
    pub class_probabilities: Vec<f32>,
}

/// Window start positions along an axis of length `n` (covering it, last one flush with the end).
pub(super) fn starts(n: usize, window: usize, step: usize) -> Vec<usize> {
    if n <= window {
        return vec![0];
    }
    let mut s: Vec<usize> = (0..=n - window).step_by(step.max(1)).collect();
    if s.last() != Some(&(n - window)) {
        s.push(n - window);
    }
    s
}

/// How far apart windows of `window` voxels overlapping by `overlap` start, per axis.
pub(super) fn window_steps(window: [usize; 3], overlap: f32) -> [usize; 3] {
    window.map(|w| ((w as f32) * (1.0 - overlap.clamp(0.0, 0.9))).floor() as usize)
}

/// The windows of `window` voxels overlapping by `overlap` that cover a `dims` grid.
pub(super) fn window_count(dims: [usize; 3], window: [usize; 3], overlap: f32) -> usize {
    let step = window_steps(window, overlap);
    (0..3)
        .map(|a| starts(dims[a], window[a], step[a]).len())
        .product()
}

/// A window's weights along one axis: a Gaussian of σ = window / 8 about its centre, floored
/// at 1e-3.
pub(super) fn gaussian(window: usize) -> Vec<f32> {
    let c = (window as f32 - 1.0) / 2.0;
    let sigma = (window as f32 / 8.0).max(0.5);
    (0..window)
        .map(|i| (-((i as f32 - c) / sigma).powi(2) / 2.0).exp().max(1e-3))
        .collect()
}

/// The voxels of a `[wx, wy, wz]` box at each of `origins` (may stick out: zero-filled), as one
/// `[origins, C, wz, wy, wx]` tensor.
fn window_tensor(
    channels: &[Vec<f32>],
    dims: [usize; 3],
    origins: &[[i64; 3]],
    window: [usize; 3],
    device: &Device,
) -> Tensor<5> {
    let [wx, wy, wz] = window;
    let c = channels.len();
    let mut input = vec![0f32; origins.len() * c * wx * wy * wz];
    let chunk = (c * wx * wy * wz).max(1);
    for (item, &origin) in input.chunks_mut(chunk).zip(origins) {
        fill_window(item, channels, dims, origin, window);
    }
    let shape = [origins.len(), c, wz, wy, wx];
    Tensor::<5>::from_data(TensorData::new(input, shape), device)
}

/// Copy the box of `window` voxels at `origin` of every channel into `item` (`[C, wz, wy, wx]`,
/// zero where the box sticks out of the grid `dims`).
fn fill_window(
    item: &mut [f32],
    channels: &[Vec<f32>],
    dims: [usize; 3],
    origin: [i64; 3],
    window: [usize; 3],
) {
    let [nx, ny, nz] = dims;
    let [wx, wy, wz] = window;
    for (ci, ch) in channels.iter().enumerate() {
        for k in 0..wz {
            let z = origin[2] + k as i64;
            if z < 0 || z >= nz as i64 {
                continue;
            }
            for j in 0..wy {
                let y = origin[1] + j as i64;
                if y < 0 || y >= ny as i64 {
                    continue;
                }
                for i in 0..wx {
                    let x = origin[0] + i as i64;
                    if x < 0 || x >= nx as i64 {
                        continue;
                    }
                    let src = x as usize + nx * (y as usize + ny * z as usize);
                    item[((ci * wz + k) * wy + j) * wx + i] = ch[src];
                }
            }
        }
    }
}

/// What the class head looks at: a centre crop of `window` voxels of the volume averaged over
/// blocks of `stride` voxels (the whole head at a coarse grid, as trained).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClassView {
    /// Crop size `[x, y, z]` (coarse voxels).
    pub window: [usize; 3],
    /// Block size per axis (1: the volume's own grid).
    pub stride: [usize; 3],
}

/// Class probabilities from the class view's centre crop of a volume.
pub fn classify_volume(
    model: &MultiTaskUNet,
    channels: &[Vec<f32>],
    dims: [usize; 3],
    view: ClassView,
    device: &Device,
) -> Result<Vec<f32>, VolumeError> {
    use std::borrow::Cow;
    let (coarse, dims): (Cow<[Vec<f32>]>, [usize; 3]) = if view.stride.iter().any(|s| *s > 1) {
        let blocks: Vec<(Vec<f32>, [usize; 3])> = channels
            .iter()
            .map(|c| super::data::block_mean(c, dims, view.stride))
            .collect();
        let d = blocks.first().map_or(dims, |b| b.1);
        (Cow::Owned(blocks.into_iter().map(|b| b.0).collect()), d)
    } else {
        (Cow::Borrowed(channels), dims)
    };
    let window = view.window;
    let origin = [0, 1, 2].map(|a| dims[a] as i64 / 2 - window[a] as i64 / 2);
    let x = window_tensor(&coarse, dims, &[origin], window, device);
    softmax(model.forward_class(x), 1)
        .try_into_vec_as::<f32>()
        .map_err(|e| VolumeError::Shape(format!("reading a prediction back: {e:?}")))
}

/// Predict a volume given as channels (`[C][nx·ny·nz]`, i fastest, already normalised) on the
/// grid `dims` with `affine`: the mask with windows of `window` voxels `[wx, wy, wz]`
/// overlapping by `overlap` (0..1), the class from the class view's centre crop.
#[allow(clippy::too_many_arguments)]
pub fn predict_volume(
    model: &MultiTaskUNet,
    channels: &[Vec<f32>],
    dims: [usize; 3],
    affine: Affine,
    window: [usize; 3],
    class_view: ClassView,
    overlap: f32,
    device: &Device,
) -> Result<Prediction, VolumeError> {
    let geometry = (window, overlap, Precision::F32);
    predict_volume_in(
        model,
        channels,
        (dims, affine),
        geometry,
        class_view,
        device,
    )
}

/// [`predict_volume`] with the segmentation's network run in `precision` on a GPU
/// ([`segment_volume_in`]; the class view's single pass stays f32).
pub fn predict_volume_in(
    model: &MultiTaskUNet,
    channels: &[Vec<f32>],
    (dims, affine): ([usize; 3], Affine),
    (window, overlap, precision): ([usize; 3], f32, Precision),
    class_view: ClassView,
    device: &Device,
) -> Result<Prediction, VolumeError> {
    let [nx, ny, nz] = dims;
    let geometry = (window, overlap);
    let (mask, fg) = segment_volume_in(model, channels, dims, geometry, device, precision)?;
    Ok(Prediction {
        mask: Volume::new([nx, ny, nz, 1], affine, mask)?,
        foreground: Volume::new([nx, ny, nz, 1], affine, fg)?,
        class_probabilities: classify_volume(model, channels, dims, class_view, device)?,
    })
}

/// The segmentation alone of a volume given as channels on the grid `dims` (see
/// `predict_volume`): arg-max labels and foreground probability per voxel. On the CPU the
/// windows' probabilities are summed on the host (a ring of z-planes); on a GPU they are summed
/// on the device and only finished planes come back (`window_slab`).
pub fn segment_volume(
    model: &MultiTaskUNet,
    channels: &[Vec<f32>],
    dims: [usize; 3],
    window: [usize; 3],
    overlap: f32,
    device: &Device,
) -> Result<(Vec<u8>, Vec<f32>), VolumeError> {
    let geometry = (window, overlap);
    segment_volume_in(model, channels, dims, geometry, device, Precision::F32)
}

/// [`segment_volume`] (windows of `window` voxels overlapping by `overlap`) with the network run
/// in `precision` on a GPU: in f16 or bf16 each pass's input is cast to it, its features stay in
/// it through mriloop's kernels (on the f32 weights), and its outputs are summed in f32, as
/// autocast's inference (nnU-Net's GPU predictor's). On the CPU, which has no fast half-precision
/// kernels, and on a GPU without `precision`'s type, the network runs in f32.
pub fn segment_volume_in(
    model: &MultiTaskUNet,
    channels: &[Vec<f32>],
    dims: [usize; 3],
    (window, overlap): ([usize; 3], f32),
    device: &Device,
    precision: Precision,
) -> Result<(Vec<u8>, Vec<f32>), VolumeError> {
    let step = window_steps(window, overlap);
    match super::conv_gpu::on_gpu(device) {
        false => segment_on_host(
            model,
            channels,
            dims,
            (window, step),
            Batching::on_cpu(),
            device,
        ),
        true => super::window_slab::segment_on_device(
            model,
            channels,
            dims,
            (window, step),
            (gpu_windows_per_pass(window), precision.or_f32_on(device)),
            device,
        ),
    }
}

/// [`segment_volume`] with windows of `window` voxels starting every `step` voxels, predicted
/// as `batching` says and summed on the host.
pub(super) fn segment_on_host(
    model: &MultiTaskUNet,
    channels: &[Vec<f32>],
    dims: [usize; 3],
    (window, step): ([usize; 3], [usize; 3]),
    batching: Batching,
    device: &Device,
) -> Result<(Vec<u8>, Vec<f32>), VolumeError> {
    let [nx, ny, nz] = dims;
    let n = nx * ny * nz;
    let g = window.map(gaussian);
    let [wx, wy, wz] = window;
    // Accumulators hold only the planes a window can still reach: a ring of `depth` z-planes.
    // Planes below the next window's start are final and go to the output at once, so memory
    // is bounded by the window's depth, not the volume's.
    let mut ring = PlaneRing::new(dims, wz.min(nz).max(1));
    let mut mask = vec![0u8; n];
    let mut fg = vec![0f32; n];
    let mut done_z = 0usize;
    for &z0 in &starts(nz, wz, step[2]) {
        while done_z < z0 {
            ring.finish_plane(done_z, &mut mask, &mut fg);
            done_z += 1;
        }
        let origins: Vec<[usize; 3]> = starts(ny, wy, step[1])
            .into_iter()
            .flat_map(|y0| {
                starts(nx, wx, step[0])
                    .into_iter()
                    .map(move |x0| [x0, y0, z0])
            })
            .collect();
        for chunk in origins.chunks(batching.passes * batching.windows) {
            let passes: Vec<Result<Vec<f32>, VolumeError>> = chunk
                .par_chunks(batching.windows)
                .map(|pass| predict_windows(model, channels, dims, pass, window, device))
                .collect();
            for (probs, pass) in passes.into_iter().zip(chunk.chunks(batching.windows)) {
                let probs = probs?;
                let each = (probs.len() / pass.len()).max(1);
                for (probs, &origin_vox) in probs.chunks(each).zip(pass) {
                    ring.add_window(probs, origin_vox, window, &g);
                }
            }
        }
    }
    while done_z < nz {
        ring.finish_plane(done_z, &mut mask, &mut fg);
        done_z += 1;
    }
    Ok((mask, fg))
}

/// How windows are predicted on the host path: `passes` forward passes at once, each of
/// `windows` windows stacked into one batch (instance norms are per item, so a batch predicts
/// each window as alone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Batching {
    /// Forward passes at once (threads of the rayon pool).
    pub(super) passes: usize,
    /// Windows per forward pass.
    pub(super) windows: usize,
}

impl Batching {
    /// On the CPU one window per pass and one pass per thread of the current rayon pool, at
    /// most [`MAX_WINDOWS_IN_FLIGHT`] (the CPU backend leaves parts of a forward pass to one
    /// core; two windows in flight on two cores took `bench predict --size 96` from 4.8 to
    /// 3.7 s).
    fn on_cpu() -> Self {
        Self {
            passes: rayon::current_num_threads().clamp(1, MAX_WINDOWS_IN_FLIGHT),
            windows: 1,
        }
    }
}

/// Windows of `window` voxels stacked into one forward pass on a GPU: as many as fit
/// [`GPU_PASS_VOXELS`], at most [`MAX_GPU_WINDOWS`]. A window alone is a few hundred small
/// kernels, too little work for a GPU (one 32³ window at a time, an H200 took 21.2 s for a
/// 256³ case, PyTorch 12.4 s).
pub fn gpu_windows_per_pass(window: [usize; 3]) -> usize {
    (GPU_PASS_VOXELS / window.iter().product::<usize>().max(1)).clamp(1, MAX_GPU_WINDOWS)
}

/// The most windows predicted at once on the CPU: each holds its own activations (a few
/// hundred MB for a 96³ window of a GPU-planned network).
const MAX_WINDOWS_IN_FLIGHT: usize = 4;

/// Voxels of the windows stacked into one GPU forward pass (32 windows of 32³, 4 of 64³; one
/// window of 81³ or more goes alone). A pass's launches are the same for any batch, and a
/// small network's prediction on a GPU is bound by its launches (and its coarse levels by
/// threads: 16 windows of 32³ give its 4³ level 1 024 voxels a channel); the activations of
/// the largest pass are a few hundred MB for a GPU-planned network.
const GPU_PASS_VOXELS: usize = 32 * 32 * 32 * 32;

/// The most windows in one GPU forward pass.
const MAX_GPU_WINDOWS: usize = 32;

/// Segmentation probabilities of the windows of `window` voxels at `origins_vox` (voxel indices
/// of their first corners), predicted in one forward pass: one after the other, each laid out
/// `[label][k][j][i]`, i fastest.
fn predict_windows(
    model: &MultiTaskUNet,
    channels: &[Vec<f32>],
    dims: [usize; 3],
    origins_vox: &[[usize; 3]],
    window: [usize; 3],
    device: &Device,
) -> Result<Vec<f32>, VolumeError> {
    let origins: Vec<[i64; 3]> = origins_vox.iter().map(|o| o.map(|v| v as i64)).collect();
    let x = window_tensor(channels, dims, &origins, window, device);
    let (seg, _) = model.forward(x);
    softmax(seg, 1)
        .try_into_vec_as::<f32>()
        .map_err(|e| VolumeError::Shape(format!("reading a prediction back: {e:?}")))
}

/// Gaussian-weighted sums of window predictions over a ring of `depth` z-planes of the grid:
/// voxel `(i, j, z)` lives at `(z % depth) * plane + i + nx * j`.
struct PlaneRing {
    /// Grid size `[nx, ny, nz]` in voxels.
    dims: [usize; 3],
    /// Planes held.
    depth: usize,
    /// Per label, the weighted probability sums (empty until the first window names the labels).
    acc: Vec<Vec<f32>>,
    /// Per voxel of the ring, the sum of weights.
    weight: Vec<f32>,
}

impl PlaneRing {
    /// An empty ring of `depth` planes of the grid `dims`.
    fn new(dims: [usize; 3], depth: usize) -> Self {
        Self {
            dims,
            depth,
            acc: Vec::new(),
            weight: vec![0f32; dims[0] * dims[1] * depth],
        }
    }

    /// Voxels in one z-plane.
    fn plane(&self) -> usize {
        self.dims[0] * self.dims[1]
    }

    /// Add one window's probabilities `probs` (`[label][k][j][i]`) at `origin_vox`, each voxel
    /// weighted by the product of the per-axis Gaussians `g`.
    fn add_window(
        &mut self,
        probs: &[f32],
        origin_vox: [usize; 3],
        window: [usize; 3],
        g: &[Vec<f32>; 3],
    ) {
        let [nx, ny, nz] = self.dims;
        let [x0, y0, z0] = origin_vox;
        let [wx, wy, wz] = window;
        let plane = self.plane();
        let labels = probs.len() / (wx * wy * wz).max(1);
        if self.acc.is_empty() {
            self.acc = vec![vec![0f32; plane * self.depth]; labels];
        }
        for k in 0..wz.min(nz - z0) {
            let ring = ((z0 + k) % self.depth) * plane;
            for j in 0..wy.min(ny - y0) {
                for i in 0..wx.min(nx - x0) {
                    let w = g[0][i] * g[1][j] * g[2][k];
                    let dst = ring + (x0 + i) + nx * (y0 + j);
                    self.weight[dst] += w;
                    for (l, a) in self.acc.iter_mut().enumerate() {
                        a[dst] += w * probs[((l * wz + k) * wy + j) * wx + i];
                    }
                }
            }
        }
    }

    /// Plane `z` is final: write its arg-max labels into `mask` and its foreground probability
    /// into `fg` (both whole-grid), and clear its slot in the ring for a later plane.
    fn finish_plane(&mut self, z: usize, mask: &mut [u8], fg: &mut [f32]) {
        let plane = self.plane();
        let ring = (z % self.depth) * plane;
        for v in 0..plane {
            let w = self.weight[ring + v].max(1e-12);
            let mut best = (0usize, f32::NEG_INFINITY);
            for (l, a) in self.acc.iter().enumerate() {
                if a[ring + v] > best.1 {
                    best = (l, a[ring + v]);
                }
            }
            mask[z * plane + v] = best.0.min(255) as u8;
            fg[z * plane + v] = self.acc.first().map_or(0.0, |bg| 1.0 - bg[ring + v] / w);
            self.weight[ring + v] = 0.0;
            for a in self.acc.iter_mut() {
                a[ring + v] = 0.0;
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::model::MultiTaskUNetConfig;

    /// A small network of seeded random weights (2 sequences, 3 labels) for prediction tests:
    /// unseeded, about one start in twelve predicted one label everywhere on
    /// [`test_channels`] (another test drawing at the same moment can still move the draw).
    pub(in crate::model) fn tiny_model(device: &Device) -> MultiTaskUNet {
        device.seed(7);
        MultiTaskUNetConfig::new(2, 3, 2)
            .with_base_channels(4)
            .with_depth(2)
            .init(device)
    }

    /// Two deterministic, varied channels on the grid `dims`.
    pub(in crate::model) fn test_channels(dims: [usize; 3]) -> Vec<Vec<f32>> {
        let n = dims.iter().product::<usize>();
        (0..2)
            .map(|c| {
                (0..n)
                    .map(|i| ((i * (7 + c)) % 23) as f32 / 11.0 - 1.0)
                    .collect()
            })
            .collect()
    }

    #[test]
    fn windows_stacked_in_one_pass_predict_as_one_by_one() {
        let device = Device::flex();
        let model = tiny_model(&device);
        // A grid whose edges cut windows short (zero-padded) and an uneven last pass (7 = 3+3+1
        // windows per z-plane row of passes).
        let dims = [30, 22, 26];
        let n = dims.iter().product::<usize>();
        let channels = test_channels(dims);
        let tiling = ([16, 16, 16], [8, 8, 8]);
        let one = Batching {
            passes: 1,
            windows: 1,
        };
        let stacked = Batching {
            passes: 2,
            windows: 3,
        };
        let (mask_one, fg_one) =
            segment_on_host(&model, &channels, dims, tiling, one, &device).unwrap();
        let (mask_stacked, fg_stacked) =
            segment_on_host(&model, &channels, dims, tiling, stacked, &device).unwrap();
        let worst = fg_one
            .iter()
            .zip(&fg_stacked)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(worst < 1e-5, "foreground probabilities differ by {worst}");
        let differing = mask_one
            .iter()
            .zip(&mask_stacked)
            .filter(|(a, b)| a != b)
            .count();
        assert!(differing * 10_000 <= n, "{differing} of {n} labels differ");
        // The weights are random but not degenerate: the prediction varies over the volume.
        let spread =
            fg_one.iter().fold(0f32, |m, v| m.max(*v)) - fg_one.iter().fold(1f32, |m, v| m.min(*v));
        assert!(spread > 1e-3, "a flat prediction proves nothing ({spread})");
    }

    #[test]
    fn a_gpu_stacks_small_windows_and_a_cpu_spreads_them_over_threads() {
        let cpu = Batching::on_cpu();
        assert_eq!(cpu.windows, 1);
        assert!(cpu.passes >= 1 && cpu.passes <= MAX_WINDOWS_IN_FLIGHT);
        assert_eq!(gpu_windows_per_pass([32; 3]), 32);
        assert_eq!(gpu_windows_per_pass([64; 3]), 4);
        assert_eq!(gpu_windows_per_pass([96; 3]), 1);
        assert_eq!(gpu_windows_per_pass([4; 3]), 32);
    }
}
