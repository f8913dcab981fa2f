//! The weight gradient of the U-Net's 3×3×3 (and 1×3×3), padding-1 convolutions on burn's
//! cubecl backend (wgpu on a GPU) as one kernel of our own, then one sum.
//!
//! burn's own weight gradient there is, on devices without matrix-multiply units for the
//! dtype (every wgpu device: WGSL has none), the im2col route: it materialises the input once
//! per kernel tap (27 copies of the input, each built by its own slice and slice-assign
//! kernels: ~30 launches a convolution) and multiplies. A small network's training step is
//! bound by launches, a large one's by that 27-fold copy. This kernel reads the input and the
//! output gradient in place: each thread owns `CO_BLOCK` output channels × one input channel ×
//! one depth tap × the nine in-plane taps, and sums over a chunk of output rows; the chunks'
//! partial sums are added by one reduction. Two launches a convolution (three when the output
//! gradient arrives non-contiguous), no copy of the input.
//!
//! Invariants: the result equals burn's `conv3d_weight_backward` to float rounding (the sum
//! runs in another order; `tests/model.rs` compares the whole training gradient with the CPU's,
//! and this module's tests compare it with burn's on wgpu); x and the output gradient f32, f16
//! or bf16 (a mixed-precision step), the weight and its gradient f32, the sums f32; one stride
//! for all three axes (the caller, [`super::conv`], routes nothing else here; anything else falls back
//! to burn's); every read is inside its tensor (out-of-volume taps read element 0 and are
//! multiplied by a selected zero).

use burn::backend::ops::FloatTensorOps;
use burn::backend::{DispatchDevice, TensorMetadata};
use burn::tensor::{DType, Shape};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeBackend;
use cubecl::prelude::*;

use super::conv_gpu_direct::feature_elem;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Output channels one thread accumulates (its gradient values are loaded once for all nine
/// in-plane taps of each of them).
const CO_BLOCK: usize = 4;
/// Threads the launch aims at: enough to fill a large GPU, few enough that the partial sums
/// stay a small fraction of the input.
const TARGET_THREADS: usize = 1 << 17;
/// The fewest output voxels one thread sums (below this the partials outgrow the work).
const MIN_VOXELS_PER_THREAD: usize = 256;
/// Threads per workgroup.
const WORKGROUP: u32 = 256;

/// Launches of [`weight_grad_partials`] in this process (what tests read to know the GPU's
/// convolutions took this route).
static LAUNCHES: AtomicUsize = AtomicUsize::new(0);

/// How many weight gradients this module's kernel has computed in this process.
pub fn kernel_launches() -> usize {
    LAUNCHES.load(Ordering::Relaxed)
}

/// The sizes a launch needs: `x [n, c_in, d, h, w]`, the output gradient
/// `[n, c_out, od, oh, ow]`, the kernel's depth (3, or 1 for the in-plane kernel) and the
/// stride (all three axes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct WgradGeometry {
    pub(super) n: usize,
    pub(super) c_in: usize,
    pub(super) c_out: usize,
    pub(super) in_size: [usize; 3],
    pub(super) out_size: [usize; 3],
    pub(super) kernel_d: usize,
    pub(super) stride: usize,
}

impl WgradGeometry {
    /// Threads per chunk of rows: output-channel blocks × input channels × depth taps.
    fn threads_per_chunk(&self) -> usize {
        self.c_out.div_ceil(CO_BLOCK) * self.c_in * self.kernel_d
    }

    /// Output rows (`n × od × oh`) in all.
    fn rows(&self) -> usize {
        self.n * self.out_size[0] * self.out_size[1]
    }

    /// The convolution's output sizes `[n, c_out, od, oh, ow]`.
    pub(super) fn out_dims(&self) -> [usize; 5] {
        let [od, oh, ow] = self.out_size;
        [self.n, self.c_out, od, oh, ow]
    }

    /// Elements of the weight gradient.
    fn weights(&self) -> usize {
        self.c_out * self.c_in * self.kernel_d * 9
    }

    /// `(chunks, rows per chunk)`: enough chunks to bring the threads near
    /// [`TARGET_THREADS`], none summing fewer than [`MIN_VOXELS_PER_THREAD`] voxels (but at
    /// least one row); the chunks cover every row once.
    fn chunks(&self) -> (usize, usize) {
        let rows = self.rows().max(1);
        let min_rows = MIN_VOXELS_PER_THREAD.div_ceil(self.out_size[2].max(1));
        let wanted = TARGET_THREADS.div_ceil(self.threads_per_chunk().max(1));
        let chunks = wanted.clamp(1, (rows / min_rows).max(1));
        let rows_per_chunk = rows.div_ceil(chunks);
        (rows.div_ceil(rows_per_chunk), rows_per_chunk)
    }
}

/// One thread: output channels `co0 .. co0 + CO_BLOCK` × input channel `ci` × depth tap `kz`
/// × the nine in-plane taps, summed over output rows `chunk × rows_per_chunk ..` (clipped to
/// `rows`); writes `partial[chunk, co, ci, kz, kh, kw]`. `per_chunk` threads share a chunk.
#[cube(launch_unchecked)]
fn weight_grad_partials<F: Float>(
    x: &[F],
    grad: &[F],
    partial: &mut [f32],
    c_in: usize,
    c_out: usize,
    d: usize,
    h: usize,
    w: usize,
    od: usize,
    oh: usize,
    ow: usize,
    rows: usize,
    rows_per_chunk: usize,
    per_chunk: usize,
    threads: usize,
    #[comptime] kernel_d: usize,
    #[comptime] stride: usize,
    #[comptime] co_block: usize,
    #[define(F)] _dtype: ElemType,
) {
    if ABSOLUTE_POS >= threads {
        terminate!();
    }
    let chunk = ABSOLUTE_POS / per_chunk;
    let within = ABSOLUTE_POS % per_chunk;
    let kz = within % kernel_d;
    let ci = (within / kernel_d) % c_in;
    let co0 = (within / (kernel_d * c_in)) * co_block;
    let pad_d = kernel_d / 2;
    let in_volume = d * h * w;
    let out_volume = od * oh * ow;

    let mut acc = Array::<f32>::new(co_block * 9);
    #[unroll]
    for i in 0..co_block * 9 {
        acc[i] = 0.0;
    }
    let first = chunk * rows_per_chunk;
    let past = select(first + rows_per_chunk < rows, first + rows_per_chunk, rows);
    for row in first..past {
        let yo = row % oh;
        let zo = (row / oh) % od;
        let n = row / (oh * od);
        let z_pad = zo * stride + kz;
        if z_pad >= pad_d && z_pad < d + pad_d {
            let x_plane = (n * c_in + ci) * in_volume + (z_pad - pad_d) * h * w;
            let g_row = n * c_out * out_volume + (zo * oh + yo) * ow;
            let g_at = g_row + co0 * out_volume;
            let sizes = (h, w, ow, out_volume);
            accumulate_row(
                x,
                grad,
                &mut acc,
                x_plane,
                g_at,
                c_out - co0,
                yo,
                sizes,
                stride,
                co_block,
            );
        }
    }
    // This thread's nine taps of each of its output channels, at row `chunk` of `partial`.
    let first_tap = (chunk * c_out + co0) * c_in + ci;
    store_taps(
        partial,
        &acc,
        first_tap,
        c_in,
        c_out - co0,
        kernel_d * 9,
        kz * 9,
        co_block,
    );
}

/// Adds one output row's share to `acc[c·9 + kh·3 + kw]`: for each output column xo, the
/// gradient of each of the `block` channels c below `channels_left` (at `g_at + c·out_volume
/// + xo`) times the input at tap (kh, kw) of row `yo` of the input plane at `x_plane` (zero off
/// the plane). `sizes`: the input's height and width, the output's width and volume.
#[cube]
#[allow(clippy::too_many_arguments)]
fn accumulate_row<F: Float>(
    x: &[F],
    grad: &[F],
    acc: &mut Array<f32>,
    x_plane: usize,
    g_at: usize,
    channels_left: usize,
    yo: usize,
    sizes: (usize, usize, usize, usize),
    #[comptime] stride: usize,
    #[comptime] block: usize,
) {
    let (h, w, ow, out_volume) = sizes;
    let mut gv = Array::<f32>::new(block);
    for xo in 0..ow {
        #[unroll]
        for c in 0..block {
            let inside = c < channels_left;
            gv[c] = select(
                inside,
                f32::cast_from(grad[select(inside, g_at + c * out_volume + xo, 0)]),
                0.0,
            );
        }
        #[unroll]
        for kh in 0..3usize {
            #[unroll]
            for kw in 0..3usize {
                let (y_pad, x_pad) = (yo * stride + kh, xo * stride + kw);
                let inside = y_pad >= 1 && y_pad <= h && x_pad >= 1 && x_pad <= w;
                let at = select(inside, x_plane + (y_pad - 1) * w + x_pad - 1, 0);
                let v = select(inside, f32::cast_from(x[at]), 0.0);
                #[unroll]
                for c in 0..block {
                    acc[c * 9 + kh * 3 + kw] += gv[c] * v;
                }
            }
        }
    }
}

/// `partial[(first + c·c_in)·taps + tap0 + t] = acc[c·9 + t]` for the nine taps t of each of
/// the `block` channels c below `channels_left`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn store_taps(
    partial: &mut [f32],
    acc: &Array<f32>,
    first: usize,
    c_in: usize,
    channels_left: usize,
    taps: usize,
    tap0: usize,
    #[comptime] block: usize,
) {
    #[unroll]
    for c in 0..block {
        if c < channels_left {
            let base = (first + c * c_in) * taps + tap0;
            #[unroll]
            for t in 0..9usize {
                partial[base + t] = acc[c * 9 + t];
            }
        }
    }
}

/// The workgroups of [`WORKGROUP`] threads for a launch of `threads` threads (spread over two
/// grid axes when one would hold too many; threads past `threads` stop at once).
pub(super) fn launch_grid(client: &Client, threads: usize) -> (CubeCount, CubeDim) {
    let cube_dim = CubeDim::new_1d(WORKGROUP);
    (
        cubecl::calculate_cube_count_elemwise(client, threads, cube_dim),
        cube_dim,
    )
}

/// Whether `device` is one of burn's GPU (cubecl) devices.
pub fn on_gpu(device: &burn::prelude::Device) -> bool {
    matches!(
        device.clone().inner().as_dispatch(),
        DispatchDevice::Cube(_)
    )
}

/// The geometry of a weight gradient this kernel computes, or `None` (burn's then): x and the
/// output gradient of one float type (f32, f16 or bf16), the weight f32, the output gradient's
/// sizes those of the convolution's output ([`geometry_of`]).
fn geometry(
    x: &CubeTensor,
    weight: &CubeTensor,
    grad: &CubeTensor,
    stride: usize,
) -> Option<WgradGeometry> {
    let features = x.dtype == grad.dtype && feature_elem(x.dtype).is_some();
    let gs = grad.shape();
    let geo = geometry_of(&x.shape(), &weight.shape(), stride)?;
    (features && weight.dtype == DType::F32 && gs.dims() == geo.out_dims()).then_some(geo)
}

/// The geometry of a padding-1 convolution of an input of sizes `xs` by a kernel of sizes `ws`
/// at `stride`, or `None` for anything but rank 5, a 3×3×3 or 1×3×3 kernel (the latter
/// strided only on one slice), stride 1 or 2 and matching channels.
pub(super) fn geometry_of(xs: &Shape, ws: &Shape, stride: usize) -> Option<WgradGeometry> {
    if xs.num_dims() != 5 || ws.num_dims() != 5 {
        return None;
    }
    let (xs, ws) = (xs.dims::<5>(), ws.dims::<5>());
    let kernel_d = ws[2];
    let plain = (kernel_d == 3 || kernel_d == 1) && ws[3] == 3 && ws[4] == 3;
    if !plain || !(1..=2).contains(&stride) || ws[1] != xs[1] {
        return None;
    }
    // The in-plane kernel's depth stride is 1 (a strided one runs on one slice, where the
    // kernel's depth stride, the in-plane one, lands on row 0 alike).
    if kernel_d == 1 && stride != 1 && xs[2] != 1 {
        return None;
    }
    let out_size = super::conv::conv3x3_out_size([xs[2], xs[3], xs[4]], kernel_d, stride);
    Some(WgradGeometry {
        n: xs[0],
        c_in: xs[1],
        c_out: ws[0],
        in_size: [xs[2], xs[3], xs[4]],
        out_size,
        kernel_d,
        stride,
    })
}

/// The weight gradient `[c_out, c_in, kd, 3, 3]` of a padding-1 convolution of `x` by a kernel
/// shaped like `weight`, at `stride`, given the output gradient `grad`: this module's kernel
/// and one sum where [`geometry`] allows, `None` otherwise (burn's then).
pub fn weight_gradient(
    x: &CubeTensor,
    weight: &CubeTensor,
    grad: &CubeTensor,
    stride: usize,
) -> Option<CubeTensor> {
    let geo = geometry(x, weight, grad, stride)?;
    let elem = feature_elem(x.dtype)?;
    let (x, grad) = (x.clone(), grad.clone());
    let (x, grad) = (into_contiguous(x), into_contiguous(grad));
    let (chunks, rows_per_chunk) = geo.chunks();
    let threads = chunks * geo.threads_per_chunk();
    let client = x.client.clone();
    let partial = empty_device_dtype(
        client.clone(),
        x.device.clone(),
        Shape::new([chunks, geo.weights()]),
        DType::F32,
    );
    let (cube_count, cube_dim) = launch_grid(&client, threads);
    let [d, h, w] = geo.in_size;
    let [od, oh, ow] = geo.out_size;
    // SAFETY: every index the kernel reads or writes is inside its buffer: x and grad are
    // contiguous with the sizes passed, partial has `chunks × weights` elements, threads past
    // `threads` stop at once, and out-of-volume reads are redirected to element 0.
    unsafe {
        weight_grad_partials::launch_unchecked(
            &client,
            cube_count,
            cube_dim,
            x.into_buffer_arg(),
            grad.into_buffer_arg(),
            partial.clone().into_buffer_arg(),
            geo.c_in,
            geo.c_out,
            d,
            h,
            w,
            od,
            oh,
            ow,
            geo.rows(),
            rows_per_chunk,
            geo.threads_per_chunk(),
            threads,
            geo.kernel_d,
            geo.stride,
            CO_BLOCK,
            elem,
        );
    }
    LAUNCHES.fetch_add(1, Ordering::Relaxed);
    let summed = match chunks {
        1 => partial,
        _ => CubeBackend::float_sum_dim(partial, 0),
    };
    let shape = Shape::new([geo.c_out, geo.c_in, geo.kernel_d, 3, 3]);
    Some(CubeBackend::float_reshape(summed, shape))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geo(n: usize, c: [usize; 2], size: usize, kernel_d: usize, stride: usize) -> WgradGeometry {
        let out = (size - 1) / stride + 1;
        WgradGeometry {
            n,
            c_in: c[0],
            c_out: c[1],
            in_size: [size; 3],
            out_size: [out; 3],
            kernel_d,
            stride,
        }
    }

    #[test]
    fn chunks_cover_every_row_once_and_keep_a_thread_busy() {
        for g in [
            geo(2, [8, 8], 32, 3, 1),
            geo(2, [1, 8], 32, 3, 1),
            geo(2, [32, 32], 128, 3, 1),
            geo(1, [3, 5], 7, 3, 2),
            geo(1, [1, 1], 1, 1, 1),
        ] {
            let (chunks, per) = g.chunks();
            assert!(chunks >= 1 && per >= 1, "{g:?}");
            assert!(chunks * per >= g.rows(), "{g:?}: rows left out");
            assert!((chunks - 1) * per < g.rows(), "{g:?}: an empty chunk");
            if chunks > 1 {
                assert!(per * g.out_size[2] >= MIN_VOXELS_PER_THREAD, "{g:?}");
            }
        }
    }
}
