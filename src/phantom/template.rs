//! Subjects derived from a real brain: the Colin27 template of Debian's `mricron-data` (BSD-3;
//! its T1 at 1 mm `ch2`, the brain-extracted T1 `ch2bet`, the AAL atlas `aal` on the same grid),
//! or the MNI152 2009 template nilearn's wheel ships (an average of 152 brains: its T1 and grey
//! and white matter probability maps), with AAL carried onto it through MNI millimetres (both
//! are in MNI space; how well it fits is measured, see `AtlasFit`).
//!
//! A subject is the template seen through a random smooth diffeomorphic deformation (a
//! stationary velocity field on a coarse grid, integrated by scaling and squaring), a random
//! pose, voxel size and storage orientation (the phantom's `Grid`), with sequences synthesised
//! from the template's tissues (CSF, grey and white matter by 3-means of the brain's T1, the
//! atlas's deep grey matter) with each sequence's contrast, per-subject random contrast (the
//! domain randomisation of SynthSeg) and the real T1's texture, a bias field and Rician noise.
//! Labels are carried by the same deformation: the habenula (at its anatomical place beside the
//! third ventricle, its volume tuned per side), focal lesions in white matter, and the atlas's
//! named subcortical structures. Patients have lesions and a smaller habenula, as in the
//! phantom. A 4D subject is the whole brain at 3 mm with the phantom's BOLD signals on the
//! template's tissues and the resting-state network nodes in grey matter at their MNI places.
//!
//! Invariants: deterministic per seed and case index; every template file is read once and
//! checked (one grid for a template's files); a 3D/2D field of view is a box of `grid` mm about
//! the habenulae (the deep grey matter; as a 7T slab would be), a 4D one `3·grid` mm about the
//! brain's middle, in the template's millimetres.

use super::anatomy::{LesionKind, Tissue};
use super::{contrast, Grid};
use crate::volume::{read_volume, Volume, VolumeError};
use glam::DVec3;
use rand::RngExt;
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use std::path::{Path, PathBuf};

/// Where Debian's `mricron-data` installs the templates.
pub const DEFAULT_TEMPLATE_DIR: &str = "/usr/share/mricron/templates";

/// An AAL structure kept: its code in the AAL atlas, its label value in the subjects, its name
/// and colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Structure {
    /// The structure's code in the AAL atlas.
    pub aal_code: u8,
    /// Its label value in the subjects.
    pub value: u8,
    /// Its name.
    pub name: &'static str,
    /// Its colour: each apart from the others and from the phantom's labels (the default
    /// palette gave the left thalamus the tumour's magenta and the amygdalae the lesion's
    /// yellow and the infarct's cyan).
    pub colour: [u8; 3],
}

/// The AAL structures kept.
pub const STRUCTURES: [Structure; 12] = [
    Structure {
        aal_code: 77,
        value: 6,
        name: "thalamus_L",
        colour: [0, 128, 0],
    },
    Structure {
        aal_code: 78,
        value: 7,
        name: "thalamus_R",
        colour: [110, 200, 110],
    },
    Structure {
        aal_code: 71,
        value: 8,
        name: "caudate_L",
        colour: [135, 206, 235],
    },
    Structure {
        aal_code: 72,
        value: 9,
        name: "caudate_R",
        colour: [30, 80, 170],
    },
    Structure {
        aal_code: 73,
        value: 10,
        name: "putamen_L",
        colour: [255, 160, 70],
    },
    Structure {
        aal_code: 74,
        value: 11,
        name: "putamen_R",
        colour: [190, 100, 30],
    },
    Structure {
        aal_code: 75,
        value: 12,
        name: "pallidum_L",
        colour: [20, 40, 255],
    },
    Structure {
        aal_code: 76,
        value: 13,
        name: "pallidum_R",
        colour: [120, 130, 255],
    },
    Structure {
        aal_code: 37,
        value: 14,
        name: "hippocampus_L",
        colour: [200, 160, 240],
    },
    Structure {
        aal_code: 38,
        value: 15,
        name: "hippocampus_R",
        colour: [128, 64, 192],
    },
    Structure {
        aal_code: 41,
        value: 16,
        name: "amygdala_L",
        colour: [255, 182, 193],
    },
    Structure {
        aal_code: 42,
        value: 17,
        name: "amygdala_R",
        colour: [219, 112, 147],
    },
];

/// The habenulae in the template (mm; left, right): at the dorsomedial posterior thalamus, beside
/// the third ventricle.
pub const HABENULA_MM: [[f64; 3]; 2] = [[-3.5, -26.0, 3.5], [3.5, -26.0, 3.5]];

/// Where the field of view is centred (template mm): between the habenulae.
pub const FOV_CENTRE_MM: [f64; 3] = [0.0, -20.0, 3.0];

/// The nilearn files of the MNI152 2009 template (1 mm, symmetric, release a).
pub const MNI152_FILES: [&str; 3] = [
    "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
];

/// Which real brain subjects are derived from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TemplateKind {
    /// Colin27 (one person scanned 27 times; mricron-data).
    Colin27,
    /// MNI152 2009 (an average of 152 brains; nilearn).
    Mni152,
}

impl TemplateKind {
    /// The name cases and projects carry.
    pub fn name(self) -> &'static str {
        match self {
            TemplateKind::Colin27 => "colin27",
            TemplateKind::Mni152 => "mni152",
        }
    }
}

/// Where a template's files are.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateSource {
    /// Which template.
    pub kind: TemplateKind,
    /// Its files (Colin27: `ch2`, `ch2bet`, `aal`; MNI152: `MNI152_FILES`).
    pub dir: PathBuf,
    /// The AAL atlas's folder (MNI152 only; mricron-data's).
    pub atlas_dir: PathBuf,
}

impl TemplateSource {
    /// Colin27 from `dir`.
    pub fn colin27(dir: PathBuf) -> Self {
        Self {
            kind: TemplateKind::Colin27,
            atlas_dir: dir.clone(),
            dir,
        }
    }

    /// The template read and checked.
    pub fn load(&self) -> Result<Template, VolumeError> {
        match self.kind {
            TemplateKind::Colin27 => Template::colin27(&self.dir),
            TemplateKind::Mni152 => Template::mni152(&self.dir, &self.atlas_dir),
        }
    }
}

/// The folder of nilearn's bundled data (`…/nilearn/datasets/data`) as `python3` finds the
/// package (without importing it), if it does.
pub fn nilearn_data_dir() -> Option<PathBuf> {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import importlib.util as u; print(u.find_spec('nilearn').submodule_search_locations[0])",
        ])
        .output()
        .ok()?;
    let root = String::from_utf8(out.stdout).ok()?;
    let dir = PathBuf::from(root.trim()).join("datasets").join("data");
    (out.status.success() && dir.join(MNI152_FILES[0]).is_file()).then_some(dir)
}

/// How well an atlas structure carried onto a template fits the template's own tissue maps:
/// the share of its voxels that the template calls grey matter (probability ≥ 0.5), and the
/// same share in the 2 mm shell around it (a structure that fits is grey inside and less so
/// around it).
#[derive(Debug, Clone, PartialEq)]
pub struct AtlasFit {
    /// The structure's name.
    pub name: &'static str,
    /// Its voxels on the template.
    pub voxels: usize,
    /// Grey-matter share inside.
    pub grey_inside: f64,
    /// Grey-matter share in the 2 mm shell around it.
    pub grey_around: f64,
}

/// The template, ready to sample.
pub struct Template {
    /// Which template.
    pub kind: TemplateKind,
    /// The T1 (the template's grid and affine).
    pub t1: Volume<f32>,
    /// The tissue code (`Tissue as u8`) of each voxel.
    pub tissue: Vec<u8>,
    /// The label value (`STRUCTURES`) of each voxel, 0 elsewhere.
    pub atlas: Vec<u8>,
    /// Mean T1 of each tissue code (texture reference).
    pub tissue_mean_t1: [f32; 16],
    /// World mm → template voxel (the T1's affine inverted once).
    mm_to_vox: crate::volume::Affine,
    /// How the atlas fits the template's tissue maps (MNI152; empty for Colin27, whose atlas
    /// was drawn on it).
    pub atlas_fit: Vec<AtlasFit>,
}

/// A template file read, or the problem naming it.
fn read_f32(dir: &Path, name: &str) -> Result<Volume<f32>, VolumeError> {
    let path: PathBuf = dir.join(name);
    read_volume(&path).map(|v| v.to_f32()).map_err(|e| {
        let install = if name.starts_with("mni_icbm152") {
            "install nilearn (pip install nilearn)"
        } else {
            "install Debian's mricron-data"
        };
        VolumeError::Shape(format!(
            "{}: {e} ({install}, or give --template-dir)",
            path.display()
        ))
    })
}

/// The AAL codes of `aal` as `STRUCTURES` label values (0 for the rest).
fn structure_labels(aal: &[f32]) -> Vec<u8> {
    aal.iter()
        .map(|v| {
            let code = v.round() as u8;
            STRUCTURES
                .iter()
                .find(|s| s.aal_code == code)
                .map_or(0, |s| s.value)
        })
        .collect()
}

/// `mask` with the holes of each axial slice filled (regions of the complement that do not
/// reach the slice's border: the ventricles inside a grey + white matter mask).
fn fill_holes_axially(mask: &[bool], dims: [usize; 3]) -> Vec<bool> {
    let slice = dims[0] * dims[1];
    let mut out = mask.to_vec();
    for k in 0..dims[2] {
        let m = &mask[k * slice..(k + 1) * slice];
        let flat = [dims[0], dims[1], 1];
        for region in crate::volume::regions::connected_regions(flat, |i| !m[i]) {
            let on_border = region.iter().any(|i| {
                let (x, y) = (i % dims[0], i / dims[0]);
                x == 0 || y == 0 || x + 1 == dims[0] || y + 1 == dims[1]
            });
            if !on_border {
                region.into_iter().for_each(|i| out[k * slice + i] = true);
            }
        }
    }
    out
}

/// 1D 3-means of `values` (CSF, grey, white matter of a T1 brain): the two thresholds.
fn three_means(values: &[f32]) -> [f32; 2] {
    let (lo, hi) = values
        .iter()
        .fold((f32::MAX, f32::MIN), |(a, b), v| (a.min(*v), b.max(*v)));
    let mut c = [
        lo + 0.2 * (hi - lo),
        lo + 0.5 * (hi - lo),
        lo + 0.8 * (hi - lo),
    ];
    for _ in 0..30 {
        let mut sum = [0f64; 3];
        let mut n = [0usize; 3];
        for v in values {
            let k = (0..3)
                .min_by(|a, b| (v - c[*a]).abs().total_cmp(&(v - c[*b]).abs()))
                .unwrap_or(0);
            sum[k] += f64::from(*v);
            n[k] += 1;
        }
        c = [0, 1, 2].map(|k| {
            if n[k] > 0 {
                (sum[k] / n[k] as f64) as f32
            } else {
                c[k]
            }
        });
    }
    [(c[0] + c[1]) / 2.0, (c[1] + c[2]) / 2.0]
}

impl Template {
    /// Read Colin27 (`ch2`, `ch2bet`, `aal`) from `dir`.
    pub fn colin27(dir: &Path) -> Result<Template, VolumeError> {
        let t1 = read_f32(dir, "ch2.nii.gz")?;
        let brain = read_f32(dir, "ch2bet.nii.gz")?;
        let aal = read_f32(dir, "aal.nii.gz")?;
        if brain.dims3() != t1.dims3() || aal.dims3() != t1.dims3() {
            return Err(VolumeError::Shape(format!(
                "{}: ch2, ch2bet and aal must share one grid",
                dir.display()
            )));
        }
        let n = t1.frame_len();
        let in_brain: Vec<bool> = brain.data()[..n].iter().map(|v| *v > 0.0).collect();
        // Every 5th brain voxel is plenty for three means.
        let brain_t1: Vec<f32> = (0..n)
            .step_by(5)
            .filter(|i| in_brain[*i])
            .map(|i| t1.data()[i])
            .collect();
        let [csf_gm, gm_wm] = three_means(&brain_t1);
        let atlas = structure_labels(&aal.data()[..n]);
        let tissue: Vec<u8> = (0..n)
            .map(|i| {
                let v = t1.data()[i];
                let t = match (in_brain[i], atlas[i]) {
                    (false, _) if v > 25.0 => Tissue::Scalp,
                    (false, _) => Tissue::Air,
                    (true, 6..=13) => Tissue::DeepGm,
                    (true, _) if v < csf_gm => Tissue::Csf,
                    (true, _) if v < gm_wm => Tissue::Gm,
                    (true, _) => Tissue::Wm,
                };
                t as u8
            })
            .collect();
        Template::from_tissues(TemplateKind::Colin27, t1, tissue, atlas, dir)
    }

    /// Read MNI152 2009 (`MNI152_FILES`) from `dir` and AAL from `atlas_dir`: tissues from the
    /// grey and white matter maps (the larger where they sum to half or more, CSF elsewhere
    /// in the brain: the maps' mask with each axial slice's holes filled), AAL resampled onto
    /// its grid through MNI millimetres (nearest voxel), and the fit measured.
    pub fn mni152(dir: &Path, atlas_dir: &Path) -> Result<Template, VolumeError> {
        let [t1, gm, wm] = MNI152_FILES.map(|f| read_f32(dir, f));
        let (t1, gm, wm) = (t1?, gm?, wm?);
        if gm.dims3() != t1.dims3() || wm.dims3() != t1.dims3() {
            return Err(VolumeError::Shape(format!(
                "{}: the MNI152 T1 and tissue maps must share one grid",
                dir.display()
            )));
        }
        let aal = read_f32(atlas_dir, "aal.nii.gz")?;
        let aal = crate::volume::resample::resample_to_grid(
            &aal,
            t1.dims3(),
            *t1.affine(),
            crate::volume::resample::Interpolation::Nearest,
        )?;
        let n = t1.frame_len();
        // The maps hold probabilities scaled to their maximum (255 in nilearn's files).
        let scale = gm.data()[..n]
            .iter()
            .chain(&wm.data()[..n])
            .fold(0f32, |m, v| m.max(*v));
        let p = |v: &Volume<f32>, i: usize| v.data()[i] / scale.max(1e-6);
        let tissue_like: Vec<bool> = (0..n).map(|i| p(&gm, i) + p(&wm, i) >= 0.5).collect();
        let in_brain = fill_holes_axially(&tissue_like, t1.dims3());
        let atlas = structure_labels(&aal.data()[..n]);
        let brain_mean = mean_where(&t1.data()[..n], &in_brain);
        let tissue: Vec<u8> = (0..n)
            .map(|i| {
                let t = match (in_brain[i], atlas[i]) {
                    (false, _) if t1.data()[i] > 0.2 * brain_mean => Tissue::Scalp,
                    (false, _) => Tissue::Air,
                    (true, 6..=13) => Tissue::DeepGm,
                    (true, _) if !tissue_like[i] => Tissue::Csf,
                    (true, _) if p(&gm, i) > p(&wm, i) => Tissue::Gm,
                    (true, _) => Tissue::Wm,
                };
                t as u8
            })
            .collect();
        let grey: Vec<bool> = (0..n).map(|i| p(&gm, i) >= 0.5).collect();
        let fit = atlas_fit(&atlas, &grey, t1.dims3());
        let mut template = Template::from_tissues(TemplateKind::Mni152, t1, tissue, atlas, dir)?;
        template.atlas_fit = fit;
        Ok(template)
    }

    /// A template from its T1 and the tissue and atlas label of each voxel.
    fn from_tissues(
        kind: TemplateKind,
        t1: Volume<f32>,
        tissue: Vec<u8>,
        atlas: Vec<u8>,
        dir: &Path,
    ) -> Result<Template, VolumeError> {
        let mut sums = [(0f64, 0usize); 16];
        for (t, v) in tissue.iter().zip(t1.data()) {
            let s = &mut sums[usize::from(*t).min(15)];
            s.0 += f64::from(*v);
            s.1 += 1;
        }
        let tissue_mean_t1 = sums.map(|(s, n)| if n > 0 { (s / n as f64) as f32 } else { 1.0 });
        let mm_to_vox = t1.affine().inverse().ok_or_else(|| {
            VolumeError::Shape(format!("{}: the T1's affine is singular", dir.display()))
        })?;
        Ok(Template {
            kind,
            mm_to_vox,
            t1,
            tissue,
            atlas,
            tissue_mean_t1,
            atlas_fit: Vec::new(),
        })
    }

    /// The template voxel nearest `mm`, if inside.
    fn nearest(&self, mm: DVec3) -> Option<usize> {
        let v = self.mm_to_vox.vox_to_mm(mm).round();
        let [nx, ny, nz] = self.t1.dims3();
        let inside = (0..3).all(|a| v[a] >= 0.0 && v[a] < [nx, ny, nz][a] as f64);
        inside.then(|| v.x as usize + nx * (v.y as usize + ny * v.z as usize))
    }

    /// The T1 at `mm` (trilinear; 0 outside).
    fn t1_at(&self, mm: DVec3) -> f32 {
        let frame = &self.t1.data()[..self.t1.frame_len()];
        crate::volume::resample::trilinear(frame, self.t1.dims3(), self.mm_to_vox.vox_to_mm(mm))
    }
}

/// The mean of `values` where `mask` holds (0 when it holds nowhere).
fn mean_where(values: &[f32], mask: &[bool]) -> f32 {
    let (sum, count) = values
        .iter()
        .zip(mask)
        .filter(|(_, m)| **m)
        .fold((0f64, 0usize), |(s, c), (v, _)| (s + f64::from(*v), c + 1));
    if count == 0 {
        0.0
    } else {
        (sum / count as f64) as f32
    }
}

/// Each structure's fit (see `AtlasFit`) of `atlas` (label values) against `grey` on a 1 mm
/// grid `dims`; each measured in its own box, grown by 3 voxels.
fn atlas_fit(atlas: &[u8], grey: &[bool], dims: [usize; 3]) -> Vec<AtlasFit> {
    STRUCTURES
        .iter()
        .map(|Structure { value, name, .. }| {
            let voxel = |i: usize| {
                [
                    i % dims[0],
                    (i / dims[0]) % dims[1],
                    i / (dims[0] * dims[1]),
                ]
            };
            let (mut lo, mut hi) = (dims, [0usize; 3]);
            for (i, _) in atlas.iter().enumerate().filter(|(_, a)| *a == value) {
                let v = voxel(i);
                lo = [0, 1, 2].map(|a| lo[a].min(v[a]));
                hi = [0, 1, 2].map(|a| hi[a].max(v[a]));
            }
            let lo = lo.map(|v| v.saturating_sub(3));
            let size = [0, 1, 2].map(|a| (hi[a] + 4).min(dims[a]).saturating_sub(lo[a]));
            let at = |j: usize| {
                let [x, y, z] = [
                    j % size[0],
                    (j / size[0]) % size[1],
                    j / (size[0] * size[1]),
                ];
                lo[0] + x + dims[0] * (lo[1] + y + dims[1] * (lo[2] + z))
            };
            let boxed = 0..size.iter().product::<usize>();
            let inside: Vec<bool> = boxed.clone().map(|j| atlas[at(j)] == *value).collect();
            let grey: Vec<bool> = boxed.map(|j| grey[at(j)]).collect();
            let near = crate::volume::distance::squared_distance_mm2(&inside, size, [1.0; 3]);
            let (mut n_in, mut g_in, mut n_around, mut g_around) = (0usize, 0usize, 0usize, 0usize);
            for i in 0..inside.len() {
                if inside[i] {
                    n_in += 1;
                    g_in += usize::from(grey[i]);
                } else if near[i] <= 4.0 {
                    n_around += 1;
                    g_around += usize::from(grey[i]);
                }
            }
            let share = |g: usize, n: usize| if n > 0 { g as f64 / n as f64 } else { 0.0 };
            AtlasFit {
                name,
                voxels: n_in,
                grey_inside: share(g_in, n_in),
                grey_around: share(g_around, n_around),
            }
        })
        .collect()
}

/// A smooth random displacement on a coarse grid: `x ↦ x + u(x)` (mm), the exponential of a
/// stationary velocity field (scaling and squaring), trilinear between its nodes.
pub struct Deformation {
    origin_mm: DVec3,
    step_mm: f64,
    n: usize,
    u: Vec<DVec3>,
}

impl Deformation {
    /// A random field over a cube of `extent_mm` about `centre_mm`: nodes every `step_mm`,
    /// velocities of `sigma_mm` per axis, smoothed once, integrated in 6 squarings.
    pub fn random(
        rng: &mut ChaCha8Rng,
        centre_mm: DVec3,
        extent_mm: f64,
        step_mm: f64,
        sigma_mm: f64,
    ) -> Self {
        let n = (extent_mm / step_mm).ceil() as usize + 3;
        let origin_mm = centre_mm - DVec3::splat(step_mm * (n - 1) as f64 / 2.0);
        let raw: Vec<DVec3> = (0..n * n * n)
            .map(|_| {
                DVec3::from_array([0; 3].map(|_| sigma_mm * rng.sample::<f64, _>(StandardNormal)))
            })
            .collect();
        let mut field = Self {
            origin_mm,
            step_mm,
            n,
            u: raw,
        };
        field.smooth();
        let steps = 6;
        field.u.iter_mut().for_each(|v| *v /= f64::from(1 << steps));
        for _ in 0..steps {
            let next: Vec<DVec3> = (0..field.u.len())
                .map(|i| {
                    let x = field.node_mm(i);
                    field.u[i] + field.at(x + field.u[i])
                })
                .collect();
            field.u = next;
        }
        field
    }

    fn node_mm(&self, i: usize) -> DVec3 {
        let n = self.n;
        self.origin_mm
            + DVec3::new((i % n) as f64, ((i / n) % n) as f64, (i / (n * n)) as f64) * self.step_mm
    }

    /// Average each node with its 6 neighbours (a light smoothing of the raw velocities).
    fn smooth(&mut self) {
        let n = self.n as i64;
        let at = |i: i64, j: i64, k: i64| {
            (i.clamp(0, n - 1) + n * (j.clamp(0, n - 1) + n * k.clamp(0, n - 1))) as usize
        };
        let mut out = self.u.clone();
        for k in 0..n {
            for j in 0..n {
                for i in 0..n {
                    let sum = [
                        (-1, 0, 0),
                        (1, 0, 0),
                        (0, -1, 0),
                        (0, 1, 0),
                        (0, 0, -1),
                        (0, 0, 1),
                    ]
                    .iter()
                    .map(|(a, b, c)| self.u[at(i + a, j + b, k + c)])
                    .fold(self.u[at(i, j, k)], |s, v| s + v);
                    out[at(i, j, k)] = sum / 7.0;
                }
            }
        }
        self.u = out;
    }

    /// The displacement at `x` (mm): trilinear between nodes, 0 beyond the field.
    pub fn at(&self, x: DVec3) -> DVec3 {
        let g = (x - self.origin_mm) / self.step_mm;
        let n = self.n;
        let f = g.floor();
        if (0..3).any(|a| f[a] < 0.0 || f[a] + 1.0 > (n - 1) as f64) {
            return DVec3::ZERO;
        }
        let w = g - f;
        let mut acc = DVec3::ZERO;
        for c in 0..8usize {
            let o = [c & 1, (c >> 1) & 1, (c >> 2) & 1];
            let weight = (0..3)
                .map(|a| if o[a] == 1 { w[a] } else { 1.0 - w[a] })
                .product::<f64>();
            let i = (f.x as usize + o[0]) + n * ((f.y as usize + o[1]) + n * (f.z as usize + o[2]));
            acc += self.u[i] * weight;
        }
        acc
    }
}

/// A focal lesion in template mm.
struct TemplateLesion {
    kind: LesionKind,
    centre_mm: DVec3,
    radii_mm: DVec3,
}

/// The lesions of a subject: as the phantom draws them (kinds, sizes), centred on random white
/// matter voxels of the template inside the field of view (`centre_mm`, `fov_mm`).
fn random_lesions(
    rng: &mut ChaCha8Rng,
    template: &Template,
    patient: bool,
    sequence_specific: bool,
    (centre_mm, fov_mm): (DVec3, f64),
) -> Vec<TemplateLesion> {
    let count = match (patient, rng.random_bool(0.25)) {
        (true, _) => rng.random_range(1..=4),
        (false, true) => 1,
        (false, false) => 0,
    };
    let mut out = Vec::new();
    for _ in 0..count {
        let kind = super::anatomy::random_lesion_kind(rng, patient, sequence_specific);
        let r = super::anatomy::random_lesion_radius_mm(rng, kind, patient, 32.0);
        for _ in 0..200 {
            let offset = DVec3::from_array([0; 3].map(|_| rng.random_range(-0.4..0.4) * fov_mm));
            let c = centre_mm + offset;
            let in_wm = template
                .nearest(c)
                .is_some_and(|t| template.tissue[t] == Tissue::Wm as u8);
            if in_wm {
                let radii = DVec3::from_array([0; 3].map(|_| r * rng.random_range(0.7..1.3)));
                out.push(TemplateLesion {
                    kind,
                    centre_mm: c,
                    radii_mm: radii,
                });
                break;
            }
        }
    }
    out
}

/// Tune the habenula of `side` (an ellipsoid about `HABENULA_MM[side]` in template mm, seen at
/// `positions`) until its voxel-counted volume is within 1 mm³ of `target_mm3` (as close as
/// the grid allows), and write it into `tissue`. Returns the volume.
fn place_habenula(
    positions: &[DVec3],
    voxel_mm3: f64,
    tissue: &mut [u8],
    side: usize,
    target_mm3: f64,
) -> f64 {
    let centre = DVec3::from_array(HABENULA_MM[side]);
    let radii = DVec3::new(1.5, 2.2, 1.8);
    let near: Vec<usize> = (0..positions.len())
        .filter(|i| (positions[*i] - centre).length() < 8.0)
        .collect();
    let inside = |scale: f64, i: usize| ((positions[i] - centre) / (radii * scale)).length() < 1.0;
    let volume = |scale: f64| near.iter().filter(|i| inside(scale, **i)).count() as f64 * voxel_mm3;
    let analytic = 4.0 / 3.0 * std::f64::consts::PI * radii.x * radii.y * radii.z;
    let best = super::tune_scale(target_mm3, analytic, volume);
    let code = [Tissue::HabenulaL, Tissue::HabenulaR][side] as u8;
    for i in near.into_iter().filter(|i| inside(best.0, *i)) {
        tissue[i] = code;
    }
    best.2
}

/// The tissue and atlas label of every output voxel (template positions `positions`), with
/// the lesions drawn over them.
fn tissues_and_labels(
    template: &Template,
    positions: &[DVec3],
    lesions: &[TemplateLesion],
) -> (Vec<u8>, Vec<u8>) {
    positions
        .iter()
        .map(|p| {
            let at = template.nearest(*p);
            let lesion = lesions
                .iter()
                .map(|l| (l.kind, ((*p - l.centre_mm) / l.radii_mm).length()))
                .find(|(_, r)| *r < 1.0)
                .filter(|_| at.is_some_and(|t| template.tissue[t] != Tissue::Air as u8));
            match (lesion, at) {
                (Some((kind, r)), _) => (super::anatomy::lesion_tissue(kind, r) as u8, 0),
                (None, Some(t)) => (template.tissue[t], template.atlas[t]),
                (None, None) => (Tissue::Air as u8, 0),
            }
        })
        .unzip()
}

/// The synthetic sequences' noiseless images: each tissue's contrast (scaled per subject by a
/// random factor per sequence and tissue) times the real T1's texture (fully on T1, half on
/// the others; none on lesions and the habenula).
fn synthetic_images(
    rng: &mut ChaCha8Rng,
    template: &Template,
    tissue: &[u8],
    texture: &[f32],
) -> Vec<Vec<f32>> {
    let factors: Vec<[f64; 16]> = (0..6)
        .map(|_| [0; 16].map(|_| rng.random_range(0.85..1.15)))
        .collect();
    (0..6)
        .map(|s| {
            tissue
                .iter()
                .zip(texture)
                .map(|(t, tex)| {
                    let tissue = super::tissue_of(*t);
                    let textured = matches!(
                        tissue,
                        Tissue::Csf | Tissue::Gm | Tissue::Wm | Tissue::DeepGm
                    );
                    let r = if textured {
                        f64::from(tex / template.tissue_mean_t1[usize::from(*t)]).clamp(0.5, 1.5)
                    } else {
                        1.0
                    };
                    let r = if s == 0 { r } else { 1.0 + 0.5 * (r - 1.0) };
                    (contrast(tissue)[s] * factors[s][usize::from(*t).min(15)] * r) as f32
                })
                .collect()
        })
        .collect()
}

/// A subject's grid (pose, voxel size), its deformation, and the template position (mm) each
/// of its voxels shows: the voxel's place in the head (about `FOV_CENTRE_MM`) moved by the
/// field.
fn subject_geometry(
    cfg: &super::PhantomConfig,
    rng: &mut ChaCha8Rng,
) -> (Grid, Deformation, Vec<DVec3>) {
    let fov = cfg.grid as f64;
    let spacing = cfg.voxel_mm.map_or((0.7, 1.2), |v| (v, v));
    let grid = Grid::random(rng, fov, spacing, None);
    let centre = DVec3::from_array(FOV_CENTRE_MM);
    let field = Deformation::random(rng, centre, fov * 1.8, 12.0, 2.5);
    let positions = template_positions(&grid, &field, centre);
    (grid, field, positions)
}

/// The template position (mm) each voxel of `grid` shows: its place in the head about
/// `centre_mm`, moved by `field`.
fn template_positions(grid: &Grid, field: &Deformation, centre_mm: DVec3) -> Vec<DVec3> {
    (0..grid.len())
        .map(|i| {
            let p = grid.anat_of(i) + centre_mm;
            p + field.at(p)
        })
        .collect()
}

/// One subject of `template`: see the module's header.
pub fn generate_template_case(
    cfg: &super::PhantomConfig,
    template: &Template,
    rng: &mut ChaCha8Rng,
    id: String,
    patient: bool,
) -> Result<super::PhantomCase, VolumeError> {
    let fov = cfg.grid as f64;
    let centre = DVec3::from_array(FOV_CENTRE_MM);
    let (grid, _, positions) = subject_geometry(cfg, rng);
    let lesions = random_lesions(
        rng,
        template,
        patient,
        cfg.sequence_specific_lesions,
        (centre, fov),
    );
    let (mut tissue, atlas) = tissues_and_labels(template, &positions, &lesions);
    let targets = if patient {
        [rng.random_range(21.0..27.0), rng.random_range(21.0..27.0)]
    } else {
        [rng.random_range(30.0..38.0), rng.random_range(30.0..38.0)]
    };
    let voxel_mm3 = grid.affine.linear().determinant().abs();
    for (side, target) in targets.into_iter().enumerate() {
        place_habenula(&positions, voxel_mm3, &mut tissue, side, target);
    }
    let mask: Vec<u8> = tissue
        .iter()
        .zip(&atlas)
        .map(|(t, a)| match super::tissue_of(*t).label() {
            0 => *a,
            l => l,
        })
        .collect();
    let texture: Vec<f32> = positions.iter().map(|p| template.t1_at(*p)).collect();
    let clean = synthetic_images(rng, template, &tissue, &texture);
    let head = DVec3::splat(fov / 2.0);
    let gain = rng.random_range(0.9..1.1);
    let mut images = Vec::new();
    for (name, img) in super::structural_sequences().into_iter().zip(clean) {
        let volume = super::acquire(rng, &grid, &name, img, head, gain)?;
        images.push((name, volume));
    }
    Ok(super::PhantomCase {
        id,
        patient,
        images,
        networks: None,
        mask: Some(super::volume(&grid, mask)?),
    })
}

/// The resting-state network nodes of 4D subjects, pairs in template mm: default mode (medial
/// prefrontal, posterior cingulate), motor (left, right precentral gyrus), visual (left, right
/// calcarine cortex).
pub const NODES_MM: [[[f64; 3]; 2]; 3] = [
    [[0.0, 50.0, 10.0], [0.0, -55.0, 28.0]],
    [[-38.0, -22.0, 56.0], [38.0, -22.0, 56.0]],
    [[-12.0, -88.0, 4.0], [12.0, -88.0, 4.0]],
];

/// A node's reach (mm) about its centre; only grey matter in it carries the node's signal.
const NODE_RADIUS_MM: f64 = 10.0;

/// Where a 4D subject's field of view is centred (template mm): the middle of the brain.
pub const BRAIN_CENTRE_MM: [f64; 3] = [0.0, -18.0, 12.0];

/// The network node `(pair, member)` of grey matter at template position `mm` (tissue code
/// `tissue`), if within reach of one.
fn template_node(mm: DVec3, tissue: u8) -> Option<(usize, usize)> {
    let grey = tissue == Tissue::Gm as u8 || tissue == Tissue::DeepGm as u8;
    if !grey {
        return None;
    }
    (0..3)
        .flat_map(|k| (0..2).map(move |m| (k, m)))
        .find(|(k, m)| (mm - DVec3::from_array(NODES_MM[*k][*m])).length() < NODE_RADIUS_MM)
}

/// One 4D subject of `template`: the whole brain at 3 mm (`cfg.grid` voxels a side) through a
/// random deformation and pose, BOLD signals as the analytic phantom's (the default-mode pair
/// decoupled in patients; focal white-matter lesions with abnormal dynamics, the target) on the
/// template's tissues, with the network nodes at their anatomical places in grey matter.
pub fn generate_template_4d(
    cfg: &super::PhantomConfig,
    template: &Template,
    rng: &mut ChaCha8Rng,
    id: String,
    patient: bool,
) -> Result<super::PhantomCase, VolumeError> {
    let spacing = 3.0;
    let fov = cfg.grid as f64 * spacing;
    let grid = Grid::random(rng, fov, (spacing, spacing), Some(cfg.grid));
    let centre = DVec3::from_array(BRAIN_CENTRE_MM);
    let field = Deformation::random(rng, centre, fov * 1.2, 18.0, 3.0);
    let positions = template_positions(&grid, &field, centre);
    let lesions = random_lesions(rng, template, patient, false, (centre, fov * 0.5));
    let (tissue, _) = tissues_and_labels(template, &positions, &lesions);
    let t_len = cfg.frames.max(2);
    let series = super::network_series(rng, t_len, patient);
    let focus = super::ar1(rng, t_len, 0.95);
    let node_of = |v: usize| template_node(positions[v], tissue[v]);
    let signals = super::BoldSignals {
        t_len,
        series: &series,
        focus: &focus,
        node_of: &node_of,
    };
    super::bold_case(rng, &grid, &tissue, &signals, (id, patient))
}

/// The label table of template subjects: the phantom's labels, then the atlas structures.
pub fn label_table() -> crate::project::LabelTable {
    let mut labels = super::label_table().labels().to_vec();
    for s in STRUCTURES {
        labels.push(crate::project::Label {
            value: s.value,
            name: s.name.to_string(),
            color: s.colour,
        });
    }
    crate::project::LabelTable::new(labels).unwrap_or_else(|_| super::label_table())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn every_label_of_a_template_subject_has_its_own_colour() {
        let colours: Vec<[f64; 3]> = label_table()
            .labels()
            .iter()
            .map(|l| l.color.map(f64::from))
            .collect();
        assert_eq!(colours.len(), 5 + STRUCTURES.len());
        for (i, a) in colours.iter().enumerate() {
            for b in &colours[i + 1..] {
                let apart = (0..3).map(|c| (a[c] - b[c]).powi(2)).sum::<f64>().sqrt();
                assert!(apart > 60.0, "{a:?} and {b:?} are {apart:.0} apart in RGB");
            }
        }
    }

    #[test]
    fn the_deformation_moves_points_smoothly_and_keeps_their_order() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let field = Deformation::random(&mut rng, DVec3::ZERO, 96.0, 12.0, 2.5);
        let (mut largest, mut smallest_jacobian) = (0.0f64, f64::INFINITY);
        let h = 0.5;
        for i in 0..2000 {
            let x = DVec3::new(
                ((i * 37) % 80) as f64 - 40.0,
                ((i * 53) % 80) as f64 - 40.0,
                ((i * 71) % 80) as f64 - 40.0,
            );
            let map = |p: DVec3| p + field.at(p);
            largest = largest.max(field.at(x).length());
            let cols = [DVec3::X, DVec3::Y, DVec3::Z]
                .map(|e| (map(x + e * h) - map(x - e * h)) / (2.0 * h));
            let j = glam::DMat3::from_cols(cols[0], cols[1], cols[2]).determinant();
            smallest_jacobian = smallest_jacobian.min(j);
        }
        assert!(
            largest > 1.0 && largest < 12.0,
            "displacement up to {largest:.2} mm"
        );
        assert!(
            smallest_jacobian > 0.2,
            "Jacobian down to {smallest_jacobian:.3}"
        );
    }

    /// `φ⁻¹(y)` for `φ(x) = x + u(x)` (fixed-point iteration) and `det Dφ` there.
    fn inverse_and_jacobian(field: &Deformation, y: DVec3) -> (DVec3, f64) {
        let mut x = y;
        for _ in 0..30 {
            x = y - field.at(x);
        }
        let h = 0.25;
        let map = |p: DVec3| p + field.at(p);
        let cols =
            [DVec3::X, DVec3::Y, DVec3::Z].map(|e| (map(x + e * h) - map(x - e * h)) / (2.0 * h));
        (
            x,
            glam::DMat3::from_cols(cols[0], cols[1], cols[2]).determinant(),
        )
    }

    #[test]
    fn a_structure_moves_with_the_deformation() {
        let template = Template::colin27(Path::new(DEFAULT_TEMPLATE_DIR)).unwrap();
        let cfg = super::super::PhantomConfig {
            grid: 150,
            voxel_mm: Some(1.5),
            ..Default::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let (grid, field, positions) = subject_geometry(&cfg, &mut rng);
        let (_, atlas) = tissues_and_labels(&template, &positions, &[]);
        let centre = DVec3::from_array(FOV_CENTRE_MM);
        let [nx, ny, _] = template.t1.dims3();
        let mut moved = 0.0f64;
        for Structure { value, name, .. } in STRUCTURES {
            // Where the field says the structure lands in the subject's head: each template
            // voxel pulled back through the field, weighted by the volume it takes there.
            let (mut sum, mut weight) = (DVec3::ZERO, 0.0);
            let mut in_template = (DVec3::ZERO, 0.0);
            for i in (0..template.atlas.len()).filter(|i| template.atlas[*i] == value) {
                let v = DVec3::new(
                    (i % nx) as f64,
                    ((i / nx) % ny) as f64,
                    (i / (nx * ny)) as f64,
                );
                let y = template.t1.affine().vox_to_mm(v);
                let (x, jacobian) = inverse_and_jacobian(&field, y);
                sum += x / jacobian;
                weight += 1.0 / jacobian;
                in_template = (in_template.0 + y, in_template.1 + 1.0);
            }
            let expected = sum / weight;
            let in_template = in_template.0 / in_template.1;
            // Where it is: the centroid of the subject's voxels carrying its label.
            let (sum, n) = (0..atlas.len())
                .filter(|i| atlas[*i] == value)
                .fold((DVec3::ZERO, 0.0), |(s, n), i| {
                    (s + grid.anat_of(i) + centre, n + 1.0)
                });
            let found = sum / n;
            let error = (found - expected).length();
            assert!(
                error < 0.3,
                "{name}: {error:.2} mm from where the field puts it"
            );
            moved = moved.max((found - in_template).length());
        }
        assert!(moved > 1.0, "the structures moved up to {moved:.2} mm");
    }
}
