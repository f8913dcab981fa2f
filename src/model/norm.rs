//! The blocks' instance normalisation on burn's CPU backend as one operation with its own
//! backward pass. burn's `InstanceNorm` composes it from eight tensor operations (mean, subtract,
//! square, mean, add, square root, divide, affine), each a pass over the activations forward
//! and more backward; here the forward pass reads the input three times and writes once, the
//! backward pass, with the statistics the forward pass kept, reads input and gradient twice and
//! writes once.
//!
//! For each batch item n and channel c over the voxels v: μ and σ² the mean and (biased)
//! variance, x̂ = (x − μ)/√(σ² + ε), y = γ_c·x̂ + β_c. Backward, with g = ∂L/∂y:
//! ∂L/∂β_c = Σ_{n,v} g, ∂L/∂γ_c = Σ_{n,v} g·x̂, ∂L/∂x = γ_c/√(σ² + ε) · (g − mean_v g −
//! x̂·mean_v(g·x̂)).
//!
//! Invariants: equal to burn's `InstanceNorm::forward` and its gradients to float rounding
//! (`tests/model.rs`); statistics are summed in f64; called only on the CPU backend for an affine
//! norm ([`instance_norm_forward`] checks), other cases run burn's module.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex};
use burn::nn::InstanceNorm;
use burn::prelude::*;
use burn::tensor::{DType, TensorData};
use rayon::prelude::*;
use std::mem::MaybeUninit;
use std::sync::Arc;

use super::conv::written;

/// Backends with a fused instance normalisation (affine).
#[backend_extension(Flex, Autodiff)]
pub trait InstanceNormBackend: Backend {
    /// `x [N, C, …]` normalised over each item's and channel's voxels, then `γ_c·x̂ + β_c`
    /// (`gamma`, `beta`: `[C]`).
    fn instance_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self>;
}

/// `norm` applied to `x`: the fused operation for an affine norm of f32 values on burn's CPU
/// backend, [`super::norm_gpu`]'s on its GPU backend (f32, f16 or bf16 values),
/// `InstanceNorm::forward` otherwise (in f32 for half-precision values).
pub fn instance_norm_forward<const D: usize>(norm: &InstanceNorm, x: Tensor<D>) -> Tensor<D> {
    let (Some(gamma), Some(beta)) = (&norm.gamma, &norm.beta) else {
        return in_f32_unless_f32(norm, x);
    };
    let features = super::conv_gpu_direct::is_feature_type(x.dtype());
    // One GPU workgroup per plane, on one grid axis (at most 65 535 workgroups); features in
    // f32, or f16 or bf16 read into f32 sums by the kernels (a mixed-precision step).
    let gpu_fits = D >= 3
        && features
        && x.dims()[1] == norm.num_channels
        && gamma.dtype() == DType::F32
        && beta.dtype() == DType::F32
        && x.shape().num_elements() > 0
        && x.dims()[0] * x.dims()[1] <= u16::MAX as usize
        && super::conv_gpu::on_gpu(&x.device());
    if gpu_fits {
        use super::norm_gpu::InstanceNormGpuBackend;
        let (y, _stats) = <Dispatch as InstanceNormGpuBackend>::instance_norm_keeping(
            x.into_dispatch(),
            gamma.val().into_dispatch(),
            beta.val().into_dispatch(),
            norm.epsilon,
        );
        return Tensor::from_dispatch(y);
    }
    if super::precision::is_half(&x) {
        return in_f32_unless_f32(norm, x);
    }
    let plain = D >= 3 && x.dtype() == DType::F32 && x.dims()[1] == norm.num_channels;
    if !plain || x.device().inner() != Device::flex() {
        return norm.forward(x);
    }
    Tensor::from_dispatch(<Dispatch as InstanceNormBackend>::instance_norm(
        x.into_dispatch(),
        gamma.val().into_dispatch(),
        beta.val().into_dispatch(),
        norm.epsilon,
    ))
}

/// `norm` of a half-precision `x` computed in f32 (autocast's rule for normalisations; the
/// result in x's type) where no kernel reads its type; `InstanceNorm::forward` of any other.
fn in_f32_unless_f32<const D: usize>(norm: &InstanceNorm, x: Tensor<D>) -> Tensor<D> {
    if !super::precision::is_half(&x) {
        return norm.forward(x);
    }
    let dtype = super::precision::float_dtype_of(&x);
    let out = instance_norm_forward(norm, x.cast(burn::tensor::FloatDType::F32));
    out.cast(dtype)
}

impl InstanceNormBackend for Flex {
    fn instance_norm(
        x: FlexTensor,
        gamma: FlexTensor,
        beta: FlexTensor,
        epsilon: f64,
    ) -> FlexTensor {
        normalise(x, gamma, beta, epsilon).0
    }
}

/// The fused norm's output, and each plane's (item's and channel's) statistics.
fn normalise(
    x: FlexTensor,
    gamma: FlexTensor,
    beta: FlexTensor,
    epsilon: f64,
) -> (FlexTensor, Vec<Stats>) {
    let shape = x.layout().shape().clone();
    let x = x.to_contiguous();
    let (gamma, beta) = (gamma.to_contiguous(), beta.to_contiguous());
    let (gamma, beta) = (gamma.storage::<f32>(), beta.storage::<f32>());
    let voxels = shape.num_elements() / (shape[0] * shape[1]).max(1);
    let mut stats = Vec::new();
    let out = written(shape.num_elements(), |out| {
        stats = out
            .par_chunks_mut(voxels.max(1))
            .zip(x.storage::<f32>().par_chunks(voxels.max(1)))
            .enumerate()
            .map(|(plane, (y, x))| {
                let c = plane % gamma.len();
                let stats = Stats::of(x, epsilon);
                let scale = gamma[c] / stats.sd;
                for (y, &v) in y.iter_mut().zip(x) {
                    y.write((v - stats.mean) * scale + beta[c]);
                }
                stats
            })
            .collect();
    });
    (FlexTensor::from_data(TensorData::new(out, shape)), stats)
}

/// One item's and channel's mean and standard deviation (with ε).
#[derive(Clone, Copy, Debug)]
struct Stats {
    mean: f32,
    sd: f32,
}

impl Stats {
    fn of(x: &[f32], epsilon: f64) -> Self {
        let n = x.len().max(1) as f64;
        let mean = lane_sum(x, x, |v, _| v as f64) / n;
        let var = lane_sum(x, x, |v, _| (v as f64 - mean).powi(2)) / n;
        Self {
            mean: mean as f32,
            sd: (var + epsilon).sqrt() as f32,
        }
    }
}

/// Σ f(a_i, b_i) over the shorter of `a` and `b`, in eight independent partial sums (which the
/// compiler can keep in vector registers; one running sum is a chain of dependent additions).
#[inline(always)]
pub(super) fn lane_sum(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f64) -> f64 {
    let [sum] = lane_sums(a, b, |p, q| [f(p, q)]);
    sum
}

/// [`lane_sum`] of `S` terms at once: the `S` sums of f(a_i, b_i)'s components, in one pass.
#[inline(always)]
fn lane_sums<const S: usize>(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> [f64; S]) -> [f64; S] {
    const LANES: usize = 8;
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut partial = [[0.0f64; LANES]; S];
    for (ca, cb) in a.chunks_exact(LANES).zip(b.chunks_exact(LANES)) {
        for lane in 0..LANES {
            let terms = f(ca[lane], cb[lane]);
            for (sum, term) in partial.iter_mut().zip(terms) {
                sum[lane] += term;
            }
        }
    }
    let tail = n - n % LANES;
    let mut rest = [0.0f64; S];
    for (&p, &q) in a[tail..].iter().zip(&b[tail..]) {
        rest.iter_mut().zip(f(p, q)).for_each(|(r, t)| *r += t);
    }
    std::array::from_fn(|i| partial[i].iter().sum::<f64>() + rest[i])
}

/// The gradients of input, γ and β of the fused norm, given the input, each plane's statistics
/// (the forward pass's), γ and the output's gradient.
fn instance_norm_grads(
    x: &FlexTensor,
    stats: &[Stats],
    gamma: &FlexTensor,
    grad: &FlexTensor,
) -> [FlexTensor; 3] {
    let shape = x.layout().shape().clone();
    let channels = shape[1];
    let (x, grad, gamma) = (
        x.to_contiguous(),
        grad.to_contiguous(),
        gamma.to_contiguous(),
    );
    let gamma_values = gamma.storage::<f32>();
    let voxels = (shape.num_elements() / (shape[0] * channels).max(1)).max(1);
    let mut sums: Vec<(f64, f64)> = Vec::new();
    let grad_x = written(shape.num_elements(), |grad_x| {
        sums = grad_x
            .par_chunks_mut(voxels)
            .zip(x.storage::<f32>().par_chunks(voxels))
            .zip(grad.storage::<f32>().par_chunks(voxels))
            .enumerate()
            .map(|(plane, ((dx, x), g))| {
                let stats = stats
                    .get(plane)
                    .copied()
                    .unwrap_or(Stats { mean: 0.0, sd: 1.0 });
                plane_grad(dx, (x, stats), g, gamma_values[plane % channels])
            })
            .collect();
    });
    let mut grad_gamma = vec![0.0f32; channels];
    let mut grad_beta = vec![0.0f32; channels];
    for (plane, (sum_g, sum_gx)) in sums.iter().enumerate() {
        grad_beta[plane % channels] += *sum_g as f32;
        grad_gamma[plane % channels] += *sum_gx as f32;
    }
    [
        FlexTensor::from_data(TensorData::new(grad_x, shape)),
        FlexTensor::from_data(TensorData::new(grad_gamma, [channels])),
        FlexTensor::from_data(TensorData::new(grad_beta, [channels])),
    ]
}

/// One plane's input gradient written over `dx`; returns Σ g and Σ g·x̂ (β's and γ's gradient
/// shares).
fn plane_grad(
    dx: &mut [MaybeUninit<f32>],
    (x, stats): (&[f32], Stats),
    g: &[f32],
    gamma: f32,
) -> (f64, f64) {
    let normalised = |v: f32| (v - stats.mean) / stats.sd;
    let [sum_g, sum_gx] = lane_sums(g, x, |gv, xv| {
        let gv = gv as f64;
        [gv, gv * normalised(xv) as f64]
    });
    let n = x.len().max(1) as f64;
    let (mean_g, mean_gx) = ((sum_g / n) as f32, (sum_gx / n) as f32);
    let scale = gamma / stats.sd;
    for ((d, &gv), &xv) in dx.iter_mut().zip(g).zip(x) {
        d.write(scale * (gv - mean_g - normalised(xv) * mean_gx));
    }
    (sum_g, sum_gx)
}

/// The backward pass of the fused norm under autodiff.
#[derive(Debug)]
struct InstanceNormBackward;

impl Backward<Flex, 3> for InstanceNormBackward {
    /// Input and γ, and each plane's statistics from the forward pass.
    type State = (NodeId, NodeId, Arc<Vec<Stats>>);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        let (x_state, gamma_state, stats) = ops.state;
        let x = checkpointer.retrieve_node_output::<FlexTensor>(x_state);
        let gamma = checkpointer.retrieve_node_output::<FlexTensor>(gamma_state);
        let [grad_x, grad_gamma, grad_beta] = instance_norm_grads(&x, &stats, &gamma, &grad);
        for (node, g) in [
            (node_x, grad_x),
            (node_gamma, grad_gamma),
            (node_beta, grad_beta),
        ] {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, g);
            }
        }
    }
}

impl<C: CheckpointStrategy> InstanceNormBackend for Autodiff<Flex, C> {
    fn instance_norm(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        epsilon: f64,
    ) -> FloatTensor<Self> {
        let prepared = InstanceNormBackward
            .prepare::<C>([x.node(), gamma.node(), beta.node()])
            .compute_bound()
            .stateful();
        match prepared {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let gamma_state = prep.checkpoint(&gamma);
                let (out, stats) = normalise(
                    x.into_primitive(),
                    gamma.into_primitive(),
                    beta.into_primitive(),
                    epsilon,
                );
                prep.finish((x_state, gamma_state, Arc::new(stats)), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::instance_norm(
                x.into_primitive(),
                gamma.into_primitive(),
                beta.into_primitive(),
                epsilon,
            )),
        }
    }
}
