//! NRRD (`.nrrd`, detached `.nhdr`): what 3D Slicer and ITK write, and Slicer's segmentations
//! (`.seg.nrrd`: a label map with each segment's name, colour, label value and layer in
//! `SegmentN_…:=` key/value pairs).
//!
//! Read: a text header (`NRRD000N` magic, `field: value` lines, a blank line) then the data,
//! attached or in the `data file` beside a detached header; raw or gzip encoding, either
//! endianness; 3 spatial axes, plus at most one non-spatial axis (`space directions` `none`,
//! e.g. a segmentation's layers or a DWI's gradients), which becomes the volume's fourth axis.
//! `space` LPS (Slicer's and ITK's), LAS or RAS: directions and origin are turned into RAS; the
//! origin is the first voxel's centre. Written: attached, gzip, little-endian, in LPS as Slicer
//! writes it.
//!
//! Invariants: the header is read within `MAX_HEADER_BYTES`; the claimed data must fit
//! `MAX_DATA_BYTES` and what the file (or its compressed size, at most 1032× for deflate) can
//! back before anything is allocated; an error names the file and the problem; writes are atomic.

use super::nifti_io::MAX_DATA_BYTES;
use super::{Affine, AnyVolume, Datatype, Volume, VolumeError, Voxel};
use glam::{DMat3, DVec3};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// The longest header read.
const MAX_HEADER_BYTES: usize = 1 << 20;

/// Whether `path` names an NRRD file (`.nrrd`, `.nhdr`, `.seg.nrrd`; any case).
pub fn is_nrrd_name(path: &Path) -> bool {
    super::has_extension(path, &["nrrd", "nhdr"])
}

use super::file_problem as problem;
use super::{bytes_backed, read_claimed};

/// An NRRD header: its fields (lower-case keys) and key/value pairs (`key:=value`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NrrdHeader {
    /// `field: value` lines.
    pub fields: BTreeMap<String, String>,
    /// `key:=value` lines, in the file's spelling.
    pub pairs: BTreeMap<String, String>,
}

/// The header text of `bytes` (up to the first blank line) and where the data starts.
fn split_header(path: &Path, bytes: &[u8]) -> Result<(NrrdHeader, usize), VolumeError> {
    if !bytes.starts_with(b"NRRD000") {
        return Err(problem(path, "no NRRD magic (NRRD000N): not an NRRD file"));
    }
    let mut header = NrrdHeader::default();
    let mut at = 0;
    let mut first = true;
    loop {
        let rest = &bytes[at..];
        let Some(end) = rest.iter().position(|b| *b == b'\n') else {
            // A detached header may end without a blank line.
            let line = String::from_utf8_lossy(rest);
            parse_line(path, &mut header, line.trim_end_matches('\r'), first)?;
            return Ok((header, bytes.len()));
        };
        let line = String::from_utf8_lossy(&rest[..end]);
        let line = line.trim_end_matches('\r');
        at += end + 1;
        if line.is_empty() {
            return Ok((header, at));
        }
        parse_line(path, &mut header, line, first)?;
        first = false;
    }
}

fn parse_line(
    path: &Path,
    header: &mut NrrdHeader,
    line: &str,
    first: bool,
) -> Result<(), VolumeError> {
    if first || line.starts_with('#') {
        return Ok(());
    }
    if let Some((key, value)) = line.split_once(":=") {
        header.pairs.insert(key.to_string(), value.to_string());
    } else if let Some((key, value)) = line.split_once(": ") {
        header
            .fields
            .insert(key.trim().to_ascii_lowercase(), value.trim().to_string());
    } else {
        return Err(problem(
            path,
            format!("header line {line:?} is neither a field nor a key:=value"),
        ));
    }
    Ok(())
}

/// The stored type of a `type` field.
fn datatype(path: &Path, name: &str) -> Result<Datatype, VolumeError> {
    Ok(match name {
        "uchar" | "unsigned char" | "uint8" | "uint8_t" => Datatype::U8,
        "signed char" | "int8" | "int8_t" => Datatype::I8,
        "short" | "short int" | "signed short" | "signed short int" | "int16" | "int16_t" => {
            Datatype::I16
        }
        "ushort" | "unsigned short" | "unsigned short int" | "uint16" | "uint16_t" => Datatype::U16,
        "int" | "signed int" | "int32" | "int32_t" => Datatype::I32,
        "uint" | "unsigned int" | "uint32" | "uint32_t" => Datatype::U32,
        "longlong" | "long long" | "long long int" | "int64" | "int64_t" => Datatype::I64,
        "ulonglong" | "unsigned long long" | "unsigned long long int" | "uint64" | "uint64_t" => {
            Datatype::U64
        }
        "float" => Datatype::F32,
        "double" => Datatype::F64,
        other => {
            return Err(problem(
                path,
                format!("type {other:?} is not one mriloop reads"),
            ))
        }
    })
}

/// A parsed `(x,y,z)` vector.
fn vector(text: &str) -> Option<DVec3> {
    let inner = text.trim().strip_prefix('(')?.strip_suffix(')')?;
    let v: Vec<f64> = inner
        .split(',')
        .map(|s| s.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .ok()?;
    (v.len() == 3 && v.iter().all(|x| x.is_finite())).then(|| DVec3::new(v[0], v[1], v[2]))
}

/// How a header's space maps to RAS: the signs of x and y.
fn ras_signs(path: &Path, space: Option<&str>) -> Result<DVec3, VolumeError> {
    Ok(match space.map(|s| s.to_ascii_lowercase()).as_deref() {
        None | Some("right-anterior-superior") | Some("ras") | Some("scanner-xyz") => DVec3::ONE,
        Some("left-posterior-superior") | Some("lps") => DVec3::new(-1.0, -1.0, 1.0),
        Some("left-anterior-superior") | Some("las") => DVec3::new(-1.0, 1.0, 1.0),
        Some(other) => {
            return Err(problem(
                path,
                format!("space {other:?} is not one mriloop reads (RAS, LPS, LAS)"),
            ))
        }
    })
}

/// The geometry of a header: the sizes in mriloop's order (3 spatial axes, then the
/// non-spatial one), which stored axis each comes from, and the voxel → RAS affine.
struct Geometry {
    dims: [usize; 4],
    order: [usize; 4],
    affine: Affine,
}

fn geometry(path: &Path, h: &NrrdHeader) -> Result<Geometry, VolumeError> {
    let field = |k: &str| h.fields.get(k).map(String::as_str);
    let dimension: usize = field("dimension")
        .and_then(|d| d.parse().ok())
        .ok_or_else(|| problem(path, "no valid dimension field"))?;
    if !(3..=4).contains(&dimension) {
        return Err(problem(
            path,
            format!("dimension {dimension}: mriloop reads 3 or 4"),
        ));
    }
    let sizes: Vec<usize> = field("sizes")
        .unwrap_or_default()
        .split_whitespace()
        .map(|s| s.parse::<usize>())
        .collect::<Result<_, _>>()
        .map_err(|_| problem(path, "sizes are not whole numbers"))?;
    if sizes.len() != dimension || sizes.contains(&0) {
        return Err(problem(
            path,
            format!("sizes {sizes:?} do not match dimension {dimension}"),
        ));
    }
    let signs = ras_signs(path, field("space"))?;
    let directions: Vec<Option<DVec3>> = match field("space directions") {
        Some(text) => split_vectors(text)
            .iter()
            .map(|t| {
                if t == "none" {
                    Ok(None)
                } else {
                    vector(t).map(Some).ok_or(())
                }
            })
            .collect::<Result<_, _>>()
            .map_err(|_| problem(path, format!("space directions {text:?} are not vectors")))?,
        None => spacings(path, field("spacings"), dimension)?,
    };
    if directions.len() != dimension || directions.iter().filter(|d| d.is_some()).count() != 3 {
        return Err(problem(
            path,
            "space directions must give 3 spatial axes (and at most one none)",
        ));
    }
    let spatial: Vec<usize> = (0..dimension)
        .filter(|a| directions[*a].is_some())
        .collect();
    let other = (0..dimension).find(|a| directions[*a].is_none());
    let order = [
        spatial[0],
        spatial[1],
        spatial[2],
        other.unwrap_or(usize::MAX),
    ];
    let dims = order.map(|a| sizes.get(a).copied().unwrap_or(1));
    let cols = [0, 1, 2].map(|i| directions[order[i]].unwrap_or(DVec3::X) * signs);
    let origin = match field("space origin") {
        Some(text) => vector(text)
            .ok_or_else(|| problem(path, format!("space origin {text:?} is not a vector")))?,
        None => DVec3::ZERO,
    } * signs;
    let linear = DMat3::from_cols(cols[0], cols[1], cols[2]);
    if linear.determinant().abs() < 1e-12 {
        return Err(problem(path, "the space directions are singular"));
    }
    Ok(Geometry {
        dims,
        order,
        affine: Affine::from_linear_translation(linear, origin),
    })
}

/// `(a,b,c) (d,e,f) none …` split into its items.
fn split_vectors(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut depth = 0;
    for c in text.chars() {
        match c {
            '(' => {
                depth += 1;
                current.push(c);
            }
            ')' => {
                depth -= 1;
                current.push(c);
            }
            c if c.is_whitespace() && depth == 0 => {
                if !current.is_empty() {
                    out.push(std::mem::take(&mut current));
                }
            }
            c => current.push(c),
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// Axis-aligned directions from a `spacings` field (NaN: a non-spatial axis), or 1 mm.
fn spacings(
    path: &Path,
    text: Option<&str>,
    dimension: usize,
) -> Result<Vec<Option<DVec3>>, VolumeError> {
    let values: Vec<f64> = match text {
        Some(t) => t
            .split_whitespace()
            .map(|s| s.parse::<f64>())
            .collect::<Result<_, _>>()
            .map_err(|_| problem(path, format!("spacings {t:?} are not numbers")))?,
        None => vec![1.0; dimension],
    };
    let mut axis = 0;
    Ok(values
        .iter()
        .map(|s| {
            if s.is_nan() || axis > 2 {
                None
            } else {
                axis += 1;
                Some([DVec3::X, DVec3::Y, DVec3::Z][axis - 1] * *s)
            }
        })
        .collect())
}

/// Read an NRRD file (attached or detached) as a volume. Types convert as NIfTI's do: int8 →
/// i16; uint32, (u)int64, double → f32.
pub fn read_nrrd(path: &Path) -> Result<AnyVolume, VolumeError> {
    read_nrrd_with_header(path).map(|(v, _)| v)
}

/// `read_nrrd`, with the header (its key/value pairs hold a segmentation's segments).
pub fn read_nrrd_with_header(path: &Path) -> Result<(AnyVolume, NrrdHeader), VolumeError> {
    let io = |p: &Path, e: std::io::Error| VolumeError::Io {
        path: p.to_path_buf(),
        source: e,
    };
    let mut head = Vec::new();
    std::fs::File::open(path)
        .map_err(|e| io(path, e))?
        .take(MAX_HEADER_BYTES as u64)
        .read_to_end(&mut head)
        .map_err(|e| io(path, e))?;
    let (header, data_at) = split_header(path, &head)?;
    let geometry = geometry(path, &header)?;
    let field = |k: &str| header.fields.get(k).map(String::as_str);
    let kind = datatype(path, field("type").unwrap_or(""))?;
    let (data_path, offset) = match field("data file").or(field("datafile")) {
        Some(name) => (detached(path, name)?, 0),
        None => (path.to_path_buf(), data_at),
    };
    let skip: u64 = field("byte skip").and_then(|s| s.parse().ok()).unwrap_or(0);
    let n: usize = geometry.dims.iter().product();
    let need = n as u64 * kind.size_bytes() as u64;
    if need > MAX_DATA_BYTES {
        return Err(problem(
            path,
            format!(
                "sizes claim {need} bytes of voxels: more than mriloop reads ({MAX_DATA_BYTES})"
            ),
        ));
    }
    let encoding = field("encoding").unwrap_or("raw").to_ascii_lowercase();
    let bytes = read_data(&data_path, offset as u64, skip, need, &encoding)?;
    let big = field("endian").is_some_and(|e| e.eq_ignore_ascii_case("big"));
    let volume = decode(path, kind, &bytes, big, &geometry)?;
    Ok((volume, header))
}

/// The data file a detached header names, beside the header.
fn detached(header_path: &Path, name: &str) -> Result<PathBuf, VolumeError> {
    if name.starts_with("LIST") || name.contains('%') {
        return Err(problem(
            header_path,
            "a data file list or pattern: mriloop reads one data file",
        ));
    }
    let p = Path::new(name);
    Ok(if p.is_absolute() {
        p.to_path_buf()
    } else {
        header_path.parent().unwrap_or(Path::new(".")).join(p)
    })
}

/// `need` bytes of data from `path` at `offset` (then `skip` more, after decoding), checked
/// against what the file can back before allocation.
fn read_data(
    path: &Path,
    offset: u64,
    skip: u64,
    need: u64,
    encoding: &str,
) -> Result<Vec<u8>, VolumeError> {
    let io = |e: std::io::Error| VolumeError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let stored = len.saturating_sub(offset);
    let gz = match encoding {
        "raw" => false,
        "gzip" | "gz" => true,
        other => {
            return Err(problem(
                path,
                format!("encoding {other:?}: mriloop reads raw and gzip"),
            ))
        }
    };
    let backed = bytes_backed(stored, gz);
    if need + skip > backed {
        return Err(problem(
            path,
            format!("the header claims {need} bytes of voxels; the file holds at most {backed}"),
        ));
    }
    use std::io::{Seek, SeekFrom};
    file.seek(SeekFrom::Start(offset)).map_err(io)?;
    let mut reader: Box<dyn Read> = if gz {
        Box::new(flate2::read::MultiGzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let fail = |e: std::io::Error| problem(path, format!("damaged data: {e}"));
    std::io::copy(&mut (&mut reader).take(skip), &mut std::io::sink()).map_err(fail)?;
    read_claimed(reader, need, stored, path, fail)
}

/// The values of `bytes` (stored order, `big`-endian or not) as a volume in mriloop's axis
/// order.
fn decode(
    path: &Path,
    kind: Datatype,
    bytes: &[u8],
    big: bool,
    g: &Geometry,
) -> Result<AnyVolume, VolumeError> {
    let size = kind.size_bytes();
    let value = |i: usize| -> f64 {
        let mut b = [0u8; 8];
        b[..size].copy_from_slice(&bytes[i * size..(i + 1) * size]);
        if big {
            b[..size].reverse();
        }
        match kind {
            Datatype::U8 => f64::from(b[0]),
            Datatype::I8 => f64::from(b[0] as i8),
            Datatype::I16 => f64::from(i16::from_le_bytes([b[0], b[1]])),
            Datatype::U16 => f64::from(u16::from_le_bytes([b[0], b[1]])),
            Datatype::I32 => f64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            Datatype::U32 => f64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            Datatype::F32 => f64::from(f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            Datatype::I64 => i64::from_le_bytes(b) as f64,
            Datatype::U64 => u64::from_le_bytes(b) as f64,
            Datatype::F64 => f64::from_le_bytes(b),
        }
    };
    let index = stored_index(g);
    let n: usize = g.dims.iter().product();
    let check = |e: VolumeError| problem(path, e.to_string());
    let values = (0..n).map(|i| value(index(i)));
    Ok(match kind {
        Datatype::U8 => AnyVolume::U8(
            Volume::new(g.dims, g.affine, values.map(|v| v as u8).collect()).map_err(check)?,
        ),
        Datatype::I8 | Datatype::I16 => AnyVolume::I16(
            Volume::new(g.dims, g.affine, values.map(|v| v as i16).collect()).map_err(check)?,
        ),
        Datatype::U16 => AnyVolume::U16(
            Volume::new(g.dims, g.affine, values.map(|v| v as u16).collect()).map_err(check)?,
        ),
        Datatype::I32 => AnyVolume::I32(
            Volume::new(g.dims, g.affine, values.map(|v| v as i32).collect()).map_err(check)?,
        ),
        _ => AnyVolume::F32(
            Volume::new(g.dims, g.affine, values.map(|v| v as f32).collect()).map_err(check)?,
        ),
    })
}

/// For each voxel of mriloop's order (x fastest, then y, z, the non-spatial axis), its index
/// in the file's order (the first stored axis fastest).
fn stored_index(g: &Geometry) -> impl Fn(usize) -> usize {
    let stored_dims: Vec<usize> = {
        let mut d = vec![1usize; 4];
        for (i, a) in g.order.iter().enumerate() {
            if *a < 4 {
                d[*a] = g.dims[i];
            }
        }
        d
    };
    let mut stride = [0usize; 4];
    let mut s = 1;
    for (a, d) in stored_dims.iter().enumerate() {
        stride[a] = s;
        s *= d;
    }
    let order = g.order;
    let dims = g.dims;
    move |i: usize| {
        let idx = [
            i % dims[0],
            (i / dims[0]) % dims[1],
            (i / (dims[0] * dims[1])) % dims[2],
            i / (dims[0] * dims[1] * dims[2]),
        ];
        (0..4)
            .filter(|k| order[*k] < 4)
            .map(|k| idx[k] * stride[order[k]])
            .sum()
    }
}

/// The NRRD type name of a voxel type mriloop writes.
fn type_name(datatype: Datatype) -> Option<&'static str> {
    Some(match datatype {
        Datatype::U8 => "uint8",
        Datatype::I16 => "int16",
        Datatype::U16 => "uint16",
        Datatype::I32 => "int32",
        Datatype::F32 => "float",
        _ => return None,
    })
}

/// The header text of `vol` (LPS, as Slicer writes), with `pairs` as `key:=value` lines.
fn header_text<T: Voxel>(vol: &Volume<T>, pairs: &[(String, String)]) -> Option<String> {
    let [nx, ny, nz, nt] = vol.dims();
    let lps = DVec3::new(-1.0, -1.0, 1.0);
    let l = vol.affine().linear();
    let v = |d: DVec3| format!("({},{},{})", d.x, d.y, d.z);
    let mut t = String::from("NRRD0004\n# Written by mriloop\n");
    t += &format!("type: {}\n", type_name(T::DATATYPE)?);
    let (dimension, sizes, none, kinds) = if nt > 1 {
        (4, format!("{nx} {ny} {nz} {nt}"), " none", " list")
    } else {
        (3, format!("{nx} {ny} {nz}"), "", "")
    };
    t += &format!("dimension: {dimension}\nspace: left-posterior-superior\nsizes: {sizes}\n");
    t += &format!(
        "space directions: {} {} {}{none}\nkinds: domain domain domain{kinds}\n",
        v(l.col(0) * lps),
        v(l.col(1) * lps),
        v(l.col(2) * lps)
    );
    t += &format!(
        "endian: little\nencoding: gzip\nspace origin: {}\n",
        v(vol.affine().translation_mm() * lps)
    );
    for (k, val) in pairs {
        t += &format!("{k}:={val}\n");
    }
    t.push('\n');
    Some(t)
}

/// Write `vol` as an attached, gzip-encoded NRRD to `path` atomically, with `pairs` as
/// `key:=value` metadata (a segmentation's segments).
pub fn write_nrrd_with<T: Voxel>(
    path: &Path,
    vol: &Volume<T>,
    pairs: &[(String, String)],
) -> Result<(), VolumeError> {
    let text = header_text(vol, pairs).ok_or_else(|| {
        problem(
            path,
            "NRRD is written for uint8, int16, uint16, int32 and float voxels",
        )
    })?;
    let mut bytes = text.into_bytes();
    let data: &[u8] = bytemuck::cast_slice(vol.data());
    let mut raw = Vec::with_capacity(data.len());
    let size = std::mem::size_of::<T>();
    for value in data.chunks_exact(size) {
        if cfg!(target_endian = "little") {
            raw.extend_from_slice(value);
        } else {
            raw.extend(value.iter().rev());
        }
    }
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
    let io = |e: std::io::Error| VolumeError::Io {
        path: path.to_path_buf(),
        source: e,
    };
    enc.write_all(&raw).map_err(io)?;
    bytes.extend(enc.finish().map_err(io)?);
    crate::atomic::write_atomic(path, &bytes).map_err(io)
}

/// Write `vol` as NRRD (see `write_nrrd_with`), without metadata.
pub fn write_nrrd<T: Voxel>(path: &Path, vol: &Volume<T>) -> Result<(), VolumeError> {
    write_nrrd_with(path, vol, &[])
}

/// One segment of a Slicer segmentation (`SegmentN_…` pairs).
#[derive(Debug, Clone, PartialEq)]
pub struct Segment {
    /// Its name.
    pub name: String,
    /// Its colour (0–255).
    pub color: [u8; 3],
    /// Its value in the label map (of its layer).
    pub label_value: u8,
    /// Its layer (the fourth axis of an overlapping segmentation; 0 otherwise).
    pub layer: usize,
}

/// The segments a header's `SegmentN_…:=` pairs describe, in order.
pub fn segments(header: &NrrdHeader) -> Vec<Segment> {
    (0..)
        .map_while(|i| {
            let get = |k: &str| header.pairs.get(&format!("Segment{i}_{k}"));
            let name = get("Name")?.clone();
            let color = get("Color")
                .map(|c| {
                    let v: Vec<f64> = c
                        .split_whitespace()
                        .filter_map(|x| x.parse().ok())
                        .collect();
                    [0, 1, 2].map(|k| {
                        (v.get(k).copied().unwrap_or(0.5).clamp(0.0, 1.0) * 255.0).round() as u8
                    })
                })
                .unwrap_or([128, 128, 128]);
            let label_value = get("LabelValue")
                .and_then(|v| v.parse().ok())
                .unwrap_or((i + 1) as u8);
            let layer = get("Layer").and_then(|v| v.parse().ok()).unwrap_or(0);
            Some(Segment {
                name,
                color,
                label_value,
                layer,
            })
        })
        .collect()
}

/// The `SegmentN_…` pairs of `segments` (one layer), as Slicer writes them.
pub fn segment_pairs(segments: &[Segment]) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    for (i, s) in segments.iter().enumerate() {
        let c = s.color.map(|v| f64::from(v) / 255.0);
        let mut put = |k: &str, v: String| pairs.push((format!("Segment{i}_{k}"), v));
        put("ID", format!("Segment_{}", s.label_value));
        put("Name", s.name.clone());
        put("NameAutoGenerated", "0".into());
        put("Color", format!("{:.6} {:.6} {:.6}", c[0], c[1], c[2]));
        put("ColorAutoGenerated", "0".into());
        put("LabelValue", s.label_value.to_string());
        put("Layer", s.layer.to_string());
        put("Tags", "|".into());
    }
    pairs.push((
        "Segmentation_MasterRepresentation".into(),
        "Binary labelmap".into(),
    ));
    pairs.push((
        "Segmentation_ContainedRepresentationNames".into(),
        "Binary labelmap|".into(),
    ));
    pairs
}

/// Whether `path` names a Slicer segmentation (`.seg.nrrd`).
pub fn is_segmentation_name(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.to_ascii_lowercase().ends_with(".seg.nrrd"))
}

/// The header of an NRRD file alone.
pub fn read_nrrd_header(path: &Path) -> Result<NrrdHeader, VolumeError> {
    let mut head = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_HEADER_BYTES as u64).read_to_end(&mut head))
        .map_err(|e| VolumeError::Io {
            path: path.to_path_buf(),
            source: e,
        })?;
    split_header(path, &head).map(|(h, _)| h)
}

/// A segmentation read as one label map: its layers (if it has several) merged — each segment
/// gets the value of its place in the list (from 1), the last layer holding a voxel wins — and
/// its segments with their values in that map.
pub fn read_segmentation(path: &Path) -> Result<(Volume<u8>, Vec<Segment>), VolumeError> {
    let (volume, header) = read_nrrd_with_header(path)?;
    let mut segs = segments(&header);
    let labels = volume
        .into_label_mask()
        .map_err(|e| problem(path, format!("a segmentation: {e}")))?;
    let [nx, ny, nz, layers] = labels.dims();
    if layers == 1 {
        return Ok((labels, segs));
    }
    let n = nx * ny * nz;
    let mut merged = vec![0u8; n];
    for (i, s) in segs.iter_mut().enumerate() {
        let value = u8::try_from(i + 1).map_err(|_| problem(path, "more than 255 segments"))?;
        if s.layer < layers {
            let layer = &labels.data()[s.layer * n..(s.layer + 1) * n];
            for (m, v) in merged.iter_mut().zip(layer) {
                if *v == s.label_value {
                    *m = value;
                }
            }
        }
        s.label_value = value;
        s.layer = 0;
    }
    let affine = *labels.affine();
    Ok((Volume::new([nx, ny, nz, 1], affine, merged)?, segs))
}

/// The segments as `read_segmentation` maps them into one label map: as they are when they
/// share one layer with distinct values, else each valued by its place in the list (from 1).
fn as_one_layer(mut segs: Vec<Segment>) -> Vec<Segment> {
    let mut seen = [false; 256];
    let simple = segs
        .iter()
        .all(|s| s.layer == 0 && !std::mem::replace(&mut seen[usize::from(s.label_value)], true));
    if !simple {
        for (i, s) in segs.iter_mut().enumerate() {
            s.label_value = u8::try_from(i + 1).unwrap_or(u8::MAX);
            s.layer = 0;
        }
    }
    segs
}

/// The segments of the segmentation at `path` (its header alone), valued as
/// [`read_segmentation`] maps them into one label map.
pub fn segmentation_segments(path: &Path) -> Result<Vec<Segment>, VolumeError> {
    Ok(as_one_layer(segments(&read_nrrd_header(path)?)))
}

/// Write a label map as a Slicer segmentation: one segment per value present, named and
/// coloured as the segments of the file already at `path` (the one the user opened) where it
/// has that value, else `Segment_N` in a default colour.
pub fn write_segmentation(path: &Path, labels: &Volume<u8>) -> Result<(), VolumeError> {
    write_segmentation_named(path, labels, &[])
}

/// `write_segmentation` with the segments of `named` (by label value) first: the names and
/// colours the user sees, wherever the labels came from.
pub fn write_segmentation_named(
    path: &Path,
    labels: &Volume<u8>,
    named: &[Segment],
) -> Result<(), VolumeError> {
    let previous = if path.is_file() {
        segmentation_segments(path).unwrap_or_default()
    } else {
        Vec::new()
    };
    let segs: Vec<Segment> = super::labels_present(labels.data().iter().copied())
        .into_iter()
        .map(|v| {
            let of_value = |s: &&Segment| s.label_value == v && s.layer == 0;
            named
                .iter()
                .find(of_value)
                .or_else(|| previous.iter().find(of_value))
                .cloned()
                .unwrap_or(Segment {
                    name: format!("Segment_{v}"),
                    color: crate::volume::default_label_color(v),
                    label_value: v,
                    layer: 0,
                })
        })
        .collect();
    write_nrrd_with(path, labels, &segment_pairs(&segs))
}

/// Write `vol` to an NRRD name: a `.seg.nrrd` label map (uint8) as a segmentation, anything
/// else as plain NRRD; a detached-header name (`.nhdr`) is refused.
pub fn write_nrrd_or_segmentation<T: Voxel>(
    path: &Path,
    vol: &Volume<T>,
) -> Result<(), VolumeError> {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("nhdr"))
    {
        return Err(problem(
            path,
            "mriloop writes attached NRRD (.nrrd), not detached headers",
        ));
    }
    if is_segmentation_name(path) && T::DATATYPE == Datatype::U8 {
        let bytes: &[u8] = bytemuck::cast_slice(vol.data());
        let labels = Volume::new(vol.dims(), *vol.affine(), bytes.to_vec())?;
        return write_segmentation(path, &labels);
    }
    write_nrrd(path, vol)
}
