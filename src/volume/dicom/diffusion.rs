//! Diffusion encoding of DWI series: each volume's b-value (s/mm²) and gradient direction as the
//! files state them — the standard MR Diffusion attributes (top level, or an enhanced frame's
//! MR Diffusion Sequence), else Siemens' CSA image header (`B_value`,
//! `DiffusionGradientDirection`) — and FSL's `.bval` / `.bvec` text for a series' volume, as
//! dcm2niix writes it.
//!
//! Invariants: a direction is in DICOM's patient space (LPS) as read, unit length or zero (a
//! b = 0 or isotropic volume has none); a value that is not finite, a negative b-value or a
//! direction that is not a unit vector is ignored (the volume then has no encoding, and a series
//! with any volume lacking one gets no `.bval` / `.bvec`). The `.bvec` vectors are relative to
//! the image's voxel axes, with x negated when the voxel→world transform has a positive
//! determinant (FSL's convention, which dcm2niix, dipy and MRtrix share).

use super::super::Affine;
use super::InMemDicomObject;
use dicom_dictionary_std::tags;
use glam::DVec3;
use std::collections::BTreeMap;

/// One volume's diffusion encoding.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gradient {
    /// The b-value (s/mm²).
    pub b_value: f64,
    /// The gradient direction in patient space (LPS; unit, or zero when it has none).
    pub direction_lps: DVec3,
}

/// A b-value that reads as finite and non-negative.
fn b_value(v: Option<f64>) -> Option<f64> {
    v.filter(|b| b.is_finite() && *b >= 0.0 && *b < 1e6)
}

/// A direction of three finite numbers of unit length (zero when absent or not unit).
fn unit_or_zero(v: Option<Vec<f64>>) -> DVec3 {
    match v.as_deref() {
        Some([x, y, z]) => {
            let d = DVec3::new(*x, *y, *z);
            if d.is_finite() && (d.length() - 1.0).abs() < 0.01 {
                d.normalize()
            } else {
                DVec3::ZERO
            }
        }
        _ => DVec3::ZERO,
    }
}

fn floats(obj: &InMemDicomObject, tag: dicom_core::Tag) -> Option<Vec<f64>> {
    obj.element_opt(tag).ok()??.to_multi_float64().ok()
}

/// The standard attributes in `obj` (an image, or an MR Diffusion Sequence item).
fn standard(obj: &InMemDicomObject) -> Option<Gradient> {
    let b = b_value(floats(obj, tags::DIFFUSION_B_VALUE)?.first().copied())?;
    let direction = obj
        .element_opt(tags::DIFFUSION_GRADIENT_DIRECTION_SEQUENCE)
        .ok()
        .flatten()
        .and_then(|e| e.items())
        .and_then(|items| items.first())
        .and_then(|item| floats(item, tags::DIFFUSION_GRADIENT_ORIENTATION))
        .or_else(|| floats(obj, tags::DIFFUSION_GRADIENT_ORIENTATION));
    Some(Gradient {
        b_value: b,
        direction_lps: unit_or_zero(direction),
    })
}

/// A single-frame image's encoding: the standard attributes, else the CSA header's.
pub(super) fn of_image(
    obj: &InMemDicomObject,
    csa: Option<&BTreeMap<String, Vec<String>>>,
) -> Option<Gradient> {
    standard(obj).or_else(|| {
        let csa = csa?;
        let b = b_value(super::csa_number(csa, "B_value"))?;
        let direction = super::csa_vector(csa, "DiffusionGradientDirection");
        Some(Gradient {
            b_value: b,
            direction_lps: unit_or_zero(direction.map(|d| d.to_array().to_vec())),
        })
    })
}

/// An enhanced frame's encoding: its MR Diffusion Sequence (else the shared groups').
pub(super) fn of_frame(group: Option<&InMemDicomObject>) -> Option<Gradient> {
    standard(group?)
}

/// The distinct b-values of `gradients`, rounded to whole s/mm², in increasing order.
pub fn distinct_b_values(gradients: &[Gradient]) -> Vec<i64> {
    let mut bs: Vec<i64> = gradients.iter().map(|g| g.b_value.round() as i64).collect();
    bs.sort_unstable();
    bs.dedup();
    bs
}

/// "b = 0, 1000 s/mm²" for a diffusion series' volumes (empty for none).
pub fn b_values_label(gradients: &[Gradient]) -> String {
    if gradients.is_empty() {
        return String::new();
    }
    let bs: Vec<String> = distinct_b_values(gradients)
        .iter()
        .map(i64::to_string)
        .collect();
    format!("b = {} s/mm²", bs.join(", "))
}

/// A number as dcm2niix prints it in `.bval` / `.bvec` (six significant digits, no trailing
/// zeros).
fn fsl_number(v: f64) -> String {
    if v.abs() < 1e-9 {
        return "0".into();
    }
    let digits = (5 - v.abs().log10().floor() as i32).clamp(0, 12) as usize;
    let s = format!("{v:.digits$}");
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    };
    if s == "-0" {
        "0".into()
    } else {
        s
    }
}

/// Each gradient's direction relative to the voxel axes of `affine` (RAS+ voxel→world), x
/// negated for a positive determinant: FSL's `bvec` convention.
pub fn fsl_vectors(gradients: &[Gradient], affine: &Affine) -> Vec<DVec3> {
    let linear = affine.linear();
    let axes = [linear.x_axis, linear.y_axis, linear.z_axis].map(|a| a.normalize_or_zero());
    let x_sign = if linear.determinant() > 0.0 {
        -1.0
    } else {
        1.0
    };
    gradients
        .iter()
        .map(|g| {
            let d = g.direction_lps;
            let ras = DVec3::new(-d.x, -d.y, d.z);
            DVec3::new(
                x_sign * ras.dot(axes[0]),
                ras.dot(axes[1]),
                ras.dot(axes[2]),
            )
        })
        .collect()
}

/// The `.bval` and `.bvec` files' text for volumes with `gradients` on `affine`'s grid:
/// values separated by tabs, one line of b-values, three lines of vector components.
pub fn fsl_text(gradients: &[Gradient], affine: &Affine) -> (String, String) {
    let line = |vals: Vec<f64>| {
        let mut s = vals
            .into_iter()
            .map(fsl_number)
            .collect::<Vec<_>>()
            .join("\t");
        s.push('\n');
        s
    };
    let bval = line(gradients.iter().map(|g| g.b_value).collect());
    let vectors = fsl_vectors(gradients, affine);
    let bvec = (0..3)
        .map(|c| line(vectors.iter().map(|v| v[c]).collect()))
        .collect();
    (bval, bvec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_print_as_dcm2niix_prints_them() {
        assert_eq!(fsl_number(1000.0), "1000");
        assert_eq!(fsl_number(0.0), "0");
        assert_eq!(fsl_number(0.999_974_49), "0.999974");
        assert_eq!(fsl_number(-0.005_076_49), "-0.00507649");
        assert_eq!(fsl_number(-1e-12), "0");
    }

    #[test]
    fn a_radiological_grid_keeps_x_and_a_neurological_one_negates_it() {
        let g = [Gradient {
            b_value: 1000.0,
            direction_lps: DVec3::new(0.6, 0.8, 0.0),
        }];
        // LAS voxel axes (negative determinant): x along L, y along A.
        let las = Affine::from_linear_translation(
            glam::DMat3::from_diagonal(DVec3::new(-1.0, 1.0, 1.0)),
            DVec3::ZERO,
        );
        let v = fsl_vectors(&g, &las)[0];
        assert!((v - DVec3::new(0.6, -0.8, 0.0)).length() < 1e-12, "{v}");
        // RAS voxel axes (positive determinant): x component negated.
        let v = fsl_vectors(&g, &Affine::identity())[0];
        assert!((v - DVec3::new(0.6, -0.8, 0.0)).length() < 1e-12, "{v}");
    }
}
