//! One backend extension for the network's biased layers that run as kernels of our own on
//! burn's GPU backend — the 1×1×1 convolutions ([`super::pointwise_gpu`]) and the upsamplings
//! ([`super::upconv_gpu`]) — and their one backward pass under autodiff: forward
//! `(x, weight, bias) → y`, backward `(x, weight, output gradient) → (∂x, ∂weight, ∂bias)`.
//!
//! Invariants: the layer modules' kernels do the work (their invariants hold); the backward
//! pass keeps x and the weight (burn's checkpointing) and registers the gradient of each input
//! that is tracked.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::fusion::custom::TensorSpec;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, AutodiffBackend, Backend, Dispatch};
use burn::prelude::Tensor;
use burn::tensor::Shape;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeBackend;

/// Which biased layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BiasedLayer {
    /// A 1×1×1 convolution, weight `[C_out, C_in, 1, 1, 1]` ([`super::pointwise_gpu`]).
    Pointwise,
    /// A 2×2×2 (1×2×2) transposed convolution at stride 2, weight `[C_in, C_out, kd, 2, 2]`
    /// ([`super::upconv_gpu`]).
    Upsample,
}

impl BiasedLayer {
    /// The output channels of a weight of sizes `weight`.
    fn out_channels(self, weight: &Shape) -> usize {
        match self {
            Self::Pointwise => weight[0],
            Self::Upsample => weight[1],
        }
    }
}

/// `layer` of `x` by `weight`, plus `bias`, on burn's GPU backend (x f32, f16 or bf16, weight and
/// bias f32, sizes that the layer's kernels fit): the one way the layer modules reach [`BiasedLayerGpuBackend`].
pub fn biased_layer(
    layer: BiasedLayer,
    x: Tensor<5>,
    weight: Tensor<5>,
    bias: Tensor<1>,
) -> Tensor<5> {
    Tensor::from_dispatch(<Dispatch as BiasedLayerGpuBackend>::biased_layer(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        layer,
    ))
}

/// Backends with the fused biased layers (burn's GPU backend).
#[backend_extension(Cube, Fusion, Autodiff)]
pub trait BiasedLayerGpuBackend: Backend {
    /// `layer` of `x` by `weight`, plus `bias [C_out]`.
    #[fusion(meta = forward_spec)]
    fn biased_layer(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        layer: BiasedLayer,
    ) -> FloatTensor<Self>;

    /// The gradients of x, the weight and the bias of `layer`, given the output's gradient.
    #[fusion(meta = grads_specs)]
    fn biased_layer_grads(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        layer: BiasedLayer,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// The output's size and type, for burn's fusion.
fn forward_spec(
    x: &TensorSpec,
    weight: &TensorSpec,
    _bias: &TensorSpec,
    layer: &BiasedLayer,
) -> TensorSpec {
    match layer {
        BiasedLayer::Pointwise => super::pointwise_gpu::out_spec(x, weight),
        BiasedLayer::Upsample => super::upconv_gpu::out_spec(x, weight),
    }
}

/// The three gradients' sizes and types, for burn's fusion.
fn grads_specs(
    x: &TensorSpec,
    weight: &TensorSpec,
    _grad: &TensorSpec,
    layer: &BiasedLayer,
) -> (TensorSpec, TensorSpec, TensorSpec) {
    let channels = layer.out_channels(&weight.shape);
    let bias = TensorSpec::new(Shape::new([channels]), weight.dtype);
    (x.clone(), weight.clone(), bias)
}

impl BiasedLayerGpuBackend for CubeBackend {
    fn biased_layer(
        x: CubeTensor,
        weight: CubeTensor,
        bias: CubeTensor,
        layer: BiasedLayer,
    ) -> CubeTensor {
        match layer {
            BiasedLayer::Pointwise => super::pointwise_gpu::forward(x, weight, bias),
            BiasedLayer::Upsample => super::upconv_gpu::forward(x, weight, bias),
        }
    }

    fn biased_layer_grads(
        x: CubeTensor,
        weight: CubeTensor,
        grad: CubeTensor,
        layer: BiasedLayer,
    ) -> (CubeTensor, CubeTensor, CubeTensor) {
        // The output's gradient in the output's (x's) type, as the kernels read it.
        let grad = super::conv_gpu_direct::in_type(grad, x.dtype);
        match layer {
            BiasedLayer::Pointwise => super::pointwise_gpu::grads(x, weight, grad),
            BiasedLayer::Upsample => super::upconv_gpu::grads(x, weight, grad),
        }
    }
}

/// The backward pass of a fused biased layer under autodiff.
#[derive(Debug)]
struct BiasedLayerBackward;

impl<B: BiasedLayerGpuBackend> Backward<B, 3> for BiasedLayerBackward {
    /// The input, the weight and the layer.
    type State = (NodeId, NodeId, BiasedLayer);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node_x, node_weight, node_bias] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (x_state, weight_state, layer) = ops.state;
        let x = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(x_state);
        let weight = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(weight_state);
        let (dx, dw, db) = B::biased_layer_grads(x, weight, grad, layer);
        for (node, g) in [(node_x, dx), (node_weight, dw), (node_bias, db)] {
            if let Some(node) = node {
                grads.register::<B>(node.id, g);
            }
        }
    }
}

impl<B: BiasedLayerGpuBackend, C: CheckpointStrategy> BiasedLayerGpuBackend for Autodiff<B, C> {
    fn biased_layer(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        layer: BiasedLayer,
    ) -> FloatTensor<Self> {
        let prepared = BiasedLayerBackward
            .prepare::<C>([x.node(), weight.node(), bias.node()])
            .compute_bound()
            .stateful();
        match prepared {
            OpsKind::Tracked(mut prep) => {
                let state = (prep.checkpoint(&x), prep.checkpoint(&weight), layer);
                let y = B::biased_layer(
                    x.into_primitive(),
                    weight.into_primitive(),
                    bias.into_primitive(),
                    layer,
                );
                prep.finish(state, y)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::biased_layer(
                x.into_primitive(),
                weight.into_primitive(),
                bias.into_primitive(),
                layer,
            )),
        }
    }

    /// Not differentiated (the forward pass's backward step calls the inner backend's).
    fn biased_layer_grads(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        layer: BiasedLayer,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let [x, weight, grad] = [x, weight, grad].map(Self::inner);
        let (dx, dw, db) = B::biased_layer_grads(x, weight, grad, layer);
        (
            Self::from_inner(dx),
            Self::from_inner(dw),
            Self::from_inner(db),
        )
    }
}
