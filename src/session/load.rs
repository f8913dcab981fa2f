//! Loading off the UI thread: a case's volumes (sequences as f32, masks as u8 labels) and the
//! worklist's per-case statistics (Dice of predicted vs reference, labelled volume). Each job is
//! a thread reporting through a channel; the UI polls it once per frame and never waits.
//!
//! Invariants: every error names the file and the problem; a job never panics the UI; a 4D
//! sequence's `volume` is its first frame, and its whole series (with temporal mean and SD) is
//! kept beside it for the time-series views.

use crate::project::{Case, Project, SequenceName};
use crate::volume::timeseries::{temporal_summary, TemporalSummary};
use crate::volume::{read_volume, Volume};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;

/// Where a case's files are (absolute paths), whatever they came from: a project or loose files.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseSource {
    /// Shown as the case's name.
    pub case_id: String,
    /// The co-registered sequences, in display order.
    pub sequences: Vec<(SequenceName, PathBuf)>,
    /// The reference (corrected) label mask.
    pub reference: Option<PathBuf>,
    /// The predicted label mask.
    pub predicted: Option<PathBuf>,
    /// The case's edit journal, replayed after loading.
    pub journal: Option<PathBuf>,
    /// Loose files: the folder of their working copy (`mask.nii.gz`, the state autosaved since
    /// the user's last Save, and the journal); never the user's own folder.
    pub working_copy: Option<PathBuf>,
    /// Loose files: read the label names kept beside the label file
    /// ([`crate::project::label_table_beside`]); a project's are in its manifest.
    pub label_names_beside: bool,
}

impl CaseSource {
    /// The files of a project's case.
    pub fn from_project(project: &Project, case: &Case) -> Self {
        Self {
            case_id: case.id.clone(),
            sequences: case
                .sequences
                .iter()
                .map(|s| (s.name.clone(), project.resolve(&s.path)))
                .collect(),
            reference: case.reference_mask.as_deref().map(|p| project.resolve(p)),
            predicted: case.predicted_mask.as_deref().map(|p| project.resolve(p)),
            journal: Some(crate::project::journal::journal_path(project, &case.id)),
            working_copy: None,
            label_names_beside: false,
        }
    }

    /// Loose files: images named after their file names, and an optional label file.
    pub fn from_files(images: &[PathBuf], mask: Option<PathBuf>) -> Self {
        let name_of = |p: &Path| {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| p.display().to_string());
            crate::volume::volume_stem(&name).to_string()
        };
        Self {
            case_id: images
                .first()
                .map(|p| name_of(p))
                .unwrap_or_else(|| "files".into()),
            sequences: images
                .iter()
                .map(|p| (SequenceName::from(name_of(p)), p.clone()))
                .collect(),
            reference: mask,
            predicted: None,
            journal: None,
            working_copy: None,
            label_names_beside: true,
        }
    }

    /// Loose files with their working copy in a folder of `root` named after the mask (else
    /// the first image): its path, made absolute, picks the folder, so the same files always
    /// find their unsaved edits again.
    pub fn with_working_copy(mut self, root: &Path) -> Self {
        let key_file = self
            .reference
            .clone()
            .or_else(|| self.sequences.first().map(|(_, p)| p.clone()));
        if let Some(file) = key_file {
            let dir = root.join(super::persist::working_copy_name(&file));
            self.journal = Some(dir.join(super::persist::WORKING_JOURNAL));
            self.working_copy = Some(dir);
        }
        self
    }

    /// Number of files to read.
    pub fn file_count(&self) -> usize {
        self.sequences.len()
            + usize::from(self.reference.is_some())
            + usize::from(self.predicted.is_some())
    }
}

/// One loaded sequence.
#[derive(Debug, Clone)]
pub struct LoadedImage {
    /// Which sequence.
    pub name: SequenceName,
    /// Its intensities (first frame of a 4D file).
    pub volume: Volume<f32>,
    /// A 4D sequence's whole series and its summaries (`None` for a 3D image).
    pub series: Option<Arc<LoadedSeries>>,
}

/// A 4D sequence kept whole on the CPU (the GPU holds one frame or summary at a time).
#[derive(Debug)]
pub struct LoadedSeries {
    /// Every frame, x fastest, then y, z, t.
    pub frames: Volume<f32>,
    /// Temporal mean and standard deviation per voxel.
    pub summary: TemporalSummary,
}

/// A loaded case, ready to display.
#[derive(Debug, Clone)]
pub struct LoadedCase {
    /// The case's name.
    pub case_id: String,
    /// The sequences (at least one).
    pub images: Vec<LoadedImage>,
    /// The reference mask (an empty one on the first image's grid when the case had none).
    pub reference: Option<Volume<u8>>,
    /// Whether the reference mask was read from a file (false: made empty here).
    pub reference_on_disk: bool,
    /// Loose files: the reference is the working copy's (edits not yet saved to the user's
    /// file, from an earlier session).
    pub from_working_copy: bool,
    /// The predicted mask.
    pub predicted: Option<Volume<u8>>,
    /// Edits recovered from the journal (already applied to the reference mask; record edits
    /// are for the caller to apply to the case).
    pub recovered: Option<Recovered>,
    /// Loose files: the label names found beside the label file (where), or why they could
    /// not be read.
    pub label_names: Option<Result<(PathBuf, crate::project::LabelTable), String>>,
}

/// What the journal held when the case was opened.
#[derive(Debug, Clone, PartialEq)]
pub struct Recovered {
    /// All edits replayed (mask and record).
    pub edits: Vec<crate::edit::Edit>,
    /// Why reading stopped early or edits were skipped.
    pub problem: Option<String>,
}

/// What a loading job reports.
#[derive(Debug)]
pub enum LoadMessage {
    /// `done` of `total` files read; `file` is being read next.
    Progress {
        /// Files read.
        done: usize,
        /// Files in all.
        total: usize,
        /// The file being read.
        file: PathBuf,
    },
    /// Everything loaded.
    Done(Box<LoadedCase>),
    /// A file could not be used: the message names it and the problem.
    Failed(String),
}

/// Read a label mask: uint8, or whole numbers 0..=255 in another type (its first frame).
pub fn read_mask(path: &Path) -> Result<Volume<u8>, String> {
    let any = read_volume(path).map_err(|e| e.to_string())?;
    any.into_label_mask()
        .map(first_frame)
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn first_frame<T: Copy>(v: Volume<T>) -> Volume<T> {
    if v.dims()[3] > 1 {
        v.frame(0).unwrap_or(v)
    } else {
        v
    }
}

/// Read a case's files (sending progress before each), replay its journal into the reference
/// mask (an empty one when there is none) and return it.
fn load(source: &CaseSource, tx: &Sender<LoadMessage>) -> Result<LoadedCase, String> {
    if source.sequences.is_empty() {
        return Err(format!("case {} has no image to show", source.case_id));
    }
    let total = source.file_count();
    let mut done = 0;
    let progress = |file: &Path, done: &mut usize| {
        let _ = tx.send(LoadMessage::Progress {
            done: *done,
            total,
            file: file.to_path_buf(),
        });
        *done += 1;
    };
    let mut images = Vec::with_capacity(source.sequences.len());
    for (name, path) in &source.sequences {
        progress(path, &mut done);
        images.push(load_image(name, path)?);
    }
    let mut mask = |p: &Option<PathBuf>| -> Result<Option<Volume<u8>>, String> {
        match p {
            Some(path) => {
                progress(path, &mut done);
                read_mask(path).map(Some)
            }
            None => Ok(None),
        }
    };
    let working = source
        .working_copy
        .as_ref()
        .map(|d| d.join(super::persist::WORKING_MASK))
        .filter(|p| p.is_file());
    let from_working_copy = working.is_some();
    let reference = match working {
        Some(w) => mask(&Some(w))?,
        None => mask(&source.reference)?,
    };
    let predicted = mask(&source.predicted)?;
    let reference_on_disk = reference.is_some();
    let mut reference = match reference {
        Some(r) => r,
        None => empty_mask_like(&images[0].volume)?,
    };
    let recovered = replay_journal(source.journal.as_deref(), &mut reference)?;
    let label_names = match (&source.reference, source.label_names_beside) {
        (Some(file), true) => crate::project::label_table_beside(file),
        _ => None,
    };
    Ok(LoadedCase {
        case_id: source.case_id.clone(),
        images,
        reference: Some(reference),
        reference_on_disk,
        from_working_copy,
        predicted,
        recovered,
        label_names,
    })
}

/// Read one sequence as f32; a 4D one keeps its first frame as the volume and its whole series
/// (with temporal mean and SD) beside it.
fn load_image(name: &SequenceName, path: &Path) -> Result<LoadedImage, String> {
    let all = read_volume(path).map_err(|e| e.to_string())?.to_f32();
    let (volume, series) = if all.dims()[3] > 1 {
        let summary = temporal_summary(&all).map_err(|e| format!("{}: {e}", path.display()))?;
        let first = all
            .frame(0)
            .ok_or_else(|| format!("{}: the series has no frames", path.display()))?;
        (
            first,
            Some(Arc::new(LoadedSeries {
                frames: all,
                summary,
            })),
        )
    } else {
        (all, None)
    };
    Ok(LoadedImage {
        name: name.clone(),
        volume,
        series,
    })
}

/// An all-background label mask on the grid of `first`.
fn empty_mask_like(first: &Volume<f32>) -> Result<Volume<u8>, String> {
    let [nx, ny, nz] = first.dims3();
    Volume::filled([nx, ny, nz, 1], *first.affine(), 0u8).map_err(|e| e.to_string())
}

/// Replay the edit journal at `journal` (if any) into `reference`; what it recovered, if
/// anything (edits or a problem with the journal).
fn replay_journal(
    journal: Option<&Path>,
    reference: &mut Volume<u8>,
) -> Result<Option<Recovered>, String> {
    match journal {
        Some(path) => {
            let (edits, problem) =
                crate::project::journal::replay_file(path, reference).map_err(|e| e.to_string())?;
            Ok((!edits.is_empty() || problem.is_some()).then_some(Recovered { edits, problem }))
        }
        None => Ok(None),
    }
}

/// Start loading a case in a background thread, once the stores in `wait_for` have stopped;
/// `wake` is called after each message (e.g. to request a repaint).
pub fn spawn_load(
    source: CaseSource,
    wait_for: Vec<crate::project::store::ExitSignal>,
    wake: impl Fn() + Send + 'static,
) -> Receiver<LoadMessage> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        // Saves of a case being closed finish before any file is read again.
        for s in &wait_for {
            s.wait();
        }
        let result = super::jobs::catch_worker("loading the case", || load(&source, &tx));
        let msg = match result {
            Ok(Ok(case)) => LoadMessage::Done(Box::new(case)),
            Ok(Err(e)) => LoadMessage::Failed(e),
            Err(e) => LoadMessage::Failed(e.to_string()),
        };
        let _ = tx.send(msg);
        wake();
    });
    rx
}

/// Per-case numbers for the worklist.
#[derive(Debug, Clone, PartialEq)]
pub struct CaseStats {
    /// The case.
    pub case_id: String,
    /// Dice of predicted vs reference foreground (all labels > 0), when both masks exist.
    pub dice: Option<f64>,
    /// Labelled volume of the reference mask (else the predicted one), in mm³.
    pub volume_mm3: Option<f64>,
    /// A file that could not be read, named with its problem.
    pub error: Option<String>,
}

/// Dice of two masks' foregrounds (voxels > 0), on the same grid; `None` if the grids differ
/// or both are empty.
pub fn foreground_dice(a: &Volume<u8>, b: &Volume<u8>) -> Option<f64> {
    if a.dims3() != b.dims3() {
        return None;
    }
    let (mut both, mut na, mut nb) = (0u64, 0u64, 0u64);
    for (x, y) in a.data().iter().zip(b.data()) {
        let (x, y) = (*x > 0, *y > 0);
        na += u64::from(x);
        nb += u64::from(y);
        both += u64::from(x && y);
    }
    (na + nb > 0).then(|| 2.0 * both as f64 / (na + nb) as f64)
}

/// Labelled (non-zero) volume of a mask in mm³.
pub fn labelled_volume_mm3(mask: &Volume<u8>) -> f64 {
    mask.data().iter().filter(|v| **v > 0).count() as f64 * mask.voxel_volume_mm3()
}

fn stats_of(project: &Project, case: &Case) -> CaseStats {
    let read = |rel: &Option<String>| -> Result<Option<Volume<u8>>, String> {
        rel.as_deref()
            .map(|r| read_mask(&project.resolve(r)))
            .transpose()
    };
    let both = read(&case.reference_mask).and_then(|r| Ok((r, read(&case.predicted_mask)?)));
    match both {
        Ok((reference, predicted)) => CaseStats {
            case_id: case.id.clone(),
            dice: match (&reference, &predicted) {
                (Some(r), Some(p)) => foreground_dice(r, p),
                _ => None,
            },
            volume_mm3: reference
                .as_ref()
                .or(predicted.as_ref())
                .map(labelled_volume_mm3),
            error: None,
        },
        Err(e) => CaseStats {
            case_id: case.id.clone(),
            dice: None,
            volume_mm3: None,
            error: Some(e),
        },
    }
}

/// Compute every case's statistics in a background thread, one message per case.
pub fn spawn_stats(project: Project, wake: impl Fn() + Send + 'static) -> Receiver<CaseStats> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for case in &project.manifest.cases {
            if tx.send(stats_of(&project, case)).is_err() {
                return;
            }
            wake();
        }
    });
    rx
}
