//! Joint training of segmentation and classification: the losses (soft Dice + cross-entropy for
//! the mask, cross-entropy for the class, weighted), one optimisation step, and a training loop
//! that reports through a channel of events and stops when asked.
//!
//! Invariants: the loop never prints; it sends `TrainEvent`s and checks its stop flag every step.
//! Checkpoints are written with their config beside them.

use super::class_loss_gpu::class_cross_entropy;
use super::loss::segmentation_losses;
use super::model::{MultiTaskUNet, MultiTaskUNetConfig};
use super::precision::{cast_to, unscale_gradients, LossScale, Precision};
use burn::optim::{GradientsParams, ModuleOptimizer, MultiGradientsParams};
use burn::prelude::*;
use burn::tensor::Transaction;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;

/// Which tasks the loss trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum TaskMode {
    /// Segmentation and classification together.
    Joint,
    /// Segmentation only.
    SegmentationOnly,
    /// Classification only.
    ClassificationOnly,
}

impl TaskMode {
    /// The name the CLI, the manifest and plans use: `joint`, `seg` or `class`.
    pub fn name(self) -> &'static str {
        match self {
            TaskMode::Joint => "joint",
            TaskMode::SegmentationOnly => "seg",
            TaskMode::ClassificationOnly => "class",
        }
    }

    /// What a case needs to be trained on in this mode, in words.
    pub fn case_needs(self) -> &'static str {
        match self {
            TaskMode::Joint => "a reference mask and a class",
            TaskMode::SegmentationOnly => "a reference mask",
            TaskMode::ClassificationOnly => "a class",
        }
    }
}

/// Training settings.
#[derive(Config, Debug, PartialEq)]
pub struct TrainingConfig {
    /// The network.
    pub model: MultiTaskUNetConfig,
    /// Tasks trained.
    #[config(default = "TaskMode::Joint")]
    pub mode: TaskMode,
    /// Weight of the classification loss in the joint loss.
    #[config(default = 0.5)]
    pub class_weight: f64,
    /// Adam learning rate.
    #[config(default = 2e-3)]
    pub learning_rate: f64,
    /// Optimisation steps.
    #[config(default = 200)]
    pub steps: usize,
    /// Seed of weights and sampling.
    #[config(default = 1)]
    pub seed: u64,
    /// The sequences fed as input channels, in order (e.g. `["T1", "T2"]`).
    #[config(default = "Vec::new()")]
    pub sequences: Vec<String>,
    /// Label names (index = label value; 0 = background), for reports.
    #[config(default = "Vec::new()")]
    pub label_names: Vec<String>,
    /// Class names, in the network's output order.
    #[config(default = "Vec::new()")]
    pub class_names: Vec<String>,
    /// Sliding-window size for segmentation `[x, y, z]` (the training patch: instance
    /// normalisation makes predictions depend on the window).
    #[config(default = "[32, 32, 32]")]
    pub window: [usize; 3],
    /// The centre crop classified `[x, y, z]` (whole-head context).
    #[config(default = "[64, 64, 64]")]
    pub class_window: [usize; 3],
    /// The class crop is taken from the volume averaged over blocks of this many voxels per
    /// axis, so a window within the device's budget still sees the whole head.
    #[config(default = "[1, 1, 1]")]
    pub class_stride: [usize; 3],
    /// Voxel spacing (mm) cases are resampled to before training and prediction (0 on an axis:
    /// keep it); `None`: each case's own grid.
    #[config(default = "None")]
    pub spacing_mm: Option<[f64; 3]>,
    /// When the reference masks tell the class (the plan's rule 11), the class is read from
    /// the predicted mask instead of the class head.
    #[config(default = "None")]
    pub class_evidence: Option<ClassEvidence>,
    /// A promptable network: its input ends with the guidance channels (include, exclude,
    /// current mask) and it answers target-or-not for the prompted label (`None`: automatic).
    #[config(default = "None")]
    pub prompt: Option<super::prompt::PromptConfig>,
    /// The precision a training step computes in: f32, or mixed precision (f16 or bf16
    /// convolutions on f32 weights, `model::precision`).
    #[config(default = "Precision::F32")]
    pub precision: Precision,
}

/// The class read from the mask: in the training data (nearly) every case of one class holds
/// one of these labels and (nearly) no case of the other does (white-matter lesions in
/// patients, none in controls), so their predicted volume decides the class.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ClassEvidence {
    /// The label values whose voxels count.
    pub labels: Vec<u8>,
    /// Their names.
    pub label_names: Vec<String>,
    /// The class of the cases that hold the label.
    pub present_class: String,
    /// The class of the cases that do not.
    pub absent_class: String,
    /// Predicted volume (mm³) at which both classes are even: half the labels' smallest
    /// reference volume in a case holding them.
    pub threshold_mm3: f64,
}

/// How steeply the evidence turns volume into probability: at twice (half) the threshold's
/// log-volume (ln(1 + v)) the present class has σ(±4·ln 2) ≈ 0.94 (0.06).
const EVIDENCE_SLOPE: f64 = 4.0;

impl ClassEvidence {
    /// Probability of `present_class` for a predicted volume of `volume_mm3`: a logistic in
    /// ln(1 + volume), even at the threshold, monotone (so the AUC ranks by volume).
    pub fn present_probability(&self, volume_mm3: f64) -> f64 {
        let z =
            EVIDENCE_SLOPE * ((1.0 + volume_mm3.max(0.0)).ln() - (1.0 + self.threshold_mm3).ln());
        1.0 / (1.0 + (-z).exp())
    }
}

impl TrainingConfig {
    /// A prediction's class probabilities: the head's (`head`), or, with class evidence, read
    /// from the predicted `mask` (voxels of `voxel_mm3`; `None`: unknown, the head's).
    pub fn class_probabilities(
        &self,
        head: Vec<f32>,
        mask: &[u8],
        voxel_mm3: Option<f64>,
    ) -> Vec<f32> {
        let (Some(e), Some(voxel_mm3)) = (&self.class_evidence, voxel_mm3) else {
            return head;
        };
        let index = |name: &str| self.class_names.iter().position(|c| c == name);
        let (Some(present), Some(absent)) = (index(&e.present_class), index(&e.absent_class))
        else {
            return head;
        };
        let voxels = mask.iter().filter(|v| e.labels.contains(v)).count();
        let p = e.present_probability(voxels as f64 * voxel_mm3) as f32;
        let mut out = vec![0.0; head.len().max(present + 1).max(absent + 1)];
        out[present] = p;
        out[absent] = 1.0 - p;
        out
    }

    /// What the class head looks at: the window and the stride it is sampled at.
    pub fn class_view(&self) -> super::inference::ClassView {
        super::inference::ClassView {
            window: self.class_window,
            stride: self.class_stride,
        }
    }

    /// Whether cases are brought to the RAS voxel layout for this network (3D volumes: yes;
    /// single slices keep their in-plane layout).
    pub fn ras_layout(&self) -> bool {
        self.model.spatial_dims == 3
    }

    /// The name of label `value` (`label<N>` when the config names none).
    pub fn label_name(&self, value: usize) -> String {
        self.label_names
            .get(value)
            .cloned()
            .unwrap_or_else(|| format!("label{value}"))
    }
}

/// A batch: images `[N, C, D, H, W]`, label masks `[N, D, H, W]`, classes `[N]`.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Images.
    pub images: Tensor<5>,
    /// Label masks (integer labels).
    pub masks: Tensor<4, Int>,
    /// Class indices.
    pub classes: Tensor<1, Int>,
    /// Per-voxel weights of the segmentation cross-entropy `[N, D, H, W]` (e.g. more weight on
    /// voxels an annotator corrected); `None`: all 1.
    pub weights: Option<Tensor<4>>,
}

/// The loss terms of one step (host values).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossTerms {
    /// The tasks this step trained (its `total` sums their terms).
    pub mode: TaskMode,
    /// Weighted total.
    pub total: f64,
    /// Soft Dice loss (1 − mean foreground Dice).
    pub dice: f64,
    /// Voxel cross-entropy.
    pub seg_ce: f64,
    /// Class cross-entropy.
    pub class_ce: f64,
}

impl LossTerms {
    /// All terms 0, for `mode` (a sum to add parts' terms to).
    pub fn zero(mode: TaskMode) -> Self {
        Self {
            mode,
            total: 0.0,
            dice: 0.0,
            seg_ce: 0.0,
            class_ce: 0.0,
        }
    }
}

/// A step's loss terms still on its device, `[total, dice, seg_ce, class_ce]`: read together
/// in one transaction once the step's backward pass and update are queued (on a GPU, four
/// reads before the backward pass made the host wait for the forward pass four times, and
/// queue the backward pass only then; one tensor concatenated from the four took a fill and a
/// copy each).
pub(crate) struct PendingTerms {
    mode: TaskMode,
    values: [Tensor<1>; 4],
}

impl PendingTerms {
    /// The host values (waits for the device; NaN where one cannot be read).
    pub(crate) fn read(self) -> LossTerms {
        self.start().finish()
    }

    /// Starts the read: the device copies the four values out once the work queued before
    /// them is done, while the host goes on (queues the next step); [`TermsReading::finish`]
    /// waits for them. On a GPU this is what lets the host record a step while the device
    /// runs the one before; on the CPU the values are there at once.
    pub(crate) fn start(self) -> TermsReading {
        let transaction =
            (self.values.into_iter()).fold(Transaction::default(), |t, value| t.register(value));
        let mut read = Box::pin(transaction.execute_async());
        // One poll queues the copy (burn's fusion runs what it holds, cubecl submits it and
        // the copy, and a thread of its own polls the device); only the wait is left.
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        match std::future::Future::poll(read.as_mut(), &mut context) {
            std::task::Poll::Ready(values) => TermsReading::Done(terms_of(self.mode, values)),
            std::task::Poll::Pending => TermsReading::Reading {
                mode: self.mode,
                read,
            },
        }
    }
}

/// The values a transaction of `[total, dice, seg_ce, class_ce]` read, as terms of `mode` (NaN
/// where one could not be read).
fn terms_of(
    mode: TaskMode,
    read: Result<Vec<burn::tensor::TensorData>, burn::tensor::ExecutionError>,
) -> LossTerms {
    let read = read.unwrap_or_default();
    let at = |i: usize| {
        let first = read.get(i).and_then(|d| d.iter::<f32>().next());
        first.map_or(f64::NAN, f64::from)
    };
    LossTerms {
        mode,
        total: at(0),
        dice: at(1),
        seg_ce: at(2),
        class_ce: at(3),
    }
}

/// The values a transaction reads, once the device has them.
type TransactionRead = std::pin::Pin<
    Box<
        dyn std::future::Future<
            Output = Result<Vec<burn::tensor::TensorData>, burn::tensor::ExecutionError>,
        >,
    >,
>;

/// A step's loss terms on their way to the host: read already, or a read under way.
pub(crate) enum TermsReading {
    /// On the host.
    Done(LossTerms),
    /// Copied out by the device when it gets there.
    Reading {
        /// The terms' task mode.
        mode: TaskMode,
        /// The read.
        read: TransactionRead,
    },
}

impl TermsReading {
    /// The host values (waits for the device if it has not copied them yet).
    pub(crate) fn finish(self) -> LossTerms {
        match self {
            TermsReading::Done(terms) => terms,
            TermsReading::Reading { mode, read } => terms_of(mode, pollster::block_on(read)),
        }
    }
}

/// The weighted loss of a batch and its terms, the network run in `precision` (the losses in
/// f32).
pub fn batch_loss(
    model: &MultiTaskUNet,
    batch: &Batch,
    task: (TaskMode, f64),
    precision: Precision,
) -> (Tensor<1>, LossTerms) {
    let (loss, terms) = batch_loss_pending(model, batch, task, precision);
    (loss, terms.read())
}

/// [`batch_loss`] with its terms left on the device.
pub(crate) fn batch_loss_pending(
    model: &MultiTaskUNet,
    batch: &Batch,
    (mode, class_weight): (TaskMode, f64),
    precision: Precision,
) -> (Tensor<1>, PendingTerms) {
    let class_ce_of = |cls: Tensor<2>| class_cross_entropy(cls, batch.classes.clone());
    let pending = |parts: [&Tensor<1>; 4]| PendingTerms {
        mode,
        values: parts.map(|t| t.clone().detach()),
    };
    if mode == TaskMode::ClassificationOnly {
        // The decoder's output would be thrown away: the encoder alone.
        let class_ce = class_ce_of(model.forward_class(precision.cast_input(batch.images.clone())));
        let zero = class_ce.zeros_like();
        let terms = pending([&class_ce, &zero, &zero, &class_ce]);
        return (class_ce, terms);
    }
    let (seg, cls) = model.forward(precision.cast_input(batch.images.clone()));
    let seg = cast_to(seg, burn::tensor::FloatDType::F32);
    let (dice, seg_ce) = segmentation_losses(seg, batch.masks.clone(), batch.weights.clone());
    let class_ce = class_ce_of(cls);
    let total = task_loss(
        (mode, class_weight),
        dice.clone(),
        seg_ce.clone(),
        class_ce.clone(),
    );
    let terms = pending([&total, &dice, &seg_ce, &class_ce]);
    (total, terms)
}

/// The loss a step of `mode` trains on: the segmentation losses, plus the class cross-entropy
/// weighted by `class_weight` when training both tasks.
pub(crate) fn task_loss(
    (mode, class_weight): (TaskMode, f64),
    dice: Tensor<1>,
    seg_ce: Tensor<1>,
    class_ce: Tensor<1>,
) -> Tensor<1> {
    match mode {
        TaskMode::Joint => dice + seg_ce + class_ce.mul_scalar(class_weight),
        TaskMode::SegmentationOnly | TaskMode::ClassificationOnly => dice + seg_ce,
    }
}

/// One optimisation step on a batch at the config's learning rate; returns the updated model
/// and the loss terms. `loss_scale`: the run's f16 loss scale (`Precision::initial_loss_scale`;
/// `None` in f32 and bf16), updated by the step.
pub fn train_step(
    model: MultiTaskUNet,
    (optim, loss_scale): (&mut ModuleOptimizer, &mut Option<LossScale>),
    batch: &Batch,
    config: &TrainingConfig,
) -> (MultiTaskUNet, LossTerms) {
    train_step_at(
        model,
        (optim, loss_scale),
        batch,
        config,
        config.learning_rate,
    )
}

/// One optimisation step at learning rate `lr` (a schedule's value).
pub fn train_step_at(
    model: MultiTaskUNet,
    optimiser: (&mut ModuleOptimizer, &mut Option<LossScale>),
    batch: &Batch,
    config: &TrainingConfig,
    lr: f64,
) -> (MultiTaskUNet, LossTerms) {
    train_step_parallel(model, optimiser, std::slice::from_ref(batch), config, lr)
}

/// The gradients of `model`'s loss on `part`, weighted by `share` and divided by the loss
/// `scale` it was multiplied by; whether they are finite (always, unscaled).
fn part_gradients(
    model: &MultiTaskUNet,
    part: &Batch,
    config: &TrainingConfig,
    share: f64,
    scale: Option<f32>,
) -> (GradientsParams, PendingTerms, bool) {
    let task = (config.mode, config.class_weight);
    let (loss, terms) = batch_loss_pending(model, part, task, config.precision);
    let factor = share * f64::from(scale.unwrap_or(1.0));
    let loss = match factor == 1.0 {
        true => loss,
        false => loss.mul_scalar(factor),
    };
    let mut grads = GradientsParams::from_grads(loss.backward(), model);
    let finite = scale.is_none_or(|s| unscale_gradients(&mut grads, model, s));
    (grads, terms, finite)
}

/// One data-parallel optimisation step at learning rate `lr`, burn's multi-device way (its
/// learner's multi-device strategy): each part of the batch, on its own device, runs forward
/// and backward on a fork of `model` there in its own thread; burn's `MultiGradientsParams`
/// sums the parts' gradients and `ModuleOptimizer::step_multi` applies them. Each part's loss
/// is weighted by its share of the patches, so the sum is the combined batch's gradient —
/// exactly for the cross-entropies, nearly for soft Dice (pooled over a part's patches, not the
/// whole batch). One part runs on `model` itself, on the calling thread. The loss terms are the
/// parts' weighted mean. One part on the CPU in f32 splits by item across the cores, exactly
/// (`split_step`). With an f16 loss scale, a step whose gradients overflowed is skipped
/// (the model and optimiser returned as they were) and the scale updated.
pub fn train_step_parallel(
    model: MultiTaskUNet,
    optimiser: (&mut ModuleOptimizer, &mut Option<LossScale>),
    parts: &[Batch],
    config: &TrainingConfig,
    lr: f64,
) -> (MultiTaskUNet, LossTerms) {
    let (model, terms) = train_step_reading(model, optimiser, parts, config, lr);
    (model, terms.finish())
}

/// [`train_step_parallel`] with the loss terms of a one-part step on a GPU still being read
/// when it returns (see [`PendingTerms::start`]): the caller queues the next step before it
/// waits for them.
pub(crate) fn train_step_reading(
    model: MultiTaskUNet,
    (optim, loss_scale): (&mut ModuleOptimizer, &mut Option<LossScale>),
    parts: &[Batch],
    config: &TrainingConfig,
    lr: f64,
) -> (MultiTaskUNet, TermsReading) {
    let scale = loss_scale.map(|s| s.scale);
    if let [one] = parts {
        let split = scale
            .is_none()
            .then(|| super::split_step::split_of(one, config));
        if let Some(split) = split.flatten() {
            let (model, terms) =
                super::split_step::split_step(model, optim, (one, config, lr), split);
            return (model, TermsReading::Done(terms));
        }
        let (model, terms) = train_step_pending(model, (optim, loss_scale), one, config, lr);
        return (model, terms.start());
    }
    let total: usize = parts.iter().map(|b| b.images.dims()[0]).sum();
    let outputs: Vec<_> = std::thread::scope(|scope| {
        let workers: Vec<_> = parts
            .iter()
            .map(|part| {
                let device = part.images.device();
                let replica = model.clone().fork(&device);
                scope.spawn(move || {
                    let share = part.images.dims()[0] as f64 / total.max(1) as f64;
                    let (grads, terms, finite) =
                        part_gradients(&replica, part, config, share, scale);
                    (grads, device, terms.read(), share, finite)
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    let mut grads = MultiGradientsParams::default();
    let mut terms = LossTerms::zero(config.mode);
    let mut finite = true;
    for (g, device, t, share, part_finite) in outputs {
        grads.grads.push((g, device));
        terms.total += t.total * share;
        terms.dice += t.dice * share;
        terms.seg_ce += t.seg_ce * share;
        terms.class_ce += t.class_ce * share;
        finite &= part_finite;
    }
    *loss_scale = loss_scale.map(|s| s.after(finite));
    let model = match finite {
        true => optim.step_multi(lr, model, grads),
        false => model,
    };
    (model, TermsReading::Done(terms))
}

/// One optimisation step on `batch` in one part (no split across the CPU's cores), its loss
/// terms left on the device. On a GPU the time until it returns is the host's recording of the
/// step (forward, backward, optimiser; with an f16 loss scale also the wait for the backward
/// pass, whose gradients' finiteness is read before the optimiser), which `bench train`
/// reports beside the steps per second.
pub(crate) fn train_step_pending(
    model: MultiTaskUNet,
    (optim, loss_scale): (&mut ModuleOptimizer, &mut Option<LossScale>),
    batch: &Batch,
    config: &TrainingConfig,
    lr: f64,
) -> (MultiTaskUNet, PendingTerms) {
    let scale = loss_scale.map(|s| s.scale);
    let (grads, terms, finite) = part_gradients(&model, batch, config, 1.0, scale);
    *loss_scale = loss_scale.map(|s| s.after(finite));
    let model = match finite {
        true => optim.step(lr, model, grads),
        false => model,
    };
    (model, terms)
}

/// Cosine annealing from `lr` to `lr · min_fraction` over `total` steps (step from 1), after a
/// linear warm-up over the first `warmup` steps.
pub fn cosine_lr(lr: f64, step: usize, total: usize, warmup: usize, min_fraction: f64) -> f64 {
    if step <= warmup && warmup > 0 {
        return lr * step as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let t = ((step.saturating_sub(warmup)) as f64 / span).clamp(0.0, 1.0);
    let min = lr * min_fraction;
    min + 0.5 * (lr - min) * (1.0 + (std::f64::consts::PI * t).cos())
}

/// What a training run reports.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainEvent {
    /// A step finished.
    Step {
        /// Step number (from 1).
        step: usize,
        /// Its loss terms.
        loss: LossTerms,
    },
    /// A checkpoint was written (the folder).
    Checkpoint(String),
    /// Training stopped (all steps done, or asked to stop).
    Finished {
        /// Steps done.
        steps: usize,
        /// Whether it was asked to stop early.
        cancelled: bool,
    },
    /// Training failed; the message says why.
    Failed(String),
}

/// Train from `batches` (called with the step number, returning a batch on the training
/// device) for `config.steps` steps, sending events; stops early when `stop` is set.
pub fn train(
    config: &TrainingConfig,
    device: &Device,
    mut batches: impl FnMut(usize) -> Batch,
    events: &Sender<TrainEvent>,
    stop: &AtomicBool,
) -> MultiTaskUNet {
    let ad = device.clone().autodiff();
    ad.seed(config.seed);
    let mut model = config.model.init(&ad);
    let mut optim = super::adam_gpu::adam();
    let mut loss_scale = config.precision.initial_loss_scale();
    let mut done = 0;
    for step in 1..=config.steps {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let batch = batches(step);
        let (m, loss) = train_step(model, (&mut optim, &mut loss_scale), &batch, config);
        model = m;
        done = step;
        let _ = events.send(TrainEvent::Step { step, loss });
    }
    let _ = events.send(TrainEvent::Finished {
        steps: done,
        cancelled: done < config.steps,
    });
    model
}

/// Errors saving or loading a checkpoint.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file could not be written or read.
    #[error("{path}: {problem}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        problem: String,
    },
    /// A time budget too short for the run to train and validate at all.
    #[error("{0}")]
    BudgetTooShort(String),
}

/// Save a checkpoint: `config.json` and `model.bpk` in `dir`.
pub fn save_checkpoint(
    dir: &Path,
    config: &TrainingConfig,
    model: &MultiTaskUNet,
) -> Result<(), CheckpointError> {
    let err = |p: &Path, e: String| CheckpointError::File {
        path: p.display().to_string(),
        problem: e,
    };
    std::fs::create_dir_all(dir).map_err(|e| err(dir, e.to_string()))?;
    let cfg = dir.join("config.json");
    config.save(&cfg).map_err(|e| err(&cfg, e.to_string()))?;
    let weights = dir.join("model.bpk");
    model
        .clone()
        .valid()
        .save_file(&weights)
        .map_err(|e| err(&weights, e.to_string()))
}

/// The checkpoint folder `dir` names: `dir` itself when it holds a `config.json`, else its
/// `best/`, else its `last/` (a training run's `--out` folder, or a model version's folder, as
/// users type them); `dir` unchanged when none is a checkpoint (loading then says so).
pub fn checkpoint_dir(dir: &Path) -> std::path::PathBuf {
    [dir.to_path_buf(), dir.join("best"), dir.join("last")]
        .into_iter()
        .find(|d| d.join("config.json").is_file())
        .unwrap_or_else(|| dir.to_path_buf())
}

/// Whether the checkpoint in `dir` with `config` is of the kind a command needs: promptable
/// (`promptable`: it segments from prompts) or automatic; else an error naming the model.
pub fn check_model_kind(
    dir: &Path,
    config: &TrainingConfig,
    promptable: bool,
) -> Result<(), CheckpointError> {
    let problem = match (promptable, config.prompt.is_some()) {
        (true, false) => {
            "not a promptable model (train one with `mriloop train PROJECT --promptable`)"
        }
        (false, true) => {
            "a promptable model: it segments from prompts (the Prompt tool, `mriloop \
             eval-prompt`), not on its own; give an automatic one"
        }
        _ => return Ok(()),
    };
    Err(CheckpointError::File {
        path: dir.display().to_string(),
        problem: problem.into(),
    })
}

/// Load a checkpoint saved by `save_checkpoint` onto `device` (for inference); `dir` may also
/// be a run's or a version's folder (`checkpoint_dir`).
pub fn load_checkpoint(
    dir: &Path,
    device: &Device,
) -> Result<(TrainingConfig, MultiTaskUNet), CheckpointError> {
    let err = |p: &Path, e: String| CheckpointError::File {
        path: p.display().to_string(),
        problem: e,
    };
    let dir = &checkpoint_dir(dir);
    if !dir.join("config.json").is_file() {
        return Err(err(
            dir,
            "not a checkpoint: no config.json here, nor in best/ or last/ below it".into(),
        ));
    }
    let cfg_path = dir.join("config.json");
    let config = TrainingConfig::load(&cfg_path).map_err(|e| err(&cfg_path, e.to_string()))?;
    let weights = dir.join("model.bpk");
    let model = config
        .model
        .init(device)
        .try_load_file(&weights)
        .map_err(|e| err(&weights, e.to_string()))?;
    Ok((config, model))
}
