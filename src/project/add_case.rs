//! Adding a case to a project from the user's own image files (NIfTI, NIfTI pairs, MGZ,
//! NRRD): each named sequence, and optionally a reference mask, a prediction made elsewhere
//! and a class.
//!
//! Invariants: the user's files are only read — each is copied into the project's case folder
//! (`.nii.gz` bytes as they are, other formats written anew as `.nii.gz`); every file is
//! validated before anything is written, and the images and masks of a case must share one
//! grid; masks must hold whole-number labels 0..=255. Nothing in an existing case is replaced:
//! a sequence, mask or class the case already has is refused. Labels found in a mask that the
//! project does not name yet are added, named from a label table beside the mask where there
//! is one (else `label N`). The manifest is saved once, after every file is in place.

use super::nnunet::copy_nifti;
use super::{
    check_case_id, invalid, io_err, Case, InputForm, Label, LabelTable, Project, ProjectError,
    SequenceFile, SequenceName,
};
use crate::volume::{self, Affine};
use std::path::{Path, PathBuf};

/// How far apart (mm, or unitless for the rotation and scale) two files' affines may be and
/// still count as one grid: float32 rounding in the tools that wrote them, not a shift.
const SAME_GRID_TOLERANCE: f64 = 1e-3;

/// A case to add: its id, its images by sequence, and what else it comes with.
#[derive(Debug, Clone, Default)]
pub struct NewCase {
    /// The case id (a new one, or an existing case to add sequences to).
    pub id: String,
    /// The images, each with its sequence name.
    pub images: Vec<(SequenceName, PathBuf)>,
    /// The reference (ground-truth or corrected) label mask.
    pub mask: Option<PathBuf>,
    /// A label mask predicted by a network run elsewhere, to review.
    pub prediction: Option<PathBuf>,
    /// The case's class (added to the project's classes if new).
    pub class: Option<String>,
}

/// What adding a case did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedCase {
    /// Whether the case is new to the project.
    pub created: bool,
    /// The files written into the project (relative to its root).
    pub files: Vec<String>,
    /// Labels the project did not name before (value, name).
    pub new_labels: Vec<(u8, String)>,
}

/// Add `new` to `project` (see the module's invariants) and save the manifest.
pub fn add_case(project: &mut Project, new: &NewCase) -> Result<AddedCase, ProjectError> {
    let manifest_path = project.manifest_path();
    check_case_id(&new.id).map_err(|p| invalid(&manifest_path, p))?;
    let existing = project
        .manifest
        .cases
        .iter()
        .find(|c| c.id == new.id)
        .cloned();
    let existing = existing.as_ref();
    check_nothing_replaced(existing, new, &manifest_path)?;
    check_class_can_be_added(project, new.class.as_deref())?;
    let grid = existing_grid(project, existing)?;
    let (form, label_values) = check_files(new, grid, &manifest_path)?;
    let rel_dir = Project::case_dir_rel(&new.id);
    let dir = project.resolve(&rel_dir);
    std::fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
    let mut files = Vec::new();
    let mut sequences = Vec::new();
    for (name, src) in &new.images {
        let rel = format!("{rel_dir}/{}.nii.gz", name.as_str());
        copy_nifti(src, &project.resolve(&rel))?;
        sequences.push(SequenceFile {
            name: name.clone(),
            path: rel.clone(),
        });
        files.push(rel);
    }
    let mut copy_mask = |src: &Option<PathBuf>, stem: &str| -> Result<_, ProjectError> {
        let Some(src) = src else { return Ok(None) };
        let rel = format!("{rel_dir}/{stem}.nii.gz");
        write_label_mask(src, &project.resolve(&rel))?;
        files.push(rel.clone());
        Ok(Some(rel))
    };
    let reference = copy_mask(&new.mask, "reference")?;
    let predicted = copy_mask(&new.prediction, "predicted_elsewhere")?;
    let new_labels = name_new_labels(project, new, &label_values)?;
    let created = existing.is_none();
    record_case(project, new, form, (sequences, reference, predicted));
    project.save()?;
    Ok(AddedCase {
        created,
        files,
        new_labels,
    })
}

/// Refuse what the case already has: a sequence of the same name, a mask, a prediction or a
/// class; and an image given twice under one name.
fn check_nothing_replaced(
    existing: Option<&Case>,
    new: &NewCase,
    manifest_path: &Path,
) -> Result<(), ProjectError> {
    let refuse = |what: String| {
        Err(invalid(
            manifest_path,
            format!("case {} already has {what}; nothing was added", new.id),
        ))
    };
    for (i, (name, _)) in new.images.iter().enumerate() {
        if new.images[..i].iter().any(|(n, _)| n == name) {
            return Err(invalid(
                manifest_path,
                format!("sequence {name} is given twice for case {}", new.id),
            ));
        }
        if existing.is_some_and(|c| c.sequence(name).is_some()) {
            return refuse(format!("a {name} image"));
        }
    }
    let Some(case) = existing else {
        return Ok(());
    };
    if new.mask.is_some() && case.reference_mask.is_some() {
        return refuse("a reference mask".into());
    }
    if new.prediction.is_some() && case.predicted_mask.is_some() {
        return refuse("a predicted mask".into());
    }
    if new.class.is_some() && case.class_label.is_some() {
        return refuse("a class".into());
    }
    Ok(())
}

/// A class new to the project changes the length of every case's class probabilities: refused
/// while a case holds some (predict again after adding the class's cases).
fn check_class_can_be_added(project: &Project, class: Option<&str>) -> Result<(), ProjectError> {
    let Some(class) = class else { return Ok(()) };
    let m = &project.manifest;
    if m.classes.iter().any(|c| c == class) {
        return Ok(());
    }
    if let Some(case) = m.cases.iter().find(|c| c.predicted_class.is_some()) {
        return Err(invalid(
            &project.manifest_path(),
            format!(
                "class {class:?} is not one of the project's classes {:?}, and case {} holds \
                 class probabilities over those: a new class cannot be added to a project \
                 that has predicted classes",
                m.classes, case.id
            ),
        ));
    }
    Ok(())
}

/// Read every file (never more than one at a time): at least one image (unless the case has
/// some), something to add, sequence names fit for file names, images and masks on one grid
/// (the case's, if it has images already), masks of labels. The case's input form (4D for a
/// time series, 2D for one slice) and the labels its masks hold.
fn check_files(
    new: &NewCase,
    mut grid: Option<(PathBuf, [usize; 3], Affine)>,
    manifest_path: &Path,
) -> Result<(InputForm, Vec<u8>), ProjectError> {
    if new.images.is_empty() && grid.is_none() {
        return Err(invalid(
            manifest_path,
            format!("case {} needs at least one image", new.id),
        ));
    }
    let nothing = new.mask.is_none() && new.prediction.is_none() && new.class.is_none();
    if new.images.is_empty() && nothing {
        return Err(invalid(
            manifest_path,
            format!("nothing to add to case {}", new.id),
        ));
    }
    let mut form = InputForm::Volume3d;
    for (i, (name, path)) in new.images.iter().enumerate() {
        check_sequence_name(name, path)?;
        let image = volume::read_volume(path)?;
        let dims = image.dims();
        check_grid(&mut grid, path, dims, image.affine())?;
        if i == 0 {
            form = match dims {
                [_, _, _, t] if t > 1 => InputForm::TimeSeries4d,
                [_, _, 1, _] => InputForm::Slice2d,
                _ => InputForm::Volume3d,
            };
        }
    }
    let mut labels = Vec::new();
    for path in new.mask.iter().chain(&new.prediction) {
        let mask = read_label_mask(path)?;
        let [nx, ny, nz, _] = mask.dims();
        check_grid(&mut grid, path, [nx, ny, nz, 1], mask.affine())?;
        labels.extend(volume::labels_present(mask.data().iter().copied()));
    }
    labels.sort_unstable();
    labels.dedup();
    Ok((form, labels))
}

/// The grid of an existing case's first image (none for a new case).
fn existing_grid(
    project: &Project,
    case: Option<&Case>,
) -> Result<Option<(PathBuf, [usize; 3], Affine)>, ProjectError> {
    let Some(first) = case.and_then(|c| c.sequences.first()) else {
        return Ok(None);
    };
    let path = project.resolve(&first.path);
    let image = volume::read_volume(&path)?;
    let [nx, ny, nz, _] = image.dims();
    Ok(Some((path, [nx, ny, nz], *image.affine())))
}

/// Check that `path` (of `dims` and `affine`) is on the `grid` of the files before it (set
/// from it when it is the first).
fn check_grid(
    grid: &mut Option<(PathBuf, [usize; 3], Affine)>,
    path: &Path,
    dims: [usize; 4],
    affine: &Affine,
) -> Result<(), ProjectError> {
    let d = [dims[0], dims[1], dims[2]];
    let Some((first, g, a)) = grid.as_ref() else {
        *grid = Some((path.to_path_buf(), d, *affine));
        return Ok(());
    };
    if *g != d {
        return Err(invalid(
            path,
            format!(
                "grid {d:?} differs from {} ({g:?}): a case's images and masks must be \
                 co-registered on one grid (resample them first)",
                first.display()
            ),
        ));
    }
    let off = a.max_abs_diff(affine);
    if off > SAME_GRID_TOLERANCE {
        return Err(invalid(
            path,
            format!(
                "same size as {} but placed differently (affines differ by up to {off:.3}): a \
                 case's images and masks must be co-registered on one grid",
                first.display()
            ),
        ));
    }
    Ok(())
}

/// A sequence name becomes a file name in the case folder: letters, digits, `_`, `-`, `.`.
fn check_sequence_name(name: &SequenceName, path: &Path) -> Result<(), ProjectError> {
    check_case_id(name.as_str()).map_err(|_| {
        invalid(
            path,
            format!(
                "sequence name {:?} must be 1–128 letters, digits, '_', '-' or '.'",
                name.as_str()
            ),
        )
    })
}

fn read_label_mask(path: &Path) -> Result<volume::Volume<u8>, ProjectError> {
    volume::read_volume(path)?
        .into_label_mask()
        .map_err(|e| invalid(path, e.to_string()))
}

/// Copy a label mask into the project as uint8 NIfTI (a `.nii.gz` of uint8 byte for byte).
fn write_label_mask(src: &Path, dst: &Path) -> Result<(), ProjectError> {
    let gzip_nifti = src
        .to_string_lossy()
        .to_ascii_lowercase()
        .ends_with(".nii.gz");
    if gzip_nifti && volume::read_header(src)?.datatype == volume::Datatype::U8 {
        return copy_nifti(src, dst);
    }
    volume::write_volume(dst, &read_label_mask(src)?)?;
    Ok(())
}

/// Add the `values` the project does not name yet to its label table: named and coloured from
/// a table beside the reference mask (or the prediction) where one is found, else `label N`.
fn name_new_labels(
    project: &mut Project,
    new: &NewCase,
    values: &[u8],
) -> Result<Vec<(u8, String)>, ProjectError> {
    let beside = new
        .mask
        .iter()
        .chain(&new.prediction)
        .find_map(|m| super::label_files::label_table_beside(m))
        .transpose()
        .map_err(|e| invalid(&project.manifest_path(), e))?;
    let table = &project.manifest.labels;
    let mut labels = table.labels().to_vec();
    let mut added = Vec::new();
    for &value in values.iter().filter(|v| table.get(**v).is_none()) {
        let named = beside.as_ref().and_then(|(_, t)| t.get(value));
        let label = Label {
            value,
            name: named.map_or_else(|| format!("label {value}"), |l| l.name.clone()),
            color: named.map_or_else(|| super::default_color(value), |l| l.color),
        };
        added.push((value, label.name.clone()));
        labels.push(label);
    }
    labels.sort_by_key(|l| l.value);
    project.manifest.labels =
        LabelTable::new(labels).map_err(|e| invalid(&project.manifest_path(), e))?;
    Ok(added)
}

/// Put the case's files and class into the manifest (a new case, or the existing one).
fn record_case(
    project: &mut Project,
    new: &NewCase,
    form: InputForm,
    (sequences, reference, predicted): (Vec<SequenceFile>, Option<String>, Option<String>),
) {
    let m = &mut project.manifest;
    for s in &sequences {
        if !m.sequences.contains(&s.name) {
            m.sequences.push(s.name.clone());
        }
    }
    if let Some(class) = &new.class {
        if !m.classes.contains(class) {
            m.classes.push(class.clone());
        }
    }
    let index = match m.cases.iter().position(|c| c.id == new.id) {
        Some(i) => i,
        None => {
            m.cases.push(Case::new(new.id.clone(), form));
            m.cases.len() - 1
        }
    };
    let case = &mut m.cases[index];
    case.sequences.extend(sequences);
    if reference.is_some() {
        case.reference_mask = reference;
    }
    if predicted.is_some() {
        case.predicted_mask = predicted;
        case.predicted_by = None;
    }
    if new.class.is_some() {
        case.class_label = new.class.clone();
    }
}
