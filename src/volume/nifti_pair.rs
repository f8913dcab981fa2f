//! NIfTI `.hdr`/`.img` pairs (what SPM, FSL's `NIFTI_PAIR` and older pipelines write): the
//! header in `NAME.hdr` (magic `ni1` or `ni2`), the voxels in `NAME.img` from its
//! `vox_offset`, either file gzipped (`.hdr.gz`, `.img.gz`). Named by either file, a pair reads
//! as one volume through `nifti_io`'s checks — the header's claims validated against the
//! `.img`'s real size before any voxel buffer is allocated.
//!
//! A save to a pair's name writes a NIfTI-1 pair: both files are written and synced in full
//! before either is renamed over its old one, so a failure (disk full, a folder in the way)
//! changes neither; only a crash between the two renames leaves the new voxels under the old
//! header (for a mask saved over itself, one that describes them still).
//!
//! Invariants: an Analyze 7.5 header (no NIfTI magic) is refused, its left–right being
//! ambiguous; a pair missing one of its files is
//! refused naming the file it looked for; header errors name the `.hdr`, voxel errors the `.img`.

use super::nifti_io::{
    first_bytes, gz_header_bytes, inflate_data, io_err, is_gzip, nifti_err, parse_header,
    read_plain_data, read_rest, Layout, NiftiHeaderInfo, NiftiProblem, Stored,
};
use super::VolumeError;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Where a single-file NIfTI-1 image as mriloop writes it has its voxels.
const SINGLE_VOX_OFFSET: usize = 352;

/// The most of a `.hdr` file read (a header and its extensions; a gzipped one smaller still).
const MAX_HDR_FILE_BYTES: u64 = 1 << 20;

/// The two files of a pair.
pub(super) struct Pair {
    /// The header file.
    hdr: PathBuf,
    /// The image (voxel) file.
    img: PathBuf,
}

/// A pair file's name: the stem as written, the partner's extension (`img` for a header,
/// `hdr` for an image) and whether the name's extension is upper case (`X.HDR`: `X.IMG`).
struct PairName {
    stem: String,
    partner_ext: &'static str,
    upper: bool,
}

/// `path`'s name read as a pair file's (`.hdr`, `.hdr.gz`, `.img`, `.img.gz`, any case);
/// `None` for any other name, an error for a pair's name that is not UTF-8 (its partner could
/// not be named).
fn pair_name(path: &Path) -> Result<Option<PairName>, VolumeError> {
    let Some(os_name) = path.file_name() else {
        return Ok(None);
    };
    let lossy = os_name.to_string_lossy();
    let lower = lossy.to_ascii_lowercase();
    let bare_len = lower.strip_suffix(".gz").map_or(lower.len(), str::len);
    let partner_ext = match lower[..bare_len].rsplit_once('.') {
        Some((_, "hdr")) => "img",
        Some((_, "img")) => "hdr",
        _ => return Ok(None),
    };
    let Some(name) = os_name.to_str() else {
        let problem =
            NiftiProblem::PairPartnerMissing("its partner (a name that is not UTF-8)".into());
        return Err(nifti_err(path, problem));
    };
    let ext = &name[bare_len - 3..bare_len];
    Ok(Some(PairName {
        stem: name[..bare_len - 4].to_string(),
        partner_ext,
        upper: ext.chars().all(|c| c.is_ascii_uppercase()),
    }))
}

impl PairName {
    /// Where the partner of `path` may be, the name's own case first: `STEM.EXT`,
    /// `STEM.EXT.gz`, then the other case's two.
    fn candidates(&self, path: &Path) -> [PathBuf; 4] {
        let (lower, upper) = (self.partner_ext, self.partner_ext.to_ascii_uppercase());
        let (first, second) = match self.upper {
            true => (upper.clone(), lower.to_string()),
            false => (lower.to_string(), upper),
        };
        let gz = |e: &str| format!("{e}.gz");
        [first.clone(), gz(&first), second.clone(), gz(&second)]
            .map(|e| path.with_file_name(format!("{}.{e}", self.stem)))
    }
}

/// The pair `path` names (`.hdr`, `.hdr.gz`, `.img`, `.img.gz`, any case), with its partner
/// found beside it; `None` for any other name.
pub(super) fn pair_of(path: &Path) -> Result<Option<Pair>, VolumeError> {
    let Some(name) = pair_name(path)? else {
        return Ok(None);
    };
    let candidates = name.candidates(path);
    let Some(partner) = candidates.iter().find(|p| p.is_file()).cloned() else {
        let want = candidates[0].display().to_string();
        return Err(nifti_err(path, NiftiProblem::PairPartnerMissing(want)));
    };
    Ok(Some(Pair::of(path, partner, name.partner_ext)))
}

/// The pair a save to `path` writes: its partner as found beside it, else named like it (in
/// its case, gzipped when `path` is); `None` for a name that is no pair's.
pub(super) fn pair_to_write(path: &Path) -> Result<Option<Pair>, VolumeError> {
    let Some(name) = pair_name(path)? else {
        return Ok(None);
    };
    let [plain, gz, ..] = name.candidates(path);
    let partner = name
        .candidates(path)
        .into_iter()
        .find(|p| p.is_file())
        .unwrap_or(if is_gz_name(path) { gz } else { plain });
    Ok(Some(Pair::of(path, partner, name.partner_ext)))
}

fn is_gz_name(path: &Path) -> bool {
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gz"))
}

impl Pair {
    /// The pair of `path` and its `partner` (whose extension is `partner_ext`).
    fn of(path: &Path, partner: PathBuf, partner_ext: &str) -> Self {
        match partner_ext {
            "img" => Self {
                hdr: path.to_path_buf(),
                img: partner,
            },
            _ => Self {
                hdr: partner,
                img: path.to_path_buf(),
            },
        }
    }

    /// Write a single-file NIfTI-1 image (`single`: its 352-byte header, then the voxels) as
    /// this pair: the voxels into the `.img` and the header (magic `ni1`, `vox_offset` 0) into
    /// the `.hdr`, gzipped where a name says, both written in full before either replaces its
    /// file (`crate::atomic::write_atomic_group`).
    pub(super) fn write(&self, mut single: Vec<u8>) -> Result<(), VolumeError> {
        let voxels = single.split_off(SINGLE_VOX_OFFSET.min(single.len()));
        single.truncate(348);
        if single.len() == 348 {
            single[108..112].copy_from_slice(&0f32.to_le_bytes());
            single[344..348].copy_from_slice(b"ni1\0");
        }
        let img = compressed_if_gz(&self.img, voxels)?;
        let hdr = compressed_if_gz(&self.hdr, single)?;
        crate::atomic::write_atomic_group(&[(&self.img, &img), (&self.hdr, &hdr)])
            .map_err(|e| io_err(&self.hdr, e))
    }

    /// The header, checked against the `.img`'s size.
    pub(super) fn read_header(&self) -> Result<NiftiHeaderInfo, VolumeError> {
        let (_, _, len) = self.open_img()?;
        self.header(len, is_gz_name(&self.img))
    }

    /// The header and the stored voxels.
    pub(super) fn read_stored(&self) -> Result<(NiftiHeaderInfo, Stored), VolumeError> {
        let (mut file, head, len) = self.open_img()?;
        // A pair's .img starts with voxels, which may begin 1f 8b: its name says gzip.
        let gz = is_gz_name(&self.img);
        let header = self.header(len, gz)?;
        let stored = match gz {
            false => read_plain_data(&self.img, &mut file, &header)?,
            true => {
                let compressed = read_rest(&self.img, &mut file, head, len)?;
                inflate_data(&self.img, &compressed, &header, len)?
            }
        };
        Ok((header, stored))
    }

    /// The `.img` opened, its first bytes read (to tell gzip) and its size on disk.
    fn open_img(&self) -> Result<(File, Vec<u8>, u64), VolumeError> {
        let mut file = File::open(&self.img).map_err(|e| io_err(&self.img, e))?;
        let len = file.metadata().map_err(|e| io_err(&self.img, e))?.len();
        if len == 0 {
            return Err(nifti_err(&self.img, NiftiProblem::Empty));
        }
        let head = first_bytes(&self.img, &mut file)?;
        Ok((file, head, len))
    }

    /// The `.hdr`'s header (gzipped or not), validated against an `.img` of `img_len` bytes.
    fn header(&self, img_len: u64, img_gz: bool) -> Result<NiftiHeaderInfo, VolumeError> {
        let mut bytes = Vec::new();
        File::open(&self.hdr)
            .and_then(|f| f.take(MAX_HDR_FILE_BYTES).read_to_end(&mut bytes))
            .map_err(|e| io_err(&self.hdr, e))?;
        if bytes.is_empty() {
            return Err(nifti_err(&self.hdr, NiftiProblem::Empty));
        }
        let head = match is_gzip(&bytes) {
            true => gz_header_bytes(&self.hdr, bytes.as_slice())?,
            false => bytes,
        };
        parse_header(&self.hdr, &head, (img_len, img_gz), Layout::Pair).map_err(|e| self.blame(e))
    }

    /// A header check that found the `.img` too short for the header's claim names the `.img`.
    fn blame(&self, e: VolumeError) -> VolumeError {
        match e {
            VolumeError::Nifti { problem, .. } if problem.is_about_the_data_file() => {
                nifti_err(&self.img, problem)
            }
            other => other,
        }
    }
}

/// `bytes` as a file named `path` holds them: BGZF-compressed when its name ends in `.gz`.
fn compressed_if_gz(path: &Path, bytes: Vec<u8>) -> Result<Vec<u8>, VolumeError> {
    match is_gz_name(path) {
        true => super::bgzf::compress(&bytes).map_err(|e| io_err(path, std::io::Error::other(e))),
        false => Ok(bytes),
    }
}
