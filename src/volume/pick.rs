//! Picking in a label mask: the first point along a world ray that lies in a voxel of a chosen
//! label — where a click on the 3D view lands on the surface drawn there.
//!
//! Invariants: knows no GPU and no UI; the ray is walked in voxel space from where it enters
//! the grid's box to where it leaves it, never more than `MAX_STEPS` samples; a voxel is tested
//! by nearest neighbour, and the returned point is on the boundary between the last voxel
//! outside and the first inside, to a hundredth of a voxel.

use super::Volume;
use glam::DVec3;

/// Samples per voxel along the ray.
const STEPS_PER_VOXEL: f64 = 4.0;
/// The most samples one ray takes (a 1024³ grid's diagonal at `STEPS_PER_VOXEL`).
const MAX_STEPS: usize = 8192;

/// Where the ray `origin_mm + t·dir` (t ≥ 0) enters and leaves the box around a grid of `dims`
/// voxels (voxel space: centres at integers), if it meets it.
fn clip_to_grid(origin_vox: DVec3, dir_vox: DVec3, dims: [usize; 3]) -> Option<(f64, f64)> {
    let (mut t0, mut t1) = (0.0f64, f64::INFINITY);
    for a in 0..3 {
        let (lo, hi) = (-0.5, dims[a] as f64 - 0.5);
        if dir_vox[a].abs() < 1e-12 {
            if origin_vox[a] < lo || origin_vox[a] > hi {
                return None;
            }
            continue;
        }
        let (ta, tb) = (
            (lo - origin_vox[a]) / dir_vox[a],
            (hi - origin_vox[a]) / dir_vox[a],
        );
        t0 = t0.max(ta.min(tb));
        t1 = t1.min(ta.max(tb));
    }
    (t0 <= t1 && t1.is_finite()).then_some((t0, t1))
}

/// Whether the voxel nearest `p_vox` holds a label `wanted` accepts.
fn hit_at(mask: &Volume<u8>, p_vox: DVec3, wanted: &impl Fn(u8) -> bool) -> bool {
    let r = p_vox.round();
    if r.min_element() < 0.0 {
        return false;
    }
    mask.get([r.x as usize, r.y as usize, r.z as usize])
        .is_some_and(|v| v != 0 && wanted(v))
}

/// The first point (world mm) along the ray from `origin_mm` in direction `dir` (world) that
/// lies in a voxel whose label `wanted` accepts, or `None` if the ray meets none.
pub fn first_labelled_along(
    mask: &Volume<u8>,
    origin_mm: DVec3,
    dir: DVec3,
    wanted: impl Fn(u8) -> bool,
) -> Option<DVec3> {
    let inverse = mask.affine().inverse()?;
    let origin_vox = inverse.vox_to_mm(origin_mm);
    let dir_vox = inverse.linear() * dir;
    let per_voxel = dir_vox.length();
    if !origin_vox.is_finite() || per_voxel.is_nan() || per_voxel <= 1e-12 {
        return None;
    }
    let (t0, t1) = clip_to_grid(origin_vox, dir_vox, mask.dims3())?;
    let step = 1.0 / (STEPS_PER_VOXEL * per_voxel);
    let steps = (((t1 - t0) / step).ceil() as usize).min(MAX_STEPS);
    let at = |t: f64| origin_vox + dir_vox * t;
    let mut before = t0;
    for i in 0..=steps {
        let t = (t0 + i as f64 * step).min(t1);
        if hit_at(mask, at(t), &wanted) {
            // Bisect between the last sample outside and this one inside.
            let (mut lo, mut hi) = (before, t);
            while (hi - lo) * per_voxel > 0.01 {
                let mid = 0.5 * (lo + hi);
                if hit_at(mask, at(mid), &wanted) {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
            return Some(origin_mm + dir * hi);
        }
        before = t;
    }
    None
}
