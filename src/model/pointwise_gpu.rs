//! The U-Net's 1×1×1 convolutions with their bias (the residual blocks' skip projections, the
//! segmentation head) on burn's GPU backend as one operation with its own backward pass
//! ([`super::biased_gpu`]'s extension), three kernels of our own in the network's
//! `[N, C, D, H, W]` layout: forward, a thread per voxel × [`CHANNEL_BLOCK`] output channels
//! sums over the input channels and adds the bias; backward, a thread per voxel × input-channel
//! block gives the input gradient, and a workgroup per (output channel, input channel or bias)
//! sums the product of output gradient and input (or the output gradient alone) over the items
//! and voxels. burn's route copies to and from channels-last around a matrix product forward
//! and takes about eight launches backward (a matrix product and copies, a convolution for the
//! weight, a reduction for the bias) — a small network's GPU step is bound by its launches.
//!
//! Invariants: equal to burn's `Conv3d::forward` and its gradients to float rounding
//! (`tests/model.rs`, on lavapipe); features f32, f16 or bf16, weight, bias, their gradients
//! and the sums f32; [`fits`] says which convolutions come here
//! (`model::conv` routes only those, and only with a bias).

use burn::backend::fusion::custom::TensorSpec;
use burn::backend::TensorMetadata;
use burn::tensor::Shape;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::conv_gpu::launch_grid;
use super::conv_gpu_direct::{
    add_weighted, kernel_elem, store_channels, thread_place, zeros, CHANNEL_BLOCK,
    DIRECT_MAX_MULTIPLY_ADDS,
};
use super::norm_gpu::{empty_like, workgroup_sum, WORKGROUP};

/// Launches of this module's kernels in this process (what tests read to know the GPU's 1×1×1
/// convolutions took this route).
static LAUNCHES: AtomicUsize = AtomicUsize::new(0);

/// How many times this module's kernels have run in this process.
pub fn kernel_launches() -> usize {
    LAUNCHES.load(Ordering::Relaxed)
}

/// Whether a 1×1×1 convolution of `x_dims [N, C_in, D, H, W]` to `c_out` channels comes here:
/// not empty, at most [`DIRECT_MAX_MULTIPLY_ADDS`] (larger ones are bound by arithmetic, not
/// launches), and its weight gradient's workgroups on one grid axis.
pub fn fits(x_dims: [usize; 5], c_out: usize) -> bool {
    let work = x_dims.iter().product::<usize>() * c_out;
    let pairs = c_out * (x_dims[1] + 1);
    work > 0 && work <= DIRECT_MAX_MULTIPLY_ADDS && pairs <= u16::MAX as usize
}

/// The output's size and type for `x` and `weight`'s, for burn's fusion.
pub(super) fn out_spec(x: &TensorSpec, weight: &TensorSpec) -> TensorSpec {
    let mut dims = x.shape.clone();
    dims[1] = weight.shape[0];
    TensorSpec::new(dims, x.dtype)
}

/// Forward: thread = (item n, output-channel block, voxel), voxels fastest.
#[cube(launch_unchecked)]
fn pointwise_forward<F: Float>(
    x: &[F],
    weight: &[f32],
    bias: &[f32],
    y: &mut [F],
    c_in: usize,
    c_out: usize,
    volume: usize,
    blocks: usize,
    threads: usize,
    #[comptime] block: usize,
    #[define(F)] _dtype: ElemType,
) {
    if ABSOLUTE_POS >= threads {
        terminate!();
    }
    let (v, n, co0) = thread_place(volume, blocks, block);
    let mut acc = zeros(block);
    add_weighted(&mut acc, 1.0, bias, co0, c_out - co0, 1, block);
    for ci in 0..c_in {
        let value = f32::cast_from(x[(n * c_in + ci) * volume + v]);
        add_weighted(
            &mut acc,
            value,
            weight,
            co0 * c_in + ci,
            c_out - co0,
            c_in,
            block,
        );
    }
    let at = (n * c_out + co0) * volume + v;
    store_channels(y, &acc, at, c_out - co0, volume, block);
}

/// Input gradient: thread = (item n, input-channel block, voxel), voxels fastest.
#[cube(launch_unchecked)]
fn pointwise_input_grad<F: Float>(
    grad: &[F],
    weight: &[f32],
    dx: &mut [F],
    c_in: usize,
    c_out: usize,
    volume: usize,
    blocks: usize,
    threads: usize,
    #[comptime] block: usize,
    #[define(F)] _dtype: ElemType,
) {
    if ABSOLUTE_POS >= threads {
        terminate!();
    }
    let (v, n, ci0) = thread_place(volume, blocks, block);
    let mut acc = zeros(block);
    for co in 0..c_out {
        let g = f32::cast_from(grad[(n * c_out + co) * volume + v]);
        add_weighted(&mut acc, g, weight, co * c_in + ci0, c_in - ci0, 1, block);
    }
    let at = (n * c_in + ci0) * volume + v;
    store_channels(dx, &acc, at, c_in - ci0, volume, block);
}

/// Weight and bias gradients: workgroup `CUBE_POS` = (output channel co, input channel ci of
/// `0..=C_in`) sums `g[n, co, v] · x[n, ci, v]` (ci = C_in: `g` alone, the bias's) over the
/// `items` items and the voxels.
#[cube(launch_unchecked)]
fn pointwise_weight_grad<F: Float>(
    x: &[F],
    grad: &[F],
    dw: &mut [f32],
    db: &mut [f32],
    c_in: usize,
    c_out: usize,
    volume: usize,
    items: usize,
    #[define(F)] _dtype: ElemType,
) {
    let (co, ci) = (CUBE_POS / (c_in + 1), CUBE_POS % (c_in + 1));
    let unit = UNIT_POS as usize;
    let is_weight = ci < c_in;
    let ci_read = select(is_weight, ci, 0);
    let mut sum = 0.0f32;
    for m in range_stepped(unit, items * volume, WORKGROUP) {
        let (n, v) = (m / volume, m % volume);
        let x_value = f32::cast_from(x[(n * c_in + ci_read) * volume + v]);
        let value = select(is_weight, x_value, 1.0);
        sum += f32::cast_from(grad[(n * c_out + co) * volume + v]) * value;
    }
    let mut shared = Shared::<[f32]>::new_slice(WORKGROUP);
    let total = workgroup_sum(&mut shared, sum);
    if unit == 0 {
        if is_weight {
            dw[co * c_in + ci] = total;
        } else {
            db[co] = total;
        }
    }
}

/// `(items, input channels, output channels, voxels per item)` of `x` and `weight`.
fn sizes_of(x: &CubeTensor, weight: &CubeTensor) -> (usize, usize, usize, usize) {
    let dims = x.shape();
    let (n, c_in) = (dims[0], dims[1]);
    let volume = dims.num_elements() / (n * c_in).max(1);
    (n, c_in, weight.shape()[0], volume)
}

/// `x [N, C_in, …]` by `weight [C_out, C_in, 1, 1, 1]`, plus `bias [C_out]`.
pub(super) fn forward(x: CubeTensor, weight: CubeTensor, bias: CubeTensor) -> CubeTensor {
    let [x, weight, bias] = [x, weight, bias].map(into_contiguous);
    let (n, c_in, c_out, volume) = sizes_of(&x, &weight);
    let elem = kernel_elem(x.dtype);
    let mut dims = x.shape();
    dims[1] = c_out;
    let y = empty_device_dtype(x.client.clone(), x.device.clone(), dims, x.dtype);
    let blocks = c_out.div_ceil(CHANNEL_BLOCK);
    let threads = n * blocks * volume;
    let client = x.client.clone();
    let (count, dim) = launch_grid(&client, threads);
    // SAFETY: x `[N, C_in, V]`, weight `[C_out, C_in]`, bias `[C_out]` and y `[N, C_out, V]`
    // are contiguous; threads past `threads` stop at once; channels past the last read the
    // last and are not written.
    unsafe {
        pointwise_forward::launch_unchecked(
            &client,
            count,
            dim,
            x.into_buffer_arg(),
            weight.into_buffer_arg(),
            bias.into_buffer_arg(),
            y.clone().into_buffer_arg(),
            c_in,
            c_out,
            volume,
            blocks,
            threads,
            CHANNEL_BLOCK,
            elem,
        );
    }
    LAUNCHES.fetch_add(1, Ordering::Relaxed);
    y
}

/// The gradients of [`forward`]'s x, weight and bias, given the output's gradient `grad`.
pub(super) fn grads(
    x: CubeTensor,
    weight: CubeTensor,
    grad: CubeTensor,
) -> (CubeTensor, CubeTensor, CubeTensor) {
    let [x, weight, grad] = [x, weight, grad].map(into_contiguous);
    let (n, c_in, c_out, volume) = sizes_of(&x, &weight);
    let elem = kernel_elem(x.dtype);
    let dx = empty_device_dtype(x.client.clone(), x.device.clone(), x.shape(), x.dtype);
    let dw = empty_like(&weight, weight.shape());
    let db = empty_like(&weight, Shape::new([c_out]));
    let blocks = c_in.div_ceil(CHANNEL_BLOCK);
    let threads = n * blocks * volume;
    let client = x.client.clone();
    let (count, dim) = launch_grid(&client, threads);
    let pairs = (c_out * (c_in + 1)) as u32;
    // SAFETY: as in the forward pass, with grad `[N, C_out, V]` and dx `[N, C_in, V]`;
    // workgroup (co, ci) reads channel co of grad and ci of x (none for the bias) and
    // writes one value of dw or db (`fits`: the pairs on one grid axis).
    unsafe {
        pointwise_input_grad::launch_unchecked(
            &client,
            count,
            dim,
            grad.clone().into_buffer_arg(),
            weight.into_buffer_arg(),
            dx.clone().into_buffer_arg(),
            c_in,
            c_out,
            volume,
            blocks,
            threads,
            CHANNEL_BLOCK,
            elem,
        );
        pointwise_weight_grad::launch_unchecked(
            &client,
            CubeCount::Static(pairs, 1, 1),
            CubeDim::new_1d(WORKGROUP as u32),
            x.into_buffer_arg(),
            grad.into_buffer_arg(),
            dw.clone().into_buffer_arg(),
            db.clone().into_buffer_arg(),
            c_in,
            c_out,
            volume,
            n,
            elem,
        );
    }
    LAUNCHES.fetch_add(2, Ordering::Relaxed);
    (dx, dw, db)
}
