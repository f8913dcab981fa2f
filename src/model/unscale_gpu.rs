//! The f16 gradient scaler's unscaling on a GPU as one kernel a gradient: each value divided by
//! the loss scale and, in the same pass, [`PARTS`] partial sums of the divided values (whose
//! total an infinity or a NaN anywhere makes non-finite: the step's overflow check, as
//! `precision::unscale_gradients` reads it). burn's composition is a multiplication and a
//! reduction a gradient (two launches, and ~6 operations for the host to record, with their
//! drops): ~110 of an f16 step's 403 launches for the small network's 66 gradients.
//!
//! Invariants: the kernel takes f32 gradients of any shape (made contiguous) and gives the
//! divided gradient in the same shape and `[PARTS]` partial sums (every gradient the same
//! length, so that a step adds them element-wise and sums once); [`PARTS`] workgroups a
//! gradient, each striding over it (one workgroup read a gradient of millions of values alone,
//! on one of a GPU's many cores); one launch a gradient. Anything else (the CPU, a gradient
//! that is not f32) takes burn's operations, with the same results (its sum first, then zeros).

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::fusion::custom::TensorSpec;
use burn::backend::tensor::FloatTensor;
use burn::backend::TensorMetadata;
use burn::backend::{backend_extension, Autodiff, AutodiffBackend, Backend, Dispatch};
use burn::prelude::Tensor;
use burn::tensor::{DType, Shape};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeBackend;
use cubecl::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::norm_gpu::{empty_like, workgroup_sum, WORKGROUP};

/// Launches of this module's kernel in this process (what tests read to know a step took it).
static LAUNCHES: AtomicUsize = AtomicUsize::new(0);

/// How many times this module's kernel has run in this process.
pub fn kernel_launches() -> usize {
    LAUNCHES.load(Ordering::Relaxed)
}

/// Partial sums a gradient's unscaling gives (workgroups a gradient on a GPU).
pub const PARTS: usize = 64;

/// `grad · inverse` and [`PARTS`] partial sums of its values (`[PARTS]` in the gradient's type,
/// summing to the sum): one kernel on a GPU for an f32 gradient; elsewhere (the CPU, another
/// type) burn's multiplication and a sum along one axis (one reduction, where a whole-tensor
/// sum may take burn's atomic route, a fill and a reduction), then zeros.
pub fn unscale_and_sum<const D: usize>(grad: Tensor<D>, inverse: f32) -> (Tensor<D>, Tensor<1>) {
    let elements = grad.shape().num_elements();
    let fits =
        grad.dtype() == DType::F32 && elements > 0 && super::conv_gpu::on_gpu(&grad.device());
    if !fits {
        let unscaled = grad.mul_scalar(inverse);
        let sum = unscaled
            .clone()
            .reshape([1, elements])
            .sum_dim(1)
            .reshape([1]);
        let zeros = Tensor::<1>::zeros([PARTS - 1], &sum.device()).cast(sum.dtype());
        return (unscaled, Tensor::cat(vec![sum, zeros], 0));
    }
    let (unscaled, sum) =
        <Dispatch as UnscaleGpuBackend>::unscale_and_sum(grad.into_dispatch(), inverse);
    (Tensor::from_dispatch(unscaled), Tensor::from_dispatch(sum))
}

/// Backends with the one-pass unscaling (burn's GPU backend).
#[backend_extension(Cube, Fusion, Autodiff)]
pub trait UnscaleGpuBackend: Backend {
    /// `grad · inverse` (f32, any shape) and [`PARTS`] partial sums of its values.
    #[fusion(meta = unscale_specs)]
    fn unscale_and_sum(
        grad: FloatTensor<Self>,
        inverse: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

/// The divided gradient's size and type (the gradient's) and the sums', for burn's fusion.
fn unscale_specs(grad: &TensorSpec, _inverse: &f32) -> (TensorSpec, TensorSpec) {
    (
        grad.clone(),
        TensorSpec::new(Shape::new([PARTS]), grad.dtype),
    )
}

/// [`PARTS`] workgroups; thread t of workgroup w takes values w·WORKGROUP + t, then every
/// PARTS·WORKGROUP further on, and workgroup w writes its sum to `sums[w]`.
#[cube(launch_unchecked)]
fn unscale_kernel(
    grad: &[f32],
    unscaled: &mut [f32],
    sums: &mut [f32],
    elements: usize,
    inverse: f32,
) {
    let unit = UNIT_POS as usize;
    let part = CUBE_POS;
    let mut partial = 0.0f32;
    for i in range_stepped(part * WORKGROUP + unit, elements, PARTS * WORKGROUP) {
        let value = grad[i] * inverse;
        unscaled[i] = value;
        partial += value;
    }
    let mut shared = Shared::<[f32]>::new_slice(WORKGROUP);
    let total = workgroup_sum(&mut shared, partial);
    if unit == 0 {
        sums[part] = total;
    }
}

impl UnscaleGpuBackend for CubeBackend {
    fn unscale_and_sum(grad: CubeTensor, inverse: f32) -> (CubeTensor, CubeTensor) {
        let grad = into_contiguous(grad);
        let elements = grad.shape().num_elements();
        let unscaled = empty_like(&grad, grad.shape());
        let sum = empty_like(&grad, Shape::new([PARTS]));
        let client = grad.client.clone();
        // SAFETY: `unscale_and_sum` sends an f32 gradient (made contiguous above) of `elements`
        // values, and `unscaled` is as large; every thread indexes below `elements`, and thread
        // 0 of workgroup w (w < PARTS) writes `sums[w]` alone.
        unsafe {
            unscale_kernel::launch_unchecked(
                &client,
                CubeCount::Static(PARTS as u32, 1, 1),
                CubeDim::new_1d(WORKGROUP as u32),
                grad.into_buffer_arg(),
                unscaled.clone().into_buffer_arg(),
                sum.clone().into_buffer_arg(),
                elements,
                inverse,
            );
        }
        LAUNCHES.fetch_add(1, Ordering::Relaxed);
        (unscaled, sum)
    }
}

/// Not differentiated: gradients are the inner backend's tensors.
impl<B: UnscaleGpuBackend, C: CheckpointStrategy> UnscaleGpuBackend for Autodiff<B, C> {
    fn unscale_and_sum(
        grad: FloatTensor<Self>,
        inverse: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (unscaled, sum) = B::unscale_and_sum(Self::inner(grad), inverse);
        (Self::from_inner(unscaled), Self::from_inner(sum))
    }
}
