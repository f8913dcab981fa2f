//! Projects and cases.
//!
//! A project is a folder holding a `mriloop.json` manifest (serde, versioned schema) and the case
//! files as NIfTI, so any other tool can read them. A `Case` is one or more co-registered
//! sequences, an optional reference mask, an optional predicted mask (with optional per-voxel
//! probabilities), a case-level class label with the predicted class probabilities, and a review
//! status: mask and class are corrected in one record.
//!
//! Invariants after `Project::open`: case ids are unique and safe as file names; every path in the
//! manifest is relative and stays inside the project folder; class labels are among the project's
//! classes; predicted class probabilities have one finite entry per class. Every save is atomic.

pub mod add_case;
pub mod demo;
pub mod dicom_import;
pub mod journal;
mod label_files;
mod labels;
pub mod models;
pub mod nnunet;
pub mod prompt_log;
pub mod shard;
pub mod slices;
pub mod store;

pub use label_files::label_table_beside;
pub use labels::{default_color, Label, LabelTable};
pub use models::{EpochRecord, ModelVersion, RunOutcome};

use crate::volume::{self, AnyVolume, Volume, VolumeError};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Component, Path, PathBuf};

/// The manifest's file name inside a project folder.
pub const MANIFEST_FILE: &str = "mriloop.json";
/// The manifest schema this build writes (and the newest it reads).
pub const SCHEMA_VERSION: u32 = 1;
/// Largest manifest mriloop reads (bytes).
const MAX_MANIFEST_BYTES: u64 = 64 << 20;

/// Errors of the project layer; file errors name the file.
#[derive(Debug, thiserror::Error)]
pub enum ProjectError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A project or dataset file is malformed or inconsistent.
    #[error("{path}: {problem}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// A volume file failed.
    #[error(transparent)]
    Volume(#[from] VolumeError),
}

pub(crate) fn io_err(path: &Path, source: std::io::Error) -> ProjectError {
    ProjectError::Io {
        path: path.to_path_buf(),
        source,
    }
}

pub(crate) fn invalid(path: &Path, problem: impl Into<String>) -> ProjectError {
    ProjectError::Invalid {
        path: path.to_path_buf(),
        problem: problem.into(),
    }
}

/// An MRI sequence (contrast) name. Known ones have fixed spellings; others are kept as given.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum SequenceName {
    /// T1-weighted.
    T1,
    /// T2-weighted.
    T2,
    /// Fluid-attenuated inversion recovery.
    Flair,
    /// Diffusion-weighted.
    Dwi,
    /// Apparent diffusion coefficient map.
    Adc,
    /// Gadolinium contrast-enhanced T1.
    GdT1,
    /// BOLD fMRI time series.
    Bold,
    /// Any other name.
    Other(String),
}

impl SequenceName {
    /// The canonical spelling.
    pub fn as_str(&self) -> &str {
        match self {
            Self::T1 => "T1",
            Self::T2 => "T2",
            Self::Flair => "FLAIR",
            Self::Dwi => "DWI",
            Self::Adc => "ADC",
            Self::GdT1 => "Gd-T1",
            Self::Bold => "BOLD",
            Self::Other(s) => s,
        }
    }

    /// The sequence a BIDS file name says (`sub-01_T1w.nii.gz` → T1; `…_ce-gad…_T1w` → Gd-T1;
    /// `_T2w`, `_FLAIR`, `_dwi`, `_bold`), or `None` for a name without one of those suffixes.
    pub fn from_bids_name(file_name: &str) -> Option<Self> {
        let stem = crate::volume::volume_stem(file_name);
        let (entities, suffix) = stem.rsplit_once('_')?;
        let contrast = entities.split('_').any(|e| e.starts_with("ce-"));
        Some(match suffix {
            "T1w" if contrast => Self::GdT1,
            "T1w" => Self::T1,
            "T2w" => Self::T2,
            "FLAIR" => Self::Flair,
            "dwi" => Self::Dwi,
            "bold" => Self::Bold,
            _ => return None,
        })
    }
}

impl From<String> for SequenceName {
    fn from(s: String) -> Self {
        match s.to_ascii_uppercase().replace(['_', ' '], "-").as_str() {
            "T1" | "T1W" => Self::T1,
            "T2" | "T2W" => Self::T2,
            "FLAIR" => Self::Flair,
            "DWI" => Self::Dwi,
            "ADC" => Self::Adc,
            "GD-T1" | "T1-GD" | "T1C" | "T1CE" | "GDT1" => Self::GdT1,
            "BOLD" => Self::Bold,
            _ => Self::Other(s),
        }
    }
}

impl From<SequenceName> for String {
    fn from(s: SequenceName) -> String {
        s.as_str().to_owned()
    }
}

impl fmt::Display for SequenceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The input form of a case (the research's three forms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum InputForm {
    /// Co-registered 3D sequences.
    #[default]
    #[serde(rename = "3d")]
    Volume3d,
    /// Single 2D slices.
    #[serde(rename = "2d")]
    Slice2d,
    /// A 4D time series (resting-state fMRI).
    #[serde(rename = "4d")]
    TimeSeries4d,
}

impl InputForm {
    /// The short name used in manifests and on the command line: `3d`, `2d`, `4d`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Volume3d => "3d",
            Self::Slice2d => "2d",
            Self::TimeSeries4d => "4d",
        }
    }
}

/// Where a case stands in review.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReviewStatus {
    /// Nobody has looked at it.
    #[default]
    Unreviewed,
    /// Someone started correcting it.
    InProgress,
    /// Mask and class confirmed by an expert.
    Reviewed,
    /// Reviewed, but someone else should look again.
    NeedsSecondLook,
}

impl ReviewStatus {
    /// Every status, in workflow order.
    pub const ALL: [ReviewStatus; 4] = [
        ReviewStatus::Unreviewed,
        ReviewStatus::InProgress,
        ReviewStatus::Reviewed,
        ReviewStatus::NeedsSecondLook,
    ];

    /// The manifest's name of the status.
    pub fn as_str(self) -> &'static str {
        match self {
            ReviewStatus::Unreviewed => "unreviewed",
            ReviewStatus::InProgress => "in_progress",
            ReviewStatus::Reviewed => "reviewed",
            ReviewStatus::NeedsSecondLook => "needs_second_look",
        }
    }

    /// The status of a manifest name.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// One sequence file of a case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SequenceFile {
    /// Which sequence.
    pub name: SequenceName,
    /// Path relative to the project folder, `/`-separated.
    pub path: String,
}

/// A case: co-registered sequences, masks, class, review status.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Case {
    /// Identifier, safe as a file name (letters, digits, `_`, `-`, `.`).
    pub id: String,
    /// Input form.
    #[serde(default)]
    pub form: InputForm,
    /// The sequences, co-registered (same grid).
    pub sequences: Vec<SequenceFile>,
    /// The reference (corrected / ground-truth) label mask, u8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_mask: Option<String>,
    /// The network's predicted label mask, u8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_mask: Option<String>,
    /// The network's per-voxel foreground probabilities, f32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_probabilities: Option<String>,
    /// The case-level class (one of the project's classes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub class_label: Option<String>,
    /// The network's class probabilities, one per project class, in the project's order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_class: Option<Vec<f32>>,
    /// Review status.
    /// The model version that made the predicted mask and class (`None`: made elsewhere).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_by: Option<String>,
    /// How unsure the model was about this case (0 sure … 1 unsure), for choosing the next case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uncertainty: Option<Uncertainty>,
    #[serde(default)]
    pub review: ReviewStatus,
    /// The reviewer's free-text note.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
}

impl Case {
    /// A new unreviewed case with no files.
    pub fn new(id: impl Into<String>, form: InputForm) -> Self {
        Self {
            id: id.into(),
            form,
            sequences: Vec::new(),
            reference_mask: None,
            predicted_mask: None,
            predicted_probabilities: None,
            class_label: None,
            predicted_class: None,
            predicted_by: None,
            uncertainty: None,
            review: ReviewStatus::Unreviewed,
            note: String::new(),
        }
    }

    /// The file of a sequence.
    pub fn sequence(&self, name: &SequenceName) -> Option<&SequenceFile> {
        self.sequences.iter().find(|s| &s.name == name)
    }

    /// Every relative path the case refers to.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.sequences
            .iter()
            .map(|s| s.path.as_str())
            .chain(self.reference_mask.as_deref())
            .chain(self.predicted_mask.as_deref())
            .chain(self.predicted_probabilities.as_deref())
    }
}

/// A model's uncertainty about one case, each part from 0 (sure) to 1 (unsure).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Uncertainty {
    /// Mean normalised entropy of the foreground probability over the predicted structure and
    /// its fringe.
    pub segmentation: f32,
    /// Closeness of the class probabilities to the decision boundary (1 − margin).
    pub classification: f32,
}

impl Uncertainty {
    /// The score "Next" ranks by: the mean of the parts.
    pub fn score(&self) -> f32 {
        0.5 * (self.segmentation + self.classification)
    }
}

/// The project manifest (`mriloop.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Schema version; see `SCHEMA_VERSION`.
    pub schema_version: u32,
    /// Project name.
    pub name: String,
    /// Sequence order used as network input channels.
    pub sequences: Vec<SequenceName>,
    /// Mask labels.
    pub labels: LabelTable,
    /// Case-level classes, e.g. `["control", "patient"]`.
    pub classes: Vec<String>,
    /// The cases.
    pub cases: Vec<Case>,
    /// Trained model versions, oldest first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<ModelVersion>,
    /// The version that predicts new cases (`None`: none trained yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_model: Option<String>,
}

impl Manifest {
    /// Whether any case has one of the project's classes (an nnU-Net dataset's cases have
    /// none: a joint run then trains the segmentation only).
    pub fn has_classified_case(&self) -> bool {
        self.cases.iter().any(|c| {
            c.class_label
                .as_ref()
                .is_some_and(|l| self.classes.contains(l))
        })
    }

    /// The input form of the project (its first case's; 3D volumes when it has none).
    pub fn input_form(&self) -> InputForm {
        self.cases.first().map(|c| c.form).unwrap_or_default()
    }

    /// An empty manifest of the current schema.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            schema_version: SCHEMA_VERSION,
            name: name.into(),
            sequences: Vec::new(),
            labels: LabelTable::default(),
            classes: Vec::new(),
            cases: Vec::new(),
            models: Vec::new(),
            active_model: None,
        }
    }

    /// Check the invariants listed in the module header. `path` names the file in errors.
    pub fn validate(&self, path: &Path) -> Result<(), ProjectError> {
        if self.schema_version == 0 || self.schema_version > SCHEMA_VERSION {
            return Err(invalid(
                path,
                format!(
                    "schema_version {} is not one this mriloop reads (1..={SCHEMA_VERSION}); a newer mriloop wrote it?",
                    self.schema_version
                ),
            ));
        }
        self.labels.check().map_err(|p| invalid(path, p))?;
        let mut ids = std::collections::HashSet::new();
        for case in &self.cases {
            check_case_id(&case.id).map_err(|p| invalid(path, p))?;
            if !ids.insert(case.id.as_str()) {
                return Err(invalid(
                    path,
                    format!("case id {:?} appears twice", case.id),
                ));
            }
            for p in case.paths() {
                check_relative_path(p)
                    .map_err(|e| invalid(path, format!("case {}: {e}", case.id)))?;
            }
            if let Some(c) = &case.class_label {
                if !self.classes.contains(c) {
                    return Err(invalid(
                        path,
                        format!(
                            "case {}: class {c:?} is not one of the project's classes {:?}",
                            case.id, self.classes
                        ),
                    ));
                }
            }
            if let Some(p) = &case.predicted_class {
                if p.len() != self.classes.len() || p.iter().any(|v| !v.is_finite() || *v < 0.0) {
                    return Err(invalid(
                        path,
                        format!(
                            "case {}: predicted_class needs {} finite non-negative probabilities",
                            case.id,
                            self.classes.len()
                        ),
                    ));
                }
            }
        }
        let mut versions = std::collections::HashSet::new();
        for m in &self.models {
            check_case_id(&m.id).map_err(|p| {
                invalid(
                    path,
                    format!("model version: {}", p.replace("case id", "id")),
                )
            })?;
            if !versions.insert(m.id.as_str()) {
                return Err(invalid(
                    path,
                    format!("model version {:?} appears twice", m.id),
                ));
            }
            check_relative_path(&m.checkpoint)
                .map_err(|e| invalid(path, format!("model {}: {e}", m.id)))?;
        }
        if let Some(a) = &self.active_model {
            if !versions.contains(a.as_str()) {
                return Err(invalid(
                    path,
                    format!("active_model {a:?} is not one of the recorded model versions"),
                ));
            }
        }
        Ok(())
    }

    /// The case with this id.
    pub fn case(&self, id: &str) -> Option<&Case> {
        self.cases.iter().find(|c| c.id == id)
    }
}

/// Whether `id` is usable as a case id (and hence as a file name everywhere).
pub fn check_case_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "case id {id:?} must be 1–128 letters, digits, '_', '-' or '.', not starting with '.'"
        ))
    }
}

/// A manifest path must be relative and stay inside the project.
fn check_relative_path(p: &str) -> Result<(), String> {
    let path = Path::new(p);
    let inside = !p.is_empty()
        && !p.contains('\\')
        && path
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if inside {
        Ok(())
    } else {
        Err(format!(
            "path {p:?} must be relative and stay inside the project folder"
        ))
    }
}

/// An open project: its folder and manifest.
#[derive(Debug, Clone)]
pub struct Project {
    root: PathBuf,
    /// The manifest (save with `Project::save`).
    pub manifest: Manifest,
}

impl Project {
    /// Refuse to make a new project where one already is (its files would be overwritten).
    pub fn ensure_new(root: &Path) -> Result<(), ProjectError> {
        let manifest = root.join(MANIFEST_FILE);
        if manifest.exists() {
            return Err(invalid(
                &manifest,
                "a project already exists in this folder; choose a new folder",
            ));
        }
        Ok(())
    }

    /// Create a project folder (if needed) and write its manifest; refuses an existing project.
    pub fn create(root: &Path, manifest: Manifest) -> Result<Self, ProjectError> {
        Self::ensure_new(root)?;
        std::fs::create_dir_all(root).map_err(|e| io_err(root, e))?;
        let p = Self {
            root: root.to_path_buf(),
            manifest,
        };
        p.manifest.validate(&p.manifest_path())?;
        p.save()?;
        Ok(p)
    }

    /// Open a project from its folder or its `mriloop.json`.
    pub fn open(path: &Path) -> Result<Self, ProjectError> {
        let (root, file) = if path.is_dir() {
            (path.to_path_buf(), path.join(MANIFEST_FILE))
        } else {
            let root = path.parent().unwrap_or(Path::new(".")).to_path_buf();
            (root, path.to_path_buf())
        };
        let text = read_text_capped(&file, MAX_MANIFEST_BYTES)?;
        let manifest: Manifest = serde_json::from_str(&text)
            .map_err(|e| invalid(&file, format!("not a valid mriloop manifest: {e}")))?;
        manifest.validate(&file)?;
        Ok(Self { root, manifest })
    }

    /// Write the manifest atomically.
    pub fn save(&self) -> Result<(), ProjectError> {
        let path = self.manifest_path();
        self.manifest.validate(&path)?;
        let mut json = serde_json::to_string_pretty(&self.manifest)
            .map_err(|e| invalid(&path, format!("cannot serialise manifest: {e}")))?;
        json.push('\n');
        crate::atomic::write_atomic(&path, json.as_bytes()).map_err(|e| io_err(&path, e))
    }

    /// The project folder.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The manifest's path.
    pub fn manifest_path(&self) -> PathBuf {
        self.root.join(MANIFEST_FILE)
    }

    /// Absolute path of a manifest-relative path.
    pub fn resolve(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// The folder where a case's files live by convention (`cases/<id>`).
    pub fn case_dir_rel(id: &str) -> String {
        format!("cases/{id}")
    }

    /// Load one sequence of a case.
    pub fn load_sequence(
        &self,
        case: &Case,
        name: &SequenceName,
    ) -> Result<AnyVolume, ProjectError> {
        let file = case.sequence(name).ok_or_else(|| {
            invalid(
                &self.manifest_path(),
                format!("case {} has no sequence {name}", case.id),
            )
        })?;
        Ok(volume::read_volume(&self.resolve(&file.path))?)
    }

    /// Load a case's reference mask (u8), if it has one.
    pub fn load_reference_mask(&self, case: &Case) -> Result<Option<Volume<u8>>, ProjectError> {
        case.reference_mask
            .as_deref()
            .map(|rel| self.load_mask(rel))
            .transpose()
    }

    /// Load a label mask: uint8, or whole numbers 0..=255 in another type.
    pub fn load_mask(&self, rel: &str) -> Result<Volume<u8>, ProjectError> {
        let path = self.resolve(rel);
        volume::read_volume(&path)?
            .into_label_mask()
            .map_err(|e| invalid(&path, e.to_string()))
    }
}

/// Read a text file of at most `cap` bytes (checked before reading).
pub(crate) fn read_text_capped(path: &Path, cap: u64) -> Result<String, ProjectError> {
    let len = std::fs::metadata(path).map_err(|e| io_err(path, e))?.len();
    if len > cap {
        return Err(invalid(
            path,
            format!("file is {len} bytes, more than the {cap} allowed"),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    String::from_utf8(bytes).map_err(|_| invalid(path, "not UTF-8 text"))
}
