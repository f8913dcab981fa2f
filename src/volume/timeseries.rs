//! Time series of a 4D volume (a BOLD run): the course of one voxel, the mean course of a
//! region, the per-voxel temporal mean and standard deviation, and the seed-based correlation
//! map (Pearson r of every voxel's course with the seed voxel's, after removing each course's
//! mean and linear trend, as resting-state tools do before correlating).
//!
//! Invariants: a 4D volume's frames share one 3D grid, stored x fastest, then y, z, t; results
//! are 3D volumes on that grid; nothing here allocates more than a few frames beyond its output.

use super::{Volume, VolumeError};
use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};

/// The values of voxel `idx_vox` in every frame, or `None` outside the grid.
pub fn time_course(series: &Volume<f32>, idx_vox: [usize; 3]) -> Option<Vec<f32>> {
    let [i, j, k] = idx_vox;
    let [nx, ny, nz, nt] = series.dims();
    if i >= nx || j >= ny || k >= nz {
        return None;
    }
    let data = series.data();
    Some(
        (0..nt)
            .map(|t| data[series.linear_index(i, j, k, t)])
            .collect(),
    )
}

/// The mean course of the voxels where `mask` is non-zero (a 3D mask on the series' grid);
/// `None` when the grids differ or the mask is empty.
pub fn region_mean_course(series: &Volume<f32>, mask: &Volume<u8>) -> Option<Vec<f32>> {
    if mask.dims3() != series.dims3() {
        return None;
    }
    let inside: Vec<usize> = mask.data()[..mask.frame_len()]
        .iter()
        .enumerate()
        .filter(|(_, v)| **v > 0)
        .map(|(i, _)| i)
        .collect();
    if inside.is_empty() {
        return None;
    }
    let n = series.frame_len();
    let data = series.data();
    Some(
        (0..series.dims()[3])
            .map(|t| {
                let frame = &data[t * n..(t + 1) * n];
                let sum: f64 = inside.iter().map(|&v| f64::from(frame[v])).sum();
                (sum / inside.len() as f64) as f32
            })
            .collect(),
    )
}

/// Per-voxel temporal summaries of a series.
#[derive(Debug, Clone)]
pub struct TemporalSummary {
    /// Mean over time.
    pub mean: Volume<f32>,
    /// Standard deviation over time (population, divided by the number of frames).
    pub sd: Volume<f32>,
}

/// Temporal mean and standard deviation of every voxel (one pass over the frames).
pub fn temporal_summary(series: &Volume<f32>) -> Result<TemporalSummary, VolumeError> {
    let n = series.frame_len();
    let nt = series.dims()[3];
    let data = series.data();
    let mut mean = vec![0f32; n];
    let mut sd = vec![0f32; n];
    const CHUNK: usize = 4096;
    mean.par_chunks_mut(CHUNK)
        .zip(sd.par_chunks_mut(CHUNK))
        .enumerate()
        .for_each(|(c, (m_out, s_out))| {
            let start = c * CHUNK;
            let mut sum = vec![0f64; m_out.len()];
            let mut sq = vec![0f64; m_out.len()];
            for t in 0..nt {
                let frame = &data[t * n + start..t * n + start + m_out.len()];
                for ((s, q), x) in sum.iter_mut().zip(&mut sq).zip(frame) {
                    let x = f64::from(*x);
                    *s += x;
                    *q += x * x;
                }
            }
            let nt = nt as f64;
            for (((m, d), s), q) in m_out.iter_mut().zip(s_out).zip(&sum).zip(&sq) {
                let mu = s / nt;
                *m = mu as f32;
                *d = (q / nt - mu * mu).max(0.0).sqrt() as f32;
            }
        });
    Ok(TemporalSummary {
        mean: Volume::new_like(series, mean)?,
        sd: Volume::new_like(series, sd)?,
    })
}

/// Why a seed map was not made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SeedMapError {
    /// The seed lies outside the grid.
    #[error("the seed voxel {0:?} is outside the series' grid")]
    OutsideGrid([usize; 3]),
    /// Fewer than three frames: no course left after removing mean and trend.
    #[error("a seed map needs at least 3 time points; this series has {0}")]
    TooShort(usize),
    /// The seed's course is flat once mean and trend are removed.
    #[error("the seed voxel's time course is constant: no correlation can be computed")]
    FlatSeed,
    /// Cancelled by the caller.
    #[error("cancelled")]
    Cancelled,
    /// The result could not be made into a volume.
    #[error("{0}")]
    Volume(String),
}

/// Pearson correlation of every voxel's course with the course of `seed_vox`, both with their
/// mean and linear trend removed; voxels with a flat course get 0. Checks `cancel` between
/// blocks of voxels. The result is a 3D volume of r in −1..1 on the series' grid.
pub fn seed_correlation(
    series: &Volume<f32>,
    seed_vox: [usize; 3],
    cancel: &AtomicBool,
) -> Result<Volume<f32>, SeedMapError> {
    let nt = series.dims()[3];
    if nt < 3 {
        return Err(SeedMapError::TooShort(nt));
    }
    let seed = time_course(series, seed_vox).ok_or(SeedMapError::OutsideGrid(seed_vox))?;
    // Centred time ramp, and the seed's residual after regressing out [1, t].
    let t_mean = (nt as f64 - 1.0) / 2.0;
    let ramp: Vec<f64> = (0..nt).map(|t| t as f64 - t_mean).collect();
    let ramp_ss: f64 = ramp.iter().map(|r| r * r).sum();
    let detrend = |course: &[f64]| -> Vec<f64> {
        let mean = course.iter().sum::<f64>() / nt as f64;
        let slope = course.iter().zip(&ramp).map(|(x, r)| x * r).sum::<f64>() / ramp_ss;
        course
            .iter()
            .zip(&ramp)
            .map(|(x, r)| x - mean - slope * r)
            .collect()
    };
    let seed = detrend(&seed.iter().map(|v| f64::from(*v)).collect::<Vec<_>>());
    let seed_norm = seed.iter().map(|s| s * s).sum::<f64>().sqrt();
    if seed_norm <= f64::EPSILON * nt as f64 {
        return Err(SeedMapError::FlatSeed);
    }
    let n = series.frame_len();
    let data = series.data();
    let mut r = vec![0f32; n];
    const CHUNK: usize = 4096;
    let cancelled = AtomicBool::new(false);
    r.par_chunks_mut(CHUNK).enumerate().for_each(|(c, out)| {
        if cancel.load(Ordering::Relaxed) {
            cancelled.store(true, Ordering::Relaxed);
            return;
        }
        let start = c * CHUNK;
        let len = out.len();
        // Per voxel: Σx, Σx², Σx·ramp, Σx·seed (seed is orthogonal to 1 and the ramp).
        let mut acc = vec![[0f64; 4]; len];
        for t in 0..nt {
            let frame = &data[t * n + start..t * n + start + len];
            let (rt, st) = (ramp[t], seed[t]);
            for (a, x) in acc.iter_mut().zip(frame) {
                let x = f64::from(*x);
                a[0] += x;
                a[1] += x * x;
                a[2] += x * rt;
                a[3] += x * st;
            }
        }
        for (o, a) in out.iter_mut().zip(&acc) {
            let residual_ss = a[1] - a[0] * a[0] / nt as f64 - a[2] * a[2] / ramp_ss;
            let scale = a[1].max(1.0) * 1e-12;
            *o = if residual_ss > scale {
                (a[3] / (residual_ss.sqrt() * seed_norm)).clamp(-1.0, 1.0) as f32
            } else {
                0.0
            };
        }
    });
    if cancelled.load(Ordering::Relaxed) {
        return Err(SeedMapError::Cancelled);
    }
    Volume::new_like(series, r).map_err(|e| SeedMapError::Volume(e.to_string()))
}
