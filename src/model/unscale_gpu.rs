//! The f16 gradient scaler's unscaling on a GPU as one kernel a gradient: each value divided by
//! the loss scale and, in the same pass, the sum of the divided values (which an infinity or a
//! NaN anywhere makes non-finite: the step's overflow check, as `precision::unscale_gradients`
//! reads it). burn's composition is a multiplication and a reduction a gradient (two launches,
//! and ~6 operations for the host to record, with their drops): ~110 of an f16 step's 403
//! launches for the small network's 66 gradients.
//!
//! Invariants: the kernel takes f32 gradients of any shape (made contiguous) and gives the
//! divided gradient in the same shape and a `[1]` sum; one workgroup a gradient (a gradient is
//! at most a few million values, read once); one launch a gradient. Anything else (the CPU, a
//! gradient that is not f32) takes burn's operations, with the same results.

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

/// `grad · inverse` and the sum of its values, `[1]` in the gradient's type: one kernel on a GPU
/// for an f32 gradient; elsewhere (the CPU, another type) burn's multiplication and a sum
/// along one axis (one reduction, where a whole-tensor sum may take burn's atomic route, a fill
/// and a reduction).
pub fn unscale_and_sum<const D: usize>(grad: Tensor<D>, inverse: f32) -> (Tensor<D>, Tensor<1>) {
    let elements = grad.shape().num_elements();
    let fits =
        grad.dtype() == DType::F32 && elements > 0 && super::conv_gpu::on_gpu(&grad.device());
    if !fits {
        let unscaled = grad.mul_scalar(inverse);
        let sum = unscaled.clone().reshape([1, elements]).sum_dim(1);
        return (unscaled, sum.reshape([1]));
    }
    let (unscaled, sum) =
        <Dispatch as UnscaleGpuBackend>::unscale_and_sum(grad.into_dispatch(), inverse);
    (Tensor::from_dispatch(unscaled), Tensor::from_dispatch(sum))
}

/// Backends with the one-pass unscaling (burn's GPU backend).
#[backend_extension(Cube, Fusion, Autodiff)]
pub trait UnscaleGpuBackend: Backend {
    /// `grad · inverse` (f32, any shape) and the sum of its values, `[1]`.
    #[fusion(meta = unscale_specs)]
    fn unscale_and_sum(
        grad: FloatTensor<Self>,
        inverse: f32,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);
}

/// The divided gradient's size and type (the gradient's) and the sum's, for burn's fusion.
fn unscale_specs(grad: &TensorSpec, _inverse: &f32) -> (TensorSpec, TensorSpec) {
    (grad.clone(), TensorSpec::new(Shape::new([1]), grad.dtype))
}

/// One workgroup; thread t takes values t, t + WORKGROUP, …, then the workgroup sums.
#[cube(launch_unchecked)]
fn unscale_kernel(
    grad: &[f32],
    unscaled: &mut [f32],
    sum: &mut [f32],
    elements: usize,
    inverse: f32,
) {
    let unit = UNIT_POS as usize;
    let mut partial = 0.0f32;
    for i in range_stepped(unit, elements, WORKGROUP) {
        let value = grad[i] * inverse;
        unscaled[i] = value;
        partial += value;
    }
    let mut shared = Shared::<[f32]>::new_slice(WORKGROUP);
    let total = workgroup_sum(&mut shared, partial);
    if unit == 0 {
        sum[0] = total;
    }
}

impl UnscaleGpuBackend for CubeBackend {
    fn unscale_and_sum(grad: CubeTensor, inverse: f32) -> (CubeTensor, CubeTensor) {
        let grad = into_contiguous(grad);
        let elements = grad.shape().num_elements();
        let unscaled = empty_like(&grad, grad.shape());
        let sum = empty_like(&grad, Shape::new([1]));
        let client = grad.client.clone();
        // SAFETY: `unscale_and_sum` sends an f32 gradient (made contiguous above) of `elements`
        // values, and `unscaled` is as large; the one workgroup's threads index below
        // `elements`, and only thread 0 writes the one sum.
        unsafe {
            unscale_kernel::launch_unchecked(
                &client,
                CubeCount::Static(1, 1, 1),
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
