//! The U-Net's upsampling (a transposed convolution with a 2×2×2 kernel at stride 2, or 1×2×2
//! in the single-slice form) with its bias on burn's GPU backend as one operation with its own
//! backward pass ([`super::biased_gpu`]'s extension), three kernels of our own in the
//! network's `[N, C, D, H, W]` layout. Each input voxel feeds its own block of the output, one
//! kernel tap per output voxel: forward a thread per output voxel × [`CHANNEL_BLOCK`] output
//! channels sums its input voxel's channels by its tap's weights and adds the bias; backward a
//! thread per input voxel × input-channel block sums its block's output gradient by the taps'
//! weights, and a workgroup per (output channel, input channel × tap, or bias) sums the
//! weight's (bias's) gradient over the items and voxels. burn's route is a transposed
//! convolution forward and two convolutions, copies and a reduction backward — a small
//! network's GPU step is bound by its launches.
//!
//! Invariants: equal to burn's `conv_transpose3d` and its gradients to float rounding
//! (`tests/model.rs`, on lavapipe); features f32, f16 or bf16, weight, bias, their gradients
//! and the sums f32; [`fits`] says which upsamplings come here
//! (`model::upconv` routes only those, and only with a bias).

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
    add_weighted, kernel_elem, sizes, store_channels, thread_place, zeros, CHANNEL_BLOCK,
    DIRECT_MAX_MULTIPLY_ADDS,
};
use super::norm_gpu::{empty_like, workgroup_sum, WORKGROUP};

/// Launches of this module's kernels in this process (what tests read to know the GPU's
/// upsamplings took this route).
static LAUNCHES: AtomicUsize = AtomicUsize::new(0);

/// How many times this module's kernels have run in this process.
pub fn kernel_launches() -> usize {
    LAUNCHES.load(Ordering::Relaxed)
}

/// Whether an upsampling of `x_dims [N, C_in, D, H, W]` to `c_out` channels by a
/// `kernel_d`×2×2 kernel comes here: not empty, at most [`DIRECT_MAX_MULTIPLY_ADDS`] (larger
/// ones are bound by arithmetic, not launches), its weight gradient's workgroups on one axis.
pub fn fits(x_dims: [usize; 5], c_out: usize, kernel_d: usize) -> bool {
    let taps = kernel_d * 4;
    let work = x_dims.iter().product::<usize>() * c_out * taps;
    let groups = c_out * (x_dims[1] * taps + 1);
    work > 0 && work <= DIRECT_MAX_MULTIPLY_ADDS && groups <= u16::MAX as usize
}

/// The output's sizes for `x` and `weight`'s.
fn out_dims(x: &Shape, weight: &Shape) -> Shape {
    let mut dims = x.clone();
    dims[1] = weight[1];
    dims[2] *= weight[2];
    dims[3] *= 2;
    dims[4] *= 2;
    dims
}

/// The output's size and type for `x` and `weight`'s, for burn's fusion.
pub(super) fn out_spec(x: &TensorSpec, weight: &TensorSpec) -> TensorSpec {
    TensorSpec::new(out_dims(&x.shape, &weight.shape), x.dtype)
}

/// Output voxel `(zo, yo, xo)`'s input voxel index (in a volume of `in_size`) and tap.
#[cube]
fn source_of(
    v_out: usize,
    in_size: &Sequence<usize>,
    #[comptime] kernel_d: usize,
) -> (usize, usize) {
    let (h, w) = (in_size[1], in_size[2]);
    let (ow, oh) = (2 * w, 2 * h);
    let (xo, yo, zo) = (v_out % ow, (v_out / ow) % oh, v_out / (ow * oh));
    let v_in = ((zo / kernel_d) * h + yo / 2) * w + xo / 2;
    (v_in, ((zo % kernel_d) * 2 + yo % 2) * 2 + xo % 2)
}

/// Input voxel `v_in`'s output voxel under tap `tap` (a volume of `in_size` upsampled).
#[cube]
fn target_of(
    v_in: usize,
    tap: usize,
    in_size: &Sequence<usize>,
    #[comptime] kernel_d: usize,
) -> usize {
    let (h, w) = (in_size[1], in_size[2]);
    let (xi, yi, zi) = (v_in % w, (v_in / w) % h, v_in / (w * h));
    let (a, b, c) = (tap / 4, (tap / 2) % 2, tap % 2);
    ((zi * kernel_d + a) * 2 * h + 2 * yi + b) * 2 * w + 2 * xi + c
}

/// Forward: thread = (item n, output-channel block, output voxel), voxels fastest.
#[cube(launch_unchecked)]
fn upsample_forward<F: Float>(
    x: &[F],
    weight: &[f32],
    bias: &[f32],
    y: &mut [F],
    channels: Sequence<usize>,
    in_size: Sequence<usize>,
    blocks: usize,
    threads: usize,
    #[comptime] kernel_d: usize,
    #[comptime] block: usize,
    #[define(F)] _dtype: ElemType,
) {
    if ABSOLUTE_POS >= threads {
        terminate!();
    }
    let (c_in, c_out) = (channels[0], channels[1]);
    let in_volume = in_size[0] * in_size[1] * in_size[2];
    let out_volume = in_volume * kernel_d * 4;
    let taps = comptime!(kernel_d * 4);
    let (v, n, co0) = thread_place(out_volume, blocks, block);
    let (v_in, tap) = source_of(v, &in_size, kernel_d);
    let mut acc = zeros(block);
    add_weighted(&mut acc, 1.0, bias, co0, c_out - co0, 1, block);
    for ci in 0..c_in {
        let value = f32::cast_from(x[(n * c_in + ci) * in_volume + v_in]);
        let at = (ci * c_out + co0) * taps + tap;
        add_weighted(&mut acc, value, weight, at, c_out - co0, taps, block);
    }
    let at = (n * c_out + co0) * out_volume + v;
    store_channels(y, &acc, at, c_out - co0, out_volume, block);
}

/// Input gradient: thread = (item n, input-channel block, input voxel), voxels fastest.
#[cube(launch_unchecked)]
fn upsample_input_grad<F: Float>(
    grad: &[F],
    weight: &[f32],
    dx: &mut [F],
    channels: Sequence<usize>,
    in_size: Sequence<usize>,
    blocks: usize,
    threads: usize,
    #[comptime] kernel_d: usize,
    #[comptime] block: usize,
    #[define(F)] _dtype: ElemType,
) {
    if ABSOLUTE_POS >= threads {
        terminate!();
    }
    let (c_in, c_out) = (channels[0], channels[1]);
    let in_volume = in_size[0] * in_size[1] * in_size[2];
    let out_volume = in_volume * kernel_d * 4;
    let taps = comptime!(kernel_d * 4);
    let (v, n, ci0) = thread_place(in_volume, blocks, block);
    let mut acc = zeros(block);
    for co in 0..c_out {
        let g_volume = (n * c_out + co) * out_volume;
        #[unroll]
        for tap in 0..taps {
            let g = f32::cast_from(grad[g_volume + target_of(v, tap, &in_size, kernel_d)]);
            let at = (ci0 * c_out + co) * taps + tap;
            add_weighted(&mut acc, g, weight, at, c_in - ci0, c_out * taps, block);
        }
    }
    let at = (n * c_in + ci0) * in_volume + v;
    store_channels(dx, &acc, at, c_in - ci0, in_volume, block);
}

/// Weight and bias gradients: workgroup `CUBE_POS` = (output channel co, r of
/// `0..=C_in·taps`): for r = ci·taps + tap the sum of `x[n, ci, v] · g[n, co, tap's output
/// voxel of v]` over the items and input voxels, for r = C_in·taps the sum of `g[n, co, ·]`.
#[cube(launch_unchecked)]
fn upsample_weight_grad<F: Float>(
    x: &[F],
    grad: &[F],
    dw: &mut [f32],
    db: &mut [f32],
    channels: Sequence<usize>,
    in_size: Sequence<usize>,
    items: usize,
    #[comptime] kernel_d: usize,
    #[define(F)] _dtype: ElemType,
) {
    let (c_in, c_out) = (channels[0], channels[1]);
    let in_volume = in_size[0] * in_size[1] * in_size[2];
    let taps = comptime!(kernel_d * 4);
    let out_volume = in_volume * taps;
    let (co, r) = (CUBE_POS / (c_in * taps + 1), CUBE_POS % (c_in * taps + 1));
    let unit = UNIT_POS as usize;
    let mut sum = 0.0f32;
    if r < c_in * taps {
        let (ci, tap) = (r / taps, r % taps);
        for m in range_stepped(unit, items * in_volume, WORKGROUP) {
            let (n, v) = (m / in_volume, m % in_volume);
            let g = grad[(n * c_out + co) * out_volume + target_of(v, tap, &in_size, kernel_d)];
            sum += f32::cast_from(x[(n * c_in + ci) * in_volume + v]) * f32::cast_from(g);
        }
    } else {
        for m in range_stepped(unit, items * out_volume, WORKGROUP) {
            let (n, v) = (m / out_volume, m % out_volume);
            sum += f32::cast_from(grad[(n * c_out + co) * out_volume + v]);
        }
    }
    let mut shared = Shared::<[f32]>::new_slice(WORKGROUP);
    let total = workgroup_sum(&mut shared, sum);
    if unit == 0 {
        if r < c_in * taps {
            dw[(r / taps * c_out + co) * taps + r % taps] = total;
        } else {
            db[co] = total;
        }
    }
}

/// `(items, [C_in, C_out], [D, H, W] of the input, kernel depth)` of `x` and `weight`.
fn sizes_of(x: &CubeTensor, weight: &CubeTensor) -> (usize, [usize; 2], [usize; 3], usize) {
    let (xs, ws) = (x.shape(), weight.shape());
    (xs[0], [xs[1], ws[1]], [xs[2], xs[3], xs[4]], ws[2])
}

/// `x [N, C_in, D, H, W]` upsampled by `weight [C_in, C_out, kd, 2, 2]` at stride `(kd, 2, 2)`,
/// plus `bias [C_out]`: `[N, C_out, kd·D, 2·H, 2·W]`.
pub(super) fn forward(x: CubeTensor, weight: CubeTensor, bias: CubeTensor) -> CubeTensor {
    let [x, weight, bias] = [x, weight, bias].map(into_contiguous);
    let (n, [c_in, c_out], in_size, kernel_d) = sizes_of(&x, &weight);
    let elem = kernel_elem(x.dtype);
    let y_dims = out_dims(&x.shape(), &weight.shape());
    let y = empty_device_dtype(x.client.clone(), x.device.clone(), y_dims, x.dtype);
    let blocks = c_out.div_ceil(CHANNEL_BLOCK);
    let threads = n * blocks * in_size.iter().product::<usize>() * kernel_d * 4;
    let client = x.client.clone();
    let (count, dim) = launch_grid(&client, threads);
    // SAFETY: x `[N, C_in, D, H, W]`, weight `[C_in, C_out, kd, 2, 2]`, bias `[C_out]` and
    // y `[N, C_out, kd·D, 2H, 2W]` are contiguous; threads past `threads` stop at once;
    // channels past the last read the last and are not written.
    unsafe {
        upsample_forward::launch_unchecked(
            &client,
            count,
            dim,
            x.into_buffer_arg(),
            weight.into_buffer_arg(),
            bias.into_buffer_arg(),
            y.clone().into_buffer_arg(),
            sizes([c_in, c_out]),
            sizes(in_size),
            blocks,
            threads,
            kernel_d,
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
    let (n, [c_in, c_out], in_size, kernel_d) = sizes_of(&x, &weight);
    let elem = kernel_elem(x.dtype);
    let dx = empty_device_dtype(x.client.clone(), x.device.clone(), x.shape(), x.dtype);
    let dw = empty_like(&weight, weight.shape());
    let db = empty_like(&weight, Shape::new([c_out]));
    let blocks = c_in.div_ceil(CHANNEL_BLOCK);
    let threads = n * blocks * in_size.iter().product::<usize>();
    let client = x.client.clone();
    let (count, dim) = launch_grid(&client, threads);
    let groups = (c_out * (c_in * kernel_d * 4 + 1)) as u32;
    // SAFETY: as in the forward pass, with grad `[N, C_out, …]` and dx `[N, C_in, …]`;
    // workgroup (co, r) reads channel co of grad (and one of x) and writes one value of dw
    // or db (`fits`: the workgroups on one grid axis).
    unsafe {
        upsample_input_grad::launch_unchecked(
            &client,
            count,
            dim,
            grad.clone().into_buffer_arg(),
            weight.into_buffer_arg(),
            dx.clone().into_buffer_arg(),
            sizes([c_in, c_out]),
            sizes(in_size),
            blocks,
            threads,
            kernel_d,
            CHANNEL_BLOCK,
            elem,
        );
        upsample_weight_grad::launch_unchecked(
            &client,
            CubeCount::Static(groups, 1, 1),
            CubeDim::new_1d(WORKGROUP as u32),
            x.into_buffer_arg(),
            grad.into_buffer_arg(),
            dw.clone().into_buffer_arg(),
            db.clone().into_buffer_arg(),
            sizes([c_in, c_out]),
            sizes(in_size),
            n,
            kernel_d,
            elem,
        );
    }
    LAUNCHES.fetch_add(2, Ordering::Relaxed);
    (dx, dw, db)
}
