//! The segmentation losses (soft Dice and voxel cross-entropy, [`super::loss`]'s formulas) on
//! burn's GPU backend (wgpu) as three kernels of our own, where the composed losses take some
//! eighty launches a training step (two softmaxes, a one-hot scatter, permuted copies, a dozen
//! reductions, and the backward of each) and a small network's GPU step is bound by its
//! launches.
//!
//! Forward, [`loss_partials`] gives each workgroup a run of voxels (over all items): per voxel
//! the softmax over the K labels, summed per label into I_k = Σ p·y, P_k = Σ p, T_k = Σ y, then
//! Σ w·(−log p_y) and Σ w, each thread into its own slots of shared memory, then a tree over the
//! workgroup; [`loss_coefficients`] (one workgroup) adds the runs' sums and writes the losses
//! and what the backward pass multiplies by (dice_k, the Dice scale per label, 1/Σ w).
//! Backward, [`loss_gradient`] writes ∂L/∂z per voxel, recomputing the softmax from the logits.
//!
//! Invariants: equal to the composed losses and their gradients to float rounding
//! (`tests/model.rs`, on lavapipe); f32 logits `[N, K, …]`; the labels as f32 values (a value
//! outside `0..K` is no structure, as on the CPU); sums in f32 (per thread, then trees); K at
//! most [`MAX_LABELS`] (each thread's sums live in shared memory, 16 KiB in WebGPU);
//! [`super::loss::segmentation_losses`] routes nothing else here.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::fusion::custom::TensorSpec;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, AutodiffBackend, Backend, TensorMetadata};
use burn::tensor::Shape;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeBackend;
use cubecl::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::norm_gpu::empty_like;

/// Threads per workgroup of [`loss_partials`] and [`loss_coefficients`]; a power of two.
const WORKGROUP: usize = 64;
/// Levels of [`loss_partials`]' tree: log2 of [`WORKGROUP`].
const TREE_LEVELS: usize = WORKGROUP.trailing_zeros() as usize;
const _: () = assert!(WORKGROUP.is_power_of_two(), "the tree needs a power of two");
/// Voxels per workgroup of [`loss_partials`].
const RUN: usize = WORKGROUP * 32;
/// The most labels the kernels take: a thread's `3·K + 2` sums, for [`WORKGROUP`] threads, in
/// WebGPU's 16 KiB of workgroup memory.
pub const MAX_LABELS: usize = (16384 / (4 * WORKGROUP) - 2) / 3;
/// The smoothing term ε of the soft Dice (as [`super::loss`]'s).
const DICE_EPSILON: f32 = 1e-5;
/// The floor of the weights' sum that divides the weighted cross-entropy.
const MIN_WEIGHT_SUM: f32 = 1e-6;

/// Launches of this module's kernels in this process (what tests read to know the GPU's losses
/// took this route).
static LAUNCHES: AtomicUsize = AtomicUsize::new(0);

/// How many times this module's kernels have run in this process.
pub fn kernel_launches() -> usize {
    LAUNCHES.load(Ordering::Relaxed)
}

/// Backends with the fused segmentation losses that keep what their backward pass needs (burn's
/// GPU backend).
#[backend_extension(Cube, Fusion, Autodiff)]
pub trait SegmentationLossGpuBackend: Backend {
    /// `[Dice loss, cross-entropy]` of `logits [N, K, …]` against `labels [N, …]` (f32 label
    /// values), the cross-entropy weighted by `weights [N, …]` when `weighted` (else `weights`
    /// is not read); also the coefficients of the backward pass, `[2·K + 1]`.
    #[fusion(meta = forward_specs)]
    fn segmentation_losses_keeping(
        logits: FloatTensor<Self>,
        labels: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        weighted: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// ∂L/∂logits for the losses' gradient `grad [2]`, given what
    /// [`SegmentationLossGpuBackend::segmentation_losses_keeping`] took and kept.
    #[fusion(meta = backward_specs)]
    fn segmentation_losses_grad(
        logits: FloatTensor<Self>,
        labels: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        coefficients: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        weighted: bool,
    ) -> FloatTensor<Self>;
}

/// The losses' and the coefficients' sizes and types, for burn's fusion.
fn forward_specs(
    logits: &TensorSpec,
    _labels: &TensorSpec,
    _weights: &TensorSpec,
    _weighted: &bool,
) -> (TensorSpec, TensorSpec) {
    let k = logits.shape.iter().nth(1).copied().unwrap_or(1);
    (
        TensorSpec::new(Shape::new([2]), logits.dtype),
        TensorSpec::new(Shape::new([2 * k + 1]), logits.dtype),
    )
}

/// The logits' gradient's size and type, for burn's fusion.
fn backward_specs(
    logits: &TensorSpec,
    _labels: &TensorSpec,
    _weights: &TensorSpec,
    _coefficients: &TensorSpec,
    _grad: &TensorSpec,
    _weighted: &bool,
) -> TensorSpec {
    logits.clone()
}

/// Voxel `base`'s (its label-0 logit's index; `plane`: the stride between labels) softmax
/// maximum and normaliser: `(max_l z_l, Σ_l exp(z_l − max))`.
#[cube]
fn softmax_of(z: &[f32], base: usize, plane: usize, #[comptime] labels: usize) -> (f32, f32) {
    let mut max = z[base];
    #[unroll]
    for l in 1..labels {
        let v = z[base + l * plane];
        if v > max {
            max = v;
        }
    }
    let mut sum = 0.0f32;
    #[unroll]
    for l in 0..labels {
        sum += f32::exp(z[base + l * plane] - max);
    }
    (max, sum)
}

/// The label a stored label value names, `labels` (none) outside `0..labels`.
#[cube]
fn label_of(value: f32, #[comptime] labels: usize) -> usize {
    let mut y = labels.runtime();
    if value >= 0.0 && value < f32::cast_from(labels) {
        y = usize::cast_from(value);
    }
    y
}

/// Voxel `m`'s (of `N·V`, items of `voxels` each) label-0 logit in `[N, K, V]`.
#[cube]
fn logit_base(m: usize, voxels: usize, #[comptime] labels: usize) -> usize {
    let item = m / voxels;
    item * labels * voxels + (m - item * voxels)
}

/// Forward, first pass: workgroup `CUBE_POS` sums its run of [`RUN`] voxels (of `total`, items
/// of `voxels`) into `partials[CUBE_POS, 0..3·K + 2]`: I_k, P_k, T_k, Σ w·(−log p_y), Σ w.
#[cube(launch_unchecked)]
fn loss_partials(
    z: &[f32],
    label_values: &[f32],
    weights: &[f32],
    partials: &mut [f32],
    voxels: usize,
    total: usize,
    weighted: u32,
    #[comptime] labels: usize,
) {
    let unit = UNIT_POS as usize;
    let columns = comptime!(3 * labels + 2);
    let mut shared = Shared::<[f32]>::new_slice(comptime!(columns * WORKGROUP));
    #[unroll]
    for c in 0..columns {
        shared[c * WORKGROUP + unit] = 0.0;
    }
    let start = CUBE_POS * RUN;
    let mut end = start + RUN;
    if end > total {
        end = total;
    }
    for m in range_stepped(start + unit, end, WORKGROUP) {
        let base = logit_base(m, voxels, labels);
        let (max, sum) = softmax_of(z, base, voxels, labels);
        let y = label_of(label_values[m], labels);
        let mut w = 1.0f32.runtime();
        if weighted == 1 {
            w = weights[m];
        }
        #[unroll]
        for l in 0..labels {
            let p = f32::exp(z[base + l * voxels] - max) / sum;
            shared[(labels + l) * WORKGROUP + unit] += p;
            if y == l {
                shared[l * WORKGROUP + unit] += p;
                shared[(2 * labels + l) * WORKGROUP + unit] += 1.0;
                let nll = max + f32::ln(sum) - z[base + l * voxels];
                shared[3 * labels * WORKGROUP + unit] += w * nll;
            }
        }
        shared[(3 * labels + 1) * WORKGROUP + unit] += w;
    }
    sync_cube();
    #[unroll]
    for level in 0..TREE_LEVELS {
        let half = comptime!(WORKGROUP >> (level + 1));
        if unit < half {
            #[unroll]
            for c in 0..columns {
                shared[c * WORKGROUP + unit] += shared[c * WORKGROUP + unit + half];
            }
        }
        sync_cube();
    }
    if unit < columns {
        partials[CUBE_POS * columns + unit] = shared[unit * WORKGROUP];
    }
}

/// Forward, second pass (one workgroup): the `runs` runs' sums added, then `losses = [Dice
/// loss, cross-entropy]` and `coefficients = [dice_k…, Dice scale_k…, 1/Σ w]` (`voxels`: all
/// the batch's, Σ w without weights), as [`super::loss`]'s `LossCoefficients`.
#[cube(launch_unchecked)]
fn loss_coefficients(
    partials: &[f32],
    losses: &mut [f32],
    coefficients: &mut [f32],
    runs: usize,
    voxels: usize,
    weighted: u32,
    #[comptime] labels: usize,
) {
    let unit = UNIT_POS as usize;
    let columns = comptime!(3 * labels + 2);
    let mut sums = Shared::<[f32]>::new_slice(columns);
    if unit < columns {
        let mut s = 0.0f32;
        for r in 0..runs {
            s += partials[r * columns + unit];
        }
        sums[unit] = s;
    }
    sync_cube();
    if unit == 0 {
        let mut count = 0.0f32.runtime();
        #[unroll]
        for l in 1..labels {
            if sums[2 * labels + l] > 0.5 {
                count += 1.0;
            }
        }
        let mut divisor = 1.0f32.runtime();
        if count > 1.0 {
            divisor = count;
        }
        let mut dice_total = 0.0f32.runtime();
        #[unroll]
        for l in 0..labels {
            let den = sums[labels + l] + sums[2 * labels + l] + DICE_EPSILON;
            let dice = (2.0 * sums[l] + DICE_EPSILON) / den;
            coefficients[l] = dice;
            let mut scale = 0.0f32.runtime();
            // The background is in no Dice term (`l` is a constant of the unrolled loop).
            #[allow(clippy::collapsible_if)]
            if comptime!(l > 0) {
                if sums[2 * labels + l] > 0.5 {
                    scale = -1.0f32 / (divisor * den);
                    dice_total += dice;
                }
            }
            coefficients[labels + l] = scale;
        }
        let mut dice_loss = 0.0f32.runtime();
        if count > 0.0 {
            dice_loss = 1.0 - dice_total / divisor;
        }
        let mut weight_sum = f32::cast_from(voxels);
        if weighted == 1 {
            weight_sum = sums[3 * labels + 1];
            if weight_sum < MIN_WEIGHT_SUM {
                weight_sum = MIN_WEIGHT_SUM;
            }
        }
        losses[0usize] = dice_loss;
        losses[1usize] = sums[3 * labels] / weight_sum;
        coefficients[2 * labels] = 1.0 / weight_sum;
    }
}

/// Backward: thread `ABSOLUTE_POS` writes its voxel's ∂L/∂z_k, for the losses' gradient
/// `grad = [g_dice, g_ce]`: `p_k·(a_k − Σ_j p_j·a_j) + g_ce·w·(p_k − y_k)/Σ w`, a_k = g_dice ·
/// Dice scale_k · (2·y_k − dice_k).
#[cube(launch_unchecked)]
fn loss_gradient(
    z: &[f32],
    label_values: &[f32],
    weights: &[f32],
    coefficients: &[f32],
    grad: &[f32],
    dz: &mut [f32],
    voxels: usize,
    total: usize,
    weighted: u32,
    #[comptime] labels: usize,
) {
    let m = ABSOLUTE_POS;
    if m >= total {
        terminate!();
    }
    let base = logit_base(m, voxels, labels);
    let (max, sum) = softmax_of(z, base, voxels, labels);
    let y = label_of(label_values[m], labels);
    let mut ce = 0.0f32.runtime();
    if y < labels {
        ce = grad[1usize] * coefficients[2 * labels];
        if weighted == 1 {
            ce *= weights[m];
        }
    }
    let g_dice = grad[0usize];
    let mut s = 0.0f32;
    #[unroll]
    for l in 0..labels {
        let p = f32::exp(z[base + l * voxels] - max) / sum;
        let mut truth = 0.0f32.runtime();
        if y == l {
            truth = 2.0;
        }
        s += p * g_dice * coefficients[labels + l] * (truth - coefficients[l]);
    }
    #[unroll]
    for l in 0..labels {
        let p = f32::exp(z[base + l * voxels] - max) / sum;
        let mut truth = 0.0f32.runtime();
        let mut one = 0.0f32.runtime();
        if y == l {
            truth = 2.0;
            one = 1.0;
        }
        let a = g_dice * coefficients[labels + l] * (truth - coefficients[l]);
        dz[base + l * voxels] = p * (a - s) + ce * (p - one);
    }
}

/// `(labels K, voxels per item, voxels in all)` of `logits [N, K, …]`.
fn geometry(logits: &CubeTensor) -> (usize, usize, usize) {
    let dims = logits.shape();
    let (n, k) = (dims[0], dims[1].max(1));
    let total = dims.num_elements() / k;
    (k, total / n.max(1), total)
}

/// Workgroups of [`loss_partials`] for `total` voxels.
pub fn runs_for(total: usize) -> usize {
    total.div_ceil(RUN).max(1)
}

impl SegmentationLossGpuBackend for CubeBackend {
    fn segmentation_losses_keeping(
        logits: CubeTensor,
        labels: CubeTensor,
        weights: CubeTensor,
        weighted: bool,
    ) -> (CubeTensor, CubeTensor) {
        let (logits, labels, weights) = (
            into_contiguous(logits),
            into_contiguous(labels),
            into_contiguous(weights),
        );
        let (k, voxels, total) = geometry(&logits);
        let runs = runs_for(total);
        let partials = empty_like(&logits, Shape::new([runs * (3 * k + 2)]));
        let losses = empty_like(&logits, Shape::new([2]));
        let coefficients = empty_like(&logits, Shape::new([2 * k + 1]));
        let client = logits.client.clone();
        // SAFETY: logits hold `K × total` f32s, labels and weights `total` (weights read only
        // when `weighted`), partials `runs × (3K + 2)`; workgroup r reads voxels of its run
        // below `total` and writes its row; `loss_coefficients` reads `runs` rows.
        unsafe {
            loss_partials::launch_unchecked(
                &client,
                CubeCount::Static(runs as u32, 1, 1),
                CubeDim::new_1d(WORKGROUP as u32),
                logits.into_buffer_arg(),
                labels.into_buffer_arg(),
                weights.into_buffer_arg(),
                partials.clone().into_buffer_arg(),
                voxels,
                total,
                u32::from(weighted),
                k,
            );
            loss_coefficients::launch_unchecked(
                &client,
                CubeCount::Static(1, 1, 1),
                CubeDim::new_1d(WORKGROUP as u32),
                partials.into_buffer_arg(),
                losses.clone().into_buffer_arg(),
                coefficients.clone().into_buffer_arg(),
                runs,
                total,
                u32::from(weighted),
                k,
            );
        }
        LAUNCHES.fetch_add(2, Ordering::Relaxed);
        (losses, coefficients)
    }

    fn segmentation_losses_grad(
        logits: CubeTensor,
        labels: CubeTensor,
        weights: CubeTensor,
        coefficients: CubeTensor,
        grad: CubeTensor,
        weighted: bool,
    ) -> CubeTensor {
        let [logits, labels, weights, coefficients, grad] =
            [logits, labels, weights, coefficients, grad].map(into_contiguous);
        let (k, voxels, total) = geometry(&logits);
        let dz = empty_like(&logits, logits.shape());
        let client = logits.client.clone();
        let (count, dim) = super::conv_gpu::launch_grid(&client, total);
        // SAFETY: as in the forward pass; coefficients hold `2K + 1` f32s, grad 2, dz as many
        // as the logits; thread m (below `total`) writes voxel m's K values.
        unsafe {
            loss_gradient::launch_unchecked(
                &client,
                count,
                dim,
                logits.into_buffer_arg(),
                labels.into_buffer_arg(),
                weights.into_buffer_arg(),
                coefficients.into_buffer_arg(),
                grad.into_buffer_arg(),
                dz.clone().into_buffer_arg(),
                voxels,
                total,
                u32::from(weighted),
                k,
            );
        }
        LAUNCHES.fetch_add(1, Ordering::Relaxed);
        dz
    }
}

/// The backward pass of the fused losses under autodiff.
#[derive(Debug)]
struct SegmentationLossGpuBackward;

impl<B: SegmentationLossGpuBackend> Backward<B, 1> for SegmentationLossGpuBackward {
    /// The logits, and the labels, weights, coefficients and weighting of the forward pass.
    type State = (NodeId, [B::FloatTensorPrimitive; 3], bool);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let [node] = ops.parents;
        let grad = grads.consume::<B>(&ops.node);
        let (logits_state, [labels, weights, coefficients], weighted) = ops.state;
        let logits = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(logits_state);
        if let Some(node) = node {
            let dz =
                B::segmentation_losses_grad(logits, labels, weights, coefficients, grad, weighted);
            grads.register::<B>(node.id, dz);
        }
    }
}

impl<B: SegmentationLossGpuBackend, C: CheckpointStrategy> SegmentationLossGpuBackend
    for Autodiff<B, C>
{
    fn segmentation_losses_keeping(
        logits: FloatTensor<Self>,
        labels: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        weighted: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let prepared = SegmentationLossGpuBackward
            .prepare::<C>([logits.node()])
            .compute_bound()
            .stateful();
        let (labels, weights) = (labels.into_primitive(), weights.into_primitive());
        let (losses, coefficients) = match prepared {
            OpsKind::Tracked(mut prep) => {
                let logits_state = prep.checkpoint(&logits);
                let (losses, coefficients) = B::segmentation_losses_keeping(
                    logits.into_primitive(),
                    labels.clone(),
                    weights.clone(),
                    weighted,
                );
                let kept = [labels, weights, coefficients.clone()];
                (
                    prep.finish((logits_state, kept, weighted), losses),
                    coefficients,
                )
            }
            OpsKind::UnTracked(prep) => {
                let (losses, coefficients) = B::segmentation_losses_keeping(
                    logits.into_primitive(),
                    labels,
                    weights,
                    weighted,
                );
                (prep.finish(losses), coefficients)
            }
        };
        (losses, Self::from_inner(coefficients))
    }

    /// Not differentiated (the forward pass's backward step calls the inner backend's).
    fn segmentation_losses_grad(
        logits: FloatTensor<Self>,
        labels: FloatTensor<Self>,
        weights: FloatTensor<Self>,
        coefficients: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        weighted: bool,
    ) -> FloatTensor<Self> {
        let [logits, labels, weights, coefficients, grad] =
            [logits, labels, weights, coefficients, grad].map(Self::inner);
        Self::from_inner(B::segmentation_losses_grad(
            logits,
            labels,
            weights,
            coefficients,
            grad,
            weighted,
        ))
    }
}
