//! File → Import DICOM: choose a folder, see its series (description, modality, size, voxel
//! size, files) and what could not be imported with the reason, tick the series to keep, and
//! import them — into a case of the open project as named sequences, or, with no project open,
//! as NIfTI files beside the folder (`<folder>_nifti/`) that then open as loose images.
//!
//! Invariants: scanning and writing run in worker threads reporting over channels drained once
//! per frame (`poll_dicom`); the written sequences join the manifest through the session
//! (`Input::SequencesImported`), which saves it like every other change; nothing in the DICOM
//! folder is written.

use super::{Command, MriloopApp};
use crate::project::dicom_import::{form_of, sequence_names, write_case_files, write_series_files};
use crate::project::{InputForm, SequenceFile};
use crate::volume::dicom::{b_values_label, scan_dir, DicomScan};
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, TryRecvError};

/// Import-dialog commands.
#[derive(Debug, Clone, PartialEq)]
pub enum DicomCommand {
    /// Ask for a folder with a dialog.
    ChooseFolderDialog,
    /// Scan this folder (in the background) and show the dialog.
    Scan(PathBuf),
    /// Tick or untick series `k` of the listing.
    Choose(usize, bool),
    /// The case the series go to (project open).
    SetCase(String),
    /// Import the ticked series.
    Import,
    /// Close the dialog.
    Close,
}

enum Imported {
    /// Written into the project's case folder: add to the manifest.
    Case {
        case_id: String,
        form: InputForm,
        files: Vec<SequenceFile>,
    },
    /// Written as loose NIfTI files: open them.
    Files(Vec<Vec<PathBuf>>),
}

/// The import dialog's state.
#[derive(Default)]
pub struct DicomState {
    /// Whether the dialog is shown.
    pub show: bool,
    /// The folder scanned.
    pub dir: Option<PathBuf>,
    /// What the folder held (once scanned).
    pub scan: Option<DicomScan>,
    /// Which series are ticked.
    pub chosen: Vec<bool>,
    /// The case the series go to.
    pub case_id: String,
    /// What happened last, in words.
    pub status: String,
    scan_rx: Option<Receiver<Result<DicomScan, String>>>,
    import_rx: Option<Receiver<Result<Imported, String>>>,
}

impl DicomState {
    /// Whether a scan or an import is running.
    pub fn busy(&self) -> bool {
        self.scan_rx.is_some() || self.import_rx.is_some()
    }
}

/// A case id from a folder name: letters, digits, `_`, `-` and `.` kept, the rest `_`.
fn case_id_from(dir: &std::path::Path) -> String {
    let name = dir
        .file_name()
        .map_or_else(|| "dicom".into(), |n| n.to_string_lossy().into_owned());
    let id: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_-.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let id = id.trim_start_matches('.').to_string();
    if id.is_empty() {
        "dicom".into()
    } else {
        id
    }
}

impl MriloopApp {
    /// The import dialog's state.
    pub fn dicom(&self) -> &DicomState {
        &self.dicom
    }

    /// Apply an import-dialog command.
    pub(super) fn apply_dicom(&mut self, cmd: DicomCommand) {
        match cmd {
            DicomCommand::ChooseFolderDialog => self.ask(|| {
                let dir = rfd::FileDialog::new()
                    .set_title("Import DICOM: choose the folder of a study or series")
                    .pick_folder()?;
                Some(Command::Dicom(DicomCommand::Scan(dir)))
            }),
            DicomCommand::Scan(dir) => {
                let (tx, rx) = channel();
                let (wake, d) = (self.wake(), dir.clone());
                std::thread::spawn(move || {
                    let _ = tx.send(scan_dir(&d).map_err(|e| e.to_string()));
                    wake();
                });
                self.dicom = DicomState {
                    show: true,
                    case_id: case_id_from(&dir),
                    status: format!("reading {} …", dir.display()),
                    dir: Some(dir),
                    scan_rx: Some(rx),
                    ..DicomState::default()
                };
            }
            DicomCommand::Choose(k, on) => {
                if let Some(c) = self.dicom.chosen.get_mut(k) {
                    *c = on;
                }
            }
            DicomCommand::SetCase(id) => self.dicom.case_id = id,
            DicomCommand::Close => {
                if !self.dicom.busy() {
                    self.dicom = DicomState::default();
                }
            }
            DicomCommand::Import => self.start_dicom_import(),
        }
    }

    fn start_dicom_import(&mut self) {
        let (Some(scan), Some(dir)) = (&self.dicom.scan, &self.dicom.dir) else {
            return;
        };
        if self.dicom.busy() {
            return;
        }
        let picked: Vec<_> = scan
            .series
            .iter()
            .zip(&self.dicom.chosen)
            .filter(|(_, on)| **on)
            .map(|(s, _)| s.clone())
            .collect();
        if picked.is_empty() {
            self.dicom.status = "tick at least one series".into();
            return;
        }
        let (tx, rx) = channel();
        let wake = self.wake();
        let form = form_of(&picked.iter().collect::<Vec<_>>());
        match self.session.project() {
            Some(p) => {
                let case_id = self.dicom.case_id.trim().to_string();
                let taken = sequence_names(p, &case_id);
                let root = p.root().to_path_buf();
                std::thread::spawn(move || {
                    let refs: Vec<_> = picked.iter().collect();
                    let r = write_case_files(&root, &case_id, &taken, &refs)
                        .map(|files| Imported::Case {
                            case_id,
                            form,
                            files,
                        })
                        .map_err(|e| e.to_string());
                    let _ = tx.send(r);
                    wake();
                });
            }
            None => {
                let name = dir
                    .file_name()
                    .map_or_else(|| "dicom".into(), |n| n.to_string_lossy().into_owned());
                let out = dir.with_file_name(format!("{name}_nifti"));
                std::thread::spawn(move || {
                    let refs: Vec<_> = picked.iter().collect();
                    let r = write_series_files(&out, &refs)
                        .map(Imported::Files)
                        .map_err(|e| e.to_string());
                    let _ = tx.send(r);
                    wake();
                });
            }
        }
        self.dicom.status = "importing …".into();
        self.dicom.import_rx = Some(rx);
    }

    /// Once per frame: take a finished scan or import.
    pub(super) fn poll_dicom(&mut self) {
        if let Some(rx) = &self.dicom.scan_rx {
            let done = match rx.try_recv() {
                Ok(r) => Some(r),
                Err(TryRecvError::Empty) => None,
                Err(TryRecvError::Disconnected) => {
                    Some(Err("the scan stopped unexpectedly".into()))
                }
            };
            if let Some(r) = done {
                self.dicom.scan_rx = None;
                match r {
                    Ok(scan) => {
                        self.dicom.status = format!(
                            "{} files: {} series, {} not imported",
                            scan.files_seen,
                            scan.series.len(),
                            scan.problems.len()
                        );
                        self.dicom.chosen = vec![true; scan.series.len()];
                        self.dicom.scan = Some(scan);
                    }
                    Err(e) => self.dicom.status = e,
                }
            }
        }
        let Some(rx) = &self.dicom.import_rx else {
            return;
        };
        let done = match rx.try_recv() {
            Ok(r) => r,
            Err(TryRecvError::Empty) => return,
            Err(TryRecvError::Disconnected) => Err("the import stopped unexpectedly".into()),
        };
        self.dicom.import_rx = None;
        match done {
            Ok(Imported::Case {
                case_id,
                form,
                files,
            }) => {
                self.dicom = DicomState::default();
                self.input(crate::session::Input::SequencesImported {
                    case_id: case_id.clone(),
                    form,
                    files,
                });
                let index = self
                    .session
                    .project()
                    .and_then(|p| p.manifest.cases.iter().position(|c| c.id == case_id));
                if let Some(i) = index {
                    self.commands.push(Command::OpenCase(i));
                }
            }
            Ok(Imported::Files(written)) => {
                self.dialogs.info = Some(format!(
                    "Written as NIfTI: {}.",
                    written
                        .iter()
                        .flatten()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                let images = written.iter().filter_map(|f| f.first().cloned()).collect();
                self.dicom = DicomState::default();
                self.commands
                    .push(Command::OpenFiles { images, mask: None });
            }
            Err(e) => self.dicom.status = format!("import failed: {e}"),
        }
    }
}

/// The import dialog.
pub fn dicom_window(ctx: &egui::Context, app: &MriloopApp, out: &mut Vec<Command>) {
    let d = app.dicom();
    let mut open = true;
    egui::Window::new("Import DICOM")
        .open(&mut open)
        .default_width(620.0)
        .show(ctx, |ui| {
            if let Some(dir) = &d.dir {
                ui.label(format!("Folder: {}", dir.display()));
            }
            ui.horizontal(|ui| {
                if d.busy() {
                    ui.spinner();
                }
                ui.label(&d.status);
            });
            let Some(scan) = &d.scan else {
                return;
            };
            series_table(ui, d, scan, out);
            problems_list(ui, scan);
            ui.separator();
            let any = d.chosen.iter().any(|c| *c);
            destination(ui, app.project(), d, out);
            if ui
                .add_enabled(any && !d.busy(), egui::Button::new("Import"))
                .clicked()
            {
                push_dicom(out, DicomCommand::Import);
            }
        });
    if !open {
        push_dicom(out, DicomCommand::Close);
    }
}

/// Emit an import-dialog command.
fn push_dicom(out: &mut Vec<Command>, c: DicomCommand) {
    out.push(Command::Dicom(c));
}

/// The series found, one row each with a tick to keep it.
fn series_table(ui: &mut egui::Ui, d: &DicomState, scan: &DicomScan, out: &mut Vec<Command>) {
    egui::Grid::new("dicom series")
        .striped(true)
        .show(ui, |ui| {
            for h in [
                "",
                "series",
                "modality",
                "voxels",
                "mm",
                "files",
                "diffusion",
            ] {
                ui.strong(h);
            }
            ui.end_row();
            for (k, s) in scan.series.iter().enumerate() {
                let mut on = d.chosen.get(k).copied().unwrap_or(false);
                if ui.checkbox(&mut on, "").changed() {
                    push_dicom(out, DicomCommand::Choose(k, on));
                }
                ui.label(&s.description);
                ui.label(&s.modality);
                let [nx, ny, nz, nt] = s.volume.dims();
                ui.label(if nt > 1 {
                    format!("{nx}x{ny}x{nz} x {nt}")
                } else {
                    format!("{nx}x{ny}x{nz}")
                });
                let sp = s.volume.spacing_mm();
                ui.label(format!("{:.2}x{:.2}x{:.2}", sp[0], sp[1], sp[2]));
                ui.label(s.files.len().to_string());
                ui.label(b_values_label(&s.diffusion));
                ui.end_row();
            }
        });
}

/// What could not be imported, with the reason (open by default when no series was found).
fn problems_list(ui: &mut egui::Ui, scan: &DicomScan) {
    if !scan.problems.is_empty() {
        egui::CollapsingHeader::new(format!("Not imported ({})", scan.problems.len()))
            .default_open(scan.series.is_empty())
            .show(ui, |ui| {
                egui::ScrollArea::vertical()
                    .max_height(160.0)
                    .show(ui, |ui| {
                        for p in &scan.problems {
                            ui.label(p.to_string());
                        }
                    });
            });
    }
}

/// Where the series go: a case of the open project (its id edited here), else NIfTI files.
fn destination(
    ui: &mut egui::Ui,
    project: Option<&crate::project::Project>,
    d: &DicomState,
    out: &mut Vec<Command>,
) {
    match project {
        Some(p) => {
            ui.horizontal(|ui| {
                ui.label(format!("Add to case of {}:", p.manifest.name));
                let mut id = d.case_id.clone();
                if ui.text_edit_singleline(&mut id).changed() {
                    push_dicom(out, DicomCommand::SetCase(id));
                }
                if p.manifest.case(d.case_id.trim()).is_some() {
                    ui.label("(existing case: series are added)");
                }
            });
        }
        None => {
            ui.label("No project is open: the series are written as NIfTI files beside the folder and opened.");
        }
    }
}
