//! The input gradient of the U-Net's stride-2 3×3×3 downsampling (padding 1) by the direct
//! kernels of [`super::conv_simd`], where burn's transposed convolution took a tenth of a
//! 32³ training step's time for a fiftieth of its work.
//!
//! The forward pass reads input voxel `i = 2j + k − 1` with tap k for output voxel j along each
//! axis, so an even input voxel `2m` gets its gradient from tap 1 of output m, and an odd one
//! `2m + 1` from tap 0 of output m + 1 and tap 2 of output m. Along three axes each of the 8
//! parity phases of the input is a stride-1 correlation of the output gradient with 1, 2, 4 or
//! 8 of the 27 taps: computed on the output gradient's grid padded by one voxel at the high end
//! of each axis (`(D'+1) × (H'+1) × (W'+1)`, the zeros past the last output voxel), one task per
//! batch item and phase, then interleaved into the input's gradient.
//!
//! Invariants: equal to burn's transposed convolution (`conv3d_x_backward`) to float rounding
//! (`tests/model.rs` compares the whole convolution's gradients, odd and even sizes);
//! [`input_gradient`] returns `None` (nothing computed) where the kernels refuse a buffer,
//! and the caller keeps burn's route.

use rayon::prelude::*;

use super::conv::written;
use super::conv_simd::{self, Isa, PackedKernel, TileInput};

/// The sizes of one stride-2 3×3×3 convolution's input gradient.
#[derive(Clone, Copy, Debug)]
pub(super) struct StridedGrad {
    pub batch: usize,
    pub c_in: usize,
    pub c_out: usize,
    /// The input's spatial size.
    pub size: [usize; 3],
}

impl StridedGrad {
    /// The output's spatial size: `(n − 1) / 2 + 1` along each axis.
    fn out_size(&self) -> [usize; 3] {
        self.size.map(|n| (n - 1) / 2 + 1)
    }

    /// Voxels per row, per plane and per channel of the padded output-gradient grid.
    fn grid(&self) -> (usize, usize, usize) {
        let [d, h, w] = self.out_size();
        let row = w + 1;
        let plane = (h + 1) * row;
        (row, plane, (d + 1) * plane)
    }

    /// The grid's columns from the first output voxel to the last, inclusive.
    fn cols(&self) -> usize {
        let [d, h, w] = self.out_size();
        let (row, plane, _) = self.grid();
        (d - 1) * plane + (h - 1) * row + w
    }
}

/// Phase `(a, b, c)`'s taps along one axis of parity `a`: (tap index, grid shift).
fn axis_taps(parity: usize) -> &'static [(usize, usize)] {
    match parity {
        0 => &[(1, 0)],
        _ => &[(0, 1), (2, 0)],
    }
}

/// Phase `phase`'s taps: (index in the 27-tap kernel, offset on the grid).
fn phase_taps(phase: usize, geo: &StridedGrad) -> Vec<(usize, usize)> {
    let (row, plane, _) = geo.grid();
    let (a, b, c) = (phase / 4, phase / 2 % 2, phase % 2);
    let mut taps = Vec::with_capacity(8);
    for &(kz, sz) in axis_taps(a) {
        for &(ky, sy) in axis_taps(b) {
            for &(kx, sx) in axis_taps(c) {
                taps.push((kz * 9 + ky * 3 + kx, sz * plane + sy * row + sx));
            }
        }
    }
    taps
}

/// The input's gradient `[N, C_in, D, H, W]` from the output's `grad [N, C_out, D', H', W']`
/// and `weight [C_out, C_in, 3, 3, 3]` (both contiguous), on `isa`; `None` where a kernel
/// refuses (nothing is then computed).
pub(super) fn input_gradient(
    isa: Isa,
    grad: &[f32],
    weight: &[f32],
    geo: &StridedGrad,
) -> Option<Vec<f32>> {
    let grid = padded_grid(grad, geo);
    let cols = geo.cols();
    let [d, h, w] = geo.out_size();
    let (row, plane, _) = geo.grid();
    let runs = (0..d).flat_map(|z| (0..h).map(move |y| (z * plane + y * row, w)));
    let starts = conv_simd::vector_starts(runs, isa.lanes());
    let kernels: Vec<(Vec<usize>, PackedKernel)> = (0..8)
        .map(|phase| phase_kernel(isa, phase, weight, geo))
        .collect();
    let rows = kernels[0].1.rows();
    let tasks: Vec<(usize, usize)> = (0..geo.batch)
        .flat_map(|item| (0..8).map(move |phase| (item, phase)))
        .collect();
    let mut phases = vec![0.0f32; tasks.len() * rows * cols];
    let done = phases
        .par_chunks_mut(rows * cols)
        .zip(&tasks)
        .all(|(out, &(item, phase))| {
            let (offsets, kernel) = &kernels[phase];
            let input = TileInput {
                x: &grid[item * geo.c_out * geo.grid().2..],
                stride: geo.grid().2,
                channels: geo.c_out,
                offsets,
                cols,
                starts: &starts,
            };
            conv_simd::forward(isa, &input, kernel, out)
        });
    done.then(|| interleave(&phases, rows, geo))
}

/// Phase `phase`'s grid offsets and its kernel, from C_out gradient channels to C_in.
fn phase_kernel(
    isa: Isa,
    phase: usize,
    weight: &[f32],
    geo: &StridedGrad,
) -> (Vec<usize>, PackedKernel) {
    let taps = phase_taps(phase, geo);
    let (c_in, c_out) = (geo.c_in, geo.c_out);
    let kernel = PackedKernel::new(isa, [c_in, c_out, taps.len()], |c, o, t| {
        weight[(o * c_in + c) * 27 + taps[t].0]
    });
    (taps.iter().map(|&(_, offset)| offset).collect(), kernel)
}

/// The output gradient's channels on the grid ([`StridedGrad::grid`]: zeros past each axis's
/// last voxel), then zeros for the kernels' reads past the last column.
fn padded_grid(grad: &[f32], geo: &StridedGrad) -> Vec<f32> {
    let [d, h, w] = geo.out_size();
    let (row, plane, volume) = geo.grid();
    let channels = geo.batch * geo.c_out;
    let mut grid = vec![0.0f32; channels * volume + Isa::SLACK];
    grid.par_chunks_mut(volume)
        .zip(grad.par_chunks(d * h * w))
        .for_each(|(dst, src)| {
            for (r, line) in src.chunks_exact(w).enumerate() {
                let at = (r / h) * plane + (r % h) * row;
                dst[at..at + w].copy_from_slice(line);
            }
        });
    grid
}

/// The input's gradient `[N, C_in, D, H, W]` from the phases' products (`[N, 8, rows, cols]`,
/// channel c of phase `(a, b, c)` holding input voxel `(2z + a, 2y + b, 2x + c)` at grid column
/// `z·plane + y·row + x`).
fn interleave(phases: &[f32], rows: usize, geo: &StridedGrad) -> Vec<f32> {
    let [d, h, w] = geo.size;
    let (row, plane, _) = geo.grid();
    let cols = geo.cols();
    let volume = d * h * w;
    written(geo.batch * geo.c_in * volume, |out| {
        out.par_chunks_mut(volume)
            .enumerate()
            .for_each(|(channel, out)| {
                let (item, c) = (channel / geo.c_in, channel % geo.c_in);
                let phase = |p: usize| &phases[((item * 8 + p) * rows + c) * cols..][..cols];
                for (r, line) in out.chunks_exact_mut(w).enumerate() {
                    let (z, y) = (r / h, r % h);
                    let first = (z / 2) * plane + (y / 2) * row;
                    let pair = (z % 2) * 4 + (y % 2) * 2;
                    let (even, odd) = (phase(pair), phase(pair + 1));
                    for (x, v) in line.iter_mut().enumerate() {
                        let src = if x % 2 == 0 { even } else { odd };
                        v.write(src[first + x / 2]);
                    }
                }
            });
    })
}
