//! Resampling a volume onto another grid through world coordinates: trilinear for intensities;
//! for labels the nearest voxel, or the label of largest trilinear weight (each label's
//! indicator interpolated, nnU-Net's way of resampling a segmentation: its boundary is the
//! half-way surface between the source voxels, not a staircase of whichever source voxel lies
//! nearest), optionally keeping an object that rule would erase whole at its nearest voxels;
//! and the grid of a volume at another voxel spacing (same orientation and field of view), for
//! training at a fixed spacing and mapping predictions back.
//!
//! Invariants: every output voxel takes the value at its centre's world position (but for the
//! voxels of a kept object); outside the source grid the value is 0; 4D volumes are resampled
//! frame by frame; on the source's own grid every label resampling is the identity.

use super::{Affine, Volume, VolumeError};
use glam::DVec3;

/// The grid covering the same field of view as `(dims, affine)` with voxels of `spacing_mm`
/// along the same voxel axes: its dims and affine.
pub fn grid_with_spacing(
    dims: [usize; 3],
    affine: &Affine,
    spacing_mm: [f64; 3],
) -> ([usize; 3], Affine) {
    let current = affine.spacing_mm();
    let factor: [f64; 3] = [0, 1, 2].map(|a| {
        if spacing_mm[a] > 0.0 {
            spacing_mm[a] / current[a]
        } else {
            1.0
        }
    });
    let new_dims = [0, 1, 2].map(|a| ((dims[a] as f64 / factor[a]).round() as usize).max(1));
    // New voxel i' has its centre at old index (i' + 0.5)·f − 0.5.
    let scale = glam::DMat3::from_diagonal(DVec3::from_array(factor));
    let shift = DVec3::from_array(factor.map(|f| 0.5 * f - 0.5));
    let linear = affine.linear() * scale;
    let translation = affine.vox_to_mm(shift);
    (
        new_dims,
        Affine::from_linear_translation(linear, translation),
    )
}

/// How values are read between voxel centres.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Interpolation {
    /// The nearest voxel (labels).
    Nearest,
    /// Trilinear (intensities).
    Linear,
}

/// The map from the target grid's voxels (`target`: voxel→mm) to the source's (`source`).
fn target_to_source(source: &Affine, target: &Affine) -> Result<Affine, VolumeError> {
    Ok(source
        .inverse()
        .ok_or_else(|| VolumeError::Shape("the source affine is singular".into()))?
        .compose(target))
}

/// Resample `src` onto the grid `(dims, affine)`.
pub fn resample_to_grid(
    src: &Volume<f32>,
    dims: [usize; 3],
    affine: Affine,
    interpolation: Interpolation,
) -> Result<Volume<f32>, VolumeError> {
    let map = target_to_source(src.affine(), &affine)?;
    let [sx, sy, sz] = src.dims3();
    let nt = src.dims()[3];
    let n_src = src.frame_len();
    let n = dims[0] * dims[1] * dims[2];
    let mut out = vec![0f32; n * nt];
    let at = |frame: &[f32], i: i64, j: i64, k: i64| -> f32 {
        if i < 0 || j < 0 || k < 0 || i >= sx as i64 || j >= sy as i64 || k >= sz as i64 {
            0.0
        } else {
            frame[i as usize + sx * (j as usize + sy * k as usize)]
        }
    };
    for t in 0..nt {
        let frame = &src.data()[t * n_src..(t + 1) * n_src];
        let dst = &mut out[t * n..(t + 1) * n];
        for k in 0..dims[2] {
            for j in 0..dims[1] {
                for i in 0..dims[0] {
                    let p = map.vox_to_mm(DVec3::new(i as f64, j as f64, k as f64));
                    let v = match interpolation {
                        Interpolation::Nearest => {
                            let r = p.round();
                            at(frame, r.x as i64, r.y as i64, r.z as i64)
                        }
                        Interpolation::Linear => trilinear(frame, [sx, sy, sz], p),
                    };
                    dst[i + dims[0] * (j + dims[1] * k)] = v;
                }
            }
        }
    }
    Volume::new([dims[0], dims[1], dims[2], nt], affine, out)
}

/// The 8 source voxels around voxel position `p_vox` on a grid of `dims` (i fastest): each
/// corner's trilinear weight and its index, `None` outside the grid.
fn trilinear_corners(dims: [usize; 3], p_vox: DVec3) -> [(f64, Option<usize>); 8] {
    let f = p_vox.floor();
    let w = p_vox - f;
    std::array::from_fn(|c| {
        let d = [c & 1, (c >> 1) & 1, (c >> 2) & 1];
        let wt = (0..3)
            .map(|a| if d[a] == 1 { w[a] } else { 1.0 - w[a] })
            .product::<f64>();
        let at = [0, 1, 2].map(|a| f[a] as i64 + d[a] as i64);
        let inside = (0..3).all(|a| at[a] >= 0 && at[a] < dims[a] as i64);
        let index = || at[0] as usize + dims[0] * (at[1] as usize + dims[1] * at[2] as usize);
        (wt, inside.then(index))
    })
}

/// The trilinear value of one frame (`dims`, i fastest) at voxel position `p_vox`; corners
/// outside the grid count as 0.
pub fn trilinear(frame: &[f32], dims: [usize; 3], p_vox: DVec3) -> f32 {
    let mut v = 0.0f64;
    for (wt, index) in trilinear_corners(dims, p_vox) {
        if let Some(i) = index.filter(|_| wt > 0.0) {
            v += wt * f64::from(frame[i]);
        }
    }
    v as f32
}

/// Resample a label mask onto the grid `(dims, affine)`: each output voxel takes the label
/// whose indicator has the largest trilinear value at its centre (ties to the nearest corner's
/// label; corners outside the source count as label 0).
pub fn resample_labels_smooth(
    src: &Volume<u8>,
    dims: [usize; 3],
    affine: Affine,
) -> Result<Volume<u8>, VolumeError> {
    let map = target_to_source(src.affine(), &affine)?;
    let src_dims = src.dims3();
    let (nt, n_src) = (src.dims()[3], src.frame_len());
    let n = dims[0] * dims[1] * dims[2];
    let mut out = vec![0u8; n * nt];
    for t in 0..nt {
        let frame = &src.data()[t * n_src..(t + 1) * n_src];
        let dst = &mut out[t * n..(t + 1) * n];
        for (idx, v) in dst.iter_mut().enumerate() {
            let [i, j, k] = [
                idx % dims[0],
                (idx / dims[0]) % dims[1],
                idx / (dims[0] * dims[1]),
            ];
            let p = map.vox_to_mm(DVec3::new(i as f64, j as f64, k as f64));
            *v = majority_label(frame, src_dims, p);
        }
    }
    Volume::new([dims[0], dims[1], dims[2], nt], affine, out)
}

/// `resample_labels_smooth`, except that an object (a 6-connected region of one label) the
/// largest-weight rule erases entirely comes back at the output voxels nearest its voxels,
/// where those are background: a lesion of a voxel or two survives the way from a coarser grid
/// to a finer or shifted one, as it would by the nearest voxel. Only for 3D masks (a 4D one is
/// resampled smoothly alone).
pub fn resample_labels_keeping_objects(
    src: &Volume<u8>,
    dims: [usize; 3],
    affine: Affine,
) -> Result<Volume<u8>, VolumeError> {
    let out = resample_labels_smooth(src, dims, affine)?;
    if src.dims()[3] != 1 {
        return Ok(out);
    }
    let to_out = target_to_source(&affine, src.affine())?;
    let (src_dims, frame) = (src.dims3(), src.data());
    let mut data = out.into_data();
    let nearest_out = |s: usize| -> Option<usize> {
        let ijk = [
            s % src_dims[0],
            (s / src_dims[0]) % src_dims[1],
            s / (src_dims[0] * src_dims[1]),
        ];
        let p = to_out
            .vox_to_mm(DVec3::from_array(ijk.map(|v| v as f64)))
            .round();
        let inside = (0..3).all(|a| p[a] >= 0.0 && p[a] < dims[a] as f64);
        inside.then(|| p.x as usize + dims[0] * (p.y as usize + dims[1] * p.z as usize))
    };
    let regions =
        super::regions::connected_regions_by(src_dims, |i| (frame[i] != 0).then(|| frame[i]));
    for (label, region) in regions {
        let nearest: Vec<usize> = region.iter().filter_map(|s| nearest_out(*s)).collect();
        if nearest.iter().any(|t| data[*t] == label) {
            continue;
        }
        for t in nearest {
            if data[t] == 0 {
                data[t] = label;
            }
        }
    }
    Volume::new([dims[0], dims[1], dims[2], 1], affine, data)
}

/// The label of largest summed trilinear weight over the 8 source voxels around `p_vox`
/// (outside the grid: label 0), ties to the label of the heaviest corner.
fn majority_label(frame: &[u8], dims: [usize; 3], p_vox: DVec3) -> u8 {
    let mut corners =
        trilinear_corners(dims, p_vox).map(|(wt, index)| (wt, index.map_or(0, |i| frame[i])));
    // Heaviest corner first, so that a tie keeps its label.
    corners.sort_by(|a, b| b.0.total_cmp(&a.0));
    let total = |label: u8| -> f64 { corners.iter().filter(|c| c.1 == label).map(|c| c.0).sum() };
    let mut best = (total(corners[0].1), corners[0].1);
    for c in &corners[1..] {
        let t = total(c.1);
        if t > best.0 + 1e-9 {
            best = (t, c.1);
        }
    }
    best.1
}

/// Resample a label mask onto the grid `(dims, affine)` (nearest voxel).
pub fn resample_labels_to_grid(
    src: &Volume<u8>,
    dims: [usize; 3],
    affine: Affine,
) -> Result<Volume<u8>, VolumeError> {
    let as_f32 = src.map(f32::from);
    let r = resample_to_grid(&as_f32, dims, affine, Interpolation::Nearest)?;
    Ok(r.map(|v| v as u8))
}
