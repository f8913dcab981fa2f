//! Volumes: voxel grids with a voxel→world affine, their NIfTI I/O, and resampling.
//!
//! Invariants: a `Volume<T>` holds exactly `nx·ny·nz·nt` values, x fastest then y, z, t (NIfTI
//! order); its `Affine` maps voxel indices to world millimetres (RAS+). This layer knows nothing of
//! the GPU, the UI or projects.

mod affine;
mod bgzf;
pub mod dicom;
pub mod distance;
pub mod mesh_io;
pub mod mgh;
pub mod nifti_io;
mod nifti_pair;
pub mod nrrd;
pub mod pick;
pub mod regions;
mod reorient;
pub mod resample;
pub mod siemens;
pub mod surface;
pub mod timeseries;

pub use affine::{Affine, Qform};
pub use nifti_io::{
    read_header, read_volume, write_volume, Datatype, NiftiHeaderInfo, NiftiProblem,
};
pub use reorient::{reorient_to_ras, AxisMap, Reorientation};
pub use resample::{
    grid_with_spacing, resample_labels_keeping_objects, resample_labels_smooth,
    resample_labels_to_grid, resample_to_grid, Interpolation,
};

use std::path::PathBuf;

/// Errors of the volume layer. Every file error names the file.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The file could not be read or written at the OS level.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is not a valid NIfTI file (or one mriloop cannot read).
    #[error("{path}: {problem}")]
    Nifti {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: NiftiProblem,
    },
    /// In-memory data does not fit the requested shape or operation.
    #[error("{0}")]
    Shape(String),
}

/// The qform/sform of a NIfTI file exactly as stored, kept so that a volume saved in its
/// original layout reproduces them bit-for-bit (other tools may prefer either one).
#[derive(Debug, Clone, PartialEq)]
pub struct StoredGeometry {
    /// `qform_code` (0 = unknown, 1 = scanner, 2 = aligned, 3 = Talairach, 4 = MNI).
    pub qform_code: i16,
    /// `sform_code`, same codes.
    pub sform_code: i16,
    /// `quatern_b, quatern_c, quatern_d`.
    pub quatern_bcd: [f64; 3],
    /// `qoffset_x, y, z` (mm).
    pub qoffset_mm: [f64; 3],
    /// `pixdim[0]` (qfac, ±1).
    pub qfac: f64,
    /// `pixdim[1..=3]` (mm).
    pub pixdim_mm: [f64; 3],
    /// `srow_x, srow_y, srow_z`.
    pub srow: [[f64; 4]; 3],
}

impl StoredGeometry {
    /// The voxel→world affine these fields define, by NIfTI's rule: the sform if its code is
    /// set, else the qform if its code is set, else the spacing alone (ANALYZE method 1).
    pub fn best_affine(&self) -> Affine {
        if self.sform_code > 0 {
            Affine::from_rows3(self.srow)
        } else if self.qform_code > 0 {
            Affine::from_qform(self.quatern_bcd, self.qoffset_mm, self.pixdim_mm, self.qfac)
        } else {
            Affine::from_spacing(self.pixdim_mm)
        }
    }

    /// Stored fields for an affine made in mriloop: the sform holds it exactly (as f32), and the
    /// qform holds its rigid part where the axes are orthogonal.
    pub fn from_affine(affine: &Affine) -> Self {
        let r = affine.rows();
        let srow = [r[0], r[1], r[2]];
        match affine.to_qform() {
            Some(q) => Self {
                qform_code: 1,
                sform_code: 1,
                quatern_bcd: q.quatern_bcd,
                qoffset_mm: q.offset_mm,
                qfac: q.qfac,
                pixdim_mm: q.spacing_mm,
                srow,
            },
            None => Self {
                qform_code: 0,
                sform_code: 1,
                quatern_bcd: [0.0; 3],
                qoffset_mm: [0.0; 3],
                qfac: 1.0,
                pixdim_mm: affine.spacing_mm(),
                srow,
            },
        }
    }
}

/// A scalar voxel type mriloop stores natively.
pub trait Voxel: Copy + Default + PartialOrd + Send + Sync + bytemuck::Pod + 'static {
    /// The NIfTI datatype written for this type.
    const DATATYPE: Datatype;
    /// Convert to f32 (exact for all but large i32).
    fn to_f32(self) -> f32;
}

macro_rules! impl_voxel {
    ($t:ty, $d:expr) => {
        impl Voxel for $t {
            const DATATYPE: Datatype = $d;
            fn to_f32(self) -> f32 {
                self as f32
            }
        }
    };
}
impl_voxel!(u8, Datatype::U8);
impl_voxel!(i16, Datatype::I16);
impl_voxel!(u16, Datatype::U16);
impl_voxel!(i32, Datatype::I32);
impl_voxel!(f32, Datatype::F32);

/// The most a deflate stream expands (its format's limit, with a margin): what a compressed
/// file's size can back.
pub(crate) const MAX_DEFLATE_RATIO: u64 = 1032;

/// What `stored` bytes of a file can hold once read: themselves, or — gzip — as much as
/// deflate can expand them to.
pub(crate) fn bytes_backed(stored: u64, gzip: bool) -> u64 {
    if gzip {
        stored.saturating_mul(MAX_DEFLATE_RATIO)
    } else {
        stored
    }
}

/// Exactly `need` bytes from `reader` (a file of `stored` real bytes, or its decompressed
/// stream): the buffer grows as data arrives, from what the real bytes can plausibly hold, so a
/// false claim is never allocated; fewer bytes than `need` is an error naming `path`, as is a
/// read failure (`fail`).
pub(crate) fn read_claimed(
    reader: impl std::io::Read,
    need: u64,
    stored: u64,
    path: &std::path::Path,
    fail: impl Fn(std::io::Error) -> VolumeError,
) -> Result<Vec<u8>, VolumeError> {
    use std::io::Read;
    let mut data = Vec::with_capacity(need.min(stored.saturating_mul(8)) as usize);
    reader.take(need).read_to_end(&mut data).map_err(fail)?;
    if (data.len() as u64) < need {
        return Err(file_problem(
            path,
            format!(
                "truncated: {need} bytes of voxels needed, {} found",
                data.len()
            ),
        ));
    }
    Ok(data)
}

/// A problem with a file, naming it.
pub(crate) fn file_problem(path: &std::path::Path, what: impl Into<String>) -> VolumeError {
    VolumeError::Shape(format!("{}: {}", path.display(), what.into()))
}

/// A volume file's name without its format's extension (and `.gz`), any case: `T1.nii.gz` →
/// `T1`, `ch2.hdr` → `ch2`, `seg.seg.nrrd` → `seg`; other names unchanged.
pub fn volume_stem(name: &str) -> &str {
    let lower = name.to_ascii_lowercase();
    let bare = lower.strip_suffix(".gz").unwrap_or(&lower);
    let known = [
        ".seg.nrrd",
        ".nii",
        ".hdr",
        ".img",
        ".mgz",
        ".mgh",
        ".nrrd",
        ".nhdr",
    ];
    match known.iter().find(|e| bare.ends_with(*e)) {
        Some(e) => &name[..bare.len() - e.len()],
        None => &name[..bare.len()],
    }
}

/// Whether `path` ends in one of `extensions` (any case).
pub(crate) fn has_extension(path: &std::path::Path, extensions: &[&str]) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| extensions.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// The label values other than 0 among `values`, each once, ascending (one pass, no sort).
pub fn labels_present(values: impl IntoIterator<Item = u8>) -> Vec<u8> {
    let mut present = [false; 256];
    values
        .into_iter()
        .for_each(|v| present[usize::from(v)] = true);
    (1..=255u8).filter(|v| present[usize::from(*v)]).collect()
}

/// A distinct colour for label `value` where a file gives none (ITK-SNAP-like palette).
pub fn default_label_color(value: u8) -> [u8; 3] {
    const PALETTE: [[u8; 3]; 12] = [
        [255, 0, 0],
        [0, 255, 0],
        [0, 0, 255],
        [255, 255, 0],
        [0, 255, 255],
        [255, 0, 255],
        [255, 239, 213],
        [0, 0, 205],
        [205, 133, 63],
        [210, 180, 140],
        [102, 205, 170],
        [0, 0, 128],
    ];
    PALETTE[(value as usize + PALETTE.len() - 1) % PALETTE.len()]
}

/// A 3D or 4D voxel grid of `T` with its voxel→world affine.
#[derive(Debug, Clone, PartialEq)]
pub struct Volume<T> {
    dims: [usize; 4],
    affine: Affine,
    time_step_s: f64,
    geometry: Option<StoredGeometry>,
    data: Vec<T>,
}

impl<T: Copy> Volume<T> {
    /// A new volume; `data.len()` must equal the product of `dims` (x, y, z, t; t = 1 for 3D).
    pub fn new(dims: [usize; 4], affine: Affine, data: Vec<T>) -> Result<Self, VolumeError> {
        let n = dims.iter().try_fold(1usize, |acc, d| acc.checked_mul(*d));
        if n != Some(data.len()) || dims.contains(&0) {
            return Err(VolumeError::Shape(format!(
                "volume dims {:?} do not match {} values",
                dims,
                data.len()
            )));
        }
        Ok(Self::from_parts(dims, affine, 1.0, None, data))
    }

    /// A volume filled with one value.
    pub fn filled(dims: [usize; 4], affine: Affine, value: T) -> Result<Self, VolumeError> {
        let n = dims
            .iter()
            .try_fold(1usize, |acc, d| acc.checked_mul(*d))
            .ok_or_else(|| VolumeError::Shape(format!("volume dims {dims:?} overflow")))?;
        Self::new(dims, affine, vec![value; n])
    }

    pub(crate) fn from_parts(
        dims: [usize; 4],
        affine: Affine,
        time_step_s: f64,
        geometry: Option<StoredGeometry>,
        data: Vec<T>,
    ) -> Self {
        debug_assert_eq!(dims.iter().product::<usize>(), data.len());
        Self {
            dims,
            affine,
            time_step_s,
            geometry,
            data,
        }
    }

    /// A volume on the same grid as `like` (dims x, y, z, affine, stored geometry) with other
    /// data, e.g. a mask for an image; `data` holds one 3D frame.
    pub fn new_like<U: Copy>(like: &Volume<U>, data: Vec<T>) -> Result<Self, VolumeError> {
        let d = like.dims;
        let mut v = Self::new([d[0], d[1], d[2], 1], like.affine, data)?;
        v.geometry = like.geometry.clone();
        Ok(v)
    }

    /// Dims `[nx, ny, nz, nt]` (nt = 1 for a 3D volume).
    pub fn dims(&self) -> [usize; 4] {
        self.dims
    }

    /// Spatial dims `[nx, ny, nz]`.
    pub fn dims3(&self) -> [usize; 3] {
        [self.dims[0], self.dims[1], self.dims[2]]
    }

    /// Number of voxels in one 3D frame.
    pub fn frame_len(&self) -> usize {
        self.dims[0] * self.dims[1] * self.dims[2]
    }

    /// The voxel→world affine.
    pub fn affine(&self) -> &Affine {
        &self.affine
    }

    /// Voxel spacing in mm (column norms of the affine).
    pub fn spacing_mm(&self) -> [f64; 3] {
        self.affine.spacing_mm()
    }

    /// Volume of one voxel in mm³.
    pub fn voxel_volume_mm3(&self) -> f64 {
        self.affine.linear().determinant().abs()
    }

    /// Time between frames in seconds (1.0 when unknown or 3D).
    pub fn time_step_s(&self) -> f64 {
        self.time_step_s
    }

    /// Set the time between frames (seconds).
    pub fn set_time_step_s(&mut self, seconds: f64) {
        self.time_step_s = seconds;
    }

    /// The stored qform/sform this volume came with, if it is still in its file layout.
    pub fn stored_geometry(&self) -> Option<&StoredGeometry> {
        self.geometry.as_ref()
    }

    /// The voxel values, x fastest.
    pub fn data(&self) -> &[T] {
        &self.data
    }

    /// Mutable voxel values, x fastest.
    pub fn data_mut(&mut self) -> &mut [T] {
        &mut self.data
    }

    /// Take the voxel values.
    pub fn into_data(self) -> Vec<T> {
        self.data
    }

    /// Linear index of voxel `(i, j, k)` in frame `t`.
    pub fn linear_index(&self, i: usize, j: usize, k: usize, t: usize) -> usize {
        i + self.dims[0] * (j + self.dims[1] * (k + self.dims[2] * t))
    }

    /// The value at voxel `idx_vox` of frame 0, or `None` outside the grid.
    pub fn get(&self, idx_vox: [usize; 3]) -> Option<T> {
        let [i, j, k] = idx_vox;
        if i < self.dims[0] && j < self.dims[1] && k < self.dims[2] {
            Some(self.data[self.linear_index(i, j, k, 0)])
        } else {
            None
        }
    }

    /// Convert every value.
    pub fn map<U: Copy>(&self, f: impl Fn(T) -> U) -> Volume<U> {
        Volume {
            dims: self.dims,
            affine: self.affine,
            time_step_s: self.time_step_s,
            geometry: self.geometry.clone(),
            data: self.data.iter().map(|v| f(*v)).collect(),
        }
    }

    /// One 3D frame of a 4D volume.
    pub fn frame(&self, t: usize) -> Option<Volume<T>> {
        if t >= self.dims[3] {
            return None;
        }
        let n = self.frame_len();
        Some(Volume {
            dims: [self.dims[0], self.dims[1], self.dims[2], 1],
            affine: self.affine,
            time_step_s: self.time_step_s,
            geometry: self.geometry.clone(),
            data: self.data[t * n..(t + 1) * n].to_vec(),
        })
    }
}

impl<T: Voxel> Volume<T> {
    /// Minimum and maximum value, ignoring NaN; `None` when all values are NaN.
    pub fn range(&self) -> Option<(f32, f32)> {
        let mut lo = f32::INFINITY;
        let mut hi = f32::NEG_INFINITY;
        for v in &self.data {
            let f = v.to_f32();
            if f < lo {
                lo = f;
            }
            if f > hi {
                hi = f;
            }
        }
        (lo <= hi).then_some((lo, hi))
    }
}

/// A volume of any supported voxel type, as read from a file.
#[derive(Debug, Clone, PartialEq)]
pub enum AnyVolume {
    /// Unsigned 8-bit (masks).
    U8(Volume<u8>),
    /// Signed 16-bit (most MRI).
    I16(Volume<i16>),
    /// Unsigned 16-bit.
    U16(Volume<u16>),
    /// Signed 32-bit.
    I32(Volume<i32>),
    /// 32-bit float (scaled data, ADC, probabilities).
    F32(Volume<f32>),
}

macro_rules! each_volume {
    ($self:expr, $v:ident => $body:expr) => {
        match $self {
            AnyVolume::U8($v) => $body,
            AnyVolume::I16($v) => $body,
            AnyVolume::U16($v) => $body,
            AnyVolume::I32($v) => $body,
            AnyVolume::F32($v) => $body,
        }
    };
}

impl AnyVolume {
    /// Dims `[nx, ny, nz, nt]`.
    pub fn dims(&self) -> [usize; 4] {
        each_volume!(self, v => v.dims())
    }

    /// The voxel→world affine.
    pub fn affine(&self) -> &Affine {
        each_volume!(self, v => v.affine())
    }

    /// The voxel type.
    pub fn datatype(&self) -> Datatype {
        match self {
            AnyVolume::U8(_) => Datatype::U8,
            AnyVolume::I16(_) => Datatype::I16,
            AnyVolume::U16(_) => Datatype::U16,
            AnyVolume::I32(_) => Datatype::I32,
            AnyVolume::F32(_) => Datatype::F32,
        }
    }

    /// Minimum and maximum value.
    pub fn range(&self) -> Option<(f32, f32)> {
        each_volume!(self, v => v.range())
    }

    /// The time between frames (s).
    pub fn time_step_s(&self) -> f64 {
        each_volume!(self, v => v.time_step_s())
    }

    /// Convert to f32 values (same grid).
    pub fn to_f32(&self) -> Volume<f32> {
        each_volume!(self, v => v.map(|x| x.to_f32()))
    }

    /// Take as a u8 volume (a label mask), or say which type it really is.
    pub fn into_u8(self) -> Result<Volume<u8>, Datatype> {
        match self {
            AnyVolume::U8(v) => Ok(v),
            other => Err(other.datatype()),
        }
    }

    /// Take as a label mask: uint8 as it is, any other type when every value is a whole
    /// number 0..=255 (ITK-SNAP saves segmentations as uint16, FreeSurfer as int32, many
    /// pipelines as int16 or float), else the first value that is not.
    pub fn into_label_mask(self) -> Result<Volume<u8>, NotALabelMask> {
        if let AnyVolume::U8(v) = self {
            return Ok(v);
        }
        each_volume!(self, v => whole_labels(&v)).map_err(|value| NotALabelMask { value })
    }
}

/// A volume that cannot be a label mask: a value that is not a whole number 0..=255.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("a label mask must hold whole numbers 0–255, and this file holds {value}")]
pub struct NotALabelMask {
    /// The first value that is not a label.
    pub value: f32,
}

/// `volume` as u8 labels, or the first value that is not a whole number 0..=255.
fn whole_labels<T: Voxel>(volume: &Volume<T>) -> Result<Volume<u8>, f32> {
    let is_label = |x: f32| x.fract() == 0.0 && (0.0..=255.0).contains(&x);
    if let Some(bad) = volume
        .data()
        .iter()
        .map(|x| x.to_f32())
        .find(|x| !is_label(*x))
    {
        return Err(bad);
    }
    Ok(volume.map(|x| x.to_f32() as u8))
}
