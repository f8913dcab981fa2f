//! The sliding window's two slab operations ([`super::window_slab`]) as one kernel each on
//! burn's GPU backend, where burn's slices take a launch or two per window (a pass of 16
//! windows: 16 slice copies to stack them, then a slice, an add and a slice-assign per window
//! to sum them back): [`cut_windows`] stacks a pass's windows out of the input slab, and
//! [`add_windows`] adds their weighted probabilities into the sums, a thread per summed value
//! over the box the pass covers, adding each window that holds it (so overlapping windows of
//! one pass never race).
//!
//! Invariants: the same values as the slicing route (`tests/model.rs`, on lavapipe); f32
//! tensors, contiguous; a window's origin `[x0, y0]` is an exact f32 and the window lies inside
//! the slab (the caller's slab is padded to the window); the sums are updated in place when
//! nothing else holds them, else a copy is.

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::fusion::custom::TensorSpec;
use burn::backend::tensor::FloatTensor;
use burn::backend::TensorMetadata;
use burn::backend::{backend_extension, Autodiff, AutodiffBackend, Backend, Dispatch};
use burn::prelude::Tensor;
use burn::tensor::Shape;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeBackend;
use cubecl::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::conv_gpu::launch_grid;
use super::conv_gpu_direct::sizes;
use super::norm_gpu::empty_like;

/// Launches of this module's kernels in this process (what tests read to know the GPU's
/// prediction took this route).
static LAUNCHES: AtomicUsize = AtomicUsize::new(0);

/// How many times this module's kernels have run in this process.
pub fn kernel_launches() -> usize {
    LAUNCHES.load(Ordering::Relaxed)
}

/// The windows of `window` voxels `[wx, wy, wz]` at `origins` (`[x0, y0]` each, f32 values,
/// `[2·B]`) of `slab [1, C, wz, py, px]`, stacked `[B, C, wz, wy, wx]`.
pub fn cut_windows(slab: Tensor<5>, origins: Tensor<1>, window: [usize; 3]) -> Tensor<5> {
    Tensor::from_dispatch(<Dispatch as WindowSlabGpuBackend>::cut_windows(
        slab.into_dispatch(),
        origins.into_dispatch(),
        window,
    ))
}

/// `sums [L, wz, py, px]` plus, for each window `b` at `origins[2b..2b + 2]` (`[x0, y0]`),
/// `probs[b] · weights` (`probs [B, L, wz, wy, wx]`, `weights [wz·wy·wx]`) in its place;
/// `bounds` `[x_lo, y_lo, x_hi, y_hi]`: the box the windows cover.
pub fn add_windows(
    sums: Tensor<4>,
    probs: Tensor<5>,
    weights: Tensor<1>,
    origins: Tensor<1>,
    bounds: [usize; 4],
) -> Tensor<4> {
    Tensor::from_dispatch(<Dispatch as WindowSlabGpuBackend>::add_windows(
        sums.into_dispatch(),
        probs.into_dispatch(),
        weights.into_dispatch(),
        origins.into_dispatch(),
        bounds,
    ))
}

/// Backends with the sliding window's slab kernels (burn's GPU backend).
#[backend_extension(Cube, Fusion, Autodiff)]
pub trait WindowSlabGpuBackend: Backend {
    /// See [`cut_windows`].
    #[fusion(meta = cut_spec)]
    fn cut_windows(
        slab: FloatTensor<Self>,
        origins: FloatTensor<Self>,
        window: [usize; 3],
    ) -> FloatTensor<Self>;

    /// See [`add_windows`].
    #[fusion(meta = add_spec)]
    fn add_windows(
        sums: FloatTensor<Self>,
        probs: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        origins: FloatTensor<Self>,
        bounds: [usize; 4],
    ) -> FloatTensor<Self>;
}

/// The stacked windows' size and type, for burn's fusion.
fn cut_spec(slab: &TensorSpec, origins: &TensorSpec, window: &[usize; 3]) -> TensorSpec {
    let [wx, wy, wz] = *window;
    let windows = origins.shape[0] / 2;
    TensorSpec::new(Shape::new([windows, slab.shape[1], wz, wy, wx]), slab.dtype)
}

/// The sums' size and type, for burn's fusion.
fn add_spec(
    sums: &TensorSpec,
    _probs: &TensorSpec,
    _weights: &TensorSpec,
    _origins: &TensorSpec,
    _bounds: &[usize; 4],
) -> TensorSpec {
    sums.clone()
}

/// Thread = one value of the stacked windows `[B, C, wz, wy, wx]`, read from the slab
/// `[1, C, wz, py, px]`.
#[cube(launch_unchecked)]
fn cut_kernel(
    slab: &[f32],
    origins: &[f32],
    out: &mut [f32],
    window: Sequence<usize>,
    plane: Sequence<usize>,
    channels: usize,
    threads: usize,
) {
    let m = ABSOLUTE_POS;
    if m >= threads {
        terminate!();
    }
    let (wx, wy, wz) = (window[0], window[1], window[2]);
    let (px, py) = (plane[0], plane[1]);
    let i = m % wx;
    let j = (m / wx) % wy;
    let k = (m / (wx * wy)) % wz;
    let c = (m / (wx * wy * wz)) % channels;
    let b = m / (wx * wy * wz * channels);
    let x0 = usize::cast_from(origins[2 * b]);
    let y0 = usize::cast_from(origins[2 * b + 1]);
    out[m] = slab[((c * wz + k) * py + y0 + j) * px + x0 + i];
}

/// Thread = one sum `[l, k, y, x]` of the box `[x_lo, x_lo + box_x) × [y_lo, y_lo + box_y)`
/// (`placement`: `[px, py, x_lo, y_lo, box_x, box_y]`) of the sums `[L, wz, py, px]`: adds
/// `probs[b, l, k, y − y0, x − x0] · weights[k, y − y0, x − x0]` of each window b that holds
/// (x, y).
#[cube(launch_unchecked)]
fn add_kernel(
    sums: &mut [f32],
    probs: &[f32],
    weights: &[f32],
    origins: &[f32],
    window: Sequence<usize>,
    placement: Sequence<usize>,
    labels: usize,
    windows: usize,
    threads: usize,
) {
    let m = ABSOLUTE_POS;
    if m >= threads {
        terminate!();
    }
    let (wx, wy, wz) = (window[0], window[1], window[2]);
    let (px, py) = (placement[0], placement[1]);
    let (x_lo, y_lo, box_x, box_y) = (placement[2], placement[3], placement[4], placement[5]);
    let x = x_lo + m % box_x;
    let y = y_lo + (m / box_x) % box_y;
    let k = (m / (box_x * box_y)) % wz;
    let l = m / (box_x * box_y * wz);
    let mut sum = 0.0f32;
    for b in 0..windows {
        let x0 = usize::cast_from(origins[2 * b]);
        let y0 = usize::cast_from(origins[2 * b + 1]);
        if x >= x0 && x < x0 + wx && y >= y0 && y < y0 + wy {
            let at = (k * wy + y - y0) * wx + x - x0;
            sum += probs[(b * labels + l) * wz * wy * wx + at] * weights[at];
        }
    }
    let to = ((l * wz + k) * py + y) * px + x;
    sums[to] += sum;
}

impl WindowSlabGpuBackend for CubeBackend {
    fn cut_windows(slab: CubeTensor, origins: CubeTensor, window: [usize; 3]) -> CubeTensor {
        let (slab, origins) = (into_contiguous(slab), into_contiguous(origins));
        let dims = slab.shape();
        let (channels, py, px) = (dims[1], dims[3], dims[4]);
        let windows = origins.shape()[0] / 2;
        let [wx, wy, wz] = window;
        let out = empty_like(&slab, Shape::new([windows, channels, wz, wy, wx]));
        let threads = windows * channels * wz * wy * wx;
        let client = slab.client.clone();
        let (count, dim) = launch_grid(&client, threads);
        // SAFETY: thread m < `threads` writes out[m] and reads the slab inside window b's box,
        // which the caller keeps inside the slab's `wz × py × px` planes of each channel.
        unsafe {
            cut_kernel::launch_unchecked(
                &client,
                count,
                dim,
                slab.into_buffer_arg(),
                origins.into_buffer_arg(),
                out.clone().into_buffer_arg(),
                sizes(window),
                sizes([px, py]),
                channels,
                threads,
            );
        }
        LAUNCHES.fetch_add(1, Ordering::Relaxed);
        out
    }

    fn add_windows(
        sums: CubeTensor,
        probs: CubeTensor,
        weights: CubeTensor,
        origins: CubeTensor,
        bounds: [usize; 4],
    ) -> CubeTensor {
        let [probs, weights, origins] = [probs, weights, origins].map(into_contiguous);
        let mut sums = into_contiguous(sums);
        if !sums.can_mut() {
            sums = sums.copy();
        }
        let pd = probs.shape();
        let (windows, labels) = (pd[0], pd[1]);
        let window = [pd[4], pd[3], pd[2]];
        let sd = sums.shape();
        let [x_lo, y_lo, x_hi, y_hi] = bounds;
        let (box_x, box_y) = (x_hi - x_lo, y_hi - y_lo);
        let threads = labels * window[2] * box_y * box_x;
        if threads == 0 || windows == 0 {
            return sums;
        }
        let client = sums.client.clone();
        let (count, dim) = launch_grid(&client, threads);
        // SAFETY: thread m < `threads` writes one sum inside the box, which lies in the sums'
        // `py × px` planes; it reads window b's probabilities and weights only where the
        // window holds its voxel.
        unsafe {
            add_kernel::launch_unchecked(
                &client,
                count,
                dim,
                sums.clone().into_buffer_arg(),
                probs.into_buffer_arg(),
                weights.into_buffer_arg(),
                origins.into_buffer_arg(),
                sizes(window),
                sizes([sd[3], sd[2], x_lo, y_lo, box_x, box_y]),
                labels,
                windows,
                threads,
            );
        }
        LAUNCHES.fetch_add(1, Ordering::Relaxed);
        sums
    }
}

/// Not differentiated (prediction only): the inner backend's kernels on the untracked values.
impl<B: WindowSlabGpuBackend, C: CheckpointStrategy> WindowSlabGpuBackend for Autodiff<B, C> {
    fn cut_windows(
        slab: FloatTensor<Self>,
        origins: FloatTensor<Self>,
        window: [usize; 3],
    ) -> FloatTensor<Self> {
        Self::from_inner(B::cut_windows(
            Self::inner(slab),
            Self::inner(origins),
            window,
        ))
    }

    fn add_windows(
        sums: FloatTensor<Self>,
        probs: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        origins: FloatTensor<Self>,
        bounds: [usize; 4],
    ) -> FloatTensor<Self> {
        let [sums, probs, weights, origins] = [sums, probs, weights, origins].map(Self::inner);
        Self::from_inner(B::add_windows(sums, probs, weights, origins, bounds))
    }
}
