//! Fitting on a project: training by epochs (AdamW, cosine learning-rate schedule) on augmented
//! patches drawn by a loader thread,
//! validation by case after every epoch (sliding-window Dice per label, class accuracy and AUC),
//! best and last checkpoints, early stop, and cancellation at any step. Reports through the
//! same channel of `TrainEvent`s as `train`, plus `Epoch` summaries; never prints.
//!
//! Invariants: the validation cases are never trained on; the split is by case and fixed by the
//! seed; the best checkpoint is the one with the highest smoothed validation score, the later on
//! a tie (a moving average of mean foreground Dice plus class AUC, each weighted by the tasks
//! trained); with class evidence (plan rule 11) the validated class is read from the predicted
//! mask.

use super::data::{split_labels, AugmentConfig, PatchSampler, Sample};
use super::inference::predict_volume_in;
use super::model::MultiTaskUNet;
use super::training::{
    cosine_lr, save_checkpoint, train_step_reading, Batch, TaskMode, TermsReading, TrainingConfig,
};
use crate::volume::Affine;
use burn::optim::ModuleOptimizer;
use burn::prelude::*;
use burn::tensor::{Int, TensorData};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, Sender, SyncSender};
use std::sync::Arc;

/// Settings of a fit beyond the network and loss.
#[derive(Config, Debug, PartialEq)]
pub struct FitConfig {
    /// Network, loss, learning rate, seed (its `steps` is unused: epochs × steps per epoch).
    pub training: TrainingConfig,
    /// Epochs.
    #[config(default = 20)]
    pub epochs: usize,
    /// Optimisation steps per epoch.
    #[config(default = 50)]
    pub steps_per_epoch: usize,
    /// Patches per batch.
    #[config(default = 2)]
    pub batch_size: usize,
    /// Patch size `[x, y, z]` (multiples of the network's size multiple).
    #[config(default = "[32, 32, 32]")]
    pub patch: [usize; 3],
    /// Fraction of cases held out for validation.
    #[config(default = 0.2)]
    pub validation_fraction: f64,
    /// Stop after this many epochs without a better validation score (0: never).
    #[config(default = 0)]
    pub patience: usize,
    /// Augmentation.
    #[config(default = "AugmentConfig::new()")]
    pub augment: AugmentConfig,
    /// AdamW weight decay.
    #[config(default = 1e-4)]
    pub weight_decay: f64,
    /// Cosine annealing of the learning rate over the run (after a 2 % linear warm-up).
    #[config(default = true)]
    pub cosine_schedule: bool,
    /// Start from this checkpoint folder's weights (config.json + model.bpk) instead of a fresh
    /// network, e.g. to fine-tune on corrected cases.
    #[config(default = "None")]
    pub resume_from: Option<String>,
    /// Every this many steps, a classification step on whole-head centre crops (the class
    /// depends on the whole image, which a small patch does not show); 0: never. Patch steps
    /// then train the segmentation only.
    #[config(default = 3)]
    pub class_every: usize,
    /// Weight in the segmentation cross-entropy of voxels an annotator changed from the model's
    /// prediction (1: no extra weight).
    #[config(default = 1.0)]
    pub changed_weight: f64,
    /// One patch in this many is centred on a labelled voxel (nnU-Net's third by default; the
    /// plan halves it for tiny structures).
    #[config(default = 3)]
    pub foreground_one_in: usize,
    /// Per label value, the weight of centring a foreground patch on it (empty: each label
    /// present in the case alike).
    #[config(default = "Vec::new()")]
    pub label_weights: Vec<(u8, f64)>,
    /// Per class index, the weight of drawing a case of that class for a class step
    /// (class-balanced sampling; empty: every case alike).
    #[config(default = "Vec::new()")]
    pub class_weights: Vec<f64>,
    /// Data-parallel devices: each batch is split across this many (GPUs 0..n on a GPU
    /// backend; on the CPU, replicas on its one device) and their gradients summed (1: one
    /// device, the same code path).
    #[config(default = 1)]
    pub devices: usize,
}

/// Controls of a running fit, shared with whoever started it: cancel, pause and resume take
/// effect at the next step.
#[derive(Debug, Default)]
pub struct FitControl {
    stop: AtomicBool,
    pause: AtomicBool,
    /// When the run must have ended (a time budget), and the time a step and a validation took.
    deadline: std::sync::Mutex<Option<DeadlineState>>,
    /// Set when the deadline ended the steps.
    time_up: AtomicBool,
    /// Set while the fit waits in a pause (no step in flight).
    parked: AtomicBool,
    /// The last step whose loss the fit has sent (0: none yet).
    last_step_sent: std::sync::atomic::AtomicUsize,
}

/// A deadline with what the run has measured against it.
#[derive(Debug)]
struct DeadlineState {
    deadline: super::budget::Deadline,
    /// Clock reading before the previous step.
    last_step_at: Option<f64>,
    /// The longest step so far (s).
    step_s: f64,
    /// The longest validation so far, or its estimate (s).
    validation_s: f64,
    /// Epochs not yet begun.
    epochs_left: usize,
    /// The first reading (the fit's start on the deadline's clock).
    started_s: Option<f64>,
    /// When the current epoch's steps end (set at its first step).
    epoch_end_s: Option<f64>,
}

/// Whether the next step goes ahead (under a deadline).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StepVerdict {
    /// Step.
    Go,
    /// The epoch's share of the time is spent: validate, then the next epoch.
    EndEpoch,
    /// No time for another step and a validation: validate and stop.
    TimeUp,
}

impl FitControl {
    /// Ask the fit to stop at the next step (the last checkpoint is kept).
    pub fn cancel(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Whether a stop was asked for.
    pub fn is_cancelled(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Pause (`true`) or resume (`false`) before the next step.
    pub fn set_paused(&self, paused: bool) {
        self.pause.store(paused, Ordering::Relaxed);
    }

    /// Whether the fit is paused.
    pub fn is_paused(&self) -> bool {
        self.pause.load(Ordering::Relaxed)
    }

    /// Pace the fit's `epochs` by time so that it ends by `deadline` (a new deadline: time is not
    /// up, even if an earlier fit's under this control ran out of it): each epoch steps until
    /// its share of the time left (after the validations still to come, estimated at
    /// `validation_s` until one is measured) is spent, however fast the steps turn out, and the
    /// learning rate follows the time used; stepping stops when the next step and one
    /// validation would not end before the deadline.
    pub fn set_deadline(
        &self,
        deadline: super::budget::Deadline,
        validation_s: f64,
        epochs: usize,
    ) {
        self.time_up.store(false, Ordering::Relaxed);
        if let Ok(mut d) = self.deadline.lock() {
            *d = Some(DeadlineState {
                deadline,
                last_step_at: None,
                step_s: 0.0,
                validation_s,
                epochs_left: epochs.max(1),
                started_s: None,
                epoch_end_s: None,
            });
        }
    }

    /// Whether the fit is paced by a deadline.
    pub fn has_deadline(&self) -> bool {
        self.deadline.lock().is_ok_and(|d| d.is_some())
    }

    /// Under a deadline, the share of the time from the fit's start to the deadline used at the
    /// last step's reading (0–1); no clock reading of its own.
    fn time_progress(&self) -> Option<f64> {
        let guard = self.deadline.lock().ok()?;
        let d = guard.as_ref()?;
        let (start, now) = (d.started_s?, d.last_step_at?);
        let span = d.deadline.end_s - start;
        Some(if span > 0.0 {
            ((now - start) / span).clamp(0.0, 1.0)
        } else {
            1.0
        })
    }

    /// Whether the deadline ended the steps.
    pub fn is_time_up(&self) -> bool {
        self.time_up.load(Ordering::Relaxed)
    }

    /// Before the `nth` step of an epoch (0-based; one clock reading): whether it goes ahead.
    /// The first step of an epoch sets the epoch's end: now plus its share of the time left
    /// after the validations to come. `TimeUp` marks the time as up.
    fn step_verdict(&self, nth: usize) -> StepVerdict {
        let Ok(mut guard) = self.deadline.lock() else {
            return StepVerdict::Go;
        };
        let Some(d) = guard.as_mut() else {
            return StepVerdict::Go;
        };
        let now = d.deadline.clock.now_s();
        if let Some(last) = d.last_step_at {
            d.step_s = d.step_s.max(now - last);
        }
        d.last_step_at = Some(now);
        d.started_s.get_or_insert(now);
        let end = d.deadline.end_s;
        if nth == 0 {
            let k = d.epochs_left.max(1);
            let share = (end - now - k as f64 * d.validation_s) / k as f64;
            d.epoch_end_s = Some(now + share.max(0.0));
            d.epochs_left = d.epochs_left.saturating_sub(1);
        }
        if now + d.step_s + d.validation_s > end {
            self.time_up.store(true, Ordering::Relaxed);
            return StepVerdict::TimeUp;
        }
        // The last epoch runs to the deadline.
        let epoch_over = d.epochs_left > 0 && d.epoch_end_s.is_some_and(|e| now + d.step_s > e);
        if nth > 0 && epoch_over {
            return StepVerdict::EndEpoch;
        }
        StepVerdict::Go
    }

    /// Around a validation (one clock reading each): `None` before, the reading to pass back
    /// after; the validation's duration becomes the reserve.
    fn validation_clock(&self, started: Option<f64>) -> Option<f64> {
        let mut guard = self.deadline.lock().ok()?;
        let d = guard.as_mut()?;
        let now = d.deadline.clock.now_s();
        if let Some(s) = started {
            d.validation_s = d.validation_s.max(now - s);
            // The next step's time starts after the validation.
            d.last_step_at = None;
        }
        Some(now)
    }

    /// Block while paused (and not cancelled).
    fn wait_while_paused(&self) {
        while self.is_paused() && !self.is_cancelled() {
            self.parked.store(true, Ordering::Relaxed);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        self.parked.store(false, Ordering::Relaxed);
    }

    /// Whether the fit is waiting in a pause: the step that was in flight when the pause was
    /// asked for has ended, and no other begins until it is resumed.
    pub fn is_parked(&self) -> bool {
        self.parked.load(Ordering::Relaxed)
    }

    /// The last step whose loss event the fit has sent (0 before the first).
    pub fn last_step_sent(&self) -> usize {
        self.last_step_sent.load(Ordering::Relaxed)
    }
}

/// Validation figures of one epoch.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Metrics {
    /// Mean Dice per foreground label (index 0 = label 1) over validation cases where the label
    /// is present in the reference.
    pub dice: Vec<Option<f64>>,
    /// Class accuracy.
    pub class_accuracy: f64,
    /// Class AUC (one-vs-rest, averaged over classes); `None` with a single class present.
    pub class_auc: Option<f64>,
}

impl Metrics {
    /// Mean of the per-label Dice values present.
    pub fn mean_dice(&self) -> f64 {
        let v: Vec<f64> = self.dice.iter().flatten().copied().collect();
        if v.is_empty() {
            0.0
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    }
}

/// One epoch's summary.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochSummary {
    /// Epoch number (from 1).
    pub epoch: usize,
    /// Mean training loss of the epoch.
    pub train_loss: f64,
    /// Validation figures.
    pub validation: Metrics,
    /// Whether this epoch's checkpoint is the best so far.
    pub best: bool,
}

/// Dice of one label between two masks.
pub fn dice_of(reference: &[u8], predicted: &[u8], label: u8) -> Option<f64> {
    let (mut both, mut a, mut b) = (0u64, 0u64, 0u64);
    for (r, p) in reference.iter().zip(predicted) {
        let (x, y) = (*r == label, *p == label);
        a += u64::from(x);
        b += u64::from(y);
        both += u64::from(x && y);
    }
    (a > 0).then(|| 2.0 * both as f64 / (a + b) as f64)
}

/// Area under the ROC curve of `scores` for `positive` cases (Mann–Whitney, ties count half);
/// `None` when one side is empty.
pub fn auc(scores: &[f64], positive: &[bool]) -> Option<f64> {
    let pos: Vec<f64> = scores
        .iter()
        .zip(positive)
        .filter(|(_, p)| **p)
        .map(|(s, _)| *s)
        .collect();
    let neg: Vec<f64> = scores
        .iter()
        .zip(positive)
        .filter(|(_, p)| !**p)
        .map(|(s, _)| *s)
        .collect();
    if pos.is_empty() || neg.is_empty() {
        return None;
    }
    let mut wins = 0.0;
    for p in &pos {
        for n in &neg {
            wins += if p > n {
                1.0
            } else if p == n {
                0.5
            } else {
                0.0
            };
        }
    }
    Some(wins / (pos.len() * neg.len()) as f64)
}

/// How much a validation's windows overlap.
pub(super) const VALIDATION_OVERLAP: f32 = 0.5;

/// Validate: predict every sample whole (the config's windows, in the config's precision on a
/// GPU, as autocast's validation) and compare.
pub fn validate(
    model: &MultiTaskUNet,
    samples: &[Sample],
    config: &TrainingConfig,
    device: &Device,
) -> Metrics {
    if config.prompt.is_some() {
        return super::prompt_infer::validate_prompted(model, samples, config, device);
    }
    let mut dice_sum = vec![(0.0, 0usize); config.model.num_labels.saturating_sub(1)];
    let mut probs: Vec<Vec<f32>> = Vec::new();
    let mut truth = Vec::new();
    for s in samples {
        let Ok(p) = predict_volume_in(
            model,
            &s.channels,
            (s.dims, Affine::identity()),
            (config.window, VALIDATION_OVERLAP, config.precision),
            config.class_view(),
            device,
        ) else {
            continue;
        };
        for (l, acc) in dice_sum.iter_mut().enumerate() {
            if let Some(d) = dice_of(&s.mask, p.mask.data(), (l + 1) as u8) {
                acc.0 += d;
                acc.1 += 1;
            }
        }
        let Some(class) = s.class else {
            continue;
        };
        let voxel_mm3 = config
            .spacing_mm
            .map(|[x, y, z]| x * y * z)
            .filter(|v| *v > 0.0);
        probs.push(config.class_probabilities(p.class_probabilities, p.mask.data(), voxel_mm3));
        truth.push(class);
    }
    let classes = probs.first().map_or(0, Vec::len);
    let prob_refs: Vec<&[f32]> = probs.iter().map(Vec::as_slice).collect();
    let (class_accuracy, class_auc) = class_figures(&prob_refs, &truth, classes);
    Metrics {
        dice: dice_sum
            .into_iter()
            .map(|(s, n)| (n > 0).then(|| s / n as f64))
            .collect(),
        class_accuracy,
        class_auc,
    }
}

/// Class accuracy (arg-max of the probabilities) and AUC (one-vs-rest, averaged over the
/// `classes` classes that have both positives and negatives) of predicted class probabilities
/// against the true class indices.
pub fn class_figures(probs: &[&[f32]], truth: &[usize], classes: usize) -> (f64, Option<f64>) {
    let correct = probs
        .iter()
        .zip(truth)
        .filter(|(p, t)| {
            p.iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map(|(k, _)| k)
                == Some(**t)
        })
        .count();
    let aucs: Vec<f64> = (0..classes)
        .filter_map(|k| {
            let scores: Vec<f64> = probs
                .iter()
                .map(|p| f64::from(p.get(k).copied().unwrap_or(0.0)))
                .collect();
            let pos: Vec<bool> = truth.iter().map(|t| *t == k).collect();
            auc(&scores, &pos)
        })
        .collect();
    (
        correct as f64 / truth.len().max(1) as f64,
        (!aucs.is_empty()).then(|| aucs.iter().sum::<f64>() / aucs.len() as f64),
    )
}

pub use super::split::split_by_case;

/// Host-side batch made by the loader thread.
struct HostBatch {
    /// A whole-head classification batch (else a segmentation patch batch).
    class_step: bool,
    images: Vec<f32>,
    masks: Vec<i32>,
    classes: Vec<i32>,
    n: usize,
    c: usize,
    patch: [usize; 3],
}

impl HostBatch {
    /// The batch split into one part per device of `devices` (as even as the patches allow;
    /// fewer parts when there are fewer patches), each on its device.
    fn into_parts(self, devices: &[Device], changed_weight: f32) -> Vec<Batch> {
        let parts = devices.len().clamp(1, self.n.max(1));
        if parts == 1 {
            return vec![self.into_batch(&devices[0], changed_weight)];
        }
        let voxels: usize = self.patch.iter().product();
        let mut out = Vec::with_capacity(parts);
        let mut first = 0;
        for (p, device) in devices.iter().take(parts).enumerate() {
            let n = self.n / parts + usize::from(p < self.n % parts);
            let part = HostBatch {
                class_step: self.class_step,
                images: self.images[first * self.c * voxels..(first + n) * self.c * voxels]
                    .to_vec(),
                masks: self.masks[first * voxels..(first + n) * voxels].to_vec(),
                classes: self.classes[first..first + n].to_vec(),
                n,
                c: self.c,
                patch: self.patch,
            };
            out.push(part.into_batch(device, changed_weight));
            first += n;
        }
        out
    }

    fn into_batch(self, device: &Device, changed_weight: f32) -> Batch {
        let [px, py, pz] = self.patch;
        let (masks, weights) = split_labels(self.masks, changed_weight);
        Batch {
            weights: weights
                .map(|w| Tensor::<4>::from_data(TensorData::new(w, [self.n, pz, py, px]), device)),
            images: Tensor::from_data(
                TensorData::new(self.images, [self.n, self.c, pz, py, px]),
                device,
            ),
            masks: Tensor::<4, Int>::from_data(
                TensorData::new(masks, [self.n, pz, py, px]),
                device,
            ),
            classes: Tensor::<1, Int>::from_data(TensorData::new(self.classes, [self.n]), device),
        }
    }
}

/// What `fit` produced.
#[derive(Debug, Clone, PartialEq)]
pub struct FitResult {
    /// Every epoch's summary.
    pub epochs: Vec<EpochSummary>,
    /// Folder of the best checkpoint.
    pub best: PathBuf,
    /// Folder of the last checkpoint.
    pub last: PathBuf,
    /// Whether it was stopped before the last epoch (cancel or early stop).
    pub stopped_early: bool,
}

/// Events of a fit: step-level `TrainEvent`s and epoch summaries.
#[derive(Debug, Clone, PartialEq)]
pub enum FitEvent {
    /// A training step or checkpoint.
    Train(super::training::TrainEvent),
    /// An epoch finished and was validated.
    Epoch(EpochSummary),
}

/// The network a fit starts from, trainable: fresh, or the weights of `resume_from`.
pub fn initial_model(
    config: &FitConfig,
    device: &Device,
) -> Result<MultiTaskUNet, super::training::CheckpointError> {
    let t = &config.training;
    match &config.resume_from {
        None => Ok(t.model.init(&device.clone().autodiff())),
        Some(dir) => {
            let dir = std::path::Path::new(dir);
            let from = super::training::TrainingConfig::load(dir.join("config.json")).ok();
            if let Some(from) = from.filter(|f| f.prompt.is_none() && t.prompt.is_some()) {
                // An automatic model fine-tuned into a promptable one (more inputs, two labels).
                let (_, model) = super::training::load_checkpoint(dir, device)?;
                return model
                    .widened(&from.model, &t.model, device)
                    .map(|m| m.train())
                    .map_err(|problem| super::training::CheckpointError::File {
                        path: dir.display().to_string(),
                        problem,
                    });
            }
            let weights = dir.join("model.bpk");
            let model = t.model.init(device).try_load_file(&weights).map_err(|e| {
                super::training::CheckpointError::File {
                    path: weights.display().to_string(),
                    problem: e.to_string(),
                }
            })?;
            Ok(model.train())
        }
    }
}

/// Fit on `train` samples, validating on `val` after each epoch, writing `out/best` and
/// `out/last`. `control` cancels (keeping the state reached as `out/last`), pauses and resumes
/// at the next step. A panic of the data loader thread is an error.
pub fn fit(
    config: &FitConfig,
    train: Vec<Sample>,
    val: &[Sample],
    device: &Device,
    out: &std::path::Path,
    events: &Sender<FitEvent>,
    control: &FitControl,
) -> Result<FitResult, super::training::CheckpointError> {
    fit_from(config, (train, val), device, out, (events, control), false)
}

/// `fit`, or with `continued` the same run continued from the state its last finished epoch
/// left in `out` (`model::resume`): its weights, optimiser, step and best score. Runs on a
/// worker of the rayon pool (`model::pool`).
pub fn fit_from(
    config: &FitConfig,
    data: (Vec<Sample>, &[Sample]),
    device: &Device,
    out: &std::path::Path,
    watch: (&Sender<FitEvent>, &FitControl),
    continued: bool,
) -> Result<FitResult, super::training::CheckpointError> {
    super::pool::on_worker(|| fit_here(config, data, device, out, watch, continued))
}

/// [`fit_from`] on the calling thread.
fn fit_here(
    config: &FitConfig,
    (train, val): (Vec<Sample>, &[Sample]),
    device: &Device,
    out: &std::path::Path,
    (events, control): (&Sender<FitEvent>, &FitControl),
    continued: bool,
) -> Result<FitResult, super::training::CheckpointError> {
    let t = &config.training;
    let ad = device.clone().autodiff();
    ad.seed(t.seed);
    let replicas = data_parallel_devices(device, config.devices);
    let total = config.epochs * config.steps_per_epoch;
    let (mut model, (mut optim, mut loss_scale), (first_epoch, mut step), mut best) =
        starting_point(config, device, out, continued)?;
    // The loader thread draws patches ahead of the training thread (under a deadline, as many
    // as the time allows).
    let batches = if control.has_deadline() {
        usize::MAX
    } else {
        total
    };
    let loader = Loader::spawn(config, train, (step, batches), !control.has_deadline());
    let run = FitRun {
        config,
        replicas: &replicas,
        device,
        batches: &loader.batches,
        events,
        control,
        last_dir: out.join("last"),
        total,
    };
    let mut summaries = Vec::new();
    let mut stopped_early = false;
    for epoch in first_epoch..=config.epochs {
        // Dropout draws from the device's generator: seeded per epoch, as the batches are, so a
        // continued run draws what the uninterrupted one would.
        ad.seed(epoch_seed(t.seed, epoch));
        let (m, train_loss) = run.train_epoch(model, (&mut optim, &mut loss_scale), &mut step)?;
        model = m;
        let Some(train_loss) = train_loss else {
            // Cancelled or out of batches; running out of time is the plan's end, not a stop.
            stopped_early = !control.is_time_up();
            break;
        };
        let summary = run.finish_epoch(&model, val, device, epoch, train_loss, &mut best)?;
        let state = best.state(epoch, step, loss_scale);
        super::resume::save_state(out, t, (&model, &optim), &state)?;
        summaries.push(summary);
        if config.patience > 0 && best.since >= config.patience {
            stopped_early = true;
            break;
        }
        if control.is_time_up() {
            break;
        }
    }
    let last_dir = run.last_dir;
    loader
        .finish()
        .map_err(|problem| super::training::CheckpointError::File {
            path: out.display().to_string(),
            problem,
        })?;
    let _ = events.send(FitEvent::Train(super::training::TrainEvent::Finished {
        steps: step,
        cancelled: stopped_early,
    }));
    Ok(FitResult {
        epochs: summaries,
        best: best.dir,
        last: last_dir,
        stopped_early,
    })
}

/// A run's optimiser and its f16 loss scale (`None` in f32 and bf16).
type Optimiser = (ModuleOptimizer, Option<super::precision::LossScale>);

/// Where a fit starts: a fresh (or `resume_from`) model and optimiser at epoch 1, step 0; or,
/// `continued`, the state its last finished epoch left in `out`.
#[allow(clippy::type_complexity)]
fn starting_point(
    config: &FitConfig,
    device: &Device,
    out: &std::path::Path,
    continued: bool,
) -> Result<(MultiTaskUNet, Optimiser, (usize, usize), BestTracker), super::training::CheckpointError>
{
    let fresh_optim = super::adam_gpu::adam_w(config.weight_decay as f32);
    let mut best = BestTracker {
        dir: out.join("best"),
        score: f64::NEG_INFINITY,
        smoothed: None,
        since: 0,
    };
    let initial_scale = config.training.precision.initial_loss_scale();
    if !continued {
        let optimiser = (fresh_optim, initial_scale);
        return Ok((initial_model(config, device)?, optimiser, (1, 0), best));
    }
    let plan = (config.epochs, config.steps_per_epoch);
    let (state, model, optim) =
        super::resume::load_state(out, &config.training, plan, device, fresh_optim)?;
    best.score = state.best_score.unwrap_or(f64::NEG_INFINITY);
    (best.smoothed, best.since) = (state.smoothed, state.since);
    // The scale an f16 run reached; a state written before the scale was kept, or holding one
    // no run could go on with (an infinity, say), starts from the precision's first scale.
    let loss_scale = match (state.loss_scale, initial_scale) {
        (Some(saved), Some(_)) if saved.is_usable() => Some(saved),
        (_, initial) => initial,
    };
    Ok((
        model,
        (optim, loss_scale),
        (state.epoch + 1, state.step),
        best,
    ))
}

/// The data loader thread: draws augmented patch (or whole-head class) batches ahead of the
/// training thread, through a bounded channel.
struct Loader {
    /// Batches, in step order; closed when the thread ends.
    batches: Receiver<HostBatch>,
    /// Asks the thread to stop before its next batch.
    stop: Arc<AtomicBool>,
    /// The thread.
    thread: std::thread::JoinHandle<()>,
}

/// What the loader thread needs to draw batches.
struct LoaderSpec {
    /// Patch size `[x, y, z]` (voxels).
    patch: [usize; 3],
    /// Whole-head crop size of class steps (voxels of the coarse grid).
    class_window: [usize; 3],
    /// Class crops come from the samples averaged over blocks of this many voxels.
    class_stride: [usize; 3],
    /// Samples per batch.
    batch_size: usize,
    /// Sampler seed.
    seed: u64,
    /// Augmentation.
    augment: AugmentConfig,
    /// Every this many steps a class step (0: never, 1: always).
    class_every: usize,
    /// Batches in all.
    total: usize,
    /// Foreground share and label weights of patches.
    foreground: super::data::ForegroundSampling,
    /// Per class index, the weight of a case of that class in class steps (empty: alike).
    class_weights: Vec<f64>,
    /// The simulated user's first prompts, for a promptable network.
    prompt: Option<super::prompt::PromptConfig>,
    /// Batches already drawn by the run this one continues.
    first: usize,
    /// Steps of an epoch, each epoch's draw seeded anew (0: one stream, e.g. paced by time).
    epoch_steps: usize,
}

impl Loader {
    /// Start the loader thread for the batches after the first `first` up to `total`, drawn
    /// from `train`; with `per_epoch`, the draw is seeded anew at each epoch's first batch.
    fn spawn(
        config: &FitConfig,
        train: Vec<Sample>,
        (first, total): (usize, usize),
        per_epoch: bool,
    ) -> Self {
        let t = &config.training;
        let spec = LoaderSpec {
            patch: config.patch,
            class_window: t.class_window,
            class_stride: t.class_stride,
            batch_size: config.batch_size,
            seed: t.seed,
            augment: config.augment.clone(),
            class_every: match t.mode {
                TaskMode::SegmentationOnly => 0,
                TaskMode::ClassificationOnly => 1,
                TaskMode::Joint => config.class_every,
            },
            total,
            foreground: super::data::ForegroundSampling {
                one_in: config.foreground_one_in.max(1),
                label_weights: config.label_weights.clone(),
                by_object: t.prompt.is_some(),
            },
            class_weights: config.class_weights.clone(),
            prompt: t.prompt.clone(),
            first,
            epoch_steps: if per_epoch { config.steps_per_epoch } else { 0 },
        };
        let (tx, batches) = sync_channel::<HostBatch>(4);
        let stop = Arc::new(AtomicBool::new(false));
        let halt = stop.clone();
        let thread = std::thread::spawn(move || load_batches(&spec, &train, &halt, &tx));
        Self {
            batches,
            stop,
            thread,
        }
    }

    /// Stop the thread and wait for it; `Err` says so if it panicked (with its message when it
    /// has one).
    fn finish(self) -> Result<(), String> {
        self.stop.store(true, Ordering::Relaxed);
        drop(self.batches);
        self.thread.join().map_err(
            |payload| match crate::worker::panic_text(payload.as_ref()) {
                Some(m) => format!("the data loader stopped unexpectedly: {m}"),
                None => "the data loader stopped unexpectedly".to_string(),
            },
        )
    }
}

/// The seed of `epoch`'s random draws in a run seeded with `seed`: the run's own for the first
/// epoch (and for epoch 0, a run not counted in epochs), one derived from it for each later one.
fn epoch_seed(seed: u64, epoch: usize) -> u64 {
    seed ^ (epoch.saturating_sub(1) as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The patch sampler and the simulated user's random stream of `epoch` (0: the whole run's,
/// when epochs are not counted in steps).
fn draws(spec: &LoaderSpec, epoch: usize) -> (PatchSampler, ChaCha8Rng) {
    let seed = epoch_seed(spec.seed, epoch);
    let sampler = PatchSampler::new(seed, spec.patch, spec.augment.clone())
        .with_foreground(spec.foreground.clone());
    (sampler, ChaCha8Rng::seed_from_u64(seed ^ PROMPT_SEED))
}

/// Each training case's draw weight: its class's (1 for a case without a class, or a class
/// without a weight).
fn case_weights(spec: &LoaderSpec, train: &[Sample]) -> Vec<f64> {
    train
        .iter()
        .map(|s| {
            s.class
                .and_then(|c| spec.class_weights.get(c).copied())
                .unwrap_or(1.0)
        })
        .collect()
}

/// The loader thread's body: send `spec.total` batches from `train` into `tx`, stopping early
/// when `halt` is set, the receiver is gone or there is nothing to train on.
fn load_batches(
    spec: &LoaderSpec,
    train: &[Sample],
    halt: &AtomicBool,
    tx: &SyncSender<HostBatch>,
) {
    let (mut sampler, mut prompt_rng) = draws(spec, 0);
    let case_weights = case_weights(spec, train);
    let c = train.first().map_or(1, |s| s.channels.len());
    // Class crops see the whole head on the coarse grid.
    let coarse: Vec<Sample>;
    let class_set = if spec.class_every > 0 && spec.class_stride.iter().any(|s| *s > 1) {
        coarse = train
            .iter()
            .map(|s| s.coarsened(spec.class_stride))
            .collect();
        &coarse[..]
    } else {
        train
    };
    let c = c + spec
        .prompt
        .as_ref()
        .map_or(0, |_| super::prompt::GUIDANCE_CHANNELS);
    let replays = replay_index(train);
    for step in spec.first + 1..=spec.total {
        if halt.load(Ordering::Relaxed) || train.is_empty() {
            return;
        }
        if spec.epoch_steps > 0 && (step - 1) % spec.epoch_steps == 0 {
            (sampler, prompt_rng) = draws(spec, (step - 1) / spec.epoch_steps + 1);
        }
        let class_step = spec.class_every > 0 && step % spec.class_every == 0;
        let size = if class_step {
            spec.class_window
        } else {
            spec.patch
        };
        let mut images = Vec::new();
        let mut masks = Vec::new();
        let mut classes = Vec::new();
        for _ in 0..spec.batch_size {
            let s = if class_step && !spec.class_weights.is_empty() {
                &class_set[sampler.pick_weighted(&case_weights)]
            } else if class_step {
                &class_set[sampler.pick(class_set.len())]
            } else {
                &train[sampler.pick(train.len())]
            };
            let (ch, lab) = if class_step {
                sampler.centre_crop(s, size)
            } else if let Some(prompt) = &spec.prompt {
                let replay = (&replays[..], &mut prompt_rng);
                prompt_patch_of(&mut sampler, train, s, prompt, replay)
            } else {
                sampler.patch(s)
            };
            ch.into_iter().for_each(|x| images.extend(x));
            masks.extend(lab);
            classes.push(super::data::class_target(s));
        }
        let hb = HostBatch {
            class_step,
            images,
            masks,
            classes,
            n: spec.batch_size,
            c,
            patch: size,
        };
        if tx.send(hb).is_err() {
            return;
        }
    }
}

/// Share of a promptable run's patches that replay the user's recorded prompts (when any).
pub const REPLAY_SHARE: f64 = 0.5;

/// With probability `REPLAY_SHARE`, a patch replaying one of `replays` (sample, replay) of
/// `train`, drawn alike; `None` otherwise or when there are none.
fn replay_patch_of(
    sampler: &mut PatchSampler,
    train: &[Sample],
    replays: &[(usize, usize)],
    prompt: &super::prompt::PromptConfig,
    rng: &mut ChaCha8Rng,
) -> Option<(Vec<Vec<f32>>, Vec<i32>)> {
    use rand::RngExt;
    if replays.is_empty() || rng.random_range(0.0..1.0) >= REPLAY_SHARE {
        return None;
    }
    let (s, r) = replays[rng.random_range(0..replays.len())];
    let sample = train.get(s)?;
    super::prompt_train::replay_patch(sampler, sample, sample.replays.get(r)?, prompt)
}

/// Mixed into the seed of the simulated user's first prompts.
const PROMPT_SEED: u64 = 0x5052_4F4D_5054;

/// Every recorded prompt of `train`: (sample, replay) indices.
fn replay_index(train: &[Sample]) -> Vec<(usize, usize)> {
    train
        .iter()
        .enumerate()
        .flat_map(|(s, sample)| (0..sample.replays.len()).map(move |r| (s, r)))
        .collect()
}

/// A promptable training patch: a replay of one of `replays` (see `replay_patch_of`), else
/// from `first`, or, when its patch holds no label, from other cases of `train`; after a few
/// misses, a patch without a target (and without prompts).
fn prompt_patch_of(
    sampler: &mut PatchSampler,
    train: &[Sample],
    first: &Sample,
    prompt: &super::prompt::PromptConfig,
    (replays, rng): (&[(usize, usize)], &mut ChaCha8Rng),
) -> (Vec<Vec<f32>>, Vec<i32>) {
    if let Some(p) = replay_patch_of(sampler, train, replays, prompt, rng) {
        return p;
    }
    let mut s = first;
    for _ in 0..32 {
        if let Some(p) = super::prompt_train::prompt_patch(sampler, s, prompt, rng) {
            return p;
        }
        s = &train[sampler.pick(train.len())];
    }
    let (mut channels, labels) = sampler.patch(first);
    let len = labels.len();
    channels.extend((0..super::prompt::GUIDANCE_CHANNELS).map(|_| vec![0.0; len]));
    (channels, labels.iter().map(|_| 0).collect())
}

/// The best validation score so far and where its checkpoint goes.
struct BestTracker {
    /// Folder of the best checkpoint.
    dir: PathBuf,
    /// Best smoothed score so far.
    score: f64,
    /// The smoothed score of the last epoch (`None` before the first).
    smoothed: Option<f64>,
    /// Epochs since the best one.
    since: usize,
}

impl BestTracker {
    /// The fit's state after `epoch` at `step` with its f16 `loss_scale`, to continue from.
    fn state(
        &self,
        epoch: usize,
        step: usize,
        loss_scale: Option<super::precision::LossScale>,
    ) -> super::resume::FitState {
        super::resume::FitState {
            epoch,
            step,
            best_score: self.score.is_finite().then_some(self.score),
            smoothed: self.smoothed,
            since: self.since,
            loss_scale,
        }
    }
}

/// The autodiff devices of a fit on `device` split across `n` (at least one): `device` alone,
/// or the GPUs 0..n of a GPU backend (wgpu's discrete GPUs, or burn's CUDA devices), or `n`
/// replicas on the CPU's one device.
pub fn data_parallel_devices(device: &Device, n: usize) -> Vec<Device> {
    if n <= 1 || *device == Device::flex() {
        return vec![device.clone().autodiff(); n.max(1)];
    }
    if super::apply::is_cuda(device) {
        let cuda = super::apply::cuda_devices(n);
        return cuda.into_iter().map(Device::autodiff).collect();
    }
    (0..n)
        .map(|i| Device::wgpu(burn::prelude::DeviceKind::DiscreteGpu(i)).autodiff())
        .collect()
}

/// What the epochs of one fit share.
struct FitRun<'a> {
    config: &'a FitConfig,
    /// The autodiff devices a batch is split across (one: the device training runs on).
    replicas: &'a [Device],
    /// The same device without autodiff (the simulated user's predictions).
    device: &'a Device,
    /// The loader's batches.
    batches: &'a Receiver<HostBatch>,
    events: &'a Sender<FitEvent>,
    control: &'a FitControl,
    /// Folder of the last checkpoint.
    last_dir: PathBuf,
    /// Steps of the whole fit (for the learning-rate schedule).
    total: usize,
}

impl FitRun<'_> {
    /// Train one epoch of `steps_per_epoch` steps, counting `step` across epochs. Returns the
    /// model and the epoch's mean training loss, or `None` for the loss when the fit must stop:
    /// cancelled (the last checkpoint then written) or the loader ended. Each step's loss is
    /// read while the next step is queued (on a GPU the host records a step while the device
    /// runs the one before, instead of waiting for it), so its event follows one step later;
    /// every step's event is sent before this returns.
    fn train_epoch(
        &self,
        mut model: MultiTaskUNet,
        (optim, loss_scale): (
            &mut ModuleOptimizer,
            &mut Option<super::precision::LossScale>,
        ),
        step: &mut usize,
    ) -> Result<(MultiTaskUNet, Option<f64>), super::training::CheckpointError> {
        let (config, t) = (self.config, &self.config.training);
        let (mut loss_sum, mut steps) = (0.0, 0);
        let mut reading: Option<(usize, TermsReading)> = None;
        // Under a deadline the epoch ends by time, not by count.
        let paced = self.control.has_deadline();
        let stop = loop {
            if !paced && steps >= config.steps_per_epoch {
                break false;
            }
            if self.control.is_paused() {
                // The step before the pause is shown while paused, not after.
                loss_sum += self.report_step(reading.take());
            }
            self.control.wait_while_paused();
            if self.control.is_cancelled() {
                self.report_step(reading.take());
                save_checkpoint(&self.last_dir, t, &model)?;
                return Ok((model, None));
            }
            match self.control.step_verdict(steps) {
                StepVerdict::Go => {}
                StepVerdict::EndEpoch => break false,
                // Out of time: the steps so far end with this epoch's validation; with none
                // this epoch, the previous epoch's checkpoints stand.
                StepVerdict::TimeUp => break steps == 0,
            }
            let Ok(hb) = self.batches.recv() else {
                break true;
            };
            let class_step = hb.class_step;
            let hb = self.with_corrections(hb, &model, *step);
            let parts = hb.into_parts(self.replicas, config.changed_weight as f32);
            let mode = step_mode(t.mode, class_step, config.class_every > 0);
            let step_config = TrainingConfig { mode, ..t.clone() };
            let lr = self.learning_rate(*step);
            let optimiser = (&mut *optim, &mut *loss_scale);
            let (m, terms) = train_step_reading(model, optimiser, &parts, &step_config, lr);
            model = m;
            *step += 1;
            steps += 1;
            loss_sum += self.report_step(reading.replace((*step, terms)));
        };
        loss_sum += self.report_step(reading);
        Ok((model, (!stop).then(|| loss_sum / steps.max(1) as f64)))
    }

    /// The learning rate of the step after `step`: cosine-annealed when configured (paced by
    /// a deadline, along the time used), else the configured one.
    fn learning_rate(&self, step: usize) -> f64 {
        let t = &self.config.training;
        if !self.config.cosine_schedule {
            return t.learning_rate;
        }
        let at = match self.control.time_progress() {
            Some(p) => ((p * self.total as f64).round() as usize).max(1),
            None => step + 1,
        };
        cosine_lr(t.learning_rate, at, self.total, self.total / 50, 0.02)
    }

    /// Waits for a step's loss terms, sends its event; its total loss (0 without a step).
    fn report_step(&self, reading: Option<(usize, TermsReading)>) -> f64 {
        let Some((step, terms)) = reading else {
            return 0.0;
        };
        let loss = terms.finish();
        let total = loss.total;
        let event = super::training::TrainEvent::Step { step, loss };
        let _ = self.events.send(FitEvent::Train(event));
        self.control.last_step_sent.store(step, Ordering::Relaxed);
        total
    }

    /// A promptable run's host batch after the simulated user's corrective clicks (the
    /// batch unchanged otherwise).
    fn with_corrections(&self, mut hb: HostBatch, model: &MultiTaskUNet, step: usize) -> HostBatch {
        let t = &self.config.training;
        let Some(prompt) = &t.prompt else {
            return hb;
        };
        let rounds = super::prompt_train::rounds_for_step(step, t.seed, prompt.corrective_rounds);
        if rounds > 0 && !hb.class_step {
            super::prompt_train::simulate_corrections(
                &model.valid(),
                &mut hb.images,
                &hb.masks,
                hb.n,
                hb.c,
                hb.patch,
                rounds,
                prompt.point_radius_vox,
                self.device,
            );
        }
        hb
    }

    /// Validate the model after `epoch`, write the last checkpoint (and the best one when the
    /// score improved, updating `best`), and report the epoch's summary.
    fn finish_epoch(
        &self,
        model: &MultiTaskUNet,
        val: &[Sample],
        device: &Device,
        epoch: usize,
        train_loss: f64,
        best: &mut BestTracker,
    ) -> Result<EpochSummary, super::training::CheckpointError> {
        let t = &self.config.training;
        let started = self.control.validation_clock(None);
        let validation = validate(&model.valid(), val, t, device);
        if started.is_some() {
            self.control.validation_clock(started);
        }
        let score = smoothed_score(best.smoothed, validation_score(t.mode, &validation));
        best.smoothed = Some(score);
        let is_best = is_new_best(score, best.score);
        save_checkpoint(&self.last_dir, t, model)?;
        if is_best {
            best.score = score;
            best.since = 0;
            save_checkpoint(&best.dir, t, model)?;
            let _ = self
                .events
                .send(FitEvent::Train(super::training::TrainEvent::Checkpoint(
                    best.dir.display().to_string(),
                )));
        } else {
            best.since += 1;
        }
        let summary = EpochSummary {
            epoch,
            train_loss,
            validation,
            best: is_best,
        };
        let _ = self.events.send(FitEvent::Epoch(summary.clone()));
        Ok(summary)
    }
}

/// The task of one step: with whole-head class steps (`class_steps`), a joint fit's class steps
/// train the classification only and its patch steps the segmentation only.
fn step_mode(mode: TaskMode, class_step: bool, class_steps: bool) -> TaskMode {
    match (mode, class_step, class_steps) {
        (TaskMode::Joint, true, _) => TaskMode::ClassificationOnly,
        (TaskMode::Joint, false, true) => TaskMode::SegmentationOnly,
        (m, _, _) => m,
    }
}

/// Whether an epoch whose smoothed validation score is `score` is the best so far (`best`): at
/// least as good. A tie goes to the later, longer-trained epoch: while the validation cases
/// cannot tell epochs apart (every Dice still zero early in a fine-tune on tiny structures),
/// a strict comparison would keep the first epoch's checkpoint however training went on.
fn is_new_best(score: f64, best: f64) -> bool {
    score >= best
}

/// Weight of the previous epochs in the smoothed validation score.
const SCORE_MEMORY: f64 = 0.5;

/// The smoothed validation score after an epoch scoring `score` (`previous`: the smoothed score
/// before it): an exponential moving average, as nnU-Net chooses its best checkpoint, so that
/// one lucky epoch on a few validation cases (an AUC over five cases swings 0 ↔ 1) does not
/// pick the checkpoint.
pub fn smoothed_score(previous: Option<f64>, score: f64) -> f64 {
    previous.map_or(score, |p| SCORE_MEMORY * p + (1.0 - SCORE_MEMORY) * score)
}

/// An epoch's validation score, which chooses the best checkpoint: mean foreground Dice (each
/// label present alike) plus class AUC (chance where the AUC is undefined), each counted only
/// when its task is trained.
pub fn validation_score(mode: TaskMode, validation: &Metrics) -> f64 {
    let w_seg = if mode == TaskMode::ClassificationOnly {
        0.0
    } else {
        1.0
    };
    let w_cls = if mode == TaskMode::SegmentationOnly {
        0.0
    } else {
        1.0
    };
    // Every label present weighs the same; the class by its AUC, or chance (0.5) when the
    // validation cases hold a single class: calling every case one class is then "accurate"
    // and must not choose the checkpoint.
    w_seg * validation.mean_dice() + w_cls * validation.class_auc.unwrap_or(0.5)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loader running `body` as its thread (no batches).
    fn loader_running(body: fn()) -> Loader {
        let (_tx, batches) = sync_channel::<HostBatch>(1);
        Loader {
            batches,
            stop: Arc::new(AtomicBool::new(false)),
            thread: std::thread::spawn(body),
        }
    }

    #[test]
    fn a_panicking_loader_is_an_error_with_the_panic_message() {
        assert_eq!(loader_running(|| {}).finish(), Ok(()));
        assert_eq!(
            loader_running(|| panic!("no patch")).finish(),
            Err("the data loader stopped unexpectedly: no patch".to_string())
        );
        assert_eq!(
            loader_running(|| panic!("index {} out of range", 7)).finish(),
            Err("the data loader stopped unexpectedly: index 7 out of range".to_string())
        );
        assert_eq!(
            loader_running(|| std::panic::panic_any(7u8)).finish(),
            Err("the data loader stopped unexpectedly".to_string())
        );
    }

    #[test]
    fn a_tied_validation_score_takes_the_later_checkpoint() {
        // Three fine-tuning epochs whose validation Dice is still zero on every label: the
        // last, longest-trained one is the best, not the first.
        let mut best = f64::NEG_INFINITY;
        let mut chosen = 0;
        for (epoch, raw) in [0.0, 0.0, 0.0].into_iter().enumerate() {
            let score = smoothed_score((epoch > 0).then_some(best), raw);
            if is_new_best(score, best) {
                (best, chosen) = (score, epoch + 1);
            }
        }
        assert_eq!(chosen, 3);
        // A real drop does not.
        assert!(!is_new_best(smoothed_score(Some(0.4), 0.2), 0.4));
        assert!(is_new_best(smoothed_score(Some(0.4), 0.6), 0.4));
        assert!(!is_new_best(f64::NAN, 0.4));
    }
}
