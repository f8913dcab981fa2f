//! NIfTI-1 and NIfTI-2 reading (`.nii`, `.nii.gz`) and NIfTI-1 writing.
//!
//! Files are untrusted. The header is parsed (NIfTI-1 by the `nifti` crate, NIfTI-2 here) and
//! validated before any voxel buffer is allocated: dims, datatype and bitpix, `vox_offset`,
//! spacing, scaling and affine, and that the file can hold what the header claims (a plain file
//! by its length; a gzip file by the largest ratio deflate can reach). Voxel buffers are then
//! sized by the validated claim, never beyond a small multiple of the file's real size; a gzip
//! stream whose size cannot be trusted grows its buffer only as data actually arrives.
//! Every error names the file and the problem; nothing here panics on bad input.
//!
//! A `.hdr`/`.img` pair is read and written through `nifti_pair`, with the same checks.
//!
//! Writes are always NIfTI-1, little-endian, atomic (see `crate::atomic`), gzip compressed
//! when the name ends in `.gz`; single-file unless the name is a pair's. A volume still in its file layout is written with the
//! qform/sform it was read with, bit-for-bit.

use super::{Affine, AnyVolume, StoredGeometry, Volume, VolumeError, Voxel};
use std::fmt;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

/// Largest voxel payload mriloop accepts (bytes): 16 GiB.
pub const MAX_DATA_BYTES: u64 = 16 << 30;
use super::MAX_DEFLATE_RATIO;
/// A gzip file whose claimed size is within this ratio of its real size is decoded in one
/// shot into a buffer of the claimed size (allocation ≤ this × the file size).
const FAST_PATH_RATIO: u64 = 64;

/// Where a header's voxels are: after it in one file (`.nii`), or in a separate `.img` (a
/// `.hdr`/`.img` pair, where `vox_offset` counts from the `.img`'s start).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Layout {
    /// `.nii` / `.nii.gz`: magic `n+1` / `n+2`.
    Single,
    /// `.hdr` + `.img` (either gzipped): magic `ni1` / `ni2`.
    Pair,
}

const NIFTI1_HEADER_BYTES: usize = 348;
const NIFTI2_HEADER_BYTES: usize = 540;

/// NIfTI datatypes mriloop reads. Types marked "read only" are converted on read (see
/// `read_volume`); the others are also written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datatype {
    /// `uint8` (code 2).
    U8,
    /// `int8` (code 256), read only → i16.
    I8,
    /// `int16` (code 4).
    I16,
    /// `uint16` (code 512).
    U16,
    /// `int32` (code 8).
    I32,
    /// `uint32` (code 768), read only → f32.
    U32,
    /// `int64` (code 1024), read only → f32.
    I64,
    /// `uint64` (code 1280), read only → f32.
    U64,
    /// `float32` (code 16).
    F32,
    /// `float64` (code 64), read only → f32.
    F64,
}

impl Datatype {
    /// From a NIfTI datatype code; `None` for codes mriloop does not read.
    pub fn from_code(code: i64) -> Option<Self> {
        Some(match code {
            2 => Self::U8,
            256 => Self::I8,
            4 => Self::I16,
            512 => Self::U16,
            8 => Self::I32,
            768 => Self::U32,
            1024 => Self::I64,
            1280 => Self::U64,
            16 => Self::F32,
            64 => Self::F64,
            _ => return None,
        })
    }

    /// The NIfTI datatype code.
    pub fn code(self) -> i16 {
        match self {
            Self::U8 => 2,
            Self::I8 => 256,
            Self::I16 => 4,
            Self::U16 => 512,
            Self::I32 => 8,
            Self::U32 => 768,
            Self::I64 => 1024,
            Self::U64 => 1280,
            Self::F32 => 16,
            Self::F64 => 64,
        }
    }

    /// Bytes per voxel.
    pub fn size_bytes(self) -> usize {
        match self {
            Self::U8 | Self::I8 => 1,
            Self::I16 | Self::U16 => 2,
            Self::I32 | Self::U32 | Self::F32 => 4,
            Self::I64 | Self::U64 | Self::F64 => 8,
        }
    }

    /// The name nibabel and numpy use (`uint8`, `int16`, `float32`, …).
    pub fn name(self) -> &'static str {
        match self {
            Self::U8 => "uint8",
            Self::I8 => "int8",
            Self::I16 => "int16",
            Self::U16 => "uint16",
            Self::I32 => "int32",
            Self::U32 => "uint32",
            Self::I64 => "int64",
            Self::U64 => "uint64",
            Self::F32 => "float32",
            Self::F64 => "float64",
        }
    }
}

/// Names a datatype code for messages, including the ones mriloop does not read.
fn datatype_code_name(code: i64) -> String {
    let known = match code {
        0 => "unknown (0)",
        1 => "binary (1)",
        32 => "complex64 (32)",
        128 => "rgb24 (128)",
        1536 => "float128 (1536)",
        1792 => "complex128 (1792)",
        2048 => "complex256 (2048)",
        2304 => "rgba32 (2304)",
        _ => return format!("unknown code {code}"),
    };
    known.to_owned()
}

/// What is wrong with a NIfTI file.
#[derive(Debug, Clone, PartialEq)]
pub enum NiftiProblem {
    /// The file has no bytes.
    Empty,
    /// Fewer bytes than a header needs.
    TruncatedHeader {
        /// Bytes available.
        got: usize,
        /// Bytes a header needs.
        need: usize,
    },
    /// `sizeof_hdr` is neither 348 (NIfTI-1) nor 540 (NIfTI-2) in either byte order.
    NotNifti {
        /// The little-endian reading of the first four bytes.
        sizeof_hdr: i32,
    },
    /// The magic string is wrong.
    BadMagic(String),
    /// Pair magic (`ni1`/`ni2`) in a single file: its voxels are in a separate `.img`.
    HeaderPair,
    /// An Analyze 7.5 header (a `.hdr` without NIfTI magic): its orientation is ambiguous.
    Analyze,
    /// A `.hdr`/`.img` pair with one of its two files missing.
    PairPartnerMissing(String),
    /// `dim[0]` outside 1..=7.
    DimCountOutOfRange(i64),
    /// A dimension is zero or negative.
    BadDim {
        /// Which `dim[i]`.
        axis: usize,
        /// Its value.
        value: i64,
    },
    /// Dimensions 5–7 are used: mriloop reads 3D and 4D data.
    TooManyDims(usize),
    /// The datatype code is not one mriloop reads.
    UnsupportedDatatype(String),
    /// `bitpix` disagrees with the datatype.
    BitpixMismatch {
        /// `bitpix` as stored.
        bitpix: i64,
        /// What the datatype needs.
        expected: usize,
    },
    /// The claimed data is larger than mriloop accepts, or overflows.
    TooLarge {
        /// Claimed bytes (saturated).
        bytes: u64,
    },
    /// `vox_offset` is not a usable offset.
    BadVoxOffset(String),
    /// `vox_offset` points past the end of the file.
    VoxOffsetPastEnd {
        /// The offset.
        offset: u64,
        /// The file's length.
        len: u64,
    },
    /// The file is shorter than the header claims.
    TruncatedData {
        /// Bytes of voxel data the header claims.
        need: u64,
        /// Bytes present.
        got: u64,
    },
    /// A gzip file too small to decompress to what the header claims.
    ImplausibleCompression {
        /// Claimed decompressed bytes.
        claimed: u64,
        /// Compressed file size.
        compressed: u64,
    },
    /// The gzip stream is corrupt.
    CorruptGzip(String),
    /// `scl_slope` or `scl_inter` is NaN or infinite.
    NonFiniteScaling {
        /// `scl_slope`.
        slope: f64,
        /// `scl_inter`.
        inter: f64,
    },
    /// A voxel spacing in use is zero, negative or not finite.
    BadSpacing {
        /// Which `pixdim[i]`.
        axis: usize,
        /// Its value.
        value: f64,
    },
    /// The voxel→world affine has NaN/inf entries or is singular.
    BadAffine(String),
}

impl NiftiProblem {
    /// Whether the problem is the voxel file's (too short, or empty, for the header's claim):
    /// in a pair, the `.img`'s.
    pub fn is_about_the_data_file(&self) -> bool {
        matches!(
            self,
            Self::Empty
                | Self::VoxOffsetPastEnd { .. }
                | Self::TruncatedData { .. }
                | Self::ImplausibleCompression { .. }
        )
    }
}

impl fmt::Display for NiftiProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => write!(f, "empty file (0 bytes), not a NIfTI image"),
            Self::TruncatedHeader { got, need } => {
                write!(f, "truncated header: {got} bytes, a NIfTI header needs {need}")
            }
            Self::NotNifti { sizeof_hdr } => write!(
                f,
                "not a NIfTI file: sizeof_hdr is {sizeof_hdr} (expected 348 for NIfTI-1 or 540 for NIfTI-2, in either byte order)"
            ),
            Self::BadMagic(m) => write!(
                f,
                "wrong magic {m:?} (expected \"n+1\" or \"n+2\" in a .nii, \"ni1\" or \"ni2\" in a pair's .hdr)"
            ),
            Self::HeaderPair => write!(
                f,
                "a .hdr/.img pair's header (magic ni1/ni2) in a single file: open the .hdr beside its .img"
            ),
            Self::Analyze => write!(
                f,
                "an Analyze 7.5 header (no NIfTI magic), whose left and right are ambiguous: convert it to NIfTI first (nibabel, or FSL's fslchfiletype)"
            ),
            Self::PairPartnerMissing(want) => {
                write!(f, "half of a .hdr/.img pair: {want} is not beside it")
            }
            Self::DimCountOutOfRange(n) => write!(f, "dim[0] = {n} is out of range (1..=7)"),
            Self::BadDim { axis, value } => write!(f, "dim[{axis}] = {value} is not a positive size"),
            Self::TooManyDims(n) => write!(f, "{n}-D data: mriloop reads 3D and 4D volumes"),
            Self::UnsupportedDatatype(d) => write!(f, "unsupported datatype {d}"),
            Self::BitpixMismatch { bitpix, expected } => {
                write!(f, "bitpix = {bitpix} disagrees with the datatype ({expected} bits)")
            }
            Self::TooLarge { bytes } => write!(
                f,
                "header claims {bytes} bytes of voxel data, more than mriloop accepts ({MAX_DATA_BYTES})"
            ),
            Self::BadVoxOffset(s) => write!(f, "bad vox_offset: {s}"),
            Self::VoxOffsetPastEnd { offset, len } => {
                write!(f, "vox_offset {offset} is past the end of the {len}-byte file")
            }
            Self::TruncatedData { need, got } => write!(
                f,
                "truncated data: the header claims {need} bytes of voxel data, the file holds {got}"
            ),
            Self::ImplausibleCompression { claimed, compressed } => write!(
                f,
                "the header claims {claimed} bytes, more than a {compressed}-byte gzip file can hold"
            ),
            Self::CorruptGzip(s) => write!(f, "corrupt gzip stream: {s}"),
            Self::NonFiniteScaling { slope, inter } => {
                write!(f, "scaling is not finite (scl_slope = {slope}, scl_inter = {inter})")
            }
            Self::BadSpacing { axis, value } => {
                write!(f, "voxel spacing pixdim[{axis}] = {value} is not a positive finite size")
            }
            Self::BadAffine(s) => write!(f, "bad voxel-to-world transform: {s}"),
        }
    }
}

/// A validated NIfTI header.
#[derive(Debug, Clone, PartialEq)]
pub struct NiftiHeaderInfo {
    /// 1 or 2.
    pub version: u8,
    /// Whether it is a `.hdr`/`.img` pair's header (the voxels in the `.img`).
    pub pair: bool,
    /// Whether the file is big-endian.
    pub big_endian: bool,
    /// `dim[0]`: number of dimensions (1..=7, dims past 4 all 1).
    pub ndim: usize,
    /// `[nx, ny, nz, nt]` (1 where unused).
    pub dims: [usize; 4],
    /// The stored datatype.
    pub datatype: Datatype,
    /// `pixdim[0..8]`.
    pub pixdim: [f64; 8],
    /// Byte offset of the voxel data.
    pub vox_offset: u64,
    /// `scl_slope`.
    pub scl_slope: f64,
    /// `scl_inter`.
    pub scl_inter: f64,
    /// `xyzt_units`.
    pub xyzt_units: u8,
    /// The stored qform/sform.
    pub geometry: StoredGeometry,
    /// The voxel→world affine (sform, else qform, else spacing).
    pub affine: Affine,
    /// `descrip`, up to its first NUL.
    pub descrip: String,
}

impl NiftiHeaderInfo {
    /// Bytes of voxel data the header claims (validated: ≤ `MAX_DATA_BYTES`).
    pub fn data_bytes(&self) -> u64 {
        self.dims.iter().map(|d| *d as u64).product::<u64>() * self.datatype.size_bytes() as u64
    }

    /// Whether reading applies `scl_slope`/`scl_inter` (slope not 0 and not the identity).
    pub fn is_scaled(&self) -> bool {
        self.scl_slope != 0.0 && !(self.scl_slope == 1.0 && self.scl_inter == 0.0)
    }

    /// The time between frames in seconds (`pixdim[4]` in its units; 1.0 when unset).
    pub fn time_step_s(&self) -> f64 {
        let raw = self.pixdim[4];
        let scale = match self.xyzt_units & 0x38 {
            16 => 1.0e-3,
            24 => 1.0e-6,
            _ => 1.0,
        };
        let t = raw * scale;
        if t.is_finite() && t > 0.0 {
            t
        } else {
            1.0
        }
    }

    /// The orientation code of the affine, e.g. `"RAS"`.
    pub fn orientation_code(&self) -> String {
        self.affine.orientation_code()
    }
}

pub(super) fn nifti_err(path: &Path, problem: NiftiProblem) -> VolumeError {
    VolumeError::Nifti {
        path: path.to_path_buf(),
        problem,
    }
}

pub(super) fn io_err(path: &Path, source: io::Error) -> VolumeError {
    VolumeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub(super) fn is_gzip(bytes: &[u8]) -> bool {
    bytes.len() >= 2 && bytes[0] == 0x1f && bytes[1] == 0x8b
}

/// Read and validate only the header of a `.nii` or `.nii.gz` file (or of a `.hdr`/`.img`
/// pair, named by either file).
pub fn read_header(path: &Path) -> Result<NiftiHeaderInfo, VolumeError> {
    if let Some(pair) = super::nifti_pair::pair_of(path)? {
        return pair.read_header();
    }
    let mut file = File::open(path).map_err(|e| io_err(path, e))?;
    let len = file.metadata().map_err(|e| io_err(path, e))?.len();
    let mut head = Vec::with_capacity(NIFTI2_HEADER_BYTES);
    (&mut file)
        .take(NIFTI2_HEADER_BYTES as u64)
        .read_to_end(&mut head)
        .map_err(|e| io_err(path, e))?;
    if is_gzip(&head) {
        let mut file = File::open(path).map_err(|e| io_err(path, e))?;
        let hdr = gz_header_bytes(path, &mut file)?;
        parse_header(path, &hdr, (len, true), Layout::Single)
    } else {
        parse_header(path, &head, (len, false), Layout::Single)
    }
}

/// Decompress the first header-sized bytes of a gzip stream.
pub(super) fn gz_header_bytes(path: &Path, reader: impl Read) -> Result<Vec<u8>, VolumeError> {
    let mut out = Vec::with_capacity(NIFTI2_HEADER_BYTES);
    flate2::read::MultiGzDecoder::new(reader)
        .take(NIFTI2_HEADER_BYTES as u64)
        .read_to_end(&mut out)
        .map_err(|e| nifti_err(path, NiftiProblem::CorruptGzip(e.to_string())))?;
    Ok(out)
}

/// Parse and validate a header from the first bytes of the (decompressed) stream.
/// `file_len` is the size on disk of the file holding the voxels; `gz` says whether it is
/// compressed.
pub(super) fn parse_header(
    path: &Path,
    bytes: &[u8],
    (file_len, gz): (u64, bool),
    layout: Layout,
) -> Result<NiftiHeaderInfo, VolumeError> {
    let fail = |p| nifti_err(path, p);
    if file_len == 0 {
        return Err(fail(NiftiProblem::Empty));
    }
    if bytes.len() < 4 {
        return Err(fail(NiftiProblem::TruncatedHeader {
            got: bytes.len(),
            need: NIFTI1_HEADER_BYTES,
        }));
    }
    let first: [u8; 4] = [bytes[0], bytes[1], bytes[2], bytes[3]];
    let le = i32::from_le_bytes(first);
    let be = i32::from_be_bytes(first);
    let (version, big_endian) = match (le, be) {
        (348, _) => (1, false),
        (_, 348) => (1, true),
        (540, _) => (2, false),
        (_, 540) => (2, true),
        _ => return Err(fail(NiftiProblem::NotNifti { sizeof_hdr: le })),
    };
    let need = if version == 1 {
        NIFTI1_HEADER_BYTES
    } else {
        NIFTI2_HEADER_BYTES
    };
    if bytes.len() < need {
        return Err(fail(NiftiProblem::TruncatedHeader {
            got: bytes.len(),
            need,
        }));
    }
    let raw = if version == 1 {
        RawHeader::parse_v1(path, &bytes[..need], big_endian, layout)?
    } else {
        RawHeader::parse_v2(&bytes[..need], big_endian)?
    };
    raw.validate(path, (version, big_endian, layout), file_len, gz)
}

/// Header fields in a version-independent form, before validation.
struct RawHeader {
    magic: [u8; 8],
    dim: [i64; 8],
    datatype: i64,
    bitpix: i64,
    pixdim: [f64; 8],
    vox_offset: f64,
    scl_slope: f64,
    scl_inter: f64,
    xyzt_units: u8,
    qform_code: i64,
    sform_code: i64,
    quatern: [f64; 3],
    qoffset: [f64; 3],
    srow: [[f64; 4]; 3],
    descrip: Vec<u8>,
}

/// Little helper reading fixed-offset fields in one byte order.
struct Fields<'a> {
    b: &'a [u8],
    big: bool,
}

impl Fields<'_> {
    fn arr<const N: usize>(&self, at: usize) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(&self.b[at..at + N]);
        if self.big {
            a.reverse();
        }
        a
    }
    fn i16(&self, at: usize) -> i16 {
        i16::from_le_bytes(self.arr(at))
    }
    fn i32(&self, at: usize) -> i32 {
        i32::from_le_bytes(self.arr(at))
    }
    fn i64(&self, at: usize) -> i64 {
        i64::from_le_bytes(self.arr(at))
    }
    fn f64(&self, at: usize) -> f64 {
        f64::from_le_bytes(self.arr(at))
    }
}

impl RawHeader {
    /// NIfTI-1: the `nifti` crate parses the 348 bytes; `dim[0]` is checked first because the
    /// crate infers byte order from it.
    fn parse_v1(path: &Path, bytes: &[u8], big: bool, layout: Layout) -> Result<Self, VolumeError> {
        let fields = Fields { b: bytes, big };
        let dim0 = fields.i16(40) as i64;
        if !(1..=7).contains(&dim0) {
            return Err(nifti_err(path, NiftiProblem::DimCountOutOfRange(dim0)));
        }
        let magic_raw = &bytes[344..348];
        let expected: &[u8] = match layout {
            Layout::Single if magic_raw == b"ni1\0" => {
                return Err(nifti_err(path, NiftiProblem::HeaderPair))
            }
            Layout::Pair if magic_raw == [0; 4] => {
                return Err(nifti_err(path, NiftiProblem::Analyze))
            }
            Layout::Single => b"n+1\0",
            Layout::Pair => b"ni1\0",
        };
        if magic_raw != expected {
            return Err(nifti_err(
                path,
                NiftiProblem::BadMagic(
                    String::from_utf8_lossy(magic_raw)
                        .trim_end_matches('\0')
                        .to_owned(),
                ),
            ));
        }
        let h = nifti::NiftiHeader::from_reader(bytes)
            .map_err(|e| nifti_err(path, NiftiProblem::BadMagic(e.to_string())))?;
        let mut magic = [0u8; 8];
        magic[..4].copy_from_slice(&h.magic);
        let f = |v: f32| v as f64;
        Ok(Self {
            magic,
            dim: h.dim.map(|d| d as i16 as i64),
            datatype: h.datatype as i64,
            bitpix: h.bitpix as i64,
            pixdim: h.pixdim.map(f),
            vox_offset: f(h.vox_offset),
            scl_slope: f(h.scl_slope),
            scl_inter: f(h.scl_inter),
            xyzt_units: h.xyzt_units,
            qform_code: h.qform_code as i64,
            sform_code: h.sform_code as i64,
            quatern: [f(h.quatern_b), f(h.quatern_c), f(h.quatern_d)],
            qoffset: [f(h.quatern_x), f(h.quatern_y), f(h.quatern_z)],
            srow: [h.srow_x.map(f), h.srow_y.map(f), h.srow_z.map(f)],
            descrip: h.descrip,
        })
    }

    /// NIfTI-2 (540-byte header, 64-bit fields); the `nifti` crate does not read it.
    fn parse_v2(bytes: &[u8], big: bool) -> Result<Self, VolumeError> {
        let r = Fields { b: bytes, big };
        let mut magic = [0u8; 8];
        magic.copy_from_slice(&bytes[4..12]);
        let mut dim = [0i64; 8];
        for (i, d) in dim.iter_mut().enumerate() {
            *d = r.i64(16 + 8 * i);
        }
        let mut pixdim = [0f64; 8];
        for (i, p) in pixdim.iter_mut().enumerate() {
            *p = r.f64(104 + 8 * i);
        }
        let row = |at: usize| [r.f64(at), r.f64(at + 8), r.f64(at + 16), r.f64(at + 24)];
        Ok(Self {
            magic,
            dim,
            datatype: r.i16(12) as i64,
            bitpix: r.i16(14) as i64,
            pixdim,
            vox_offset: r.i64(168) as f64,
            scl_slope: r.f64(176),
            scl_inter: r.f64(184),
            xyzt_units: r.i32(500) as u8,
            qform_code: r.i32(344) as i64,
            sform_code: r.i32(348) as i64,
            quatern: [r.f64(352), r.f64(360), r.f64(368)],
            qoffset: [r.f64(376), r.f64(384), r.f64(392)],
            srow: [row(400), row(432), row(464)],
            descrip: bytes[240..320].to_vec(),
        })
    }

    /// Check every field a reader relies on (magic, dims, datatype and bitpix, `vox_offset`
    /// against the file's real length, scaling, spacing, affine) and give the validated header;
    /// `gz`: the file is gzip, `file_len` its compressed length.
    fn validate(
        self,
        path: &Path,
        (version, big_endian, layout): (u8, bool, Layout),
        file_len: u64,
        gz: bool,
    ) -> Result<NiftiHeaderInfo, VolumeError> {
        let fail = |p| nifti_err(path, p);
        if version == 2 {
            self.check_magic_v2(layout).map_err(fail)?;
        }
        let (ndim, dims) = self.checked_dims().map_err(fail)?;
        let datatype = self.checked_datatype().map_err(fail)?;
        // A pair's voxels start in their own file: any whole offset from 0.
        let header_len = match (layout, version) {
            (Layout::Pair, _) => 0.0,
            (Layout::Single, 1) => 348.0,
            (Layout::Single, _) => 540.0,
        };
        let vox_offset = self
            .checked_vox_offset(header_len, dims, datatype, file_len, gz)
            .map_err(fail)?;
        if !self.scl_slope.is_finite() || !self.scl_inter.is_finite() {
            return Err(fail(NiftiProblem::NonFiniteScaling {
                slope: self.scl_slope,
                inter: self.scl_inter,
            }));
        }
        let (geometry, affine) = self.checked_geometry().map_err(fail)?;
        let end = self
            .descrip
            .iter()
            .position(|c| *c == 0)
            .unwrap_or(self.descrip.len());
        Ok(NiftiHeaderInfo {
            version,
            pair: layout == Layout::Pair,
            big_endian,
            ndim,
            dims,
            datatype,
            pixdim: self.pixdim,
            vox_offset,
            scl_slope: self.scl_slope,
            scl_inter: self.scl_inter,
            xyzt_units: self.xyzt_units,
            geometry,
            affine,
            descrip: String::from_utf8_lossy(&self.descrip[..end]).into_owned(),
        })
    }

    /// NIfTI-2 magic: `n+2\0\r\n\x1a\n` in a single file, `ni2…` in a pair's header.
    fn check_magic_v2(&self, layout: Layout) -> Result<(), NiftiProblem> {
        if layout == Layout::Single && &self.magic[..4] == b"ni2\0" {
            return Err(NiftiProblem::HeaderPair);
        }
        let expected = match layout {
            Layout::Single => b"n+2\0\r\n\x1a\n",
            Layout::Pair => b"ni2\0\r\n\x1a\n",
        };
        if &self.magic != expected {
            let shown = String::from_utf8_lossy(&self.magic[..3]).into_owned();
            return Err(NiftiProblem::BadMagic(shown));
        }
        Ok(())
    }

    /// The number of dimensions (1..=7) and the grid `[nx, ny, nz, nt]` (1 where absent): every
    /// used dim at least 1, and none beyond the fourth above 1.
    fn checked_dims(&self) -> Result<(usize, [usize; 4]), NiftiProblem> {
        let ndim = self.dim[0];
        if !(1..=7).contains(&ndim) {
            return Err(NiftiProblem::DimCountOutOfRange(ndim));
        }
        let ndim = ndim as usize;
        for axis in 1..=ndim {
            if self.dim[axis] < 1 {
                return Err(NiftiProblem::BadDim {
                    axis,
                    value: self.dim[axis],
                });
            }
        }
        if (5..=ndim).any(|a| self.dim[a] > 1) {
            return Err(NiftiProblem::TooManyDims(ndim));
        }
        let mut dims = [1usize; 4];
        for (a, d) in dims.iter_mut().enumerate().take(ndim.min(4)) {
            *d = usize::try_from(self.dim[a + 1])
                .map_err(|_| NiftiProblem::TooLarge { bytes: u64::MAX })?;
        }
        Ok((ndim, dims))
    }

    /// A datatype mriloop reads, with the matching `bitpix`.
    fn checked_datatype(&self) -> Result<Datatype, NiftiProblem> {
        let datatype = Datatype::from_code(self.datatype)
            .ok_or_else(|| NiftiProblem::UnsupportedDatatype(datatype_code_name(self.datatype)))?;
        if self.bitpix != 8 * datatype.size_bytes() as i64 {
            return Err(NiftiProblem::BitpixMismatch {
                bitpix: self.bitpix,
                expected: 8 * datatype.size_bytes(),
            });
        }
        Ok(datatype)
    }

    /// The voxel data's byte offset: a whole offset past the header (`header_len`: 0 in a
    /// pair's `.img`), with the claimed data (at most `MAX_DATA_BYTES`) fitting in the file of
    /// `file_len` bytes (a gzip file: within deflate's largest ratio).
    fn checked_vox_offset(
        &self,
        header_len: f64,
        dims: [usize; 4],
        datatype: Datatype,
        file_len: u64,
        gz: bool,
    ) -> Result<u64, NiftiProblem> {
        let data_bytes = dims
            .iter()
            .try_fold(datatype.size_bytes() as u64, |acc, d| {
                acc.checked_mul(*d as u64)
            })
            .unwrap_or(u64::MAX);
        if data_bytes > MAX_DATA_BYTES {
            return Err(NiftiProblem::TooLarge { bytes: data_bytes });
        }
        let vo = self.vox_offset;
        if !vo.is_finite() || vo < header_len || vo.fract() != 0.0 || vo > MAX_DATA_BYTES as f64 {
            let past = match header_len > 0.0 {
                true => format!(" past the {header_len}-byte header"),
                false => String::new(),
            };
            return Err(NiftiProblem::BadVoxOffset(format!(
                "{vo} (must be a whole byte offset{past})"
            )));
        }
        let vox_offset = vo as u64;
        if !gz && vox_offset > file_len {
            return Err(NiftiProblem::VoxOffsetPastEnd {
                offset: vox_offset,
                len: file_len,
            });
        }
        let total = vox_offset + data_bytes;
        if gz
            && total
                > file_len
                    .saturating_mul(MAX_DEFLATE_RATIO)
                    .saturating_add(4096)
        {
            return Err(NiftiProblem::ImplausibleCompression {
                claimed: total,
                compressed: file_len,
            });
        }
        if !gz && total > file_len {
            return Err(NiftiProblem::TruncatedData {
                need: data_bytes,
                got: file_len - vox_offset,
            });
        }
        Ok(vox_offset)
    }

    /// The stored geometry (qform/sform as written) and the affine it gives: finite spacing
    /// (positive where there is no sform), and a finite, invertible affine.
    fn checked_geometry(&self) -> Result<(StoredGeometry, Affine), NiftiProblem> {
        let pixdim_mm = [self.pixdim[1], self.pixdim[2], self.pixdim[3]];
        for (i, v) in pixdim_mm.iter().enumerate() {
            if !v.is_finite() {
                return Err(NiftiProblem::BadSpacing {
                    axis: i + 1,
                    value: *v,
                });
            }
        }
        let geometry = StoredGeometry {
            qform_code: self.qform_code.clamp(i16::MIN as i64, i16::MAX as i64) as i16,
            sform_code: self.sform_code.clamp(i16::MIN as i64, i16::MAX as i64) as i16,
            quatern_bcd: self.quatern,
            qoffset_mm: self.qoffset,
            qfac: self.pixdim[0],
            pixdim_mm,
            srow: self.srow,
        };
        if geometry.sform_code <= 0 {
            for (i, v) in pixdim_mm.iter().enumerate() {
                if *v <= 0.0 {
                    return Err(NiftiProblem::BadSpacing {
                        axis: i + 1,
                        value: *v,
                    });
                }
            }
        }
        let affine = geometry.best_affine();
        if !affine.is_finite() {
            return Err(NiftiProblem::BadAffine(
                "it has NaN or infinite entries".into(),
            ));
        }
        if affine.inverse().is_none() {
            return Err(NiftiProblem::BadAffine(
                "it is singular (not invertible)".into(),
            ));
        }
        Ok((geometry, affine))
    }
}

/// Read a `.nii` or `.nii.gz` file (NIfTI-1 or NIfTI-2, either byte order), FreeSurfer's
/// `.mgh` / `.mgz` (see `mgh`), or NRRD `.nrrd` / `.nhdr` / `.seg.nrrd` (see `nrrd`).
///
/// Types convert as: int8 → i16; uint32, (u)int64, float64 → f32; a scaled file
/// (`scl_slope` ≠ 0 and not the identity) → f32 with `slope · value + inter` applied.
pub fn read_volume(path: &Path) -> Result<AnyVolume, VolumeError> {
    if super::mgh::is_mgh_name(path) {
        return super::mgh::read_mgh(path);
    }
    if super::nrrd::is_segmentation_name(path) {
        return super::nrrd::read_segmentation(path).map(|(v, _)| AnyVolume::U8(v));
    }
    if super::nrrd::is_nrrd_name(path) {
        return super::nrrd::read_nrrd(path);
    }
    let (header, stored) = read_stored(path)?;
    Ok(decode(&header, stored))
}

/// Voxel values as stored in the file (file byte order), one variant per stored type.
pub(super) enum Stored {
    U8(Vec<u8>),
    I8(Vec<i8>),
    I16(Vec<i16>),
    U16(Vec<u16>),
    I32(Vec<i32>),
    U32(Vec<u32>),
    I64(Vec<i64>),
    U64(Vec<u64>),
    F32(Vec<f32>),
    F64(Vec<f64>),
}

macro_rules! each_stored {
    ($self:expr, $v:ident => $body:expr) => {
        match $self {
            Stored::U8($v) => $body,
            Stored::I8($v) => $body,
            Stored::I16($v) => $body,
            Stored::U16($v) => $body,
            Stored::I32($v) => $body,
            Stored::U32($v) => $body,
            Stored::I64($v) => $body,
            Stored::U64($v) => $body,
            Stored::F32($v) => $body,
            Stored::F64($v) => $body,
        }
    };
}

impl Stored {
    /// A zeroed buffer of `n` values. Callers size it from a validated header only where the
    /// file's real size already backs it.
    fn zeroed(datatype: Datatype, n: usize) -> Self {
        match datatype {
            Datatype::U8 => Self::U8(vec![0; n]),
            Datatype::I8 => Self::I8(vec![0; n]),
            Datatype::I16 => Self::I16(vec![0; n]),
            Datatype::U16 => Self::U16(vec![0; n]),
            Datatype::I32 => Self::I32(vec![0; n]),
            Datatype::U32 => Self::U32(vec![0; n]),
            Datatype::I64 => Self::I64(vec![0; n]),
            Datatype::U64 => Self::U64(vec![0; n]),
            Datatype::F32 => Self::F32(vec![0.0; n]),
            Datatype::F64 => Self::F64(vec![0.0; n]),
        }
    }

    /// Copy from raw bytes (whole values only).
    fn from_bytes(datatype: Datatype, bytes: &[u8]) -> Self {
        let mut s = Self::zeroed(datatype, bytes.len() / datatype.size_bytes());
        let dst = s.bytes_mut();
        let n = dst.len();
        dst.copy_from_slice(&bytes[..n]);
        s
    }

    /// Remove the first `k` values.
    fn drop_front(&mut self, k: usize) {
        each_stored!(self, v => {
            v.drain(..k);
        })
    }

    /// The values' bytes, to fill or byte-swap in place.
    fn bytes_mut(&mut self) -> &mut [u8] {
        each_stored!(self, v => bytemuck::cast_slice_mut(v.as_mut_slice()))
    }
}

/// Read the header and the stored voxel values (of a single file, or of a pair named by
/// either of its files).
fn read_stored(path: &Path) -> Result<(NiftiHeaderInfo, Stored), VolumeError> {
    if let Some(pair) = super::nifti_pair::pair_of(path)? {
        return pair.read_stored();
    }
    let mut file = File::open(path).map_err(|e| io_err(path, e))?;
    let len = file.metadata().map_err(|e| io_err(path, e))?.len();
    let head = first_bytes(path, &mut file)?;
    if !is_gzip(&head) {
        let header = parse_header(path, &head, (len, false), Layout::Single)?;
        let stored = read_plain_data(path, &mut file, &header)?;
        return Ok((header, stored));
    }
    let compressed = read_rest(path, &mut file, head, len)?;
    let hdr_bytes = gz_header_bytes(path, compressed.as_slice())?;
    let header = parse_header(path, &hdr_bytes, (len, true), Layout::Single)?;
    let stored = inflate_data(path, &compressed, &header, len)?;
    Ok((header, stored))
}

/// The first header-sized bytes of `file` (fewer if it is shorter).
pub(super) fn first_bytes(path: &Path, file: &mut File) -> Result<Vec<u8>, VolumeError> {
    let mut head = Vec::with_capacity(NIFTI2_HEADER_BYTES);
    file.take(NIFTI2_HEADER_BYTES as u64)
        .read_to_end(&mut head)
        .map_err(|e| io_err(path, e))?;
    Ok(head)
}

/// The voxels of an uncompressed file at the header's `vox_offset`.
pub(super) fn read_plain_data(
    path: &Path,
    file: &mut File,
    header: &NiftiHeaderInfo,
) -> Result<Stored, VolumeError> {
    use std::io::{Seek, SeekFrom};
    let n = header.dims.iter().product::<usize>();
    // Validated: vox_offset + data ≤ file length, so this allocation is backed by the file.
    let mut stored = Stored::zeroed(header.datatype, n);
    file.seek(SeekFrom::Start(header.vox_offset))
        .map_err(|e| io_err(path, e))?;
    file.read_exact(stored.bytes_mut())
        .map_err(|e| io_err(path, e))?;
    Ok(stored)
}

/// A gzip file read whole (`head`: its bytes read so far; `len`: its real size, not a claim).
pub(super) fn read_rest(
    path: &Path,
    file: &mut File,
    head: Vec<u8>,
    len: u64,
) -> Result<Vec<u8>, VolumeError> {
    let mut compressed = head;
    // The file's real size (not a header claim) sizes the buffer: one read, no regrowth.
    compressed.reserve_exact(
        usize::try_from(len)
            .unwrap_or(0)
            .saturating_sub(compressed.len()),
    );
    file.read_to_end(&mut compressed)
        .map_err(|e| io_err(path, e))?;
    Ok(compressed)
}

/// The voxels of the gzip stream `compressed` (`len` bytes on disk) at the header's
/// `vox_offset`: one of the fast paths where the real size backs the claim, else streaming.
pub(super) fn inflate_data(
    path: &Path,
    compressed: &[u8],
    header: &NiftiHeaderInfo,
    len: u64,
) -> Result<Stored, VolumeError> {
    let total = header.vox_offset + header.data_bytes();
    if total <= len.saturating_mul(FAST_PATH_RATIO) {
        if let Some(stored) = inflate_backed(path, compressed, header)? {
            return Ok(stored);
        }
    }
    inflate_streaming(path, compressed, header, len)
}

/// The fast paths for a gzip file whose claimed size its real size backs: a BGZF stream (on
/// all cores), or one gzip member whose trailer says the claimed size (one-shot). `None` when
/// neither applies (several members, trailing data, damage): the streaming path decides.
fn inflate_backed(
    path: &Path,
    compressed: &[u8],
    header: &NiftiHeaderInfo,
) -> Result<Option<Stored>, VolumeError> {
    // mriloop's own files (BGZF): decoded on all cores straight into the final buffer.
    let n = header.dims.iter().product::<usize>();
    let mut stored = Stored::zeroed(header.datatype, n);
    match super::bgzf::decompress_into(compressed, header.vox_offset as usize, stored.bytes_mut()) {
        super::bgzf::Inflated::Done => return Ok(Some(stored)),
        super::bgzf::Inflated::Corrupt(e) => {
            return Err(nifti_err(path, NiftiProblem::CorruptGzip(e)))
        }
        super::bgzf::Inflated::NotBgzf => {}
    }
    // One gzip member whose trailer says the size the header claims: one-shot decode.
    let total = header.vox_offset + header.data_bytes();
    let isize_trailer = compressed.len().checked_sub(4).map(|at| {
        u32::from_le_bytes([
            compressed[at],
            compressed[at + 1],
            compressed[at + 2],
            compressed[at + 3],
        ])
    });
    if isize_trailer != Some(total as u32) {
        return Ok(None);
    }
    // Decode header and voxels together into the typed buffer, then shift the voxels down over
    // the header (a move, cheaper than a fresh copy) when it is whole values.
    let size = header.datatype.size_bytes() as u64;
    let (pre, whole) = (
        header.vox_offset.div_ceil(size),
        header.vox_offset.is_multiple_of(size),
    );
    let mut stored = Stored::zeroed(header.datatype, n + pre as usize);
    let mut d = libdeflater::Decompressor::new();
    let decoded = d.gzip_decompress(compressed, &mut stored.bytes_mut()[..total as usize]);
    if !decoded.is_ok_and(|got| got as u64 == total) {
        return Ok(None);
    }
    if whole {
        stored.drop_front(pre as usize);
    } else {
        let data = &stored.bytes_mut()[header.vox_offset as usize..total as usize];
        stored = Stored::from_bytes(header.datatype, data);
    }
    Ok(Some(stored))
}

/// The general gzip path (any members, checked to the end of the stream): skip to the voxels
/// and read them into a buffer that grows only as data arrives, its first capacity what the
/// compressed `len` bytes can back.
fn inflate_streaming(
    path: &Path,
    compressed: &[u8],
    header: &NiftiHeaderInfo,
    len: u64,
) -> Result<Stored, VolumeError> {
    let need = header.data_bytes();
    let mut stream = flate2::read::MultiGzDecoder::new(compressed);
    let gz_fail = |e: io::Error| nifti_err(path, NiftiProblem::CorruptGzip(e.to_string()));
    let skipped =
        io::copy(&mut (&mut stream).take(header.vox_offset), &mut io::sink()).map_err(gz_fail)?;
    if skipped < header.vox_offset {
        return Err(nifti_err(
            path,
            NiftiProblem::TruncatedData { need, got: 0 },
        ));
    }
    // Grow only as data arrives: capacity starts at what the compressed size can back.
    let start = need.min(len.saturating_mul(FAST_PATH_RATIO)) as usize;
    let mut data = Vec::with_capacity(start);
    (&mut stream)
        .take(need)
        .read_to_end(&mut data)
        .map_err(gz_fail)?;
    // Read on to the end of the stream so its CRC is checked (into a sink: no allocation).
    io::copy(&mut stream, &mut io::sink()).map_err(gz_fail)?;
    if (data.len() as u64) < need {
        return Err(nifti_err(
            path,
            NiftiProblem::TruncatedData {
                need,
                got: data.len() as u64,
            },
        ));
    }
    Ok(Stored::from_bytes(header.datatype, &data))
}

/// Turn stored values into a volume: byte swap in place, then keep the type, widen, or scale.
fn decode(h: &NiftiHeaderInfo, mut stored: Stored) -> AnyVolume {
    let size = h.datatype.size_bytes();
    if h.big_endian && size > 1 {
        for c in stored.bytes_mut().chunks_exact_mut(size) {
            c.reverse();
        }
    }
    fn volume_of<T: Copy>(h: &NiftiHeaderInfo, data: Vec<T>) -> Volume<T> {
        Volume::from_parts(
            h.dims,
            h.affine,
            h.time_step_s(),
            Some(h.geometry.clone()),
            data,
        )
    }
    let (slope, inter) = (h.scl_slope, h.scl_inter);
    let scaled = h.is_scaled();
    let to_f32 = |x: f64| {
        if scaled {
            (x * slope + inter) as f32
        } else {
            x as f32
        }
    };
    match (stored, scaled) {
        (Stored::U8(v), false) => AnyVolume::U8(volume_of(h, v)),
        (Stored::I16(v), false) => AnyVolume::I16(volume_of(h, v)),
        (Stored::I8(v), false) => {
            AnyVolume::I16(volume_of(h, v.into_iter().map(i16::from).collect()))
        }
        (Stored::U16(v), false) => AnyVolume::U16(volume_of(h, v)),
        (Stored::I32(v), false) => AnyVolume::I32(volume_of(h, v)),
        (Stored::F32(v), false) => AnyVolume::F32(volume_of(h, v)),
        (Stored::I64(v), _) => AnyVolume::F32(volume_of(
            h,
            v.into_iter().map(|x| to_f32(x as f64)).collect(),
        )),
        (Stored::U64(v), _) => AnyVolume::F32(volume_of(
            h,
            v.into_iter().map(|x| to_f32(x as f64)).collect(),
        )),
        (other, _) => {
            // The macro expands once per stored type; for f64 the cast is the identity.
            #[allow(clippy::unnecessary_cast)]
            let values: Vec<f32> =
                each_stored!(other, v => v.into_iter().map(|x| to_f32(x as f64)).collect());
            AnyVolume::F32(volume_of(h, values))
        }
    }
}

/// Serialise a NIfTI-1 header (little-endian, 348 bytes + 4 bytes of empty extension flag).
fn header_bytes(
    dims: [usize; 4],
    datatype: Datatype,
    time_step_s: f64,
    g: &StoredGeometry,
) -> Vec<u8> {
    let mut b = vec![0u8; 352];
    let put =
        |b: &mut Vec<u8>, at: usize, bytes: &[u8]| b[at..at + bytes.len()].copy_from_slice(bytes);
    put(&mut b, 0, &348i32.to_le_bytes());
    let ndim: i16 = if dims[3] > 1 { 4 } else { 3 };
    let mut dim = [1i16; 8];
    dim[0] = ndim;
    for a in 0..4 {
        dim[a + 1] = dims[a] as i16;
    }
    for (i, d) in dim.iter().enumerate() {
        put(&mut b, 40 + 2 * i, &d.to_le_bytes());
    }
    put(&mut b, 70, &datatype.code().to_le_bytes());
    put(
        &mut b,
        72,
        &((datatype.size_bytes() * 8) as i16).to_le_bytes(),
    );
    let mut pixdim = [0f32; 8];
    pixdim[0] = if g.qfac < 0.0 { -1.0 } else { 1.0 };
    for a in 0..3 {
        pixdim[a + 1] = g.pixdim_mm[a] as f32;
    }
    pixdim[4] = if dims[3] > 1 { time_step_s as f32 } else { 0.0 };
    for (i, p) in pixdim.iter().enumerate() {
        put(&mut b, 76 + 4 * i, &p.to_le_bytes());
    }
    put(&mut b, 108, &352f32.to_le_bytes());
    put(&mut b, 112, &1f32.to_le_bytes()); // scl_slope
    put(&mut b, 116, &0f32.to_le_bytes()); // scl_inter
    let units: u8 = if dims[3] > 1 { 2 | 8 } else { 2 }; // mm, seconds
    b[123] = units;
    let descrip = b"mriloop";
    put(&mut b, 148, descrip);
    put(&mut b, 252, &g.qform_code.to_le_bytes());
    put(&mut b, 254, &g.sform_code.to_le_bytes());
    let f = |v: f64| (v as f32).to_le_bytes();
    for i in 0..3 {
        put(&mut b, 256 + 4 * i, &f(g.quatern_bcd[i]));
        put(&mut b, 268 + 4 * i, &f(g.qoffset_mm[i]));
    }
    for (r, row) in g.srow.iter().enumerate() {
        for (c, v) in row.iter().enumerate() {
            put(&mut b, 280 + 16 * r + 4 * c, &f(*v));
        }
    }
    put(&mut b, 344, b"n+1\0");
    b
}

/// Write `vol` as NIfTI-1 to `path` atomically; gzip-compressed (BGZF, see `bgzf`) when `path`
/// ends in `.gz`; as MGH when it ends in `.mgh` or `.mgz` (see `mgh`), as NRRD when in `.nrrd`
/// (see `nrrd`).
///
/// A volume still in its file layout keeps its stored qform/sform exactly; any other volume gets
/// an sform holding its affine and a qform holding its rigid part.
pub fn write_volume<T: Voxel>(path: &Path, vol: &Volume<T>) -> Result<(), VolumeError> {
    if super::mgh::is_mgh_name(path) {
        return super::mgh::write_mgh(path, vol);
    }
    if super::nrrd::is_nrrd_name(path) {
        return super::nrrd::write_nrrd_or_segmentation(path, vol);
    }
    let dims = vol.dims();
    if dims.iter().any(|d| *d > i16::MAX as usize) {
        return Err(VolumeError::Shape(format!(
            "{}: dims {dims:?} exceed NIfTI-1's 32767 per axis",
            path.display()
        )));
    }
    let geometry = match vol.stored_geometry() {
        Some(g) if g.best_affine() == *vol.affine() => g.clone(),
        _ => StoredGeometry::from_affine(vol.affine()),
    };
    let mut bytes = header_bytes(dims, T::DATATYPE, vol.time_step_s(), &geometry);
    let data: &[u8] = bytemuck::cast_slice(vol.data());
    if cfg!(target_endian = "little") {
        bytes.extend_from_slice(data);
    } else {
        for c in data.chunks_exact(std::mem::size_of::<T>()) {
            bytes.extend(c.iter().rev());
        }
    }
    if let Some(pair) = super::nifti_pair::pair_to_write(path)? {
        return pair.write(bytes);
    }
    let out = if is_gz_name(path) {
        super::bgzf::compress(&bytes).map_err(|e| io_err(path, io::Error::other(e)))?
    } else {
        bytes
    };
    crate::atomic::write_atomic(path, &out).map_err(|e| io_err(path, e))
}

fn is_gz_name(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"))
}
