//! The phantom's anatomy: an analytic head in anatomical millimetres (RAS+, centred at the origin).
//!
//! The head is scaled to the field of view (`half_fov_mm`), except the tiny bilateral structure,
//! which keeps the real size of the habenula (≈3×3×5 mm, 20–40 mm³ per side) and lies beside the
//! midline at the dorsal-posterior-medial edge of each thalamus, flanking the third ventricle.

use glam::DVec3;
use rand::RngExt;
use rand_chacha::ChaCha8Rng;

/// Tissue classes of the phantom; the label mask is derived from them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Tissue {
    /// Air outside the head.
    Air = 0,
    /// Scalp and fat.
    Scalp,
    /// Skull.
    Skull,
    /// Cerebrospinal fluid (subarachnoid, ventricles).
    Csf,
    /// Cortical grey matter.
    Gm,
    /// White matter.
    Wm,
    /// Deep grey matter (thalamus).
    DeepGm,
    /// Left tiny structure (habenula).
    HabenulaL,
    /// Right tiny structure (habenula).
    HabenulaR,
    /// White-matter lesion (FLAIR/T2 bright).
    Lesion,
    /// Acute infarct (DWI bright, ADC dark).
    Infarct,
    /// Enhancing rim of a tumour (bright on Gd-T1).
    TumourRim,
    /// Non-enhancing tumour core.
    TumourCore,
    /// White-matter lesion seen on FLAIR only (iso on T1 and T2).
    LesionFlairOnly,
    /// White-matter lesion seen on T2 only (iso on T1 and FLAIR).
    LesionT2Only,
    /// White-matter lesion seen on T1 only (dark; iso on T2 and FLAIR).
    LesionT1Only,
}

impl Tissue {
    /// The label value this tissue has in the reference mask (0 = background).
    pub fn label(self) -> u8 {
        match self {
            Tissue::HabenulaL => super::LABEL_HABENULA_L,
            Tissue::HabenulaR => super::LABEL_HABENULA_R,
            Tissue::Lesion
            | Tissue::LesionFlairOnly
            | Tissue::LesionT2Only
            | Tissue::LesionT1Only => super::LABEL_LESION,
            Tissue::Infarct => super::LABEL_INFARCT,
            Tissue::TumourRim | Tissue::TumourCore => super::LABEL_TUMOUR,
            _ => 0,
        }
    }
}

/// Kinds of focal lesion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LesionKind {
    /// White-matter hyperintensity / contusion.
    Flair,
    /// Acute ischaemic infarct.
    Infarct,
    /// Enhancing tumour.
    Tumour,
    /// White-matter lesion visible on FLAIR only.
    FlairOnly,
    /// White-matter lesion visible on T2 only.
    T2Only,
    /// White-matter lesion visible on T1 only.
    T1Only,
}

/// One focal lesion (an ellipsoid in anatomical mm).
#[derive(Debug, Clone, Copy)]
pub struct Lesion {
    /// Kind.
    pub kind: LesionKind,
    /// Centre (mm).
    pub centre_mm: DVec3,
    /// Semi-axes (mm).
    pub radii_mm: DVec3,
}

/// An ellipsoid in anatomical mm.
#[derive(Debug, Clone, Copy)]
pub struct Ellipsoid {
    /// Centre (mm).
    pub centre_mm: DVec3,
    /// Semi-axes (mm).
    pub radii_mm: DVec3,
}

impl Ellipsoid {
    /// Normalised radius: < 1 inside.
    pub fn rho(&self, q: DVec3) -> f64 {
        ((q - self.centre_mm) / self.radii_mm).length()
    }

    /// Analytic volume (mm³).
    pub fn volume_mm3(&self) -> f64 {
        4.0 / 3.0 * std::f64::consts::PI * self.radii_mm.x * self.radii_mm.y * self.radii_mm.z
    }
}

/// The tissue of a lesion of `kind` at normalised radius `r` (< 1): a tumour has an enhancing
/// rim around its core.
pub(super) fn lesion_tissue(kind: LesionKind, r: f64) -> Tissue {
    match kind {
        LesionKind::Flair => Tissue::Lesion,
        LesionKind::FlairOnly => Tissue::LesionFlairOnly,
        LesionKind::T2Only => Tissue::LesionT2Only,
        LesionKind::T1Only => Tissue::LesionT1Only,
        LesionKind::Infarct => Tissue::Infarct,
        LesionKind::Tumour if r > 0.65 => Tissue::TumourRim,
        LesionKind::Tumour => Tissue::TumourCore,
    }
}

/// A random lesion kind: a white-matter lesion for a control, else a white-matter lesion,
/// infarct or tumour; with `sequence_specific`, a white-matter lesion seen on one of FLAIR, T2
/// and T1 only.
pub(super) fn random_lesion_kind(
    rng: &mut ChaCha8Rng,
    patient: bool,
    sequence_specific: bool,
) -> LesionKind {
    // Sequence-specific phantoms pose the multi-sequence question: every lesion is a
    // white-matter one.
    let kind = if !patient || sequence_specific {
        LesionKind::Flair
    } else {
        match rng.random_range(0..3) {
            0 => LesionKind::Flair,
            1 => LesionKind::Infarct,
            _ => LesionKind::Tumour,
        }
    };
    match (kind, sequence_specific) {
        (LesionKind::Flair, true) => match rng.random_range(0..3) {
            0 => LesionKind::FlairOnly,
            1 => LesionKind::T2Only,
            _ => LesionKind::T1Only,
        },
        (k, _) => k,
    }
}

/// A random lesion radius (mm) for `kind` (small for a control), scaled with the field of view
/// `2·half_fov_mm`.
pub(super) fn random_lesion_radius_mm(
    rng: &mut ChaCha8Rng,
    kind: LesionKind,
    patient: bool,
    half_fov_mm: f64,
) -> f64 {
    let radius_mm: f64 = match (kind, patient) {
        (_, false) => rng.random_range(1.2..2.0),
        (
            LesionKind::Flair | LesionKind::FlairOnly | LesionKind::T2Only | LesionKind::T1Only,
            _,
        ) => rng.random_range(1.5..4.0),
        (LesionKind::Infarct, _) => rng.random_range(2.0..5.0),
        (LesionKind::Tumour, _) => rng.random_range(3.0..6.0),
    };
    radius_mm * (half_fov_mm / 32.0).clamp(0.5, 3.0)
}

/// One case's anatomy.
#[derive(Debug, Clone)]
pub struct Anatomy {
    /// Head semi-axes (mm).
    pub head_radii_mm: DVec3,
    warp_phase: [f64; 6],
    gyri: [f64; 3],
    ventricles: [Ellipsoid; 2],
    thalami: [Ellipsoid; 2],
    third_ventricle_half_width_mm: f64,
    /// The tiny structure, left then right.
    pub habenula: [Ellipsoid; 2],
    /// Focal lesions.
    pub lesions: Vec<Lesion>,
}

impl Anatomy {
    /// A random anatomy for a field of view of `2·half_fov_mm`; `patient` adds lesions.
    /// `sequence_specific`: every lesion is a white-matter lesion, visible on one of T1, T2 and
    /// FLAIR only.
    pub fn random(
        rng: &mut ChaCha8Rng,
        half_fov_mm: f64,
        patient: bool,
        sequence_specific: bool,
    ) -> Self {
        let mut a = Self::random_without_lesions(rng, half_fov_mm);
        let count: i32 = if patient {
            rng.random_range(1..=4)
        } else if rng.random_bool(0.25) {
            1
        } else {
            0
        };
        for n in 0..count {
            let kind = random_lesion_kind(rng, patient, sequence_specific);
            let r = random_lesion_radius_mm(rng, kind, patient, half_fov_mm);
            a.place_lesion(rng, kind, r, n);
        }
        a
    }

    /// A random head for a field of view of `2·half_fov_mm`, with its ventricles, thalami and
    /// habenulae, and no lesion.
    fn random_without_lesions(rng: &mut ChaCha8Rng, half_fov_mm: f64) -> Self {
        let s = half_fov_mm;
        let mut jitter = |lo: f64, hi: f64| rng.random_range(lo..hi);
        let head = DVec3::new(
            0.78 * s * jitter(0.95, 1.04),
            0.88 * s * jitter(0.95, 1.04),
            0.80 * s * jitter(0.95, 1.04),
        );
        let warp_phase = [0; 6].map(|_| jitter(0.0, std::f64::consts::TAU));
        let gyri = [jitter(5.0, 8.0), jitter(4.0, 7.0), jitter(0.8, 1.2)];
        let vent_scale = jitter(0.85, 1.25);
        let ventricles = [-1.0, 1.0].map(|side| Ellipsoid {
            centre_mm: DVec3::new(side * 0.12 * head.x, 0.05 * head.y, 0.12 * head.z),
            radii_mm: DVec3::new(
                0.07 * head.x * vent_scale,
                0.30 * head.y,
                0.11 * head.z * vent_scale,
            ),
        });
        let thalami = [-1.0, 1.0].map(|side| Ellipsoid {
            centre_mm: DVec3::new(side * 0.12 * head.x, -0.10 * head.y, -0.02 * head.z),
            radii_mm: DVec3::new(0.10 * head.x, 0.14 * head.y, 0.11 * head.z),
        });
        let third_ventricle_half_width_mm = 0.6;
        // Habenula: ~3×3×5 mm; the size is tuned later to the target volume on the voxel grid.
        let hb_y = thalami[0].centre_mm.y - 0.55 * thalami[0].radii_mm.y;
        let hb_z = thalami[0].centre_mm.z + 0.55 * thalami[0].radii_mm.z;
        let habenula = [-1.0, 1.0].map(|side| Ellipsoid {
            centre_mm: DVec3::new(side * (third_ventricle_half_width_mm + 1.6), hb_y, hb_z),
            radii_mm: DVec3::new(1.5, 2.5, 1.5),
        });
        Self {
            head_radii_mm: head,
            warp_phase,
            gyri,
            ventricles,
            thalami,
            third_ventricle_half_width_mm,
            habenula,
            lesions: Vec::new(),
        }
    }

    /// Add lesion number `n` of `kind` and radius `r` (mm) at a random white-matter position
    /// away from the deep structures, the habenulae and the other lesions (rejection-sampled,
    /// up to 200 tries; from the tenth lesion on the first try is taken).
    fn place_lesion(&mut self, rng: &mut ChaCha8Rng, kind: LesionKind, r: f64, n: i32) {
        let head = self.head_radii_mm;
        for _ in 0..200 {
            let c = DVec3::new(
                rng.random_range(-0.55..0.55) * head.x,
                rng.random_range(-0.55..0.55) * head.y,
                rng.random_range(-0.45..0.55) * head.z,
            );
            let clear = self
                .ventricles
                .iter()
                .chain(self.thalami.iter())
                .all(|e| e.rho(c) > 1.4)
                && self
                    .habenula
                    .iter()
                    .all(|h| (c - h.centre_mm).length() > r + 4.0)
                && self
                    .lesions
                    .iter()
                    .all(|l| (c - l.centre_mm).length() > r + l.radii_mm.max_element() + 1.0)
                && (c / head).length() + r / head.min_element() < 0.6;
            if clear || n > 8 {
                let stretch = DVec3::new(
                    rng.random_range(0.8..1.2),
                    rng.random_range(0.8..1.2),
                    rng.random_range(0.8..1.2),
                );
                self.lesions.push(Lesion {
                    kind,
                    centre_mm: c,
                    radii_mm: stretch * r,
                });
                break;
            }
        }
    }

    /// The tissue at anatomical position `q` (mm), before the tiny structure is placed.
    pub fn tissue(&self, q: DVec3) -> Tissue {
        let h = self.head_radii_mm;
        let n = q / h;
        let p = &self.warp_phase;
        let warp = 0.025
            * ((3.0 * n.y + p[0]).sin() + (2.0 * n.z + p[1]).sin() + (2.5 * n.x + p[2]).sin())
            / 3.0;
        let rho = n.length() * (1.0 + warp);
        if rho >= 1.0 {
            return Tissue::Air;
        }
        if rho >= 0.93 {
            return Tissue::Scalp;
        }
        if rho >= 0.86 {
            return Tissue::Skull;
        }
        if rho >= 0.81 {
            return Tissue::Csf;
        }
        for l in &self.lesions {
            let r = ((q - l.centre_mm) / l.radii_mm).length();
            if r < 1.0 {
                return lesion_tissue(l.kind, r);
            }
        }
        if self.ventricles.iter().any(|e| e.rho(q) < 1.0) {
            return Tissue::Csf;
        }
        let t0 = &self.thalami[0];
        let in_third = q.x.abs() < self.third_ventricle_half_width_mm
            && (q.y - t0.centre_mm.y).abs() < t0.radii_mm.y
            && (q.z - t0.centre_mm.z).abs() < t0.radii_mm.z;
        if in_third {
            return Tissue::Csf;
        }
        if self.thalami.iter().any(|e| e.rho(q) < 1.0) {
            return Tissue::DeepGm;
        }
        let theta = n.y.atan2(n.x);
        let phi = n.z.clamp(-1.0, 1.0).acos();
        let folds = (self.gyri[0] * theta + p[3]).sin() * (self.gyri[1] * phi + p[4]).sin();
        let inner = 0.66 + 0.06 * folds * self.gyri[2];
        if rho >= inner {
            Tissue::Gm
        } else {
            Tissue::Wm
        }
    }
}
