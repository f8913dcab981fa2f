//! The U-Net's ReLUs on burn's CPU backend as operations of their own, in parallel: `relu(x)`
//! and a residual block's `relu(a + b)` in one pass. burn's ReLU keeps its input for the
//! backward pass, so its forward pass (holding a second handle) writes a fresh output, and both
//! passes and the residual sum run on one core while the other waits: about a twentieth of a
//! 32³ training step. Here the forward pass writes in place where the input is the only handle
//! (a norm's or a sum's fresh output), chunks in parallel; backward, the output's gradient is
//! masked where the output is zero, in place where it is the only handle, and the sum's two
//! inputs share that gradient.
//!
//! Invariants: equal to burn's `relu` (and `relu(a + b)`) and their gradients, NaN propagating as
//! burn's does (`tests/model.rs`); f32 only and only on the CPU backend ([`relu`] and
//! [`add_relu`] check), everything else takes burn's operations.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex};
use burn::prelude::*;
use burn::tensor::{DType, TensorData};

use super::conv::written;
use rayon::prelude::*;

/// Values per parallel chunk.
const CHUNK: usize = 1 << 14;

/// Backends with a ReLU and a summed ReLU of their own.
#[backend_extension(Flex, Autodiff)]
pub trait ReluBackend: Backend {
    /// `max(x, 0)` (NaN stays NaN).
    fn relu_own(x: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `max(a + b, 0)` for `a` and `b` of one shape.
    fn add_relu(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// Whether `t` takes the CPU backend's own operations.
fn on_cpu<const D: usize>(t: &Tensor<D>) -> bool {
    t.dtype() == DType::F32 && t.device().inner() == Device::flex()
}

/// `max(x, 0)`: the CPU backend's own operation for f32 values, burn's `relu` otherwise.
pub fn relu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if !on_cpu(&x) {
        return burn::tensor::activation::relu(x);
    }
    Tensor::from_dispatch(<Dispatch as ReluBackend>::relu_own(x.into_dispatch()))
}

/// `max(a + b, 0)`: the CPU backend's own operation for f32 values of one shape, burn's sum and
/// `relu` otherwise.
pub fn add_relu<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> Tensor<D> {
    if !(on_cpu(&a) && on_cpu(&b) && a.dims() == b.dims()) {
        return burn::tensor::activation::relu(a + b);
    }
    let out = <Dispatch as ReluBackend>::add_relu(a.into_dispatch(), b.into_dispatch());
    Tensor::from_dispatch(out)
}

/// ReLU keeping NaN, as burn's.
fn clamp(v: f32) -> f32 {
    if v.is_nan() || v > 0.0 {
        v
    } else {
        0.0
    }
}

impl ReluBackend for Flex {
    fn relu_own(x: FlexTensor) -> FlexTensor {
        map_values(x, None, |v, _| clamp(v))
    }

    fn add_relu(a: FlexTensor, b: FlexTensor) -> FlexTensor {
        map_values(a, Some(b), |a, b| clamp(a + b))
    }
}

/// `f(x, with)` value by value (`with` zero when absent; of x's shape), in parallel chunks: in
/// place where (contiguous) x is the only handle on its values, else into a fresh tensor.
fn map_values(
    x: FlexTensor,
    with: Option<FlexTensor>,
    f: impl Fn(f32, f32) -> f32 + Sync,
) -> FlexTensor {
    let mut x = x.to_contiguous();
    let with = with.map(|w| w.to_contiguous());
    let with: Option<&[f32]> = with.as_ref().map(|w| w.storage::<f32>());
    let other = |i: usize, n: usize| with.map(|w| &w[i * CHUNK..][..n]);
    if let Some(values) = x.try_storage_mut::<f32>() {
        values
            .par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(i, chunk)| match other(i, chunk.len()) {
                Some(w) => chunk.iter_mut().zip(w).for_each(|(v, &w)| *v = f(*v, w)),
                None => chunk.iter_mut().for_each(|v| *v = f(*v, 0.0)),
            });
        return x;
    }
    let src = x.storage::<f32>();
    let out = written(src.len(), |out| {
        out.par_chunks_mut(CHUNK)
            .zip(src.par_chunks(CHUNK))
            .enumerate()
            .for_each(|(i, (out, src))| {
                let w = other(i, src.len());
                for (k, (o, &v)) in out.iter_mut().zip(src).enumerate() {
                    o.write(f(v, w.map_or(0.0, |w| w[k])));
                }
            })
    });
    let shape: Vec<usize> = x.layout().shape().iter().copied().collect();
    FlexTensor::from_data(TensorData::new(out, shape))
}

/// The output's gradient where the output is positive (or NaN, as burn's), zero elsewhere.
fn masked(grad: FlexTensor, out: &FlexTensor) -> FlexTensor {
    map_values(grad, Some(out.clone()), |g, o| {
        match o.is_nan() || o > 0.0 {
            true => g,
            false => 0.0,
        }
    })
}

/// The backward pass of both operations under autodiff: the masked gradient to every parent.
#[derive(Debug)]
struct ReluBackward;

impl<const N: usize> Backward<Flex, N> for ReluBackward {
    /// The forward pass's output.
    type State = FlexTensor;

    fn backward(self, ops: Ops<FlexTensor, N>, grads: &mut Gradients, _: &mut Checkpointer) {
        let grad = grads.consume::<Flex>(&ops.node);
        let grad = masked(grad, &ops.state);
        for node in ops.parents.into_iter().flatten() {
            grads.register::<Flex>(node.id, grad.clone());
        }
    }
}

impl<C: CheckpointStrategy> ReluBackend for Autodiff<Flex, C> {
    fn relu_own(x: FloatTensor<Self>) -> FloatTensor<Self> {
        match ReluBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => {
                let out = Flex::relu_own(x.into_primitive());
                prep.finish(out.clone(), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::relu_own(x.into_primitive())),
        }
    }

    fn add_relu(a: FloatTensor<Self>, b: FloatTensor<Self>) -> FloatTensor<Self> {
        let prepared = ReluBackward.prepare::<C>([a.node(), b.node()]);
        match prepared.compute_bound().stateful() {
            OpsKind::Tracked(prep) => {
                let out = Flex::add_relu(a.into_primitive(), b.into_primitive());
                prep.finish(out.clone(), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(Flex::add_relu(a.into_primitive(), b.into_primitive()))
            }
        }
    }
}
