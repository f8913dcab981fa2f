//! FreeSurfer's MGH format (`.mgh`, gzip-compressed `.mgz`): what every FreeSurfer, FastSurfer
//! and SynthSeg run writes (`orig.mgz`, `aseg.mgz`). A 284-byte big-endian header — version 1,
//! dims (width, height, depth, frames), type (uchar, int, float, short, ushort), dof, and when
//! `goodRASFlag` is set the voxel sizes, the direction cosines (stored transposed: one row per
//! voxel axis) and the RAS position of the volume's centre — then the voxels, big-endian, the
//! first axis fastest, frame after frame; optional tags follow and are ignored.
//!
//! The voxel → RAS affine is FreeSurfer's vox2ras (as nibabel computes it): `M = Mdc·diag(δ)`,
//! translation `Pxyz_c − M·dims/2`; without `goodRASFlag`, the default nibabel sets (1 mm
//! voxels, stored rows (−1,0,0), (0,0,1), (0,−1,0): FreeSurfer's coronal layout, centred at 0).
//!
//! Invariants: the header is checked before anything is allocated — the claimed data must fit
//! `MAX_DATA_BYTES`, the file (uncompressed) or what its compressed size can back (`.mgz`:
//! at most 1032× it, deflate's limit); an error names the file and the problem; writing is
//! atomic (temp file, fsync, rename).

use super::nifti_io::MAX_DATA_BYTES;
use super::{Affine, AnyVolume, Volume, VolumeError, Voxel};
use glam::{DMat3, DVec3};
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

/// Bytes before the voxels.
const DATA_OFFSET: usize = 284;

/// Whether `path` names an MGH file (`.mgh`, `.mgz`; any case).
pub fn is_mgh_name(path: &Path) -> bool {
    super::has_extension(path, &["mgz", "mgh"])
}

use super::file_problem as problem;
use super::{bytes_backed, read_claimed};

/// The voxel types MGH stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MghType {
    U8,
    I32,
    F32,
    I16,
    U16,
}

impl MghType {
    fn from_code(code: i32) -> Option<Self> {
        Some(match code {
            0 => Self::U8,
            1 => Self::I32,
            3 => Self::F32,
            4 => Self::I16,
            10 => Self::U16,
            _ => return None,
        })
    }

    fn code(self) -> i32 {
        match self {
            Self::U8 => 0,
            Self::I32 => 1,
            Self::F32 => 3,
            Self::I16 => 4,
            Self::U16 => 10,
        }
    }

    fn size(self) -> usize {
        match self {
            Self::U8 => 1,
            Self::I16 | Self::U16 => 2,
            Self::I32 | Self::F32 => 4,
        }
    }
}

/// An MGH header, checked.
struct MghHeader {
    dims: [usize; 4],
    kind: MghType,
    affine: Affine,
}

impl MghHeader {
    fn data_bytes(&self) -> u64 {
        self.dims.iter().product::<usize>() as u64 * self.kind.size() as u64
    }
}

fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn be_f32(b: &[u8], at: usize) -> f64 {
    f64::from(f32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]))
}

/// Parse and check the first `DATA_OFFSET` bytes of `path`.
fn parse_header(path: &Path, b: &[u8]) -> Result<MghHeader, VolumeError> {
    if b.len() < DATA_OFFSET {
        return Err(problem(
            path,
            format!("{} bytes: shorter than an MGH header (284)", b.len()),
        ));
    }
    let version = be_i32(b, 0);
    if version != 1 {
        return Err(problem(
            path,
            format!("MGH version {version}, not 1: not an MGH file"),
        ));
    }
    let raw = [4, 8, 12, 16].map(|at| be_i32(b, at));
    if raw.iter().any(|d| *d < 1) {
        return Err(problem(
            path,
            format!("dims {raw:?}: each must be at least 1"),
        ));
    }
    let dims = raw.map(|d| d as usize);
    let code = be_i32(b, 20);
    let kind = MghType::from_code(code).ok_or_else(|| {
        problem(
            path,
            format!("voxel type {code} (mriloop reads uchar, short, ushort, int, float)"),
        )
    })?;
    let good_ras = i16::from_be_bytes([b[28], b[29]]) != 0;
    let affine = if good_ras {
        let delta = [0, 1, 2].map(|a| be_f32(b, 30 + 4 * a));
        let rows: [DVec3; 3] = [0, 1, 2].map(|r| {
            DVec3::new(
                be_f32(b, 42 + 12 * r),
                be_f32(b, 46 + 12 * r),
                be_f32(b, 50 + 12 * r),
            )
        });
        let centre = DVec3::new(be_f32(b, 78), be_f32(b, 82), be_f32(b, 86));
        vox2ras(path, dims, delta, rows, centre)?
    } else {
        let rows = [
            DVec3::new(-1.0, 0.0, 0.0),
            DVec3::new(0.0, 0.0, 1.0),
            DVec3::new(0.0, -1.0, 0.0),
        ];
        vox2ras(path, dims, [1.0; 3], rows, DVec3::ZERO)?
    };
    let header = MghHeader { dims, kind, affine };
    if header.data_bytes() > MAX_DATA_BYTES {
        return Err(problem(
            path,
            format!("dims {dims:?} claim {} bytes of voxels: more than mriloop reads ({MAX_DATA_BYTES})", header.data_bytes()),
        ));
    }
    Ok(header)
}

/// FreeSurfer's vox2ras from the voxel sizes, the stored (transposed) direction cosines and
/// the centre's RAS position.
fn vox2ras(
    path: &Path,
    dims: [usize; 4],
    delta: [f64; 3],
    rows: [DVec3; 3],
    centre: DVec3,
) -> Result<Affine, VolumeError> {
    let finite = delta.iter().all(|d| d.is_finite() && *d > 0.0)
        && rows.iter().all(|r| r.is_finite())
        && centre.is_finite();
    if !finite {
        return Err(problem(
            path,
            format!("voxel sizes {delta:?} or direction cosines are not finite and positive"),
        ));
    }
    let linear = DMat3::from_cols(rows[0] * delta[0], rows[1] * delta[1], rows[2] * delta[2]);
    if linear.determinant().abs() < 1e-12 {
        return Err(problem(path, "the direction cosines are singular"));
    }
    let half = DVec3::new(dims[0] as f64, dims[1] as f64, dims[2] as f64) / 2.0;
    Ok(Affine::from_linear_translation(
        linear,
        centre - linear * half,
    ))
}

/// Read an `.mgh` or `.mgz` file. Types convert as NIfTI's do: uchar → u8, short → i16,
/// ushort → u16, int → i32, float → f32.
pub fn read_mgh(path: &Path) -> Result<AnyVolume, VolumeError> {
    let io = |e: std::io::Error| VolumeError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let mut magic = [0u8; 2];
    let gz = file.read_exact(&mut magic).is_ok() && magic == [0x1f, 0x8b];
    file.seek(SeekFrom::Start(0)).map_err(io)?;
    let mut reader: Box<dyn Read> = if gz {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let gz_fail = |e: std::io::Error| problem(path, format!("damaged gzip stream: {e}"));
    let mut head = Vec::new();
    (&mut reader)
        .take(DATA_OFFSET as u64)
        .read_to_end(&mut head)
        .map_err(gz_fail)?;
    let header = parse_header(path, &head)?;
    let need = header.data_bytes();
    let stored = if gz {
        len
    } else {
        len.saturating_sub(DATA_OFFSET as u64)
    };
    let backed = bytes_backed(stored, gz);
    if need > backed {
        return Err(problem(
            path,
            format!(
                "dims {:?} need {need} bytes of voxels; the file holds at most {backed}",
                header.dims
            ),
        ));
    }
    let data = read_claimed(reader, need, stored, path, gz_fail)?;
    decode(path, &header, &data)
}

/// The big-endian values of `data`, `N` bytes each, read by `from_be`.
fn big_endian<T, const N: usize>(data: &[u8], from_be: fn([u8; N]) -> T) -> Vec<T> {
    data.chunks_exact(N)
        .map(|c| {
            let mut bytes = [0u8; N];
            bytes.copy_from_slice(c);
            from_be(bytes)
        })
        .collect()
}

/// The voxels of `data` (big-endian, `header`'s type) as a volume.
fn decode(path: &Path, header: &MghHeader, data: &[u8]) -> Result<AnyVolume, VolumeError> {
    let (dims, affine) = (header.dims, header.affine);
    let check = |e: VolumeError| problem(path, e.to_string());
    Ok(match header.kind {
        MghType::U8 => AnyVolume::U8(Volume::new(dims, affine, data.to_vec()).map_err(check)?),
        MghType::I16 => AnyVolume::I16(
            Volume::new(dims, affine, big_endian(data, i16::from_be_bytes)).map_err(check)?,
        ),
        MghType::U16 => AnyVolume::U16(
            Volume::new(dims, affine, big_endian(data, u16::from_be_bytes)).map_err(check)?,
        ),
        MghType::I32 => AnyVolume::I32(
            Volume::new(dims, affine, big_endian(data, i32::from_be_bytes)).map_err(check)?,
        ),
        MghType::F32 => AnyVolume::F32(
            Volume::new(dims, affine, big_endian(data, f32::from_be_bytes)).map_err(check)?,
        ),
    })
}

/// The MGH type of a voxel type mriloop writes, if MGH has it.
fn mgh_type_of<T: Voxel>() -> Option<MghType> {
    use super::Datatype;
    Some(match T::DATATYPE {
        Datatype::U8 => MghType::U8,
        Datatype::I16 => MghType::I16,
        Datatype::U16 => MghType::U16,
        Datatype::I32 => MghType::I32,
        Datatype::F32 => MghType::F32,
        _ => return None,
    })
}

/// The 284 header bytes of `vol` as `kind`: vox2ras split into voxel sizes, direction cosines
/// and the centre's RAS position (as FreeSurfer's `save_mgh` and nibabel do).
fn header_bytes<T: Copy>(vol: &Volume<T>, kind: MghType) -> Vec<u8> {
    let dims = vol.dims();
    let linear = vol.affine().linear();
    let delta = [0, 1, 2].map(|a| linear.col(a).length());
    let half = DVec3::new(dims[0] as f64, dims[1] as f64, dims[2] as f64) / 2.0;
    let centre = vol.affine().vox_to_mm(half);
    let mut b = Vec::with_capacity(DATA_OFFSET);
    b.extend(1i32.to_be_bytes());
    dims.iter()
        .for_each(|d| b.extend((*d as i32).to_be_bytes()));
    b.extend(kind.code().to_be_bytes());
    b.extend(0i32.to_be_bytes());
    b.extend(1i16.to_be_bytes());
    delta
        .iter()
        .for_each(|d| b.extend((*d as f32).to_be_bytes()));
    for (a, d) in delta.iter().enumerate() {
        let row = linear.col(a) / *d;
        [row.x, row.y, row.z]
            .iter()
            .for_each(|v| b.extend((*v as f32).to_be_bytes()));
    }
    [centre.x, centre.y, centre.z]
        .iter()
        .for_each(|v| b.extend((*v as f32).to_be_bytes()));
    b.resize(DATA_OFFSET, 0);
    b
}

/// Write `vol` as MGH (`.mgz`: gzip-compressed) to `path` atomically.
pub fn write_mgh<T: Voxel>(path: &Path, vol: &Volume<T>) -> Result<(), VolumeError> {
    let kind = mgh_type_of::<T>().ok_or_else(|| {
        problem(
            path,
            "MGH holds uchar, short, ushort, int and float voxels only",
        )
    })?;
    if vol.dims().iter().any(|d| *d > i32::MAX as usize) {
        return Err(problem(path, format!("dims {:?} exceed MGH's", vol.dims())));
    }
    let mut bytes = header_bytes(vol, kind);
    let data: &[u8] = bytemuck::cast_slice(vol.data());
    let size = kind.size();
    for value in data.chunks_exact(size) {
        if cfg!(target_endian = "little") {
            bytes.extend(value.iter().rev());
        } else {
            bytes.extend_from_slice(value);
        }
    }
    let compressed = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("mgz"));
    let out = if compressed {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        enc.write_all(&bytes)
            .and_then(|_| enc.finish())
            .map_err(|e| VolumeError::Io {
                path: path.to_path_buf(),
                source: e,
            })?
    } else {
        bytes
    };
    crate::atomic::write_atomic(path, &out).map_err(|e| VolumeError::Io {
        path: path.to_path_buf(),
        source: e,
    })
}
