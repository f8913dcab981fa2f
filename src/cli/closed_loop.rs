//! `mriloop loop`: the review–correct–train loop scripted end to end on a phantom (a weak first
//! model, predictions accepted and corrected, fine-tuning on the corrections, re-inference),
//! printing the held-out Dice before and after as `metric:` lines.
//!
//! Invariant: the loop trains on the CPU backend through the same code path as the window's
//! training panel; it needs no window or GPU.

use crate::closed_loop::{run_closed_loop, LoopConfig};
use crate::model::FitOptions;
use anyhow::Result;
use std::path::PathBuf;

/// Arguments of `mriloop loop`.
#[derive(clap::Args, Debug)]
pub struct LoopArgs {
    /// A new folder for the phantom project and its truth masks.
    #[arg(long)]
    pub out: PathBuf,
    /// Phantom cases in all.
    #[arg(long, default_value_t = 8)]
    pub cases: usize,
    /// Phantom grid (mm field of view).
    #[arg(long, default_value_t = 32)]
    pub grid: usize,
    /// Cases annotated by hand before the first model.
    #[arg(long, default_value_t = 2)]
    pub seed_cases: usize,
    /// Cases corrected from the first model's predictions.
    #[arg(long, default_value_t = 4)]
    pub corrected: usize,
    /// Steps of the first model.
    #[arg(long, default_value_t = 5)]
    pub first_steps: usize,
    /// Fine-tuning epochs.
    #[arg(long, default_value_t = 3)]
    pub epochs: usize,
    /// Fine-tuning steps per epoch.
    #[arg(long, default_value_t = 80)]
    pub steps_per_epoch: usize,
    /// Patch edge (voxels).
    #[arg(long, default_value_t = 16)]
    pub patch: usize,
    /// Channels of the first level.
    #[arg(long, default_value_t = 8)]
    pub base_channels: usize,
    /// Loss weight of corrected voxels.
    #[arg(long, default_value_t = 3.0)]
    pub changed_weight: f64,
    /// Tasks: joint, seg or class.
    #[arg(long, default_value = "seg")]
    pub mode: String,
    /// Learning rate.
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,
}

/// The loop's sizes from the flags.
fn loop_config(args: LoopArgs) -> LoopConfig {
    LoopConfig {
        cases: args.cases,
        grid: args.grid,
        seed_cases: args.seed_cases,
        corrected_cases: args.corrected,
        first_steps: args.first_steps,
        fine_tune_epochs: args.epochs,
        fine_tune_steps: args.steps_per_epoch,
        options: FitOptions {
            sequences: vec!["T1".into(), "T2".into(), "FLAIR".into()],
            epochs: 1,
            steps_per_epoch: 1,
            patch: args.patch,
            batch: 2,
            class_window: args.grid.next_power_of_two().clamp(16, 64),
            base_channels: args.base_channels,
            mode: args.mode,
            spacing_mm: None,
            learning_rate: args.lr,
            seed: 1,
        },
        changed_weight: args.changed_weight,
        seed: 1,
    }
}

/// `mriloop loop`.
pub fn run(args: LoopArgs) -> Result<()> {
    let out = args.out.clone();
    let cfg = loop_config(args);
    let r = run_closed_loop(&out, &cfg)?;
    println!(
        "versions: {} (first) -> {} (fine-tuned on {} corrected cases, {} voxels corrected)",
        r.versions.0, r.versions.1, cfg.corrected_cases, r.voxels_corrected
    );
    println!("held-out cases: {}", r.held_out.join(", "));
    let f = |d: Option<f64>| d.map_or("n/a".into(), |d| format!("{d:.4}"));
    for (l, name) in r.labels.iter().enumerate() {
        println!("metric: dice_{name}_before = {}", f(r.dice_before[l]));
        println!("metric: dice_{name}_after = {}", f(r.dice_after[l]));
    }
    println!(
        "metric: dice_foreground_before = {:.4}",
        r.foreground_before
    );
    println!("metric: dice_foreground_after = {:.4}", r.foreground_after);
    Ok(())
}
