//! One training step on the CPU with the batch's items split across the cores, each part a
//! whole forward and backward pass on a rayon pool of its own. A 32³ step of the small network
//! is some three hundred operations, most too small to share two cores well: split inside each
//! operation, a step kept both cores busy only ~60 % of the time (`bench train`, 2 cores: 14.6
//! steps/s with two threads against 9.9 with one), the rest spent waking the other core,
//! waiting for it, or running burn's serial bookkeeping. Split by item, each core runs its own
//! operations with nothing to wait for.
//!
//! The split is exact, not the "nearly" of data-parallel parts: the soft Dice pools its sums
//! over the whole batch, so each part's forward pass stops at its logits and their sums
//! (`loss::PartLosses`); the step adds the parts' sums, and each part's backward pass starts from
//! the gradient of the whole batch's losses with respect to its own logits
//! (`loss::evaluated_losses`); the class cross-entropy, a mean over the batch's items, is
//! weighted by the part's share of them. The parts' parameter gradients sum (burn's
//! `MultiGradientsParams`) to the unsplit batch's gradient.
//!
//! The training thread hands each phase (forward, then backward) to the parts' pools and waits
//! on a channel: waiting as a rayon worker spins with `sched_yield` and took the cores from the
//! parts. The parts' dropout masks are drawn concurrently, so with dropout their order (not
//! their distribution) varies from run to run.
//!
//! Invariants: used only where it is exact and pays ([`split_of`]: burn's CPU backend, f32, a
//! task with segmentation, no loss scale, at least two items and two threads); the parts run at
//! once, each on a pool of `threads / parts` threads that the calling thread keeps between
//! steps; loss terms and parameter gradients equal the unsplit step's to float rounding (the
//! test below).

use super::class_loss_gpu::class_cross_entropy;
use super::loss::{evaluated_losses, LossCoefficients, PartLosses, Targets};
use super::training::{task_loss, Batch, LossTerms, TaskMode, TrainingConfig};
use super::{MultiTaskUNet, Precision};
use burn::optim::{GradientsParams, ModuleOptimizer, MultiGradientsParams};
use burn::prelude::*;
use burn::tensor::Int;
use rayon::{ThreadPool, ThreadPoolBuilder};
use std::borrow::Cow;
use std::cell::RefCell;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

/// How a batch splits: one pool per part, of as many threads each.
pub(crate) struct Split {
    pools: Vec<Arc<ThreadPool>>,
}

impl Split {
    /// `(parts, threads of each part)`.
    #[cfg(test)]
    fn shape(&self) -> (usize, usize) {
        let threads = self.pools.first().map_or(0, |p| p.current_num_threads());
        (self.pools.len(), threads)
    }
}

/// How `batch` splits on this thread's pool (`threads / parts` threads for each of
/// `min(items, threads)` parts), or `None` where splitting is not exact or does not pay, or its
/// pools cannot be made (then the unsplit step runs).
pub(crate) fn split_of(batch: &Batch, config: &TrainingConfig) -> Option<Split> {
    let items = batch.images.dims()[0];
    let threads = rayon::current_num_threads();
    let parts = items.min(threads);
    let fits = parts >= 2
        && config.precision == Precision::F32
        && config.mode != TaskMode::ClassificationOnly
        && batch.images.device().inner() == Device::flex();
    if !fits {
        return None;
    }
    part_pools(parts, threads / parts).map(|pools| Split { pools })
}

/// One optimisation step at `lr` on `batch` split as `split` says ([`split_of`]).
pub(crate) fn split_step(
    model: MultiTaskUNet,
    optim: &mut ModuleOptimizer,
    (batch, config, lr): (&Batch, &TrainingConfig, f64),
    split: Split,
) -> (MultiTaskUNet, LossTerms) {
    let Split { pools } = split;
    let parts = pools.len();
    let device = batch.images.device();
    let items = batch.images.dims()[0];
    let inputs: Vec<_> = split_batch(batch, parts)
        .into_iter()
        .map(|part| (model.clone().fork(&device), part))
        .collect();
    let forwards = on_pools(&pools, inputs, |(replica, part)| {
        PartForward::of(replica, part)
    });
    let coefficients = LossCoefficients::of_parts(forwards.iter().map(|f| &f.losses));
    let task = (config.mode, config.class_weight);
    let outputs = on_pools(&pools, forwards, move |forward: PartForward| {
        forward.gradients(&coefficients, items, task)
    });
    let mut grads = MultiGradientsParams::default();
    let mut terms = LossTerms::zero(config.mode);
    for (part_grads, [dice, seg_ce, class_ce]) in outputs {
        grads.grads.push((part_grads, device.clone()));
        (terms.dice, terms.seg_ce) = (dice, seg_ce);
        terms.class_ce += class_ce;
    }
    terms.total = terms.dice + terms.seg_ce;
    if config.mode == TaskMode::Joint {
        terms.total += config.class_weight * terms.class_ce;
    }
    (optim.step_multi(lr, model, grads), terms)
}

/// `batch` in `parts` runs of consecutive items, as even as the items allow.
fn split_batch(batch: &Batch, parts: usize) -> Vec<Batch> {
    let items = batch.images.dims()[0];
    let mut first = 0;
    (0..parts)
        .map(|p| {
            let n = items / parts + usize::from(p < items % parts);
            let part = Batch {
                images: batch.images.clone().narrow(0, first, n),
                masks: batch.masks.clone().narrow(0, first, n),
                classes: batch.classes.clone().narrow(0, first, n),
                weights: batch.weights.clone().map(|w| w.narrow(0, first, n)),
            };
            first += n;
            part
        })
        .collect()
}

/// A part's forward pass, kept for its backward pass.
struct PartForward {
    /// The part's fork of the model (its parameters are the part graph's leaves).
    replica: MultiTaskUNet,
    /// Segmentation logits `[n, K, D, H, W]` (f32) and class logits `[n, C]`.
    seg: Tensor<5>,
    cls: Tensor<2>,
    classes: Tensor<1, Int>,
    /// The softmax of `seg` and its sums.
    losses: PartLosses,
}

impl PartForward {
    fn of(replica: MultiTaskUNet, part: Batch) -> Self {
        let (seg, cls) = replica.forward(part.images);
        let dims = seg.dims().to_vec();
        let targets = Targets::of(part.masks, part.weights, dims[1]);
        let data = seg.clone().into_data();
        let logits = match data.as_slice::<f32>() {
            Ok(z) => Cow::Borrowed(z),
            Err(_) => Cow::Owned(data.iter::<f32>().collect()),
        };
        let losses = PartLosses::of(&logits, dims, targets);
        Self {
            replica,
            seg,
            cls,
            classes: part.classes,
            losses,
        }
    }

    /// The part's parameter gradients of the whole batch's loss (of `items` items) and its
    /// `[Dice loss, cross-entropy, share-weighted class cross-entropy]`: the first two are the
    /// whole batch's.
    fn gradients(
        self,
        coefficients: &LossCoefficients,
        items: usize,
        task: (TaskMode, f64),
    ) -> (GradientsParams, [f64; 3]) {
        let share = self.cls.dims()[0] as f64 / items.max(1) as f64;
        let evaluation = self.losses.evaluated(coefficients.clone());
        let (dice, seg_ce) = evaluated_losses(self.seg, evaluation);
        let class_ce = class_cross_entropy(self.cls, self.classes).mul_scalar(share);
        let value = |t: &Tensor<1>| f64::from(t.clone().into_scalar::<f32>());
        let values = [value(&dice), value(&seg_ce), value(&class_ce)];
        let loss = task_loss(task, dice, seg_ce, class_ce);
        let grads = GradientsParams::from_grads(loss.backward(), &self.replica);
        (grads, values)
    }
}

thread_local! {
    /// The calling thread's part pools, kept from step to step (a training loop's thread).
    static PART_POOLS: RefCell<Vec<Arc<ThreadPool>>> = const { RefCell::new(Vec::new()) };
}

/// `parts` pools of `threads` threads each, this thread's own; `None` if they cannot be made.
fn part_pools(parts: usize, threads: usize) -> Option<Vec<Arc<ThreadPool>>> {
    PART_POOLS.with_borrow_mut(|pools| {
        let fits = pools.len() == parts && pools.iter().all(|p| p.current_num_threads() == threads);
        if !fits {
            let built: Result<Vec<_>, _> = (0..parts)
                .map(|part| {
                    ThreadPoolBuilder::new()
                        .num_threads(threads)
                        .thread_name(move |i| format!("mriloop-part-{part}-{i}"))
                        .build()
                        .map(Arc::new)
                })
                .collect();
            *pools = built.ok()?;
        }
        Some(pools.clone())
    })
}

/// `job` of each input, the i-th on `pools[i]`, all at once; the outputs in the inputs' order.
/// The caller blocks on a channel while they run (waiting as a rayon worker would spin, taking
/// the cores from the parts). A panic in a job reaches the caller once every job has ended.
fn on_pools<I, O, F>(pools: &[Arc<ThreadPool>], inputs: Vec<I>, job: F) -> Vec<O>
where
    I: Send + 'static,
    O: Send + 'static,
    F: Fn(I) -> O + Send + Sync + 'static,
{
    let job = Arc::new(job);
    let (sender, receiver) = std::sync::mpsc::channel();
    let parts = inputs.len();
    for (index, (pool, input)) in pools.iter().zip(inputs).enumerate() {
        let (job, sender) = (job.clone(), sender.clone());
        pool.spawn(move || {
            let output = std::panic::catch_unwind(AssertUnwindSafe(|| job(input)));
            // The receiver outlives every job: it waits for all of them below.
            let _ = sender.send((index, output));
        });
    }
    drop(sender);
    let mut slots: Vec<Option<O>> = (0..parts).map(|_| None).collect();
    let mut panic = None;
    for (index, output) in receiver.iter().take(parts) {
        match output {
            Ok(output) => slots[index] = Some(output),
            Err(payload) => panic = Some(payload),
        }
    }
    if let Some(payload) = panic {
        std::panic::resume_unwind(payload);
    }
    slots.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{train_step, MultiTaskUNetConfig};
    use burn::module::{Module, ModuleVisitor, Param};
    use burn::optim::SgdConfig;
    use burn::tensor::Distribution;

    /// `items` random 12³ patches of one sequence, 3 labels and 2 classes, with per-voxel
    /// weights of 0.5–2 when `weighted`.
    fn batch(items: usize, weighted: bool, device: &Device) -> Batch {
        let shape = [items, 12, 12, 12];
        let normal = Distribution::Normal(0.0, 1.0);
        Batch {
            images: Tensor::random([items, 1, 12, 12, 12], normal, device),
            masks: Tensor::<4, Int>::random(shape, Distribution::Uniform(0.0, 3.0), device),
            classes: Tensor::<1, Int>::random([items], Distribution::Uniform(0.0, 2.0), device),
            weights: weighted
                .then(|| Tensor::random(shape, Distribution::Uniform(0.5, 2.0), device)),
        }
    }

    /// Every parameter's values, in the model's order.
    fn parameters(model: &MultiTaskUNet) -> Vec<Vec<f32>> {
        struct Collect(Vec<Vec<f32>>);
        impl ModuleVisitor for Collect {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
                self.0.push(param.val().into_data().iter::<f32>().collect());
            }
        }
        let mut collect = Collect(Vec::new());
        model.visit(&mut collect);
        collect.0
    }

    /// One SGD step (lr 1: the weights move by minus the gradient) of `model` on `batch` on a
    /// pool of `threads` threads: the gradient of each parameter, the loss terms and the
    /// split the step took.
    fn gradient_on(
        threads: usize,
        model: &MultiTaskUNet,
        batch: &Batch,
        config: &TrainingConfig,
    ) -> (Vec<Vec<f32>>, LossTerms, Option<(usize, usize)>) {
        let pool = ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .expect("pool");
        let (stepped, terms, split) = pool.install(|| {
            let split = split_of(batch, config).map(|s| s.shape());
            let mut optim = SgdConfig::new().init();
            let (stepped, terms) =
                train_step(model.clone(), (&mut optim, &mut None), batch, config);
            (stepped, terms, split)
        });
        let moved = parameters(model)
            .iter()
            .zip(parameters(&stepped))
            .map(|(before, after)| before.iter().zip(&after).map(|(b, a)| b - a).collect())
            .collect();
        (moved, terms, split)
    }

    #[test]
    fn a_batch_split_across_cores_has_the_unsplit_losses_and_gradients() {
        let device = Device::flex().autodiff();
        let net = MultiTaskUNetConfig::new(1, 3, 2)
            .with_base_channels(4)
            .with_depth(2)
            .with_dropout(0.0);
        let joint = TrainingConfig::new(net).with_learning_rate(1.0);
        let seg_only = joint.clone().with_mode(TaskMode::SegmentationOnly);
        // Two parts of one item; uneven parts (2 + 1) with weights; three parts.
        let cases = [
            (2, false, &joint, 2, (2, 1)),
            (3, true, &joint, 2, (2, 1)),
            (3, true, &seg_only, 3, (3, 1)),
            (4, false, &joint, 8, (4, 2)),
        ];
        for (items, weighted, config, threads, parts) in cases {
            let model = config.model.init(&device);
            let b = batch(items, weighted, &device);
            let (whole, t_whole, unsplit) = gradient_on(1, &model, &b, config);
            let (split, t_split, taken) = gradient_on(threads, &model, &b, config);
            let case = format!("{items} items, weighted {weighted}, {:?}", config.mode);
            assert_eq!((unsplit, taken), (None, Some(parts)), "{case}");
            for (a, b) in [
                (t_whole.dice, t_split.dice),
                (t_whole.seg_ce, t_split.seg_ce),
                (t_whole.class_ce, t_split.class_ce),
                (t_whole.total, t_split.total),
            ] {
                assert!(
                    (a - b).abs() <= 1e-5 * a.abs().max(1e-3),
                    "{case}: {t_whole:?} {t_split:?}"
                );
            }
            let largest = whole.iter().flatten().fold(0f32, |m, g| m.max(g.abs()));
            assert!(largest > 1e-3, "{case}: the step moved nothing");
            for (i, (a, b)) in whole.iter().zip(&split).enumerate() {
                let size = a
                    .iter()
                    .fold(0f32, |m, g| m.max(g.abs()))
                    .max(1e-3 * largest);
                let gap = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
                assert!(gap <= 1e-4 * size, "{case}: parameter {i}: {gap} of {size}");
            }
        }
    }
}
