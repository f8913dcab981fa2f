//! A 2D project from one 3D volume: each axial slice (third voxel axis) where chosen labels of
//! a label volume on the same grid are present becomes a single-slice case (`dim3 = 1`), with
//! the image as one sequence and the chosen labels renumbered 1..n as its reference mask — the
//! 2D input form built from real anatomy, e.g. an atlas template and its parcellation.
//!
//! Invariants: the image and labels must share dims and affine (else an error naming both
//! files); each slice keeps its world position (the affine's origin moved to the slice) and
//! thickness; a case id is `z<index>` so the slice order is the id order.

use super::{invalid, Case, InputForm, Label, LabelTable, Manifest, Project, ProjectError};
use super::{SequenceFile, SequenceName};
use crate::volume::{read_volume, write_volume, Affine, Volume};
use std::path::Path;

/// What to cut.
#[derive(Debug, Clone, PartialEq)]
pub struct SliceOptions {
    /// Label values of the label volume to keep, with their names in the new project.
    pub keep: Vec<(u32, String)>,
    /// Name of the image's sequence (e.g. `T1`).
    pub sequence: String,
    /// Keep slices with at least this many voxels of the kept labels.
    pub min_voxels: usize,
    /// The class every case gets (the 2D form trains the segmentation here).
    pub class: String,
}

/// Write a new project at `out` of the slices of `image_path` where `labels_path` has at least
/// `min_voxels` voxels of the kept labels. Returns the project.
pub fn slice_project(
    image_path: &Path,
    labels_path: &Path,
    out: &Path,
    options: &SliceOptions,
) -> Result<Project, ProjectError> {
    Project::ensure_new(out)?;
    if options.keep.is_empty() || options.keep.len() > 255 {
        return Err(invalid(labels_path, "keep between 1 and 255 labels"));
    }
    let image = read_volume(image_path)?.to_f32();
    let labels = read_volume(labels_path)?.to_f32();
    check_same_grid(&image, image_path, &labels, labels_path)?;
    let mut manifest = slices_manifest(image_path, labels_path, options)?;
    let sequence = SequenceName::from(options.sequence.clone());
    std::fs::create_dir_all(out).map_err(|e| super::io_err(out, e))?;
    let [nx, ny, nz] = image.dims3();
    let n = nx * ny;
    for k in 0..nz {
        let mask: Vec<u8> = labels.data()[k * n..(k + 1) * n]
            .iter()
            .map(|v| renumber_label(&options.keep, *v))
            .collect();
        if mask.iter().filter(|v| **v > 0).count() < options.min_voxels.max(1) {
            continue;
        }
        let case = write_slice_case(out, &image, k, mask, &sequence, &options.class)?;
        manifest.cases.push(case);
    }
    if manifest.cases.is_empty() {
        return Err(invalid(
            labels_path,
            format!(
                "no slice has {} voxels of the kept labels",
                options.min_voxels.max(1)
            ),
        ));
    }
    Project::create(out, manifest)
}

/// The image and the label volume must be single 3D volumes with the same dims and (within
/// 1e-3) the same affine; the error names both files.
fn check_same_grid(
    image: &Volume<f32>,
    image_path: &Path,
    labels: &Volume<f32>,
    labels_path: &Path,
) -> Result<(), ProjectError> {
    let [nx, ny, nz, nt] = image.dims();
    if labels.dims3() != [nx, ny, nz] || nt != 1 || labels.dims()[3] != 1 {
        return Err(invalid(
            labels_path,
            format!(
                "dims {:?} do not match the image {} ({:?}); both must be single 3D volumes on one grid",
                labels.dims(),
                image_path.display(),
                image.dims()
            ),
        ));
    }
    let (a, b) = (image.affine().rows(), labels.affine().rows());
    let close = a
        .iter()
        .flatten()
        .zip(b.iter().flatten())
        .all(|(x, y)| (x - y).abs() < 1e-3);
    if !close {
        return Err(invalid(
            labels_path,
            format!(
                "its affine differs from the image {}'s; resample one onto the other first",
                image_path.display()
            ),
        ));
    }
    Ok(())
}

/// The new value (1..n, in `keep` order) of label value `v` of the label volume; 0 when it is
/// not kept.
fn renumber_label(keep: &[(u32, String)], v: f32) -> u8 {
    keep.iter()
        .position(|(value, _)| (v - *value as f32).abs() < 0.5)
        .map_or(0, |i| i as u8 + 1)
}

/// The new project's manifest without cases: named after the image, its one class and
/// sequence, and the kept labels renumbered 1..n with the default label colours (as any
/// label without one gets).
fn slices_manifest(
    image_path: &Path,
    labels_path: &Path,
    options: &SliceOptions,
) -> Result<Manifest, ProjectError> {
    let mut manifest = Manifest::new(format!(
        "slices of {}",
        image_path
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned())
    ));
    manifest.classes = vec![options.class.clone()];
    manifest.sequences = vec![SequenceName::from(options.sequence.clone())];
    manifest.labels = LabelTable::new(
        options
            .keep
            .iter()
            .enumerate()
            .map(|(i, (_, name))| Label {
                value: i as u8 + 1,
                name: name.clone(),
                color: super::default_color(i as u8 + 1),
            })
            .collect(),
    )
    .map_err(|e| invalid(labels_path, e))?;
    Ok(manifest)
}

/// Write axial slice `k` of `image` and its renumbered `mask` (`nx·ny` voxels) as case
/// `z<k>` under `out`, at the slice's world position; the case with its class.
fn write_slice_case(
    out: &Path,
    image: &Volume<f32>,
    k: usize,
    mask: Vec<u8>,
    sequence: &SequenceName,
    class: &str,
) -> Result<Case, ProjectError> {
    let [nx, ny, _] = image.dims3();
    let n = nx * ny;
    let origin_mm = image
        .affine()
        .vox_to_mm(glam::DVec3::new(0.0, 0.0, k as f64));
    let affine = Affine::from_linear_translation(image.affine().linear(), origin_mm);
    let slice = Volume::new(
        [nx, ny, 1, 1],
        affine,
        image.data()[k * n..(k + 1) * n].to_vec(),
    )?;
    let mask = Volume::new([nx, ny, 1, 1], affine, mask)?;
    let id = format!("z{k:03}");
    let dir = Project::case_dir_rel(&id);
    let case_dir = out.join(&dir);
    std::fs::create_dir_all(&case_dir).map_err(|e| super::io_err(&case_dir, e))?;
    let mut case = Case::new(id, InputForm::Slice2d);
    let image_rel = format!("{dir}/{}.nii.gz", sequence.as_str());
    write_volume(&out.join(&image_rel), &slice)?;
    case.sequences.push(SequenceFile {
        name: sequence.clone(),
        path: image_rel,
    });
    let mask_rel = format!("{dir}/reference.nii.gz");
    write_volume(&out.join(&mask_rel), &mask)?;
    case.reference_mask = Some(mask_rel);
    case.class_label = Some(class.to_owned());
    Ok(case)
}
