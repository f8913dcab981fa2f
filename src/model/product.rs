//! Matrix products of the CPU backend's own operations (1×1×1 convolutions, upsampling),
//! written straight into buffers they own by the `gemm` crate (the product burn-flex itself
//! calls). burn-flex's `float_matmul` allocates each output as zeroed bytes and copies them
//! to align them — two passes over every output, on one core, before the product writes it —
//! and a product summed over items is a batch of products and a reduction.
//!
//! Invariants: every function checks that the slices it is given hold the matrices it reads
//! and writes (a panic names the mismatch: a caller's bug, never a file's); outputs are fully
//! written; sums over voxels are taken in f32 per range of [`VOXEL_RANGE`] voxels, then the
//! ranges summed in f32. Sums over voxels take the direct gradient kernel of
//! [`super::conv_simd`] where the convolutions do (gemm packed the strided transposed side
//! first: most of the product's time at these channel counts).

use rayon::prelude::*;

use super::conv::{direct_kernels, written};
use super::conv_simd::{self, GradInput, Isa, TileInput};

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

/// `w [m, k]` times each item of `x [items, k, voxels]`: `[items, m, voxels]`.
pub(super) fn per_item(w: Matrix, x: &[f32], items: usize, voxels: usize) -> Vec<f32> {
    let (m, k) = (w.rows, w.cols);
    assert_eq!(x.len(), items * k * voxels, "items of the wrong size");
    written(items * m * voxels, |out| {
        for (item, out) in out.chunks_exact_mut(m * voxels).enumerate() {
            let x = Matrix::rows(&x[item * k * voxels..], k, voxels, voxels);
            gemm_into(out.as_mut_ptr().cast(), out.len(), w, x);
        }
    })
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
