//! `SlicePlane`: where a view looks, in world millimetres, and the matrices that carry a view's
//! normalised device coordinates (NDC, -1..1 across the view) into a volume's texture coordinates.
//!
//! Axis conventions (RAS+ world, radiological display as in ITK-SNAP): axial views look from the
//! feet (screen right = patient left, screen up = anterior); coronal views look from the front
//! (screen right = patient left, up = superior); sagittal views have anterior on the left and
//! superior up (screen right = posterior).

use crate::volume::Affine;
use glam::{DMat4, DVec3, DVec4, Mat4};

/// The three standard orientations of a view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Orientation {
    /// Transverse plane (constant S).
    Axial,
    /// Frontal plane (constant A).
    Coronal,
    /// Side plane (constant R).
    Sagittal,
}

impl Orientation {
    /// All three, in display order.
    pub const ALL: [Orientation; 3] = [
        Orientation::Axial,
        Orientation::Coronal,
        Orientation::Sagittal,
    ];

    /// World directions of screen right and screen up, and the plane normal (the world axis the
    /// view steps along).
    pub fn axes(self) -> (DVec3, DVec3, DVec3) {
        match self {
            Orientation::Axial => (DVec3::NEG_X, DVec3::Y, DVec3::Z),
            Orientation::Coronal => (DVec3::NEG_X, DVec3::Z, DVec3::Y),
            Orientation::Sagittal => (DVec3::NEG_Y, DVec3::Z, DVec3::X),
        }
    }

    /// Index of the world axis the view's normal follows (0 = R, 1 = A, 2 = S).
    pub fn normal_axis(self) -> usize {
        match self {
            Orientation::Axial => 2,
            Orientation::Coronal => 1,
            Orientation::Sagittal => 0,
        }
    }
}

/// A rectangle of a plane in world space: the part of the world a view shows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlicePlane {
    /// World position (mm) shown at the view's centre.
    pub centre_mm: DVec3,
    /// Unit world direction of screen right.
    pub right: DVec3,
    /// Unit world direction of screen up.
    pub up: DVec3,
    /// Half the view's width and height, in mm.
    pub half_extent_mm: [f64; 2],
}

impl SlicePlane {
    /// A standard plane through `centre_mm`, showing `half_extent_mm` either side.
    pub fn new(orientation: Orientation, centre_mm: DVec3, half_extent_mm: [f64; 2]) -> Self {
        let (right, up, _) = orientation.axes();
        Self {
            centre_mm,
            right,
            up,
            half_extent_mm,
        }
    }

    /// World position (mm) of a point given in NDC.
    pub fn ndc_to_mm(&self, ndc: [f64; 2]) -> DVec3 {
        self.centre_mm
            + self.right * (ndc[0] * self.half_extent_mm[0])
            + self.up * (ndc[1] * self.half_extent_mm[1])
    }

    /// NDC of a world position projected onto the plane.
    pub fn mm_to_ndc(&self, pos_mm: DVec3) -> [f64; 2] {
        let d = pos_mm - self.centre_mm;
        [
            d.dot(self.right) / self.half_extent_mm[0],
            d.dot(self.up) / self.half_extent_mm[1],
        ]
    }

    /// The matrix taking `(ndc.x, ndc.y, 0, 1)` to texture coordinates of a volume with this
    /// voxel→world affine and these dims (voxel `i` spans `[i, i+1) / n`). `None` for a singular
    /// affine.
    pub fn tex_from_ndc(&self, affine: &Affine, dims: [usize; 3]) -> Option<Mat4> {
        let vox_from_mm = affine.inverse()?.to_mat4();
        let mm_from_ndc = DMat4::from_cols(
            (self.right * self.half_extent_mm[0]).extend(0.0),
            (self.up * self.half_extent_mm[1]).extend(0.0),
            DVec4::ZERO,
            self.centre_mm.extend(1.0),
        );
        let n = DVec3::new(dims[0] as f64, dims[1] as f64, dims[2] as f64);
        // Voxel centre i sits at texture coordinate (i + 0.5) / n.
        let tex_from_vox =
            DMat4::from_scale(DVec3::ONE / n) * DMat4::from_translation(DVec3::splat(0.5));
        Some((tex_from_vox * vox_from_mm * mm_from_ndc).as_mat4())
    }
}
