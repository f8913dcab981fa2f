//! Fitting on a project: training by epochs (AdamW, cosine learning-rate schedule) on augmented
//! patches drawn by a loader thread,
//! validation by case after every epoch (sliding-window Dice per label, class accuracy and AUC),
//! best and last checkpoints, early stop, and cancellation at any step. Reports through the
//! same channel of `TrainEvent`s as `train`, plus `Epoch` summaries; never prints.
//!
//! Invariants: the validation cases are never trained on; the split is by case and fixed by the
//! seed; the best checkpoint is the one with the highest validation score (mean foreground Dice
//! plus class AUC, each weighted by the tasks trained).

use super::data::{split_labels, AugmentConfig, PatchSampler, Sample};
use super::inference::predict_volume;
use super::model::MultiTaskUNet;
use super::training::{cosine_lr, save_checkpoint, train_step_at, Batch, TaskMode, TrainingConfig};
use crate::volume::Affine;
use burn::optim::AdamWConfig;
use burn::prelude::*;
use burn::tensor::{Int, TensorData};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Sender};

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
}

/// Controls of a running fit, shared with whoever started it: cancel, pause and resume take
/// effect at the next step.
#[derive(Debug, Default)]
pub struct FitControl {
    stop: AtomicBool,
    pause: AtomicBool,
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

    /// Block while paused (and not cancelled).
    fn wait_while_paused(&self) {
        while self.is_paused() && !self.is_cancelled() {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
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

/// Validate: predict every sample whole (the config's windows) and compare.
pub fn validate(
    model: &MultiTaskUNet,
    samples: &[Sample],
    config: &TrainingConfig,
    device: &Device,
) -> Metrics {
    let mut dice_sum = vec![(0.0, 0usize); config.model.num_labels.saturating_sub(1)];
    let mut probs: Vec<Vec<f32>> = Vec::new();
    let mut truth = Vec::new();
    for s in samples {
        let Ok(p) = predict_volume(
            model,
            &s.channels,
            s.dims,
            Affine::identity(),
            config.window,
            config.class_window,
            0.5,
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
        probs.push(p.class_probabilities);
        truth.push(s.class);
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

/// Split samples by case into training and validation, fixed by the seed.
pub fn split_by_case(samples: Vec<Sample>, fraction: f64, seed: u64) -> (Vec<Sample>, Vec<Sample>) {
    let n_val =
        ((samples.len() as f64 * fraction).round() as usize).min(samples.len().saturating_sub(1));
    let mut order: Vec<usize> = (0..samples.len()).collect();
    let mut state = seed.wrapping_add(0x9E3779B97F4A7C15);
    order.sort_by_key(|i| {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(*i as u64);
        (state >> 11) ^ (*i as u64).wrapping_mul(0x9E3779B97F4A7C15)
    });
    let val_ids: Vec<usize> = order[..n_val].to_vec();
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for (i, s) in samples.into_iter().enumerate() {
        if val_ids.contains(&i) {
            val.push(s);
        } else {
            train.push(s);
        }
    }
    (train, val)
}

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
            let weights = std::path::Path::new(dir).join("model.bpk");
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
/// at the next step.
pub fn fit(
    config: &FitConfig,
    train: Vec<Sample>,
    val: &[Sample],
    device: &Device,
    out: &std::path::Path,
    events: &Sender<FitEvent>,
    control: &FitControl,
) -> Result<FitResult, super::training::CheckpointError> {
    let t = &config.training;
    let ad = device.clone().autodiff();
    ad.seed(t.seed);
    let mut model = initial_model(config, device)?;
    let mut optim = AdamWConfig::new()
        .with_weight_decay(config.weight_decay as f32)
        .init();
    let total = config.epochs * config.steps_per_epoch;
    // The loader thread draws patches ahead of the training thread.
    let (tx, rx) = sync_channel::<HostBatch>(4);
    let loader_stop = std::sync::Arc::new(AtomicBool::new(false));
    let loader = {
        let (patch, n, seed, augment) = (
            config.patch,
            config.batch_size,
            t.seed,
            config.augment.clone(),
        );
        let class_window = t.class_window;
        let class_every = match t.mode {
            TaskMode::SegmentationOnly => 0,
            TaskMode::ClassificationOnly => 1,
            TaskMode::Joint => config.class_every,
        };
        let halt = loader_stop.clone();
        std::thread::spawn(move || {
            let mut sampler = PatchSampler::new(seed, patch, augment);
            let c = train.first().map_or(1, |s| s.channels.len());
            for step in 1..=total {
                if halt.load(Ordering::Relaxed) || train.is_empty() {
                    return;
                }
                let class_step = class_every > 0 && step % class_every == 0;
                let size = if class_step { class_window } else { patch };
                let mut images = Vec::new();
                let mut masks = Vec::new();
                let mut classes = Vec::new();
                for _ in 0..n {
                    let s = &train[sampler.pick(train.len())];
                    let (ch, lab) = if class_step {
                        sampler.centre_crop(s, size)
                    } else {
                        sampler.patch(s)
                    };
                    ch.into_iter().for_each(|x| images.extend(x));
                    masks.extend(lab);
                    classes.push(s.class as i32);
                }
                let hb = HostBatch {
                    class_step,
                    images,
                    masks,
                    classes,
                    n,
                    c,
                    patch: size,
                };
                if tx.send(hb).is_err() {
                    return;
                }
            }
        })
    };
    let best_dir = out.join("best");
    let last_dir = out.join("last");
    let mut summaries = Vec::new();
    let mut best_score = f64::NEG_INFINITY;
    let mut since_best = 0;
    let mut stopped_early = false;
    let mut step = 0;
    'epochs: for epoch in 1..=config.epochs {
        let mut loss_sum = 0.0;
        let mut steps = 0;
        for _ in 0..config.steps_per_epoch {
            control.wait_while_paused();
            if control.is_cancelled() {
                stopped_early = true;
                save_checkpoint(&last_dir, t, &model)?;
                break 'epochs;
            }
            let Ok(hb) = rx.recv() else {
                stopped_early = true;
                break 'epochs;
            };
            let class_step = hb.class_step;
            let batch = hb.into_batch(&ad, config.changed_weight as f32);
            // With whole-head class steps, patch steps train the segmentation only.
            let mode = match (t.mode, class_step, config.class_every > 0) {
                (TaskMode::Joint, true, _) => TaskMode::ClassificationOnly,
                (TaskMode::Joint, false, true) => TaskMode::SegmentationOnly,
                (m, _, _) => m,
            };
            let step_config = TrainingConfig { mode, ..t.clone() };
            let lr = if config.cosine_schedule {
                cosine_lr(t.learning_rate, step + 1, total, total / 50, 0.02)
            } else {
                t.learning_rate
            };
            let (m, loss) = train_step_at(model, &mut optim, &batch, &step_config, lr);
            model = m;
            step += 1;
            steps += 1;
            loss_sum += loss.total;
            let _ = events.send(FitEvent::Train(super::training::TrainEvent::Step {
                step,
                loss,
            }));
        }
        let valid = model.valid();
        let validation = validate(&valid, val, t, device);
        let w_seg = if t.mode == TaskMode::ClassificationOnly {
            0.0
        } else {
            1.0
        };
        let w_cls = if t.mode == TaskMode::SegmentationOnly {
            0.0
        } else {
            1.0
        };
        let score = w_seg * validation.mean_dice()
            + w_cls * validation.class_auc.unwrap_or(validation.class_accuracy);
        let best = score > best_score;
        save_checkpoint(&last_dir, t, &model)?;
        if best {
            best_score = score;
            since_best = 0;
            save_checkpoint(&best_dir, t, &model)?;
            let _ = events.send(FitEvent::Train(super::training::TrainEvent::Checkpoint(
                best_dir.display().to_string(),
            )));
        } else {
            since_best += 1;
        }
        let summary = EpochSummary {
            epoch,
            train_loss: loss_sum / steps.max(1) as f64,
            validation,
            best,
        };
        let _ = events.send(FitEvent::Epoch(summary.clone()));
        summaries.push(summary);
        if config.patience > 0 && since_best >= config.patience {
            stopped_early = true;
            break;
        }
    }
    loader_stop.store(true, Ordering::Relaxed);
    drop(rx);
    let _ = loader.join();
    let _ = events.send(FitEvent::Train(super::training::TrainEvent::Finished {
        steps: step,
        cancelled: stopped_early,
    }));
    Ok(FitResult {
        epochs: summaries,
        best: best_dir,
        last: last_dir,
        stopped_early,
    })
}
