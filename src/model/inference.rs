//! Sliding-window inference over a whole volume: overlapping windows, each prediction weighted by
//! a Gaussian centred on its window (edges count less), summed and normalised; the label is the
//! arg-max, on the case's exact grid and affine. Class probabilities are the mean over windows.
//!
//! Invariants: the output has the input's dims and affine; a volume smaller than the window is
//! zero-padded; windows never read outside the volume.

use super::model::MultiTaskUNet;
use crate::volume::{Affine, Volume, VolumeError};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use burn::tensor::TensorData;

/// A prediction on a case's grid.
#[derive(Debug, Clone)]
pub struct Prediction {
    /// Arg-max labels.
    pub mask: Volume<u8>,
    /// Probability of any foreground label (1 − p(background)).
    pub foreground: Volume<f32>,
    /// Class probabilities (mean over windows).
    pub class_probabilities: Vec<f32>,
}

/// Window start positions along an axis of length `n` (covering it, last one flush with the end).
fn starts(n: usize, window: usize, step: usize) -> Vec<usize> {
    if n <= window {
        return vec![0];
    }
    let mut s: Vec<usize> = (0..=n - window).step_by(step.max(1)).collect();
    if s.last() != Some(&(n - window)) {
        s.push(n - window);
    }
    s
}

fn gaussian(window: usize) -> Vec<f32> {
    let c = (window as f32 - 1.0) / 2.0;
    let sigma = (window as f32 / 8.0).max(0.5);
    (0..window)
        .map(|i| (-((i as f32 - c) / sigma).powi(2) / 2.0).exp().max(1e-3))
        .collect()
}

/// Predict a volume given as channels (`[C][nx·ny·nz]`, i fastest, already normalised) on the
/// grid `dims` with `affine`, with windows of `window` voxels `[wx, wy, wz]` overlapping by
/// `overlap` (0..1).
pub fn predict_volume(
    model: &MultiTaskUNet,
    channels: &[Vec<f32>],
    dims: [usize; 3],
    affine: Affine,
    window: [usize; 3],
    overlap: f32,
    device: &Device,
) -> Result<Prediction, VolumeError> {
    let [nx, ny, nz] = dims;
    let n = nx * ny * nz;
    let c = channels.len();
    let step = window.map(|w| ((w as f32) * (1.0 - overlap.clamp(0.0, 0.9))).floor() as usize);
    let g = window.map(gaussian);
    let mut acc: Vec<Vec<f32>> = Vec::new();
    let mut weight = vec![0f32; n];
    let mut class_sum: Vec<f32> = Vec::new();
    let mut windows = 0usize;
    for &z0 in &starts(nz, window[2], step[2]) {
        for &y0 in &starts(ny, window[1], step[1]) {
            for &x0 in &starts(nx, window[0], step[0]) {
                let [wx, wy, wz] = window;
                let mut input = vec![0f32; c * wx * wy * wz];
                for (ci, ch) in channels.iter().enumerate() {
                    for k in 0..wz.min(nz - z0) {
                        for j in 0..wy.min(ny - y0) {
                            let src = x0 + nx * ((y0 + j) + ny * (z0 + k));
                            let dst = ((ci * wz + k) * wy + j) * wx;
                            let w = wx.min(nx - x0);
                            input[dst..dst + w].copy_from_slice(&ch[src..src + w]);
                        }
                    }
                }
                let x = Tensor::<5>::from_data(TensorData::new(input, [1, c, wz, wy, wx]), device);
                let (seg, cls) = model.forward(x);
                let host = |e| VolumeError::Shape(format!("reading a prediction back: {e:?}"));
                let probs: Vec<f32> = softmax(seg, 1).try_into_vec_as::<f32>().map_err(host)?;
                let cls: Vec<f32> = softmax(cls, 1).try_into_vec_as::<f32>().map_err(host)?;
                let labels = probs.len() / (wx * wy * wz).max(1);
                if acc.is_empty() {
                    acc = vec![vec![0f32; n]; labels];
                    class_sum = vec![0f32; cls.len()];
                }
                for (s, v) in class_sum.iter_mut().zip(&cls) {
                    *s += v;
                }
                windows += 1;
                for k in 0..wz.min(nz - z0) {
                    for j in 0..wy.min(ny - y0) {
                        for i in 0..wx.min(nx - x0) {
                            let w = g[0][i] * g[1][j] * g[2][k];
                            let dst = (x0 + i) + nx * ((y0 + j) + ny * (z0 + k));
                            weight[dst] += w;
                            for (l, a) in acc.iter_mut().enumerate() {
                                a[dst] += w * probs[((l * wz + k) * wy + j) * wx + i];
                            }
                        }
                    }
                }
            }
        }
    }
    let mut mask = vec![0u8; n];
    let mut fg = vec![0f32; n];
    for v in 0..n {
        let w = weight[v].max(1e-12);
        let mut best = (0usize, f32::NEG_INFINITY);
        for (l, a) in acc.iter().enumerate() {
            if a[v] > best.1 {
                best = (l, a[v]);
            }
        }
        mask[v] = best.0.min(255) as u8;
        fg[v] = acc.first().map_or(0.0, |bg| 1.0 - bg[v] / w);
    }
    let windows = windows.max(1) as f32;
    Ok(Prediction {
        mask: Volume::new([nx, ny, nz, 1], affine, mask)?,
        foreground: Volume::new([nx, ny, nz, 1], affine, fg)?,
        class_probabilities: class_sum.into_iter().map(|s| s / windows).collect(),
    })
}
