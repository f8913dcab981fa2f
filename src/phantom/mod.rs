//! The phantom generator: ready projects of synthetic brain cases, deterministic from a seed.
//!
//! Each 3D case has co-registered T1, T2, FLAIR, Gd-T1, DWI and ADC with their real contrasts
//! (T1: white matter bright, CSF dark; T2: CSF bright; FLAIR: CSF dark, lesions bright; Gd-T1:
//! enhancing tumour rim; DWI/ADC: infarct bright/dark), partial-volume blur, a smooth bias field and
//! Rician noise, on a grid with a random voxel size (0.7–1.2 mm) and a random storage orientation
//! and oblique pose written through real NIfTI affines. The reference mask labels the tiny
//! bilateral structure (habenula-sized, 20–40 mm³ per side, measured on the voxel grid) and the
//! lesions. The case class is learnable from the image: patients have lesions (infarcts, tumours,
//! white-matter lesions) and a smaller tiny structure (21–27 mm³ per side against 30–38 mm³);
//! some controls have one small white-matter lesion.
//!
//! Options: a fixed isotropic voxel size instead of the random one, and white-matter lesions that
//! each show on only one of T1, T2 and FLAIR (a question only multi-sequence input answers).
//!
//! Variants: 2D (single slices through the tiny structure) and 4D (BOLD-like time series at 3 mm
//! with three correlated networks, whose default-mode pair decouples in patients; focal lesions
//! there have no contrast but a strong slow fluctuation of their own, labelled
//! `abnormal_dynamics`).

mod anatomy;
pub mod template;

pub use anatomy::{Anatomy, Ellipsoid, Lesion, LesionKind, Tissue};
pub use template::Template;

use crate::project::{
    Case, InputForm, Label, LabelTable, Manifest, Project, ProjectError, SequenceFile, SequenceName,
};
use crate::volume::{write_volume, Affine, Volume, VolumeError, Voxel};
use glam::{DMat3, DQuat, DVec3};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use std::path::Path;

/// Label value of the left tiny structure.
pub const LABEL_HABENULA_L: u8 = 1;
/// Label value of the right tiny structure.
pub const LABEL_HABENULA_R: u8 = 2;
/// Label value of white-matter lesions.
pub const LABEL_LESION: u8 = 3;
/// Label value of infarcts.
pub const LABEL_INFARCT: u8 = 4;
/// Label value of tumours.
pub const LABEL_TUMOUR: u8 = 5;

/// Label value, in 4D projects, of the regions with abnormal dynamics.
pub const LABEL_ABNORMAL_DYNAMICS: u8 = 1;

/// Class names of phantom projects, in order.
pub const CLASSES: [&str; 2] = ["control", "patient"];

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct PhantomConfig {
    /// Number of cases.
    pub cases: usize,
    /// Seed: the same seed gives the same files.
    pub seed: u64,
    /// Input form: 3D multi-sequence, 2D slices or 4D time series.
    pub form: InputForm,
    /// Nominal voxels per axis: the field of view is `grid` mm (3D, 2D) or `3·grid` mm (4D).
    pub grid: usize,
    /// Time points of a 4D case.
    pub frames: usize,
    /// Voxel size (mm, isotropic) of 3D and 2D cases; `None`: a random 0.7–1.2 mm per axis.
    pub voxel_mm: Option<f64>,
    /// Every lesion a white-matter lesion, each visible on one of T1, T2 and FLAIR only (instead
    /// of bright on T2 and FLAIR together), so that only the three sequences together show them
    /// all.
    pub sequence_specific_lesions: bool,
    /// A thick-slice acquisition (3D form): slices this thick (mm) along the third stored
    /// axis, each the mean of the thin slices it covers; `None`: as generated.
    pub slice_mm: Option<f64>,
    /// Subjects derived from a real brain's template (Colin27 from Debian's mricron-data, or
    /// MNI152 from nilearn) instead of the analytic head.
    pub template: Option<template::TemplateSource>,
}

impl Default for PhantomConfig {
    fn default() -> Self {
        Self {
            cases: 10,
            seed: 1,
            form: InputForm::Volume3d,
            grid: 64,
            frames: 100,
            voxel_mm: None,
            sequence_specific_lesions: false,
            slice_mm: None,
            template: None,
        }
    }
}

/// The label table of phantom projects.
pub fn label_table() -> LabelTable {
    let l = |value, name: &str, color| Label {
        value,
        name: name.to_owned(),
        color,
    };
    LabelTable::new(vec![
        l(LABEL_HABENULA_L, "habenula_L", [255, 64, 64]),
        l(LABEL_HABENULA_R, "habenula_R", [64, 160, 255]),
        l(LABEL_LESION, "lesion", [255, 220, 0]),
        l(LABEL_INFARCT, "infarct", [0, 230, 200]),
        l(LABEL_TUMOUR, "tumour", [230, 0, 230]),
    ])
    .unwrap_or_default()
}

/// The label table of 4D phantom projects.
pub fn label_table_4d() -> LabelTable {
    LabelTable::new(vec![Label {
        value: LABEL_ABNORMAL_DYNAMICS,
        name: "abnormal_dynamics".to_owned(),
        color: [255, 140, 0],
    }])
    .unwrap_or_default()
}

/// The structural sequences of a 3D or 2D phantom case, in channel order.
pub fn structural_sequences() -> Vec<SequenceName> {
    vec![
        SequenceName::T1,
        SequenceName::T2,
        SequenceName::Flair,
        SequenceName::GdT1,
        SequenceName::Dwi,
        SequenceName::Adc,
    ]
}

/// One generated case in memory.
#[derive(Debug, Clone)]
pub struct PhantomCase {
    /// Case id.
    pub id: String,
    /// Whether it is a patient.
    pub patient: bool,
    /// Sequences as int16: magnitude images; ADC in 10⁻⁶ mm²/s (as scanners store it); BOLD 4D.
    pub images: Vec<(SequenceName, Volume<i16>)>,
    /// Reference label mask (4D: the regions with abnormal dynamics, on the 3D grid).
    pub mask: Option<Volume<u8>>,
    /// 4D only: the generator's network nodes on the 3D grid (0 outside; node `m` of network
    /// `k` is `2k + m + 1`; networks: default mode, motor, visual), the ground truth a seed map
    /// should find. Not written to the project.
    pub networks: Option<Volume<u8>>,
}

/// The voxel grid of a case and the head's pose in it.
struct Grid {
    dims: [usize; 3],
    affine: Affine,
    /// World → anatomical: `q = rot · (x − centre)`.
    to_anat_rot: DMat3,
    head_centre_mm: DVec3,
}

impl Grid {
    fn len(&self) -> usize {
        self.dims.iter().product()
    }

    fn anat_of(&self, idx: usize) -> DVec3 {
        let nx = self.dims[0];
        let ny = self.dims[1];
        let v = DVec3::new(
            (idx % nx) as f64,
            ((idx / nx) % ny) as f64,
            (idx / (nx * ny)) as f64,
        );
        self.to_anat_rot * (self.affine.vox_to_mm(v) - self.head_centre_mm)
    }

    /// A random grid: spacing from `spacing` (per axis), a random signed axis permutation, an
    /// oblique tilt for most cases, and a slightly rotated, shifted head.
    fn random(
        rng: &mut ChaCha8Rng,
        fov_mm: f64,
        spacing: (f64, f64),
        fixed_dims: Option<usize>,
    ) -> Self {
        let sp = [0; 3].map(|_| {
            if spacing.0 < spacing.1 {
                rng.random_range(spacing.0..spacing.1)
            } else {
                spacing.0
            }
        });
        let dims =
            [0, 1, 2].map(|a| fixed_dims.unwrap_or(((fov_mm / sp[a]).round() as usize).max(4)));
        let mut perm = [0usize, 1, 2];
        for i in (1..3).rev() {
            let j = rng.random_range(0..=i);
            perm.swap(i, j);
        }
        let mut cols = [DVec3::ZERO; 3];
        for a in 0..3 {
            let sign = if rng.random_bool(0.4) { -1.0 } else { 1.0 };
            let mut e = DVec3::ZERO;
            e[perm[a]] = sign * sp[a];
            cols[a] = e;
        }
        let tilt = if rng.random_bool(0.6) {
            random_rotation(rng, 5.0, 20.0)
        } else {
            DMat3::IDENTITY
        };
        let linear = tilt * DMat3::from_cols(cols[0], cols[1], cols[2]);
        let centre = DVec3::new(
            rng.random_range(-3.0..3.0),
            rng.random_range(-3.0..3.0),
            rng.random_range(-3.0..3.0),
        );
        let half = DVec3::new(
            dims[0] as f64 - 1.0,
            dims[1] as f64 - 1.0,
            dims[2] as f64 - 1.0,
        ) * 0.5;
        let origin = centre - linear * half;
        // Store exactly what NIfTI (f32) will hold, so reading back gives the same affine.
        let rows = Affine::from_linear_translation(linear, origin).rows();
        let f32_rows = rows.map(|r| r.map(|v| v as f32 as f64));
        let affine = Affine::from_rows3([f32_rows[0], f32_rows[1], f32_rows[2]]);
        let head_rot = random_rotation(rng, 0.0, 6.0);
        let head_centre = centre
            + DVec3::new(
                rng.random_range(-2.0..2.0),
                rng.random_range(-2.0..2.0),
                0.0,
            );
        Self {
            dims,
            affine,
            to_anat_rot: head_rot.transpose(),
            head_centre_mm: head_centre,
        }
    }
}

fn random_rotation(rng: &mut ChaCha8Rng, min_deg: f64, max_deg: f64) -> DMat3 {
    let axis = DVec3::new(
        rng.sample::<f64, _>(StandardNormal),
        rng.sample::<f64, _>(StandardNormal),
        rng.sample::<f64, _>(StandardNormal),
    )
    .try_normalize()
    .unwrap_or(DVec3::Z);
    let angle = if max_deg > min_deg {
        rng.random_range(min_deg..max_deg)
    } else {
        min_deg
    };
    DMat3::from_quat(DQuat::from_axis_angle(axis, angle.to_radians()))
}

/// Intensities per tissue: T1, T2, FLAIR, Gd-T1, DWI (0–1000 scale) and ADC (10⁻³ mm²/s).
fn contrast(t: Tissue) -> [f64; 6] {
    match t {
        Tissue::Air => [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
        Tissue::Scalp => [850.0, 550.0, 650.0, 850.0, 150.0, 0.5],
        Tissue::Skull => [80.0, 60.0, 60.0, 80.0, 30.0, 0.3],
        Tissue::Csf => [150.0, 1000.0, 80.0, 150.0, 80.0, 3.0],
        Tissue::Gm => [550.0, 620.0, 560.0, 560.0, 480.0, 0.85],
        Tissue::Wm => [800.0, 450.0, 430.0, 800.0, 420.0, 0.72],
        Tissue::DeepGm => [640.0, 540.0, 500.0, 640.0, 460.0, 0.78],
        Tissue::HabenulaL | Tissue::HabenulaR => [580.0, 660.0, 580.0, 600.0, 500.0, 0.9],
        Tissue::Lesion => [450.0, 850.0, 900.0, 460.0, 520.0, 1.1],
        Tissue::Infarct => [480.0, 780.0, 800.0, 480.0, 950.0, 0.35],
        Tissue::TumourRim => [520.0, 700.0, 720.0, 1000.0, 600.0, 0.9],
        Tissue::TumourCore => [400.0, 850.0, 650.0, 420.0, 450.0, 1.4],
        Tissue::LesionFlairOnly => [800.0, 450.0, 900.0, 800.0, 420.0, 0.72],
        Tissue::LesionT2Only => [800.0, 850.0, 430.0, 800.0, 420.0, 0.72],
        Tissue::LesionT1Only => [450.0, 450.0, 430.0, 450.0, 420.0, 0.72],
    }
}

const TISSUES: [Tissue; 16] = [
    Tissue::Air,
    Tissue::Scalp,
    Tissue::Skull,
    Tissue::Csf,
    Tissue::Gm,
    Tissue::Wm,
    Tissue::DeepGm,
    Tissue::HabenulaL,
    Tissue::HabenulaR,
    Tissue::Lesion,
    Tissue::Infarct,
    Tissue::TumourRim,
    Tissue::TumourCore,
    Tissue::LesionFlairOnly,
    Tissue::LesionT2Only,
    Tissue::LesionT1Only,
];

fn tissue_of(code: u8) -> Tissue {
    TISSUES.get(code as usize).copied().unwrap_or(Tissue::Air)
}

/// The per-case random stream: independent of how many cases are generated.
fn case_rng(seed: u64, index: usize) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index as u64 + 1);
    rng
}

/// Rasterise the tiny structure on the grid, tuning its size until the voxel-counted volume is
/// within 1 mm³ of `target_mm3` (or as close as the grid allows). Returns the measured volume.
fn place_tiny_structure(
    tissue: &mut [u8],
    grid: &Grid,
    e: &Ellipsoid,
    target_mm3: f64,
    code: Tissue,
) -> f64 {
    let inv = grid.affine.inverse().unwrap_or_else(Affine::identity);
    let anat_to_world = grid.to_anat_rot.transpose();
    // Voxel bounding box of a generous anatomical box around the ellipsoid.
    let reach = e.radii_mm.max_element() * 2.0;
    let mut lo = [f64::INFINITY; 3];
    let mut hi = [f64::NEG_INFINITY; 3];
    for corner in 0..8 {
        let d = DVec3::new(
            if corner & 1 == 0 { -reach } else { reach },
            if corner & 2 == 0 { -reach } else { reach },
            if corner & 4 == 0 { -reach } else { reach },
        );
        let v = inv.vox_to_mm(anat_to_world * (e.centre_mm + d) + grid.head_centre_mm);
        for a in 0..3 {
            lo[a] = lo[a].min(v[a]);
            hi[a] = hi[a].max(v[a]);
        }
    }
    let clamp = |x: f64, a: usize| (x.max(0.0) as usize).min(grid.dims[a] - 1);
    let (i0, i1) = (clamp(lo[0].floor(), 0), clamp(hi[0].ceil(), 0));
    let (j0, j1) = (clamp(lo[1].floor(), 1), clamp(hi[1].ceil(), 1));
    let (k0, k1) = (clamp(lo[2].floor(), 2), clamp(hi[2].ceil(), 2));
    let voxel_mm3 = grid.affine.linear().determinant().abs();
    let [nx, ny, _] = grid.dims;
    let inside = |scale: f64, idx: usize| {
        let q = grid.anat_of(idx);
        ((q - e.centre_mm) / (e.radii_mm * scale)).length() < 1.0
    };
    let count = |scale: f64| {
        let mut n = 0usize;
        for k in k0..=k1 {
            for j in j0..=j1 {
                for i in i0..=i1 {
                    if inside(scale, i + nx * (j + ny * k)) {
                        n += 1;
                    }
                }
            }
        }
        n as f64 * voxel_mm3
    };
    let best = tune_scale(target_mm3, e.volume_mm3(), count);
    for k in k0..=k1 {
        for j in j0..=j1 {
            for i in i0..=i1 {
                let idx = i + nx * (j + ny * k);
                if inside(best.0, idx) {
                    tissue[idx] = code as u8;
                }
            }
        }
    }
    best.2
}

/// The scale of a shape whose measured volume (`measure(scale)`, mm³; `analytic_mm3` at scale
/// 1) comes within 1 mm³ of `target_mm3`, or as close as the grid allows: `(scale, error,
/// measured)`.
fn tune_scale(target_mm3: f64, analytic_mm3: f64, measure: impl Fn(f64) -> f64) -> (f64, f64, f64) {
    let mut scale = (target_mm3 / analytic_mm3).cbrt();
    let mut best = (scale, f64::INFINITY, 0.0);
    for _ in 0..24 {
        let measured = measure(scale);
        let err = (measured - target_mm3).abs();
        if err < best.1 {
            best = (scale, err, measured);
        }
        if err <= 1.0 {
            break;
        }
        let ratio = if measured > 0.0 {
            target_mm3 / measured
        } else {
            1.5
        };
        // Damped step so a coarse grid does not oscillate.
        scale *= ratio.cbrt().clamp(0.8, 1.25).powf(0.7);
    }
    best
}

/// Separable Gaussian blur (σ in voxels) of a 3D image, for partial-volume edges.
fn blur(img: &mut [f32], dims: [usize; 3], sigma: f64) {
    let r = (2.0 * sigma).ceil() as isize;
    let w: Vec<f32> = (-r..=r)
        .map(|x| (-(x * x) as f64 / (2.0 * sigma * sigma)).exp() as f32)
        .collect();
    let sum: f32 = w.iter().sum();
    let w: Vec<f32> = w.iter().map(|v| v / sum).collect();
    let stride = [1, dims[0], dims[0] * dims[1]];
    let mut line = Vec::new();
    for axis in 0..3 {
        let n = dims[axis];
        if n < 2 {
            continue;
        }
        let others: Vec<usize> = (0..3).filter(|a| *a != axis).collect();
        for b in 0..dims[others[1]] {
            for a in 0..dims[others[0]] {
                let base = a * stride[others[0]] + b * stride[others[1]];
                line.clear();
                line.extend((0..n).map(|i| img[base + i * stride[axis]]));
                for i in 0..n {
                    let mut acc = 0.0;
                    for (t, wt) in w.iter().enumerate() {
                        let src = (i as isize + t as isize - r).clamp(0, n as isize - 1) as usize;
                        acc += wt * line[src];
                    }
                    img[base + i * stride[axis]] = acc;
                }
            }
        }
    }
}

/// A smooth multiplicative bias field (±~15 %) over normalised head coordinates.
fn bias_field(rng: &mut ChaCha8Rng) -> impl Fn(DVec3) -> f64 {
    let c: [f64; 6] = [0; 6].map(|_| rng.random_range(-0.12..0.12));
    move |n: DVec3| {
        (c[0] * n.x
            + c[1] * n.y
            + c[2] * n.z
            + c[3] * n.x * n.y
            + c[4] * n.y * n.z
            + c[5] * n.x * n.x)
            .exp()
    }
}

/// Rician magnitude of a true signal with Gaussian noise σ in each channel.
fn rician(rng: &mut ChaCha8Rng, signal: f64, sigma: f64) -> f64 {
    let re = signal + sigma * rng.sample::<f64, _>(StandardNormal);
    let im = sigma * rng.sample::<f64, _>(StandardNormal);
    (re * re + im * im).sqrt()
}

/// The tissue map of a grid.
fn tissue_map(grid: &Grid, anatomy: &Anatomy) -> Vec<u8> {
    (0..grid.len())
        .map(|i| anatomy.tissue(grid.anat_of(i)) as u8)
        .collect()
}

fn volume<T: Copy>(grid: &Grid, data: Vec<T>) -> Result<Volume<T>, VolumeError> {
    Volume::new(
        [grid.dims[0], grid.dims[1], grid.dims[2], 1],
        grid.affine,
        data,
    )
}

/// Generate case `index` of a configuration (the analytic head; see `generate_case_with`).
pub fn generate_case(cfg: &PhantomConfig, index: usize) -> Result<PhantomCase, VolumeError> {
    generate_case_with(cfg, None, index)
}

/// Generate case `index` of a configuration, from `template` when given (3D and 2D forms).
pub fn generate_case_with(
    cfg: &PhantomConfig,
    template: Option<&Template>,
    index: usize,
) -> Result<PhantomCase, VolumeError> {
    let mut rng = case_rng(cfg.seed, index);
    let patient = rng.random_bool(0.5);
    let id = format!(
        "{}_{index:03}",
        template.map_or("phantom", |t| t.kind.name())
    );
    match cfg.form {
        InputForm::TimeSeries4d => match template {
            Some(t) => template::generate_template_4d(cfg, t, &mut rng, id, patient),
            None => generate_4d(cfg, &mut rng, id, patient),
        },
        InputForm::Volume3d | InputForm::Slice2d => {
            let mut case = match template {
                Some(t) => template::generate_template_case(cfg, t, &mut rng, id, patient)?,
                None => generate_3d(cfg, &mut rng, id, patient)?,
            };
            if cfg.form == InputForm::Slice2d {
                case = to_single_slices(case)?;
            } else if let Some(mm) = cfg.slice_mm {
                case = thick_slices(case, mm)?;
            }
            Ok(case)
        }
    }
}

fn generate_3d(
    cfg: &PhantomConfig,
    rng: &mut ChaCha8Rng,
    id: String,
    patient: bool,
) -> Result<PhantomCase, VolumeError> {
    let fov = cfg.grid as f64;
    let spacing = cfg.voxel_mm.map_or((0.7, 1.2), |v| (v, v));
    let grid = Grid::random(rng, fov, spacing, None);
    let anatomy = Anatomy::random(rng, fov / 2.0, patient, cfg.sequence_specific_lesions);
    let mut tissue = tissue_map(&grid, &anatomy);
    let targets = if patient {
        [rng.random_range(21.0..27.0), rng.random_range(21.0..27.0)]
    } else {
        [rng.random_range(30.0..38.0), rng.random_range(30.0..38.0)]
    };
    place_tiny_structure(
        &mut tissue,
        &grid,
        &anatomy.habenula[0],
        targets[0],
        Tissue::HabenulaL,
    );
    place_tiny_structure(
        &mut tissue,
        &grid,
        &anatomy.habenula[1],
        targets[1],
        Tissue::HabenulaR,
    );
    let mask: Vec<u8> = tissue.iter().map(|t| tissue_of(*t).label()).collect();
    let head = anatomy.head_radii_mm;
    let gain = rng.random_range(0.9..1.1);
    let mut images = Vec::new();
    for (s, name) in structural_sequences().into_iter().enumerate() {
        let img: Vec<f32> = tissue
            .iter()
            .map(|t| contrast(tissue_of(*t))[s] as f32)
            .collect();
        let v = acquire(rng, &grid, &name, img, head, gain)?;
        images.push((name, v));
    }
    Ok(PhantomCase {
        id,
        patient,
        images,
        networks: None,
        mask: Some(volume(&grid, mask)?),
    })
}

/// The scanner's image of a noiseless one: partial-volume blur, then a bias field and Rician
/// noise (magnitude images; `head` normalises the field's coordinates) or, for ADC, Gaussian
/// noise on the computed map in 10⁻⁶ mm²/s.
fn acquire(
    rng: &mut ChaCha8Rng,
    grid: &Grid,
    name: &SequenceName,
    mut img: Vec<f32>,
    head: DVec3,
    gain: f64,
) -> Result<Volume<i16>, VolumeError> {
    blur(&mut img, grid.dims, 0.5);
    let bias = bias_field(rng);
    let data = if *name == SequenceName::Adc {
        img.iter()
            .map(|v| {
                let adc = *v as f64 + 0.03 * rng.sample::<f64, _>(StandardNormal);
                (1000.0 * adc).round().clamp(0.0, i16::MAX as f64) as i16
            })
            .collect()
    } else {
        img.iter()
            .enumerate()
            .map(|(i, v)| {
                let b = bias(grid.anat_of(i) / head);
                rician(rng, *v as f64 * b * gain, 20.0)
                    .round()
                    .clamp(0.0, i16::MAX as f64) as i16
            })
            .collect()
    };
    volume(grid, data)
}

/// The case as a thick-slice acquisition: every `k` neighbouring slices along the third stored
/// axis (`k` = `slice_mm` over that axis's spacing, rounded, at least 1) become one — each image
/// their mean (the slice profile: partial volume, and √k less noise), the reference the label at
/// the thick slice's middle; a remainder of thin slices at the end is dropped.
fn thick_slices(case: PhantomCase, slice_mm: f64) -> Result<PhantomCase, VolumeError> {
    let Some((_, first)) = case.images.first() else {
        return Ok(case);
    };
    let k = ((slice_mm / first.affine().spacing_mm()[2]).round() as usize).max(1);
    if k == 1 {
        return Ok(case);
    }
    let mean = |values: &[i16]| {
        let sum: i64 = values.iter().map(|v| i64::from(*v)).sum();
        (sum as f64 / values.len() as f64).round() as i16
    };
    let images = case
        .images
        .into_iter()
        .map(|(name, v)| Ok((name, merge_slices(&v, k, mean)?)))
        .collect::<Result<Vec<_>, VolumeError>>()?;
    let mask = case
        .mask
        .map(|m| merge_slices(&m, k, |values| values[values.len() / 2]))
        .transpose()?;
    Ok(PhantomCase {
        images,
        mask,
        ..case
    })
}

/// `v` with every `k` slices along its third axis merged into one by `merge` (their values,
/// first slice first), the affine's third column `k` times longer and its origin at the first
/// group's middle.
fn merge_slices<T: Copy>(
    v: &Volume<T>,
    k: usize,
    merge: impl Fn(&[T]) -> T,
) -> Result<Volume<T>, VolumeError> {
    let [nx, ny, nz, nt] = v.dims();
    let groups = nz / k;
    if groups == 0 {
        return Err(VolumeError::Shape(format!(
            "{nz} slices cannot make one of {k}"
        )));
    }
    let mut out = Vec::with_capacity(nx * ny * groups * nt);
    let mut values = Vec::with_capacity(k);
    for t in 0..nt {
        for g in 0..groups {
            for y in 0..ny {
                for x in 0..nx {
                    values.clear();
                    values
                        .extend((0..k).map(|d| v.data()[x + nx * (y + ny * (g * k + d + nz * t))]));
                    out.push(merge(&values));
                }
            }
        }
    }
    let linear = v.affine().linear();
    let thick = DMat3::from_cols(linear.col(0), linear.col(1), linear.col(2) * k as f64);
    let origin = v.affine().translation_mm() + linear.col(2) * ((k - 1) as f64 / 2.0);
    // What NIfTI (f32) will hold, as `Grid` stores it.
    let rows = Affine::from_linear_translation(thick, origin).rows();
    let rows = rows.map(|r| r.map(|x| x as f32 as f64));
    let affine = Affine::from_rows3([rows[0], rows[1], rows[2]]);
    Volume::new([nx, ny, groups, nt], affine, out)
}

/// Cut one slice (along the third stored axis) through the tiny structure from every image.
fn to_single_slices(case: PhantomCase) -> Result<PhantomCase, VolumeError> {
    let mask = case
        .mask
        .ok_or_else(|| VolumeError::Shape("a 2D phantom needs a mask".into()))?;
    let [nx, ny, nz, _] = mask.dims();
    let (mut sum, mut n) = (0usize, 0usize);
    for (i, v) in mask.data().iter().enumerate() {
        if *v == LABEL_HABENULA_L || *v == LABEL_HABENULA_R {
            sum += i / (nx * ny);
            n += 1;
        }
    }
    let k = sum.checked_div(n).unwrap_or(nz / 2);
    let rows = mask.affine().rows();
    let shift = mask.affine().vox_to_mm(DVec3::new(0.0, 0.0, k as f64));
    let affine = Affine::from_rows3([
        [rows[0][0], rows[0][1], rows[0][2], shift.x],
        [rows[1][0], rows[1][1], rows[1][2], shift.y],
        [rows[2][0], rows[2][1], rows[2][2], shift.z],
    ]);
    fn cut<T: Copy>(v: &Volume<T>, k: usize, affine: Affine) -> Result<Volume<T>, VolumeError> {
        let n = v.dims()[0] * v.dims()[1];
        Volume::new(
            [v.dims()[0], v.dims()[1], 1, 1],
            affine,
            v.data()[k * n..(k + 1) * n].to_vec(),
        )
    }
    let images = case
        .images
        .into_iter()
        .map(|(name, img)| Ok((name, cut(&img, k, affine)?)))
        .collect::<Result<_, VolumeError>>()?;
    Ok(PhantomCase {
        id: case.id,
        patient: case.patient,
        images,
        networks: None,
        mask: Some(cut(&mask, k, affine)?),
    })
}

/// Network nodes of the 4D phantom (normalised head coordinates): pairs that co-fluctuate.
const NODES: [[[f64; 3]; 2]; 3] = [
    [[0.0, 0.6, 0.25], [0.0, -0.6, 0.3]], // default mode: medial prefrontal, posterior cingulate
    [[-0.5, -0.1, 0.5], [0.5, -0.1, 0.5]], // motor, left-right
    [[-0.2, -0.72, 0.1], [0.2, -0.72, 0.1]], // visual, left-right
];

/// An AR(1) series with unit variance.
fn ar1(rng: &mut ChaCha8Rng, n: usize, phi: f64) -> Vec<f64> {
    let mut x = rng.sample::<f64, _>(StandardNormal);
    let k = (1.0 - phi * phi).sqrt();
    (0..n)
        .map(|_| {
            x = phi * x + k * rng.sample::<f64, _>(StandardNormal);
            x
        })
        .collect()
}

/// A 4D (BOLD-like) case at 3 mm: three node pairs co-fluctuating (the default-mode pair
/// decoupled in patients), focal lesions with only a slow fluctuation of their own (the mask),
/// and the networks' nodes as a label volume.
fn generate_4d(
    cfg: &PhantomConfig,
    rng: &mut ChaCha8Rng,
    id: String,
    patient: bool,
) -> Result<PhantomCase, VolumeError> {
    let spacing = 3.0;
    let fov = cfg.grid as f64 * spacing;
    let grid = Grid::random(rng, fov, (spacing, spacing), Some(cfg.grid));
    let anatomy = Anatomy::random(rng, fov / 2.0, patient, false);
    let tissue = tissue_map(&grid, &anatomy);
    let t_len = cfg.frames.max(2);
    let series = network_series(rng, t_len, patient);
    // Focal lesions show no contrast here, only abnormal dynamics: a strong slow fluctuation of
    // their own (the segmentation target of the 4D form).
    let focus = ar1(rng, t_len, 0.95);
    let head = anatomy.head_radii_mm;
    let node_of = |v: usize| network_node(grid.anat_of(v) / head);
    let signals = BoldSignals {
        t_len,
        series: &series,
        focus: &focus,
        node_of: &node_of,
    };
    bold_case(rng, &grid, &tissue, &signals, (id, patient))
}

/// A 4D case from its grid's `tissue` and the network and focal signals.
fn bold_case(
    rng: &mut ChaCha8Rng,
    grid: &Grid,
    tissue: &[u8],
    signals: &BoldSignals<'_>,
    (id, patient): (String, bool),
) -> Result<PhantomCase, VolumeError> {
    let (data, networks) = bold_voxels(rng, grid, tissue, signals);
    let mut bold = Volume::new(
        [grid.dims[0], grid.dims[1], grid.dims[2], signals.t_len],
        grid.affine,
        data,
    )?;
    bold.set_time_step_s(2.0);
    let mask = tissue
        .iter()
        .map(|t| u8::from(is_focal(tissue_of(*t))) * LABEL_ABNORMAL_DYNAMICS)
        .collect();
    Ok(PhantomCase {
        id,
        patient,
        images: vec![(SequenceName::Bold, bold)],
        mask: Some(volume(grid, mask)?),
        networks: Some(volume(grid, networks)?),
    })
}

/// For each node pair of [`NODES`], the two nodes' `t_len`-frame series: AR(1) series whose
/// correlation is the pair's coupling (patients' default-mode pair decouples).
fn network_series(rng: &mut ChaCha8Rng, t_len: usize, patient: bool) -> Vec<[Vec<f64>; 2]> {
    let coupling = [if patient { 0.3 } else { 0.85 }, 0.85, 0.85];
    let mut series = Vec::new();
    for c in coupling {
        let shared = ar1(rng, t_len, 0.85);
        let private = ar1(rng, t_len, 0.85);
        let second: Vec<f64> = shared
            .iter()
            .zip(&private)
            .map(|(s, p)| c * s + (1.0f64 - c * c).sqrt() * p)
            .collect();
        series.push([shared, second]);
    }
    series
}

/// Whether a tissue is a focal lesion (abnormal dynamics in the 4D form).
fn is_focal(t: Tissue) -> bool {
    matches!(
        t,
        Tissue::Lesion | Tissue::Infarct | Tissue::TumourRim | Tissue::TumourCore
    )
}

/// The network node `(pair, member)` of [`NODES`] within 0.12 of `pos_head` (normalised head
/// coordinates), if any.
fn network_node(pos_head: DVec3) -> Option<(usize, usize)> {
    let node_r = 0.12;
    for (k, pair) in NODES.iter().enumerate() {
        for (m, c) in pair.iter().enumerate() {
            if (pos_head - DVec3::from_array(*c)).length() < node_r {
                return Some((k, m));
            }
        }
    }
    None
}

/// T2*-weighted baseline signal per tissue.
fn bold_baseline(t: Tissue) -> f64 {
    match t {
        Tissue::Air => 0.0,
        Tissue::Scalp => 250.0,
        Tissue::Skull => 40.0,
        Tissue::Csf => 1000.0,
        Tissue::Wm => 600.0,
        _ => 800.0,
    }
}

/// The fluctuations a 4D case's voxels draw on.
struct BoldSignals<'a> {
    /// Frames.
    t_len: usize,
    /// Node pairs' series (see [`network_series`]).
    series: &'a [[Vec<f64>; 2]],
    /// The focal lesions' own slow fluctuation.
    focus: &'a [f64],
    /// The network node `(pair, member)` a brain voxel (by index) belongs to, if any.
    node_of: &'a dyn Fn(usize) -> Option<(usize, usize)>,
}

/// The BOLD frames (`[voxel + frame · n_vox]`, Rician noise, a random linear drift) of each
/// voxel of `tissue`, and the network-node label of each voxel (`2·pair + member + 1`, 0 off
/// the nodes).
fn bold_voxels(
    rng: &mut ChaCha8Rng,
    grid: &Grid,
    tissue: &[u8],
    signals: &BoldSignals<'_>,
) -> (Vec<i16>, Vec<u8>) {
    let t_len = signals.t_len;
    let n_vox = grid.len();
    let mut data = vec![0i16; n_vox * t_len];
    let mut networks = vec![0u8; n_vox];
    let drift = rng.random_range(-0.01..0.01);
    for (v, t_code) in tissue.iter().enumerate() {
        let t = tissue_of(*t_code);
        let b = bold_baseline(t);
        if b == 0.0 {
            for f in 0..t_len {
                data[v + f * n_vox] = rician(rng, 0.0, 8.0).round() as i16;
            }
            continue;
        }
        let brain = !matches!(t, Tissue::Scalp | Tissue::Skull | Tissue::Csf);
        let node = if brain { (signals.node_of)(v) } else { None };
        if let Some((k, m)) = node {
            networks[v] = (2 * k + m + 1) as u8;
        }
        for f in 0..t_len {
            let mut s =
                1.0 + drift * f as f64 / t_len as f64 + 0.01 * rng.sample::<f64, _>(StandardNormal);
            if let Some((k, m)) = node {
                s += 0.03 * signals.series[k][m][f];
            }
            if is_focal(t) {
                s += 0.06 * signals.focus[f];
            }
            data[v + f * n_vox] =
                rician(rng, b * s, 8.0).round().clamp(0.0, i16::MAX as f64) as i16;
        }
    }
    (data, networks)
}

fn write<T: Voxel>(root: &Path, rel: &str, v: &Volume<T>) -> Result<(), ProjectError> {
    Ok(write_volume(&root.join(rel), v)?)
}

/// Write one generated case into a project folder and return its manifest record.
pub fn write_case(root: &Path, case: &PhantomCase, form: InputForm) -> Result<Case, ProjectError> {
    let rel_dir = Project::case_dir_rel(&case.id);
    let dir = root.join(&rel_dir);
    std::fs::create_dir_all(&dir).map_err(|e| crate::project::ProjectError::Io {
        path: dir.clone(),
        source: e,
    })?;
    let mut record = Case::new(case.id.clone(), form);
    for (name, img) in &case.images {
        let rel = format!("{rel_dir}/{}.nii.gz", name.as_str());
        write(root, &rel, img)?;
        record.sequences.push(SequenceFile {
            name: name.clone(),
            path: rel,
        });
    }
    if let Some(mask) = &case.mask {
        let rel = format!("{rel_dir}/reference.nii.gz");
        write(root, &rel, mask)?;
        record.reference_mask = Some(rel);
    }
    record.class_label = Some(CLASSES[case.patient as usize].to_owned());
    Ok(record)
}

/// Generate a whole project into `out` (its template, if any, read from `cfg.template`).
/// `progress(done, total)` is called after each case.
pub fn generate_project(
    out: &Path,
    cfg: &PhantomConfig,
    progress: impl FnMut(usize, usize),
) -> Result<Project, ProjectError> {
    let template = cfg.template.as_ref().map(|t| t.load()).transpose()?;
    generate_project_with(out, cfg, template.as_ref(), progress)
}

/// Generate a whole project into `out` from `template` (read already) or the analytic head.
pub fn generate_project_with(
    out: &Path,
    cfg: &PhantomConfig,
    template: Option<&Template>,
    mut progress: impl FnMut(usize, usize),
) -> Result<Project, ProjectError> {
    Project::ensure_new(out)?;
    std::fs::create_dir_all(out).map_err(|e| crate::project::ProjectError::Io {
        path: out.to_path_buf(),
        source: e,
    })?;
    let mut manifest = Manifest::new(format!("phantom {} (seed {})", cfg.form.as_str(), cfg.seed));
    manifest.classes = CLASSES.iter().map(|c| c.to_string()).collect();
    manifest.sequences = match cfg.form {
        InputForm::TimeSeries4d => vec![SequenceName::Bold],
        _ => structural_sequences(),
    };
    manifest.labels = match cfg.form {
        InputForm::TimeSeries4d => label_table_4d(),
        _ => label_table(),
    };
    if let Some(t) = template {
        if cfg.form != InputForm::TimeSeries4d {
            manifest.labels = template::label_table();
        }
        let name = t.kind.name();
        manifest.name = format!("{name} {} (seed {})", cfg.form.as_str(), cfg.seed);
    }
    for i in 0..cfg.cases {
        let case = generate_case_with(cfg, template, i)?;
        manifest.cases.push(write_case(out, &case, cfg.form)?);
        progress(i + 1, cfg.cases);
    }
    Project::create(out, manifest)
}

/// A `size`³ T1-weighted phantom image at 1 mm, as f32, for benchmarks.
pub fn benchmark_t1(size: usize, seed: u64) -> Result<Volume<f32>, VolumeError> {
    let mut rng = case_rng(seed, 0);
    let fov = size as f64;
    let grid = Grid::random(&mut rng, fov, (1.0, 1.0), Some(size));
    let anatomy = Anatomy::random(&mut rng, fov / 2.0, true, false);
    let tissue = tissue_map(&grid, &anatomy);
    let mut img: Vec<f32> = tissue
        .iter()
        .map(|t| contrast(tissue_of(*t))[0] as f32)
        .collect();
    blur(&mut img, grid.dims, 0.5);
    let bias = bias_field(&mut rng);
    let head = anatomy.head_radii_mm;
    for (i, v) in img.iter_mut().enumerate() {
        *v = rician(&mut rng, *v as f64 * bias(grid.anat_of(i) / head), 20.0) as f32;
    }
    volume(&grid, img)
}
