//! `Affine`: the 4×4 voxel→world (mm) transform of a volume.
//!
//! World space is RAS+ scanner space in millimetres, as in NIfTI: `pos_mm = A · [idx_vox, 1]`.
//! Voxel indices are `(i, j, k)` along the stored axes of the volume. An `Affine` may be oblique
//! (rotated relative to the world axes) or even sheared; nothing here assumes it is diagonal.

use glam::{DMat3, DMat4, DVec3, DVec4};
use serde::{Deserialize, Serialize};

/// A NIfTI qform: a rotation (quaternion `b, c, d`; `a ≥ 0` implied), an offset, the voxel
/// spacing and `qfac` (−1 mirrors the third axis).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Qform {
    /// `quatern_b, quatern_c, quatern_d`.
    pub quatern_bcd: [f64; 3],
    /// `qoffset_x, y, z` (mm).
    pub offset_mm: [f64; 3],
    /// `pixdim[1..=3]` (mm).
    pub spacing_mm: [f64; 3],
    /// `pixdim[0]`: ±1.
    pub qfac: f64,
}

/// A 4×4 voxel→world transform in millimetres; the last row is always `[0, 0, 0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Affine {
    rows: [[f64; 4]; 4],
}

impl Default for Affine {
    fn default() -> Self {
        Self::identity()
    }
}

impl Affine {
    /// The identity: voxel `(i, j, k)` sits at `(i, j, k)` mm.
    pub fn identity() -> Self {
        Self::from_spacing([1.0; 3])
    }

    /// A diagonal affine with the given voxel spacing (mm) and the origin at voxel 0.
    pub fn from_spacing(spacing_mm: [f64; 3]) -> Self {
        let mut rows = [[0.0; 4]; 4];
        for (a, s) in spacing_mm.iter().enumerate() {
            rows[a][a] = *s;
        }
        rows[3][3] = 1.0;
        Self { rows }
    }

    /// Build from the first three rows (as NIfTI's `srow_x/y/z`); the last row is `[0,0,0,1]`.
    pub fn from_rows3(rows3: [[f64; 4]; 3]) -> Self {
        Self {
            rows: [rows3[0], rows3[1], rows3[2], [0.0, 0.0, 0.0, 1.0]],
        }
    }

    /// Build from a 3×3 linear part (columns = world direction × spacing of each voxel axis)
    /// and a translation (world position of voxel `(0, 0, 0)`).
    pub fn from_linear_translation(linear: DMat3, translation_mm: DVec3) -> Self {
        let m = DMat4::from_cols(
            linear.x_axis.extend(0.0),
            linear.y_axis.extend(0.0),
            linear.z_axis.extend(0.0),
            translation_mm.extend(1.0),
        );
        Self::from_mat4(m)
    }

    /// Build from a NIfTI qform: quaternion `(b, c, d)`, offset, spacing and `qfac` (±1).
    pub fn from_qform(
        quatern_bcd: [f64; 3],
        offset_mm: [f64; 3],
        spacing_mm: [f64; 3],
        qfac: f64,
    ) -> Self {
        let [b, c, d] = quatern_bcd;
        let a2 = 1.0 - (b * b + c * c + d * d);
        // Rounding can push a² slightly negative; the NIfTI reference code then renormalises.
        let (a, b, c, d) = if a2 < 1.0e-7 {
            let n = (b * b + c * c + d * d).sqrt();
            (0.0, b / n, c / n, d / n)
        } else {
            (a2.sqrt(), b, c, d)
        };
        let r = [
            [
                a * a + b * b - c * c - d * d,
                2.0 * (b * c - a * d),
                2.0 * (b * d + a * c),
            ],
            [
                2.0 * (b * c + a * d),
                a * a + c * c - b * b - d * d,
                2.0 * (c * d - a * b),
            ],
            [
                2.0 * (b * d - a * c),
                2.0 * (c * d + a * b),
                a * a + d * d - c * c - b * b,
            ],
        ];
        let qfac = if qfac < 0.0 { -1.0 } else { 1.0 };
        let scale = [spacing_mm[0], spacing_mm[1], spacing_mm[2] * qfac];
        let mut rows3 = [[0.0; 4]; 3];
        for row in 0..3 {
            for col in 0..3 {
                rows3[row][col] = r[row][col] * scale[col];
            }
            rows3[row][3] = offset_mm[row];
        }
        Self::from_rows3(rows3)
    }

    /// The rows of the matrix, row-major.
    pub fn rows(&self) -> [[f64; 4]; 4] {
        self.rows
    }

    /// As a glam matrix (column-major).
    pub fn to_mat4(&self) -> DMat4 {
        DMat4::from_cols_array_2d(&self.rows).transpose()
    }

    /// From a glam matrix (column-major); the last row is forced to `[0,0,0,1]`.
    pub fn from_mat4(m: DMat4) -> Self {
        let t = m.transpose().to_cols_array_2d();
        Self::from_rows3([t[0], t[1], t[2]])
    }

    /// The 3×3 linear part: column `a` is the world step (mm) of one voxel along axis `a`.
    pub fn linear(&self) -> DMat3 {
        let m = self.to_mat4();
        DMat3::from_cols(
            m.x_axis.truncate(),
            m.y_axis.truncate(),
            m.z_axis.truncate(),
        )
    }

    /// World position (mm) of voxel `(0, 0, 0)`.
    pub fn translation_mm(&self) -> DVec3 {
        DVec3::new(self.rows[0][3], self.rows[1][3], self.rows[2][3])
    }

    /// World position (mm) of a (possibly fractional) voxel index.
    pub fn vox_to_mm(&self, idx_vox: DVec3) -> DVec3 {
        (self.to_mat4() * DVec4::new(idx_vox.x, idx_vox.y, idx_vox.z, 1.0)).truncate()
    }

    /// The inverse (world mm → voxel index), or `None` when the affine is singular or not finite.
    pub fn inverse(&self) -> Option<Affine> {
        if !self.is_finite() {
            return None;
        }
        let lin = self.linear();
        let det = lin.determinant();
        let scale = self.spacing_mm().iter().product::<f64>();
        let invertible = det.abs() > 1.0e-12 * scale.max(f64::MIN_POSITIVE);
        if !invertible || scale == 0.0 {
            return None;
        }
        Some(Self::from_mat4(self.to_mat4().inverse()))
    }

    /// Voxel index (fractional) of a world position, or `None` for a singular affine.
    pub fn mm_to_vox(&self, pos_mm: DVec3) -> Option<DVec3> {
        self.inverse().map(|inv| inv.vox_to_mm(pos_mm))
    }

    /// Voxel spacing (mm): the length of each column of the linear part.
    pub fn spacing_mm(&self) -> [f64; 3] {
        let l = self.linear();
        [l.x_axis.length(), l.y_axis.length(), l.z_axis.length()]
    }

    /// Whether every element is finite.
    pub fn is_finite(&self) -> bool {
        self.rows.iter().flatten().all(|v| v.is_finite())
    }

    /// Compose: `self ∘ other` (apply `other` first).
    pub fn compose(&self, other: &Affine) -> Affine {
        Self::from_mat4(self.to_mat4() * other.to_mat4())
    }

    /// The largest absolute element-wise difference to another affine.
    pub fn max_abs_diff(&self, other: &Affine) -> f64 {
        self.rows
            .iter()
            .flatten()
            .zip(other.rows.iter().flatten())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max)
    }

    /// The orientation code (as nibabel's `aff2axcodes`): for each voxel axis, the world
    /// direction it points to most, as one of `R/L`, `A/P`, `S/I`; e.g. `"RAS"`, `"LPI"`, `"PIR"`.
    pub fn orientation_code(&self) -> String {
        let map = super::reorient::AxisMap::nearest_ras(self);
        let mut code = [' '; 3];
        for (ras_axis, (&src, &flip)) in map.source_axis.iter().zip(map.flip.iter()).enumerate() {
            let letters = [('R', 'L'), ('A', 'P'), ('S', 'I')][ras_axis];
            code[src] = if flip { letters.1 } else { letters.0 };
        }
        code.iter().collect()
    }

    /// Whether the axes are orthogonal (a rigid rotation times a scaling, possibly mirrored).
    pub fn is_orthogonal(&self, tol: f64) -> bool {
        let l = self.linear();
        let s = self.spacing_mm();
        if s.iter().any(|v| *v <= 0.0) {
            return false;
        }
        let c = [l.x_axis / s[0], l.y_axis / s[1], l.z_axis / s[2]];
        c[0].dot(c[1]).abs() < tol && c[0].dot(c[2]).abs() < tol && c[1].dot(c[2]).abs() < tol
    }

    /// Decompose into a NIfTI qform; `None` when the axes are not orthogonal (a sheared affine
    /// has no qform).
    pub fn to_qform(&self) -> Option<Qform> {
        if !self.is_orthogonal(1.0e-4) {
            return None;
        }
        let l = self.linear();
        let s = self.spacing_mm();
        let mut cols = [l.x_axis / s[0], l.y_axis / s[1], l.z_axis / s[2]];
        let qfac = if DMat3::from_cols(cols[0], cols[1], cols[2]).determinant() < 0.0 {
            cols[2] = -cols[2];
            -1.0
        } else {
            1.0
        };
        let r = DMat3::from_cols(cols[0], cols[1], cols[2]);
        let q = glam::DQuat::from_mat3(&r).normalize();
        // NIfTI stores b, c, d with a = sqrt(1 - b² - c² - d²) ≥ 0.
        let q = if q.w < 0.0 { -q } else { q };
        let t = self.translation_mm();
        Some(Qform {
            quatern_bcd: [q.x, q.y, q.z],
            offset_mm: [t.x, t.y, t.z],
            spacing_mm: s,
            qfac,
        })
    }
}
