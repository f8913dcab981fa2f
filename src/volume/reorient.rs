//! Reorientation to the nearest RAS display layout, without resampling, and back.
//!
//! A volume stored in any axis order and direction (LPS, a sagittal PIR acquisition, an oblique
//! slab) is permuted and flipped so that voxel axis 0 points most nearly Right, axis 1 Anterior and
//! axis 2 Superior. Only whole axes move: no voxel value is interpolated, and the affine is adjusted
//! so every voxel keeps its world position. `Reorientation::restore` undoes it exactly, giving back
//! the original layout, affine and stored NIfTI geometry bit-for-bit, so a mask edited in display
//! layout is saved in the layout of the image it belongs to.

use super::{Affine, Volume, VolumeError};
use glam::{DMat3, DVec3};

/// Which stored voxel axis feeds each RAS display axis, and whether it runs backwards.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AxisMap {
    /// `source_axis[d]`: the stored axis that becomes display axis `d` (0 = R, 1 = A, 2 = S).
    pub source_axis: [usize; 3],
    /// `flip[d]`: whether the stored axis points the opposite way (L, P or I).
    pub flip: [bool; 3],
}

impl AxisMap {
    /// The identity map (the volume is already in RAS layout).
    pub fn identity() -> Self {
        Self {
            source_axis: [0, 1, 2],
            flip: [false; 3],
        }
    }

    /// The nearest RAS layout for an affine: greedily pair voxel axes with world axes by the
    /// largest absolute direction cosine, so each voxel axis is used once even when oblique.
    pub fn nearest_ras(affine: &Affine) -> Self {
        let lin: DMat3 = affine.linear();
        let cols = [lin.x_axis, lin.y_axis, lin.z_axis];
        let unit = |v: DVec3| {
            let n = v.length();
            if n > 0.0 {
                v / n
            } else {
                v
            }
        };
        let dirs = [unit(cols[0]), unit(cols[1]), unit(cols[2])];
        let mut used_vox = [false; 3];
        let mut used_world = [false; 3];
        let mut map = Self::identity();
        for _ in 0..3 {
            let mut best = (0usize, 0usize, -1.0f64);
            for (v, dir) in dirs.iter().enumerate() {
                for w in 0..3 {
                    if used_vox[v] || used_world[w] {
                        continue;
                    }
                    let c = dir[w].abs();
                    if c > best.2 {
                        best = (v, w, c);
                    }
                }
            }
            let (v, w, _) = best;
            used_vox[v] = true;
            used_world[w] = true;
            map.source_axis[w] = v;
            map.flip[w] = dirs[v][w] < 0.0;
        }
        map
    }

    /// The map that undoes this one: stored axis `s` takes back display axis `a` where
    /// `source_axis[a] == s`, with the same flip.
    pub fn inverse(&self) -> Self {
        let mut inv = Self::identity();
        for (a, (&s, &flip)) in self.source_axis.iter().zip(&self.flip).enumerate() {
            inv.source_axis[s] = a;
            inv.flip[s] = flip;
        }
        inv
    }

    /// Whether this map changes nothing.
    pub fn is_identity(&self) -> bool {
        *self == Self::identity()
    }
}

/// What `reorient_to_ras` did, enough to undo it exactly.
#[derive(Debug, Clone, PartialEq)]
pub struct Reorientation {
    /// The axis permutation and flips applied.
    pub map: AxisMap,
    /// Spatial dims of the volume as stored.
    pub source_dims: [usize; 3],
    /// The affine as stored.
    pub source_affine: Affine,
    /// The stored NIfTI geometry of the source, restored on the way back.
    pub source_geometry: Option<super::StoredGeometry>,
}

/// Permute and flip `vol` into the nearest RAS layout. Returns the display-layout volume (whose
/// affine maps its voxels to the same world positions) and the record needed to undo it.
pub fn reorient_to_ras<T: Copy>(vol: &Volume<T>) -> (Volume<T>, Reorientation) {
    let map = AxisMap::nearest_ras(vol.affine());
    let src_dims = vol.dims();
    let dst_spatial = [
        src_dims[map.source_axis[0]],
        src_dims[map.source_axis[1]],
        src_dims[map.source_axis[2]],
    ];
    // Display index d ↦ source index: src[source_axis[a]] = flip[a] ? n-1-d[a] : d[a].
    let lin = vol.affine().linear();
    let src_cols = [lin.x_axis, lin.y_axis, lin.z_axis];
    let mut new_cols = [DVec3::ZERO; 3];
    let mut origin = vol.affine().translation_mm();
    for ((col, &s), &flip) in new_cols.iter_mut().zip(&map.source_axis).zip(&map.flip) {
        if flip {
            *col = -src_cols[s];
            origin += src_cols[s] * (src_dims[s] as f64 - 1.0);
        } else {
            *col = src_cols[s];
        }
    }
    let new_affine = Affine::from_linear_translation(
        DMat3::from_cols(new_cols[0], new_cols[1], new_cols[2]),
        origin,
    );
    let data = permute(vol.data(), src_dims, &map);
    let dims = [dst_spatial[0], dst_spatial[1], dst_spatial[2], src_dims[3]];
    let out = Volume::from_parts(dims, new_affine, vol.time_step_s(), None, data);
    let record = Reorientation {
        map,
        source_dims: [src_dims[0], src_dims[1], src_dims[2]],
        source_affine: *vol.affine(),
        source_geometry: vol.stored_geometry().cloned(),
    };
    (out, record)
}

impl Reorientation {
    /// Undo the reorientation: `vol` (in display layout, same dims as produced) goes back to
    /// the stored layout, with the original affine and stored geometry.
    pub fn restore<T: Copy>(&self, vol: &Volume<T>) -> Result<Volume<T>, VolumeError> {
        let d = vol.dims();
        let expect = [
            self.source_dims[self.map.source_axis[0]],
            self.source_dims[self.map.source_axis[1]],
            self.source_dims[self.map.source_axis[2]],
        ];
        if [d[0], d[1], d[2]] != expect {
            return Err(VolumeError::Shape(format!(
                "cannot restore orientation: volume is {}×{}×{}, expected {}×{}×{}",
                d[0], d[1], d[2], expect[0], expect[1], expect[2]
            )));
        }
        let data = permute(vol.data(), d, &self.map.inverse());
        let [nx, ny, nz] = self.source_dims;
        Ok(Volume::from_parts(
            [nx, ny, nz, d[3]],
            self.source_affine,
            vol.time_step_s(),
            self.source_geometry.clone(),
            data,
        ))
    }
}

fn permute<T: Copy>(src: &[T], src_dims: [usize; 4], map: &AxisMap) -> Vec<T> {
    let dst = [
        src_dims[map.source_axis[0]],
        src_dims[map.source_axis[1]],
        src_dims[map.source_axis[2]],
    ];
    let stride = [1, src_dims[0], src_dims[0] * src_dims[1]];
    let vol_len = src_dims[0] * src_dims[1] * src_dims[2];
    // Per display axis: start offset and (signed) step in the source array.
    let mut start = 0isize;
    let mut step = [0isize; 3];
    for ((st, &s), &flip) in step.iter_mut().zip(&map.source_axis).zip(&map.flip) {
        if flip {
            start += ((src_dims[s] - 1) * stride[s]) as isize;
            *st = -(stride[s] as isize);
        } else {
            *st = stride[s] as isize;
        }
    }
    let mut out = Vec::with_capacity(src.len());
    for t in 0..src_dims[3] {
        let base = (t * vol_len) as isize + start;
        for k in 0..dst[2] {
            for j in 0..dst[1] {
                let row = base + k as isize * step[2] + j as isize * step[1];
                for i in 0..dst[0] {
                    out.push(src[(row + i as isize * step[0]) as usize]);
                }
            }
        }
    }
    out
}
