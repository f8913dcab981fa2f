//! Matrix products of the CPU backend's own operations (1×1×1 convolutions, upsampling),
//! written straight into buffers they own by the `gemm` crate (the product burn-flex itself
//! calls). burn-flex's `float_matmul` allocates each output as zeroed bytes and copies them
//! to align them — two passes over every output, on one core, before the product writes it —
//! and a product summed over items is a batch of products and a reduction.
//!
//! Invariants: every function checks that the slices it is given hold the matrices it reads
//! and writes (a panic names the mismatch: a caller's bug, never a file's); outputs are fully
//! written; sums over voxels are taken in f32 per range of [`VOXEL_RANGE`] voxels, then the
//! ranges summed in f32. Where the convolutions take the direct kernels of
//! [`super::conv_simd`], so do these products (as one tap at offset 0): at these channel counts
//! gemm spent most of its time packing, above all the strided transposed side of a sum.

use rayon::prelude::*;

use super::conv::{direct_kernels, written};
use super::conv_simd::{self, GradInput, Isa, PackedKernel, TileInput};
use std::mem::MaybeUninit;

/// Voxels per range of a product summed over voxels (each range one task).
const VOXEL_RANGE: usize = 4096;

/// Products of at least this many multiply-adds use all cores inside `gemm`.
const PARALLEL_MACS: usize = 1 << 18;

/// A `[rows, cols]` view into a slice: element `(r, c)` at `r·row_stride + c·col_stride`.
#[derive(Clone, Copy, Debug)]
pub(super) struct Matrix<'a> {
    values: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> Matrix<'a> {
    /// `values` as a row-major `[rows, cols]` matrix whose rows are `row_stride` apart.
    pub(super) fn rows(values: &'a [f32], rows: usize, cols: usize, row_stride: usize) -> Self {
        let m = Self {
            values,
            rows,
            cols,
            row_stride,
            col_stride: 1,
        };
        assert!(
            m.extent() <= values.len(),
            "matrix {rows}×{cols} past its values"
        );
        m
    }

    /// Element `(r, c)`.
    fn at(&self, r: usize, c: usize) -> f32 {
        self.values[r * self.row_stride + c * self.col_stride]
    }

    /// The same values read as the transposed matrix.
    pub(super) fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// One past the last element read.
    fn extent(&self) -> usize {
        match self.rows * self.cols {
            0 => 0,
            _ => (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride + 1,
        }
    }
}

/// `out [m, n]` (row-major, `out_len` floats from `out`) = `a [m, k] × b [k, n]`.
fn gemm_into(out: *mut f32, out_len: usize, a: Matrix, b: Matrix) {
    assert_eq!(
        a.cols, b.rows,
        "product of {}×{} and {}×{}",
        a.rows, a.cols, b.rows, b.cols
    );
    assert_eq!(out_len, a.rows * b.cols, "product output of the wrong size");
    let macs = a.rows * a.cols * b.cols;
    let parallelism = match macs >= PARALLEL_MACS {
        true => gemm::Parallelism::Rayon(0),
        false => gemm::Parallelism::None,
    };
    let stride = |s: usize| s as isize;
    // SAFETY: `a` and `b` lie within their slices (checked when they were made); `out` holds
    // `m·n` floats, row-major (checked above); with `read_dst` false gemm only writes `out`.
    unsafe {
        gemm::gemm(
            a.rows,
            b.cols,
            a.cols,
            out,
            1,
            stride(b.cols),
            false,
            a.values.as_ptr(),
            stride(a.col_stride),
            stride(a.row_stride),
            b.values.as_ptr(),
            stride(b.col_stride),
            stride(b.row_stride),
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}

/// `w [m, k]` times each item of `x [items, k, voxels]`: `[items, m, voxels]` (by the direct
/// kernel where this thread takes the direct kernels, else gemm).
pub(super) fn per_item(w: Matrix, x: &[f32], items: usize, voxels: usize) -> Vec<f32> {
    let (m, k) = (w.rows, w.cols);
    assert_eq!(x.len(), items * k * voxels, "items of the wrong size");
    let isa = direct_kernels().filter(|_| items * voxels * m > 0);
    if let Some(isa) = isa {
        return per_item_by_kernel(isa, w, x, items, voxels);
    }
    written(items * m * voxels, |out| {
        for (item, out) in out.chunks_exact_mut(m * voxels).enumerate() {
            let x = Matrix::rows(&x[item * k * voxels..], k, voxels, voxels);
            gemm_into(out.as_mut_ptr().cast(), out.len(), w, x);
        }
    })
}

/// [`per_item`] by the direct forward kernel (one tap at offset 0): ranges of
/// [`VOXEL_RANGE`] voxels of each item in parallel, each writing its run of every output
/// channel. `items`, `voxels` and `w`'s rows are not zero.
fn per_item_by_kernel(isa: Isa, w: Matrix, x: &[f32], items: usize, voxels: usize) -> Vec<f32> {
    let (m, k) = (w.rows, w.cols);
    let kernel = PackedKernel::new(isa, [m, k, 1], |o, c, _| w.at(o, c));
    let ranges = voxels.div_ceil(VOXEL_RANGE);
    written(items * m * voxels, |out| {
        let mut regions: Vec<Vec<&mut [MaybeUninit<f32>]>> =
            (0..items * ranges).map(|_| Vec::with_capacity(m)).collect();
        for (row, values) in out.chunks_mut(voxels).enumerate() {
            for (r, run) in values.chunks_mut(VOXEL_RANGE).enumerate() {
                regions[row / m * ranges + r].push(run);
            }
        }
        regions.par_iter_mut().enumerate().for_each(|(t, runs)| {
            let (item, start) = (t / ranges, t % ranges * VOXEL_RANGE);
            let x = &x[item * k * voxels + start..];
            range_product(isa, &kernel, w, (x, voxels), runs);
        });
    })
}

/// One range's product written over `runs` (one per output channel, each the range's
/// length), `x` holding the range's first column of each of `w`'s input channels, `voxels`
/// apart: the direct kernel over whole vectors (should it refuse, plain sums), the last
/// columns short of a vector plainly.
fn range_product(
    isa: Isa,
    kernel: &PackedKernel,
    w: Matrix,
    (x, voxels): (&[f32], usize),
    runs: &mut [&mut [MaybeUninit<f32>]],
) {
    let len = runs.first().map_or(0, |r| r.len());
    let body = len / isa.lanes() * isa.lanes();
    let starts: Vec<usize> = (0..body).step_by(isa.lanes()).collect();
    let input = TileInput {
        x,
        stride: voxels,
        channels: w.cols,
        offsets: &[0],
        cols: body,
        starts: &starts,
    };
    let mut product = vec![0.0f32; kernel.rows() * body];
    let by_kernel = body > 0 && conv_simd::forward(isa, &input, kernel, &mut product);
    let plain_from = if by_kernel { body } else { 0 };
    for (o, run) in runs.iter_mut().enumerate() {
        let (head, tail) = run.split_at_mut(plain_from);
        for (dst, &v) in head.iter_mut().zip(&product[o * body..]) {
            dst.write(v);
        }
        for (v, dst) in (plain_from..).zip(tail) {
            dst.write((0..w.cols).map(|c| w.at(o, c) * x[c * voxels + v]).sum());
        }
    }
}

/// `Σ_items a_i [p, voxels] × b_iᵀ [voxels, q]` = `[p, q]`, for `a [items, p, voxels]` and
/// `b [items, q, voxels]`: ranges of voxels in parallel, each its own product (by the direct
/// gradient kernel where this thread takes the direct kernels, else gemm), then summed.
pub(super) fn sum_over_voxels(
    a: &[f32],
    b: &[f32],
    items: usize,
    (p, q): (usize, usize),
) -> Vec<f32> {
    let voxels = a.len().checked_div(items * p).unwrap_or(0);
    assert_eq!(a.len(), items * p * voxels, "left side of the wrong size");
    assert_eq!(b.len(), items * q * voxels, "right side of the wrong size");
    let ranges: Vec<(usize, usize)> = (0..items)
        .flat_map(|item| (0..voxels).step_by(VOXEL_RANGE).map(move |v| (item, v)))
        .collect();
    let isa = direct_kernels();
    ranges
        .par_iter()
        .map(|&(item, start)| {
            let len = VOXEL_RANGE.min(voxels - start);
            let a = Matrix::rows(&a[item * p * voxels + start..], p, len, voxels);
            let b = Matrix::rows(&b[item * q * voxels + start..], q, len, voxels);
            let direct = isa.and_then(|isa| range_by_kernel(isa, a, b));
            direct.unwrap_or_else(|| {
                let mut part = vec![0.0f32; p * q];
                gemm_into(part.as_mut_ptr(), part.len(), a, b.t());
                part
            })
        })
        .reduce(
            || vec![0.0f32; p * q],
            |mut sum, part| {
                sum.iter_mut().zip(&part).for_each(|(s, v)| *s += v);
                sum
            },
        )
}

/// `a [p, len] × bᵀ [len, q]` (rows of unit column stride) by the direct gradient kernel (as
/// one tap at offset 0) over whole vectors, the last `len mod lanes` columns summed plainly;
/// `None` if the kernel refuses.
fn range_by_kernel(isa: Isa, a: Matrix, b: Matrix) -> Option<Vec<f32>> {
    let (p, q, len) = (a.rows, b.rows, a.cols);
    let body = len / isa.lanes() * isa.lanes();
    let unit = a.col_stride == 1 && b.col_stride == 1 && b.cols == len && body > 0;
    let starts: Vec<usize> = (0..body).step_by(isa.lanes()).collect();
    let input = TileInput {
        x: b.values,
        stride: b.row_stride,
        channels: q,
        offsets: &[0],
        cols: body,
        starts: &starts,
    };
    let grad = GradInput {
        values: a.values,
        stride: a.row_stride,
    };
    let mut sum = vec![0.0f32; p * q];
    if !(unit && conv_simd::weight_grad(isa, &input, grad, p, &mut sum)) {
        return None;
    }
    for (i, s) in sum.iter_mut().enumerate() {
        let (a_row, b_row) = (
            &a.values[i / q * a.row_stride..],
            &b.values[i % q * b.row_stride..],
        );
        *s += (body..len).map(|v| a_row[v] * b_row[v]).sum::<f32>();
    }
    Some(sum)
}
