//! The forward pass and input gradient of the U-Net's small 3×3×3 (and 1×3×3), padding-1
//! convolutions on burn's GPU backend as one kernel each, reading and writing the network's
//! own layout `[N, C, D, H, W]`.
//!
//! burn's GPU convolutions work channels-last: each one copies its input (and weight) into
//! that layout and its output back, and takes the input gradient as a matrix product and a
//! col2im, so a small convolution costs four or five launches forward and as many backward —
//! and a small network's GPU step is bound by its launches. Here a thread owns one voxel ×
//! `CHANNEL_BLOCK` channels (output channels forward, input channels backward) and sums over
//! the other channels and the taps directly. Direct sums do not tile through shared memory as
//! burn's tuned products do, so convolutions of more than [`DIRECT_MAX_MULTIPLY_ADDS`] keep
//! burn's route.
//!
//! Invariants: equal to burn's `conv3d` and `conv3d_x_backward` to float rounding
//! (`tests/model.rs`, on lavapipe); features (x, y and their gradients) f32, f16 or bf16, the
//! weights f32, the sums f32 (the caller checks); every read is inside its
//! tensor (out-of-volume taps read element 0 and are replaced by a selected zero; channels past
//! the last are clamped to it and not written).

use burn::backend::ops::FloatTensorOps;
use burn::backend::TensorMetadata;
use burn::tensor::{DType, Shape};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::ir::FloatKind;
use cubecl::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::conv_gpu::{geometry_of, launch_grid, WgradGeometry};

/// Channels one thread accumulates.
pub(super) const CHANNEL_BLOCK: usize = 4;
/// The largest convolution (voxels × input × output channels × taps) taken directly; larger
/// ones are bound by arithmetic, not launches, and keep burn's tuned route.
pub const DIRECT_MAX_MULTIPLY_ADDS: usize = 1 << 31;

/// Launches of this module's kernels in this process (what tests read to know which route the
/// GPU's convolutions took).
static LAUNCHES: AtomicUsize = AtomicUsize::new(0);

/// How many convolutions and input gradients this module's kernels have computed.
pub fn kernel_launches() -> usize {
    LAUNCHES.load(Ordering::Relaxed)
}

/// This thread's place: `(voxel, item, first channel)` for threads ordered (item, channel
/// block of `block`, voxel of `volume`), voxels fastest.
#[cube]
pub(super) fn thread_place(
    volume: usize,
    blocks: usize,
    #[comptime] block: usize,
) -> (usize, usize, usize) {
    let v = ABSOLUTE_POS % volume;
    let n = ABSOLUTE_POS / volume / blocks;
    (v, n, (ABSOLUTE_POS / volume % blocks) * block)
}

/// `block` zeros, one accumulator per channel of a thread.
#[cube]
pub(super) fn zeros(#[comptime] block: usize) -> Array<f32> {
    let mut acc = Array::<f32>::new(block);
    #[unroll]
    for c in 0..block {
        acc[c] = 0.0;
    }
    acc
}

/// `acc[c] += value · weight[at + c·step]` for the `block` channels c, those at or past
/// `channels_left` reading the last channel's weight (their sums are never stored).
#[cube]
pub(super) fn add_weighted(
    acc: &mut Array<f32>,
    value: f32,
    weight: &[f32],
    at: usize,
    channels_left: usize,
    step: usize,
    #[comptime] block: usize,
) {
    #[unroll]
    for c in 0..block {
        let c_read = select(c < channels_left, c, channels_left - 1);
        acc[c] += value * weight[at + c_read * step];
    }
}

/// `out[at + c·volume] = acc[c]` (rounded to `F`) for the `block` channels c below
/// `channels_left`.
#[cube]
pub(super) fn store_channels<F: Float>(
    out: &mut [F],
    acc: &Array<f32>,
    at: usize,
    channels_left: usize,
    volume: usize,
    #[comptime] block: usize,
) {
    #[unroll]
    for c in 0..block {
        if c < channels_left {
            out[at + c * volume] = F::cast_from(acc[c]);
        }
    }
}

/// Forward: thread = (item n, output-channel block, output voxel), voxels fastest; x and y of
/// float type `F`, the weights f32, the sums f32.
#[cube(launch_unchecked)]
fn conv_forward_direct<F: Float>(
    x: &[F],
    weight: &[f32],
    y: &mut [F],
    c_in: usize,
    c_out: usize,
    in_size: Sequence<usize>,
    out_size: Sequence<usize>,
    blocks: usize,
    threads: usize,
    #[comptime] kernel_d: usize,
    #[comptime] stride: usize,
    #[comptime] block: usize,
    #[define(F)] _dtype: ElemType,
) {
    if ABSOLUTE_POS >= threads {
        terminate!();
    }
    let (d, h, w) = (in_size[0], in_size[1], in_size[2]);
    let (oh, ow) = (out_size[1], out_size[2]);
    let out_volume = out_size[0] * oh * ow;
    let (v, n, co0) = thread_place(out_volume, blocks, block);
    let (xo, yo, zo) = (v % ow, (v / ow) % oh, v / (ow * oh));
    let (pad_d, taps) = (kernel_d / 2, kernel_d * 9);
    let mut acc = zeros(block);
    for ci in 0..c_in {
        let x_volume = (n * c_in + ci) * d * h * w;
        #[unroll]
        for kz in 0..kernel_d {
            let z_pad = zo * stride + kz;
            let z_inside = z_pad >= pad_d && z_pad < d + pad_d;
            #[unroll]
            for kh in 0..3usize {
                #[unroll]
                for kw in 0..3usize {
                    let (y_pad, x_pad) = (yo * stride + kh, xo * stride + kw);
                    let inside = z_inside && y_pad >= 1 && y_pad <= h && x_pad >= 1 && x_pad <= w;
                    let at = x_volume + ((z_pad - pad_d) * h + y_pad - 1) * w + x_pad - 1;
                    let value = select(inside, f32::cast_from(x[select(inside, at, 0)]), 0.0);
                    let tap = kz * 9 + kh * 3 + kw;
                    let at = (co0 * c_in + ci) * taps + tap;
                    add_weighted(&mut acc, value, weight, at, c_out - co0, c_in * taps, block);
                }
            }
        }
    }
    store_channels(
        y,
        &acc,
        (n * c_out + co0) * out_volume + v,
        c_out - co0,
        out_volume,
        block,
    );
}

/// Whether padded coordinate `at` (input coordinate + padding) reached tap `k`'s output
/// position at `stride`, and which: `(at − k) / stride`, an output coordinate below `out`.
#[cube]
fn tap_source(at: usize, k: usize, out: usize, #[comptime] stride: usize) -> (bool, usize) {
    let shifted = at - k;
    let o = shifted / stride;
    (at >= k && o * stride == shifted && o < out, o)
}

/// Input gradient: thread = (item n, input-channel block, input voxel), voxels fastest; grad
/// and dx of float type `F`, the weights f32, the sums f32.
#[cube(launch_unchecked)]
fn conv_input_grad_direct<F: Float>(
    grad: &[F],
    weight: &[f32],
    dx: &mut [F],
    c_in: usize,
    c_out: usize,
    in_size: Sequence<usize>,
    out_size: Sequence<usize>,
    blocks: usize,
    threads: usize,
    #[comptime] kernel_d: usize,
    #[comptime] stride: usize,
    #[comptime] block: usize,
    #[define(F)] _dtype: ElemType,
) {
    if ABSOLUTE_POS >= threads {
        terminate!();
    }
    let (h, w) = (in_size[1], in_size[2]);
    let (od, oh, ow) = (out_size[0], out_size[1], out_size[2]);
    let in_volume = in_size[0] * h * w;
    let (v, n, ci0) = thread_place(in_volume, blocks, block);
    let (xi, yi, zi) = (v % w, (v / w) % h, v / (w * h));
    let (pad_d, taps) = (kernel_d / 2, kernel_d * 9);
    let mut acc = zeros(block);
    for co in 0..c_out {
        let g_volume = (n * c_out + co) * od * oh * ow;
        #[unroll]
        for kz in 0..kernel_d {
            let (z_ok, zo) = tap_source(zi + pad_d, kz, od, stride);
            #[unroll]
            for kh in 0..3usize {
                let (y_ok, yo) = tap_source(yi + 1, kh, oh, stride);
                #[unroll]
                for kw in 0..3usize {
                    let (x_ok, xo) = tap_source(xi + 1, kw, ow, stride);
                    let inside = z_ok && y_ok && x_ok;
                    let at = g_volume + (zo * oh + yo) * ow + xo;
                    let g = select(inside, f32::cast_from(grad[select(inside, at, 0)]), 0.0);
                    let tap = kz * 9 + kh * 3 + kw;
                    let at = (co * c_in + ci0) * taps + tap;
                    add_weighted(&mut acc, g, weight, at, c_in - ci0, taps, block);
                }
            }
        }
    }
    store_channels(
        dx,
        &acc,
        (n * c_in + ci0) * in_volume + v,
        c_in - ci0,
        in_volume,
        block,
    );
}

/// The geometry of a convolution this module takes: an f32 weight, plain ([`geometry_of`]), not
/// empty, at most [`DIRECT_MAX_MULTIPLY_ADDS`] (the features' type is the caller's check).
fn direct_geometry(xs: &Shape, weight: &CubeTensor, stride: usize) -> Option<WgradGeometry> {
    let geo = geometry_of(xs, &weight.shape(), stride)?;
    let voxels = geo.n * geo.out_size.iter().product::<usize>();
    let work = voxels * geo.c_in * geo.c_out * geo.kernel_d * 9;
    let fits = weight.dtype == DType::F32 && work > 0 && work <= DIRECT_MAX_MULTIPLY_ADDS;
    fits.then_some(geo)
}

/// The element type the kernels generic over a float type `F` are launched with for features
/// of `dtype` (f32, f16 or bf16), or `None` for any other type.
pub(super) fn feature_elem(dtype: DType) -> Option<ElemType> {
    let kind = match dtype {
        DType::F32 => FloatKind::F32,
        DType::F16 => FloatKind::F16,
        DType::BF16 => FloatKind::BF16,
        _ => return None,
    };
    Some(ElemType::Float(kind))
}

/// Whether the kernels generic over a float type read and write features of `dtype` (those
/// [`feature_elem`] names: f32, f16, bf16): what the layers' routers check.
pub fn is_feature_type(dtype: DType) -> bool {
    feature_elem(dtype).is_some()
}

/// [`feature_elem`] for a layer whose `fits` (or router) admitted only those types.
pub(super) fn kernel_elem(dtype: DType) -> ElemType {
    debug_assert!(
        feature_elem(dtype).is_some(),
        "{dtype:?} routed to a kernel"
    );
    feature_elem(dtype).unwrap_or(ElemType::Float(FloatKind::F32))
}

/// `t` in float type `dtype`, unchanged (no launch) when it already is: a mixed-precision step's
/// f32 weights meet half-precision features in burn's convolutions, which take one type, and
/// an output gradient is read in its output's type.
pub(super) fn in_type(t: CubeTensor, dtype: DType) -> CubeTensor {
    use burn::tensor::FloatDType;
    let float = match dtype {
        _ if t.dtype == dtype => return t,
        DType::F16 => FloatDType::F16,
        DType::BF16 => FloatDType::BF16,
        _ => FloatDType::F32,
    };
    burn_cubecl::CubeBackend::float_cast(t, float)
}

/// The sizes' sequence argument of a launch.
pub(super) fn sizes<const N: usize>(values: [usize; N]) -> SequenceArg<usize> {
    let mut sequence = SequenceArg::new();
    values.into_iter().for_each(|v| sequence.push(v));
    sequence
}

/// The convolution of `x [N, C_in, D, H, W]` by `weight [C_out, C_in, kd, 3, 3]` at `stride`
/// (padding 1; 0 along the depth of a 1×3×3 kernel), or `None` where this module does not take
/// it (burn's then).
pub fn forward(x: &CubeTensor, weight: &CubeTensor, stride: usize) -> Option<CubeTensor> {
    let geo = direct_geometry(&x.shape(), weight, stride)?;
    let elem = feature_elem(x.dtype)?;
    let (x, weight) = (into_contiguous(x.clone()), into_contiguous(weight.clone()));
    let out_shape = Shape::new(geo.out_dims());
    let y = empty_device_dtype(x.client.clone(), x.device.clone(), out_shape, x.dtype);
    let blocks = geo.c_out.div_ceil(CHANNEL_BLOCK);
    let threads = geo.n * blocks * geo.out_size.iter().product::<usize>();
    let client = x.client.clone();
    let (cube_count, cube_dim) = launch_grid(&client, threads);
    // SAFETY: x, weight and y are contiguous with the sizes passed; threads past `threads` stop
    // at once; out-of-volume reads go to element 0 and channels past the last to the last.
    unsafe {
        conv_forward_direct::launch_unchecked(
            &client,
            cube_count,
            cube_dim,
            x.into_buffer_arg(),
            weight.into_buffer_arg(),
            y.clone().into_buffer_arg(),
            geo.c_in,
            geo.c_out,
            sizes(geo.in_size),
            sizes(geo.out_size),
            blocks,
            threads,
            geo.kernel_d,
            geo.stride,
            CHANNEL_BLOCK,
            elem,
        );
    }
    LAUNCHES.fetch_add(1, Ordering::Relaxed);
    Some(y)
}

/// The gradient with respect to `x` (of sizes `x_dims`) of [`forward`], given the output's
/// gradient `grad`, or `None` where this module does not take it (burn's then).
pub fn input_gradient(
    weight: &CubeTensor,
    grad: &CubeTensor,
    x_dims: [usize; 5],
    stride: usize,
) -> Option<CubeTensor> {
    let geo = direct_geometry(&Shape::new(x_dims), weight, stride)?;
    let elem = feature_elem(grad.dtype)?;
    if grad.shape().dims::<5>() != geo.out_dims() {
        return None;
    }
    let (grad, weight) = (
        into_contiguous(grad.clone()),
        into_contiguous(weight.clone()),
    );
    let dx = empty_device_dtype(
        grad.client.clone(),
        grad.device.clone(),
        Shape::new(x_dims),
        grad.dtype,
    );
    let blocks = geo.c_in.div_ceil(CHANNEL_BLOCK);
    let threads = geo.n * blocks * geo.in_size.iter().product::<usize>();
    let client = grad.client.clone();
    let (cube_count, cube_dim) = launch_grid(&client, threads);
    // SAFETY: as in `forward`, with grad and dx in the places of y and x.
    unsafe {
        conv_input_grad_direct::launch_unchecked(
            &client,
            cube_count,
            cube_dim,
            grad.into_buffer_arg(),
            weight.into_buffer_arg(),
            dx.clone().into_buffer_arg(),
            geo.c_in,
            geo.c_out,
            sizes(geo.in_size),
            sizes(geo.out_size),
            blocks,
            threads,
            geo.kernel_d,
            geo.stride,
            CHANNEL_BLOCK,
            elem,
        );
    }
    LAUNCHES.fetch_add(1, Ordering::Relaxed);
    Some(dx)
}
