//! Training within the time the user gives: a clock (`Clock`; the system's, or one a test
//! drives), a deadline, the measurement of a step and of a validation on the chosen device, and
//! the schedule that fits steps and validations into the time left.
//!
//! Rules: validations take at most a quarter of the budget (so their number is at most
//! ⌊budget / 4 / validation time⌋, at least 1, at most the plan's epochs); the rest is steps.
//! The measured schedule sets the number of epochs (and estimates the steps); the fit itself is
//! then paced by the deadline (`FitControl::set_deadline`): each epoch steps for its share of
//! the time left, the learning rate follows the time used, and before each step the fit stops
//! if that step and one validation would no longer fit, then validates and keeps its best
//! checkpoint. So a measurement that misjudges the steps (the loader, class steps, a busy
//! machine) still ends on time with every epoch validated.
//!
//! Invariants: a schedule never plans more time than it is given (given the measured times);
//! the fit reads a deadline's clock once before each step and once before and after each
//! validation, so a test clock that advances per reading gives a deterministic run.

use super::data::Sample;
use super::fit::{initial_model, validate, FitConfig, VALIDATION_OVERLAP};
use super::inference::{window_count, window_steps};
use super::training::{train_step_at, Batch, CheckpointError};
use burn::prelude::*;
use burn::tensor::{Int, TensorData};
use std::sync::Arc;

/// Seconds since some fixed moment.
pub trait Clock: Send + Sync {
    /// Now, in seconds.
    fn now_s(&self) -> f64;
}

/// The system's monotonic clock, from when it was made.
#[derive(Debug, Clone, Copy)]
pub struct SystemClock(std::time::Instant);

impl SystemClock {
    /// A clock starting now.
    pub fn start() -> Self {
        Self(std::time::Instant::now())
    }
}

impl Clock for SystemClock {
    fn now_s(&self) -> f64 {
        self.0.elapsed().as_secs_f64()
    }
}

/// When a run must have ended, on a clock.
#[derive(Clone)]
pub struct Deadline {
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// The end, on that clock (s).
    pub end_s: f64,
}

impl Deadline {
    /// `seconds` from now on `clock`.
    pub fn after(clock: Arc<dyn Clock>, seconds: f64) -> Self {
        let end_s = clock.now_s() + seconds;
        Self { clock, end_s }
    }
}

impl std::fmt::Debug for Deadline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Deadline(end {:.1} s)", self.end_s)
    }
}

/// Epochs and steps that fit a budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// Epochs (each ends with a validation).
    pub epochs: usize,
    /// Steps per epoch.
    pub steps_per_epoch: usize,
}

/// The schedule for `budget_s` seconds with steps of `step_s` and validations of
/// `validation_s`, at most `max_epochs` validations (see the module's rules).
pub fn schedule(budget_s: f64, step_s: f64, validation_s: f64, max_epochs: usize) -> Schedule {
    let by_share = (0.25 * budget_s / validation_s.max(1e-9)).floor() as usize;
    let epochs = by_share.clamp(1, max_epochs.max(1));
    let for_steps = (budget_s - epochs as f64 * validation_s).max(0.0);
    let steps = (for_steps / step_s.max(1e-9)).floor() as usize;
    Schedule {
        epochs,
        steps_per_epoch: (steps / epochs).max(1),
    }
}

/// Seconds per optimisation step and per validation of `val` with `config` on `device`: three
/// steps on batches of the configuration's shape (after one that warms the device up), and the
/// validation of one case times the number of cases.
pub fn measure(
    config: &FitConfig,
    val: &[Sample],
    device: &Device,
    clock: &dyn Clock,
) -> Result<(f64, f64), CheckpointError> {
    let t = &config.training;
    let ad = device.clone().autodiff();
    let mut model = initial_model(config, device)?;
    let mut optim = super::adam_gpu::adam_w(config.weight_decay as f32);
    let mut loss_scale = t.precision.initial_loss_scale();
    let batch = blank_batch(config, &ad);
    let mut started = 0.0;
    for k in 0..4 {
        if k == 1 {
            started = clock.now_s();
        }
        model = train_step_at(
            model,
            (&mut optim, &mut loss_scale),
            &batch,
            t,
            t.learning_rate,
        )
        .0;
    }
    let step_s =
        (clock.now_s() - started) / 3.0 + correction_s(config, &model.valid(), device, clock);
    let Some(first) = val.first() else {
        return Ok((step_s, 0.0));
    };
    // A validation predicts every case whole, window by window: time a crop of a few windows
    // and count the windows of them all (timing a whole case could take longer than the
    // budget: a 181 × 217 × 181 case in 24³ windows took 168 s on 2 cores).
    let crop = crop_of_windows(first, t.window);
    let before = clock.now_s();
    validate(&model.valid(), std::slice::from_ref(&crop), t, device);
    let crop_s = clock.now_s() - before;
    let windows = |dims| window_count(dims, t.window, VALIDATION_OVERLAP);
    let all: usize = val.iter().map(|s| windows(s.dims)).sum();
    let per_window_s = crop_s / windows(crop.dims).max(1) as f64;
    Ok((step_s, per_window_s * all as f64))
}

/// `sample` cropped about its centre to two of validation's overlapping windows per axis (or
/// all of an axis shorter than that): a validation's cost per window, timed on a few of them.
fn crop_of_windows(sample: &Sample, window: [usize; 3]) -> Sample {
    let step = window_steps(window, VALIDATION_OVERLAP);
    let size: [usize; 3] =
        std::array::from_fn(|a| (window[a] + step[a].max(1)).min(sample.dims[a]));
    let lo: [usize; 3] = std::array::from_fn(|a| (sample.dims[a] - size[a]) / 2);
    Sample {
        case_id: sample.case_id.clone(),
        channels: sample
            .channels
            .iter()
            .map(|c| crop_box(c, sample.dims, lo, size))
            .collect(),
        mask: crop_box(&sample.mask, sample.dims, lo, size),
        dims: size,
        class: sample.class,
        foreground: Vec::new(),
        foreground_by_label: Vec::new(),
        object_starts: Vec::new(),
        changed: Vec::new(),
        affine: sample.affine,
        replays: Vec::new(),
    }
}

/// The `size` box at `lo` of `values` on the grid `dims` (x fastest).
fn crop_box<T: Copy>(values: &[T], dims: [usize; 3], lo: [usize; 3], size: [usize; 3]) -> Vec<T> {
    let mut out = Vec::with_capacity(size.iter().product());
    for z in lo[2]..lo[2] + size[2] {
        for y in lo[1]..lo[1] + size[1] {
            let row = lo[0] + dims[0] * (y + dims[1] * z);
            out.extend_from_slice(&values[row..row + size[0]]);
        }
    }
    out
}

/// `config` with epochs and steps that fit the `end_s` of `clock` (counted from 0), measured on
/// `device` with the validation cases `val`; `control` gets the deadline that stops the run on
/// time. Returns the configuration and a sentence saying what was measured and planned.
pub fn fit_to_budget(
    config: &FitConfig,
    val: &[Sample],
    device: &Device,
    end_s: f64,
    clock: Arc<dyn Clock>,
    control: &super::fit::FitControl,
) -> Result<(FitConfig, String), CheckpointError> {
    let (step_s, validation_s) = measure(config, val, device, clock.as_ref())?;
    let left_s = end_s - clock.now_s();
    // Half the time left for one validation at most: else the run would validate, not train.
    if validation_s > 0.5 * left_s {
        let need_min = ((end_s - left_s) + 2.0 * validation_s) / 60.0;
        return Err(CheckpointError::BudgetTooShort(format!(
            "a validation of the {} held-out case(s) takes about {validation_s:.0} s here, more \
             than half of the {:.0} s left of the budget: give at least {:.0} minutes, or hold \
             out smaller or fewer cases",
            val.len(),
            left_s.max(0.0),
            need_min.ceil()
        )));
    }
    let plan = schedule(left_s, step_s, validation_s, config.epochs);
    let said = format!(
        "{left_s:.0} s left: a step takes {step_s:.2} s and a validation {validation_s:.1} s \
         here: {} epochs of {} steps",
        plan.epochs, plan.steps_per_epoch
    );
    control.set_deadline(Deadline { clock, end_s }, validation_s, plan.epochs);
    let config = config
        .clone()
        .with_epochs(plan.epochs)
        .with_steps_per_epoch(plan.steps_per_epoch);
    Ok((config, said))
}

/// A promptable run's mean cost per step of the simulated user's corrections (rounds drawn
/// from `0..=corrective_rounds`): one round timed on a batch of the run's shape with a target
/// in each patch; 0 for an automatic run.
fn correction_s(
    config: &FitConfig,
    model: &super::MultiTaskUNet,
    device: &Device,
    clock: &dyn Clock,
) -> f64 {
    let Some(prompt) = &config.training.prompt else {
        return 0.0;
    };
    let [px, py, pz] = config.patch;
    let (n, c) = (config.batch_size.max(1), config.training.model.in_channels);
    let len = px * py * pz;
    let mut images = vec![0.0f32; n * c * len];
    let masks: Vec<i32> = (0..n * len)
        .map(|i| {
            let v = i % len;
            let at = [v % px, (v / px) % py, v / (px * py)];
            let centre = [px / 2, py / 2, pz / 2];
            i32::from((0..3).all(|a| at[a].abs_diff(centre[a]) <= 3))
        })
        .collect();
    let started = clock.now_s();
    super::prompt_train::simulate_corrections(
        model,
        &mut images,
        &masks,
        n,
        c,
        config.patch,
        1,
        prompt.point_radius_vox,
        device,
    );
    (clock.now_s() - started) * prompt.corrective_rounds as f64 / 2.0
}

/// A batch of zeros of the configuration's patch, channels and batch size (a step's cost does
/// not depend on the values).
fn blank_batch(config: &FitConfig, device: &Device) -> Batch {
    let [px, py, pz] = config.patch;
    let n = config.batch_size.max(1);
    let m = &config.training.model;
    let c = if m.time_points > 0 {
        m.time_points
    } else {
        m.in_channels
    }
    .max(1);
    let voxels = n * px * py * pz;
    Batch {
        images: Tensor::from_data(
            TensorData::new(vec![0.0f32; voxels * c], [n, c, pz, py, px]),
            device,
        ),
        masks: Tensor::<4, Int>::from_data(
            TensorData::new(vec![0i32; voxels], [n, pz, py, px]),
            device,
        ),
        classes: Tensor::<1, Int>::from_data(TensorData::new(vec![0i32; n], [n]), device),
        weights: None,
    }
}
