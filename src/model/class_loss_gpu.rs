//! The class cross-entropy of the classification head (logits `[N, K]` against the items'
//! classes, the mean over items) on burn's GPU backend as one kernel forward and one backward,
//! where burn's `CrossEntropyLoss` composes it from a log-softmax (two reductions, a
//! subtraction), a gather and a mean forward and about eight launches backward (a scatter into
//! zeros, exponentials, products, reductions, a mask) — thirteen launches a training step for
//! a `[2, 2]` tensor, and a small network's GPU step is bound by its launches.
//!
//! Forward one workgroup: each thread takes items n (strided by the workgroup), computes the
//! softmax p of its logits (kept for the backward pass) and `log Σ_k exp z_k − z_y`, then a tree
//! sums the items' terms; backward a thread per logit writes `(p_k − [k = y]) · g / N`.
//!
//! Invariants: equal to burn's `CrossEntropyLoss` and its gradient to float rounding
//! (`tests/model.rs`, on lavapipe); f32 logits; the classes as f32 values (a value outside
//! `0..K` adds no term and gets no gradient, where burn's gather would read out of bounds);
//! [`class_cross_entropy`] routes nothing else here.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::fusion::custom::TensorSpec;
use burn::backend::tensor::FloatTensor;
use burn::backend::TensorMetadata;
use burn::backend::{backend_extension, Autodiff, AutodiffBackend, Backend, Dispatch};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::{Int, Tensor};
use burn::tensor::{DType, Shape};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeBackend;
use cubecl::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::norm_gpu::{empty_like, workgroup_sum, WORKGROUP};

/// Launches of this module's kernels in this process (what tests read to know the class loss
/// took this route).
static LAUNCHES: AtomicUsize = AtomicUsize::new(0);

/// How many times this module's kernels have run in this process.
pub fn kernel_launches() -> usize {
    LAUNCHES.load(Ordering::Relaxed)
}

/// The cross-entropy of class logits `cls [N, C]` against `classes [N]`, the mean over items:
/// this module's kernels for f32 logits on burn's GPU backend, burn's `CrossEntropyLoss`
/// otherwise.
pub fn class_cross_entropy(cls: Tensor<2>, classes: Tensor<1, Int>) -> Tensor<1> {
    let [items, labels] = cls.dims();
    let fits = items > 0
        && labels > 0
        && classes.dims() == [items]
        && cls.dtype() == DType::F32
        && super::conv_gpu::on_gpu(&cls.device());
    if !fits {
        return CrossEntropyLossConfig::new()
            .init(&cls.device())
            .forward(cls, classes);
    }
    let classes = classes.float().cast(burn::tensor::FloatDType::F32);
    let (loss, _probs) = <Dispatch as ClassLossGpuBackend>::class_cross_entropy_keeping(
        cls.into_dispatch(),
        classes.into_dispatch(),
    );
    Tensor::from_dispatch(loss)
}

/// Backends with the fused class cross-entropy that keeps the softmax for its backward pass
/// (burn's GPU backend).
#[backend_extension(Cube, Fusion, Autodiff)]
pub trait ClassLossGpuBackend: Backend {
    /// The mean cross-entropy `[1]` of `logits [N, K]` against `classes [N]` (f32 class
    /// values), and the softmax `[N, K]`.
    #[fusion(meta = forward_specs)]
    fn class_cross_entropy_keeping(
        logits: FloatTensor<Self>,
        classes: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// ∂L/∂logits for the loss's gradient `grad [1]`, given the softmax and the classes.
    #[fusion(meta = backward_spec)]
    fn class_cross_entropy_grad(
        probs: FloatTensor<Self>,
        classes: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self>;
}

/// The loss's and the softmax's sizes and types, for burn's fusion.
fn forward_specs(logits: &TensorSpec, _classes: &TensorSpec) -> (TensorSpec, TensorSpec) {
    (
        TensorSpec::new(Shape::new([1]), logits.dtype),
        logits.clone(),
    )
}

/// The logits' gradient's size and type (the softmax's), for burn's fusion.
fn backward_spec(probs: &TensorSpec, _classes: &TensorSpec, _grad: &TensorSpec) -> TensorSpec {
    probs.clone()
}

/// The class a stored class value names, `labels` (none) outside `0..labels`.
#[cube]
fn class_of(value: f32, labels: usize) -> usize {
    let inside = value >= 0.0 && value < f32::cast_from(labels);
    select(inside, usize::cast_from(select(inside, value, 0.0)), labels)
}

/// Forward: one workgroup; thread t takes items t, t + WORKGROUP, …
#[cube(launch_unchecked)]
fn class_loss_forward(
    logits: &[f32],
    classes: &[f32],
    probs: &mut [f32],
    loss: &mut [f32],
    items: usize,
    labels: usize,
) {
    let unit = UNIT_POS as usize;
    let mut sum = 0.0f32;
    for n in range_stepped(unit, items, WORKGROUP) {
        let base = n * labels;
        let mut max = logits[base];
        for k in 1..labels {
            max = f32::max(max, logits[base + k]);
        }
        let mut total = 0.0f32;
        for k in 0..labels {
            total += f32::exp(logits[base + k] - max);
        }
        for k in 0..labels {
            probs[base + k] = f32::exp(logits[base + k] - max) / total;
        }
        let y = class_of(classes[n], labels);
        if y < labels {
            sum += max + f32::ln(total) - logits[base + y];
        }
    }
    let mut shared = Shared::<[f32]>::new_slice(WORKGROUP);
    let total = workgroup_sum(&mut shared, sum);
    if unit == 0 {
        loss[0] = total / f32::cast_from(items);
    }
}

/// Backward: a thread per logit (n, k).
#[cube(launch_unchecked)]
fn class_loss_backward(
    probs: &[f32],
    classes: &[f32],
    grad: &[f32],
    dlogits: &mut [f32],
    items: usize,
    labels: usize,
) {
    if ABSOLUTE_POS >= items * labels {
        terminate!();
    }
    let (n, k) = (ABSOLUTE_POS / labels, ABSOLUTE_POS % labels);
    let y = class_of(classes[n], labels);
    let target = select(y == k, 1.0f32, 0.0f32);
    let value = (probs[ABSOLUTE_POS] - target) * grad[0] / f32::cast_from(items);
    dlogits[ABSOLUTE_POS] = select(y < labels, value, 0.0f32);
}

impl ClassLossGpuBackend for CubeBackend {
    fn class_cross_entropy_keeping(
        logits: CubeTensor,
        classes: CubeTensor,
    ) -> (CubeTensor, CubeTensor) {
        let [logits, classes] = [logits, classes].map(into_contiguous);
        let dims = logits.shape();
        let (items, labels) = (dims[0], dims[1]);
        let probs = empty_like(&logits, logits.shape());
        let loss = empty_like(&logits, Shape::new([1]));
        let client = logits.client.clone();
        // SAFETY: logits and probs hold `items × labels` f32s (both at least 1: the router
        // checks), classes `items`, loss one; the one workgroup's threads read and write items
        // below `items`, and a class outside `0..labels` indexes nothing.
        unsafe {
            class_loss_forward::launch_unchecked(
                &client,
                CubeCount::Static(1, 1, 1),
                CubeDim::new_1d(WORKGROUP as u32),
                logits.into_buffer_arg(),
                classes.into_buffer_arg(),
                probs.clone().into_buffer_arg(),
                loss.clone().into_buffer_arg(),
                items,
                labels,
            );
        }
        LAUNCHES.fetch_add(1, Ordering::Relaxed);
        (loss, probs)
    }

    fn class_cross_entropy_grad(
        probs: CubeTensor,
        classes: CubeTensor,
        grad: CubeTensor,
    ) -> CubeTensor {
        let [probs, classes, grad] = [probs, classes, grad].map(into_contiguous);
        let dims = probs.shape();
        let (items, labels) = (dims[0], dims[1]);
        let dlogits = empty_like(&probs, probs.shape());
        let client = probs.client.clone();
        let (count, dim) = super::conv_gpu::launch_grid(&client, items * labels);
        // SAFETY: as in the forward pass; grad holds one f32; threads past `items × labels`
        // stop at once.
        unsafe {
            class_loss_backward::launch_unchecked(
                &client,
                count,
                dim,
                probs.into_buffer_arg(),
                classes.into_buffer_arg(),
                grad.into_buffer_arg(),
                dlogits.clone().into_buffer_arg(),
                items,
                labels,
            );
        }
        LAUNCHES.fetch_add(1, Ordering::Relaxed);
        dlogits
    }
}

/// The backward pass of the fused class loss under autodiff.
#[derive(Debug)]
struct ClassLossGpuBackward;

impl<B: ClassLossGpuBackend> Backward<B, 1> for ClassLossGpuBackward {
    /// The softmax and the classes of the forward pass.
    type State = [B::FloatTensorPrimitive; 2];

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let [probs, classes] = ops.state;
        if let Some(node) = node {
            grads.register::<B>(node.id, B::class_cross_entropy_grad(probs, classes, grad));
        }
    }
}

impl<B: ClassLossGpuBackend, C: CheckpointStrategy> ClassLossGpuBackend for Autodiff<B, C> {
    fn class_cross_entropy_keeping(
        logits: FloatTensor<Self>,
        classes: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let prepared = ClassLossGpuBackward
            .prepare::<C>([logits.node()])
            .compute_bound()
            .stateful();
        let classes = classes.into_primitive();
        let (loss, probs) =
            B::class_cross_entropy_keeping(logits.into_primitive(), classes.clone());
        let loss = match prepared {
            OpsKind::Tracked(prep) => prep.finish([probs.clone(), classes], loss),
            OpsKind::UnTracked(prep) => prep.finish(loss),
        };
        (loss, Self::from_inner(probs))
    }

    /// Not differentiated (the forward pass's backward step calls the inner backend's).
    fn class_cross_entropy_grad(
        probs: FloatTensor<Self>,
        classes: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        let [probs, classes, grad] = [probs, classes, grad].map(Self::inner);
        Self::from_inner(B::class_cross_entropy_grad(probs, classes, grad))
    }
}
