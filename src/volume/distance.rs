//! Distances on label masks: the exact Euclidean distance transform in millimetres (separable,
//! Felzenszwalb–Huttenlocher lower envelopes of parabolas, one pass per axis with that axis's
//! voxel spacing) and the 95th-percentile Hausdorff distance (HD95) between the surfaces of one
//! label in two masks.
//!
//! Invariants: distances are in mm along the grid's axes (spacing = the affine's column lengths,
//! exact for orthogonal axes, which NIfTI grids have up to rounding); the 3D grid of a mask is
//! its first three axes; nothing here allocates more than a few arrays of the grid's size.

use super::Volume;

/// Squared distances (mm²) from every voxel of a `dims` grid to the nearest voxel where
/// `feature` is true; `f64::INFINITY` everywhere when no voxel is a feature.
pub fn squared_distance_mm2(feature: &[bool], dims: [usize; 3], spacing_mm: [f64; 3]) -> Vec<f64> {
    let mut d: Vec<f64> = feature
        .iter()
        .map(|f| if *f { 0.0 } else { f64::INFINITY })
        .collect();
    let [nx, ny, nz] = dims;
    let strides = [1, nx, nx * ny];
    let n_max = nx.max(ny).max(nz);
    let mut line = vec![0.0; n_max];
    let mut out = vec![0.0; n_max];
    let mut v = vec![0usize; n_max];
    let mut z = vec![0.0; n_max + 1];
    for axis in 0..3 {
        let n = dims[axis];
        let w = spacing_mm[axis] * spacing_mm[axis];
        // Every line along `axis`: its start index runs over the other two axes.
        let (a, b) = match axis {
            0 => (1, 2),
            1 => (0, 2),
            _ => (0, 1),
        };
        for j in 0..dims[b] {
            for i in 0..dims[a] {
                let start = i * strides[a] + j * strides[b];
                for (k, l) in line[..n].iter_mut().enumerate() {
                    *l = d[start + k * strides[axis]];
                }
                parabola_envelope(&line[..n], w, &mut out[..n], &mut v, &mut z);
                for (k, o) in out[..n].iter().enumerate() {
                    d[start + k * strides[axis]] = *o;
                }
            }
        }
    }
    d
}

/// One dimension of the transform: `out[p] = min_q w·(p − q)² + f[q]` (infinite `f` skipped).
fn parabola_envelope(f: &[f64], w: f64, out: &mut [f64], v: &mut [usize], z: &mut [f64]) {
    let key = |q: usize| f[q] + w * (q * q) as f64;
    let mut k: Option<usize> = None;
    for (q, fq) in f.iter().enumerate() {
        if !fq.is_finite() {
            continue;
        }
        loop {
            match k {
                None => {
                    k = Some(0);
                    v[0] = q;
                    z[0] = f64::NEG_INFINITY;
                    z[1] = f64::INFINITY;
                    break;
                }
                Some(kk) => {
                    let vk = v[kk];
                    let s = (key(q) - key(vk)) / (2.0 * w * (q - vk) as f64);
                    if s <= z[kk] {
                        k = kk.checked_sub(1);
                        if k.is_none() {
                            // The new parabola is lowest everywhere so far.
                            continue;
                        }
                    } else {
                        v[kk + 1] = q;
                        z[kk + 1] = s;
                        z[kk + 2] = f64::INFINITY;
                        k = Some(kk + 1);
                        break;
                    }
                }
            }
        }
    }
    let Some(_) = k else {
        out.fill(f64::INFINITY);
        return;
    };
    let mut kk = 0;
    for (p, o) in out.iter_mut().enumerate() {
        while z[kk + 1] < p as f64 {
            kk += 1;
        }
        let dq = p as f64 - v[kk] as f64;
        *o = w * dq * dq + f[v[kk]];
    }
}

/// Surface voxels of `label`: labelled voxels with a 6-neighbour outside the label or on the
/// grid's border.
pub fn surface_of(mask: &Volume<u8>, label: u8) -> Vec<bool> {
    let [nx, ny, nz] = mask.dims3();
    let data = &mask.data()[..nx * ny * nz];
    let mut s = vec![false; data.len()];
    for z in 0..nz {
        for y in 0..ny {
            for x in 0..nx {
                let i = x + nx * (y + ny * z);
                if data[i] != label {
                    continue;
                }
                let border =
                    x == 0 || y == 0 || z == 0 || x + 1 == nx || y + 1 == ny || z + 1 == nz;
                s[i] = border
                    || data[i - 1] != label
                    || data[i + 1] != label
                    || data[i - nx] != label
                    || data[i + nx] != label
                    || data[i - nx * ny] != label
                    || data[i + nx * ny] != label;
            }
        }
    }
    s
}

/// The `q`-th percentile (0–100, linear interpolation) of `values`; `None` when empty.
pub fn percentile(mut values: Vec<f64>, q: f64) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let pos = (q / 100.0).clamp(0.0, 1.0) * (values.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    Some(values[lo] + (values[hi] - values[lo]) * (pos - lo as f64))
}

/// HD95 (mm) of `label` between two masks on the same grid: the larger of the two directed
/// 95th-percentile distances from one surface to the other (as MONAI computes it); `None` when
/// either mask lacks the label.
pub fn hd95_mm(reference: &Volume<u8>, predicted: &Volume<u8>, label: u8) -> Option<f64> {
    if reference.dims3() != predicted.dims3() {
        return None;
    }
    let dims = reference.dims3();
    let spacing = reference.spacing_mm();
    let (sr, sp) = (surface_of(reference, label), surface_of(predicted, label));
    if !sr.iter().any(|v| *v) || !sp.iter().any(|v| *v) {
        return None;
    }
    let directed = |from: &[bool], to: &[bool]| {
        let d2 = squared_distance_mm2(to, dims, spacing);
        let ds: Vec<f64> = from
            .iter()
            .zip(&d2)
            .filter(|(f, _)| **f)
            .map(|(_, d)| d.sqrt())
            .collect();
        percentile(ds, 95.0)
    };
    Some(directed(&sr, &sp)?.max(directed(&sp, &sr)?))
}
