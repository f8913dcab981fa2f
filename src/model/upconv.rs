//! The U-Net's upsampling — a transposed convolution with a 2×2×2 kernel at stride 2 — on
//! burn's CPU backend as matrix products, with a backward pass of its own. Each input voxel
//! feeds its own 2×2×2 block of the output, so the operation is one product per batch item,
//! `P = Wᵀ [C_out·8, C_in] × X [C_in, voxels]`, whose row `(o, a, b, c)` is output channel o at
//! block offset (a, b, c): [`interleave`] writes it into place. Backward: the output gradient
//! de-interleaved to `G [C_out·8, voxels]`; the input's gradient is `W × G`, the kernel's
//! `Σ_items X × Gᵀ`. burn-flex computes both gradients as generic convolutions, 2–4× slower.
//! The single-slice form's 1×2×2 upsampling (in-plane only) runs the same with 4 offsets.
//!
//! Invariants: the results equal burn's `conv_transpose3d` and its gradients to float rounding
//! (`tests/model.rs` compares them); f32 only, no padding, dilation 1, one group (anything else
//! takes burn's path); called only on the CPU backend ([`upconv_forward`] checks; on the GPU
//! backend it routes to [`super::upconv_gpu`]).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::flex::FlexTensor;
use burn::backend::ops::{ConvTransposeOptions, ModuleOps};
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex, TensorMetadata};
use burn::nn::conv::ConvTranspose3d;
use burn::prelude::*;
use burn::tensor::DType;
use rayon::prelude::*;

use super::conv::{flex_f32, with_planes, written};
use super::product::{per_item, sum_over_voxels, Matrix};

/// Backends with an upsampling transposed convolution (kernel = stride, 2×2×2 or 1×2×2, no
/// bias) of their own; the defaults are burn's generic transposed convolution and gradients.
#[backend_extension(Flex, Autodiff)]
pub trait UpConvBackend: Backend {
    /// `x [N, C_in, D, H, W]` and `weight [C_in, C_out, k, 2, 2]` (k = 2 or 1) →
    /// `[N, C_out, k·D, 2H, 2W]`.
    fn upconv(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        let options = up_options(&weight);
        Self::conv_transpose3d(x, weight, None, options)
    }

    /// The gradient of [`UpConvBackend::upconv`] with respect to `x`, given the output's.
    fn upconv_x_grad(weight: FloatTensor<Self>, grad: FloatTensor<Self>) -> FloatTensor<Self> {
        let options = up_options(&weight);
        Self::conv_transpose3d_x_backward(weight, grad, options)
    }

    /// The gradient of [`UpConvBackend::upconv`] with respect to `weight`.
    fn upconv_weight_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let options = up_options(&weight);
        Self::conv_transpose3d_weight_backward(x, weight, grad, options)
    }
}

/// Stride = kernel (`weight [C_in, C_out, k, 2, 2]`), no padding, dilation 1, one group.
fn up_options<T: TensorMetadata>(weight: &T) -> ConvTransposeOptions<3> {
    let [_, _, kd, kh, kw] = weight.shape().dims::<5>();
    ConvTransposeOptions::new([kd, kh, kw], [0; 3], [0; 3], [1; 3], 1)
}

/// `up` applied to `x`. An upsampling (kernel = stride, 2×2×2 or 1×2×2, no padding, dilation 1,
/// one group) runs on burn's CPU backend (f32) as [`UpConvBackend::upconv`], on its GPU backend
/// (f32, or f16 and bf16 features with the f32 weights) through `upconv_gpu`; everything else,
/// and every other backend, runs burn's transposed convolution (in half precision with the
/// weights cast to x's type).
pub fn upconv_forward(up: &ConvTranspose3d, x: Tensor<5>) -> Tensor<5> {
    if let Some(budget) = super::pieces::upconv_cut_budget(up, &x) {
        return super::pieces::upconv_in_pieces(up, x, budget);
    }
    upconv_whole(up, x)
}

/// [`upconv_forward`] in one piece, whatever its size (what each of `model::pieces`' pieces
/// runs).
pub(super) fn upconv_whole(up: &ConvTranspose3d, x: Tensor<5>) -> Tensor<5> {
    let k = up.kernel_size;
    let plain = up.dilation == [1, 1, 1]
        && up.groups == 1
        && up.padding == [0; 3]
        && up.padding_out == [0; 3]
        && up.stride == k
        && matches!(k, [2, 2, 2] | [1, 2, 2]);
    if plain && super::conv_gpu::on_gpu(&x.device()) {
        return upsample_on_gpu(up, x);
    }
    let on_cpu = x.device().inner() == Device::flex();
    if !plain || !on_cpu || super::precision::is_half(&x) {
        return upconv_as_burns(up, x);
    }
    let weight = up.weight.val().into_dispatch();
    let out = Tensor::<5>::from_dispatch(<Dispatch as UpConvBackend>::upconv(
        x.into_dispatch(),
        weight,
    ));
    match &up.bias {
        Some(bias) => super::bias::add_channel_bias(out, bias.val()),
        None => out,
    }
}

/// `up` applied to `x` by burn's transposed convolution: `ConvTranspose3d::forward`, or for a
/// half-precision `x` with the weights cast to its type
/// ([`super::precision::conv_transpose3d_in_dtype_of_input`]).
fn upconv_as_burns(up: &ConvTranspose3d, x: Tensor<5>) -> Tensor<5> {
    match super::precision::is_half(&x) {
        true => super::precision::conv_transpose3d_in_dtype_of_input(up, x),
        false => up.forward(x),
    }
}

/// A plain upsampling `up` with a bias of `x` (f32, or f16 or bf16 in a mixed-precision step,
/// the weights f32) on burn's GPU backend through [`super::biased_gpu`] (`upconv_gpu`'s
/// kernels) where it fits, burn's transposed convolution otherwise.
fn upsample_on_gpu(up: &ConvTranspose3d, x: Tensor<5>) -> Tensor<5> {
    use super::biased_gpu::{biased_layer, BiasedLayer};
    use super::upconv_gpu::fits;
    let weight = up.weight.val();
    let Some(bias) = up.bias.as_ref().map(|b| b.val()) else {
        return upconv_as_burns(up, x);
    };
    let f32s = [weight.dtype(), bias.dtype()] == [DType::F32; 2];
    let features = super::conv_gpu_direct::is_feature_type(x.dtype());
    if !f32s || !features || !fits(x.dims(), weight.dims()[1], up.kernel_size[0]) {
        return upconv_as_burns(up, x);
    }
    biased_layer(BiasedLayer::Upsample, x, weight, bias)
}

/// The backward pass of [`UpConvBackend::upconv`] under autodiff.
#[derive(Debug)]
struct UpConvBackward;

impl<B: UpConvBackend> Backward<B, 2> for UpConvBackward {
    type State = (NodeId, NodeId);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_weight] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x_state, weight_state) = ops.state;
        let x = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(x_state);
        let weight = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(weight_state);
        if let Some(node) = node_x {
            grads.register::<B>(node.id, B::upconv_x_grad(weight.clone(), grad.clone()));
        }
        if let Some(node) = node_weight {
            grads.register::<B>(node.id, B::upconv_weight_grad(x, weight, grad));
        }
    }
}

impl<B: UpConvBackend, C: CheckpointStrategy> UpConvBackend for Autodiff<B, C> {
    fn upconv(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        let prepared = UpConvBackward
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful();
        match prepared {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let weight_state = prep.checkpoint(&weight);
                let out = B::upconv(x.into_primitive(), weight.into_primitive());
                prep.finish((x_state, weight_state), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::upconv(x.into_primitive(), weight.into_primitive()))
            }
        }
    }
}

impl UpConvBackend for Flex {
    fn upconv(x: FlexTensor, weight: FlexTensor) -> FlexTensor {
        let Some(geo) = UpGeometry::of(&x, &weight) else {
            let options = up_options(&weight);
            return Flex::conv_transpose3d(x, weight, None, options);
        };
        // Wᵀ [C_out·8, C_in] × X [N, C_in, V] = P [N, C_out·8, V].
        let (weight, x) = (weight.to_contiguous(), x.to_contiguous());
        let p = per_item(
            geo.weight_matrix(weight.storage::<f32>()).t(),
            x.storage::<f32>(),
            geo.batch,
            geo.voxels(),
        );
        let out = interleave(&p, &geo);
        let [d, h, w] = geo.out_size();
        flex_f32(out, [geo.batch, geo.c_out, d, h, w])
    }

    fn upconv_x_grad(weight: FlexTensor, grad: FlexTensor) -> FlexTensor {
        let Some(geo) = UpGeometry::of_grad(&weight, &grad) else {
            let options = up_options(&weight);
            return Flex::conv_transpose3d_x_backward(weight, grad, options);
        };
        // W [C_in, C_out·8] × G [N, C_out·8, V] = [N, C_in, V].
        let weight = weight.to_contiguous();
        let g = geo.grad_rows(grad);
        let x_grad = per_item(
            geo.weight_matrix(weight.storage::<f32>()),
            &g,
            geo.batch,
            geo.voxels(),
        );
        flex_f32(x_grad, [geo.batch, geo.c_in, geo.d, geo.h, geo.w])
    }

    fn upconv_weight_grad(x: FlexTensor, weight: FlexTensor, grad: FlexTensor) -> FlexTensor {
        let Some(geo) = UpGeometry::of(&x, &weight) else {
            let options = up_options(&weight);
            return Flex::conv_transpose3d_weight_backward(x, weight, grad, options);
        };
        // Σ_items X [C_in, V] × Gᵀ [V, C_out·8] = [C_in, C_out·8].
        let (x, g) = (x.to_contiguous(), geo.grad_rows(grad));
        let rows = (geo.c_in, geo.c_out * geo.offsets());
        let sum = sum_over_voxels(x.storage::<f32>(), &g, geo.batch, rows);
        let [_, _, kd, kh, kw] = weight.shape().dims::<5>();
        flex_f32(sum, [geo.c_in, geo.c_out, kd, kh, kw])
    }
}

/// The sizes of one upsampling: the input's, and the kernel's depth (2, or 1 in-plane only).
#[derive(Clone, Copy, Debug)]
struct UpGeometry {
    batch: usize,
    c_in: usize,
    c_out: usize,
    d: usize,
    h: usize,
    w: usize,
    kernel_d: usize,
}

impl UpGeometry {
    /// The sizes of `x [N, C_in, D, H, W]` upsampled with `weight [C_in, C_out, k, 2, 2]`, both
    /// f32 and non-empty; `None` for anything else.
    fn of(x: &FlexTensor, weight: &FlexTensor) -> Option<Self> {
        let xs = x.layout().shape();
        let ws = weight.layout().shape();
        let f32s = x.dtype() == DType::F32 && weight.dtype() == DType::F32;
        let fits = f32s && xs.num_dims() == 5 && ws.num_dims() == 5 && xs[1] == ws[0];
        let kernel = fits && matches!(ws[2], 1 | 2) && ws[3] == 2 && ws[4] == 2;
        let nonempty = kernel && (0..5).all(|i| xs[i] > 0 && ws[i] > 0);
        nonempty.then(|| Self {
            batch: xs[0],
            c_in: xs[1],
            c_out: ws[1],
            d: xs[2],
            h: xs[3],
            w: xs[4],
            kernel_d: ws[2],
        })
    }

    /// The sizes from `weight [C_in, C_out, k, 2, 2]` and the output's gradient
    /// `[N, C_out, k·D, 2H, 2W]`, both f32 and non-empty; `None` for anything else.
    fn of_grad(weight: &FlexTensor, grad: &FlexTensor) -> Option<Self> {
        let gs = grad.layout().shape();
        let ws = weight.layout().shape();
        let f32s = grad.dtype() == DType::F32 && weight.dtype() == DType::F32;
        let fits = f32s && gs.num_dims() == 5 && ws.num_dims() == 5 && gs[1] == ws[1];
        let kernel = fits && matches!(ws[2], 1 | 2) && ws[3] == 2 && ws[4] == 2;
        let even = kernel
            && gs[2].is_multiple_of(ws[2])
            && gs[3].is_multiple_of(2)
            && gs[4].is_multiple_of(2);
        let nonempty = even && (0..5).all(|i| gs[i] > 0 && ws[i] > 0);
        nonempty.then(|| Self {
            batch: gs[0],
            c_in: ws[0],
            c_out: ws[1],
            d: gs[2] / ws[2],
            h: gs[3] / 2,
            w: gs[4] / 2,
            kernel_d: ws[2],
        })
    }

    /// Block offsets per input voxel: 8, or 4 in-plane.
    fn offsets(&self) -> usize {
        4 * self.kernel_d
    }

    /// Voxels in one channel of the input.
    fn voxels(&self) -> usize {
        self.d * self.h * self.w
    }

    /// The output's spatial size.
    fn out_size(&self) -> [usize; 3] {
        [self.kernel_d * self.d, 2 * self.h, 2 * self.w]
    }

    /// `weight [C_in, C_out, k, 2, 2]` (contiguous) as the matrix `[C_in, C_out·offsets]`.
    fn weight_matrix<'a>(&self, weight: &'a [f32]) -> Matrix<'a> {
        let cols = self.c_out * self.offsets();
        Matrix::rows(weight, self.c_in, cols, cols)
    }

    /// The output's gradient `[N, C_out, k·D, 2H, 2W]` de-interleaved to
    /// `[N, C_out·offsets, voxels]` (row `(o, a, b, c)`).
    fn grad_rows(&self, grad: FlexTensor) -> Vec<f32> {
        with_planes(&grad, |planes| deinterleave(planes, self))
    }

    /// For row `(z', y')` of one output channel: the rows of its two width offsets in that
    /// channel's products `[offsets, V]`, and where in them the row's input voxels start.
    fn source_rows(&self, row: usize) -> ([usize; 2], usize) {
        let oh = 2 * self.h;
        let (y2, z2) = (row % oh, row / oh);
        let (a, z) = match self.kernel_d {
            2 => (z2 % 2, z2 / 2),
            _ => (0, z2),
        };
        let (b, y) = (y2 % 2, y2 / 2);
        let first = (a * 2 + b) * 2 * self.voxels();
        ([first, first + self.voxels()], (z * self.h + y) * self.w)
    }
}

/// The products `P [N, C_out·offsets, V]` (row `(o, a, b, c)`) written into the output
/// `[N, C_out, k·D, 2H, 2W]`: output voxel `(k·z + a, 2y + b, 2x + c)` of channel o is input
/// voxel `(z, y, x)` of row `(o, a, b, c)`.
fn interleave(p: &[f32], geo: &UpGeometry) -> Vec<f32> {
    let (w, channel) = (geo.w, geo.offsets() * geo.voxels());
    // Every output row is two source rows interleaved: all of `out` is written.
    written(p.len(), |out| {
        out.par_chunks_mut(channel)
            .zip(p.par_chunks(channel))
            .for_each(|(out, p)| {
                for (row, dst) in out.chunks_exact_mut(2 * w).enumerate() {
                    let ([even, odd], at) = geo.source_rows(row);
                    let (even, odd) = (&p[even + at..even + at + w], &p[odd + at..odd + at + w]);
                    let dst = &mut dst[..2 * w];
                    for x in 0..w {
                        dst[2 * x].write(even[x]);
                        dst[2 * x + 1].write(odd[x]);
                    }
                }
            });
    })
}

/// The inverse of [`interleave`]: the output's gradient `[N, C_out, k·D, 2H, 2W]`, given as its
/// planes, as `[N, C_out·offsets, V]`.
fn deinterleave(grad: &[&[f32]], geo: &UpGeometry) -> Vec<f32> {
    let (w, channel) = (geo.w, geo.offsets() * geo.voxels());
    // The source rows of all output rows cover each channel's rows once: all of `g` is written.
    written(grad.len() * channel, |g| {
        g.par_chunks_mut(channel.max(1))
            .zip(grad.par_iter())
            .for_each(|(g, grad)| {
                if grad.len() != g.len() {
                    // Not the geometry's plane (never from autodiff): no gradient.
                    g.iter_mut().for_each(|v| _ = v.write(0.0));
                    return;
                }
                for (row, src) in grad.chunks_exact(2 * w).enumerate() {
                    let ([even, odd], at) = geo.source_rows(row);
                    let src = &src[..2 * w];
                    let even = &mut g[even + at..even + at + w];
                    for x in 0..w {
                        even[x].write(src[2 * x]);
                    }
                    let odd = &mut g[odd + at..odd + at + w];
                    for x in 0..w {
                        odd[x].write(src[2 * x + 1]);
                    }
                }
            });
    })
}
