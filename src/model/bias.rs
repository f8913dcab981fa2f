//! A convolution's per-channel bias as one operation with its own backward pass, on burn's CPU
//! backend. burn adds a bias `[C]` reshaped to `[1, C, 1, 1, 1]` by broadcasting, and its
//! backward pass reduces the broadcast gradient with a generic `sum_dim` that copies and zeroes
//! the whole gradient first, on one core: for the U-Net's convolutions a sixth of a 32³
//! training step's single-threaded time. Here the forward pass adds the bias in place (the
//! convolution's fresh output), one pass over the planes in parallel; backward, the input's
//! gradient is the output's own (no copy) and the bias's the per-channel sums over items and
//! voxels, in parallel.
//!
//! Invariants: equal to burn's broadcast add and its gradients to float rounding
//! (`tests/model.rs`); sums in f64; f32 only and only on the CPU backend ([`add_channel_bias`]
//! checks), everything else takes burn's broadcast add.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex};
use burn::prelude::*;
use burn::tensor::{DType, TensorData};
use rayon::prelude::*;

/// Backends with a fused per-channel bias.
#[backend_extension(Flex, Autodiff)]
pub trait ChannelBiasBackend: Backend {
    /// `x [N, C, …]` plus `bias [C]` on every voxel of channel c.
    fn channel_bias(x: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// `x [N, C, …]` plus `bias [C]` along axis 1: the fused operation for f32 values on burn's CPU
/// backend, burn's broadcast add otherwise.
pub fn add_channel_bias<const D: usize>(x: Tensor<D>, bias: Tensor<1>) -> Tensor<D> {
    let fits = D >= 2
        && x.dtype() == DType::F32
        && bias.dtype() == DType::F32
        && x.device().inner() == Device::flex()
        && x.dims()[1] == bias.dims()[0];
    if !fits {
        let mut shape = [1i64; D];
        shape[1] = -1;
        return x + bias.reshape(shape);
    }
    Tensor::from_dispatch(<Dispatch as ChannelBiasBackend>::channel_bias(
        x.into_dispatch(),
        bias.into_dispatch(),
    ))
}

impl ChannelBiasBackend for Flex {
    fn channel_bias(x: FlexTensor, bias: FlexTensor) -> FlexTensor {
        let shape = x.layout().shape().clone();
        // A contiguous `x` is its own copy here, the only owner of its values once `x` is
        // dropped, so the bias is added in place (burn-flex copies shared values on write).
        let mut out = x.to_contiguous();
        drop(x);
        let bias = bias.to_contiguous();
        let bias = bias.storage::<f32>();
        let voxels = (shape.num_elements() / (shape[0] * shape[1]).max(1)).max(1);
        out.storage_mut::<f32>()
            .par_chunks_mut(voxels)
            .enumerate()
            .for_each(|(plane, values)| {
                let b = bias[plane % bias.len()];
                values.iter_mut().for_each(|v| *v += b);
            });
        out
    }
}

/// Σ over items and voxels of each channel of `grad [N, C, …]`: the bias's gradient `[C]`.
fn channel_sums(grad: &FlexTensor) -> FlexTensor {
    let shape = grad.layout().shape().clone();
    let channels = shape[1];
    let plane_sums: Vec<f64> = super::conv::with_planes(grad, |planes| {
        planes
            .par_iter()
            .map(|plane| super::norm::lane_sum(plane, plane, |v, _| v as f64))
            .collect()
    });
    let mut sums = vec![0.0f64; channels];
    for (plane, s) in plane_sums.iter().enumerate() {
        sums[plane % channels] += s;
    }
    let sums: Vec<f32> = sums.into_iter().map(|s| s as f32).collect();
    FlexTensor::from_data(TensorData::new(sums, [channels]))
}

/// The backward pass of the fused bias under autodiff.
#[derive(Debug)]
struct ChannelBiasBackward;

impl Backward<Flex, 2> for ChannelBiasBackward {
    type State = ();

    fn backward(self, ops: Ops<(), 2>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_bias] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node);
        if let Some(node) = node_bias {
            grads.register::<Flex>(node.id, channel_sums(&grad));
        }
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, grad);
        }
    }
}

impl<C: CheckpointStrategy> ChannelBiasBackend for Autodiff<Flex, C> {
    fn channel_bias(x: FloatTensor<Self>, bias: FloatTensor<Self>) -> FloatTensor<Self> {
        ChannelBiasBackward
            .prepare::<C>([x.node(), bias.node()])
            .compute_bound()
            .stateless(Flex::channel_bias(
                x.into_primitive(),
                bias.into_primitive(),
            ))
    }
}
