//! The blocks' instance normalisation on burn's GPU backend (wgpu) as two kernels of our own,
//! one forward and one backward, where burn's `InstanceNorm` composes it from eight tensor
//! operations forward and more backward (two reductions and their broadcasts forward, about a
//! dozen launches backward) — a small network's GPU step is bound by its launches.
//!
//! One workgroup per plane (batch item n × channel c): forward it sums the plane's voxels (a
//! tree in shared memory), then their squared deviations from the mean, and writes
//! `y = γ_c·(x − μ)/√(σ² + ε) + β_c` and the plane's `(s, μ − s, 1/√(σ² + ε))`, s the plane's
//! first voxel: the sums are of `x − s` (exact in f32 where x and s are within a factor of two,
//! Sterbenz) and the deviations `(x − s) − (μ − s)`, so a plane of small spread about a large
//! mean (0.01 about 5) keeps its precision, which `x − μ` with μ rounded to f32 loses (~1e-4 of
//! x̂, measured in `tests/model.rs`); backward, with those
//! statistics and the output's gradient g, it sums g and g·x̂, writes
//! `∂L/∂x = γ_c/√(σ² + ε)·(g − mean g − x̂·mean(g·x̂))` and the plane's two sums, which one
//! reduction over the batch turns into ∂L/∂β and ∂L/∂γ (the formulas of [`super::norm`]).
//!
//! In a mixed-precision step x, y and their gradients are f16 or bf16, read into f32 (γ, β,
//! the statistics and the sums stay f32, as autocast keeps normalisations in f32), so the
//! norm needs no casts around it.
//!
//! Invariants: equal to burn's `InstanceNorm::forward` and its gradients to float rounding
//! (`tests/model.rs`, on lavapipe); features f32, f16 or bf16, γ and β f32; affine norms only,
//! statistics summed in f32
//! (two passes: mean, then deviations, both about the first voxel); [`super::norm::instance_norm_forward`] routes nothing
//! else here.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::fusion::custom::TensorSpec;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, AutodiffBackend, Backend, TensorMetadata};
use burn::tensor::{DType, Shape};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeBackend;
use cubecl::prelude::*;

use super::conv_gpu_direct::{in_type, kernel_elem};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Threads per workgroup (one workgroup per plane); a power of two, for the tree sums.
pub(super) const WORKGROUP: usize = 256;
/// Levels of [`workgroup_sum`]'s tree: log2 of [`WORKGROUP`].
const TREE_LEVELS: usize = WORKGROUP.trailing_zeros() as usize;
const _: () = assert!(
    WORKGROUP.is_power_of_two(),
    "the tree sums need a power of two"
);

/// Statistics kept per plane: its first voxel s, its mean less s, its inverse deviation.
const STATS: usize = 3;

/// Launches of this module's kernels in this process (what tests read to know the GPU's norms
/// took this route).
static LAUNCHES: AtomicUsize = AtomicUsize::new(0);

/// How many times this module's kernels (forward or backward) have run in this process.
pub fn kernel_launches() -> usize {
    LAUNCHES.load(Ordering::Relaxed)
}

/// Backends with a fused instance normalisation that keeps its statistics for a backward pass
/// of its own (burn's GPU backend).
#[backend_extension(Cube, Fusion, Autodiff)]
pub trait InstanceNormGpuBackend: Backend {
    /// `x [N, C, …]` normalised over each plane's voxels, then `γ_c·x̂ + β_c` (`gamma`, `beta`:
    /// `[C]`); also each plane's `(s, μ − s, 1/√(σ² + ε))` (s its first voxel), `[N·C·3]`.
    #[fusion(meta = forward_specs)]
    fn instance_norm_keeping(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// The gradients of input, γ and β, given the input, the statistics
    /// [`InstanceNormGpuBackend::instance_norm_keeping`] kept, γ and the output's gradient.
    #[fusion(meta = backward_specs)]
    fn instance_norm_grads(
        x: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// The output's and the statistics' sizes and types, for burn's fusion.
fn forward_specs(
    x: &TensorSpec,
    _gamma: &TensorSpec,
    _beta: &TensorSpec,
    _epsilon: &f64,
) -> (TensorSpec, TensorSpec) {
    let planes = x.shape.iter().take(2).product::<usize>();
    (
        x.clone(),
        TensorSpec::new(Shape::new([planes * STATS]), DType::F32),
    )
}

/// The three gradients' sizes and types (x's, γ's, γ's), for burn's fusion.
fn backward_specs(
    x: &TensorSpec,
    _stats: &TensorSpec,
    gamma: &TensorSpec,
    _grad: &TensorSpec,
) -> (TensorSpec, TensorSpec, TensorSpec) {
    (x.clone(), gamma.clone(), gamma.clone())
}

/// Sums `values` (one per thread, `WORKGROUP` of them) over the workgroup in shared memory;
/// every thread gets the total.
#[cube]
pub(super) fn workgroup_sum(shared: &mut Shared<[f32]>, value: f32) -> f32 {
    let unit = UNIT_POS as usize;
    shared[unit] = value;
    sync_cube();
    #[unroll]
    for level in 0..TREE_LEVELS {
        let half = comptime!(WORKGROUP >> (level + 1));
        if unit < half {
            shared[unit] += shared[unit + half];
        }
        sync_cube();
    }
    let total = shared[0];
    sync_cube();
    total
}

/// Forward: workgroup `CUBE_POS` normalises plane `CUBE_POS` (`voxels` long, at least one) of
/// `x` into `y` and writes its first voxel s, mean less s and inverse deviation to `stats`.
#[cube(launch_unchecked)]
fn norm_forward<F: Float>(
    x: &[F],
    gamma: &[f32],
    beta: &[f32],
    y: &mut [F],
    stats: &mut [f32],
    voxels: usize,
    channels: usize,
    epsilon: f32,
    #[define(F)] _dtype: ElemType,
) {
    let plane = CUBE_POS;
    let unit = UNIT_POS as usize;
    let base = plane * voxels;
    let mut shared = Shared::<[f32]>::new_slice(WORKGROUP);
    let shift = f32::cast_from(x[base]);
    let mut sum = 0.0f32;
    for i in range_stepped(unit, voxels, WORKGROUP) {
        sum += f32::cast_from(x[base + i]) - shift;
    }
    let mean = workgroup_sum(&mut shared, sum) / f32::cast_from(voxels);
    let mut squares = 0.0f32;
    for i in range_stepped(unit, voxels, WORKGROUP) {
        let d = (f32::cast_from(x[base + i]) - shift) - mean;
        squares += d * d;
    }
    let variance = workgroup_sum(&mut shared, squares) / f32::cast_from(voxels);
    let inverse_sd = 1.0f32 / f32::sqrt(variance + epsilon);
    let c = plane % channels;
    let scale = gamma[c] * inverse_sd;
    let offset = beta[c];
    for i in range_stepped(unit, voxels, WORKGROUP) {
        let value = (f32::cast_from(x[base + i]) - shift) - mean;
        y[base + i] = F::cast_from(value * scale + offset);
    }
    if unit == 0 {
        stats[plane * 3] = shift;
        stats[plane * 3 + 1] = mean;
        stats[plane * 3 + 2] = inverse_sd;
    }
}

/// Backward: workgroup `CUBE_POS` writes plane `CUBE_POS`'s input gradient into `dx` and its
/// Σ g·x̂ and Σ g into `sums[0, n, c]` and `sums[1, n, c]`.
#[cube(launch_unchecked)]
fn norm_backward<F: Float>(
    x: &[F],
    stats: &[f32],
    gamma: &[f32],
    grad: &[F],
    dx: &mut [F],
    sums: &mut [f32],
    voxels: usize,
    channels: usize,
    planes: usize,
    #[define(F)] _dtype: ElemType,
) {
    let plane = CUBE_POS;
    let unit = UNIT_POS as usize;
    let base = plane * voxels;
    let shift = stats[plane * 3];
    let mean = stats[plane * 3 + 1];
    let inverse_sd = stats[plane * 3 + 2];
    let mut shared = Shared::<[f32]>::new_slice(WORKGROUP);
    let mut sum_g = 0.0f32;
    let mut sum_gx = 0.0f32;
    for i in range_stepped(unit, voxels, WORKGROUP) {
        let g = f32::cast_from(grad[base + i]);
        sum_g += g;
        sum_gx += g * ((f32::cast_from(x[base + i]) - shift) - mean) * inverse_sd;
    }
    let sum_g = workgroup_sum(&mut shared, sum_g);
    let sum_gx = workgroup_sum(&mut shared, sum_gx);
    let count = f32::cast_from(voxels);
    let (mean_g, mean_gx) = (sum_g / count, sum_gx / count);
    let scale = gamma[plane % channels] * inverse_sd;
    for i in range_stepped(unit, voxels, WORKGROUP) {
        let normalised = ((f32::cast_from(x[base + i]) - shift) - mean) * inverse_sd;
        let g = f32::cast_from(grad[base + i]);
        dx[base + i] = F::cast_from(scale * (g - mean_g - normalised * mean_gx));
    }
    if unit == 0 {
        sums[plane] = sum_gx;
        sums[planes + plane] = sum_g;
    }
}

/// `(planes, voxels per plane, channels)` of `x [N, C, …]`.
fn planes_of(x: &CubeTensor) -> (usize, usize, usize) {
    let dims = x.shape();
    let (n, c) = (dims[0], dims[1]);
    let planes = n * c;
    (planes, dims.num_elements() / planes.max(1), c)
}

/// A new f32 tensor of `shape` on `like`'s device.
pub(super) fn empty_like(like: &CubeTensor, shape: Shape) -> CubeTensor {
    empty_device_dtype(like.client.clone(), like.device.clone(), shape, DType::F32)
}

impl InstanceNormGpuBackend for CubeBackend {
    fn instance_norm_keeping(
        x: CubeTensor,
        gamma: CubeTensor,
        beta: CubeTensor,
        epsilon: f64,
    ) -> (CubeTensor, CubeTensor) {
        let (x, gamma, beta) = (
            into_contiguous(x),
            into_contiguous(gamma),
            into_contiguous(beta),
        );
        let (planes, voxels, channels) = planes_of(&x);
        let elem = kernel_elem(x.dtype);
        let y = empty_device_dtype(x.client.clone(), x.device.clone(), x.shape(), x.dtype);
        let stats = empty_like(&x, Shape::new([planes * STATS]));
        let client = x.client.clone();
        // SAFETY: x and y hold `planes × voxels` values (voxels ≥ 1: `norm.rs` routes no empty
        // tensor here), gamma and beta `channels`, stats `3 × planes`; workgroup p touches
        // plane p only, each thread indices below `voxels`.
        unsafe {
            norm_forward::launch_unchecked(
                &client,
                CubeCount::Static(planes as u32, 1, 1),
                CubeDim::new_1d(WORKGROUP as u32),
                x.into_buffer_arg(),
                gamma.into_buffer_arg(),
                beta.into_buffer_arg(),
                y.clone().into_buffer_arg(),
                stats.clone().into_buffer_arg(),
                voxels,
                channels,
                epsilon as f32,
                elem,
            );
        }
        LAUNCHES.fetch_add(1, Ordering::Relaxed);
        (y, stats)
    }

    fn instance_norm_grads(
        x: CubeTensor,
        stats: CubeTensor,
        gamma: CubeTensor,
        grad: CubeTensor,
    ) -> (CubeTensor, CubeTensor, CubeTensor) {
        // The output's gradient in the output's (x's) type, as the kernel reads it.
        let grad = in_type(grad, x.dtype);
        let (x, grad, gamma) = (
            into_contiguous(x),
            into_contiguous(grad),
            into_contiguous(gamma),
        );
        let (planes, voxels, channels) = planes_of(&x);
        let items = planes / channels.max(1);
        let elem = kernel_elem(x.dtype);
        let dx = empty_device_dtype(x.client.clone(), x.device.clone(), x.shape(), x.dtype);
        let sums = empty_like(&x, Shape::new([2, items, channels]));
        let client = x.client.clone();
        // SAFETY: as in the forward pass; sums holds `2 × planes` f32s.
        unsafe {
            norm_backward::launch_unchecked(
                &client,
                CubeCount::Static(planes as u32, 1, 1),
                CubeDim::new_1d(WORKGROUP as u32),
                x.into_buffer_arg(),
                stats.into_buffer_arg(),
                gamma.into_buffer_arg(),
                grad.into_buffer_arg(),
                dx.clone().into_buffer_arg(),
                sums.clone().into_buffer_arg(),
                voxels,
                channels,
                planes,
                elem,
            );
        }
        LAUNCHES.fetch_add(1, Ordering::Relaxed);
        let summed = match items {
            1 => sums,
            _ => CubeBackend::float_sum_dim(sums, 1),
        };
        let gamma_grad = CubeBackend::float_slice(summed.clone(), &[(0..1).into()]);
        let beta_grad = CubeBackend::float_slice(summed, &[(1..2).into()]);
        let channel = |t| CubeBackend::float_reshape(t, Shape::new([channels]));
        (dx, channel(gamma_grad), channel(beta_grad))
    }
}

/// The backward pass of the fused norm under autodiff.
#[derive(Debug)]
struct InstanceNormGpuBackward;

impl<B: InstanceNormGpuBackend> Backward<B, 3> for InstanceNormGpuBackward {
    /// Input and γ, and the statistics of the forward pass.
    type State = (NodeId, NodeId, B::FloatTensorPrimitive);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x_state, gamma_state, stats) = ops.state;
        let x = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(x_state);
        let gamma = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(gamma_state);
        let (grad_x, grad_gamma, grad_beta) = B::instance_norm_grads(x, stats, gamma, grad);
        for (node, g) in [
            (node_x, grad_x),
            (node_gamma, grad_gamma),
            (node_beta, grad_beta),
        ] {
            if let Some(node) = node {
                grads.register::<B>(node.id, g);
            }
        }
    }
}

impl<B: InstanceNormGpuBackend, C: CheckpointStrategy> InstanceNormGpuBackend for Autodiff<B, C> {
    fn instance_norm_keeping(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let prepared = InstanceNormGpuBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful();
        let (out, stats) = match prepared {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let gamma_state = prep.checkpoint(&gamma);
                let (out, stats) = B::instance_norm_keeping(
                    x.into_primitive(),
                    gamma.into_primitive(),
                    beta.into_primitive(),
                    epsilon,
                );
                (
                    prep.finish((x_state, gamma_state, stats.clone()), out),
                    stats,
                )
            }
            OpsKind::UnTracked(prep) => {
                let (out, stats) = B::instance_norm_keeping(
                    x.into_primitive(),
                    gamma.into_primitive(),
                    beta.into_primitive(),
                    epsilon,
                );
                (prep.finish(out), stats)
            }
        };
        (out, Self::from_inner(stats))
    }

    /// Not differentiated (the forward pass's backward step calls the inner backend's).
    fn instance_norm_grads(
        x: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (x, stats) = (Self::inner(x), Self::inner(stats));
        let (gamma, grad) = (Self::inner(gamma), Self::inner(grad));
        let (dx, dgamma, dbeta) = B::instance_norm_grads(x, stats, gamma, grad);
        (
            Self::from_inner(dx),
            Self::from_inner(dgamma),
            Self::from_inner(dbeta),
        )
    }
}
