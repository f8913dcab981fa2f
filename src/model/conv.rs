//! The U-Net's 3×3×3 convolutions with padding 1 (both convolutions of every residual block,
//! stride 1, and the downsamplings, stride 2; the single-slice form's 1×3×3 alike) on burn's CPU
//! backend by a faster route than burn-flex's generic convolution, with a backward pass of their
//! own; its 1×1×1 convolutions (skip projections, heads) as matrix products. On burn's GPU
//! backend (wgpu) the same 3×3 convolutions go through the same extension to burn's convolution
//! and input gradient, and the weight gradient of [`super::conv_gpu`]; other convolutions keep
//! burn's `Conv3d::forward`.
//!
//! The route: each input channel is zero-padded by one voxel, and the output is computed in
//! tiles of output rows. At stride 1 a tile's columns are positions on the padded grid, so each
//! tap of a tile is one contiguous run of the padded input; outputs on the padding (the last two
//! of each row, the last two rows of each plane) are computed and dropped. On a CPU with AVX2 or
//! AVX-512 (optimised builds, see [`with_direct_kernels`]) the direct kernels of
//! [`super::conv_simd`] compute a stride-1 tile and its share of the weight gradient from those
//! runs; a 3×3×3 stride-2 convolution takes them too, over the padded input split into its 8
//! parity phases (in which each tap is a phase shifted by 0 or 1 voxel: a stride-1 problem).
//! Otherwise (and for the single-slice form's stride 2) a tile gets its im2col matrix (row
//! `c·27 + k`: channel c read at tap k for each column) by copying runs, and one matrix product
//! (burn-flex's gemm)
//! with the kernel gives the tile, the weight gradient being the output gradient of each tile
//! times its im2col matrix, summed. The input gradient at stride 1 is the same convolution of
//! the output gradient with the flipped kernel, at stride 2 burn's (a transposed convolution).
//! Under autodiff the forward pass keeps its padded (or phased) input instead of x, which the
//! weight gradient reads again; at stride 1 the backward pass pads the output gradient once, for
//! the input gradient, and the weight gradient reads that padded copy in place (its padding
//! holds the zeros a tile's gathered copy otherwise has).
//! burn-flex gathers each output voxel's patch element by element, and takes the weight gradient
//! as a convolution whose kernel is the whole output gradient, copying a batch's few elements at
//! a time.
//!
//! Invariants: the results equal burn's `conv3d` and its gradients to float rounding
//! (`tests/model.rs` compares all three at both strides, by both routes); f32 on the CPU (other
//! dtypes take burn's path); on the GPU f32, or f16/bf16 features with f32 weights (a
//! mixed-precision step: the kernels sum in f32, the weight gradient comes out f32); the extension is only called on the CPU and GPU backends, with or
//! without autodiff ([`conv3d_forward`] checks).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::flex::FlexTensor;
use burn::backend::ops::{ConvOptions, ConvTransposeOptions, FloatTensorOps, ModuleOps};
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex, TensorMetadata};
use burn::nn::conv::Conv3d;
use burn::nn::PaddingConfig3d;
use burn::prelude::*;
use burn::tensor::{DType, TensorData};
use rayon::prelude::*;
use std::cell::{Cell, RefCell};
use std::mem::MaybeUninit;

use super::conv_gpu_direct::in_type;
use super::conv_simd::{self, GradInput, Isa, PackedKernel, TileInput};

/// Columns (output positions) of one tile's im2col matrix aim at this many floats in all, so
/// that the matrix stays in the core's cache.
const TILE_FLOATS: usize = 1 << 18;
/// The widest tile, in output positions.
const TILE_MAX_COLS: usize = 4096;

/// Backends with a 3×3×3 (or 1×3×3), padding-1 convolution (no bias, one stride for all three
/// axes) of their own; the defaults are burn's generic convolution and its gradients.
#[backend_extension(Flex, Cube, Fusion, Autodiff)]
pub trait Conv3x3Backend: Backend {
    /// `x [N, C_in, D, H, W]` and `weight [C_out, C_in, 3, 3, 3]` → `[N, C_out, D', H', W']`
    /// (`D' = (D − 1) / stride + 1`).
    #[fusion(dtype = x, shape = conv3x3_out_shape(x, weight, stride))]
    fn conv3x3(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: usize,
    ) -> FloatTensor<Self> {
        let options = options(&weight, stride);
        Self::conv3d(x, weight, None, options)
    }

    /// [`Conv3x3Backend::conv3x3`] for a backward pass: the output, and what the backward
    /// pass reads of `x` (the default: `x` itself; burn's CPU backend: the padded copy its
    /// kernels read, which the weight gradient reads again).
    #[fusion(default)]
    fn conv3x3_keeping(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        (Self::conv3x3(x.clone(), weight, stride), x)
    }

    /// The gradients of [`Conv3x3Backend::conv3x3`] with respect to `x [x_dims]` and `weight`
    /// (each where `wanted`), given the output's and what
    /// [`Conv3x3Backend::conv3x3_keeping`] kept of `x`.
    #[fusion(default)]
    fn conv3x3_grads(
        kept: FloatTensor<Self>,
        x_dims: [usize; 5],
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        stride: usize,
        wanted: [bool; 2],
    ) -> (Option<FloatTensor<Self>>, Option<FloatTensor<Self>>) {
        let x = kept;
        debug_assert_eq!(x.shape().dims::<5>(), x_dims, "the default keeps x");
        let x_grad = wanted[0]
            .then(|| Self::conv3x3_input_grad(x.clone(), weight.clone(), grad.clone(), stride));
        let weight_grad = wanted[1].then(|| Self::conv3x3_weight_grad(x, weight, grad, stride));
        (x_grad, weight_grad)
    }

    /// The gradient of [`Conv3x3Backend::conv3x3`] with respect to `x` (read for its sizes),
    /// given the output's gradient (the default: burn's; the GPU's: [`super::conv_gpu_direct`]
    /// for small convolutions).
    #[fusion(dtype = x, shape = x)]
    fn conv3x3_input_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        stride: usize,
    ) -> FloatTensor<Self> {
        let options = options(&weight, stride);
        Self::conv3d_x_backward(x, weight, grad, options)
    }

    /// The gradient of [`Conv3x3Backend::conv3x3`] with respect to its `weight`, given `x` and
    /// the output's gradient (the default: burn's; the GPU's: [`super::conv_gpu`]).
    #[fusion(dtype = weight, shape = weight)]
    fn conv3x3_weight_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        stride: usize,
    ) -> FloatTensor<Self> {
        let options = options(&weight, stride);
        Self::conv3d_weight_backward(x, weight, grad, options)
    }
}

/// burn's GPU backend: small convolutions and their input gradients by the direct kernels of
/// [`super::conv_gpu_direct`] (one launch each, in the network's layout), larger ones by
/// burn's; every weight gradient by [`super::conv_gpu`] (one kernel where burn's takes ~30
/// launches and 27 copies of x). x may be f16 or bf16 (a mixed-precision step) with an f32
/// weight: the kernels read both, sum in f32, and give x's type forward and backward and the
/// weight gradient in f32; burn's route meets the weight cast to x's type.
impl Conv3x3Backend for burn_cubecl::CubeBackend {
    fn conv3x3(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: usize,
    ) -> FloatTensor<Self> {
        super::conv_gpu_direct::forward(&x, &weight, stride).unwrap_or_else(|| {
            let options = options(&weight, stride);
            let weight = in_type(weight, x.dtype);
            Self::conv3d(x, weight, None, options)
        })
    }

    fn conv3x3_input_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        stride: usize,
    ) -> FloatTensor<Self> {
        let x_dims = x.shape().dims::<5>();
        // The output's gradient in the output's (x's) type, as the kernels read it.
        let grad = in_type(grad, x.dtype);
        super::conv_gpu_direct::input_gradient(&weight, &grad, x_dims, stride).unwrap_or_else(
            || {
                let options = options(&weight, stride);
                let weight = in_type(weight, x.dtype);
                Self::conv3d_x_backward(x, weight, grad, options)
            },
        )
    }

    fn conv3x3_weight_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        stride: usize,
    ) -> FloatTensor<Self> {
        let grad = in_type(grad, x.dtype);
        super::conv_gpu::weight_gradient(&x, &weight, &grad, stride).unwrap_or_else(|| {
            let options = options(&weight, stride);
            let weight_dtype = weight.dtype;
            let weight = in_type(weight, x.dtype);
            in_type(
                Self::conv3d_weight_backward(x, weight, grad, options),
                weight_dtype,
            )
        })
    }
}

/// The output sizes of [`Conv3x3Backend::conv3x3`] of an input of sizes `x` by a kernel of
/// sizes `weight` at `stride` (for burn's fusion).
fn conv3x3_out_shape(x: &Shape, weight: &Shape, stride: &usize) -> Shape {
    let (xs, ws) = (x.dims::<5>(), weight.dims::<5>());
    let [d, h, w] = conv3x3_out_size([xs[2], xs[3], xs[4]], ws[2], *stride);
    Shape::new([xs[0], ws[0], d, h, w])
}

/// The output's `[D', H', W']` of a padding-1 convolution of an input of `in_size` by a
/// `kernel_d`×3×3 kernel at `stride` (in-plane only for a 1×3×3 kernel, as in [`options`]).
pub(super) fn conv3x3_out_size(in_size: [usize; 3], kernel_d: usize, stride: usize) -> [usize; 3] {
    let options = options_for(kernel_d, stride);
    let kernel = [kernel_d, 3, 3];
    std::array::from_fn(|a| {
        let (before, after) = options.padding[a];
        (in_size[a] + before + after - kernel[a]) / options.stride[a] + 1
    })
}

/// `stride` along every axis (in-plane only for a 1×3×3 `weight`, whose strided form runs on
/// one slice, where a depth stride changes nothing — and burn's GPU input gradient errs with
/// one), padding 1 (0 along the depth of a 1×3×3 `weight`), no dilation, one group.
fn options<T: TensorMetadata>(weight: &T, stride: usize) -> ConvOptions<3> {
    options_for(weight.shape().dims::<5>()[2], stride)
}

/// [`options`] for a kernel `kernel_d` deep.
fn options_for(kernel_d: usize, stride: usize) -> ConvOptions<3> {
    let pad_d = kernel_d / 2;
    let stride_d = if pad_d == 0 { 1 } else { stride };
    ConvOptions::new([stride_d, stride, stride], [pad_d, 1, 1], [1, 1, 1], 1)
}

/// `conv` applied to `x`. On burn's CPU backend (f32) and on its GPU backend (f32, or f16 and
/// bf16 features with the f32 weights) a 3×3×3, padding-1 convolution of stride 1 or 2 (and the
/// single-slice form's 1×3×3) runs as [`Conv3x3Backend::conv3x3`] (its bias, where it has one,
/// added in x's type: in half precision its gradient is summed by burn in half precision, as
/// autocast's is); a 1×1×1 one on the CPU as a matrix product (burn-flex takes its weight
/// gradient as a convolution with the whole output gradient for kernel, 4× slower), on the GPU
/// with its bias through `pointwise_gpu`; everything else, and every other backend, runs burn's
/// convolution (in half precision with the weights cast to x's type).
pub fn conv3d_forward(conv: &Conv3d, x: Tensor<5>) -> Tensor<5> {
    if let Some(budget) = super::pieces::conv3d_cut_budget(conv, &x) {
        return super::pieces::conv3d_in_pieces(conv, x, budget);
    }
    conv3d_whole(conv, x)
}

/// [`conv3d_forward`] in one piece, whatever its size (what each of `model::pieces`' pieces
/// runs).
pub(super) fn conv3d_whole(conv: &Conv3d, x: Tensor<5>) -> Tensor<5> {
    let on_gpu = on_gpu_features(&x);
    let plain = conv.dilation == [1, 1, 1] && conv.groups == 1;
    // The CPU's kernels read f32 only.
    let on_cpu = x.device().inner() == Device::flex() && !super::precision::is_half(&x);
    if !plain || !(on_cpu || on_gpu) {
        return conv_as_burns(conv, x);
    }
    match (conv.kernel_size, &conv.padding, conv.stride) {
        ([3, 3, 3], PaddingConfig3d::Explicit(1, 1, 1), [s, t, u])
            if s == t && t == u && s <= 2 =>
        {
            block_conv(conv, x, s)
        }
        // The single-slice form's in-plane kernel: a stride along the depth axis of one slice
        // changes nothing, so one stride serves all three axes there.
        ([1, 3, 3], PaddingConfig3d::Explicit(0, 1, 1), [1, s, t])
            if s == t && (s == 1 || (s == 2 && x.dims()[2] == 1)) =>
        {
            block_conv(conv, x, s)
        }
        ([1, 1, 1], PaddingConfig3d::Valid | PaddingConfig3d::Explicit(0, 0, 0), [1, 1, 1])
            if on_cpu =>
        {
            pointwise_conv(conv, x)
        }
        ([1, 1, 1], PaddingConfig3d::Valid | PaddingConfig3d::Explicit(0, 0, 0), [1, 1, 1]) => {
            pointwise_gpu_conv(conv, x)
        }
        _ => conv_as_burns(conv, x),
    }
}

/// `conv` applied to `x` by burn's convolution: `Conv3d::forward`, or for a half-precision `x`
/// with the weights cast to its type ([`super::precision::conv3d_in_dtype_of_input`]).
fn conv_as_burns(conv: &Conv3d, x: Tensor<5>) -> Tensor<5> {
    match super::precision::is_half(&x) {
        true => super::precision::conv3d_in_dtype_of_input(conv, x),
        false => conv.forward(x),
    }
}

/// `conv` applied to `x` without its bias, for a convolution whose output goes straight into a
/// per-plane normalisation: an instance norm subtracts each item's and channel's mean, which
/// takes a per-channel constant with it, so the output is the same to float rounding and the
/// bias's exact gradient is zero. Left out are the bias's broadcast add forward, and backward
/// its reduction and its optimiser update (on a GPU step, launches). The bias stays a
/// parameter (a checkpoint keeps its shape; a network whose blocks change keeps working) and
/// gets no gradient, so an optimiser leaves it as it is.
pub fn conv3d_forward_before_norm(conv: &Conv3d, x: Tensor<5>) -> Tensor<5> {
    if conv.bias.is_none() {
        return conv3d_forward(conv, x);
    }
    let mut unbiased = conv.clone();
    unbiased.bias = None;
    conv3d_forward(&unbiased, x)
}

/// Whether `x` is on burn's GPU backend in a type this module's GPU kernels read and write
/// (f32, or f16 and bf16 in a mixed-precision step: the weights stay f32 and the sums f32).
fn on_gpu_features(x: &Tensor<5>) -> bool {
    super::conv_gpu::on_gpu(&x.device()) && super::conv_gpu_direct::is_feature_type(x.dtype())
}

/// `bias` (f32) in the float type of `out`, to be added to it.
fn bias_like(bias: Tensor<1>, out: &Tensor<5>) -> Tensor<1> {
    super::precision::cast_to(bias, super::precision::float_dtype_of(out))
}

/// A 3×3×3 (or 1×3×3), padding-1 `conv` of `stride` through the backend extension, then its
/// bias.
fn block_conv(conv: &Conv3d, x: Tensor<5>, stride: usize) -> Tensor<5> {
    let weight = conv.weight.val().into_dispatch();
    let out = Tensor::<5>::from_dispatch(<Dispatch as Conv3x3Backend>::conv3x3(
        x.into_dispatch(),
        weight,
        stride,
    ));
    match &conv.bias {
        Some(bias) => {
            let bias = bias_like(bias.val(), &out);
            super::bias::add_channel_bias(out, bias)
        }
        None => out,
    }
}

/// A 1×1×1 `conv` through [`super::pointwise::PointwiseBackend`], then its bias.
fn pointwise_conv(conv: &Conv3d, x: Tensor<5>) -> Tensor<5> {
    use super::pointwise::PointwiseBackend;
    let weight = conv.weight.val().into_dispatch();
    let out = Tensor::<5>::from_dispatch(<Dispatch as PointwiseBackend>::pointwise(
        x.into_dispatch(),
        weight,
    ));
    match &conv.bias {
        Some(bias) => super::bias::add_channel_bias(out, bias.val()),
        None => out,
    }
}

/// A 1×1×1 `conv` with a bias on burn's GPU backend through [`super::biased_gpu`]
/// (`pointwise_gpu`'s kernels) where it fits, `Conv3d::forward` otherwise.
fn pointwise_gpu_conv(conv: &Conv3d, x: Tensor<5>) -> Tensor<5> {
    use super::biased_gpu::{biased_layer, BiasedLayer};
    use super::pointwise_gpu::fits;
    let weight = conv.weight.val();
    let Some(bias) = conv.bias.as_ref().map(|b| b.val()) else {
        return conv_as_burns(conv, x);
    };
    // x f32, f16 or bf16 (the caller's `on_gpu_features`).
    let f32s = weight.dtype() == DType::F32 && bias.dtype() == DType::F32;
    if !f32s || !fits(x.dims(), weight.dims()[0]) {
        return conv_as_burns(conv, x);
    }
    biased_layer(BiasedLayer::Pointwise, x, weight, bias)
}

/// The backward pass of [`Conv3x3Backend::conv3x3`] under autodiff.
#[derive(Debug)]
struct Conv3x3Backward;

impl<B: Conv3x3Backend> Backward<B, 2> for Conv3x3Backward {
    /// What the forward pass kept of x, x's sizes, the weight, the stride.
    type State = (B::FloatTensorPrimitive, [usize; 5], NodeId, usize);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_weight] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (kept, x_dims, weight_state, stride) = ops.state;
        let weight = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(weight_state);
        let wanted = [node_x.is_some(), node_weight.is_some()];
        let (x_grad, weight_grad) = B::conv3x3_grads(kept, x_dims, weight, grad, stride, wanted);
        if let (Some(node), Some(x_grad)) = (node_x, x_grad) {
            grads.register::<B>(node.id, x_grad);
        }
        if let (Some(node), Some(weight_grad)) = (node_weight, weight_grad) {
            grads.register::<B>(node.id, weight_grad);
        }
    }
}

impl<B: Conv3x3Backend, C: CheckpointStrategy> Conv3x3Backend for Autodiff<B, C> {
    fn conv3x3(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        stride: usize,
    ) -> FloatTensor<Self> {
        let prepared = Conv3x3Backward
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful();
        match prepared {
            OpsKind::Tracked(mut prep) => {
                let weight_state = prep.checkpoint(&weight);
                let x_dims = x.shape().dims::<5>();
                let (out, kept) =
                    B::conv3x3_keeping(x.into_primitive(), weight.into_primitive(), stride);
                prep.finish((kept, x_dims, weight_state, stride), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::conv3x3(
                x.into_primitive(),
                weight.into_primitive(),
                stride,
            )),
        }
    }
}

impl Conv3x3Backend for Flex {
    fn conv3x3(x: FlexTensor, weight: FlexTensor, stride: usize) -> FlexTensor {
        Self::conv3x3_keeping(x, weight, stride).0
    }

    fn conv3x3_keeping(
        x: FlexTensor,
        weight: FlexTensor,
        stride: usize,
    ) -> (FlexTensor, FlexTensor) {
        let Some(geo) = Geometry::of(&x, &weight, stride) else {
            let options = options(&weight, stride);
            return (Flex::conv3d(x.clone(), weight, None, options), x);
        };
        let input = kernel_input(x.to_contiguous().storage::<f32>(), &geo);
        let out = correlate(&input, &Kernel::new(weight, &geo, false), &geo);
        let [d, h, w] = geo.out_size();
        let out = flex_f32(out, [geo.batch, geo.c_out, d, h, w]);
        (out, kept_tensor(input, geo.phased))
    }

    fn conv3x3_grads(
        kept: FlexTensor,
        x_dims: [usize; 5],
        weight: FlexTensor,
        grad: FlexTensor,
        stride: usize,
        wanted: [bool; 2],
    ) -> (Option<FlexTensor>, Option<FlexTensor>) {
        let geo = kept_layout(&kept).and_then(|phased| {
            let geo = Geometry::of_dims(x_dims, &weight, stride)?;
            Some(Geometry { phased, ..geo })
        });
        let Some(geo) = geo else {
            // The fallback route kept x itself.
            let options = options(&weight, stride);
            let x_grad = wanted[0].then(|| {
                Flex::conv3d_x_backward(kept.clone(), weight.clone(), grad.clone(), options.clone())
            });
            let weight_grad =
                wanted[1].then(|| Flex::conv3d_weight_backward(kept, weight, grad, options));
            return (x_grad, weight_grad);
        };
        let grad_values = grad.to_contiguous();
        let plain = grad_values.storage::<f32>();
        // At stride 1 the input gradient pads the output's, which the weight gradient then
        // reads in place.
        let padded =
            (wanted[0] && geo.stride == 1).then(|| pad_volumes(plain, geo.batch * geo.c_out, &geo));
        let x_grad = wanted[0].then(|| match &padded {
            Some(padded) => input_gradient(padded, weight.clone(), &geo),
            None => strided_x_grad(plain, &weight, &geo)
                .unwrap_or_else(|| transposed_x_grad(x_dims, weight.clone(), grad.clone(), stride)),
        });
        let weight_grad = wanted[1].then(|| {
            let input = kept.storage::<f32>();
            let grad = OutputGrad {
                plain,
                padded: padded.as_deref(),
            };
            let sum = weight_gradient(input, grad, &geo);
            flex_f32(sum, [geo.c_out, geo.c_in, geo.kernel_d, 3, 3])
        });
        (x_grad, weight_grad)
    }
}

/// What [`Conv3x3Backend::conv3x3_keeping`] keeps of x on the direct route: the kernels' input
/// ([`kernel_input`]) as a tensor whose rank tells its layout (`[len]` padded, `[1, len]`
/// phased; the fallback route keeps x itself, of rank 5).
fn kept_tensor(values: Vec<f32>, phased: bool) -> FlexTensor {
    let len = values.len();
    match phased {
        false => flex_f32(values, [len]),
        true => flex_f32(values, [1, len]),
    }
}

/// Whether a kept tensor ([`kept_tensor`]) holds phased volumes; `None` if it is x itself.
fn kept_layout(kept: &FlexTensor) -> Option<bool> {
    match kept.layout().shape().num_dims() {
        1 => Some(false),
        2 => Some(true),
        _ => None,
    }
}

/// The input's gradient at stride 1, from the output's padded gradient `[N, C_out, padded
/// volume]`: the output's gradient correlated with the flipped kernel, channels swapped (a
/// convolution from C_out channels to C_in).
fn input_gradient(padded_grad: &[f32], weight: FlexTensor, geo: &Geometry) -> FlexTensor {
    let back = Geometry {
        c_in: geo.c_out,
        c_out: geo.c_in,
        ..*geo
    };
    let kernel = Kernel::new(weight, geo, true);
    let out = correlate(padded_grad, &kernel, &back);
    flex_f32(out, [geo.batch, geo.c_in, geo.d, geo.h, geo.w])
}

/// The input's gradient of a stride-2 3×3×3 convolution by the direct kernels
/// ([`super::strided_grad`]) from the output's gradient `grad` (contiguous values); `None`
/// where they do not serve it (no direct kernels here, the single-slice form's kernel).
fn strided_x_grad(grad: &[f32], weight: &FlexTensor, geo: &Geometry) -> Option<FlexTensor> {
    use super::strided_grad::{input_gradient, StridedGrad};
    let isa = direct_kernels().filter(|_| geo.stride == 2 && geo.kernel_d == 3)?;
    let strided = StridedGrad {
        batch: geo.batch,
        c_in: geo.c_in,
        c_out: geo.c_out,
        size: [geo.d, geo.h, geo.w],
    };
    let weight = weight.to_contiguous();
    let x_grad = input_gradient(isa, grad, weight.storage::<f32>(), &strided)?;
    Some(flex_f32(x_grad, [geo.batch, geo.c_in, geo.d, geo.h, geo.w]))
}

/// The input's gradient of a strided convolution: burn's transposed convolution of the
/// output's gradient, padded out to x's sizes (what burn's `conv3d_x_backward` does, reading
/// nothing of x but its sizes).
fn transposed_x_grad(
    x_dims: [usize; 5],
    weight: FlexTensor,
    grad: FlexTensor,
    stride: usize,
) -> FlexTensor {
    let padding = options(&weight, stride).padding_begin();
    let kernel = weight.layout().shape();
    let out = grad.layout().shape();
    let padding_out: [usize; 3] = std::array::from_fn(|i| {
        let covered = (out[2 + i] - 1) * stride + kernel[2 + i];
        x_dims[2 + i].saturating_sub(covered.saturating_sub(2 * padding[i]))
    });
    let options = ConvTransposeOptions::new([stride; 3], padding, padding_out, [1; 3], 1);
    Flex::conv_transpose3d(grad, weight, None, options)
}

/// A contiguous f32 tensor of `shape` holding `values`.
pub(super) fn flex_f32<const D: usize>(values: Vec<f32>, shape: [usize; D]) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

/// `f` of the planes of an f32 tensor `[N, C, …]` (item n's channel c at `n·C + c`): read in
/// place where each is contiguous in the storage ([`planes`]), from a contiguous copy otherwise.
pub(super) fn with_planes<R>(t: &FlexTensor, f: impl FnOnce(&[&[f32]]) -> R) -> R {
    if let Some(planes) = planes(t) {
        return f(&planes);
    }
    let copy = t.to_contiguous();
    let plane: usize = copy.layout().shape().iter().skip(2).product();
    let planes: Vec<&[f32]> = copy.storage::<f32>().chunks(plane.max(1)).collect();
    f(&planes)
}

/// The planes of an f32 tensor `[N, C, …]` (item n's channel c at `n·C + c`) as slices of its
/// storage, when each plane is contiguous there: a contiguous tensor, or one narrowed along its
/// channels as a concatenation's gradient is (read in place instead of copied whole on one
/// core). `None` otherwise.
fn planes(t: &FlexTensor) -> Option<Vec<&[f32]>> {
    let layout = t.layout();
    let dims = layout.shape().to_vec();
    let strides = layout.strides();
    if dims.len() < 2 || strides.len() != dims.len() || t.dtype() != DType::F32 {
        return None;
    }
    let plane: usize = dims[2..].iter().product();
    let mut expected = 1isize;
    for i in (2..dims.len()).rev() {
        if dims[i] > 1 && strides[i] != expected {
            return None;
        }
        expected = expected.checked_mul(isize::try_from(dims[i]).ok()?)?;
    }
    let [s0, s1] = [0, 1].map(|i| usize::try_from(strides[i]).ok());
    let (s0, s1) = (s0?, s1?);
    let storage = t.storage::<f32>();
    (0..dims[0] * dims[1])
        .map(|i| {
            let start = (i / dims[1])
                .checked_mul(s0)?
                .checked_add((i % dims[1]).checked_mul(s1)?)?
                .checked_add(layout.start_offset())?;
            storage.get(start..start.checked_add(plane)?)
        })
        .collect()
}

/// The sizes of one 3×3×3 convolution with padding 1.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    batch: usize,
    c_in: usize,
    c_out: usize,
    d: usize,
    h: usize,
    w: usize,
    stride: usize,
    /// The kernel's depth: 3, or 1 for the single-slice form's 1×3×3 (no depth padding).
    kernel_d: usize,
    /// A stride-2 3×3×3 convolution on the direct kernels' route: the padded input is split
    /// into its 8 parity phases ([`phase_volumes`]), in which the convolution is a stride-1
    /// one over the phase grid (see [`Geometry::grid`]).
    phased: bool,
}

/// A run of output rows of one batch item. At stride 1 (and phased stride 2) rows are the
/// `(z, y)` pairs of the grid ([`Geometry::grid`]), `row = z·(H+2) + y` (phased: `z·(H'+1) +
/// y`), of which those with `y ≥ H` (`H'`) lie on the padding; at unphased stride 2 they are the
/// output's own rows, `row = z'·H' + y'`.
#[derive(Clone, Copy, Debug)]
struct Tile {
    item: usize,
    first_row: usize,
    end_row: usize,
}

impl Geometry {
    /// The sizes of `x [N, C_in, D, H, W]` convolved with `weight [C_out, C_in, 3, 3, 3]` (or
    /// `1, 3, 3`) at `stride` 1 or 2, both f32; `None` for anything else.
    fn of(x: &FlexTensor, weight: &FlexTensor, stride: usize) -> Option<Self> {
        let xs = x.layout().shape();
        let five = x.dtype() == DType::F32 && xs.num_dims() == 5;
        five.then(|| Self::of_dims(std::array::from_fn(|i| xs[i]), weight, stride))?
    }

    /// [`Geometry::of`] an f32 x of `x_dims`.
    fn of_dims(xs: [usize; 5], weight: &FlexTensor, stride: usize) -> Option<Self> {
        let ws = weight.layout().shape();
        let fits = weight.dtype() == DType::F32 && (1..=2).contains(&stride) && ws.num_dims() == 5;
        let kernel3 = fits && xs[1] == ws[1] && matches!(ws[2], 1 | 3) && ws[3] == 3 && ws[4] == 3;
        // A 1×3×3 kernel strides only in-plane: one slice deep, a depth stride changes nothing.
        let flat_ok = kernel3 && (ws[2] == 3 || stride == 1 || xs[2] == 1);
        let nonempty = kernel3 && flat_ok && (0..5).all(|i| xs[i] > 0 && ws[i] > 0);
        nonempty.then(|| Self {
            batch: xs[0],
            c_in: xs[1],
            c_out: ws[0],
            d: xs[2],
            h: xs[3],
            w: xs[4],
            stride,
            kernel_d: ws[2],
            // The phase grid's extra row, column and plane cost under half the work from an
            // output of 8³ up; below it the im2col route is faster.
            phased: stride == 2
                && ws[2] == 3
                && (2..5).all(|i| xs[i].div_ceil(2) >= 8)
                && direct_kernels().is_some(),
        })
    }

    /// Kernel taps: 27, or 9 for a 1×3×3 kernel.
    fn taps(&self) -> usize {
        9 * self.kernel_d
    }

    /// Padding along the depth axis: 1, or 0 for a 1×3×3 kernel.
    fn pad_d(&self) -> usize {
        self.kernel_d / 2
    }

    /// The output's spatial size (the same along the depth for both kernels: `(D + 2·pad − k) / s
    /// + 1` is `(D − 1) / s + 1` for k = 3, pad 1 and for k = 1, pad 0).
    fn out_size(&self) -> [usize; 3] {
        [self.d, self.h, self.w].map(|n| (n - 1) / self.stride + 1)
    }

    /// Voxels in one channel of the output.
    fn out_volume(&self) -> usize {
        self.out_size().iter().product()
    }

    /// Voxels per row and per plane of the padded grid, and in the padded volume.
    fn padded(&self) -> (usize, usize, usize) {
        let row = self.w + 2;
        let plane = (self.h + 2) * row;
        (row, plane, (self.d + 2 * self.pad_d()) * plane)
    }

    /// Offsets in the grid's channel of the kernel taps (depth, height, width in C order; the
    /// first nine of a 1×3×3 kernel). Phased: tap `(a, b, c)` reads phase `(a, b, c) mod 2`
    /// shifted by `(a, b, c) div 2`.
    fn tap_offsets(&self) -> [usize; 27] {
        let (row, plane, volume) = self.grid();
        match self.phased {
            false => std::array::from_fn(|k| (k / 9) * plane + (k / 3 % 3) * row + k % 3),
            true => std::array::from_fn(|k| {
                let (a, b, c) = (k / 9, k / 3 % 3, k % 3);
                let phase = (a % 2) * 4 + (b % 2) * 2 + c % 2;
                phase * (volume / 8) + (a / 2) * plane + (b / 2) * row + c / 2
            }),
        }
    }

    /// The grid the direct kernels and stride-1 tiles compute over: voxels per row, per plane
    /// and per channel. Stride 1: the padded volume. Phased: one phase of the padded volume,
    /// `(D'+1)·(H'+1)·(W'+1)`, eight of them per channel. (Unphased stride 2: the padded
    /// volume, though its tiles' columns are output voxels.)
    fn grid(&self) -> (usize, usize, usize) {
        match self.phased {
            false => self.padded(),
            true => {
                let [d, h, w] = self.out_size();
                let plane = (h + 1) * (w + 1);
                (w + 1, plane, 8 * (d + 1) * plane)
            }
        }
    }

    /// Whether tiles compute over [`Geometry::grid`] (stride 1, or phased).
    fn on_grid(&self) -> bool {
        self.stride == 1 || self.phased
    }

    /// Tile rows in one batch item and columns per row (see [`Tile`]); on the grid up to the
    /// last output row (the last plane's padding rows are no tile's).
    fn rows(&self) -> (usize, usize) {
        let [d, h, w] = self.out_size();
        let (row, plane, _) = self.grid();
        match self.on_grid() {
            true => ((d - 1) * (plane / row) + h, row),
            false => (d * h, w),
        }
    }

    /// Every batch item's output rows, in tiles of about `TILE_FLOATS / (taps·C_in)` columns
    /// (an im2col matrix that stays in the core's cache).
    fn tiles(&self) -> Vec<Tile> {
        let (_, row) = self.rows();
        let cols = (TILE_FLOATS / (self.taps() * self.c_in)).clamp(row, TILE_MAX_COLS.max(row));
        self.tiles_of(cols)
    }

    /// Every batch item's output rows in tiles of up to `TILE_MAX_COLS` columns, but no more
    /// columns than make `parts` tiles in all (at least one row each): the direct
    /// weight-gradient kernel's, which needs no im2col matrix and sums each tile's share of the
    /// whole kernel gradient (fewer, longer tiles: fewer sums; yet enough for the threads).
    fn tiles_in(&self, parts: usize) -> Vec<Tile> {
        let (rows, row) = self.rows();
        let even = (self.batch * rows).div_ceil(parts.max(1)) * row;
        self.tiles_of(even.min(TILE_MAX_COLS))
    }

    /// Every batch item's output rows, in tiles of about `cols` columns (at least one row).
    fn tiles_of(&self, cols: usize) -> Vec<Tile> {
        let (rows, row) = self.rows();
        let rows_per_tile = (cols / row).max(1);
        (0..self.batch)
            .flat_map(|item| {
                (0..rows).step_by(rows_per_tile).map(move |first_row| Tile {
                    item,
                    first_row,
                    end_row: (first_row + rows_per_tile).min(rows),
                })
            })
            .collect()
    }

    /// The tile's first column and its number of columns. On the grid a column is a grid
    /// position, and the last one is the last output voxel's (so that every tap of every column
    /// lies inside the channel's grid); at unphased stride 2 it is an output voxel.
    fn columns(&self, tile: &Tile) -> (usize, usize) {
        let (_, row) = self.rows();
        let first = tile.first_row * row;
        let end = match self.on_grid() {
            true => {
                let [d, h, w] = self.out_size();
                let (row, plane, _) = self.grid();
                let last = (d - 1) * plane + (h - 1) * row + w;
                (tile.end_row * row).min(last)
            }
            false => tile.end_row * row,
        };
        (first, end.saturating_sub(first))
    }
}

/// `planes` volumes of `d × h × w`, each zero-padded by one voxel on every side (in-plane only
/// for a 1×3×3 kernel), then zeros for the direct kernels' reads past the last column. Each
/// value is written once (no zeroing of the whole buffer first).
fn pad_volumes(values: &[f32], planes: usize, geo: &Geometry) -> Vec<f32> {
    let (row, plane, padded) = geo.padded();
    volumes_written(values, planes, padded, geo, |dst, src| {
        dst.zeros(geo.pad_d() * plane);
        for slab in src.chunks(geo.h * geo.w) {
            dst.zeros(row);
            for run in slab.chunks(geo.w) {
                dst.zeros(1);
                dst.copy(run);
                dst.zeros(1);
            }
            dst.zeros(row);
        }
    })
}

/// `planes` volumes of `d × h × w` (`values`), each written by `fill` (given the volume) into
/// its own `size` floats, in parallel, then zeros for the kernels' reads past the last column
/// ([`Isa::SLACK`]); whatever `fill` leaves of a volume's floats is zeroed.
fn volumes_written(
    values: &[f32],
    planes: usize,
    size: usize,
    geo: &Geometry,
    fill: impl Fn(&mut Cursor, &[f32]) + Sync,
) -> Vec<f32> {
    let volume = geo.d * geo.h * geo.w;
    written(planes * size + Isa::SLACK, |out| {
        out.par_chunks_mut(size)
            .zip(values.par_chunks(volume))
            .for_each(|(dst, src)| {
                let mut dst = Cursor::new(dst);
                fill(&mut dst, src);
                dst.finish();
            });
        // The slack (and any volume without values: none) is zeros.
        let whole = planes.min(values.len() / volume.max(1)) * size;
        Cursor::new(&mut out[whole..]).finish();
    })
}

/// The input `[N, C_in, D, H, W]` as the kernels read it: padded ([`pad_volumes`]), or
/// phased ([`phase_volumes`]).
fn kernel_input(x: &[f32], geo: &Geometry) -> Vec<f32> {
    match geo.phased {
        false => pad_volumes(x, geo.batch * geo.c_in, geo),
        true => phase_volumes(x, geo.batch * geo.c_in, geo),
    }
}

/// The length of [`kernel_input`]'s values for `geo`: the batch's input channels, each one
/// grid ([`Geometry::grid`]), then the kernels' slack.
fn kernel_input_len(geo: &Geometry) -> usize {
    let (_, _, channel) = geo.grid();
    geo.batch * geo.c_in * channel + Isa::SLACK
}

/// `planes` volumes of `d × h × w`, each as the 8 parity phases of its padded volume: phase
/// `(a, b, c)` holds padded voxel `(2z + a, 2y + b, 2x + c)` at `(z, y, x)` of the phase grid
/// `(D'+1) × (H'+1) × (W'+1)` (zero outside the volume), then zeros for the kernels' reads past
/// the last column.
fn phase_volumes(values: &[f32], planes: usize, geo: &Geometry) -> Vec<f32> {
    let (_, _, channel) = geo.grid();
    let [d, h, w] = geo.out_size();
    let at = |i: usize, n: usize| i.checked_sub(1).filter(|&i| i < n);
    volumes_written(values, planes, channel, geo, |dst, src| {
        for phase in 0..8 {
            let (a, b, c) = (phase / 4, phase / 2 % 2, phase % 2);
            for z in 0..=d {
                for y in 0..=h {
                    let line = at(2 * z + a, geo.d).zip(at(2 * y + b, geo.h));
                    let Some(line) = line.map(|(z, y)| &src[(z * geo.h + y) * geo.w..]) else {
                        dst.zeros(w + 1);
                        continue;
                    };
                    // Column x holds voxel 2x + c − 1: phase 0 starts on the padding.
                    let lead = 1 - c;
                    let values = line[..geo.w].iter().skip(lead).step_by(2);
                    let n = values.len();
                    dst.zeros(lead);
                    dst.write_all(values.copied());
                    dst.zeros(w + 1 - lead - n);
                }
            }
        }
    })
}

/// A `Vec` of `len` floats whose storage `fill` writes. `fill` must write every element: the
/// callers write through [`Cursor`]s that cover their slices by construction (`finish`
/// zero-fills what is left).
pub(super) fn written(len: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    let mut out = Vec::with_capacity(len);
    fill(&mut out.spare_capacity_mut()[..len]);
    // SAFETY: `fill` wrote all `len` elements (see above), within the capacity reserved.
    unsafe { out.set_len(len) };
    out
}

/// Writes a slice of uninitialised floats front to back; [`Cursor::finish`] writes zeros over
/// the rest, so a finished cursor has written every element.
struct Cursor<'a> {
    dst: &'a mut [MaybeUninit<f32>],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn new(dst: &'a mut [MaybeUninit<f32>]) -> Self {
        Self { dst, at: 0 }
    }

    /// Writes `n` zeros.
    fn zeros(&mut self, n: usize) {
        let dst = &mut self.dst[self.at..self.at + n];
        // SAFETY: `dst` is `n` valid elements; the all-zero bytes are the float 0.0 (a memset,
        // fast in unoptimised builds too).
        unsafe { std::ptr::write_bytes(dst.as_mut_ptr(), 0, n) };
        self.at += n;
    }

    /// Writes `src`.
    fn copy(&mut self, src: &[f32]) {
        let dst = &mut self.dst[self.at..self.at + src.len()];
        // SAFETY: `dst` holds `src.len()` elements laid out as floats (`MaybeUninit<f32>` has
        // f32's layout) and cannot overlap `src` (it is borrowed mutably); a memcpy.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst.as_mut_ptr().cast(), src.len()) };
        self.at += src.len();
    }

    /// Writes the values `values` yields.
    fn write_all(&mut self, values: impl ExactSizeIterator<Item = f32>) {
        let n = values.len();
        for (d, v) in self.dst[self.at..self.at + n].iter_mut().zip(values) {
            d.write(v);
        }
        self.at += n;
    }

    /// Zeros over the rest.
    fn finish(mut self) {
        let rest = self.dst.len() - self.at;
        self.zeros(rest);
    }
}

/// The im2col matrix `[C_in·taps, cols]` of `tile` over the kernel input ([`kernel_input`]):
/// row `c·taps + k` is channel `c` read at tap `k` from each column's position.
fn im2col(padded: &[f32], geo: &Geometry, tile: &Tile) -> FlexTensor {
    let channels = geo.c_in;
    let (row, plane, _) = geo.padded();
    let (_, _, volume) = geo.grid();
    let (first, cols) = geo.columns(tile);
    let taps = geo.tap_offsets();
    let [_, out_h, out_w] = geo.out_size();
    let s = geo.stride;
    let n_taps = geo.taps();
    let mut col = Vec::with_capacity(channels * n_taps * cols);
    for r in 0..channels * n_taps {
        let at = (tile.item * channels + r / n_taps) * volume + taps[r % n_taps];
        // On the grid (stride 1, phased stride 2) each tap of a tile is one run.
        if geo.on_grid() {
            col.extend_from_slice(&padded[at + first..at + first + cols]);
            continue;
        }
        for out_row in tile.first_row..tile.end_row {
            let (z, y) = (out_row / out_h, out_row % out_h);
            let start = at + s * z * plane + s * y * row;
            col.extend((0..out_w).map(|x| padded[start + s * x]));
        }
    }
    flex_f32(col, [channels * n_taps, cols])
}

/// `[C_out, C_in, k, 3, 3]` as the matrix `[C_out, C_in·taps]` (the same memory).
fn weight_matrix(weight: &FlexTensor, geo: &Geometry) -> FlexTensor {
    let values = weight.storage::<f32>().to_vec();
    flex_f32(values, [geo.c_out, geo.c_in * geo.taps()])
}

/// `[C_out, C_in, k, 3, 3]` flipped in space with the channels swapped, as the matrix
/// `[C_in, C_out·taps]`: the kernel of the input's gradient.
fn flipped_weight_matrix(weight: &FlexTensor, geo: &Geometry) -> FlexTensor {
    let (c_in, c_out, taps) = (geo.c_in, geo.c_out, geo.taps());
    let w = weight.storage::<f32>();
    let mut m = vec![0.0f32; c_in * c_out * taps];
    for (i, v) in m.iter_mut().enumerate() {
        let (c, o, k) = (i / (c_out * taps), i / taps % c_out, i % taps);
        *v = w[(o * c_in + c) * taps + taps - 1 - k];
    }
    flex_f32(m, [c_in, c_out * taps])
}

/// The kernel of [`correlate`]: on the direct kernels' route (stride 1 or phased stride 2, a
/// CPU with AVX2 or AVX-512), packed for them; otherwise the matrix `[C_out, C_in·taps]` for
/// im2col and burn-flex's gemm (built from the weight, should a direct kernel refuse a tile).
struct Kernel {
    weight: FlexTensor,
    /// The convolution's geometry (not the input gradient's, whose channels are swapped).
    geo: Geometry,
    flipped: bool,
    matrix: Option<FlexTensor>,
    packed: Option<PackedKernel>,
}

impl Kernel {
    /// The kernel of the convolution `weight [C_out, C_in, k, 3, 3]`, or with `flipped` that
    /// of its input's gradient: flipped in space, channels swapped (C_out channels to C_in).
    fn new(weight: FlexTensor, geo: &Geometry, flipped: bool) -> Self {
        let weight = weight.to_contiguous();
        let w = weight.storage::<f32>();
        let (c_in, taps) = (geo.c_in, geo.taps());
        let packed = simd_isa(geo).map(|isa| match flipped {
            true => PackedKernel::new(isa, [c_in, geo.c_out, taps], |c, o, k| {
                w[(o * c_in + c) * taps + taps - 1 - k]
            }),
            false => PackedKernel::new(isa, [geo.c_out, c_in, taps], |o, c, k| {
                w[(o * c_in + c) * taps + k]
            }),
        });
        let mut kernel = Self {
            weight,
            geo: *geo,
            flipped,
            matrix: None,
            packed,
        };
        if kernel.packed.is_none() {
            kernel.matrix = Some(kernel.matrix());
        }
        kernel
    }

    /// The matrix for im2col and gemm: `[C_out, C_in·taps]`, flipped `[C_in, C_out·taps]`.
    fn matrix(&self) -> FlexTensor {
        match (&self.matrix, self.flipped) {
            (Some(matrix), _) => matrix.clone(),
            (None, false) => weight_matrix(&self.weight, &self.geo),
            (None, true) => flipped_weight_matrix(&self.weight, &self.geo),
        }
    }
}

thread_local! {
    /// Whether convolutions started on this thread may take the direct SIMD kernels: in
    /// optimised builds. Unoptimised (debug) builds keep the matrix-product route, whose gemm
    /// is optimised there too, where the kernels' intrinsics would run ~40× slower uninlined.
    static DIRECT_KERNELS: Cell<bool> = const { Cell::new(!cfg!(debug_assertions)) };
}

/// Runs `f` with convolutions started on this thread taking the direct SIMD kernels (`on`,
/// where the CPU has them) or the matrix-product route, then restores the setting (tests
/// compare both in any build).
pub fn with_direct_kernels<T>(on: bool, f: impl FnOnce() -> T) -> T {
    let before = DIRECT_KERNELS.with(|d| d.replace(on));
    let out = f();
    DIRECT_KERNELS.with(|d| d.set(before));
    out
}

/// The instruction set of the direct kernels, if this thread takes them and the CPU has one.
pub(super) fn direct_kernels() -> Option<Isa> {
    Isa::detect().filter(|_| DIRECT_KERNELS.with(Cell::get))
}

/// The instruction set of the direct kernels for `geo`, if they serve it (stride 1, or a
/// phased stride 2) and this thread takes them.
fn simd_isa(geo: &Geometry) -> Option<Isa> {
    direct_kernels().filter(|_| geo.stride == 1 || geo.phased)
}

/// The correlation of x with `kernel` (`[C_out, C_in·taps]`; padding 1, the geometry's
/// stride), from x's kernel input `input` ([`kernel_input`]), as `[N, C_out, D', H', W']`
/// values. Tiles run in parallel, each writing its own runs of the output ([`tile_regions`])
/// from a product reused per thread.
fn correlate(input: &[f32], kernel: &Kernel, geo: &Geometry) -> Vec<f32> {
    assert_eq!(
        input.len(),
        kernel_input_len(geo),
        "kernel input of the wrong size"
    );
    let tiles = match kernel.packed {
        Some(_) => geo.tiles_in(4 * rayon::current_num_threads()),
        None => geo.tiles(),
    };
    written(geo.batch * geo.c_out * geo.out_volume(), |out| {
        let mut regions = tile_regions(out, geo, &tiles);
        tiles
            .par_iter()
            .zip(regions.par_iter_mut())
            .for_each(|(tile, region)| {
                PRODUCT.with(|cell| match cell.try_borrow_mut() {
                    Ok(mut product) => tile_into(input, kernel, geo, tile, &mut product, region),
                    Err(_) => tile_into(input, kernel, geo, tile, &mut Vec::new(), region),
                })
            });
    })
}

thread_local! {
    /// A thread's tile product, kept between tiles (the direct kernel overwrites what it uses).
    static PRODUCT: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Computes `tile`'s product `[C_out, cols]` in `product` (grown as needed) and writes its
/// output voxels, run after run, over `region`, the tile's run of each output channel.
fn tile_into(
    padded: &[f32],
    kernel: &Kernel,
    geo: &Geometry,
    tile: &Tile,
    product: &mut Vec<f32>,
    region: &mut [&mut [MaybeUninit<f32>]],
) {
    if store_direct(padded, kernel, geo, tile, region) {
        return;
    }
    let product = tile_product(padded, kernel, geo, tile, product);
    let runs = voxel_runs(geo, tile);
    let (_, cols) = geo.columns(tile);
    for (o, channel) in region.iter_mut().enumerate() {
        let mut dst = Cursor::new(channel);
        for &(_, start, len) in &runs {
            dst.copy(&product[o * cols + start..][..len]);
        }
        dst.finish();
    }
}

/// Writes `tile`'s output straight over `region` by the direct kernel where every output row
/// of the tile is whole vectors (rows a multiple of the lanes long, as at 16³ and 32³) and the
/// kernel has no rows past the real channels; `false` (nothing written) otherwise.
fn store_direct(
    padded: &[f32],
    kernel: &Kernel,
    geo: &Geometry,
    tile: &Tile,
    region: &mut [&mut [MaybeUninit<f32>]],
) -> bool {
    let Some(packed) = &kernel.packed else {
        return false;
    };
    let lanes = packed.isa().lanes();
    let runs = voxel_runs(geo, tile);
    let whole = geo.on_grid()
        && packed.rows() == region.len()
        && runs.iter().all(|r| r.2.is_multiple_of(lanes));
    if !whole {
        return false;
    }
    let base = runs.first().map_or(0, |r| r.0);
    let (mut starts, mut at) = (Vec::new(), Vec::new());
    for &(offset, start, len) in &runs {
        for v in (0..len).step_by(lanes) {
            starts.push(start + v);
            at.push(offset - base + v);
        }
    }
    let offsets = geo.tap_offsets();
    let input = tile_input(padded, geo, tile, (&offsets[..geo.taps()], &starts));
    conv_simd::forward_into_runs(packed.isa(), &input, packed, region, &at)
}

/// The output `[N, C_out, D', H', W']` cut into each tile's run of each channel (a tile's
/// voxels are one run per channel, its runs following each other; a batch item's tiles follow
/// each other: the tiling test checks both). Anything no tile covers is zeroed here.
fn tile_regions<'a>(
    out: &'a mut [MaybeUninit<f32>],
    geo: &Geometry,
    tiles: &[Tile],
) -> Vec<Vec<&'a mut [MaybeUninit<f32>]>> {
    let lengths: Vec<usize> = tiles
        .iter()
        .map(|tile| voxel_runs(geo, tile).iter().map(|r| r.2).sum())
        .collect();
    let mut regions: Vec<Vec<&mut [MaybeUninit<f32>]>> = tiles.iter().map(|_| Vec::new()).collect();
    for (index, channel) in out.chunks_mut(geo.out_volume()).enumerate() {
        let item = index / geo.c_out;
        let mut rest = channel;
        for (t, _) in tiles.iter().enumerate().filter(|(_, t)| t.item == item) {
            let (run, tail) = std::mem::take(&mut rest).split_at_mut(lengths[t]);
            regions[t].push(run);
            rest = tail;
        }
        Cursor::new(rest).finish();
    }
    regions
}

/// One tile's product `[C_out, cols]` (rows past `C_out` may follow): by the direct kernel
/// into `scratch` where the kernel is packed, else (or should it refuse) by im2col and gemm.
fn tile_product<'a>(
    padded: &[f32],
    kernel: &Kernel,
    geo: &Geometry,
    tile: &Tile,
    scratch: &'a mut Vec<f32>,
) -> &'a [f32] {
    let (_, cols) = geo.columns(tile);
    if let Some(packed) = &kernel.packed {
        let offsets = geo.tap_offsets();
        let starts = tile_vectors(geo, tile, packed.isa());
        let input = tile_input(padded, geo, tile, (&offsets[..geo.taps()], &starts));
        let size = packed.rows() * cols;
        if scratch.len() < size {
            scratch.resize(size, 0.0);
        }
        if conv_simd::forward(packed.isa(), &input, packed, &mut scratch[..size]) {
            return &scratch[..size];
        }
    }
    let matrix = kernel.matrix();
    let product = Flex::float_matmul(matrix, im2col(padded, geo, tile)).to_contiguous();
    *scratch = product.storage::<f32>().to_vec();
    &scratch[..]
}

/// `tile`'s input for the direct kernels: the padded channels of its batch item from its first
/// column, read at `offsets`, in vectors from `starts`.
fn tile_input<'a>(
    padded: &'a [f32],
    geo: &Geometry,
    tile: &Tile,
    (offsets, starts): (&'a [usize], &'a [usize]),
) -> TileInput<'a> {
    let (_, _, volume) = geo.grid();
    let (first, cols) = geo.columns(tile);
    TileInput {
        x: &padded[tile.item * geo.c_in * volume + first..],
        stride: volume,
        channels: geo.c_in,
        offsets,
        cols,
        starts,
    }
}

/// The direct kernels' vectors of `tile` on `isa`: over its output rows' columns only.
fn tile_vectors(geo: &Geometry, tile: &Tile, isa: Isa) -> Vec<usize> {
    let runs = voxel_runs(geo, tile)
        .into_iter()
        .map(|(_, start, len)| (start, len));
    conv_simd::vector_starts(runs, isa.lanes())
}

/// The runs of `tile`'s columns that are output voxels, as (offset in one channel of the output,
/// first column in the tile, length): on the grid one per output row `(z, y)` (the padding's
/// columns left out), at unphased stride 2 the whole tile.
fn voxel_runs(geo: &Geometry, tile: &Tile) -> Vec<(usize, usize, usize)> {
    let (first, cols) = geo.columns(tile);
    if !geo.on_grid() {
        return vec![(first, 0, cols)];
    }
    let [_, h, w] = geo.out_size();
    let (row, plane, _) = geo.grid();
    let rows_per_plane = plane / row;
    (tile.first_row..tile.end_row)
        .filter_map(|r| {
            let (z, y) = (r / rows_per_plane, r % rows_per_plane);
            let start = r * row - first;
            let voxel = (y < h && start + w <= cols).then_some((z * h + y) * w);
            voxel.map(|offset| (offset, start, w))
        })
        .collect()
}

/// `tile`'s columns of the output gradient `[N, C_out, D', H', W']` as `[C_out, stride]`
/// (`stride` ≥ cols), zero on the padding's columns and past `cols`.
fn gather_tile(grad: &[f32], geo: &Geometry, tile: &Tile, stride: usize) -> Vec<f32> {
    let runs = voxel_runs(geo, tile);
    let mut g = vec![0.0f32; geo.c_out * stride];
    for (o, row) in g.chunks_exact_mut(stride).enumerate() {
        let channel = (tile.item * geo.c_out + o) * geo.out_volume();
        for &(offset, start, len) in &runs {
            row[start..start + len].copy_from_slice(&grad[channel + offset..][..len]);
        }
    }
    g
}

/// The output's gradient as the kernel gradient reads it: `[N, C_out, D', H', W']`, and at
/// stride 1 possibly also its padded copy (the input gradient's), read in place.
#[derive(Clone, Copy)]
struct OutputGrad<'a> {
    plain: &'a [f32],
    padded: Option<&'a [f32]>,
}

/// The kernel's gradient `[C_out, C_in·taps]` from x's kernel input ([`kernel_input`]): each
/// tile's share, summed over tiles.
fn weight_gradient(input: &[f32], grad: OutputGrad, geo: &Geometry) -> Vec<f32> {
    assert_eq!(
        input.len(),
        kernel_input_len(geo),
        "kernel input of the wrong size"
    );
    let size = geo.c_out * geo.c_in * geo.taps();
    let isa = simd_isa(geo);
    let tiles = match isa {
        Some(_) => geo.tiles_in(rayon::current_num_threads()),
        None => geo.tiles(),
    };
    tiles
        .par_iter()
        .map(|tile| tile_weight_gradient(input, grad, geo, tile, isa))
        .reduce(
            || vec![0.0f32; size],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(s, v)| *s += v);
                a
            },
        )
}

/// `tile`'s share of the kernel gradient: by the direct kernel of `isa` if given, else (or
/// should it refuse) as the tile's output gradient times the transposed im2col matrix of the
/// input.
fn tile_weight_gradient(
    input: &[f32],
    grad: OutputGrad,
    geo: &Geometry,
    tile: &Tile,
    isa: Option<Isa>,
) -> Vec<f32> {
    let (_, cols) = geo.columns(tile);
    if let Some(isa) = isa {
        let starts = tile_vectors(geo, tile, isa);
        let offsets = geo.tap_offsets();
        let tile_in = tile_input(input, geo, tile, (&offsets[..geo.taps()], &starts));
        let mut sum = vec![0.0f32; geo.c_out * geo.c_in * geo.taps()];
        let in_place = grad
            .padded
            .and_then(|p| padded_rows(p, geo, tile, &starts, isa));
        let done = match in_place {
            Some(rows) => conv_simd::weight_grad(isa, &tile_in, rows, geo.c_out, &mut sum),
            None => {
                let stride = starts.last().map_or(cols, |&s| (s + isa.lanes()).max(cols));
                let g = gather_tile(grad.plain, geo, tile, stride);
                let rows = GradInput { values: &g, stride };
                conv_simd::weight_grad(isa, &tile_in, rows, geo.c_out, &mut sum)
            }
        };
        if done {
            return sum;
        }
    }
    let g = flex_f32(gather_tile(grad.plain, geo, tile, cols), [geo.c_out, cols]);
    let col = im2col(input, geo, tile);
    let product = Flex::float_matmul(g, Flex::float_swap_dims(col, 0, 1));
    product.to_contiguous().storage::<f32>().to_vec()
}

/// `tile`'s output gradient read in place from the padded gradient `[N, C_out, padded volume]`
/// (stride 1): the tile's column p, grid position `first + p = z·plane + y·row + x`, is output
/// voxel (z, y, x), which the padded gradient holds one voxel further along each padded axis;
/// the padding's columns read its zeros. `None` where the last vector reaches past the tile
/// onto another tile's output voxels (a gathered copy holds zeros there).
fn padded_rows<'a>(
    padded: &'a [f32],
    geo: &Geometry,
    tile: &Tile,
    starts: &[usize],
    isa: Isa,
) -> Option<GradInput<'a>> {
    let (row, plane, volume) = geo.padded();
    let (first, cols) = geo.columns(tile);
    let reach = starts.last()? + isa.lanes();
    let [d, h, w] = geo.out_size();
    let on_output = |p: usize| p / plane < d && p % plane / row < h && p % row < w;
    let clear = geo.stride == 1 && !(first + cols..first + reach).any(on_output);
    let at = tile.item * geo.c_out * volume + first + geo.pad_d() * plane + row + 1;
    clear
        .then(|| padded.get(at..))
        .flatten()
        .map(|values| GradInput {
            values,
            stride: volume,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tensor's planes in place: a contiguous one's and one narrowed along its channels
    /// (a concatenation's gradient) are its values plane by plane; a transposed one has none.
    #[test]
    fn planes_are_read_in_place_when_each_is_contiguous() {
        let values: Vec<f32> = (0..2 * 5 * 6).map(|v| v as f32).collect();
        let t = flex_f32(values.clone(), [2, 5, 2, 3]);
        let whole = planes(&t).expect("contiguous");
        assert_eq!(whole, values.chunks(6).collect::<Vec<_>>());
        let narrowed = t.narrow(1, 1, 3);
        let want: Vec<&[f32]> = [1, 2, 3, 6, 7, 8]
            .iter()
            .map(|&p| &values[p * 6..][..6])
            .collect();
        assert_eq!(planes(&narrowed).expect("narrowed"), want);
        assert!(planes(&t.transpose(2, 3)).is_none());
        assert!(planes(&t.transpose(0, 1)).is_some_and(|p| p[1] == &values[5 * 6..][..6]));
    }

    /// For many sizes, strides (stride 2 phased and not), both kernel depths and channel counts
    /// (so tiles of one row up to whole volumes):
    /// the tiles' output runs cover every output voxel of every batch item exactly once, each
    /// tile's runs follow each other and the last tile's (one run per channel, as
    /// `tile_regions` cuts the output), every tile has columns, and every tap of every column
    /// lies inside the padded volume.
    #[test]
    fn tiles_cover_each_output_voxel_once_and_read_inside_the_padding() {
        for (d, h, w) in [
            (1, 1, 1),
            (1, 6, 4),
            (5, 4, 7),
            (7, 5, 9),
            (3, 13, 2),
            (9, 9, 9),
            (3, 18, 17),
        ] {
            let cases = [1, 2].into_iter().flat_map(|s| {
                [(3, 1), (3, 7), (3, 64), (3, 600), (1, 7), (1, 600)].map(|(k, c)| (s, k, c))
            });
            let cases = cases.flat_map(|c| [(c, false), (c, true)]);
            for ((stride, kernel_d, channels), phased) in cases {
                let flat_strided = kernel_d == 1 && stride == 2 && d != 1;
                if flat_strided || (phased && (stride, kernel_d) != (2, 3)) {
                    continue;
                }
                let geo = Geometry {
                    batch: 2,
                    c_in: channels,
                    c_out: 3,
                    d,
                    h,
                    w,
                    stride,
                    kernel_d,
                    phased,
                };
                let tilings = [
                    geo.tiles(),
                    geo.tiles_in(1),
                    geo.tiles_in(4),
                    geo.tiles_in(7),
                ];
                for tiles in tilings {
                    check_tiling(&geo, &tiles);
                }
            }
        }
    }

    /// The input gradient's kernel, packed for the direct kernel or not, falls back on the
    /// flipped matrix `[C_in, C_out·taps]` of the convolution's own geometry.
    #[test]
    fn the_input_gradients_fallback_matrix_is_the_flipped_kernel() {
        let geo = Geometry {
            batch: 1,
            c_in: 3,
            c_out: 5,
            d: 4,
            h: 4,
            w: 4,
            stride: 1,
            kernel_d: 3,
            phased: false,
        };
        let weight = flex_f32((0..5 * 3 * 27).map(|i| i as f32).collect(), [5, 3, 3, 3, 3]);
        let want = flipped_weight_matrix(&weight, &geo);
        for direct in [false, true] {
            let kernel = with_direct_kernels(direct, || Kernel::new(weight.clone(), &geo, true));
            let matrix = kernel.matrix().to_contiguous();
            assert_eq!(matrix.shape().dims::<2>(), [3, 5 * 27]);
            assert_eq!(matrix.storage::<f32>(), want.storage::<f32>());
        }
    }

    /// A phased stride-2 tile (odd and even sizes, an output over 8³) by the direct kernel and
    /// by im2col and gemm over the same phases (the route a refused tile would take) agree.
    #[test]
    fn phased_tiles_by_im2col_match_the_direct_kernel() {
        let Some(isa) = Isa::detect() else { return };
        let geo = Geometry {
            batch: 2,
            c_in: 3,
            c_out: 5,
            d: 16,
            h: 17,
            w: 15,
            stride: 2,
            kernel_d: 3,
            phased: true,
        };
        let value = |i: usize| ((i * 7919) % 1000) as f32 / 500.0 - 1.0;
        let x: Vec<f32> = (0..2 * 3 * 16 * 17 * 15).map(value).collect();
        let w: Vec<f32> = (0..5 * 3 * 27).map(|i| value(i * 13 + 5)).collect();
        let weight = flex_f32(w.clone(), [5, 3, 3, 3, 3]);
        let packed = PackedKernel::new(isa, [5, 3, 27], |o, c, k| w[(o * 3 + c) * 27 + k]);
        let direct = Kernel {
            weight: weight.clone(),
            geo,
            flipped: false,
            matrix: None,
            packed: Some(packed),
        };
        let gemm = Kernel {
            matrix: Some(weight_matrix(&weight, &geo)),
            weight,
            geo,
            flipped: false,
            packed: None,
        };
        let input = kernel_input(&x, &geo);
        for tile in geo.tiles() {
            let (_, cols) = geo.columns(&tile);
            let (mut a, mut b) = (Vec::new(), Vec::new());
            let by_kernel = &tile_product(&input, &direct, &geo, &tile, &mut a)[..5 * cols];
            let by_gemm = &tile_product(&input, &gemm, &geo, &tile, &mut b)[..5 * cols];
            for (p, q) in by_kernel.iter().zip(by_gemm) {
                assert!((p - q).abs() < 1e-4, "{tile:?}: {p} vs {q}");
            }
        }
    }

    /// The kernel gradient reading the padded output gradient in place equals the one reading
    /// gathered copies, exactly, where tiles split a batch item (7 threads: 7 tiles) so that a
    /// tile's last vector may reach onto the next tile's voxels (then it gathers), and on the
    /// single-slice form's grid.
    #[test]
    fn the_weight_gradient_reads_the_padded_output_gradient_in_place_as_a_copy() {
        let Some(isa) = direct_kernels() else { return };
        let pool = rayon::ThreadPoolBuilder::new().num_threads(7).build();
        let pool = pool.expect("a thread pool");
        let value = |i: usize| ((i * 7919) % 1000) as f32 / 500.0 - 1.0;
        let sizes = [
            ([5, 6, 4], 3),
            ([3, 7, 9], 3),
            ([4, 5, 16], 3),
            ([2, 6, 9], 1),
            ([3, 6, 7], 3),
        ];
        let (mut in_place_tiles, mut gathered_tiles) = (0, 0);
        for ([d, h, w], kernel_d) in sizes {
            let geo = Geometry {
                batch: 2,
                c_in: 3,
                c_out: 5,
                d,
                h,
                w,
                stride: 1,
                kernel_d,
                phased: false,
            };
            let x: Vec<f32> = (0..2 * 3 * d * h * w).map(value).collect();
            let g: Vec<f32> = (0..2 * 5 * d * h * w).map(|i| value(3 * i + 1)).collect();
            let input = kernel_input(&x, &geo);
            let padded = pad_volumes(&g, 2 * 5, &geo);
            for t in geo.tiles_in(7) {
                let starts = tile_vectors(&geo, &t, isa);
                match padded_rows(&padded, &geo, &t, &starts, isa) {
                    Some(_) => in_place_tiles += 1,
                    None => gathered_tiles += 1,
                }
            }
            let plain = OutputGrad {
                plain: &g,
                padded: None,
            };
            let in_place = OutputGrad {
                padded: Some(&padded),
                ..plain
            };
            let [a, b] =
                [plain, in_place].map(|grad| pool.install(|| weight_gradient(&input, grad, &geo)));
            assert_eq!(a, b, "{geo:?}");
        }
        assert!(
            in_place_tiles > 0 && gathered_tiles > 0,
            "{in_place_tiles} {gathered_tiles}"
        );
    }

    /// See [`tiles_cover_each_output_voxel_once_and_read_inside_the_padding`].
    fn check_tiling(geo: &Geometry, tiles: &[Tile]) {
        let mut seen = vec![0u32; geo.batch * geo.out_volume()];
        let (row, plane, _) = geo.padded();
        let (_, _, volume) = geo.grid();
        let [_, out_h, out_w] = geo.out_size();
        // Where the next tile's run starts in each item's channels (`tile_regions`).
        let mut next = vec![0usize; geo.batch];
        for tile in tiles {
            let (first, cols) = geo.columns(tile);
            assert!(cols > 0 && cols <= volume, "{geo:?} {tile:?}");
            let taps = &geo.tap_offsets()[..geo.taps()];
            let last = taps.iter().copied().max().unwrap_or(0);
            let last_tap = match geo.on_grid() {
                true => first + cols - 1 + last,
                false => {
                    let r = tile.end_row - 1;
                    let (z, y) = (r / out_h, r % out_h);
                    2 * z * plane + 2 * y * row + 2 * (out_w - 1) + last
                }
            };
            assert!(last_tap < volume, "{geo:?} {tile:?}");
            for (offset, start, len) in voxel_runs(geo, tile) {
                assert!(start + len <= cols, "{geo:?} {tile:?}");
                assert_eq!(offset, next[tile.item], "{geo:?} {tile:?}: one run");
                next[tile.item] = offset + len;
                let at = tile.item * geo.out_volume() + offset;
                seen[at..at + len].iter_mut().for_each(|n| *n += 1);
            }
        }
        assert!(seen.iter().all(|&n| n == 1), "{geo:?}");
    }
}
