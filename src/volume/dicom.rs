//! DICOM import: read a folder of DICOM files (dicom-rs: `dicom-object` parses, `dicom-pixeldata`
//! decodes native, RLE, JPEG, JPEG 2000 (pure-Rust openjp2) and deflated pixel data; JPEG-LS is
//! refused by name: its decoder, CharLS, is C++), group the images into series by Series
//! Instance UID, sort each series' slices along its normal, build the voxel→world affine from
//! Image Position / Orientation (Patient) and Pixel Spacing (DICOM's LPS turned into RAS+), apply
//! Rescale Slope / Intercept, and hand back one `Volume<f32>` per series. A series whose positions
//! each hold the same number of images (e.g. the time points of an fMRI run) becomes a 4D volume.
//! A Siemens mosaic file is cut into its slices (see `siemens`) and is one volume of its series
//! (several: 4D, e.g. diffusion directions); a series holding images of two sizes becomes one
//! volume per size; the same image twice (one SOP Instance UID) is kept once, with a note. An
//! enhanced multi-frame file gives one slice per frame (see `enhanced`).
//!
//! Invariants: every file is untrusted — a malformed, truncated or unsupported file (compressed
//! syntaxes without a decoder, colour, missing tags) or an inconsistent series (mixed
//! sizes or orientations, uneven slice gaps) becomes a `DicomProblem` naming the file or series,
//! never a panic, and the other series still import; pixel buffers are sized from the bytes a
//! file really holds (checked against Rows × Columns before decoding); voxel `(i, j, k)` is
//! (column, row, slice), so `i` runs along Image Orientation's row direction.

mod diffusion;
mod enhanced;
mod prescan;
mod validate;

use super::siemens::{csa_number, csa_vector, parse_csa, Mosaic};
use super::{Affine, Volume};
use dicom_core::value::Value;
use dicom_dictionary_std::tags;
use dicom_object::{open_file, DefaultDicomObject, InMemDicomObject};
use dicom_pixeldata::PixelDecoder;
pub use diffusion::{b_values_label, fsl_text, fsl_vectors, Gradient};
use glam::{DMat3, DVec3};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Most files a folder scan reads (deeper folders of a whole PACS export are refused).
pub const MAX_FILES: usize = 20_000;
/// Largest file read (bytes).
pub const MAX_FILE_BYTES: u64 = 1 << 30;
/// Largest image (pixels per slice).
pub const MAX_PIXELS_PER_SLICE: usize = 8192 * 8192;
/// Positions closer than this (mm, along the normal) are the same slice position.
const SAME_POSITION_MM: f64 = 0.01;

/// A file or series that could not be imported, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct DicomProblem {
    /// The file (or, for a series, its first file).
    pub path: PathBuf,
    /// The series it belongs to, when known (description or UID).
    pub series: Option<String>,
    /// What is wrong, in words.
    pub message: String,
}

impl std::fmt::Display for DicomProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.series {
            Some(s) => write!(
                f,
                "series \"{s}\" ({}): {}",
                self.path.display(),
                self.message
            ),
            None => write!(f, "{}: {}", self.path.display(), self.message),
        }
    }
}

/// One imported series.
#[derive(Debug, Clone)]
pub struct DicomSeries {
    /// Series Instance UID.
    pub series_uid: String,
    /// Series Description (else "series <number>", else the UID).
    pub description: String,
    /// Series Number, if given.
    pub series_number: Option<i64>,
    /// Modality (MR, CT, …), if given.
    pub modality: String,
    /// The files, in slice order (time points after each other for a 4D series).
    pub files: Vec<PathBuf>,
    /// The voxels (modality values: rescale applied), on the series' RAS+ grid.
    pub volume: Volume<f32>,
    /// Each volume's diffusion encoding (one per time point), when every volume states one
    /// and at least one has b > 0; else empty.
    pub diffusion: Vec<Gradient>,
}

/// What a folder held.
#[derive(Debug, Clone, Default)]
pub struct DicomScan {
    /// Series built, ordered by series number then description.
    pub series: Vec<DicomSeries>,
    /// Files and series that could not be imported.
    pub problems: Vec<DicomProblem>,
    /// Files looked at.
    pub files_seen: usize,
}

/// Errors that stop a scan as a whole (the folder itself cannot be read).
#[derive(Debug, thiserror::Error)]
pub enum DicomError {
    /// Listing the folder failed.
    #[error("{}: cannot read the folder: {source}", path.display())]
    Io {
        /// The folder.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// More files than a scan reads.
    #[error("{}: more than {MAX_FILES} files; choose the folder of one study", path.display())]
    TooManyFiles {
        /// The folder.
        path: PathBuf,
    },
}

/// One image read from a file (a mosaic file gives one per tile).
struct Slice {
    path: PathBuf,
    series_uid: String,
    /// SOP Instance UID: the same image sent twice (e.g. in two transfer syntaxes) has one.
    sop_uid: Option<String>,
    /// Which tile of a mosaic file this is (a mosaic file is one volume of its series).
    tile: Option<usize>,
    description: Option<String>,
    series_number: Option<i64>,
    modality: String,
    rows: usize,
    columns: usize,
    /// Pixel Spacing: between rows, between columns (mm).
    spacing: [f64; 2],
    /// Image Orientation (Patient): row direction, column direction (LPS).
    orientation: [f64; 6],
    /// Image Position (Patient) (LPS, mm).
    position: [f64; 3],
    instance: i64,
    slice_thickness: Option<f64>,
    repetition_time_ms: Option<f64>,
    /// The diffusion encoding the image states (b-value, direction), if any.
    gradient: Option<Gradient>,
    values: Vec<f32>,
}

/// Read every DICOM file under `dir` (sub-folders too) and build its series.
pub fn scan_dir(dir: &Path) -> Result<DicomScan, DicomError> {
    let files = list_files(dir)?;
    let mut scan = DicomScan {
        files_seen: files.len(),
        ..DicomScan::default()
    };
    let mut slices = Vec::new();
    let mut seen: BTreeMap<String, PathBuf> = BTreeMap::new();
    for path in files {
        match read_slice(&path) {
            Ok(file_slices) => {
                let sop = file_slices.first().and_then(|s| s.sop_uid.clone());
                if let Some(first) = sop.as_ref().and_then(|u| seen.get(u)) {
                    scan.problems.push(DicomProblem {
                        message: format!(
                            "the same image (SOP Instance UID) as {}: skipped as a duplicate",
                            first.display()
                        ),
                        path,
                        series: None,
                    });
                    continue;
                }
                if let Some(u) = sop {
                    seen.insert(u, path.clone());
                }
                slices.extend(file_slices);
            }
            Err(message) => scan.problems.push(DicomProblem {
                path,
                series: None,
                message,
            }),
        }
    }
    build_all(&mut scan, slices);
    scan.series.sort_by(|a, b| {
        (a.series_number.unwrap_or(i64::MAX), &a.description)
            .cmp(&(b.series_number.unwrap_or(i64::MAX), &b.description))
    });
    Ok(scan)
}

/// Group `slices` into series — by Series Instance UID, and within one by image size (a
/// series holding images of two sizes, as some diffusion exports do, becomes one volume per
/// size, named with it) — and build each.
fn build_all(scan: &mut DicomScan, slices: Vec<Slice>) {
    let mut groups: BTreeMap<(String, usize, usize), Vec<Slice>> = BTreeMap::new();
    for s in slices {
        let key = (s.series_uid.clone(), s.rows, s.columns);
        groups.entry(key).or_default().push(s);
    }
    let mut sizes: BTreeMap<String, usize> = BTreeMap::new();
    for (uid, _, _) in groups.keys() {
        *sizes.entry(uid.clone()).or_default() += 1;
    }
    for ((uid, rows, columns), group) in groups {
        let mut name = series_name(&group[0], &uid);
        if sizes.get(&uid).is_some_and(|n| *n > 1) {
            name = format!("{name} ({columns} × {rows})");
        }
        let first = group[0].path.clone();
        match build_series(uid, name.clone(), group) {
            Ok(series) => scan.series.push(series),
            Err(message) => scan.problems.push(DicomProblem {
                path: first,
                series: Some(name),
                message,
            }),
        }
    }
}

fn list_files(dir: &Path) -> Result<Vec<PathBuf>, DicomError> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|source| DicomError::Io {
            path: d.clone(),
            source,
        })?;
        let mut here: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        here.sort();
        for p in here {
            let hidden = p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with('.'));
            if hidden {
                continue;
            }
            if p.is_dir() {
                stack.push(p);
            } else if p.is_file() {
                out.push(p);
                if out.len() > MAX_FILES {
                    return Err(DicomError::TooManyFiles {
                        path: dir.to_path_buf(),
                    });
                }
            }
        }
    }
    out.sort();
    Ok(out)
}

fn series_name(s: &Slice, uid: &str) -> String {
    match (&s.description, s.series_number) {
        (Some(d), _) if !d.trim().is_empty() => d.trim().to_string(),
        (_, Some(n)) => format!("series {n}"),
        _ => uid.to_string(),
    }
}

/// Read one file: its image, a mosaic's tiles, or nothing for DICOM files that hold no image
/// to import (a DICOMDIR index).
fn read_slice(path: &Path) -> Result<Vec<Slice>, String> {
    let len = std::fs::metadata(path)
        .map_err(|e| format!("cannot read: {e}"))?
        .len();
    if len > MAX_FILE_BYTES {
        return Err(format!(
            "{len} bytes: larger than the {MAX_FILE_BYTES} bytes read"
        ));
    }
    // Every declared length must fit in the file before the parser allocates it.
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read: {e}"))?;
    prescan::check_declared_lengths(&bytes)?;
    drop(bytes);
    // The crates are trusted not to panic, but a file is not: a panic inside them becomes this
    // file's error instead of taking the import down.
    let path_buf = path.to_path_buf();
    quietly(move || read_slice_inner(&path_buf))
        .unwrap_or_else(|_| Err("the DICOM decoder failed on this file".into()))
}

thread_local! {
    /// Whether a panic on this thread is being caught as a file's error (not printed).
    static CATCHING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Run `f`, catching a panic as an error without the panic's text on stderr (the hook stays
/// the default one for every other panic).
fn quietly<R>(f: impl FnOnce() -> R + std::panic::UnwindSafe) -> std::thread::Result<R> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !CATCHING.with(std::cell::Cell::get) {
                default(info);
            }
        }));
    });
    CATCHING.with(|c| c.set(true));
    let result = std::panic::catch_unwind(f);
    CATCHING.with(|c| c.set(false));
    result
}

/// Read one file's image and the tags a series needs (see `read_slice`, which guards it).
fn read_slice_inner(path: &Path) -> Result<Vec<Slice>, String> {
    let obj = open_file(path).map_err(|e| format!("not a readable DICOM file: {}", chain(&e)))?;
    const DICOMDIR: &str = "1.2.840.10008.1.3.10";
    if obj
        .meta()
        .media_storage_sop_class_uid()
        .trim_end_matches('\0')
        == DICOMDIR
    {
        return Ok(Vec::new());
    }
    if obj.element_opt(tags::PIXEL_DATA).ok().flatten().is_none() {
        return Err("holds no image (no Pixel Data): skipped".into());
    }
    let series_uid = opt_text(&obj, tags::SERIES_INSTANCE_UID).ok_or_else(|| {
        format!(
            "missing Series Instance UID {}",
            tag_str(tags::SERIES_INSTANCE_UID)
        )
    })?;
    let frames = opt_float(&obj, tags::NUMBER_OF_FRAMES).unwrap_or(1.0);
    if frames > 1.0 {
        return enhanced::frame_slices(&obj, path, series_uid, frames);
    }
    let (rows, columns) = image_size(&obj)?;
    let geometry = slice_geometry(&obj)?;
    let csa = csa_image_header(&obj);
    let csa_tags = csa.as_ref().ok().and_then(Option::as_ref);
    let values = pixel_values(&obj, rows, columns, 1)?
        .pop()
        .ok_or("no pixel values")?;
    let slice = Slice {
        path: path.to_path_buf(),
        series_uid,
        sop_uid: opt_text(&obj, tags::SOP_INSTANCE_UID),
        tile: None,
        description: opt_text(&obj, tags::SERIES_DESCRIPTION),
        series_number: opt_float(&obj, tags::SERIES_NUMBER).map(|n| n as i64),
        modality: opt_text(&obj, tags::MODALITY).unwrap_or_default(),
        rows,
        columns,
        spacing: geometry.spacing,
        orientation: geometry.orientation,
        position: geometry.position,
        instance: opt_float(&obj, tags::INSTANCE_NUMBER).map_or(0, |n| n as i64),
        slice_thickness: opt_float(&obj, tags::SPACING_BETWEEN_SLICES)
            .or_else(|| opt_float(&obj, tags::SLICE_THICKNESS))
            .filter(|t| *t > 0.0),
        repetition_time_ms: opt_float(&obj, tags::REPETITION_TIME).filter(|t| *t > 0.0),
        gradient: diffusion::of_image(&obj, csa_tags),
        values,
    };
    match mosaic_of(&obj, csa, rows, columns)? {
        Some((mosaic, normal)) => mosaic_slices(slice, mosaic, normal),
        None => Ok(vec![slice]),
    }
}

/// A Siemens mosaic's layout and slice normal (LPS; from the CSA image header, else the
/// orientation's), or `None` for an ordinary image.
fn mosaic_of(
    obj: &DefaultDicomObject,
    csa: Result<Option<BTreeMap<String, Vec<String>>>, String>,
    rows: usize,
    columns: usize,
) -> Result<Option<(Mosaic, Option<DVec3>)>, String> {
    let is_mosaic = obj
        .element_opt(tags::IMAGE_TYPE)
        .ok()
        .flatten()
        .and_then(|e| {
            e.to_str()
                .ok()
                .map(|t| t.to_ascii_uppercase().contains("MOSAIC"))
        })
        .unwrap_or(false);
    if !is_mosaic {
        return Ok(None);
    }
    let csa =
        csa.map_err(|e| format!("a Siemens mosaic whose CSA image header is malformed: {e}"))?;
    let csa = csa.ok_or(
        "a Siemens mosaic without its CSA image header (0029,xx10) — anonymised? The slices \
         cannot be cut out of it",
    )?;
    let images = csa_number(&csa, "NumberOfImagesInMosaic")
        .filter(|n| *n >= 1.0 && *n <= 4096.0)
        .ok_or("a Siemens mosaic whose CSA header gives no NumberOfImagesInMosaic")?;
    let mosaic = Mosaic::new(images as usize, rows, columns)?;
    let normal = csa_vector(&csa, "SliceNormalVector").filter(|n| (n.length() - 1.0).abs() < 0.01);
    Ok(Some((mosaic, normal)))
}

/// The tags of the CSA image header (the private block `SIEMENS CSA HEADER` of group 0029,
/// element xx10): `None` when the file has none, an error when it does not parse.
fn csa_image_header(
    obj: &DefaultDicomObject,
) -> Result<Option<BTreeMap<String, Vec<String>>>, String> {
    csa_image_bytes(obj).map(|b| parse_csa(&b)).transpose()
}

/// The bytes of the CSA image header, if the file has one.
fn csa_image_bytes(obj: &DefaultDicomObject) -> Option<Vec<u8>> {
    let block = (0x10u16..=0xFF).find(|b| {
        obj.element_opt(dicom_core::Tag(0x0029, *b))
            .ok()
            .flatten()
            .and_then(|e| {
                e.to_str()
                    .ok()
                    .map(|s| s.trim_end_matches(['\0', ' ']) == "SIEMENS CSA HEADER")
            })
            .unwrap_or(false)
    })?;
    let element = obj
        .element_opt(dicom_core::Tag(0x0029, (block << 8) | 0x10))
        .ok()
        .flatten()?;
    element.value().to_bytes().ok().map(|b| b.to_vec())
}

/// A mosaic file's tiles as slices: each cut out, placed from the corrected first position one
/// slice spacing apart along the normal.
fn mosaic_slices(
    mut mosaic_image: Slice,
    mosaic: Mosaic,
    normal: Option<DVec3>,
) -> Result<Vec<Slice>, String> {
    let o = mosaic_image.orientation;
    let row_dir = DVec3::new(o[0], o[1], o[2]);
    let col_dir = DVec3::new(o[3], o[4], o[5]);
    let normal = normal.unwrap_or_else(|| row_dir.cross(col_dir).normalize());
    let step = mosaic_image
        .slice_thickness
        .ok_or("a mosaic without Spacing Between Slices or Slice Thickness")?;
    let first = mosaic.first_position(
        DVec3::from_array(mosaic_image.position),
        [row_dir, col_dir],
        mosaic_image.spacing,
        [mosaic_image.rows, mosaic_image.columns],
    );
    let values = std::mem::take(&mut mosaic_image.values);
    let columns = mosaic_image.columns;
    Ok((0..mosaic.images)
        .map(|k| Slice {
            path: mosaic_image.path.clone(),
            series_uid: mosaic_image.series_uid.clone(),
            sop_uid: mosaic_image.sop_uid.clone(),
            tile: Some(k),
            description: mosaic_image.description.clone(),
            series_number: mosaic_image.series_number,
            modality: mosaic_image.modality.clone(),
            rows: mosaic.rows,
            columns: mosaic.columns,
            spacing: mosaic_image.spacing,
            orientation: mosaic_image.orientation,
            position: (first + normal * step * k as f64).to_array(),
            instance: mosaic_image.instance,
            slice_thickness: mosaic_image.slice_thickness,
            repetition_time_ms: mosaic_image.repetition_time_ms,
            gradient: mosaic_image.gradient,
            values: mosaic.tile(&values, columns, k),
        })
        .collect())
}

/// The image's Rows and Columns, for a single-frame greyscale image of a supported size.
fn image_size(obj: &DefaultDicomObject) -> Result<(usize, usize), String> {
    let samples = opt_float(obj, tags::SAMPLES_PER_PIXEL).unwrap_or(1.0);
    if samples != 1.0 {
        return Err(format!(
            "a colour image ({samples} samples per pixel) is not supported"
        ));
    }
    let rows = opt_float(obj, tags::ROWS).ok_or("missing Rows (0028,0010)")?;
    let columns = opt_float(obj, tags::COLUMNS).ok_or("missing Columns (0028,0011)")?;
    if rows < 1.0 || columns < 1.0 || rows * columns > MAX_PIXELS_PER_SLICE as f64 {
        return Err(format!(
            "an image of {rows} × {columns} pixels is not supported"
        ));
    }
    Ok((rows as usize, columns as usize))
}

/// Where a slice lies (DICOM's LPS patient space).
struct SliceGeometry {
    /// Pixel Spacing: between rows, between columns (mm).
    spacing: [f64; 2],
    /// Image Orientation (Patient): row direction, column direction.
    orientation: [f64; 6],
    /// Image Position (Patient) (mm).
    position: [f64; 3],
}

/// The slice's Pixel Spacing (positive), Image Orientation (two perpendicular unit vectors) and
/// Image Position.
fn slice_geometry(obj: &InMemDicomObject) -> Result<SliceGeometry, String> {
    let spacing = float_values(obj, tags::PIXEL_SPACING, "Pixel Spacing", 2)?;
    if spacing.iter().any(|s| *s <= 0.0) {
        return Err(format!("Pixel Spacing {spacing:?} must be positive"));
    }
    let orientation = float_values(
        obj,
        tags::IMAGE_ORIENTATION_PATIENT,
        "Image Orientation (Patient)",
        6,
    )?;
    let position = float_values(
        obj,
        tags::IMAGE_POSITION_PATIENT,
        "Image Position (Patient)",
        3,
    )?;
    check_orientation(&orientation)?;
    Ok(SliceGeometry {
        spacing: [spacing[0], spacing[1]],
        orientation: [
            orientation[0],
            orientation[1],
            orientation[2],
            orientation[3],
            orientation[4],
            orientation[5],
        ],
        position: [position[0], position[1], position[2]],
    })
}

/// Image Orientation (Patient) must be two perpendicular unit vectors.
fn check_orientation(orientation: &[f64]) -> Result<(), String> {
    let (u, v) = (
        DVec3::new(orientation[0], orientation[1], orientation[2]),
        DVec3::new(orientation[3], orientation[4], orientation[5]),
    );
    if (u.length() - 1.0).abs() > 0.01 || (v.length() - 1.0).abs() > 0.01 || u.dot(v).abs() > 0.01 {
        return Err(format!(
            "Image Orientation (Patient) {orientation:?} is not two perpendicular unit vectors"
        ));
    }
    Ok(())
}

/// The `n` finite numbers of tag `tag` (named `name` in errors).
fn float_values(
    obj: &InMemDicomObject,
    tag: dicom_core::Tag,
    name: &str,
    n: usize,
) -> Result<Vec<f64>, String> {
    let v = obj
        .element_opt(tag)
        .ok()
        .flatten()
        .ok_or_else(|| format!("missing {name} {}", tag_str(tag)))?
        .to_multi_float64()
        .map_err(|e| format!("{name} {} is not numeric: {e}", tag_str(tag)))?;
    if v.len() != n || v.iter().any(|x| !x.is_finite()) {
        return Err(format!(
            "{name} {} must hold {n} finite numbers, not {v:?}",
            tag_str(tag)
        ));
    }
    Ok(v)
}

/// The `rows × columns` pixel values of each of `frames` frames (Rescale Slope / Intercept, of
/// each frame's functional groups where it has them, applied by the decoder). The pixel data
/// must back what the header claims before anything is decoded: native data hold every
/// byte; encapsulated data hold a fragment per frame.
fn pixel_values(
    obj: &DefaultDicomObject,
    rows: usize,
    columns: usize,
    frames: usize,
) -> Result<Vec<Vec<f32>>, String> {
    let bits = opt_float(obj, tags::BITS_ALLOCATED).ok_or("missing Bits Allocated (0028,0100)")?;
    if ![8.0, 16.0, 32.0].contains(&bits) {
        return Err(format!("{bits} bits allocated per pixel is not supported"));
    }
    validate::check_bits(
        bits,
        opt_float(obj, tags::BITS_STORED),
        opt_float(obj, tags::HIGH_BIT),
        opt_float(obj, tags::PIXEL_REPRESENTATION),
    )?;
    let pixel = obj
        .element(tags::PIXEL_DATA)
        .map_err(|e| format!("Pixel Data: {e}"))?;
    let syntax = obj.meta().transfer_syntax().trim_end_matches('\0');
    match pixel.value() {
        Value::PixelSequence(seq) => {
            if seq.fragments().len() < frames {
                return Err(format!(
                    "{frames} frames claimed, {} compressed fragments present",
                    seq.fragments().len()
                ));
            }
            if syntax == validate::RLE_LOSSLESS {
                for fragment in seq.fragments().iter().take(frames) {
                    validate::check_rle_frame(fragment, bits as usize / 8, rows * columns)?;
                }
            }
        }
        value => {
            let need = (rows * columns * (bits as usize / 8)) as u64 * frames as u64;
            let have = value.to_bytes().map(|b| b.len()).unwrap_or(0) as u64;
            if have < need {
                return Err(format!(
                    "Pixel Data holds {have} bytes; Rows × Columns × Bits Allocated × frames \
                     need {need}"
                ));
            }
        }
    }
    if syntax.starts_with("1.2.840.10008.1.2.4.8") {
        return Err(format!(
            "JPEG-LS pixel data (transfer syntax {syntax}) is not supported: mriloop is built \
             without CharLS (a C++ library); convert the series first (e.g. gdcmconv --raw)"
        ));
    }
    let decoded = obj.decode_pixel_data().map_err(|e| {
        format!(
            "pixel data cannot be decoded (transfer syntax {syntax}): {}",
            chain(&e)
        )
    })?;
    if decoded.rows() as usize != rows || decoded.columns() as usize != columns {
        return Err(format!(
            "the decoded image is {} × {}, the header says {rows} × {columns}",
            decoded.rows(),
            decoded.columns()
        ));
    }
    (0..frames)
        .map(|f| {
            let values: Vec<f32> = decoded
                .to_vec_frame(f as u32)
                .map_err(|e| format!("pixel values cannot be converted: {e}"))?;
            if values.len() != rows * columns {
                return Err(format!(
                    "{} pixel values for an image of {rows} × {columns}",
                    values.len()
                ));
            }
            Ok(values)
        })
        .collect()
}

/// An error with its causes, most general first (dicom-rs nests the detail in sources).
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

fn tag_str(tag: dicom_core::Tag) -> String {
    format!("({:04X},{:04X})", tag.0, tag.1)
}

fn opt_text(obj: &InMemDicomObject, tag: dicom_core::Tag) -> Option<String> {
    let s = obj.element_opt(tag).ok()??.to_str().ok()?;
    let s = s.trim_matches(|c: char| c == '\0' || c.is_whitespace());
    (!s.is_empty()).then(|| s.to_string())
}

fn opt_float(obj: &InMemDicomObject, tag: dicom_core::Tag) -> Option<f64> {
    obj.element_opt(tag)
        .ok()??
        .to_float64()
        .ok()
        .filter(|v| v.is_finite())
}

/// Sort a series' images into slices (and time points) and build its volume.
fn build_series(
    uid: String,
    description: String,
    group: Vec<Slice>,
) -> Result<DicomSeries, String> {
    check_same_frame(&group)?;
    if group[0].tile.is_some() {
        return build_mosaic_series(uid, description, group);
    }
    let first = &group[0];
    let (rows, columns, spacing, orientation) =
        (first.rows, first.columns, first.spacing, first.orientation);
    let row_dir = DVec3::new(orientation[0], orientation[1], orientation[2]);
    let col_dir = DVec3::new(orientation[3], orientation[4], orientation[5]);
    let normal = row_dir.cross(col_dir).normalize();
    let positions = slice_positions(group, normal)?;
    let frames = positions[0].len();
    let origin = DVec3::from_array(positions[0][0].position);
    let step = slice_step_mm(&positions, normal)?;
    let affine = lps_to_ras_affine([row_dir, col_dir], spacing, step, origin);
    if affine.linear().determinant().abs() < 1e-9 {
        return Err("the slices do not span a volume (zero slice step)".into());
    }
    let n_slices = positions.len();
    let mut data = Vec::with_capacity(rows * columns * n_slices * frames);
    let mut files = Vec::with_capacity(n_slices * frames);
    for t in 0..frames {
        for p in &positions {
            data.extend_from_slice(&p[t].values);
            files.push(p[t].path.clone());
        }
    }
    let volume =
        Volume::new([columns, rows, n_slices, frames], affine, data).map_err(|e| e.to_string())?;
    let gradients = positions[0].iter().map(|s| s.gradient).collect();
    Ok(finish_series(
        (uid, description),
        &positions[0][0],
        (files, gradients),
        volume,
    ))
}

/// A series' record from its first slice's tags, its files, each volume's diffusion encoding
/// and its volume (4D: the time step from the Repetition Time, else 1 s).
fn finish_series(
    (uid, description): (String, String),
    first: &Slice,
    (files, gradients): (Vec<PathBuf>, Vec<Option<Gradient>>),
    mut volume: Volume<f32>,
) -> DicomSeries {
    let diffusion: Option<Vec<Gradient>> = gradients.into_iter().collect();
    let diffusion = diffusion
        .filter(|g| g.iter().any(|g| g.b_value > 0.0))
        .unwrap_or_default();
    if volume.dims()[3] > 1 {
        let tr_ms = first.repetition_time_ms;
        volume.set_time_step_s(tr_ms.map_or(1.0, |ms| ms / 1000.0));
    }
    DicomSeries {
        series_uid: uid,
        description,
        series_number: first.series_number,
        modality: first.modality.clone(),
        files,
        volume,
        diffusion,
    }
}

/// A series of mosaic files: each file one volume (a time point, or a diffusion direction) in
/// instance order, its tiles the slices, the geometry the first file's (as dcm2niix and
/// nibabel take it).
fn build_mosaic_series(
    uid: String,
    description: String,
    mut group: Vec<Slice>,
) -> Result<DicomSeries, String> {
    group.sort_by(|a, b| (a.instance, &a.path, a.tile).cmp(&(b.instance, &b.path, b.tile)));
    let tiles = group.iter().filter(|s| s.path == group[0].path).count();
    if !group.len().is_multiple_of(tiles) {
        return Err("the mosaic files hold different numbers of slices".into());
    }
    let frames = group.len() / tiles;
    let first = &group[0];
    let o = first.orientation;
    let (row_dir, col_dir) = (DVec3::new(o[0], o[1], o[2]), DVec3::new(o[3], o[4], o[5]));
    let origin = DVec3::from_array(first.position);
    let step = if tiles > 1 {
        DVec3::from_array(group[1].position) - origin
    } else {
        row_dir.cross(col_dir) * first.slice_thickness.unwrap_or(1.0)
    };
    let affine = lps_to_ras_affine([row_dir, col_dir], first.spacing, step, origin);
    let dims = [first.columns, first.rows, tiles, frames];
    let mut files: Vec<PathBuf> = Vec::with_capacity(frames);
    let mut gradients = Vec::with_capacity(frames);
    let mut data = Vec::with_capacity(dims.iter().product());
    for s in &group {
        if files.last() != Some(&s.path) {
            files.push(s.path.clone());
            gradients.push(s.gradient);
        }
        data.extend_from_slice(&s.values);
    }
    let volume = Volume::new(dims, affine, data).map_err(|e| e.to_string())?;
    let record = (files, gradients);
    Ok(finish_series((uid, description), &group[0], record, volume))
}

/// The RAS+ voxel→world affine of slices along `[row, column]` directions (LPS) with Pixel
/// Spacing `spacing` (between rows, between columns), `step` from slice to slice and the first
/// voxel at `origin` (LPS).
fn lps_to_ras_affine(dirs: [DVec3; 2], spacing: [f64; 2], step: DVec3, origin: DVec3) -> Affine {
    let linear_lps = DMat3::from_cols(dirs[0] * spacing[1], dirs[1] * spacing[0], step);
    let flip = DMat3::from_diagonal(DVec3::new(-1.0, -1.0, 1.0));
    Affine::from_linear_translation(flip * linear_lps, flip * origin)
}

/// Every image of a series must have the first one's size, orientation and pixel spacing.
fn check_same_frame(group: &[Slice]) -> Result<(), String> {
    let first = &group[0];
    let (rows, columns, spacing, orientation) =
        (first.rows, first.columns, first.spacing, first.orientation);
    for s in group {
        if (s.rows, s.columns) != (rows, columns) {
            return Err(format!(
                "images of different sizes ({columns} × {rows} in {}, {} × {} in {})",
                first.path.display(),
                s.columns,
                s.rows,
                s.path.display()
            ));
        }
        if s.orientation
            .iter()
            .zip(&orientation)
            .any(|(a, b)| (a - b).abs() > 1e-4)
        {
            return Err(format!(
                "mixed orientations ({orientation:?} in {}, {:?} in {})",
                first.path.display(),
                s.orientation,
                s.path.display()
            ));
        }
        if s.spacing
            .iter()
            .zip(&spacing)
            .any(|(a, b)| (a - b).abs() > 1e-4)
        {
            return Err(format!(
                "mixed pixel spacings ({spacing:?} in {}, {:?} in {})",
                first.path.display(),
                s.spacing,
                s.path.display()
            ));
        }
    }
    Ok(())
}

/// A slice's position along the series' `normal` (mm, LPS).
fn along_normal_mm(s: &Slice, normal: DVec3) -> f64 {
    DVec3::from_array(s.position).dot(normal)
}

/// The series' slice positions in order along `normal`, each with its images (time points) in
/// instance order; every position must hold the same number of images.
fn slice_positions(mut group: Vec<Slice>, normal: DVec3) -> Result<Vec<Vec<Slice>>, String> {
    let along = |s: &Slice| along_normal_mm(s, normal);
    group.sort_by(|a, b| {
        along(a)
            .total_cmp(&along(b))
            .then(a.instance.cmp(&b.instance))
    });
    let mut positions: Vec<Vec<Slice>> = Vec::new();
    for s in group {
        match positions.last_mut() {
            Some(p) if (along(&p[0]) - along(&s)).abs() < SAME_POSITION_MM => p.push(s),
            _ => positions.push(vec![s]),
        }
    }
    let frames = positions[0].len();
    if let Some(p) = positions.iter().find(|p| p.len() != frames) {
        return Err(format!(
            "slice positions hold different numbers of images ({frames} at {:.2} mm, {} at \
             {:.2} mm along the normal)",
            along(&positions[0][0]),
            p.len(),
            along(&p[0])
        ));
    }
    for p in &mut positions {
        p.sort_by_key(|s| s.instance);
    }
    Ok(positions)
}

/// The step (mm, LPS) from one slice position to the next: the mean over the series, every gap
/// within 0.01 mm + 1 % of the median gap; for a single slice, its thickness (or 1 mm) along
/// `normal`.
fn slice_step_mm(positions: &[Vec<Slice>], normal: DVec3) -> Result<DVec3, String> {
    let origin = DVec3::from_array(positions[0][0].position);
    if positions.len() <= 1 {
        return Ok(normal * positions[0][0].slice_thickness.unwrap_or(1.0));
    }
    let last = DVec3::from_array(positions[positions.len() - 1][0].position);
    let step = (last - origin) / (positions.len() - 1) as f64;
    let gaps: Vec<DVec3> = positions
        .windows(2)
        .map(|w| DVec3::from_array(w[1][0].position) - DVec3::from_array(w[0][0].position))
        .collect();
    let mut by_length: Vec<&DVec3> = gaps.iter().collect();
    by_length.sort_by(|a, b| a.length().total_cmp(&b.length()));
    let median = *by_length[by_length.len() / 2];
    let typical = median.length();
    let tolerance = 0.01 + 0.01 * typical;
    for (w, gap) in positions.windows(2).zip(&gaps) {
        if (*gap - median).length() > tolerance {
            return Err(format!(
                "inconsistent slice spacing: {:.3} mm between {} and {}, where slices are \
                 typically {typical:.3} mm apart (a missing or extra slice?)",
                gap.length(),
                w[0][0].path.display(),
                w[1][0].path.display(),
            ));
        }
    }
    Ok(step)
}
