//! The segmentation losses: soft Dice over the foreground labels present in the batch, and voxel
//! cross-entropy (weighted per voxel when the batch has weights). [`soft_dice_loss`] and
//! [`voxel_cross_entropy`] compose them from burn's tensor operations on any backend; on burn's
//! CPU backend [`segmentation_losses`] computes both as one operation with its own backward
//! pass (on its GPU backend, [`super::loss_gpu`]'s kernels). Composed, they take some forty tensor operations (two softmaxes, a one-hot scatter,
//! permuted copies, reductions over non-contiguous axes and the backward of each), most of them
//! on one core: about a twentieth of a 32³ training step on a 2-core machine, while the other
//! core waited. Fused, the forward pass reads the logits once (the probabilities, kept for the
//! backward pass, and every sum the losses need, over voxel chunks in parallel) and the backward
//! pass writes the logits' gradient once.
//!
//! With p = softmax(z) over the K labels of voxel v, y the reference's one-hot and w the voxel
//! weights (1 without): for each label k, I_k = Σ_v p·y, P_k = Σ_v p, T_k = Σ_v y, dice_k =
//! (2·I_k + ε)/(P_k + T_k + ε); the Dice loss is 1 − the mean of dice_k over the foreground
//! labels with T_k > 0 (0 when there is none); the cross-entropy is Σ_v w·(−log p_y) / Σ_v w
//! (the mean over voxels without weights). Backward, with a_k = ∂L_dice/∂p_k = −(2·y_k −
//! dice_k) / (count · (P_k + T_k + ε)) for a present foreground label (0 otherwise):
//! ∂L/∂z_k = g_dice · p_k·(a_k − Σ_j p_j·a_j) + g_ce · w·(p_k − y_k) / Σ w.
//!
//! Invariants: equal to the composed losses and their gradients to float rounding
//! (`tests/model.rs`); sums in f64; only f32 logits on the CPU backend take the fused operation
//! (f32 logits of at most `loss_gpu::MAX_LABELS` labels the GPU's; [`segmentation_losses`]
//! checks); a label outside `0..K` is no structure (in no Dice term
//! and no cross-entropy term), where the composed losses would fail.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::flex::FlexTensor;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, Dispatch, Flex};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::prelude::*;
use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{DType, Int, TensorData};
use rayon::prelude::*;
use std::sync::Arc;

/// The smoothing term ε of the soft Dice.
const DICE_EPSILON: f64 = 1e-5;

/// The floor of the weights' sum that divides the weighted cross-entropy.
const MIN_WEIGHT_SUM: f64 = 1e-6;

/// Voxels per parallel chunk.
const CHUNK: usize = 4096;

/// Soft Dice loss over the foreground labels (1..K) present in the batch's reference:
/// 1 − their mean soft Dice (0 when none is present; the cross-entropy then penalises false
/// positives). Averaging only present labels keeps a rare structure that is absent from most
/// batches from pushing its predictions to zero everywhere.
/// `logits`: `[N, K, D, H, W]`; `masks`: `[N, D, H, W]`.
pub fn soft_dice_loss(logits: Tensor<5>, masks: Tensor<4, Int>) -> Tensor<1> {
    let [_, k, _, _, _] = logits.dims();
    let probs = softmax(logits, 1);
    let onehot: Tensor<5> = masks.one_hot::<5>(k).float().permute([0, 4, 1, 2, 3]);
    let inter = (probs.clone() * onehot.clone()).sum_dims(&[0, 2, 3, 4]);
    let truth = onehot.sum_dims(&[0, 2, 3, 4]);
    let denom = probs.sum_dims(&[0, 2, 3, 4]) + truth.clone();
    let dice = inter.mul_scalar(2.0).add_scalar(DICE_EPSILON) / denom.add_scalar(DICE_EPSILON);
    let present = truth.greater_elem(0.5).float();
    let fg = |t: Tensor<5>| t.slice([0..1, 1..k, 0..1, 0..1, 0..1]);
    let (dice, present) = (fg(dice), fg(present));
    let count = present.clone().sum().clamp_min(1.0);
    let mean = (dice * present.clone()).sum() / count;
    // 1 − mean Dice over present labels; 0 when no foreground label is present.
    present.max().mul(mean.neg().add_scalar(1.0))
}

/// Voxel-wise cross-entropy, weighted per voxel when `weights` is given (normalised by the
/// weights' sum). `logits`: `[N, K, D, H, W]`; `masks`, `weights`: `[N, D, H, W]`.
pub fn voxel_cross_entropy(
    logits: Tensor<5>,
    masks: Tensor<4, Int>,
    weights: Option<Tensor<4>>,
) -> Tensor<1> {
    let [n, k, d, h, w] = logits.dims();
    let device = logits.device();
    let Some(weights) = weights else {
        let flat = logits.permute([0, 2, 3, 4, 1]).reshape([n * d * h * w, k]);
        return CrossEntropyLossConfig::new()
            .init(&device)
            .forward(flat, masks.reshape([n * d * h * w]));
    };
    let onehot: Tensor<5> = masks.one_hot::<5>(k).float().permute([0, 4, 1, 2, 3]);
    let nll: Tensor<4> = (log_softmax(logits, 1) * onehot)
        .sum_dim(1)
        .squeeze_dim(1)
        .neg();
    let total = weights.clone().sum().clamp_min(MIN_WEIGHT_SUM);
    (nll * weights).sum() / total
}

/// `(soft Dice loss, voxel cross-entropy)` of `logits [N, K, D, H, W]` against `masks
/// [N, D, H, W]`, as [`soft_dice_loss`] and [`voxel_cross_entropy`]: one fused operation for
/// f32 logits on burn's CPU backend, the composed losses otherwise.
pub fn segmentation_losses(
    logits: Tensor<5>,
    masks: Tensor<4, Int>,
    weights: Option<Tensor<4>>,
) -> (Tensor<1>, Tensor<1>) {
    let [n, k, d, h, w] = logits.dims();
    let fits = logits.dtype() == DType::F32
        && masks.dims() == [n, d, h, w]
        && weights
            .as_ref()
            .is_none_or(|t| t.dims() == [n, d, h, w] && t.dtype() == DType::F32);
    let voxels = n * d * h * w;
    let gpu_fits = fits
        && (1..=super::loss_gpu::MAX_LABELS).contains(&k)
        && voxels > 0
        && super::loss_gpu::runs_for(voxels) <= u16::MAX as usize
        && super::conv_gpu::on_gpu(&logits.device());
    if gpu_fits {
        return gpu_losses(logits, masks, weights);
    }
    if !fits || logits.device().inner() != Device::flex() {
        let dice = soft_dice_loss(logits.clone(), masks.clone());
        return (dice, voxel_cross_entropy(logits, masks, weights));
    }
    let targets = Targets::of(masks, weights, logits.dims()[1]);
    fused_losses(logits, &LossInput::Targets(targets))
}

/// The losses as [`segmentation_losses`] on burn's GPU backend: [`super::loss_gpu`]'s kernels,
/// the labels as f32 values there.
fn gpu_losses(
    logits: Tensor<5>,
    masks: Tensor<4, Int>,
    weights: Option<Tensor<4>>,
) -> (Tensor<1>, Tensor<1>) {
    use super::loss_gpu::SegmentationLossGpuBackend;
    let labels = masks.float().cast(burn::tensor::FloatDType::F32);
    let weighted = weights.is_some();
    // Unweighted, the kernels read no weights: the labels stand in for them.
    let weights = weights.unwrap_or_else(|| labels.clone());
    let (both, _coefficients) =
        <Dispatch as SegmentationLossGpuBackend>::segmentation_losses_keeping(
            logits.into_dispatch(),
            labels.into_dispatch(),
            weights.into_dispatch(),
            weighted,
        );
    let both: Tensor<1> = Tensor::from_dispatch(both);
    (both.clone().narrow(0, 0, 1), both.narrow(0, 1, 1))
}

/// `(soft Dice loss, cross-entropy)` of a part of a batch whose f32 logits on burn's CPU
/// backend were already evaluated with the whole batch's coefficients: the whole batch's
/// losses, and backward the gradient of this part's logits (`PartLosses`).
pub fn evaluated_losses(logits: Tensor<5>, evaluation: Evaluation) -> (Tensor<1>, Tensor<1>) {
    fused_losses(logits, &LossInput::Evaluated(Arc::new(evaluation)))
}

/// The fused operation's two losses.
fn fused_losses(logits: Tensor<5>, input: &LossInput) -> (Tensor<1>, Tensor<1>) {
    let both: Tensor<1> = Tensor::from_dispatch(
        <Dispatch as SegmentationLossBackend>::segmentation_losses(logits.into_dispatch(), input),
    );
    (both.clone().narrow(0, 0, 1), both.narrow(0, 1, 1))
}

/// What the losses compare the logits with, per voxel in `[N, D, H, W]` order.
#[derive(Clone, Debug)]
pub struct Targets {
    /// The reference label, [`NO_LABEL`] for a value outside `0..K`.
    labels: Arc<Vec<u32>>,
    /// The cross-entropy's weights (all 1 when `None`).
    weights: Option<Arc<Vec<f32>>>,
}

/// A reference value outside the logits' labels.
const NO_LABEL: u32 = u32::MAX;

impl Targets {
    /// The masks' labels (of `labels` logits) and the weights, read to the host.
    pub fn of(masks: Tensor<4, Int>, weights: Option<Tensor<4>>, labels: usize) -> Self {
        let label = |v: i64| match usize::try_from(v) {
            Ok(l) if l < labels => l as u32,
            _ => NO_LABEL,
        };
        let data = masks.into_data();
        let weights = weights.map(|t| Arc::new(t.into_data().iter::<f32>().collect()));
        Self {
            labels: Arc::new(data.iter::<i64>().map(label).collect()),
            weights,
        }
    }

    /// Voxel i's weight.
    fn weight(&self, i: usize) -> f32 {
        self.weights.as_ref().map_or(1.0, |w| w[i])
    }
}

/// What the fused operation evaluates the logits with: the reference (the losses of these
/// logits alone), or an evaluation prepared from them beforehand (a part of a batch whose
/// coefficients come from the whole batch's sums: [`PartLosses`]).
#[derive(Clone, Debug)]
pub enum LossInput {
    /// Evaluate the logits against these targets.
    Targets(Targets),
    /// Already evaluated.
    Evaluated(Arc<Evaluation>),
}

impl LossInput {
    fn evaluate(&self, logits: &FlexTensor) -> Arc<Evaluation> {
        match self {
            Self::Targets(targets) => Arc::new(Evaluation::of(logits, targets)),
            Self::Evaluated(evaluation) => evaluation.clone(),
        }
    }
}

/// Backends with the fused segmentation losses.
#[backend_extension(Flex, Autodiff)]
pub trait SegmentationLossBackend: Backend {
    /// `[soft Dice loss, cross-entropy]` of `logits [N, K, D, H, W]` against `input`.
    fn segmentation_losses(logits: FloatTensor<Self>, input: &LossInput) -> FloatTensor<Self>;
}

impl SegmentationLossBackend for Flex {
    fn segmentation_losses(logits: FlexTensor, input: &LossInput) -> FlexTensor {
        input.evaluate(&logits).losses()
    }
}

/// The sums of one chunk of voxels (and, reduced, of all): per label I, P and T, then
/// Σ w·(−log p_y) and Σ w.
type Sums = Vec<f64>;

/// The fused forward pass over the items of (a part of) a batch: the probabilities, kept for
/// the backward pass, and the part's sums.
#[derive(Debug)]
pub struct PartLosses {
    /// `[N, K, V]` of the logits.
    shape: [usize; 3],
    /// The logits' full shape (the gradient's).
    dims: Vec<usize>,
    /// softmax(z), voxel-major: voxel i's label k at `i·K + k`.
    probs: Vec<f32>,
    targets: Targets,
    /// The part's [`Sums`].
    sums: Sums,
}

impl PartLosses {
    /// Softmax and sums of the f32 logits `z` (contiguous, shape `dims`: `[N, K, …]`).
    pub fn of(z: &[f32], dims: Vec<usize>, targets: Targets) -> Self {
        let (n, k) = (dims[0], dims[1]);
        let v = dims[2..].iter().product::<usize>();
        let mut probs = vec![0.0f32; n * v * k];
        let chunk_sums: Vec<Sums> = probs
            .par_chunks_mut((v * k).max(1))
            .enumerate()
            .flat_map(|(item, probs)| {
                let z = &z[item * k * v..];
                let first = item * v;
                let targets = &targets;
                probs
                    .par_chunks_mut((CHUNK * k).max(1))
                    .enumerate()
                    .map(move |(c, p)| chunk_softmax((z, [k, v]), (first, c * CHUNK), p, targets))
            })
            .collect();
        let mut sums = vec![0.0f64; 3 * k + 2];
        chunk_sums.iter().for_each(|s| add_sums(&mut sums, s));
        Self {
            shape: [n, k, v],
            dims,
            probs,
            targets,
            sums,
        }
    }

    /// This part evaluated with `coefficients` (its own, or the whole batch's).
    pub fn evaluated(self, coefficients: LossCoefficients) -> Evaluation {
        Evaluation {
            part: self,
            coefficients,
        }
    }
}

/// The losses of a batch and what its logits' gradient multiplies by, from the batch's sums.
#[derive(Debug, Clone)]
pub struct LossCoefficients {
    /// Per label: dice_k.
    dice: Vec<f64>,
    /// Per label: ∂L_dice/∂p_k = `dice_scale[k]·(2·y_k − dice_k)`.
    dice_scale: Vec<f64>,
    /// The Dice loss and the cross-entropy.
    values: [f64; 2],
    /// 1 / Σ w (1 / voxels without weights).
    ce_scale: f64,
}

/// `s` added into `total` (sums of one shape: [`Sums`]).
fn add_sums(total: &mut [f64], s: &[f64]) {
    total.iter_mut().zip(s).for_each(|(t, s)| *t += s);
}

impl LossCoefficients {
    /// The coefficients of the batch the `parts` make up (at least one; all of one batch's
    /// labels, weighted alike): from their sums added, over all their voxels.
    pub fn of_parts<'a>(parts: impl IntoIterator<Item = &'a PartLosses>) -> Self {
        let (mut sums, mut voxels, mut labels, mut weighted) = (Vec::new(), 0, 0, false);
        for part in parts {
            sums.resize(part.sums.len(), 0.0);
            add_sums(&mut sums, &part.sums);
            voxels += part.shape[0] * part.shape[2];
            labels = part.shape[1];
            weighted = part.targets.weights.is_some();
        }
        Self::of(&sums, labels, voxels, weighted)
    }

    /// From the batch's `sums` over `labels` labels and `voxels` voxels, the cross-entropy
    /// `weighted` per voxel or not.
    fn of(sums: &[f64], labels: usize, voxels: usize, weighted: bool) -> Self {
        let k = labels;
        let (inter, rest) = sums.split_at(k);
        let (psum, rest) = rest.split_at(k);
        let (truth, ce) = rest.split_at(k);
        let den: Vec<f64> = (0..k).map(|l| psum[l] + truth[l] + DICE_EPSILON).collect();
        let dice: Vec<f64> = (0..k)
            .map(|l| (2.0 * inter[l] + DICE_EPSILON) / den[l])
            .collect();
        let present: Vec<bool> = (0..k).map(|l| l > 0 && truth[l] > 0.5).collect();
        let count = present.iter().filter(|&&p| p).count();
        let mean =
            (0..k).filter(|&l| present[l]).map(|l| dice[l]).sum::<f64>() / count.max(1) as f64;
        let dice_loss = if count > 0 { 1.0 - mean } else { 0.0 };
        let dice_scale = (0..k)
            .map(|l| match present[l] {
                true => -1.0 / (count as f64 * den[l]),
                false => 0.0,
            })
            .collect();
        let weight_sum = match weighted {
            true => ce[1].max(MIN_WEIGHT_SUM),
            false => voxels.max(1) as f64,
        };
        Self {
            dice,
            dice_scale,
            values: [dice_loss, ce[0] / weight_sum],
            ce_scale: 1.0 / weight_sum,
        }
    }
}

/// A part's probabilities with the coefficients of the batch it belongs to: the losses and,
/// backward, the part's logits' gradient.
#[derive(Debug)]
pub struct Evaluation {
    part: PartLosses,
    coefficients: LossCoefficients,
}

impl Evaluation {
    /// The losses of `logits` (a whole batch) against `targets`.
    fn of(logits: &FlexTensor, targets: &Targets) -> Self {
        let dims: Vec<usize> = logits.layout().shape().to_vec();
        let logits = logits.to_contiguous();
        let part = PartLosses::of(logits.storage::<f32>(), dims, targets.clone());
        let coefficients = LossCoefficients::of_parts([&part]);
        part.evaluated(coefficients)
    }

    /// `[Dice loss, cross-entropy]`.
    fn losses(&self) -> FlexTensor {
        let values = self.coefficients.values.map(|v| v as f32).to_vec();
        FlexTensor::from_data(TensorData::new(values, [2]))
    }

    /// ∂L/∂z `[N, K, …]` for the losses' gradients `g = [g_dice, g_ce]`: in parallel over
    /// chunks of each item's voxels, each writing its run of every label's plane.
    fn logits_grad(&self, g: [f64; 2]) -> FlexTensor {
        let [n, k, v] = self.part.shape;
        let c = &self.coefficients;
        let terms = GradTerms {
            dice_scale: c.dice_scale.iter().map(|s| (g[0] * s) as f32).collect(),
            dice: c.dice.iter().map(|&d| d as f32).collect(),
            ce: (g[1] * c.ce_scale) as f32,
        };
        let mut out = vec![0.0f32; n * k * v];
        let mut planes: Vec<_> = out
            .chunks_mut(v.max(1))
            .map(|p| p.chunks_mut(CHUNK))
            .collect();
        let chunks = v.div_ceil(CHUNK);
        let mut groups = Vec::with_capacity(n * chunks);
        for item in 0..n {
            for c in 0..chunks {
                let runs: Vec<&mut [f32]> = planes[item * k..(item + 1) * k]
                    .iter_mut()
                    .filter_map(Iterator::next)
                    .collect();
                groups.push((item * v + c * CHUNK, runs));
            }
        }
        groups
            .into_par_iter()
            .for_each(|(first, mut runs)| self.part.chunk_grad(&terms, first, &mut runs));
        FlexTensor::from_data(TensorData::new(out, self.part.dims.clone()))
    }
}

impl PartLosses {
    /// The gradient of the voxels from `first` (index in the part), label k's over `runs[k]`.
    fn chunk_grad(&self, terms: &GradTerms, first: usize, runs: &mut [&mut [f32]]) {
        let k = self.shape[1];
        let len = runs.first().map_or(0, |r| r.len());
        let mut a = vec![0.0f32; k];
        for j in 0..len {
            let i = first + j;
            let p = &self.probs[i * k..(i + 1) * k];
            let y = self.targets.labels[i] as usize;
            let mut s = 0.0f32;
            for l in 0..k {
                let truth = if l == y { 2.0 } else { 0.0 };
                a[l] = terms.dice_scale[l] * (truth - terms.dice[l]);
                s += p[l] * a[l];
            }
            let ce = match y < k {
                true => terms.ce * self.targets.weight(i),
                false => 0.0,
            };
            for (l, run) in runs.iter_mut().enumerate() {
                let one = if l == y { 1.0 } else { 0.0 };
                run[j] = p[l] * (a[l] - s) + ce * (p[l] - one);
            }
        }
    }
}

/// What the backward pass multiplies by, in f32: g_dice·∂L_dice/∂dice scale and dice per
/// label, and g_ce / Σ w.
struct GradTerms {
    dice_scale: Vec<f32>,
    dice: Vec<f32>,
    ce: f32,
}

/// softmax of one item's voxels from `at` (as many as `probs` holds; `z`: the item's logits
/// `[K, V]`) into `probs`, and their sums ([`Sums`]); `first`: the item's first voxel overall.
fn chunk_softmax(
    (z, [k, v]): (&[f32], [usize; 2]),
    (first, at): (usize, usize),
    probs: &mut [f32],
    targets: &Targets,
) -> Sums {
    let mut sums = vec![0.0f64; 3 * k + 2];
    let mut e = vec![0.0f32; k];
    for (j, p) in probs.chunks_mut(k.max(1)).enumerate() {
        let (voxel, i) = (at + j, first + at + j);
        let logit = |l: usize| z[l * v + voxel];
        let max = (0..k).map(logit).fold(f32::NEG_INFINITY, f32::max);
        (0..k).for_each(|l| e[l] = (logit(l) - max).exp());
        let total: f32 = e.iter().sum();
        let y = targets.labels[i] as usize;
        for l in 0..k {
            p[l] = e[l] / total;
            sums[k + l] += f64::from(p[l]);
        }
        let w = targets.weight(i);
        sums[3 * k + 1] += f64::from(w);
        if y < k {
            sums[y] += f64::from(p[y]);
            sums[2 * k + y] += 1.0;
            let log_p = logit(y) - max - total.ln();
            sums[3 * k] += f64::from(w) * -f64::from(log_p);
        }
    }
    sums
}

/// The backward pass of the fused losses under autodiff.
#[derive(Debug)]
struct SegmentationLossBackward;

impl Backward<Flex, 1> for SegmentationLossBackward {
    type State = Arc<Evaluation>;

    fn backward(self, ops: Ops<Self::State, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node] = ops.parents;
        let grad = grads.consume::<Flex>(&ops.node).to_contiguous();
        let g = grad.storage::<f32>();
        let g = [0, 1].map(|i| g.get(i).map_or(0.0, |&v| f64::from(v)));
        if let Some(node) = node {
            grads.register::<Flex>(node.id, ops.state.logits_grad(g));
        }
    }
}

impl<C: CheckpointStrategy> SegmentationLossBackend for Autodiff<Flex, C> {
    fn segmentation_losses(logits: FloatTensor<Self>, input: &LossInput) -> FloatTensor<Self> {
        let prepared = SegmentationLossBackward
            .prepare::<C>([logits.node()])
            .compute_bound()
            .stateful();
        let evaluation = input.evaluate(&logits.into_primitive());
        let losses = evaluation.losses();
        match prepared {
            OpsKind::Tracked(prep) => prep.finish(evaluation, losses),
            OpsKind::UnTracked(prep) => prep.finish(losses),
        }
    }
}
