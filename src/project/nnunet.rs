//! Exchange with the nnU-Net v2 raw dataset format.
//!
//! Layout: `dataset.json` (`channel_names`, `labels`, `numTraining`, `file_ending`),
//! `imagesTr/CASE_0000.nii.gz` (one file per channel), `labelsTr/CASE.nii.gz`, and
//! `imagesTs/` for cases without a label. mriloop adds `classes.csv` (`case,class`) for the
//! case-level classes and `labels_itksnap.txt` for label colours; nnU-Net ignores both, and
//! `dataset.json` keeps the class order under `mriloop_classes`.
//!
//! Files are copied byte for byte where they are already in the target format, so an
//! import→export round trip gives back identical images and labels. Everything read is
//! validated: channel numbering, label values, case ids, and that each case has every channel.

use super::{
    check_case_id, invalid, io_err, read_text_capped, Case, InputForm, Label, LabelTable, Manifest,
    Project, ProjectError, SequenceFile, SequenceName,
};
use crate::atomic::{copy_atomic, write_atomic};
use crate::volume;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const MAX_JSON_BYTES: u64 = 16 << 20;
const CLASSES_CSV: &str = "classes.csv";
const LABELS_ITKSNAP: &str = "labels_itksnap.txt";

/// What an export wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSummary {
    /// Cases with a reference mask (imagesTr + labelsTr).
    pub training: usize,
    /// Cases without one (imagesTs).
    pub test: usize,
}

fn mkdir(p: &Path) -> Result<(), ProjectError> {
    std::fs::create_dir_all(p).map_err(|e| io_err(p, e))
}

/// Copy a NIfTI file to `dst` (a `.nii.gz` path): bytes as they are when the source is already
/// gzip-compressed NIfTI, else read and written anew (geometry kept).
pub(super) fn copy_nifti(src: &Path, dst: &Path) -> Result<(), ProjectError> {
    let name = src.to_string_lossy().to_ascii_lowercase();
    if name.ends_with(".nii.gz") {
        // Validate before copying so a bad file is reported by its own name.
        volume::read_header(src)?;
        copy_atomic(src, dst).map_err(|e| io_err(dst, e))
    } else {
        match volume::read_volume(src)? {
            volume::AnyVolume::U8(v) => volume::write_volume(dst, &v)?,
            volume::AnyVolume::I16(v) => volume::write_volume(dst, &v)?,
            volume::AnyVolume::U16(v) => volume::write_volume(dst, &v)?,
            volume::AnyVolume::I32(v) => volume::write_volume(dst, &v)?,
            volume::AnyVolume::F32(v) => volume::write_volume(dst, &v)?,
        }
        Ok(())
    }
}

/// Export a project as an nnU-Net v2 raw dataset into `out` (created if needed).
/// Every case must have every project sequence (the channels); 4D cases are not exported.
pub fn export_nnunet(project: &Project, out: &Path) -> Result<ExportSummary, ProjectError> {
    let m = &project.manifest;
    let cases: Vec<&Case> = m
        .cases
        .iter()
        .filter(|c| c.form != InputForm::TimeSeries4d)
        .collect();
    check_export_channels(&cases, &m.sequences, &project.manifest_path())?;
    mkdir(out)?;
    let mut summary = ExportSummary {
        training: 0,
        test: 0,
    };
    for case in &cases {
        if export_case(project, case, out)? {
            summary.training += 1;
        } else {
            summary.test += 1;
        }
    }
    write_dataset_json(m, &summary, out)?;
    let path = out.join(LABELS_ITKSNAP);
    write_atomic(&path, m.labels.to_itksnap().as_bytes()).map_err(|e| io_err(&path, e))?;
    write_classes_csv(&cases, &out.join(CLASSES_CSV))?;
    Ok(summary)
}

/// Every exported case must have every project sequence, as nnU-Net needs each channel.
fn check_export_channels(
    cases: &[&Case],
    sequences: &[SequenceName],
    manifest_path: &Path,
) -> Result<(), ProjectError> {
    for case in cases {
        for name in sequences {
            if case.sequence(name).is_none() {
                return Err(invalid(
                    manifest_path,
                    format!(
                        "case {} lacks sequence {name}, needed as an nnU-Net channel",
                        case.id
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Copy one case's channels into `out/imagesTr` (with its mask into `out/labelsTr`) when it has
/// a reference mask, else into `out/imagesTs`; true when it went to the training set.
fn export_case(project: &Project, case: &Case, out: &Path) -> Result<bool, ProjectError> {
    let dir = if case.reference_mask.is_some() {
        out.join("imagesTr")
    } else {
        out.join("imagesTs")
    };
    mkdir(&dir)?;
    for (c, name) in project.manifest.sequences.iter().enumerate() {
        if let Some(f) = case.sequence(name) {
            copy_nifti(
                &project.resolve(&f.path),
                &dir.join(format!("{}_{c:04}.nii.gz", case.id)),
            )?;
        }
    }
    let Some(mask) = &case.reference_mask else {
        return Ok(false);
    };
    let lb = out.join("labelsTr");
    mkdir(&lb)?;
    copy_nifti(
        &project.resolve(mask),
        &lb.join(format!("{}.nii.gz", case.id)),
    )?;
    Ok(true)
}

/// Write `out/dataset.json`: channels, labels (with background 0), the training count, the file
/// ending and, for mriloop, the class order.
fn write_dataset_json(
    m: &Manifest,
    summary: &ExportSummary,
    out: &Path,
) -> Result<(), ProjectError> {
    let channel_names: Map<String, Value> = m
        .sequences
        .iter()
        .enumerate()
        .map(|(i, s)| (i.to_string(), Value::from(s.as_str())))
        .collect();
    let mut labels = Map::new();
    labels.insert("background".into(), json!(0));
    for l in m.labels.labels() {
        labels.insert(l.name.clone(), json!(l.value));
    }
    let dataset = json!({
        "name": m.name,
        "channel_names": channel_names,
        "labels": labels,
        "numTraining": summary.training,
        "file_ending": ".nii.gz",
        "mriloop_classes": m.classes,
    });
    let path = out.join("dataset.json");
    let text =
        serde_json::to_string_pretty(&dataset).map_err(|e| invalid(&path, e.to_string()))? + "\n";
    write_atomic(&path, text.as_bytes()).map_err(|e| io_err(&path, e))
}

/// Write `csv_path` (`case,class`) with the class of every case that has one.
fn write_classes_csv(cases: &[&Case], csv_path: &Path) -> Result<(), ProjectError> {
    let mut csv_out = csv::Writer::from_writer(Vec::new());
    let csv_fail = |e: csv::Error| invalid(csv_path, e.to_string());
    csv_out.write_record(["case", "class"]).map_err(csv_fail)?;
    for case in cases {
        if let Some(c) = &case.class_label {
            csv_out
                .write_record([case.id.as_str(), c.as_str()])
                .map_err(csv_fail)?;
        }
    }
    let bytes = csv_out
        .into_inner()
        .map_err(|e| invalid(csv_path, e.to_string()))?;
    write_atomic(csv_path, &bytes).map_err(|e| io_err(csv_path, e))
}

/// The parts of `dataset.json` mriloop uses.
struct DatasetJson {
    name: String,
    channels: Vec<SequenceName>,
    labels: Vec<(String, u8)>,
    file_ending: String,
    classes: Option<Vec<String>>,
}

/// Read and check `dataset.json`: channels numbered without gaps, plain labels 0..=255, a NIfTI
/// file ending, and mriloop's class list if present.
fn parse_dataset_json(path: &Path) -> Result<DatasetJson, ProjectError> {
    let text = read_text_capped(path, MAX_JSON_BYTES)?;
    let v: Value =
        serde_json::from_str(&text).map_err(|e| invalid(path, format!("not valid JSON: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| invalid(path, "expected a JSON object"))?;
    let channels = parse_channels(path, obj)?;
    let labels = parse_labels(path, obj)?;
    let file_ending = obj
        .get("file_ending")
        .and_then(Value::as_str)
        .unwrap_or(".nii.gz")
        .to_owned();
    if file_ending != ".nii.gz" && file_ending != ".nii" {
        return Err(invalid(
            path,
            format!("file_ending {file_ending:?}: mriloop reads NIfTI datasets (.nii.gz or .nii)"),
        ));
    }
    let classes = match obj.get("mriloop_classes") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => Some(
            a.iter()
                .map(|c| c.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| invalid(path, "mriloop_classes must be a list of strings"))?,
        ),
        Some(_) => return Err(invalid(path, "mriloop_classes must be a list of strings")),
    };
    let name = obj
        .get("name")
        .and_then(Value::as_str)
        .unwrap_or("nnU-Net dataset")
        .to_owned();
    Ok(DatasetJson {
        name,
        channels,
        labels,
        file_ending,
        classes,
    })
}

/// The channel names of `dataset.json` (`channel_names`, or v1's `modality`) in channel order;
/// the keys must be 0, 1, 2, … without gaps.
fn parse_channels(
    path: &Path,
    obj: &Map<String, Value>,
) -> Result<Vec<SequenceName>, ProjectError> {
    let channel_obj = obj
        .get("channel_names")
        .or_else(|| obj.get("modality"))
        .and_then(Value::as_object)
        .ok_or_else(|| invalid(path, "missing \"channel_names\" object"))?;
    let mut channels = BTreeMap::new();
    for (k, name) in channel_obj {
        let idx: usize = k
            .parse()
            .map_err(|_| invalid(path, format!("channel key {k:?} is not a whole number")))?;
        let name = name
            .as_str()
            .ok_or_else(|| invalid(path, format!("channel {k} name is not a string")))?;
        channels.insert(idx, SequenceName::from(name.to_owned()));
    }
    if channels.is_empty() || channels.keys().enumerate().any(|(i, k)| i != *k) {
        return Err(invalid(
            path,
            "channel_names must be numbered 0, 1, 2, … without gaps",
        ));
    }
    Ok(channels.into_values().collect())
}

/// The foreground labels of `dataset.json` (name, value), sorted by value; background (0) is
/// dropped and region-based labels are refused.
fn parse_labels(path: &Path, obj: &Map<String, Value>) -> Result<Vec<(String, u8)>, ProjectError> {
    let labels_obj = obj
        .get("labels")
        .and_then(Value::as_object)
        .ok_or_else(|| invalid(path, "missing \"labels\" object"))?;
    let mut labels = Vec::new();
    for (name, value) in labels_obj {
        let n = match value {
            Value::Number(n) => n.as_u64().filter(|v| *v <= 255),
            Value::Array(_) => {
                return Err(invalid(
                    path,
                    format!("label {name:?} is region-based (a list); mriloop reads plain labels"),
                ))
            }
            _ => None,
        }
        .ok_or_else(|| {
            invalid(
                path,
                format!("label {name:?} must be a whole number 0..=255"),
            )
        })?;
        if n != 0 {
            labels.push((name.clone(), n as u8));
        }
    }
    labels.sort_by_key(|(_, v)| *v);
    Ok(labels)
}

/// Case id → channel files found in an images folder.
fn scan_images(
    dir: &Path,
    ending: &str,
    n_channels: usize,
) -> Result<BTreeMap<String, Vec<PathBuf>>, ProjectError> {
    let mut found: BTreeMap<String, BTreeMap<usize, PathBuf>> = BTreeMap::new();
    if !dir.exists() {
        return Ok(BTreeMap::new());
    }
    for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let entry = entry.map_err(|e| io_err(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(ending) else {
            continue;
        };
        let path = entry.path();
        let bad = || {
            invalid(
                &path,
                "an nnU-Net image must be named CASE_XXXX with a 4-digit channel number",
            )
        };
        let (case, chan) = stem.rsplit_once('_').ok_or_else(bad)?;
        if chan.len() != 4 || !chan.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let chan: usize = chan.parse().map_err(|_| bad())?;
        if chan >= n_channels {
            return Err(invalid(
                &path,
                format!("channel {chan} but dataset.json names {n_channels}"),
            ));
        }
        check_case_id(case).map_err(|p| invalid(&path, p))?;
        found.entry(case.to_owned()).or_default().insert(chan, path);
    }
    let mut out = BTreeMap::new();
    for (case, chans) in found {
        if chans.len() != n_channels {
            let missing: Vec<usize> = (0..n_channels).filter(|c| !chans.contains_key(c)).collect();
            return Err(invalid(
                dir,
                format!("case {case} lacks channel(s) {missing:?}"),
            ));
        }
        out.insert(case, chans.into_values().collect());
    }
    Ok(out)
}

fn read_classes_csv(path: &Path) -> Result<BTreeMap<String, String>, ProjectError> {
    let mut out = BTreeMap::new();
    if !path.exists() {
        return Ok(out);
    }
    let text = read_text_capped(path, MAX_JSON_BYTES)?;
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    for (i, rec) in reader.records().enumerate() {
        let rec = rec.map_err(|e| invalid(path, format!("row {}: {e}", i + 2)))?;
        if rec.len() != 2 {
            return Err(invalid(
                path,
                format!("row {}: expected 2 columns (case,class)", i + 2),
            ));
        }
        out.insert(rec[0].to_owned(), rec[1].to_owned());
    }
    Ok(out)
}

/// Import an nnU-Net v2 raw dataset into a new project at `project_dir`. Images are copied to
/// `cases/<id>/<sequence>.nii.gz` and labels to `cases/<id>/reference.nii.gz`; every file's
/// header is validated and each case's channels and label must share one grid.
pub fn import_nnunet(dataset: &Path, project_dir: &Path) -> Result<Project, ProjectError> {
    Project::ensure_new(project_dir)?;
    let ds_path = dataset.join("dataset.json");
    let ds = parse_dataset_json(&ds_path)?;
    let n = ds.channels.len();
    let train = scan_images(&dataset.join("imagesTr"), &ds.file_ending, n)?;
    let test = scan_images(&dataset.join("imagesTs"), &ds.file_ending, n)?;
    let classes_by_case = read_classes_csv(&dataset.join(CLASSES_CSV))?;
    let labels = import_labels(dataset, &ds_path, &ds.labels)?;
    let classes = match &ds.classes {
        Some(c) => c.clone(),
        None => {
            let mut c: Vec<String> = classes_by_case.values().cloned().collect();
            c.sort();
            c.dedup();
            c
        }
    };
    let mut manifest = Manifest::new(ds.name.clone());
    manifest.sequences = ds.channels.clone();
    manifest.labels = labels;
    manifest.classes = classes;
    mkdir(project_dir)?;
    let mut all: Vec<(&String, &Vec<PathBuf>, bool)> =
        train.iter().map(|(c, f)| (c, f, true)).collect();
    all.extend(test.iter().map(|(c, f)| (c, f, false)));
    all.sort_by(|a, b| a.0.cmp(b.0));
    for (id, files, has_label) in all {
        let mut case = import_case(dataset, project_dir, &ds, id, files, has_label)?;
        case.class_label = classes_by_case.get(id).cloned();
        manifest.cases.push(case);
    }
    Project::create(project_dir, manifest)
}

/// The project's label table from the dataset's labels, with colours from its
/// `labels_itksnap.txt` where present (else the default colour of each value).
fn import_labels(
    dataset: &Path,
    ds_path: &Path,
    ds_labels: &[(String, u8)],
) -> Result<LabelTable, ProjectError> {
    let colors = {
        let p = dataset.join(LABELS_ITKSNAP);
        if p.exists() {
            let text = read_text_capped(&p, MAX_JSON_BYTES)?;
            Some(LabelTable::from_itksnap(&text).map_err(|e| invalid(&p, e))?)
        } else {
            None
        }
    };
    let labels = ds_labels
        .iter()
        .map(|(name, value)| Label {
            value: *value,
            name: name.clone(),
            color: colors
                .as_ref()
                .and_then(|t| t.get(*value))
                .map(|l| l.color)
                .unwrap_or_else(|| super::default_color(*value)),
        })
        .collect();
    LabelTable::new(labels).map_err(|e| invalid(ds_path, e))
}

/// Copy one dataset case (its channel `files` and, with `has_label`, its label from
/// `labelsTr`) into the project's case folder, checking they share one grid; the case without
/// its class.
fn import_case(
    dataset: &Path,
    project_dir: &Path,
    ds: &DatasetJson,
    id: &str,
    files: &[PathBuf],
    has_label: bool,
) -> Result<Case, ProjectError> {
    let mut case = Case::new(id.to_owned(), InputForm::Volume3d);
    let rel_dir = Project::case_dir_rel(id);
    mkdir(&project_dir.join(&rel_dir))?;
    let mut grid: Option<(PathBuf, [usize; 3])> = None;
    for (c, src) in files.iter().enumerate() {
        check_same_grid(&mut grid, src)?;
        let rel = format!("{rel_dir}/{}.nii.gz", ds.channels[c].as_str());
        copy_nifti(src, &project_dir.join(&rel))?;
        case.sequences.push(SequenceFile {
            name: ds.channels[c].clone(),
            path: rel,
        });
    }
    if has_label {
        let src = dataset
            .join("labelsTr")
            .join(format!("{id}{}", ds.file_ending));
        if !src.exists() {
            return Err(invalid(
                &src,
                format!("case {id} is in imagesTr but has no label file"),
            ));
        }
        check_same_grid(&mut grid, &src)?;
        // Refuse at import, by the file's name, a label that no mask can hold.
        volume::read_volume(&src)?
            .into_label_mask()
            .map_err(|e| invalid(&src, e.to_string()))?;
        let rel = format!("{rel_dir}/reference.nii.gz");
        copy_nifti(&src, &project_dir.join(&rel))?;
        case.reference_mask = Some(rel);
    }
    Ok(case)
}

/// Check that the NIfTI file `p` has the grid (dims in voxels) of the case's first file, kept in
/// `grid` (set from `p` when it is the first).
fn check_same_grid(grid: &mut Option<(PathBuf, [usize; 3])>, p: &Path) -> Result<(), ProjectError> {
    let h = volume::read_header(p)?;
    let d = [h.dims[0], h.dims[1], h.dims[2]];
    match grid {
        Some((first, g)) if *g != d => Err(invalid(
            p,
            format!(
                "grid {d:?} differs from {} ({g:?}): channels must be co-registered",
                first.display()
            ),
        )),
        Some(_) => Ok(()),
        None => {
            *grid = Some((p.to_path_buf(), d));
            Ok(())
        }
    }
}
