//! The U-Net's 1×1×1 convolutions (the decoder blocks' skip projections, the segmentation
//! head) on burn's CPU backend as one operation with its own backward pass: for each batch
//! item `Y = W [C_out, C_in] × X [C_in, voxels]`; backward, the input's gradient `Wᵀ × G` and
//! the kernel's `Σ_items G × Xᵀ`, the products written straight into their outputs
//! ([`super::product`]). As burn tensor operations (a matrix product and its autodiff) each
//! output was zeroed and copied before being written, on one core.
//!
//! Invariants: equal to burn's `conv3d` with a 1×1×1 kernel and its gradients to float
//! rounding (`tests/model.rs`); f32 and non-empty (anything else takes burn's convolution),
//! stride 1, no padding, dilation 1, one group; called only on the CPU backend
//! ([`super::conv::conv3d_forward`] checks).

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::flex::FlexTensor;
use burn::backend::ops::{ConvOptions, ModuleOps};
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Flex};
use burn::tensor::DType;

use super::conv::flex_f32;
use super::product::{per_item, sum_over_voxels, Matrix};

/// Backends with a 1×1×1 convolution (no bias) of their own; the defaults are burn's generic
/// convolution and its gradients.
#[backend_extension(Flex, Autodiff)]
pub trait PointwiseBackend: Backend {
    /// `x [N, C_in, D, H, W]` and `weight [C_out, C_in, 1, 1, 1]` → `[N, C_out, D, H, W]`.
    fn pointwise(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::conv3d(x, weight, None, unit_options())
    }

    /// The gradient of [`PointwiseBackend::pointwise`] with respect to `x`.
    fn pointwise_x_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        Self::conv3d_x_backward(x, weight, grad, unit_options())
    }

    /// The gradient of [`PointwiseBackend::pointwise`] with respect to `weight`.
    fn pointwise_weight_grad(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        Self::conv3d_weight_backward(x, weight, grad, unit_options())
    }
}

/// Stride 1, no padding, dilation 1, one group.
fn unit_options() -> ConvOptions<3> {
    ConvOptions::new([1; 3], [0; 3], [1; 3], 1)
}

/// The sizes `(N, C, [D, H, W])` of `t [N, C, D, H, W]` when it and `weight` are f32 and `t`
/// is non-empty; `None` for anything else (burn's convolution takes those).
fn sizes(t: &FlexTensor, weight: &FlexTensor) -> Option<(usize, usize, [usize; 3])> {
    let s = t.layout().shape();
    let f32s = t.dtype() == DType::F32 && weight.dtype() == DType::F32;
    let fits = f32s && s.num_dims() == 5 && (0..5).all(|i| s[i] > 0);
    fits.then(|| (s[0], s[1], [s[2], s[3], s[4]]))
}

impl PointwiseBackend for Flex {
    fn pointwise(x: FlexTensor, weight: FlexTensor) -> FlexTensor {
        let Some((n, c_in, [d, h, w])) = sizes(&x, &weight) else {
            return Flex::conv3d(x, weight, None, unit_options());
        };
        let c_out = weight.layout().shape()[0];
        let (x, weight) = (x.to_contiguous(), weight.to_contiguous());
        let weight = Matrix::rows(weight.storage::<f32>(), c_out, c_in, c_in);
        let out = per_item(weight, x.storage::<f32>(), n, d * h * w);
        flex_f32(out, [n, c_out, d, h, w])
    }

    fn pointwise_x_grad(x: FlexTensor, weight: FlexTensor, grad: FlexTensor) -> FlexTensor {
        let Some((n, c_out, [d, h, w])) = sizes(&grad, &weight) else {
            return Flex::conv3d_x_backward(x, weight, grad, unit_options());
        };
        let c_in = weight.layout().shape()[1];
        let (grad, weight) = (grad.to_contiguous(), weight.to_contiguous());
        let weight_t = Matrix::rows(weight.storage::<f32>(), c_out, c_in, c_in).t();
        let x_grad = per_item(weight_t, grad.storage::<f32>(), n, d * h * w);
        flex_f32(x_grad, [n, c_in, d, h, w])
    }

    fn pointwise_weight_grad(x: FlexTensor, weight: FlexTensor, grad: FlexTensor) -> FlexTensor {
        let Some((n, c_in, _)) = sizes(&x, &weight) else {
            return Flex::conv3d_weight_backward(x, weight, grad, unit_options());
        };
        let c_out = grad.layout().shape()[1];
        let (x, grad) = (x.to_contiguous(), grad.to_contiguous());
        let (x, grad) = (x.storage::<f32>(), grad.storage::<f32>());
        let sum = sum_over_voxels(grad, x, n, (c_out, c_in));
        flex_f32(sum, [c_out, c_in, 1, 1, 1])
    }
}

/// The backward pass of [`PointwiseBackend::pointwise`] under autodiff.
#[derive(Debug)]
struct PointwiseBackward;

impl<B: PointwiseBackend> Backward<B, 2> for PointwiseBackward {
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
            let x_grad = B::pointwise_x_grad(x.clone(), weight.clone(), grad.clone());
            grads.register::<B>(node.id, x_grad);
        }
        if let Some(node) = node_weight {
            grads.register::<B>(node.id, B::pointwise_weight_grad(x, weight, grad));
        }
    }
}

impl<B: PointwiseBackend, C: CheckpointStrategy> PointwiseBackend for Autodiff<B, C> {
    fn pointwise(x: FloatTensor<Self>, weight: FloatTensor<Self>) -> FloatTensor<Self> {
        let prepared = PointwiseBackward
            .prepare::<C>([x.node(), weight.node()])
            .compute_bound()
            .stateful();
        match prepared {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let weight_state = prep.checkpoint(&weight);
                let out = B::pointwise(x.into_primitive(), weight.into_primitive());
                prep.finish((x_state, weight_state), out)
            }
            OpsKind::UnTracked(prep) => {
                prep.finish(B::pointwise(x.into_primitive(), weight.into_primitive()))
            }
        }
    }
}
