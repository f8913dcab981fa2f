//! Direct SIMD kernels for the stride-1 3×3×3 (and 1×3×3) convolutions of [`super::conv`]: one
//! tile's output `[C_out, cols]` straight from the padded input (no im2col matrix, no matrix
//! packing), and one tile's share of the kernel gradient. Columns are positions on the padded
//! grid, as in `conv.rs`: tap k of column p reads each padded input channel at
//! `p + offsets[k]`, so every tap of a run of columns is one contiguous, unaligned load. The
//! kernels compute whole vectors placed over the output rows' columns ([`vector_starts`]), not
//! over the padding between them: on the 4³–32³ grids of the U-Net's levels the padding is 13 %
//! to 125 % more columns.
//!
//! Register blocking. Forward: `CB` output channels × `NV` vectors of columns stay in registers;
//! for each input channel and tap, `NV` vectors of input are loaded once and multiplied by `CB`
//! broadcast weights (AVX-512: 8 × 3 accumulators, 24 multiply-adds per 3 loads and 8
//! broadcasts). Gradient: `CO × CI` channel pairs of one tap stay in registers, each summing
//! output gradient × shifted input over the columns, reduced to one number at the end.
//! AVX-512 (16 lanes) or AVX2 with FMA (8 lanes), detected at run time ([`Isa::detect`]);
//! elsewhere the caller keeps the matrix-product route.
//!
//! Invariants: the public functions check every length a kernel reads or writes before any
//! unchecked access and return `false` (nothing written) when one is short; channel counts not
//! a multiple of the block are padded (zero weights, zero rows), and only real channels are
//! written out.

use std::mem::MaybeUninit;

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// The vector instruction set a kernel runs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// 16 lanes, 32 registers.
    Avx512,
    /// 8 lanes with fused multiply-add, 16 registers.
    Avx2,
}

impl Isa {
    /// The widest set this CPU has, or `None` (not x86-64, or neither).
    pub fn detect() -> Option<Isa> {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx512f") {
                return Some(Isa::Avx512);
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                return Some(Isa::Avx2);
            }
        }
        None
    }

    /// Whether this CPU has the set (kernels of a set it lacks never run).
    fn here(self) -> bool {
        match Isa::detect() {
            Some(best) => self == best || self == Isa::Avx2,
            None => false,
        }
    }

    /// Every set this CPU has (for tests that compare them).
    #[cfg(test)]
    pub fn available() -> Vec<Isa> {
        match Isa::detect() {
            Some(Isa::Avx512) => vec![Isa::Avx512, Isa::Avx2],
            Some(Isa::Avx2) => vec![Isa::Avx2],
            None => Vec::new(),
        }
    }

    /// Output channels per forward block.
    fn out_block(self) -> usize {
        match self {
            Isa::Avx512 => AVX512_FORWARD.0,
            Isa::Avx2 => AVX2_FORWARD.0,
        }
    }

    /// Lanes of one vector.
    pub fn lanes(self) -> usize {
        match self {
            Isa::Avx512 => 16,
            Isa::Avx2 => 8,
        }
    }

    /// (output, input) channels per gradient block (the single-tap kernel's; the three-tap
    /// kernel's input block divides it).
    fn grad_blocks(self) -> (usize, usize) {
        match self {
            Isa::Avx512 => AVX512_GRAD,
            Isa::Avx2 => AVX2_GRAD,
        }
    }

    /// Floats the buffers a kernel reads must hold past the last column's farthest tap: a
    /// forward step or a gradient vector beyond the last column.
    pub const SLACK: usize = 64;
}

// The kernels' register blocks, read both by the kernels' instantiations below and by the
// padding of channel counts (`Isa::out_block`, `grad_blocks`), which must agree.
/// Forward: output channels × vectors of columns (AVX-512: 24 accumulators of 32 registers).
const AVX512_FORWARD: (usize, usize) = (8, 3);
/// Forward: output channels × vectors of columns (AVX2: 12 accumulators of 16 registers).
const AVX2_FORWARD: (usize, usize) = (4, 3);
/// Gradient, single taps: output × input channels.
const AVX512_GRAD: (usize, usize) = (4, 4);
/// Gradient, single taps: output × input channels.
const AVX2_GRAD: (usize, usize) = (2, 4);
/// Gradient, taps in runs of three: input channels (output channels as the single taps').
const AVX512_GRAD_RUNS: usize = 2;
/// Gradient, taps in runs of three: input channels (2 × 1 × 3 fits AVX2's 16 registers).
const AVX2_GRAD_RUNS: usize = 1;
const _: () = assert!(
    AVX512_GRAD.1.is_multiple_of(AVX512_GRAD_RUNS) && AVX2_GRAD.1.is_multiple_of(AVX2_GRAD_RUNS)
);

/// A kernel `[C_out, C_in, taps]` laid out for the forward kernel: `[C_in][taps][C_out']`, with
/// `C_out'` the output channels rounded up to the block (the extra weights zero).
#[derive(Debug)]
pub struct PackedKernel {
    isa: Isa,
    values: Vec<f32>,
    c_in: usize,
    c_out_padded: usize,
    taps: usize,
}

impl PackedKernel {
    /// `weight(o, c, k)`: output channel o, input channel c, tap k.
    pub fn new(
        isa: Isa,
        [c_out, c_in, taps]: [usize; 3],
        weight: impl Fn(usize, usize, usize) -> f32,
    ) -> Self {
        let c_out_padded = c_out.div_ceil(isa.out_block()) * isa.out_block();
        let mut values = vec![0.0f32; c_in * taps * c_out_padded];
        for c in 0..c_in {
            for k in 0..taps {
                for o in 0..c_out {
                    values[(c * taps + k) * c_out_padded + o] = weight(o, c, k);
                }
            }
        }
        Self {
            isa,
            values,
            c_in,
            c_out_padded,
            taps,
        }
    }

    /// The instruction set it is packed for.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Rows of the output [`forward`] writes: the output channels rounded up to the block.
    pub fn rows(&self) -> usize {
        self.c_out_padded
    }
}

/// One tile's input: channel c's column p (tap k) at `x[c·stride + p + offsets[k]]`.
#[derive(Clone, Copy, Debug)]
pub struct TileInput<'a> {
    pub x: &'a [f32],
    pub stride: usize,
    pub channels: usize,
    pub offsets: &'a [usize],
    pub cols: usize,
    /// The first columns of the vectors the kernels compute ([`vector_starts`]): increasing,
    /// each at least a vector after the one before, all below `cols`. Columns no vector covers
    /// are neither written (forward) nor summed (gradient): the padding between output rows.
    pub starts: &'a [usize],
}

/// The first columns of vectors of `lanes` columns that cover every column of `runs` (`(first
/// column, length)`, in increasing order), none overlapping another: a vector starts at a run's
/// first column not yet covered and the next follows it, so short runs close together share
/// vectors and the gaps between them (a grid's padding rows) are skipped.
pub fn vector_starts(runs: impl IntoIterator<Item = (usize, usize)>, lanes: usize) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut covered = 0;
    for (first, len) in runs {
        let mut at = first.max(covered);
        while at < first + len {
            starts.push(at);
            at += lanes;
        }
        covered = covered.max(at);
    }
    starts
}

/// The last column a kernel reads of each channel (before the taps' offsets) plus one, if
/// `starts` are as [`TileInput::starts`] demands for `cols`; `None` otherwise.
fn starts_reach(starts: &[usize], cols: usize, lanes: usize) -> Option<usize> {
    let spaced = starts
        .windows(2)
        .all(|w| w[1] >= w[0].saturating_add(lanes));
    let last = *starts.last()?;
    (spaced && last < cols)
        .then(|| last.checked_add(lanes))
        .flatten()
}

impl TileInput<'_> {
    /// Whether every channel holds `reach` columns past each tap's offset.
    fn holds(&self, reach: usize) -> bool {
        let far = self.offsets.iter().max().copied().unwrap_or(0);
        let last = self
            .channels
            .checked_sub(1)
            .map(|c| c.checked_mul(self.stride));
        let end = last.map(|at| at.and_then(|at| at.checked_add(far)?.checked_add(reach)));
        match end {
            None => true,
            Some(end) => end.is_some_and(|end| end <= self.x.len()),
        }
    }
}

/// Where the forward kernel stores: output channel o's row from `rows[o]`, `len` floats each,
/// vector j at `at[j]` in every row (one reaching past `len` stores its first lanes only).
struct OutRows<'a> {
    rows: Vec<*mut f32>,
    len: usize,
    at: &'a [usize],
}

/// The tile's output `out [C_out', cols]` (row o at `o·cols`; `C_out'` is
/// [`PackedKernel::rows`], its rows past the real channels are left zero). `false` (nothing
/// written) if a buffer is short or the kernel does not match the input.
pub fn forward(isa: Isa, input: &TileInput, kernel: &PackedKernel, out: &mut [f32]) -> bool {
    let cols = input.cols;
    if out.len() < kernel.c_out_padded * cols {
        return false;
    }
    let base = out.as_mut_ptr();
    // SAFETY (of the pointers): row o starts at o·cols, inside `out` (checked above).
    let rows = (0..kernel.c_out_padded).map(|o| base.wrapping_add(o * cols));
    let out = OutRows {
        rows: rows.collect(),
        len: cols,
        at: input.starts,
    };
    run_forward(isa, input, kernel, &out)
}

/// The tile's output stored straight into `runs`, one per output channel (all of
/// [`PackedKernel::rows`], each of one length), vector j at `at[j]` of each run: where a tile's
/// output voxels are whole vectors (rows a multiple of the lanes long), no copy of the tile's
/// product. `false` (nothing written) if the runs or positions do not match, or as [`forward`].
pub fn forward_into_runs(
    isa: Isa,
    input: &TileInput,
    kernel: &PackedKernel,
    runs: &mut [&mut [MaybeUninit<f32>]],
    at: &[usize],
) -> bool {
    let len = runs.first().map_or(0, |r| r.len());
    let fits = runs.len() == kernel.c_out_padded
        && runs.iter().all(|r| r.len() == len)
        && at.len() == input.starts.len()
        && at.iter().all(|&a| a < len);
    if !fits {
        return false;
    }
    let out = OutRows {
        rows: runs.iter_mut().map(|r| r.as_mut_ptr().cast()).collect(),
        len,
        at,
    };
    run_forward(isa, input, kernel, &out)
}

/// [`forward_kernel`] on `isa` after checking the input and kernel (`out` checked by the
/// callers).
fn run_forward(isa: Isa, input: &TileInput, kernel: &PackedKernel, out: &OutRows) -> bool {
    let Some(reach) = starts_reach(input.starts, input.cols, isa.lanes()) else {
        return false;
    };
    let fits = isa.here()
        && input.holds(reach)
        && kernel.isa == isa
        && kernel.c_in == input.channels
        && kernel.taps == input.offsets.len()
        && out.rows.len() == kernel.c_out_padded
        && out.at.len() == input.starts.len()
        && out.at.iter().all(|&a| a < out.len);
    if !fits || input.cols == 0 {
        return false;
    }
    // SAFETY: `holds(reach)` bounds every read (vector start + lanes + tap offset ≤ reach +
    // far in each channel), the packed kernel holds `C_in·taps·C_out'` weights with `C_out'` a
    // multiple of the block, and the kernel stores only inside the `C_out'` rows of `out.len`
    // floats (positions below `len`, the last lanes cut at `len`).
    unsafe {
        match isa {
            Isa::Avx512 => forward_avx512(input, kernel, out),
            Isa::Avx2 => forward_avx2(input, kernel, out),
        }
    }
    true
}

/// The output gradient one tile's kernel gradient reads: channel o's column p at
/// `values[o·stride + p]`, zero on the vectors' columns that are no output's (a gathered copy,
/// or a padded gradient read in place).
#[derive(Clone, Copy, Debug)]
pub struct GradInput<'a> {
    pub values: &'a [f32],
    pub stride: usize,
}

impl GradInput<'_> {
    /// Whether `c_out` rows of `reach` columns lie inside the values, none overlapping the next.
    fn holds(&self, c_out: usize, reach: usize) -> bool {
        let last = (c_out.checked_sub(1)).and_then(|o| o.checked_mul(self.stride));
        let end = last.and_then(|at| at.checked_add(reach));
        self.stride >= reach && end.is_some_and(|end| end <= self.values.len())
    }
}

/// Adds the tile's share of the kernel gradient to `sum [C_out, C_in, taps]`: for each tap k,
/// `Σ_p grad[o][p] · x[c][p + offsets[k]]` over the columns of the input's vectors. `false`
/// (nothing added) if a buffer is short.
pub fn weight_grad(
    isa: Isa,
    input: &TileInput,
    grad: GradInput,
    c_out: usize,
    sum: &mut [f32],
) -> bool {
    let lanes = isa.lanes();
    let Some(reach) = starts_reach(input.starts, input.cols, lanes) else {
        return false;
    };
    let taps = input.offsets.len();
    let fits = isa.here()
        && input.holds(reach)
        && grad.holds(c_out, reach)
        && sum.len() >= c_out * input.channels * taps;
    if !fits || input.cols == 0 || c_out == 0 {
        return false;
    }
    let far = input.offsets.iter().max().copied().unwrap_or(0);
    let (co, ci) = isa.grad_blocks();
    // Rows past the real channels read zeros (allocated only when there are such rows).
    let padded_rows = !c_out.is_multiple_of(co) || !input.channels.is_multiple_of(ci);
    let zeros = vec![0.0f32; if padded_rows { reach + far } else { 0 }];
    let g_rows: Vec<&[f32]> = (0..c_out.div_ceil(co) * co)
        .map(|o| match o < c_out {
            true => &grad.values[o * grad.stride..],
            false => &zeros[..],
        })
        .collect();
    let x_rows: Vec<&[f32]> = (0..input.channels.div_ceil(ci) * ci)
        .map(|c| match c < input.channels {
            true => &input.x[c * input.stride..],
            false => &zeros[..],
        })
        .collect();
    let runs_of_three = taps.is_multiple_of(3)
        && (input.offsets.chunks(3)).all(|r| r[1] == r[0] + 1 && r[2] == r[0] + 2);
    let rows = GradRows {
        g: &g_rows,
        x: &x_rows,
        offsets: input.offsets,
        starts: input.starts,
        runs_of_three,
    };
    let mut blocks = vec![0.0f32; g_rows.len() * x_rows.len() * taps];
    // SAFETY: every gradient row holds ≥ `reach` floats and every input row ≥ `reach + far`
    // (checked above; the zero rows are that long), the kernel reads up to `reach`
    // columns of each, and writes only `blocks` (all channel pairs × taps).
    unsafe {
        match isa {
            Isa::Avx512 => grad_avx512(&rows, &mut blocks),
            Isa::Avx2 => grad_avx2(&rows, &mut blocks),
        }
    }
    for o in 0..c_out {
        for c in 0..input.channels {
            for k in 0..taps {
                sum[(o * input.channels + c) * taps + k] +=
                    blocks[(o * x_rows.len() + c) * taps + k];
            }
        }
    }
    true
}

/// The rows the gradient kernel reads: output gradient and input rows (channel counts padded
/// to the block), the taps, and the columns as whole vectors.
struct GradRows<'a> {
    g: &'a [&'a [f32]],
    x: &'a [&'a [f32]],
    offsets: &'a [usize],
    /// The first columns of the vectors summed over.
    starts: &'a [usize],
    /// The taps come in runs of three consecutive offsets (a kernel row's).
    runs_of_three: bool,
}

/// The operations the kernels need from one vector instruction set.
trait Lanes {
    type V: Copy;
    const N: usize;
    unsafe fn zero() -> Self::V;
    unsafe fn load(p: *const f32) -> Self::V;
    unsafe fn splat(v: f32) -> Self::V;
    /// `a · b + c`.
    unsafe fn fma(a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    unsafe fn store(p: *mut f32, v: Self::V);
    /// Stores the first `n` lanes (n < N).
    unsafe fn store_first(p: *mut f32, v: Self::V, n: usize);
    unsafe fn sum(v: Self::V) -> f32;
}

#[cfg(target_arch = "x86_64")]
struct Avx512;

#[cfg(target_arch = "x86_64")]
impl Lanes for Avx512 {
    type V = __m512;
    const N: usize = 16;
    #[inline(always)]
    unsafe fn zero() -> __m512 {
        unsafe { _mm512_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m512 {
        unsafe { _mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> __m512 {
        unsafe { _mm512_set1_ps(v) }
    }
    #[inline(always)]
    unsafe fn fma(a: __m512, b: __m512, c: __m512) -> __m512 {
        unsafe { _mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m512) {
        unsafe { _mm512_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn store_first(p: *mut f32, v: __m512, n: usize) {
        unsafe { _mm512_mask_storeu_ps(p, ((1u32 << n) - 1) as __mmask16, v) }
    }
    #[inline(always)]
    unsafe fn sum(v: __m512) -> f32 {
        unsafe { _mm512_reduce_add_ps(v) }
    }
}

#[cfg(target_arch = "x86_64")]
struct Avx2;

#[cfg(target_arch = "x86_64")]
impl Lanes for Avx2 {
    type V = __m256;
    const N: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> __m256 {
        unsafe { _mm256_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> __m256 {
        unsafe { _mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> __m256 {
        unsafe { _mm256_set1_ps(v) }
    }
    #[inline(always)]
    unsafe fn fma(a: __m256, b: __m256, c: __m256) -> __m256 {
        unsafe { _mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: __m256) {
        unsafe { _mm256_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn store_first(p: *mut f32, v: __m256, n: usize) {
        let mut lanes = [0.0f32; 8];
        unsafe {
            _mm256_storeu_ps(lanes.as_mut_ptr(), v);
            std::ptr::copy_nonoverlapping(lanes.as_ptr(), p, n);
        }
    }
    #[inline(always)]
    unsafe fn sum(v: __m256) -> f32 {
        let mut lanes = [0.0f32; 8];
        unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
        lanes.iter().sum()
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn forward_avx512(input: &TileInput, kernel: &PackedKernel, out: &OutRows) {
    unsafe {
        forward_kernel::<Avx512, { AVX512_FORWARD.0 }, { AVX512_FORWARD.1 }>(input, kernel, out)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn forward_avx2(input: &TileInput, kernel: &PackedKernel, out: &OutRows) {
    unsafe { forward_kernel::<Avx2, { AVX2_FORWARD.0 }, { AVX2_FORWARD.1 }>(input, kernel, out) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn grad_avx512(rows: &GradRows, blocks: &mut [f32]) {
    unsafe {
        match rows.runs_of_three {
            true => grad_kernel::<Avx512, { AVX512_GRAD.0 }, AVX512_GRAD_RUNS, 3>(rows, blocks),
            false => grad_kernel::<Avx512, { AVX512_GRAD.0 }, { AVX512_GRAD.1 }, 1>(rows, blocks),
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn grad_avx2(rows: &GradRows, blocks: &mut [f32]) {
    unsafe {
        match rows.runs_of_three {
            true => grad_kernel::<Avx2, { AVX2_GRAD.0 }, AVX2_GRAD_RUNS, 3>(rows, blocks),
            false => grad_kernel::<Avx2, { AVX2_GRAD.0 }, { AVX2_GRAD.1 }, 1>(rows, blocks),
        }
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn forward_avx512(_: &TileInput, _: &PackedKernel, _: &OutRows) {}
#[cfg(not(target_arch = "x86_64"))]
unsafe fn forward_avx2(_: &TileInput, _: &PackedKernel, _: &OutRows) {}
#[cfg(not(target_arch = "x86_64"))]
unsafe fn grad_avx512(_: &GradRows, _: &mut [f32]) {}
#[cfg(not(target_arch = "x86_64"))]
unsafe fn grad_avx2(_: &GradRows, _: &mut [f32]) {}

/// Row o of `out` = `Σ_c Σ_k kernel[c][k][o] · x[c][p + offsets[k]]` on the columns of the
/// input's vectors, vector j stored at `out.at[j]`, `CB` output channels × `NV` vectors at a
/// time (a last group short of `NV` vectors computes its last vector again, and stores it
/// once).
///
/// Safety: `input` holds the last vector start plus `N` columns past every tap of every
/// channel, every start is below `cols`; `out` has `C_out'` rows of `out.len` writable floats
/// and a position below `out.len` per start; `C_out'` is a multiple of `CB`.
#[inline(always)]
unsafe fn forward_kernel<L: Lanes, const CB: usize, const NV: usize>(
    input: &TileInput,
    kernel: &PackedKernel,
    out: &OutRows,
) {
    let row = kernel.taps * kernel.c_out_padded;
    let (x, w) = (input.x.as_ptr(), kernel.values.as_ptr());
    for (group, at) in input.starts.chunks(NV).zip(out.at.chunks(NV)) {
        let from: [usize; NV] = std::array::from_fn(|j| group[j.min(group.len() - 1)]);
        for block in (0..kernel.c_out_padded).step_by(CB) {
            let mut acc = [[unsafe { L::zero() }; NV]; CB];
            for c in 0..kernel.c_in {
                let xc = unsafe { x.add(c * input.stride) };
                let wc = unsafe { w.add(c * row + block) };
                for (k, &offset) in input.offsets.iter().enumerate() {
                    let v: [L::V; NV] =
                        std::array::from_fn(|j| unsafe { L::load(xc.add(from[j] + offset)) });
                    let wk = unsafe { wc.add(k * kernel.c_out_padded) };
                    for (b, acc_b) in acc.iter_mut().enumerate() {
                        let s = unsafe { L::splat(*wk.add(b)) };
                        for j in 0..NV {
                            acc_b[j] = unsafe { L::fma(v[j], s, acc_b[j]) };
                        }
                    }
                }
            }
            for (b, acc_b) in acc.iter().enumerate() {
                let ob = out.rows[block + b];
                for (&v, &at) in acc_b.iter().zip(at) {
                    match at + L::N <= out.len {
                        true => unsafe { L::store(ob.add(at), v) },
                        false => unsafe { L::store_first(ob.add(at), v, out.len - at) },
                    }
                }
            }
        }
    }
}

/// `blocks [C_out', C_in', taps]`: for each tap and channel pair, `Σ_p g[o][p] · x[c][p +
/// offsets[k]]` over the columns of the vectors from `starts`, `CO × CI` channel pairs at a time, and `S` taps at
/// once where the taps come in runs of `S` consecutive offsets (a kernel row's three taps read
/// one input row shifted by one: loaded from memory once, then from the core's cache).
///
/// Safety: every `g` row holds the last start plus `N` floats, every `x` row that many past the largest
/// offset; the row counts are multiples of `CO` and `CI`; the taps are runs of `S` consecutive
/// offsets; `blocks` holds all pairs × taps.
#[inline(always)]
unsafe fn grad_kernel<L: Lanes, const CO: usize, const CI: usize, const S: usize>(
    rows: &GradRows,
    blocks: &mut [f32],
) {
    let taps = rows.offsets.len();
    let c_in = rows.x.len();
    for (run, &offset) in rows.offsets.iter().step_by(S).enumerate() {
        for ob in (0..rows.g.len()).step_by(CO) {
            let g: [*const f32; CO] = std::array::from_fn(|o| rows.g[ob + o].as_ptr());
            for cb in (0..c_in).step_by(CI) {
                let x: [*const f32; CI] =
                    std::array::from_fn(|c| unsafe { rows.x[cb + c].as_ptr().add(offset) });
                let mut acc = [[[unsafe { L::zero() }; S]; CI]; CO];
                for &at in rows.starts {
                    let gv: [L::V; CO] = std::array::from_fn(|o| unsafe { L::load(g[o].add(at)) });
                    for c in 0..CI {
                        let xv: [L::V; S] =
                            std::array::from_fn(|t| unsafe { L::load(x[c].add(at + t)) });
                        for o in 0..CO {
                            for t in 0..S {
                                acc[o][c][t] = unsafe { L::fma(gv[o], xv[t], acc[o][c][t]) };
                            }
                        }
                    }
                }
                for (o, acc_o) in acc.iter().enumerate() {
                    for (c, acc_c) in acc_o.iter().enumerate() {
                        for (t, &a) in acc_c.iter().enumerate() {
                            let k = run * S + t;
                            blocks[((ob + o) * c_in + cb + c) * taps + k] = unsafe { L::sum(a) };
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random value in [-1, 1).
    fn value(i: usize) -> f32 {
        let h = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        ((h >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// Runs of 7 columns every 10 (a grid's rows and their padding), up to `cols`.
    fn rows_with_gaps(cols: usize) -> Vec<(usize, usize)> {
        (0..cols)
            .step_by(10)
            .map(|s| (s, 7.min(cols - s)))
            .collect()
    }

    /// Both kernels, on every instruction set this CPU has, against plain loops: channel counts
    /// off the blocks (1, 3, 5, 9) and on them (8), column counts off the vectors, taps at
    /// scattered offsets and in runs of three, over all columns and over rows with gaps.
    #[test]
    fn the_kernels_match_plain_loops_on_every_instruction_set_here() {
        let scattered = [0usize, 1, 2, 7, 11, 40, 41, 63, 90];
        let runs = [0usize, 1, 2, 10, 11, 12, 88, 89, 90];
        let sizes = [(1, 1, 5), (3, 5, 47), (9, 8, 100), (5, 9, 16), (8, 8, 33)];
        for isa in Isa::available() {
            for ((c_in, c_out, cols), offsets) in
                sizes.into_iter().flat_map(|s| [(s, scattered), (s, runs)])
            {
                for columns in [vec![(0, cols)], rows_with_gaps(cols)] {
                    check_kernels(isa, [c_in, c_out, cols], &offsets, &columns);
                }
            }
        }
    }

    /// Both kernels on `columns` (runs) of `cols`, against plain loops.
    fn check_kernels(
        isa: Isa,
        [c_in, c_out, cols]: [usize; 3],
        offsets: &[usize],
        columns: &[(usize, usize)],
    ) {
        let covered = |p: usize| columns.iter().any(|&(s, n)| (s..s + n).contains(&p));
        let starts = vector_starts(columns.iter().copied(), isa.lanes());
        for p in 0..cols {
            let vectors = starts
                .iter()
                .filter(|&&s| (s..s + isa.lanes()).contains(&p))
                .count();
            assert!(
                vectors <= 1 && (vectors == 1 || !covered(p)),
                "{columns:?} {starts:?} {p}"
            );
        }
        let stride = cols + 90 + Isa::SLACK + 3;
        let x: Vec<f32> = (0..c_in * stride).map(value).collect();
        let input = TileInput {
            x: &x,
            stride,
            channels: c_in,
            offsets,
            cols,
            starts: &starts,
        };
        let taps = offsets.len();
        let w = |o: usize, c: usize, k: usize| value(1000 + (o * c_in + c) * taps + k);
        let kernel = PackedKernel::new(isa, [c_out, c_in, taps], w);
        let mut out = vec![f32::NAN; kernel.rows() * cols];
        assert!(forward(isa, &input, &kernel, &mut out));
        let g_stride = (starts.last().copied().unwrap_or(0) + isa.lanes()).max(cols);
        let grad: Vec<f32> = (0..c_out * g_stride)
            .map(|i| match covered(i % g_stride) && i % g_stride < cols {
                true => value(5000 + i),
                false => 0.0,
            })
            .collect();
        let mut sum = vec![0.5f32; c_out * c_in * taps];
        let rows = GradInput {
            values: &grad,
            stride: g_stride,
        };
        assert!(weight_grad(isa, &input, rows, c_out, &mut sum));
        for o in 0..c_out {
            for p in (0..cols).filter(|&p| covered(p)) {
                let want: f32 = (0..c_in * taps)
                    .map(|i| {
                        w(o, i / taps, i % taps) * x[i / taps * stride + p + offsets[i % taps]]
                    })
                    .sum();
                let got = out[o * cols + p];
                assert!(
                    (got - want).abs() < 1e-4,
                    "{isa:?} forward {o} {p}: {got} vs {want}"
                );
            }
            for i in 0..c_in * taps {
                let (c, k) = (i / taps, i % taps);
                let want: f32 = 0.5
                    + (0..cols)
                        .map(|p| grad[o * g_stride + p] * x[c * stride + p + offsets[k]])
                        .sum::<f32>();
                let got = sum[o * c_in * taps + i];
                assert!(
                    (got - want).abs() < 1e-3,
                    "{isa:?} grad {o} {i}: {got} vs {want}"
                );
            }
        }
    }

    /// Short buffers (and reaches past the address space) are refused, with nothing written.
    #[test]
    fn short_buffers_are_refused() {
        let Some(isa) = Isa::detect() else { return };
        let offsets = [0usize, 5];
        let x = vec![1.0f32; 20];
        let input = TileInput {
            x: &x,
            stride: 10,
            channels: 2,
            offsets: &offsets,
            cols: 8,
            starts: &[0],
        };
        let kernel = PackedKernel::new(isa, [1, 2, 2], |_, _, _| 1.0);
        let mut out = vec![7.0f32; kernel.rows() * 8];
        assert!(!forward(isa, &input, &kernel, &mut out));
        assert!(out.iter().all(|&v| v == 7.0));
        let grad = vec![1.0f32; 16];
        let grad = GradInput {
            values: &grad,
            stride: 16,
        };
        let mut sum = vec![0.0f32; 4];
        assert!(!weight_grad(isa, &input, grad, 1, &mut sum));
        assert!(sum.iter().all(|&v| v == 0.0));
        // A channel stride whose reach overflows is refused, not wrapped around.
        // (Three channels: (3 − 1)·stride wraps to 0.)
        let wrapping = TileInput {
            stride: usize::MAX / 2 + 1,
            channels: 3,
            ..input
        };
        let mut sum = vec![0.0f32; 6];
        assert!(!weight_grad(isa, &wrapping, grad, 1, &mut sum));
        assert!(sum.iter().all(|&v| v == 0.0));
        // Overlapping vectors, a vector past the columns, or none, are refused.
        let long = vec![1.0f32; 400];
        let mut out = vec![7.0f32; kernel.rows() * 8];
        for starts in [&[0usize, 4][..], &[8], &[]] {
            let bad = TileInput {
                x: &long,
                stride: 200,
                starts,
                ..input
            };
            assert!(!forward(isa, &bad, &kernel, &mut out), "{starts:?}");
            let mut sum = vec![0.0f32; 4];
            assert!(!weight_grad(isa, &bad, grad, 1, &mut sum), "{starts:?}");
        }
        assert!(out.iter().all(|&v| v == 7.0));
    }

    /// The stores into runs need one run per kernel row, of one length, and a position inside
    /// them for each vector; the gradient rows a vector each, none closer than a vector.
    #[test]
    fn runs_and_gradient_rows_are_checked() {
        let Some(isa) = Isa::detect() else { return };
        let (offsets, long) = ([0usize, 5], vec![1.0f32; 400]);
        let fine = TileInput {
            x: &long,
            stride: 200,
            channels: 2,
            offsets: &offsets,
            cols: 8,
            starts: &[0],
        };
        let kernel = PackedKernel::new(isa, [1, 2, 2], |_, _, _| 1.0);
        let rows = kernel.rows();
        let mut values = vec![MaybeUninit::new(7.0f32); rows * 8];
        let cases: [(usize, &[usize]); 3] = [(rows - 1, &[0]), (rows, &[8]), (rows, &[0, 1])];
        for (count, at) in cases {
            let mut runs: Vec<&mut [MaybeUninit<f32>]> = values.chunks_mut(8).take(count).collect();
            assert!(
                !forward_into_runs(isa, &fine, &kernel, &mut runs, at),
                "{count} {at:?}"
            );
        }
        // SAFETY: every value was initialised (7.0) and is read as written.
        assert!(values.iter().all(|v| unsafe { v.assume_init() } == 7.0));
        let mut runs: Vec<&mut [MaybeUninit<f32>]> = values.chunks_mut(8).collect();
        assert!(forward_into_runs(isa, &fine, &kernel, &mut runs, &[0]));
        let lanes = isa.lanes();
        let two = vec![1.0f32; 2 * lanes - 1];
        for (values, stride) in [(&two[..], lanes), (&long[..], lanes - 1)] {
            let mut sum = vec![0.0f32; 8];
            let grad = GradInput { values, stride };
            assert!(!weight_grad(isa, &fine, grad, 2, &mut sum), "{stride}");
            assert!(sum.iter().all(|&v| v == 0.0));
        }
        let mut sum = vec![0.0f32; 8];
        let grad = GradInput {
            values: &long,
            stride: lanes,
        };
        assert!(weight_grad(isa, &fine, grad, 2, &mut sum));
    }
}
