//! Sliding-window segmentation summed on the prediction's device (for GPUs): the input goes up
//! one slab of window-deep z-planes at a time, windows are cut from it on the device and
//! predicted in stacked passes, their Gaussian-weighted probabilities summed into a device slab
//! of the same depth, and only finished planes come back (arg-max labels and background sums).
//! No window is read back and the host sums nothing, so the host keeps queueing kernels while
//! the device runs them (as PyTorch's predictor does on a GPU). On burn's GPU backend one
//! kernel stacks a pass's windows and one adds them back ([`super::window_slab_gpu`]); on
//! other devices burn's slices do it (a launch or two per window).
//!
//! Invariants: the windows, weights and outputs of `inference`'s host ring, up to float
//! rounding; device memory beyond the network's activations is two slabs (input and sums) of
//! window depth over the grid's planes (padded to the window where the grid is smaller), not
//! the volume; a voxel's sum of weights is the product of per-axis sums (the windows are a
//! Cartesian grid of starts and a window's weight is a product of per-axis Gaussians), so it
//! is computed on the host from three short vectors.

use super::inference::{gaussian, starts};
use super::model::MultiTaskUNet;
use super::precision::Precision;
use super::window_slab_gpu::{add_windows, cut_windows};
use crate::volume::VolumeError;
use burn::prelude::*;
use burn::tensor::activation::softmax;
use burn::tensor::{FloatDType, TensorData};

/// The segmentation of `channels` (`[C][nx·ny·nz]`, i fastest) on the grid `dims` with windows
/// of `window` voxels `[wx, wy, wz]` starting every `step` voxels, `windows_per_pass` windows
/// stacked in each forward pass: arg-max labels and foreground probability per voxel.
pub(super) fn segment_on_device(
    model: &MultiTaskUNet,
    channels: &[Vec<f32>],
    dims: [usize; 3],
    (window, step): ([usize; 3], [usize; 3]),
    (windows_per_pass, precision): (usize, Precision),
    device: &Device,
) -> Result<(Vec<u8>, Vec<f32>), VolumeError> {
    let axis_starts = [0, 1, 2].map(|a| starts(dims[a], window[a], step[a]));
    let mut slab = SumSlab::new(dims, window, &axis_starts, device);
    let origins: Vec<[usize; 2]> = axis_starts[1]
        .iter()
        .flat_map(|&y0| axis_starts[0].iter().map(move |&x0| [x0, y0]))
        .collect();
    // Passes as even as the row allows, so no pass is a sliver (225 windows a row in passes
    // of at most 32: 7 of 29 and one of 22, not 7 of 32 and one of 1; at most 16: 15 of 15).
    let passes = origins.len().div_ceil(windows_per_pass.max(1));
    let per_pass = origins.len().div_ceil(passes.max(1)).max(1);
    // Every row of windows has the same passes (their origins go up to a GPU once).
    let row: Vec<Pass> = (origins.chunks(per_pass))
        .map(|pass| Pass::new(pass, window, slab.on_gpu, device))
        .collect();
    for &z0 in &axis_starts[2] {
        // The next slab's input is filled while the device still runs the last row's passes;
        // finishing planes reads back and waits for them.
        let input = input_slab(channels, dims, z0, slab.padded, device);
        slab.advance_to(z0)?;
        for pass in &row {
            let (seg, _) = model.forward(precision.cast_input(pass.cut(input.clone())));
            let seg = super::precision::cast_to(seg, FloatDType::F32);
            slab.add_pass(softmax(seg, 1), pass);
        }
    }
    slab.advance_to(dims[2])?;
    Ok((slab.mask, slab.foreground))
}

/// The input's z-planes `z0..z0 + depth` as one `[1, C, depth, py, px]` tensor over the grid
/// `padded` (`[px, py, depth]`, at least the grid's size; zero outside the grid).
fn input_slab(
    channels: &[Vec<f32>],
    dims: [usize; 3],
    z0: usize,
    padded: [usize; 3],
    device: &Device,
) -> Tensor<5> {
    let [nx, ny, nz] = dims;
    let [px, py, depth] = padded;
    let mut data = vec![0f32; channels.len() * depth * py * px];
    let per_channel = (depth * py * px).max(1);
    for (slab, ch) in data.chunks_mut(per_channel).zip(channels) {
        for k in 0..depth.min(nz.saturating_sub(z0)) {
            for j in 0..ny {
                let src = nx * (j + ny * (z0 + k));
                let dst = px * (j + py * k);
                slab[dst..dst + nx].copy_from_slice(&ch[src..src + nx]);
            }
        }
    }
    let shape = [1, channels.len(), depth, py, px];
    Tensor::<5>::from_data(TensorData::new(data, shape), device)
}

/// One forward pass's windows: their origins `[x0, y0]` (in order), the box they cover
/// `[x_lo, y_lo, x_hi, y_hi]`, and on a GPU the origins on the device (for the slab kernels of
/// [`super::window_slab_gpu`]; elsewhere burn's slices do the work).
struct Pass<'a> {
    origins: &'a [[usize; 2]],
    window: [usize; 3],
    bounds: [usize; 4],
    on_device: Option<Tensor<1>>,
}

impl<'a> Pass<'a> {
    fn new(origins: &'a [[usize; 2]], window: [usize; 3], on_gpu: bool, device: &Device) -> Self {
        let low = |a: usize| origins.iter().map(|o| o[a]).min().unwrap_or(0);
        let high = |a: usize| origins.iter().map(|o| o[a] + window[a]).max().unwrap_or(0);
        let on_device = on_gpu.then(|| {
            let flat: Vec<f32> = origins.iter().flat_map(|o| o.map(|v| v as f32)).collect();
            let n = flat.len();
            Tensor::<1>::from_data(TensorData::new(flat, [n]), device)
        });
        Self {
            origins,
            window,
            bounds: [low(0), low(1), high(0), high(1)],
            on_device,
        }
    }

    /// The windows of `input` (`[1, C, wz, py, px]`), stacked `[windows, C, wz, wy, wx]`.
    fn cut(&self, input: Tensor<5>) -> Tensor<5> {
        let [wx, wy, wz] = self.window;
        let channels = input.dims()[1];
        if let Some(at) = &self.on_device {
            return cut_windows(input, at.clone(), self.window);
        }
        let windows = (self.origins.iter())
            .map(|&[x0, y0]| {
                input
                    .clone()
                    .slice([0..1, 0..channels, 0..wz, y0..y0 + wy, x0..x0 + wx])
            })
            .collect();
        Tensor::cat(windows, 0)
    }
}

/// Gaussian-weighted probability sums over a slab of window-deep z-planes, on the device, and
/// the finished planes' labels and foreground probabilities on the host.
struct SumSlab {
    /// Grid size `[nx, ny, nz]`.
    dims: [usize; 3],
    /// Window size `[wx, wy, wz]`.
    window: [usize; 3],
    /// The slab's extent `[px, py, wz]` (the grid's planes, padded to the window).
    padded: [usize; 3],
    /// A window's weights `[1, 1, wz, wy, wx]`.
    weights: Tensor<5>,
    /// Whether the slab is on one of burn's GPU devices (its own kernels cut and add windows).
    on_gpu: bool,
    /// Per axis, each grid position's sum of the weights of the windows covering it.
    weight_sums: [Vec<f32>; 3],
    /// `[labels, wz, py, px]` sums (none until the first pass names the labels).
    sums: Option<Tensor<4>>,
    /// The grid plane at the slab's first plane.
    first_z: usize,
    /// Arg-max labels of the whole grid (filled as planes finish).
    mask: Vec<u8>,
    /// Foreground probability of the whole grid (filled as planes finish).
    foreground: Vec<f32>,
    device: Device,
}

impl SumSlab {
    fn new(
        dims: [usize; 3],
        window: [usize; 3],
        axis_starts: &[Vec<usize>; 3],
        device: &Device,
    ) -> Self {
        let g = window.map(gaussian);
        let [wx, wy, wz] = window;
        let mut w = Vec::with_capacity(wx * wy * wz);
        for k in 0..wz {
            for j in 0..wy {
                w.extend(g[0].iter().map(|gx| gx * g[1][j] * g[2][k]));
            }
        }
        let n = dims.iter().product();
        Self {
            dims,
            window,
            padded: [dims[0].max(wx), dims[1].max(wy), wz],
            weights: Tensor::from_data(TensorData::new(w, [1, 1, wz, wy, wx]), device),
            weight_sums: [0, 1, 2].map(|a| axis_weight_sums(dims[a], &axis_starts[a], &g[a])),
            sums: None,
            first_z: 0,
            mask: vec![0; n],
            foreground: vec![0.0; n],
            on_gpu: super::conv_gpu::on_gpu(device),
            device: device.clone(),
        }
    }

    /// Add one pass's probabilities (`[windows, labels, wz, wy, wx]`) of the windows of `pass`
    /// to the slab.
    fn add_pass(&mut self, probs: Tensor<5>, pass: &Pass) {
        let [wx, wy, wz] = self.window;
        let labels = probs.dims()[1];
        let [px, py, _] = self.padded;
        let mut sums = self
            .sums
            .take()
            .unwrap_or_else(|| Tensor::zeros([labels, wz, py, px], &self.device));
        if let Some(at) = &pass.on_device {
            let weights = self.weights.clone().reshape([wx * wy * wz]);
            // The kernels read f32 (a no-op for the f32 network prediction runs).
            let probs = probs.cast(FloatDType::F32);
            let sums = add_windows(sums, probs, weights, at.clone(), pass.bounds);
            self.sums = Some(sums);
            return;
        }
        let weighted = probs * self.weights.clone();
        for (b, &[x0, y0]) in pass.origins.iter().enumerate() {
            let one: Tensor<4> = weighted
                .clone()
                .narrow(0, b, 1)
                .reshape([labels, wz, wy, wx]);
            let region = [0..labels, 0..wz, y0..y0 + wy, x0..x0 + wx];
            let summed = sums.clone().slice(region.clone()) + one;
            sums = sums.slice_assign(region, summed);
        }
        self.sums = Some(sums);
    }

    /// Finish the slab's planes before grid plane `z` (no later window reaches them) and move
    /// the slab to start at `z`.
    fn advance_to(&mut self, z: usize) -> Result<(), VolumeError> {
        let done = z.saturating_sub(self.first_z).min(self.window[2]);
        let Some(sums) = self.sums.take() else {
            self.first_z = z;
            return Ok(());
        };
        if done == 0 {
            self.sums = Some(sums);
            return Ok(());
        }
        self.finish_planes(sums.clone(), done)?;
        let [labels, wz, py, px] = sums.dims();
        self.sums = Some(match done < wz {
            true => Tensor::cat(
                vec![
                    sums.slice([0..labels, done..wz]),
                    Tensor::zeros([labels, done, py, px], &self.device),
                ],
                1,
            ),
            false => Tensor::zeros([labels, wz, py, px], &self.device),
        });
        self.first_z = z;
        Ok(())
    }

    /// Read the slab's first `planes` planes back (those inside the grid) into the labels and
    /// foreground probabilities.
    fn finish_planes(&mut self, sums: Tensor<4>, planes: usize) -> Result<(), VolumeError> {
        let [nx, ny, nz] = self.dims;
        let planes = planes.min(nz.saturating_sub(self.first_z));
        if planes == 0 {
            return Ok(());
        }
        let labels = sums.dims()[0];
        let part = sums.slice([0..labels, 0..planes, 0..ny, 0..nx]);
        let arg_max = part.clone().argmax(0).float();
        let background = part.narrow(0, 0, 1);
        let back = Tensor::cat(vec![arg_max, background], 0)
            .try_into_vec_as::<f32>()
            .map_err(|e| VolumeError::Shape(format!("reading a prediction back: {e:?}")))?;
        let plane = nx * ny;
        let (arg_max, background) = back.split_at(planes * plane);
        let [sx, sy, sz] = &self.weight_sums;
        let first = self.first_z * plane;
        let done = first..first + planes * plane;
        let weights = (sz[self.first_z..].iter().take(planes)).flat_map(|wz| {
            sy.iter()
                .flat_map(move |wy| sx.iter().map(move |wx| wx * wy * wz))
        });
        let outputs = self.mask[done.clone()]
            .iter_mut()
            .zip(&mut self.foreground[done]);
        let read = arg_max.iter().zip(background);
        for ((label, fg), ((a, bg), w)) in outputs.zip(read.zip(weights)) {
            *label = a.clamp(0.0, 255.0) as u8;
            *fg = 1.0 - bg / w.max(1e-12);
        }
        Ok(())
    }
}

/// Along an axis of `n` voxels, each position's sum of the weights `g` of the windows starting
/// at `axis_starts` that cover it.
fn axis_weight_sums(n: usize, axis_starts: &[usize], g: &[f32]) -> Vec<f32> {
    let mut sums = vec![0f32; n];
    for &s in axis_starts {
        for (p, w) in sums.iter_mut().skip(s).zip(g) {
            *p += w;
        }
    }
    sums
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::inference::tests::{test_channels, tiny_model};
    use crate::model::inference::{segment_on_host, Batching};

    #[test]
    fn sums_on_the_device_predict_as_the_host_ring() {
        let device = Device::flex();
        let model = tiny_model(&device);
        // Edges that cut windows short, an uneven last pass, and grids thinner than the
        // window along y and along z (zero-padded).
        let cases = [
            ([30, 22, 26], [8, 8, 8]),
            ([20, 12, 40], [16, 16, 12]),
            ([18, 40, 9], [8, 16, 8]),
        ];
        for (dims, step) in cases {
            let channels = test_channels(dims);
            let window = [16, 16, 16];
            let one = Batching {
                passes: 1,
                windows: 1,
            };
            let (mask_ring, fg_ring) =
                segment_on_host(&model, &channels, dims, (window, step), one, &device).unwrap();
            let (mask, fg) = segment_on_device(
                &model,
                &channels,
                dims,
                (window, step),
                (3, Precision::F32),
                &device,
            )
            .unwrap();
            let worst = fg_ring
                .iter()
                .zip(&fg)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(worst < 1e-5, "{dims:?}: foreground differs by {worst}");
            let n = mask.len();
            let differing = mask_ring.iter().zip(&mask).filter(|(a, b)| a != b).count();
            assert!(differing * 10_000 <= n, "{differing} of {n} labels differ");
            let spread =
                fg.iter().fold(0f32, |m, v| m.max(*v)) - fg.iter().fold(1f32, |m, v| m.min(*v));
            assert!(spread > 1e-3, "a flat prediction proves nothing ({spread})");
            assert!(
                mask.iter().any(|l| *l != mask[0]),
                "one label everywhere proves little"
            );
        }
    }

    #[test]
    fn per_axis_weight_sums_count_each_covering_window() {
        let g = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(
            axis_weight_sums(6, &[0, 2], &g),
            vec![1.0, 2.0, 4.0, 6.0, 3.0, 4.0]
        );
        // A grid shorter than the window: the window's head only.
        assert_eq!(axis_weight_sums(3, &[0], &g), vec![1.0, 2.0, 3.0]);
    }
}
