//! The multi-task network in burn, following burn's own example layout: `model` (the residual
//! U-Net with its classification head), `training` (losses, steps, the training loop and
//! checkpoints). Tensors live on a runtime-chosen `Device`: burn's `flex` backend on the CPU, or
//! `wgpu` on the GPU.

// `model.rs` inside `model/` is burn's example layout, which this project follows.
#[allow(clippy::module_inception)]
pub mod model;
pub mod training;

pub use model::{MultiTaskUNet, MultiTaskUNetConfig, ResidualBlock};
pub use training::{
    batch_loss, load_checkpoint, save_checkpoint, soft_dice_loss, train, train_step,
    voxel_cross_entropy, Batch, CheckpointError, LossTerms, TaskMode, TrainEvent, TrainingConfig,
};
