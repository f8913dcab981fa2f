//! A dataset fingerprint: what a training plan needs to know about a project's cases — voxel
//! spacings and sizes, each sequence's intensities inside the head, each label's volume, extent
//! and how many cases hold it, the class balance and the input form. Read once from the files
//! (`Fingerprint::of`), then plain numbers (`plan.rs` turns them into a plan).
//!
//! Invariants: a case that cannot be read is named with its problem and the fingerprint fails
//! (a plan from some of the cases would be wrong without saying so); intensity statistics are
//! taken inside the head (voxels above 5 % of the case's 99th percentile), from at most
//! `MAX_SAMPLES_PER_CASE` evenly spaced voxels per case and sequence.

use crate::project::{Case, InputForm, Project, ProjectError, SequenceName};
use crate::volume::Volume;
use serde::{Deserialize, Serialize};

/// Voxels of a case and sequence sampled for its intensity statistics.
pub const MAX_SAMPLES_PER_CASE: usize = 20_000;

/// One case's geometry and content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CaseFingerprint {
    /// Case id.
    pub id: String,
    /// Voxels along each axis (of the first sequence).
    pub dims: [usize; 3],
    /// Voxel size along each axis (mm).
    pub spacing_mm: [f64; 3],
    /// Extent of the head (voxels above 5 % of the 99th percentile of the first sequence),
    /// along each voxel axis (mm).
    pub head_extent_mm: [f64; 3],
    /// The reference class, if any.
    pub class: Option<String>,
    /// Per foreground label present in the reference mask: (value, voxels, bounding-box extent
    /// along each voxel axis in mm).
    pub labels: Vec<(u8, usize, [f64; 3])>,
}

/// A sequence's intensities inside the head, pooled over the cases.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SequenceStats {
    /// Sequence name.
    pub name: String,
    /// Mean.
    pub mean: f64,
    /// Standard deviation.
    pub sd: f64,
    /// 0.5th percentile.
    pub p005: f64,
    /// 99.5th percentile.
    pub p995: f64,
}

/// A label across the dataset.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabelStats {
    /// Label value.
    pub value: u8,
    /// Its name in the project's label table.
    pub name: String,
    /// Cases whose reference mask holds it.
    pub cases: usize,
    /// Median volume over those cases (mm³).
    pub median_volume_mm3: f64,
    /// Smallest volume (mm³).
    pub min_volume_mm3: f64,
    /// Median bounding-box extent along each voxel axis (mm).
    pub median_extent_mm: [f64; 3],
}

/// The dataset fingerprint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// Input form of the cases (that of the first).
    pub form: InputForm,
    /// Every case.
    pub cases: Vec<CaseFingerprint>,
    /// Per sequence (the project's order), intensities inside the head.
    pub sequences: Vec<SequenceStats>,
    /// Per foreground label that appears in some case.
    pub labels: Vec<LabelStats>,
    /// Per class of the project: (name, cases with that reference class).
    pub classes: Vec<(String, usize)>,
    /// Cases with a reference mask.
    pub cases_with_mask: usize,
}

impl Fingerprint {
    /// Read every case of `project` (its sequences and reference mask).
    pub fn of(project: &Project) -> Result<Self, ProjectError> {
        let names = project.manifest.sequences.clone();
        let mut samples: Vec<Vec<f32>> = vec![Vec::new(); names.len()];
        let mut cases = Vec::with_capacity(project.manifest.cases.len());
        for case in &project.manifest.cases {
            cases.push(case_fingerprint(project, case, &names, &mut samples)?);
        }
        let sequences = names
            .iter()
            .zip(&mut samples)
            .map(|(n, s)| sequence_stats(n.as_str(), s))
            .collect();
        let classes = project
            .manifest
            .classes
            .iter()
            .map(|c| {
                let n = cases.iter().filter(|f| f.class.as_ref() == Some(c)).count();
                (c.clone(), n)
            })
            .collect();
        let cases_with_mask = project
            .manifest
            .cases
            .iter()
            .filter(|c| c.reference_mask.is_some())
            .count();
        Ok(Self {
            form: project.manifest.input_form(),
            labels: label_stats(&cases, |v| project.manifest.labels.name_of(v)),
            sequences,
            classes,
            cases,
            cases_with_mask,
        })
    }

    /// Median voxel spacing along each axis (mm).
    pub fn median_spacing_mm(&self) -> [f64; 3] {
        [0, 1, 2].map(|a| median(self.cases.iter().map(|c| c.spacing_mm[a]).collect()))
    }

    /// The `q`-quantile (0..1) of the spacings along `axis`.
    pub fn spacing_quantile_mm(&self, axis: usize, q: f64) -> f64 {
        quantile(self.cases.iter().map(|c| c.spacing_mm[axis]).collect(), q)
    }

    /// Median head extent along each axis (mm).
    pub fn median_head_extent_mm(&self) -> [f64; 3] {
        [0, 1, 2].map(|a| median(self.cases.iter().map(|c| c.head_extent_mm[a]).collect()))
    }

    /// Median case extent along each axis (mm): voxels × spacing.
    pub fn median_size_mm(&self) -> [f64; 3] {
        [0, 1, 2].map(|a| {
            median(
                self.cases
                    .iter()
                    .map(|c| c.dims[a] as f64 * c.spacing_mm[a])
                    .collect(),
            )
        })
    }
}

/// One case: geometry from its first sequence, intensity samples of every sequence, labels of
/// its reference mask.
fn case_fingerprint(
    project: &Project,
    case: &Case,
    names: &[SequenceName],
    samples: &mut [Vec<f32>],
) -> Result<CaseFingerprint, ProjectError> {
    let mut first: Option<Volume<f32>> = None;
    for (name, pool) in names.iter().zip(samples.iter_mut()) {
        if case.sequence(name).is_none() {
            continue;
        }
        let v = project.load_sequence(case, name)?.to_f32();
        let v = if v.dims()[3] > 1 {
            v.frame(0).unwrap_or(v)
        } else {
            v
        };
        pool.extend(head_samples(v.data()));
        first.get_or_insert(v);
    }
    let first = first.ok_or_else(|| ProjectError::Invalid {
        path: project.manifest_path(),
        problem: format!("case {} has none of the project's sequences", case.id),
    })?;
    let spacing_mm = first.spacing_mm();
    let labels = match project.load_reference_mask(case)? {
        Some(m) => label_voxels(&m),
        None => Vec::new(),
    };
    Ok(CaseFingerprint {
        id: case.id.clone(),
        dims: first.dims3(),
        spacing_mm,
        head_extent_mm: head_extent_mm(&first),
        class: case.class_label.clone(),
        labels,
    })
}

/// The threshold above which a voxel is inside the head: 5 % of the 99th percentile.
fn head_threshold(values: &[f32]) -> f32 {
    let mut sorted: Vec<f32> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return 0.0;
    }
    let k = ((sorted.len() - 1) as f64 * 0.99).round() as usize;
    let (_, p99, _) = sorted.select_nth_unstable_by(k, f32::total_cmp);
    0.05 * *p99
}

/// Up to `MAX_SAMPLES_PER_CASE` evenly spaced values inside the head.
fn head_samples(values: &[f32]) -> Vec<f32> {
    let t = head_threshold(values);
    let inside: Vec<f32> = values
        .iter()
        .copied()
        .filter(|v| v.is_finite() && *v > t)
        .collect();
    let step = inside.len().div_ceil(MAX_SAMPLES_PER_CASE).max(1);
    inside.into_iter().step_by(step).collect()
}

/// Extent (mm) along each voxel axis of the voxels inside the head.
fn head_extent_mm(v: &Volume<f32>) -> [f64; 3] {
    let t = head_threshold(v.data());
    let b = bounding_box(v.dims3(), v.data().iter().map(|x| *x > t));
    let sp = v.spacing_mm();
    b.map_or([0.0; 3], |(lo, hi)| {
        [0, 1, 2].map(|a| (hi[a] - lo[a] + 1) as f64 * sp[a])
    })
}

/// The voxel bounding box `(min, max)` (inclusive) of the `true` entries of a volume's voxels.
fn bounding_box(
    dims: [usize; 3],
    inside: impl Iterator<Item = bool>,
) -> Option<([usize; 3], [usize; 3])> {
    let mut b: Option<([usize; 3], [usize; 3])> = None;
    for (i, on) in inside.enumerate() {
        if !on {
            continue;
        }
        let idx = [
            i % dims[0],
            (i / dims[0]) % dims[1],
            i / (dims[0] * dims[1]),
        ];
        b = Some(match b {
            None => (idx, idx),
            Some((lo, hi)) => (
                [0, 1, 2].map(|a| lo[a].min(idx[a])),
                [0, 1, 2].map(|a| hi[a].max(idx[a])),
            ),
        });
    }
    b
}

/// Per foreground label of a mask: (value, voxels, bounding-box extent in mm).
fn label_voxels(mask: &Volume<u8>) -> Vec<(u8, usize, [f64; 3])> {
    let mut counts = [0usize; 256];
    for v in mask.data() {
        counts[*v as usize] += 1;
    }
    let sp = mask.spacing_mm();
    (1..=255u8)
        .filter(|v| counts[*v as usize] > 0)
        .map(|v| {
            let b = bounding_box(mask.dims3(), mask.data().iter().map(|x| *x == v));
            let extent = b.map_or([0.0; 3], |(lo, hi)| {
                [0, 1, 2].map(|a| (hi[a] - lo[a] + 1) as f64 * sp[a])
            });
            (v, counts[v as usize], extent)
        })
        .collect()
}

/// Each label's statistics over the cases that hold it.
fn label_stats(cases: &[CaseFingerprint], name_of: impl Fn(u8) -> String) -> Vec<LabelStats> {
    let mut values: Vec<u8> = cases
        .iter()
        .flat_map(|c| c.labels.iter().map(|l| l.0))
        .collect();
    values.sort_unstable();
    values.dedup();
    values
        .into_iter()
        .map(|value| {
            let with: Vec<(f64, [f64; 3])> = cases
                .iter()
                .filter_map(|c| {
                    let (_, n, extent) = c.labels.iter().find(|l| l.0 == value)?;
                    let voxel = c.spacing_mm.iter().product::<f64>();
                    Some((*n as f64 * voxel, *extent))
                })
                .collect();
            let volumes: Vec<f64> = with.iter().map(|w| w.0).collect();
            LabelStats {
                value,
                name: name_of(value),
                cases: with.len(),
                median_volume_mm3: median(volumes.clone()),
                min_volume_mm3: volumes.iter().copied().fold(f64::INFINITY, f64::min),
                median_extent_mm: [0, 1, 2].map(|a| median(with.iter().map(|w| w.1[a]).collect())),
            }
        })
        .collect()
}

/// Mean, SD and robust range of a sequence's pooled samples.
fn sequence_stats(name: &str, samples: &mut [f32]) -> SequenceStats {
    let n = samples.len().max(1) as f64;
    let mean = samples.iter().map(|v| f64::from(*v)).sum::<f64>() / n;
    let var = samples
        .iter()
        .map(|v| (f64::from(*v) - mean).powi(2))
        .sum::<f64>()
        / n;
    let values: Vec<f64> = samples.iter().map(|v| f64::from(*v)).collect();
    SequenceStats {
        name: name.to_string(),
        mean,
        sd: var.sqrt(),
        p005: quantile(values.clone(), 0.005),
        p995: quantile(values, 0.995),
    }
}

/// The median of `values` (0 when empty; the mean of the middle two for an even count).
pub fn median(values: Vec<f64>) -> f64 {
    let mut v = values;
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => 0.5 * (v[n / 2 - 1] + v[n / 2]),
    }
}

/// The `q`-quantile of `values` by linear interpolation between order statistics (0 when
/// empty).
pub fn quantile(values: Vec<f64>, q: f64) -> f64 {
    let mut v = values;
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return 0.0;
    }
    let pos = q.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}
