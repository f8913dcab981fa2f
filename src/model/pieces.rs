//! Convolutions on a GPU cut into pieces that each fit one dispatch. burn's GPU convolutions
//! (cubecl) turn a convolution's voxels into the rows of matrix products (im2col, 1×1×1
//! products, the input gradient's scatter), and the fallback product every other one falls
//! back to launches one workgroup per plane's worth of rows — at most 65 535 of them per grid
//! axis. An nnU-Net-sized step (2 × 128³ voxels at full resolution) asked for 131 072 on an H200
//! and panicked inside burn's autotuning (on lavapipe, whose planes are 8 lanes wide, already 2
//! × 128³ voxels of one channel did). So on a GPU a convolution whose input or output holds more
//! voxels than [`gpu_voxel_budget`] runs on groups of the batch's items, and an item too large
//! alone on slabs along depth, each slab reading the input rows its outputs need (its halo) and
//! the volume's zero padding added at the two ends; the outputs are concatenated. Under autodiff
//! the slices and concatenations carry the gradients back, so a step is the same step.
//!
//! Invariants: the pieces' outputs, concatenated, equal the whole convolution and so do their
//! gradients, to float rounding (the tests compare them on the CPU with a small budget); every
//! piece's input and output hold at most the budget's voxels unless one plane of the item
//! alone is over it (then the item runs whole, as before); only plain convolutions are cut
//! (dilation 1, explicit or valid padding; upsamplings with kernel = stride and no padding),
//! anything else runs whole; the CPU (flex) has no budget and never gets here.

use std::ops::Range;

use burn::backend::DispatchDevice;
use burn::nn::conv::{Conv3d, ConvTranspose3d};
use burn::nn::PaddingConfig3d;
use burn::prelude::*;

use super::precision::float_dtype_of;

/// Workgroups a GPU grid axis may hold (Vulkan's minimum guarantee, and the bound burn's fallback
/// matrix product checks).
const MAX_WORKGROUPS_PER_AXIS: usize = u16::MAX as usize;

/// The most voxels one GPU convolution call may read or write: one workgroup of the fallback
/// product per plane (subgroup) of rows, at most [`MAX_WORKGROUPS_PER_AXIS`] of them. `None` on
/// the CPU, which has no such limit. A device that reports no plane width counts 32, as burn's
/// products do.
pub fn gpu_voxel_budget(device: &Device) -> Option<usize> {
    match device.clone().inner().as_dispatch() {
        DispatchDevice::Cube(cube) => {
            let plane = cube.client().properties().hardware.plane_size_max as usize;
            let plane = if plane == 0 { 32 } else { plane };
            Some(MAX_WORKGROUPS_PER_AXIS * plane)
        }
        _ => None,
    }
}

/// Whether a convolution from `x` to an output of `out_dims` must be cut to fit `budget`.
fn over_budget(x_dims: [usize; 5], out_dims: [usize; 5], budget: usize) -> bool {
    voxels(x_dims) > budget || voxels(out_dims) > budget
}

/// Voxels of all items of a `[N, C, D, H, W]` tensor (rows of a product; channels excluded).
fn voxels(dims: [usize; 5]) -> usize {
    dims[0] * dims[2] * dims[3] * dims[4]
}

/// Voxels one item reads or writes, whichever is more, for a layer from `x_dims` to `out_dims`.
fn item_voxels(x_dims: [usize; 5], out_dims: [usize; 5]) -> usize {
    voxels(x_dims).max(voxels(out_dims)) / x_dims[0].max(1)
}

/// The depth mapping of a plain convolution: kernel, stride and front padding along depth.
#[derive(Debug, Clone, Copy, PartialEq)]
struct DepthMap {
    kernel: usize,
    stride: usize,
    padding: usize,
}

impl DepthMap {
    /// The input rows (unpadded coordinates, possibly outside `0..depth`) that output rows
    /// `out` read.
    fn input_rows(&self, out: &Range<usize>) -> Range<isize> {
        let start = (out.start * self.stride) as isize - self.padding as isize;
        let end = ((out.end - 1) * self.stride + self.kernel) as isize - self.padding as isize;
        start..end
    }

    /// The output rows before a slab's own, ⌈p/s⌉: rows a slab's convolution computes from
    /// the zero rows of its padding and [`slab_conv`] drops.
    fn skipped_rows(&self) -> usize {
        self.padding.div_ceil(self.stride.max(1))
    }

    /// The zero rows [`slab_conv`] puts in front of a slab's input, s·⌈p/s⌉ − p, so that the
    /// convolution's own padding lines up with the slab's halo.
    fn front_rows(&self) -> usize {
        self.stride.max(1) * self.skipped_rows() - self.padding
    }

    /// The rows a slab's convolution computes beyond the slab's own output: ⌈p/s⌉ in front
    /// and ⌊p/s⌋ behind (its padding of p rows at each end of the given rows and the front
    /// rows; none for an unpadded map).
    fn extra_out_rows(&self) -> usize {
        self.skipped_rows() + self.padding / self.stride.max(1)
    }
}

/// Output depth ranges, as even as possible, covering `0..out_depth`, each reading at most
/// `budget` input voxels (`in_plane` per input row, halo and [`DepthMap::front_rows`]
/// included) and writing at most `budget` output voxels (`out_plane` per row, the rows a
/// slab's convolution computes and drops included). `None` when not even one output row fits.
fn depth_slabs(
    out_depth: usize,
    in_plane: usize,
    out_plane: usize,
    map: DepthMap,
    budget: usize,
) -> Option<Vec<Range<usize>>> {
    let by_out = (budget / out_plane.max(1)).saturating_sub(map.extra_out_rows());
    let in_rows = budget / in_plane.max(1);
    let by_in = in_rows.checked_sub(map.kernel + map.front_rows())? / map.stride.max(1) + 1;
    let rows = by_out.min(by_in);
    if rows == 0 || out_depth == 0 {
        return None;
    }
    let count = out_depth.div_ceil(rows);
    let (base, extra) = (out_depth / count, out_depth % count);
    let mut start = 0;
    let slabs = (0..count)
        .map(|i| {
            let len = base + usize::from(i < extra);
            start += len;
            start - len..start
        })
        .collect();
    Some(slabs)
}

/// The item groups of a batch of `items`: as many items per group as fit `budget` (`per_item`
/// voxels each, at least one item a group).
fn item_groups(items: usize, per_item: usize, budget: usize) -> Vec<Range<usize>> {
    let per_group = (budget / per_item.max(1)).max(1);
    (0..items.div_ceil(per_group))
        .map(|g| g * per_group..((g + 1) * per_group).min(items))
        .collect()
}

/// Input rows `rows` of one item `x` `[1, C, D, H, W]`, with zero rows where they fall outside
/// the volume (its padding).
fn rows_with_padding(x: &Tensor<5>, rows: Range<isize>) -> Tensor<5> {
    let [_, channels, depth, height, width] = x.dims();
    let inside = rows.start.max(0) as usize..(rows.end.max(0) as usize).min(depth);
    let front = (-rows.start).max(0) as usize;
    let back = (rows.end - depth as isize).max(0) as usize;
    let dtype = float_dtype_of(x);
    let zeros =
        |n: usize| Tensor::<5>::zeros([1, channels, n, height, width], &x.device()).cast(dtype);
    let mut parts = Vec::with_capacity(3);
    if front > 0 {
        parts.push(zeros(front));
    }
    parts.push(x.clone().slice(s![.., .., inside, .., ..]));
    if back > 0 {
        parts.push(zeros(back));
    }
    cat_or_one(parts, 2)
}

/// How one kind of layer is cut: its depth mapping over `units` depth units (output rows of a
/// convolution; input rows of an upsampling, whose every input row writes `stride` output
/// rows), the voxels a unit reads and writes, and the layer applied to a group of whole items
/// (`whole`) or to one slab's padded input rows (`piece`).
struct Cut<'a> {
    map: DepthMap,
    units: usize,
    in_plane: usize,
    out_plane_per_unit: usize,
    item_voxels: usize,
    whole: &'a dyn Fn(Tensor<5>) -> Tensor<5>,
    piece: &'a dyn Fn(Tensor<5>) -> Tensor<5>,
}

/// `cut` applied to `x` in pieces of at most `budget` voxels: groups of items, and an item over
/// the budget alone in depth slabs (whole when not even one slab row fits).
fn in_pieces(x: Tensor<5>, cut: &Cut, budget: usize) -> Tensor<5> {
    let items = x.dims()[0];
    let groups = item_groups(items, cut.item_voxels, budget);
    let mut outs = Vec::with_capacity(groups.len());
    for group in groups {
        let xg = x.clone().slice(s![group.clone(), .., .., .., ..]);
        let slabs = match cut.item_voxels > budget {
            true => depth_slabs(
                cut.units,
                cut.in_plane,
                cut.out_plane_per_unit,
                cut.map,
                budget,
            ),
            false => None,
        };
        outs.push(match slabs {
            Some(slabs) => slabs
                .iter()
                .map(|slab| (cut.piece)(rows_with_padding(&xg, cut.map.input_rows(slab))))
                .collect::<Vec<_>>(),
            None => vec![(cut.whole)(xg)],
        });
    }
    let items_out: Vec<Tensor<5>> = outs.into_iter().map(|o| cat_or_one(o, 2)).collect();
    cat_or_one(items_out, 0)
}

/// The tensors concatenated along `dim`, or the only one as it is.
fn cat_or_one(mut parts: Vec<Tensor<5>>, dim: usize) -> Tensor<5> {
    match parts.len() {
        1 => parts.remove(0),
        _ => Tensor::cat(parts, dim),
    }
}

/// The explicit padding of a plain convolution (dilation 1): `None` for anything else.
fn plain_padding(conv: &Conv3d) -> Option<[usize; 3]> {
    if conv.dilation != [1, 1, 1] {
        return None;
    }
    match conv.padding {
        PaddingConfig3d::Explicit(d, h, w) => Some([d, h, w]),
        PaddingConfig3d::Valid => Some([0; 3]),
        _ => None,
    }
}

/// The output dims of `conv` (plain, `padding`) on an input of `x_dims`; `None` when the kernel
/// does not fit.
fn conv_out_dims(conv: &Conv3d, padding: [usize; 3], x_dims: [usize; 5]) -> Option<[usize; 5]> {
    let mut out = [x_dims[0], conv.weight.dims()[0], 0, 0, 0];
    for axis in 0..3 {
        let padded = x_dims[axis + 2] + 2 * padding[axis];
        let reach = padded.checked_sub(conv.kernel_size[axis])?;
        out[axis + 2] = reach / conv.stride[axis].max(1) + 1;
    }
    Some(out)
}

/// The budget (voxels per call) `conv` on `x` must be cut to: `Some` when, on a GPU, its input
/// or output holds more voxels than one call may and the convolution is plain; `None` when it
/// fits, is not plain, or `x` is on the CPU — it then runs whole.
pub fn conv3d_cut_budget(conv: &Conv3d, x: &Tensor<5>) -> Option<usize> {
    let budget = gpu_voxel_budget(&x.device())?;
    conv3d_over(conv, x.dims(), budget).then_some(budget)
}

/// Whether a plain `conv` on an input of `x_dims` is over `budget`.
fn conv3d_over(conv: &Conv3d, x_dims: [usize; 5], budget: usize) -> bool {
    let out_dims = plain_padding(conv).and_then(|padding| conv_out_dims(conv, padding, x_dims));
    out_dims.is_some_and(|out_dims| over_budget(x_dims, out_dims, budget))
}

/// `conv` (plain: see [`conv3d_cut_budget`]; anything else runs whole) applied to `x` in pieces
/// of at most `budget` voxels.
pub fn conv3d_in_pieces(conv: &Conv3d, x: Tensor<5>, budget: usize) -> Tensor<5> {
    let x_dims = x.dims();
    let padding = plain_padding(conv);
    let out_dims = padding.and_then(|padding| conv_out_dims(conv, padding, x_dims));
    let (Some(padding), Some(out_dims)) = (padding, out_dims) else {
        return conv.forward(x);
    };
    let map = DepthMap {
        kernel: conv.kernel_size[0],
        stride: conv.stride[0],
        padding: padding[0],
    };
    let whole = |x: Tensor<5>| super::conv::conv3d_whole(conv, x);
    let piece = |rows: Tensor<5>| slab_conv(conv, map, rows);
    let cut = Cut {
        map,
        units: out_dims[2],
        in_plane: x_dims[3] * x_dims[4],
        out_plane_per_unit: out_dims[3] * out_dims[4],
        item_voxels: item_voxels(x_dims, out_dims),
        whole: &whole,
        piece: &piece,
    };
    in_pieces(x, &cut, budget)
}

/// `conv` over one slab's input `rows`, whose depth padding (the halo and the volume's zero
/// rows) is already there: the rows the convolution without depth padding gives, through the
/// crate's own route (`conv3d_whole`, which pads `map.padding` rows p at each end itself).
/// With e = s·⌈p/s⌉ − p zero rows put in front (s the depth stride), its output row
/// j = k + ⌈p/s⌉ reads the given rows from s·j − p = s·k + e, the unpadded one's row k;
/// the ⌈p/s⌉ rows before and ⌊p/s⌋ after read padding and are left out ([`depth_slabs`]
/// counts them against the budget). (burn's own GPU convolution is not used:
/// on lavapipe its weight gradient of a 2 × 32³ input was off by a third of its largest value,
/// `tests/model.rs`.)
fn slab_conv(conv: &Conv3d, map: DepthMap, rows: Tensor<5>) -> Tensor<5> {
    let [items, channels, given, height, width] = rows.dims();
    let wanted = given.saturating_sub(map.kernel) / map.stride.max(1) + 1;
    let (skip, front) = (map.skipped_rows(), map.front_rows());
    let rows = match front {
        0 => rows,
        _ => {
            let zeros = Tensor::<5>::zeros([items, channels, front, height, width], &rows.device());
            Tensor::cat(vec![zeros.cast(float_dtype_of(&rows)), rows], 2)
        }
    };
    super::conv::conv3d_whole(conv, rows).narrow(2, skip, wanted)
}

/// Whether `up` is an upsampling these pieces handle: kernel = stride, no padding, dilation 1.
fn plain_upsampling(up: &ConvTranspose3d) -> bool {
    up.dilation == [1, 1, 1]
        && up.padding == [0; 3]
        && up.padding_out == [0; 3]
        && up.stride == up.kernel_size
}

/// The output dims of the upsampling `up` on an input of `x_dims`.
fn upsampled_dims(up: &ConvTranspose3d, x_dims: [usize; 5]) -> [usize; 5] {
    let [sd, sh, sw] = up.stride;
    let channels = up.weight.dims()[1] * up.groups;
    [
        x_dims[0],
        channels,
        x_dims[2] * sd,
        x_dims[3] * sh,
        x_dims[4] * sw,
    ]
}

/// The budget (voxels per call) the upsampling `up` on `x` must be cut to: `Some` when, on a
/// GPU, it is over one call's voxels; `None` when it fits, is another kind of transposed
/// convolution, or `x` is on the CPU.
pub fn upconv_cut_budget(up: &ConvTranspose3d, x: &Tensor<5>) -> Option<usize> {
    let budget = gpu_voxel_budget(&x.device())?;
    let x_dims = x.dims();
    let over = plain_upsampling(up) && over_budget(x_dims, upsampled_dims(up, x_dims), budget);
    over.then_some(budget)
}

/// The upsampling `up` (see [`upconv_cut_budget`]; anything else runs whole) applied to `x` in
/// pieces of at most `budget` voxels.
pub fn upconv_in_pieces(up: &ConvTranspose3d, x: Tensor<5>, budget: usize) -> Tensor<5> {
    if !plain_upsampling(up) {
        return up.forward(x);
    }
    let x_dims = x.dims();
    let out_dims = upsampled_dims(up, x_dims);
    let apply = |x: Tensor<5>| super::upconv::upconv_whole(up, x);
    let out_plane = out_dims[3] * out_dims[4];
    let cut = Cut {
        map: DepthMap {
            kernel: 1,
            stride: 1,
            padding: 0,
        },
        units: x_dims[2],
        in_plane: x_dims[3] * x_dims[4],
        out_plane_per_unit: up.stride[0] * out_plane,
        item_voxels: item_voxels(x_dims, out_dims),
        whole: &apply,
        piece: &apply,
    };
    in_pieces(x, &cut, budget)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Param;
    use burn::nn::conv::{Conv3dConfig, ConvTranspose3dConfig};
    use burn::tensor::Distribution;

    fn values(t: Tensor<5>) -> Vec<f32> {
        t.into_data().try_into_vec::<f32>().expect("f32")
    }

    /// `layer` applied to `x` (a fresh leaf): its output and the gradients of ½ Σ output² with
    /// respect to `x` and `weight`.
    fn run(
        x: &Tensor<5>,
        weight: &Param<Tensor<5>>,
        layer: &dyn Fn(Tensor<5>) -> Tensor<5>,
    ) -> [Vec<f32>; 3] {
        let x = x.clone().require_grad();
        let y = layer(x.clone());
        let grads = (y.clone() * y.clone()).sum().div_scalar(2.0).backward();
        let weight = weight.grad(&grads).expect("weight grad");
        [
            values(y.inner()),
            values(x.grad(&grads).expect("x grad")),
            values(weight),
        ]
    }

    fn assert_close(a: &[f32], b: &[f32], what: &str) {
        assert_eq!(a.len(), b.len(), "{what}");
        let scale = b.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        let worst = a
            .iter()
            .zip(b)
            .fold(0.0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(worst <= 1e-5 * scale, "{what}: {worst} of {scale}");
    }

    #[test]
    fn slabs_cover_the_output_and_keep_each_piece_within_the_budget() {
        let map = DepthMap {
            kernel: 3,
            stride: 2,
            padding: 1,
        };
        // 20 output rows of 10 voxels, reading 40 input rows of 40 voxels; 300 voxels a call.
        let slabs = depth_slabs(20, 40, 10, map, 300).expect("slabs");
        assert_eq!(slabs.first().map(|s| s.start), Some(0));
        assert_eq!(slabs.last().map(|s| s.end), Some(20));
        for pair in slabs.windows(2) {
            assert_eq!(pair[0].end, pair[1].start);
        }
        for slab in &slabs {
            // What the slab's convolution is given (the front zero row included) and computes.
            let rows = map.input_rows(slab);
            let given = (rows.end - rows.start) as usize + map.front_rows();
            assert!(given * 40 <= 300, "{slab:?} {rows:?}");
            assert!((slab.len() + map.extra_out_rows()) * 10 <= 300);
        }
        // 7 input rows fit, one of them the zero row in front: 2 output rows a slab (reading 5
        // and the front row), 10 slabs.
        assert_eq!(
            (map.front_rows(), map.skipped_rows(), map.extra_out_rows()),
            (1, 1, 1)
        );
        assert_eq!(slabs.len(), 10);
        assert!(slabs.iter().all(|s| s.len() == 2));
        // Stride 1, padding 1: no front row, two output rows computed and dropped.
        let map1 = DepthMap { stride: 1, ..map };
        assert_eq!((map1.front_rows(), map1.extra_out_rows()), (0, 2));
        let slabs1 = depth_slabs(20, 40, 60, map1, 300).expect("slabs");
        // 5 output rows by the output's budget less the 2 dropped: 3 a slab.
        assert!(
            slabs1.iter().all(|s| s.len() == 3 || s.len() == 2),
            "{slabs1:?}"
        );
        assert!(slabs1.iter().all(|s| (s.len() + 2) * 60 <= 300));
        assert_eq!(depth_slabs(20, 200, 10, map, 300), None);
        assert_eq!(item_groups(5, 10, 25), vec![0..2, 2..4, 4..5]);
        assert_eq!(item_groups(2, 100, 25), vec![0..1, 1..2]);
    }

    #[test]
    fn convolutions_in_pieces_equal_the_whole_convolution_and_its_gradients() {
        let device = Device::flex().autodiff();
        // (kernel, stride, padding): the blocks', the downsamplings', the 1×1×1 ones and the
        // single-slice form's; budgets that cut slabs of one item and groups of items.
        let kernels = [
            ([3, 3, 3], [1, 1, 1], (1, 1, 1)),
            ([3, 3, 3], [2, 2, 2], (1, 1, 1)),
            ([1, 1, 1], [1, 1, 1], (0, 0, 0)),
            ([1, 3, 3], [1, 1, 1], (0, 1, 1)),
        ];
        let x = Tensor::<5>::random([3, 2, 9, 6, 5], Distribution::Normal(0.0, 1.0), &device);
        for ((kernel, stride, (pd, ph, pw)), budget) in kernels
            .into_iter()
            .flat_map(|k| [(k, 120), (k, 200), (k, 600)])
        {
            let conv = Conv3dConfig::new([2, 3], kernel)
                .with_stride(stride)
                .with_padding(PaddingConfig3d::Explicit(pd, ph, pw))
                .init(&device);
            assert!(
                conv3d_over(&conv, x.dims(), budget),
                "{budget}: would run whole"
            );
            let cut = |x: Tensor<5>| conv3d_in_pieces(&conv, x, budget);
            let pieces = run(&x, &conv.weight, &cut);
            let whole = run(&x, &conv.weight, &|x| conv.forward(x));
            let case = format!("{kernel:?} stride {stride:?} budget {budget}");
            for (i, what) in ["output", "input gradient", "weight gradient"]
                .iter()
                .enumerate()
            {
                assert_close(&pieces[i], &whole[i], &format!("{what} {case}"));
            }
        }
        let conv = Conv3dConfig::new([2, 3], [3, 3, 3]).init(&device);
        assert!(
            !conv3d_over(&conv, x.dims(), 3 * 9 * 6 * 5),
            "fits: runs whole"
        );
    }

    /// A half-precision input (a mixed-precision step on a GPU): the pieces run in its type, with
    /// the weights cast to it, as the whole convolution does (`precision`).
    #[test]
    fn half_precision_pieces_equal_the_whole_half_precision_convolution() {
        use burn::tensor::FloatDType;
        let device = Device::flex();
        let conv = Conv3dConfig::new([2, 3], [3, 3, 3])
            .with_padding(PaddingConfig3d::Explicit(1, 1, 1))
            .init(&device);
        let x = Tensor::<5>::random([2, 2, 9, 6, 5], Distribution::Normal(0.0, 1.0), &device)
            .cast(FloatDType::F16);
        let pieces = conv3d_in_pieces(&conv, x.clone(), 200);
        let whole = super::super::precision::conv3d_in_dtype_of_input(&conv, x);
        assert_eq!(pieces.dtype(), whole.dtype());
        let as_f32 = |t: Tensor<5>| values(t.cast(FloatDType::F32));
        let (pieces, whole) = (as_f32(pieces), as_f32(whole));
        let worst = pieces
            .iter()
            .zip(&whole)
            .fold(0.0f32, |m, (p, q)| m.max((p - q).abs()));
        assert!(worst <= 1e-2, "{worst}");
    }

    #[test]
    fn upsamplings_in_pieces_equal_the_whole_upsampling_and_its_gradients() {
        let device = Device::flex().autodiff();
        let x = Tensor::<5>::random([2, 4, 5, 3, 4], Distribution::Normal(0.0, 1.0), &device);
        for (kernel, budget) in [([2, 2, 2], 100), ([2, 2, 2], 500), ([1, 2, 2], 100)] {
            let up = ConvTranspose3dConfig::new([4, 3], kernel)
                .with_stride(kernel)
                .init(&device);
            let over = over_budget(x.dims(), upsampled_dims(&up, x.dims()), budget);
            assert!(over, "{kernel:?} {budget}: would run whole");
            let cut = |x: Tensor<5>| upconv_in_pieces(&up, x, budget);
            let pieces = run(&x, &up.weight, &cut);
            let whole = run(&x, &up.weight, &|x| up.forward(x));
            for (i, what) in ["output", "input gradient", "weight gradient"]
                .iter()
                .enumerate()
            {
                assert_close(
                    &pieces[i],
                    &whole[i],
                    &format!("{what} {kernel:?} {budget}"),
                );
            }
        }
    }
}
