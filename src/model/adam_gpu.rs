//! Adam and AdamW (burn's, same constants and state) with each parameter's update as one GPU
//! kernel: the moments, the bias corrections, the weight decay and the step in one pass over
//! the parameter, where burn's optimisers compose it from 13 (Adam) to 15 (AdamW) tensor
//! operations. burn's fusion groups those into few launches, but the host records every
//! operation (and the drop of every intermediate): at the small network's 66 trained
//! parameters ~1 700 operations a step, 11.5 of the ~25 ms the host took to record a step on
//! the 2-core build machine when its threads were not starved (this kernel: 4.4 ms; the
//! README's GPU figures); a small network's GPU step is bound by its launches and their
//! recording, not by arithmetic.
//!
//! [`adam`] and [`adam_w`] give burn `ModuleOptimizer`s (the same type the rest of the crate
//! steps, saves and resumes). A parameter that is not f32 on burn's GPU backend, and every
//! parameter on the CPU, takes burn's own optimiser, unchanged.
//!
//! Invariants: the state is burn's `AdamWState` (the first and second moments and the step
//! count, keyed as burn's AdamW keys them), so a state saved by either route loads in the
//! other and in burn's `AdamW`; the kernel's update equals burn's to float rounding
//! (`tests/model.rs`, on lavapipe); one launch per parameter and step.

use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::fusion::custom::TensorSpec;
use burn::backend::tensor::FloatTensor;
use burn::backend::TensorMetadata;
use burn::backend::{backend_extension, Autodiff, AutodiffBackend, Backend, Dispatch};
use burn::optim::{
    Adam, AdamConfig, AdamState, AdamW, AdamWConfig, AdamWState, AdaptiveMomentumState,
    LearningRate, ModuleOptimizer, Optimizer,
};
use burn::prelude::{Device, Tensor};
use burn::tensor::DType;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeBackend;
use cubecl::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::norm_gpu::empty_like;

/// β₁, β₂ and ε: burn's defaults, which mriloop has always trained with.
const BETA_1: f32 = 0.9;
const BETA_2: f32 = 0.999;
const EPSILON: f32 = 1e-5;

/// Launches of this module's kernel in this process (what tests read to know a step took it).
static LAUNCHES: AtomicUsize = AtomicUsize::new(0);

/// How many times this module's kernel has run in this process.
pub fn kernel_launches() -> usize {
    LAUNCHES.load(Ordering::Relaxed)
}

/// Adam (no weight decay): burn's `AdamConfig::new()`, one kernel a parameter on a GPU.
pub fn adam() -> ModuleOptimizer {
    ModuleOptimizer::from(FusedAdam::adam())
}

/// AdamW with decoupled weight decay `weight_decay`: burn's
/// `AdamWConfig::new().with_weight_decay(weight_decay)`, one kernel a parameter on a GPU.
pub fn adam_w(weight_decay: f32) -> ModuleOptimizer {
    ModuleOptimizer::from(FusedAdam::adam_w(weight_decay))
}

/// burn's optimiser to fall back on, which also says which update the kernel makes.
#[derive(Clone)]
enum Fallback {
    /// Adam, no weight decay: `m̂ / (√v̂ + ε)` as burn's Adam computes it.
    Adam(Adam),
    /// AdamW with its λ: the parameter also scaled by `1 − lr·λ`.
    AdamW(AdamW, f32),
}

/// Adam or AdamW whose GPU step is [`AdamGpuBackend::adam_update`].
#[derive(Clone)]
pub struct FusedAdam {
    fallback: Fallback,
}

impl FusedAdam {
    /// As [`adam`], for one tensor at a time (burn's `Optimizer::step`).
    pub fn adam() -> Self {
        let config = AdamConfig::new().with_beta_1(BETA_1).with_beta_2(BETA_2);
        Self {
            fallback: Fallback::Adam(config.with_epsilon(EPSILON).build()),
        }
    }

    /// As [`adam_w`], for one tensor at a time.
    pub fn adam_w(weight_decay: f32) -> Self {
        let config = AdamWConfig::new().with_beta_1(BETA_1).with_beta_2(BETA_2);
        let config = config.with_epsilon(EPSILON).with_weight_decay(weight_decay);
        Self {
            fallback: Fallback::AdamW(config.build(), weight_decay),
        }
    }

    /// burn's own step.
    fn fallback_step<const D: usize>(
        &self,
        lr: LearningRate,
        (tensor, grad): (Tensor<D>, Tensor<D>),
        state: Option<AdamWState<D>>,
    ) -> (Tensor<D>, Option<AdamWState<D>>) {
        match &self.fallback {
            Fallback::Adam(adam) => {
                let state = state.map(|s| AdamState::new(s.momentum));
                let (tensor, state) = adam.step(lr, tensor, grad, state);
                (tensor, state.map(|s| AdamWState::new(s.momentum)))
            }
            Fallback::AdamW(adam_w, _) => adam_w.step(lr, tensor, grad, state),
        }
    }

    /// The kernel's scalars for step `time` (from 1) at `lr`.
    fn coefficients(&self, lr: LearningRate, time: usize) -> Coefficients {
        let t = i32::try_from(time).unwrap_or(i32::MAX);
        let (correction_1, correction_2) = (1.0 - BETA_1.powi(t), 1.0 - BETA_2.powi(t));
        let (scale_m, scale_v, epsilon, keep) = match self.fallback {
            Fallback::Adam(_) => {
                let root = correction_2.sqrt();
                (root / correction_1, 1.0, EPSILON * root, 1.0)
            }
            Fallback::AdamW(_, weight_decay) => {
                let keep = 1.0 - lr * f64::from(weight_decay);
                (1.0 / correction_1, 1.0 / correction_2, EPSILON, keep as f32)
            }
        };
        Coefficients {
            moments: [BETA_1, 1.0 - BETA_1, BETA_2, 1.0 - BETA_2],
            scale_m,
            scale_v,
            epsilon,
            keep,
            lr: lr as f32,
        }
    }
}

/// The scalars of one parameter's update: `m ← a₁·m + b₁·g`, `v ← a₂·v + b₂·g²`, then
/// `p ← p·keep − lr · m·scale_m / (√(v·scale_v) + epsilon)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Coefficients {
    /// `[a₁, b₁, a₂, b₂]`.
    moments: [f32; 4],
    /// The bias corrections: `m̂ = m·scale_m`, `v̂ = v·scale_v`.
    scale_m: f32,
    scale_v: f32,
    /// Added to `√v̂`.
    epsilon: f32,
    /// The decoupled weight decay's factor `1 − lr·λ` (1 for Adam).
    keep: f32,
    /// The learning rate.
    lr: f32,
}

impl Optimizer for FusedAdam {
    type State<const D: usize> = AdamWState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let on_gpu = super::conv_gpu::on_gpu(&tensor.device());
        // The kernel reads all four as f32 values of the parameter's shape (a state loaded from
        // a file is checked too: burn's route rejects a mismatch, the kernel would read past it).
        let like_param = |t: &Tensor<D>| t.dtype() == DType::F32 && t.dims() == tensor.dims();
        let moments_fit = state.as_ref().is_none_or(|s| {
            let m = &s.momentum;
            like_param(&m.moment_1) && like_param(&m.moment_2) && m.max_moment_2.is_none()
        });
        let fits = on_gpu && moments_fit && like_param(&tensor) && like_param(&grad);
        if !fits {
            return self.fallback_step(lr, (tensor, grad), state);
        }
        let time = state.as_ref().map_or(1, |s| s.momentum.time + 1);
        let mut c = self.coefficients(lr, time);
        // The first step has no moments: a₁ = a₂ = 0 reads none (the gradient stands in).
        let (moment_1, moment_2) = match state {
            Some(s) => (s.momentum.moment_1, s.momentum.moment_2),
            None => {
                (c.moments[0], c.moments[2]) = (0.0, 0.0);
                (grad.clone(), grad.clone())
            }
        };
        let [tensor, grad, moment_1, moment_2] =
            [tensor, grad, moment_1, moment_2].map(Tensor::into_dispatch);
        let (tensor, moment_1, moment_2) =
            <Dispatch as AdamGpuBackend>::adam_update(tensor, grad, moment_1, moment_2, c);
        let momentum = AdaptiveMomentumState::new(
            time,
            Tensor::from_dispatch(moment_1),
            Tensor::from_dispatch(moment_2),
        );
        (
            Tensor::from_dispatch(tensor),
            Some(AdamWState::new(momentum)),
        )
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        AdamW::to_device(state, device)
    }
}

/// Backends with the one-pass Adam update (burn's GPU backend). Crate-private: its GPU
/// implementation trusts [`FusedAdam::step`]'s checks of the four tensors.
#[backend_extension(Cube, Fusion, Autodiff)]
pub(crate) trait AdamGpuBackend: Backend {
    /// The updated parameter and first and second moments from the parameter, its gradient
    /// and the moments (f32, one shape), as `coefficients` says.
    #[fusion(meta = update_specs)]
    fn adam_update(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moment_1: FloatTensor<Self>,
        moment_2: FloatTensor<Self>,
        coefficients: Coefficients,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

/// The three outputs' sizes and types (the parameter's), for burn's fusion.
fn update_specs(
    param: &TensorSpec,
    _grad: &TensorSpec,
    _moment_1: &TensorSpec,
    _moment_2: &TensorSpec,
    _coefficients: &Coefficients,
) -> (TensorSpec, TensorSpec, TensorSpec) {
    (param.clone(), param.clone(), param.clone())
}

/// A thread per element; the scalars as [`Coefficients`] names them.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn adam_update_kernel(
    param: &[f32],
    grad: &[f32],
    moment_1: &[f32],
    moment_2: &[f32],
    param_out: &mut [f32],
    moment_1_out: &mut [f32],
    moment_2_out: &mut [f32],
    elements: usize,
    a_1: f32,
    b_1: f32,
    a_2: f32,
    b_2: f32,
    scale_m: f32,
    scale_v: f32,
    epsilon: f32,
    keep: f32,
    lr: f32,
) {
    if ABSOLUTE_POS >= elements {
        terminate!();
    }
    let i = ABSOLUTE_POS;
    let g = grad[i];
    let m = moment_1[i] * a_1 + g * b_1;
    let v = moment_2[i] * a_2 + (g * g) * b_2;
    let step = (m * scale_m) / (f32::sqrt(v * scale_v) + epsilon);
    moment_1_out[i] = m;
    moment_2_out[i] = v;
    param_out[i] = param[i] * keep - step * lr;
}

impl AdamGpuBackend for CubeBackend {
    fn adam_update(
        param: CubeTensor,
        grad: CubeTensor,
        moment_1: CubeTensor,
        moment_2: CubeTensor,
        c: Coefficients,
    ) -> (CubeTensor, CubeTensor, CubeTensor) {
        let [param, grad, moment_1, moment_2] =
            [param, grad, moment_1, moment_2].map(into_contiguous);
        let elements = param.shape().num_elements();
        let outputs = [(); 3].map(|_| empty_like(&param, param.shape()));
        let client = param.client.clone();
        let (count, dim) = super::conv_gpu::launch_grid(&client, elements);
        let [a_1, b_1, a_2, b_2] = c.moments;
        // SAFETY: the only caller, `FusedAdam::step`, sends four f32 tensors of one shape
        // (made contiguous above), `elements` values each, and the outputs are as large;
        // threads past `elements` stop at once.
        unsafe {
            adam_update_kernel::launch_unchecked(
                &client,
                count,
                dim,
                param.into_buffer_arg(),
                grad.into_buffer_arg(),
                moment_1.into_buffer_arg(),
                moment_2.into_buffer_arg(),
                outputs[0].clone().into_buffer_arg(),
                outputs[1].clone().into_buffer_arg(),
                outputs[2].clone().into_buffer_arg(),
                elements,
                a_1,
                b_1,
                a_2,
                b_2,
                c.scale_m,
                c.scale_v,
                c.epsilon,
                c.keep,
                c.lr,
            );
        }
        LAUNCHES.fetch_add(1, Ordering::Relaxed);
        let [param, moment_1, moment_2] = outputs;
        (param, moment_1, moment_2)
    }
}

/// Not differentiated: an optimiser updates the inner backend's tensors.
impl<B: AdamGpuBackend, C: CheckpointStrategy> AdamGpuBackend for Autodiff<B, C> {
    fn adam_update(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        moment_1: FloatTensor<Self>,
        moment_2: FloatTensor<Self>,
        coefficients: Coefficients,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let [param, grad, moment_1, moment_2] = [param, grad, moment_1, moment_2].map(Self::inner);
        let (param, moment_1, moment_2) =
            B::adam_update(param, grad, moment_1, moment_2, coefficients);
        (
            Self::from_inner(param),
            Self::from_inner(moment_1),
            Self::from_inner(moment_2),
        )
    }
}
