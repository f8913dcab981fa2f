//! The multi-task network in burn, following burn's own example layout: `model` (the residual
//! U-Net with its classification head), `data` (samples from a project, augmented patches),
//! `training` (losses, steps, the training loop and checkpoints), `loss` (the segmentation
//! losses, fused on the CPU), `fit` (epochs on a project with validation by case, best/last
//! checkpoints, early stop), `inference` (sliding window over whole volumes), `apply`
//! (predicting and evaluating a project, choosing the device), `conv`, `pointwise`, `upconv`,
//! `norm` and `bias` (the network's convolutions, upsamplings, instance norms and biases on the
//! CPU, with their own backward passes; `product` their matrix products), `heap` (the
//! allocator kept from handing tensor buffers back every step), `pool` (training loops on a
//! worker of the rayon pool their kernels use), `split_step` (a CPU step with the batch's items
//! split across the cores, exactly), `runs` (background training runs and
//! re-inference over a project, for the app), `fingerprint` and `plan` (what a dataset is like,
//! and the training recipe its numbers imply), `planned` (a run's configuration from the plan
//! and the user's choices), `precision` (mixed-precision steps: f16/bf16 convolutions on f32
//! weights, the f16 loss scale), `split` (validation cases stratified by class and covering the
//! labels), `prompt`, `prompt_train` and `prompt_infer` (the promptable network's guidance
//! channels, its training with a simulated user, prompted prediction on a local window and the
//! robot user's sessions), `device_failure` (a panic on burn's GPU device threads recorded, and
//! a headless command ended with it, instead of a silent hang), `pieces` (a GPU convolution
//! over more voxels than one dispatch may hold, run on groups of items and depth slabs),
//! `window_slab` and `window_slab_gpu` (sliding-window prediction summed on a GPU, with its two
//! slab kernels); the GPU's own kernels of the training step: `conv_gpu`, `conv_gpu_direct`,
//! `pointwise_gpu`, `upconv_gpu` (through `biased_gpu`), `norm_gpu` (f32, or half-precision
//! features on f32 weights), `loss_gpu` and `class_loss_gpu` (the segmentation and class
//! losses).
//! Tensors live on a runtime-chosen `Device`: burn's `flex` backend on the CPU, or `wgpu` on
//! the GPU.

pub mod adam_gpu;
pub mod apply;
pub mod bias;
pub mod biased_gpu;
pub mod budget;
pub mod class_loss_gpu;
pub mod conv;
pub mod conv_gpu;
pub mod conv_gpu_direct;
pub(crate) mod conv_simd;
pub mod data;
pub mod device_failure;
pub mod fingerprint;
pub mod fit;
pub mod heap;
pub mod inference;
pub mod loss;
pub mod loss_gpu;
// `model.rs` inside `model/` is burn's example layout, which this project follows.
#[allow(clippy::module_inception)]
pub mod model;
pub mod norm;
pub mod norm_gpu;
pub mod pieces;
pub mod plan;
pub mod planned;
pub mod pointwise;
pub mod pointwise_gpu;
pub mod pool;
pub mod precision;
mod product;
pub mod prompt;
pub mod prompt_infer;
pub mod prompt_train;
pub mod relu;
pub mod resume;
pub mod runs;
pub mod split;
mod split_step;
mod strided_grad;
pub mod training;
pub mod unscale_gpu;
pub mod upconv;
pub mod upconv_gpu;
pub mod versions;
mod window_slab;
pub mod window_slab_gpu;

pub use apply::{
    case_channels, choose_device, dice_and_volume_error, evaluate_project, fit_config_for,
    predict_case, predict_project, CaseEvaluation, CohortEvaluation, FitOptions,
};
pub use data::{
    channels_of, load_samples_with, resample_case, split_labels, zscore_in_head, AugmentConfig,
    PatchSampler, Sample, SampleSelection,
};
pub use fingerprint::Fingerprint;
pub use fit::{
    auc, class_figures, dice_of, fit, initial_model, split_by_case, validate, EpochSummary,
    FitConfig, FitControl, FitEvent, FitResult, Metrics,
};
pub use inference::{predict_volume, predict_volume_in, ClassView, Prediction};
pub use loss::{segmentation_losses, soft_dice_loss, voxel_cross_entropy};
pub use model::{MultiTaskUNet, MultiTaskUNetConfig, ResidualBlock};
pub use plan::{plan, DeviceClass, Plan};
pub use precision::{LossScale, Precision, PrecisionError};
pub use training::{
    batch_loss, check_model_kind, checkpoint_dir, cosine_lr, load_checkpoint, save_checkpoint,
    train, train_step, train_step_at, train_step_parallel, Batch, CheckpointError, LossTerms,
    TaskMode, TrainEvent, TrainingConfig,
};
