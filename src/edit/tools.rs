//! Mask editing tools, each a small function from a mask (and, where it needs one, the image
//! shown) to a `MaskDelta`: brush and eraser (round or square, 2D in a view's plane or 3D),
//! "paint over" rules (only over a label, only where the image is in an intensity range, never
//! over locked labels), flood fill, polygon fill, interpolation between annotated slices,
//! morphology on one label, label replacement and accepting the prediction.
//!
//! Invariants: a tool changes only voxels its rules allow and returns exactly what it changed
//! (`None` when nothing did); distances are in world mm through the mask's affine, so a brush is
//! round on anisotropic and oblique grids; neighbourhoods are 6-connected voxels.

use super::delta::{read_box, MaskDelta, VoxelBox};
use crate::volume::{Affine, Volume};
use glam::DVec3;
use std::collections::VecDeque;

/// Brush footprint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrushShape {
    /// Voxels within the radius (Euclidean).
    Round,
    /// Voxels within the radius along each axis of the view (Chebyshev).
    Square,
}

/// A plane to edit in: a view's slice, in world mm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EditPlane {
    /// A point on the plane (mm).
    pub origin_mm: DVec3,
    /// Unit direction of screen right.
    pub right: DVec3,
    /// Unit direction of screen up.
    pub up: DVec3,
    /// Voxels whose centre is within half this distance of the plane belong to the slice (mm;
    /// the voxel size along the normal).
    pub thickness_mm: f64,
}

impl EditPlane {
    /// Unit normal.
    pub fn normal(&self) -> DVec3 {
        self.right.cross(self.up).normalize_or_zero()
    }

    /// Whether a world point lies in the slice.
    pub fn contains(&self, pos_mm: DVec3) -> bool {
        (pos_mm - self.origin_mm).dot(self.normal()).abs() <= 0.5 * self.thickness_mm + 1e-9
    }

    /// In-plane coordinates (mm along right, up) of a world point.
    pub fn project(&self, pos_mm: DVec3) -> [f64; 2] {
        let d = pos_mm - self.origin_mm;
        [d.dot(self.right), d.dot(self.up)]
    }
}

/// Where a brush acts: a slice (2D) or a ball/cube (3D).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum BrushSpace {
    /// In this plane only.
    Plane(EditPlane),
    /// In 3D around the centre; the square shape uses these axes (right, up, normal).
    Volume {
        /// Axes of the square shape.
        axes: [DVec3; 3],
    },
}

/// A brush stroke's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Brush {
    /// Footprint.
    pub shape: BrushShape,
    /// Radius in mm (half the side of a square).
    pub radius_mm: f64,
    /// 2D or 3D.
    pub space: BrushSpace,
    /// Label painted; 0 erases.
    pub value: u8,
}

/// What painting may change: ITK-SNAP's "paint over" and label locks.
#[derive(Debug, Clone, PartialEq)]
pub struct PaintRules {
    /// Only change voxels currently holding this label (e.g. 0: paint only on background).
    pub only_over: Option<u8>,
    /// Only change voxels where the image is within `[low, high]`.
    pub intensity: Option<(f32, f32)>,
    /// Labels that are never changed (index = label value).
    pub locked: [bool; 256],
}

impl Default for PaintRules {
    fn default() -> Self {
        Self {
            only_over: None,
            intensity: None,
            locked: [false; 256],
        }
    }
}

impl PaintRules {
    /// Whether a voxel now holding `current`, with image value `image` (if an image is given),
    /// may become `new`.
    pub fn allows(&self, current: u8, new: u8, image: Option<f32>) -> bool {
        if current == new || self.locked[current as usize] || self.locked[new as usize] {
            return false;
        }
        if self.only_over.is_some_and(|l| l != current) {
            return false;
        }
        match (self.intensity, image) {
            (Some((lo, hi)), Some(v)) => v >= lo && v <= hi,
            (Some(_), None) => false,
            _ => true,
        }
    }
}

/// The image a tool reads intensities from (any grid: sampled at the mask voxel's centre).
#[derive(Clone, Copy)]
pub struct ImageRef<'a> {
    /// The image.
    pub volume: &'a Volume<f32>,
    /// Mask voxel index → image voxel index, when both share no grid (`None`: same grid).
    pub mask_to_image: Option<Affine>,
}

impl<'a> ImageRef<'a> {
    /// An image on the mask's grid or on its own (the mapping goes through world mm).
    pub fn new(volume: &'a Volume<f32>, mask_affine: &Affine) -> Self {
        let same = volume.affine().max_abs_diff(mask_affine) < 1e-6;
        let mask_to_image = if same {
            None
        } else {
            volume
                .affine()
                .inverse()
                .map(|inv| inv.compose(mask_affine))
        };
        Self {
            volume,
            mask_to_image,
        }
    }

    /// The image value at a mask voxel (nearest), if inside the image.
    pub fn at(&self, idx_vox: [usize; 3]) -> Option<f32> {
        match &self.mask_to_image {
            None => self.volume.get(idx_vox),
            Some(m) => {
                let p = m
                    .vox_to_mm(DVec3::new(
                        idx_vox[0] as f64,
                        idx_vox[1] as f64,
                        idx_vox[2] as f64,
                    ))
                    .round();
                if p.min_element() < 0.0 {
                    return None;
                }
                self.volume.get([p.x as usize, p.y as usize, p.z as usize])
            }
        }
    }
}

/// The world-space axis-aligned box around the voxels `origin_vox .. origin_vox + dims` of a
/// grid (`affine`), to their outer faces: `(min, max)` mm.
pub fn world_box_of_voxels(
    affine: &Affine,
    origin_vox: [usize; 3],
    dims: [usize; 3],
) -> (DVec3, DVec3) {
    (0..8)
        .map(|c| {
            let at = [0, 1, 2].map(|a| {
                let far = (c >> a) & 1 == 1;
                origin_vox[a] as f64 + if far { dims[a] as f64 - 0.5 } else { -0.5 }
            });
            affine.vox_to_mm(DVec3::from_array(at))
        })
        .fold((DVec3::INFINITY, DVec3::NEG_INFINITY), |(a, b), p| {
            (a.min(p), b.max(p))
        })
}

/// The voxel box covering a world-space axis-aligned box, cut to the grid.
pub fn voxel_box_of_world_box(
    affine: &Affine,
    dims: [usize; 3],
    min_mm: DVec3,
    max_mm: DVec3,
) -> VoxelBox {
    let Some(inv) = affine.inverse() else {
        return VoxelBox {
            min: [0; 3],
            max: [0; 3],
        };
    };
    let mut lo = DVec3::splat(f64::INFINITY);
    let mut hi = DVec3::splat(f64::NEG_INFINITY);
    for c in 0..8 {
        let p = DVec3::new(
            if c & 1 == 0 { min_mm.x } else { max_mm.x },
            if c & 2 == 0 { min_mm.y } else { max_mm.y },
            if c & 4 == 0 { min_mm.z } else { max_mm.z },
        );
        let v = inv.vox_to_mm(p);
        lo = lo.min(v);
        hi = hi.max(v);
    }
    let lo = lo.floor().max(DVec3::ZERO);
    let hi = (hi.ceil() + DVec3::ONE).max(DVec3::ZERO);
    VoxelBox {
        min: [lo.x as usize, lo.y as usize, lo.z as usize],
        max: [hi.x as usize, hi.y as usize, hi.z as usize],
    }
    .clamp_to(dims)
}

fn voxel_centre_mm(affine: &Affine, idx: [usize; 3]) -> DVec3 {
    affine.vox_to_mm(DVec3::new(idx[0] as f64, idx[1] as f64, idx[2] as f64))
}

/// Set `value` on each listed voxel the rules allow; the delta covers their bounding box.
pub fn paint_voxels(
    mask: &mut Volume<u8>,
    voxels: &[[usize; 3]],
    value: u8,
    rules: &PaintRules,
    image: Option<ImageRef<'_>>,
) -> Option<MaskDelta> {
    let dims = mask.dims3();
    let region = voxels
        .iter()
        .filter(|v| (0..3).all(|a| v[a] < dims[a]))
        .map(|v| VoxelBox::voxel(*v))
        .reduce(|a, b| a.union(&b))?;
    let before = read_box(mask, &region);
    for v in voxels {
        let Some(current) = mask.get(*v) else {
            continue;
        };
        if rules.allows(current, value, image.and_then(|im| im.at(*v))) {
            let at = mask.linear_index(v[0], v[1], v[2], 0);
            mask.data_mut()[at] = value;
        }
    }
    MaskDelta::capture(mask, region, &before)
}

/// The voxels a brush dab at `centre_mm` covers.
pub fn brush_voxels(mask: &Volume<u8>, brush: &Brush, centre_mm: DVec3) -> Vec<[usize; 3]> {
    let affine = mask.affine();
    let r = brush.radius_mm.max(0.0);
    let reach = match brush.space {
        BrushSpace::Plane(p) => r + 0.5 * p.thickness_mm,
        BrushSpace::Volume { .. } => r * 3f64.sqrt(),
    };
    let region = voxel_box_of_world_box(
        affine,
        mask.dims3(),
        centre_mm - DVec3::splat(reach),
        centre_mm + DVec3::splat(reach),
    );
    let tol = 1e-9;
    region
        .iter()
        .filter(|idx| {
            let p = voxel_centre_mm(affine, *idx);
            let d = p - centre_mm;
            match (brush.space, brush.shape) {
                (BrushSpace::Plane(plane), shape) => {
                    let on_plane = EditPlane {
                        origin_mm: centre_mm,
                        ..plane
                    };
                    if !on_plane.contains(p) {
                        return false;
                    }
                    let [x, y] = on_plane.project(p);
                    match shape {
                        BrushShape::Round => x * x + y * y <= r * r + tol,
                        BrushShape::Square => x.abs().max(y.abs()) <= r + tol,
                    }
                }
                (BrushSpace::Volume { .. }, BrushShape::Round) => d.length_squared() <= r * r + tol,
                (BrushSpace::Volume { axes }, BrushShape::Square) => {
                    axes.iter().all(|a| d.dot(*a).abs() <= r + tol)
                }
            }
        })
        .collect()
}

/// One brush dab: paint (or erase, value 0) the brush's voxels the rules allow.
pub fn brush_dab(
    mask: &mut Volume<u8>,
    brush: &Brush,
    centre_mm: DVec3,
    rules: &PaintRules,
    image: Option<ImageRef<'_>>,
) -> Option<MaskDelta> {
    let voxels = brush_voxels(mask, brush, centre_mm);
    paint_voxels(mask, &voxels, brush.value, rules, image)
}

/// Voxel axes a 2D operation moves along in `plane`: the two most aligned with its in-plane
/// directions (the third, most aligned with the normal, stays fixed).
fn in_plane_axes(affine: &Affine, plane: &EditPlane) -> [usize; 2] {
    let n = plane.normal();
    let lin = affine.linear();
    let mut best = 0;
    let mut best_cos = -1.0;
    for a in 0..3 {
        let col = lin.col(a).normalize_or_zero();
        let c = col.dot(n).abs();
        if c > best_cos {
            best_cos = c;
            best = a;
        }
    }
    match best {
        0 => [1, 2],
        1 => [0, 2],
        _ => [0, 1],
    }
}

/// Flood fill from `seed` over voxels whose image value is within `tolerance` of the seed's,
/// in 3D or (with `plane`) within the seed's slice; paints `value` where the rules allow.
pub fn flood_fill(
    mask: &mut Volume<u8>,
    image: ImageRef<'_>,
    seed: [usize; 3],
    tolerance: f32,
    plane: Option<&EditPlane>,
    value: u8,
    rules: &PaintRules,
) -> Option<MaskDelta> {
    let dims = mask.dims3();
    let seed_value = image.at(seed)?;
    mask.get(seed)?;
    let axes: Vec<usize> = match plane {
        Some(p) => in_plane_axes(mask.affine(), p).to_vec(),
        None => vec![0, 1, 2],
    };
    let n = dims[0] * dims[1] * dims[2];
    let mut seen = vec![false; n];
    let lin = |v: [usize; 3]| v[0] + dims[0] * (v[1] + dims[1] * v[2]);
    let mut queue = VecDeque::from([seed]);
    seen[lin(seed)] = true;
    let mut filled = Vec::new();
    while let Some(v) = queue.pop_front() {
        filled.push(v);
        for &a in &axes {
            for step in [-1i64, 1] {
                let c = v[a] as i64 + step;
                if c < 0 || c >= dims[a] as i64 {
                    continue;
                }
                let mut w = v;
                w[a] = c as usize;
                let k = lin(w);
                if seen[k] {
                    continue;
                }
                seen[k] = true;
                if image
                    .at(w)
                    .is_some_and(|x| (x - seed_value).abs() <= tolerance)
                {
                    queue.push_back(w);
                }
            }
        }
    }
    paint_voxels(mask, &filled, value, rules, Some(image))
}

/// Whether a 2D point lies inside a polygon (even-odd rule).
pub fn point_in_polygon(p: [f64; 2], polygon: &[[f64; 2]]) -> bool {
    let mut inside = false;
    let n = polygon.len();
    for i in 0..n {
        let a = polygon[i];
        let b = polygon[(i + n - 1) % n];
        if (a[1] > p[1]) != (b[1] > p[1]) {
            let x = a[0] + (p[1] - a[1]) * (b[0] - a[0]) / (b[1] - a[1]);
            if p[0] < x {
                inside = !inside;
            }
        }
    }
    inside
}

/// Fill the voxels of `plane`'s slice whose centres lie inside a polygon (world mm vertices,
/// projected onto the plane).
pub fn polygon_fill(
    mask: &mut Volume<u8>,
    plane: &EditPlane,
    vertices_mm: &[DVec3],
    value: u8,
    rules: &PaintRules,
    image: Option<ImageRef<'_>>,
) -> Option<MaskDelta> {
    if vertices_mm.len() < 3 {
        return None;
    }
    let poly: Vec<[f64; 2]> = vertices_mm.iter().map(|v| plane.project(*v)).collect();
    let n = plane.normal() * (0.5 * plane.thickness_mm);
    let (mut lo, mut hi) = (DVec3::splat(f64::INFINITY), DVec3::splat(f64::NEG_INFINITY));
    for v in vertices_mm {
        for p in [*v + n, *v - n] {
            lo = lo.min(p);
            hi = hi.max(p);
        }
    }
    let affine = *mask.affine();
    let region = voxel_box_of_world_box(&affine, mask.dims3(), lo, hi);
    let voxels: Vec<[usize; 3]> = region
        .iter()
        .filter(|idx| {
            let p = voxel_centre_mm(&affine, *idx);
            plane.contains(p) && point_in_polygon(plane.project(p), &poly)
        })
        .collect();
    paint_voxels(mask, &voxels, value, rules, image)
}

/// Two-pass chamfer distance (in voxels, 1 and √2 steps) to the nearest voxel where `inside`
/// differs, signed: negative inside. `w`×`h` pixels, row-major.
fn signed_distance_2d(inside: &[bool], w: usize, h: usize) -> Vec<f32> {
    let big = (w + h) as f32 * 2.0;
    let dist_to = |target: bool| -> Vec<f32> {
        // Distance from each pixel to the nearest pixel whose value is `target`.
        let mut d: Vec<f32> = inside
            .iter()
            .map(|v| if *v == target { 0.0 } else { big })
            .collect();
        let s2 = std::f32::consts::SQRT_2;
        for y in 0..h {
            for x in 0..w {
                let i = y * w + x;
                let mut best = d[i];
                if x > 0 {
                    best = best.min(d[i - 1] + 1.0);
                }
                if y > 0 {
                    best = best.min(d[i - w] + 1.0);
                    if x > 0 {
                        best = best.min(d[i - w - 1] + s2);
                    }
                    if x + 1 < w {
                        best = best.min(d[i - w + 1] + s2);
                    }
                }
                d[i] = best;
            }
        }
        for y in (0..h).rev() {
            for x in (0..w).rev() {
                let i = y * w + x;
                let mut best = d[i];
                if x + 1 < w {
                    best = best.min(d[i + 1] + 1.0);
                }
                if y + 1 < h {
                    best = best.min(d[i + w] + 1.0);
                    if x + 1 < w {
                        best = best.min(d[i + w + 1] + s2);
                    }
                    if x > 0 {
                        best = best.min(d[i + w - 1] + s2);
                    }
                }
                d[i] = best;
            }
        }
        d
    };
    let to_out = dist_to(false);
    let to_in = dist_to(true);
    inside
        .iter()
        .enumerate()
        .map(|(i, v)| {
            if *v {
                -(to_out[i] - 0.5)
            } else {
                to_in[i] - 0.5
            }
        })
        .collect()
}

/// Fill the slices between annotated slices of `label` along voxel axis `axis` by interpolating
/// their signed distance maps (shape-based interpolation). Only background voxels change.
pub fn interpolate_slices(
    mask: &mut Volume<u8>,
    label: u8,
    axis: usize,
    rules: &PaintRules,
) -> Option<MaskDelta> {
    if label == 0 || axis > 2 {
        return None;
    }
    let dims = mask.dims3();
    let (u, v) = match axis {
        0 => (1, 2),
        1 => (0, 2),
        _ => (0, 1),
    };
    let (w, h) = (dims[u], dims[v]);
    let at = |s: usize, x: usize, y: usize| {
        let mut idx = [0usize; 3];
        idx[axis] = s;
        idx[u] = x;
        idx[v] = y;
        idx
    };
    let slice_of = |mask: &Volume<u8>, s: usize| -> Vec<bool> {
        let mut out = vec![false; w * h];
        for y in 0..h {
            for x in 0..w {
                out[y * w + x] = mask.get(at(s, x, y)) == Some(label);
            }
        }
        out
    };
    let annotated: Vec<usize> = (0..dims[axis])
        .filter(|s| slice_of(mask, *s).iter().any(|b| *b))
        .collect();
    let mut voxels = Vec::new();
    for pair in annotated.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if b <= a + 1 {
            continue;
        }
        let da = signed_distance_2d(&slice_of(mask, a), w, h);
        let db = signed_distance_2d(&slice_of(mask, b), w, h);
        for s in a + 1..b {
            let t = (s - a) as f32 / (b - a) as f32;
            for y in 0..h {
                for x in 0..w {
                    let i = y * w + x;
                    if (1.0 - t) * da[i] + t * db[i] <= 0.0 {
                        voxels.push(at(s, x, y));
                    }
                }
            }
        }
    }
    let rules = PaintRules {
        only_over: Some(0),
        ..rules.clone()
    };
    paint_voxels(mask, &voxels, label, &rules, None)
}

/// Morphological operations on one label.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Morphology {
    /// Grow by one voxel into background.
    Dilate,
    /// Shrink by one voxel.
    Erode,
    /// Fill background cavities fully enclosed by the label (3D).
    FillHoles,
    /// Keep only the largest connected component.
    KeepLargest,
    /// Remove connected components smaller than this volume (mm³).
    RemoveSmallerThan(f64),
}

fn neighbours(v: [usize; 3], dims: [usize; 3]) -> impl Iterator<Item = [usize; 3]> {
    (0..6).filter_map(move |n| {
        let a = n / 2;
        let up = n % 2 == 1;
        let mut w = v;
        if up {
            if v[a] + 1 >= dims[a] {
                return None;
            }
            w[a] += 1;
        } else {
            if v[a] == 0 {
                return None;
            }
            w[a] -= 1;
        }
        Some(w)
    })
}

/// Connected components (6-connected) of voxels where `member` holds; each a list of voxels.
fn components(dims: [usize; 3], member: impl Fn([usize; 3]) -> bool) -> Vec<Vec<[usize; 3]>> {
    let at = |i: usize| {
        [
            i % dims[0],
            (i / dims[0]) % dims[1],
            i / (dims[0] * dims[1]),
        ]
    };
    crate::volume::regions::connected_regions(dims, |i| member(at(i)))
        .into_iter()
        .map(|r| r.into_iter().map(at).collect())
        .collect()
}

/// A segmented object's answer inside a region, as one delta: `on` voxels become `value`,
/// `off` voxels holding `value` become background, where `rules` allow (a prompt's result).
pub fn set_object(
    mask: &mut Volume<u8>,
    on: &[[usize; 3]],
    off: &[[usize; 3]],
    value: u8,
    rules: &PaintRules,
) -> Option<MaskDelta> {
    let dims = mask.dims3();
    let region = on
        .iter()
        .chain(off)
        .filter(|v| (0..3).all(|a| v[a] < dims[a]))
        .map(|v| VoxelBox::voxel(*v))
        .reduce(|a, b| a.union(&b))?;
    let before = read_box(mask, &region);
    let changes = on
        .iter()
        .map(|v| (v, value))
        .chain(off.iter().map(|v| (v, 0)));
    for (v, new) in changes {
        let Some(current) = mask.get(*v) else {
            continue;
        };
        // Off the object, only the object's own voxels are cleared.
        let clears_other = new == 0 && current != value;
        if !clears_other && rules.allows(current, new, None) {
            let at = mask.linear_index(v[0], v[1], v[2], 0);
            mask.data_mut()[at] = new;
        }
    }
    MaskDelta::capture(mask, region, &before)
}

/// Apply a morphological operation to `label`.
pub fn morphology(
    mask: &mut Volume<u8>,
    label: u8,
    op: Morphology,
    rules: &PaintRules,
) -> Option<MaskDelta> {
    if label == 0 {
        return None;
    }
    let dims = mask.dims3();
    let is = |m: &Volume<u8>, v: [usize; 3]| m.get(v) == Some(label);
    let (voxels, value): (Vec<[usize; 3]>, u8) = match op {
        Morphology::Dilate => (
            VoxelBox::whole(dims)
                .iter()
                .filter(|v| mask.get(*v) == Some(0) && neighbours(*v, dims).any(|w| is(mask, w)))
                .collect(),
            label,
        ),
        Morphology::Erode => (
            VoxelBox::whole(dims)
                .iter()
                .filter(|v| {
                    is(mask, *v)
                        && (neighbours(*v, dims).count() < 6
                            || neighbours(*v, dims).any(|w| !is(mask, w)))
                })
                .collect(),
            0,
        ),
        Morphology::FillHoles => {
            let outside = components(dims, |v| !is(mask, v));
            let holes = outside.into_iter().filter(|c| {
                !c.iter()
                    .any(|v| (0..3).any(|a| v[a] == 0 || v[a] + 1 == dims[a]))
            });
            (
                holes
                    .flatten()
                    .filter(|v| mask.get(*v) == Some(0))
                    .collect(),
                label,
            )
        }
        Morphology::KeepLargest => {
            let mut comps = components(dims, |v| is(mask, v));
            comps.sort_by_key(|c| std::cmp::Reverse(c.len()));
            (comps.into_iter().skip(1).flatten().collect(), 0)
        }
        Morphology::RemoveSmallerThan(mm3) => {
            let vox = mask.voxel_volume_mm3();
            let comps = components(dims, |v| is(mask, v));
            (
                comps
                    .into_iter()
                    .filter(|c| (c.len() as f64) * vox < mm3)
                    .flatten()
                    .collect(),
                0,
            )
        }
    };
    paint_voxels(mask, &voxels, value, rules, None)
}

/// Replace label `from` by `to` everywhere (`to` = 0 clears the label).
pub fn replace_label(
    mask: &mut Volume<u8>,
    from: u8,
    to: u8,
    rules: &PaintRules,
) -> Option<MaskDelta> {
    let voxels: Vec<[usize; 3]> = VoxelBox::whole(mask.dims3())
        .iter()
        .filter(|v| mask.get(*v) == Some(from))
        .collect();
    paint_voxels(mask, &voxels, to, rules, None)
}

/// Copy the predicted mask into the reference mask (same grid): everywhere, or for one label
/// (voxels predicted as it get it; voxels of it not predicted are cleared).
pub fn accept_prediction(
    reference: &mut Volume<u8>,
    predicted: &Volume<u8>,
    label: Option<u8>,
    rules: &PaintRules,
) -> Option<MaskDelta> {
    if reference.dims3() != predicted.dims3() {
        return None;
    }
    let region = VoxelBox::whole(reference.dims3());
    let before = read_box(reference, &region);
    let locked = &rules.locked;
    for (r, p) in reference.data_mut().iter_mut().zip(predicted.data()) {
        let new = match label {
            None => *p,
            Some(l) if *p == l => l,
            Some(l) if *r == l => 0,
            Some(_) => *r,
        };
        if new != *r && !locked[*r as usize] && !locked[new as usize] {
            *r = new;
        }
    }
    let delta = MaskDelta::capture(reference, region, &before)?;
    Some(shrink_delta(reference, delta))
}

/// The same change over the smallest box that holds it.
fn shrink_delta(mask: &Volume<u8>, delta: MaskDelta) -> MaskDelta {
    let mut before = Vec::with_capacity(delta.region.len());
    delta.before.for_each(|v| before.push(v));
    let mut changed: Option<VoxelBox> = None;
    for (n, v) in delta.region.iter().enumerate() {
        if mask.get(v) != before.get(n).copied() {
            let b = VoxelBox::voxel(v);
            changed = Some(changed.map_or(b, |c| c.union(&b)));
        }
    }
    let Some(region) = changed else {
        return delta;
    };
    let mut sub_before = Vec::with_capacity(region.len());
    let size = delta.region.size();
    for v in region.iter() {
        let local = [0, 1, 2].map(|a| v[a] - delta.region.min[a]);
        sub_before.push(before[local[0] + size[0] * (local[1] + size[1] * local[2])]);
    }
    MaskDelta::capture(mask, region, &sub_before).unwrap_or(delta)
}
