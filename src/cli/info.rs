//! `mriloop info FILE`: describe a NIfTI file (dims, spacing, the voxel→world affine as stored,
//! datatype, orientation code, intensity range) as text or, with `--json`, as JSON for scripts;
//! an MGH/MGZ or NRRD file likewise, with its affine in RAS.
//!
//! Invariants: the affine printed is the one the reader uses (sform, else qform, else spacing)
//! and says which; a closed output pipe is not an error.

use super::emit;
use crate::volume::{read_header, read_volume, NiftiHeaderInfo};
use anyhow::Result;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// Arguments of `mriloop info`.
#[derive(clap::Args, Debug)]
pub struct InfoArgs {
    /// A .nii, .nii.gz, .mgh, .mgz, .nrrd or .nhdr file.
    pub file: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// `mriloop info`.
pub fn run(args: InfoArgs) -> Result<()> {
    let file = &args.file;
    let other_format = if crate::volume::mgh::is_mgh_name(file) {
        Some("MGH (FreeSurfer; big-endian)")
    } else if crate::volume::nrrd::is_nrrd_name(file) {
        Some("NRRD (space turned into RAS)")
    } else {
        None
    };
    if let Some(format) = other_format {
        return emit(&other_format_info(file, args.json, format)?);
    }
    let h = read_header(file)?;
    let range = read_volume(file)?.range();
    let text = if args.json {
        json(file, &h, range)?
    } else {
        text(file, &h, range)?
    };
    emit(&text)
}

/// An MGH/MGZ or NRRD file described: its dims, spacing, affine (RAS), type, orientation and
/// range.
fn other_format_info(file: &Path, as_json: bool, format: &str) -> Result<String> {
    let v = read_volume(file)?;
    let d = v.dims();
    let dims = if d[3] > 1 {
        d.to_vec()
    } else {
        d[..3].to_vec()
    };
    let a = v.affine();
    if as_json {
        let j = serde_json::json!({
            "file": file.display().to_string(),
            "format": format,
            "dims": dims,
            "spacing": a.spacing_mm(),
            "affine": a.rows(),
            "datatype": v.datatype().name(),
            "orientation": a.orientation_code(),
            "range": v.range().map(|(lo, hi)| [lo, hi]),
        });
        return Ok(serde_json::to_string_pretty(&j)? + "\n");
    }
    let mut out = String::new();
    writeln!(out, "file:        {}", file.display())?;
    writeln!(out, "format:      {format}")?;
    let shown: Vec<String> = dims.iter().map(|d| d.to_string()).collect();
    writeln!(out, "dims:        {}", shown.join(" × "))?;
    let s = a.spacing_mm();
    writeln!(
        out,
        "spacing:     {:.4} × {:.4} × {:.4} mm",
        s[0], s[1], s[2]
    )?;
    writeln!(out, "datatype:    {}", v.datatype().name())?;
    writeln!(out, "orientation: {}", a.orientation_code())?;
    writeln!(out, "affine (voxel → RAS mm):")?;
    for row in &a.rows()[..3] {
        writeln!(
            out,
            "  {:>10.4} {:>10.4} {:>10.4} {:>10.4}",
            row[0], row[1], row[2], row[3]
        )?;
    }
    if let Some((lo, hi)) = v.range() {
        writeln!(out, "range:       {lo} … {hi}")?;
    }
    Ok(out)
}

/// The voxel dims shown: 3, or 4 for a series.
fn dims(h: &NiftiHeaderInfo) -> Vec<usize> {
    h.dims[..h.ndim.clamp(3, 4)].to_vec()
}

fn json(file: &Path, h: &NiftiHeaderInfo, range: Option<(f32, f32)>) -> Result<String> {
    let v = serde_json::json!({
        "file": file.display().to_string(),
        "nifti_version": h.version,
        "nifti_pair": h.pair,
        "dims": dims(h),
        "spacing": h.affine.spacing_mm(),
        "affine": h.affine.rows(),
        "datatype": h.datatype.name(),
        "orientation": h.orientation_code(),
        "qform_code": h.geometry.qform_code,
        "sform_code": h.geometry.sform_code,
        "scl_slope": h.scl_slope,
        "scl_inter": h.scl_inter,
        "time_step_s": if h.dims[3] > 1 { Some(h.time_step_s()) } else { None },
        "range": range.map(|(a, b)| [a, b]),
    });
    Ok(serde_json::to_string_pretty(&v)? + "\n")
}

fn text(file: &Path, h: &NiftiHeaderInfo, range: Option<(f32, f32)>) -> Result<String> {
    let mut out = String::new();
    writeln!(out, "file:        {}", file.display())?;
    let endian = if h.big_endian { "big" } else { "little" };
    let pair = if h.pair { " .hdr/.img pair" } else { "" };
    writeln!(
        out,
        "format:      NIfTI-{}{pair} ({endian}-endian)",
        h.version
    )?;
    let d: Vec<String> = dims(h).iter().map(|d| d.to_string()).collect();
    writeln!(out, "dims:        {}", d.join(" × "))?;
    let s = h.affine.spacing_mm();
    write!(
        out,
        "spacing:     {:.4} × {:.4} × {:.4} mm",
        s[0], s[1], s[2]
    )?;
    if h.dims[3] > 1 {
        write!(out, ", {:.4} s per frame", h.time_step_s())?;
    }
    writeln!(out)?;
    write!(out, "datatype:    {}", h.datatype.name())?;
    if h.is_scaled() {
        let (slope, inter) = (h.scl_slope, h.scl_inter);
        write!(out, " (scaled: slope {slope}, inter {inter} → float32)")?;
    }
    writeln!(out)?;
    writeln!(out, "orientation: {}", h.orientation_code())?;
    affine_lines(&mut out, h)?;
    match range {
        Some((lo, hi)) => writeln!(out, "range:       {lo} .. {hi}")?,
        None => writeln!(out, "range:       (all NaN)")?,
    }
    Ok(out)
}

/// The affine's source and its three rows.
fn affine_lines(out: &mut String, h: &NiftiHeaderInfo) -> std::fmt::Result {
    let (q, s) = (h.geometry.qform_code, h.geometry.sform_code);
    let source = match (s > 0, q > 0) {
        (true, _) => "sform",
        (false, true) => "qform",
        _ => "spacing only",
    };
    writeln!(
        out,
        "affine:      voxel → world mm, from the {source} (qform_code {q}, sform_code {s})"
    )?;
    for row in h.affine.rows().iter().take(3) {
        writeln!(
            out,
            "             [{:10.4} {:10.4} {:10.4} {:10.4}]",
            row[0], row[1], row[2], row[3]
        )?;
    }
    Ok(())
}
