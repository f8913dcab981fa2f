//! Adding imported DICOM series to a project: each chosen series becomes a named sequence of a
//! case (named from its Series Description), written as NIfTI under `cases/<id>/`, and the
//! manifest is saved once at the end.
//!
//! Invariants: every file is written atomically before the manifest names it; an existing case
//! keeps its sequences and gains the new ones (a name already taken gets a number); an existing
//! file is never overwritten; the project's sequence list (the network's channels) is left as
//! it is — imported series keep their own grids, which the viewer places in world space.

use super::{check_case_id, invalid, Case, InputForm, Project, ProjectError, SequenceFile};
use crate::atomic::write_atomic;
use crate::project::SequenceName;
use crate::volume::dicom::{fsl_text, DicomSeries};
use std::path::{Path, PathBuf};

/// The form a case of these series has: 4D if one is a time series, 2D if all are single
/// slices, else 3D.
pub fn form_of(series: &[&DicomSeries]) -> InputForm {
    if series.iter().any(|s| s.volume.dims()[3] > 1) {
        InputForm::TimeSeries4d
    } else if series.iter().all(|s| s.volume.dims3().contains(&1)) {
        InputForm::Slice2d
    } else {
        InputForm::Volume3d
    }
}

/// A file-name stem for a sequence name: lower-case letters, digits and `_`.
pub fn file_stem(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let s = s.trim_matches('_').to_string();
    if s.is_empty() {
        "series".into()
    } else {
        s
    }
}

/// Add `series` to case `case_id` (created when the project has no such case) and save the
/// manifest. Returns the names the sequences got.
pub fn add_series_to_case(
    project: &mut Project,
    case_id: &str,
    series: &[&DicomSeries],
) -> Result<Vec<SequenceName>, ProjectError> {
    let taken = sequence_names(project, case_id);
    let files = write_case_files(project.root(), case_id, &taken, series)?;
    add_sequences(project, case_id, form_of(series), &files);
    project.save()?;
    Ok(files.into_iter().map(|f| f.name).collect())
}

/// The sequence names case `case_id` already has (none for a new case).
pub fn sequence_names(project: &Project, case_id: &str) -> Vec<SequenceName> {
    project
        .manifest
        .case(case_id)
        .map(|c| c.sequences.iter().map(|s| s.name.clone()).collect())
        .unwrap_or_default()
}

/// Write `series` into case `case_id`'s folder under `root`, named from their descriptions past
/// the names in `taken` (a name already taken gets a number); the manifest is not touched.
pub fn write_case_files(
    root: &Path,
    case_id: &str,
    taken: &[SequenceName],
    series: &[&DicomSeries],
) -> Result<Vec<SequenceFile>, ProjectError> {
    let manifest_path = root.join(super::MANIFEST_FILE);
    check_case_id(case_id).map_err(|p| invalid(&manifest_path, p))?;
    if series.is_empty() {
        return Err(invalid(&manifest_path, "no series chosen to import"));
    }
    let dir_rel = Project::case_dir_rel(case_id);
    let dir = root.join(&dir_rel);
    std::fs::create_dir_all(&dir).map_err(|e| ProjectError::Io {
        path: dir.clone(),
        source: e,
    })?;
    let mut files: Vec<SequenceFile> = Vec::new();
    for s in series {
        let base = SequenceName::from(s.description.clone());
        let mut name = base.clone();
        let mut k = 2;
        while taken.contains(&name) || files.iter().any(|f| f.name == name) {
            name = SequenceName::from(format!("{base} {k}"));
            k += 1;
        }
        let file = free_file_name(&dir, name.as_str());
        let rel = format!("{dir_rel}/{file}");
        write_series_volume(&root.join(&rel), s)?;
        files.push(SequenceFile { name, path: rel });
    }
    Ok(files)
}

/// Add written sequence `files` to case `case_id` of the manifest (a new case of `form` when
/// there is none); returns the case's index.
pub fn add_sequences(
    project: &mut Project,
    case_id: &str,
    form: InputForm,
    files: &[SequenceFile],
) -> usize {
    let cases = &mut project.manifest.cases;
    let index = match cases.iter().position(|c| c.id == case_id) {
        Some(i) => i,
        None => {
            cases.push(Case::new(case_id, form));
            cases.len() - 1
        }
    };
    cases[index].sequences.extend(files.iter().cloned());
    index
}

/// `<stem>.nii.gz` for `name`, numbered (`<stem>_2.nii.gz`, …) past the files `dir` holds
/// (a `.bval` / `.bvec` of that stem too: they would be written beside it).
fn free_file_name(dir: &Path, name: &str) -> String {
    let base = file_stem(name);
    let mut stem = base.clone();
    let mut k = 2;
    while ["nii.gz", "bval", "bvec"]
        .iter()
        .any(|ext| dir.join(format!("{stem}.{ext}")).exists())
    {
        stem = format!("{base}_{k}");
        k += 1;
    }
    format!("{stem}.nii.gz")
}

/// Write `series` as NIfTI `path` (`….nii.gz`) and, for a diffusion series, its b-values and
/// directions beside it as FSL `.bval` / `.bvec` (as dcm2niix writes them), each atomically.
/// Returns the files written.
pub fn write_series_volume(
    path: &Path,
    series: &DicomSeries,
) -> Result<Vec<PathBuf>, ProjectError> {
    crate::volume::write_volume(path, &series.volume)?;
    let mut written = vec![path.to_path_buf()];
    if series.diffusion.is_empty() {
        return Ok(written);
    }
    let (bval, bvec) = fsl_text(&series.diffusion, series.volume.affine());
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let stem = name.strip_suffix(".nii.gz").unwrap_or(&name);
    for (ext, text) in [("bval", bval), ("bvec", bvec)] {
        let file = path.with_file_name(format!("{stem}.{ext}"));
        write_atomic(&file, text.as_bytes()).map_err(|e| ProjectError::Io {
            path: file.clone(),
            source: e,
        })?;
        written.push(file);
    }
    Ok(written)
}

/// Write each series as `<dir>/<description>.nii.gz` (numbered past existing files; nothing is
/// overwritten; a diffusion series' `.bval` / `.bvec` beside it); returns each series' files,
/// the NIfTI first, in the order of `series`.
pub fn write_series_files(
    dir: &Path,
    series: &[&DicomSeries],
) -> Result<Vec<Vec<PathBuf>>, ProjectError> {
    std::fs::create_dir_all(dir).map_err(|e| ProjectError::Io {
        path: dir.to_path_buf(),
        source: e,
    })?;
    series
        .iter()
        .map(|s| write_series_volume(&dir.join(free_file_name(dir, &s.description)), s))
        .collect()
}
