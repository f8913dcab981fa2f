//! Adding imported DICOM series to a project: each chosen series becomes a named sequence of a
//! case (named from its Series Description), written as NIfTI under `cases/<id>/`, and the
//! manifest is saved once at the end.
//!
//! Invariants: every file is written atomically before the manifest names it; an existing case
//! keeps its sequences and gains the new ones (a name already taken gets a number); an existing
//! file is never overwritten; the project's sequence list (the network's channels) is left as
//! it is — imported series keep their own grids, which the viewer places in world space.

use super::{check_case_id, invalid, Case, InputForm, Project, ProjectError, SequenceFile};
use crate::project::SequenceName;
use crate::volume::dicom::DicomSeries;
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
    let manifest_path = project.manifest_path();
    check_case_id(case_id).map_err(|p| invalid(&manifest_path, p))?;
    if series.is_empty() {
        return Err(invalid(&manifest_path, "no series chosen to import"));
    }
    let index = match project.manifest.cases.iter().position(|c| c.id == case_id) {
        Some(i) => i,
        None => {
            project
                .manifest
                .cases
                .push(Case::new(case_id, form_of(series)));
            project.manifest.cases.len() - 1
        }
    };
    let dir_rel = Project::case_dir_rel(case_id);
    let dir = project.resolve(&dir_rel);
    std::fs::create_dir_all(&dir).map_err(|e| ProjectError::Io {
        path: dir.clone(),
        source: e,
    })?;
    let mut names = Vec::new();
    for s in series {
        let case = &project.manifest.cases[index];
        let base = SequenceName::from(s.description.clone());
        let mut name = base.clone();
        let mut k = 2;
        while case.sequence(&name).is_some() || names.contains(&name) {
            name = SequenceName::from(format!("{base} {k}"));
            k += 1;
        }
        let file = free_file_name(&dir, name.as_str());
        let rel = format!("{dir_rel}/{file}");
        crate::volume::write_volume(&project.resolve(&rel), &s.volume)?;
        project.manifest.cases[index].sequences.push(SequenceFile {
            name: name.clone(),
            path: rel,
        });
        names.push(name);
    }
    project.save()?;
    Ok(names)
}

/// `<stem>.nii.gz` for `name`, numbered (`<stem>_2.nii.gz`, …) past the files `dir` holds.
fn free_file_name(dir: &Path, name: &str) -> String {
    let stem = file_stem(name);
    let mut file = format!("{stem}.nii.gz");
    let mut k = 2;
    while dir.join(&file).exists() {
        file = format!("{stem}_{k}.nii.gz");
        k += 1;
    }
    file
}

/// Write each series as `<dir>/<description>.nii.gz` (numbered past existing files; nothing is
/// overwritten); returns the files in the order of `series`.
pub fn write_series_files(
    dir: &Path,
    series: &[&DicomSeries],
) -> Result<Vec<PathBuf>, ProjectError> {
    std::fs::create_dir_all(dir).map_err(|e| ProjectError::Io {
        path: dir.to_path_buf(),
        source: e,
    })?;
    series
        .iter()
        .map(|s| {
            let path = dir.join(free_file_name(dir, &s.description));
            crate::volume::write_volume(&path, &s.volume)?;
            Ok(path)
        })
        .collect()
}
