//! The window's commands: what its panels, keys and dialogs ask for. Those that change the
//! project or the open case become session inputs (`Session::apply`, then `sync`); the rest
//! change UI-only state (worklist sorting and filters, dialogs, panels shown) or start a worker
//! (reading a project or a case, a file dialog) whose answer comes back as a command or input.
//!
//! Invariants: each file dialog answers through its own channel, so two open dialogs never take
//! each other's answer; no command reads or writes a file on the UI thread.

use super::{looks_like_mask, Loading, MriloopApp};
use crate::project::{Project, ReviewStatus};
use crate::session::load::{spawn_load, CaseSource};
use crate::session::{EditCommand, Input, ViewCommand};
use std::path::PathBuf;

/// Worklist columns to sort by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortKey {
    /// Project order.
    Case,
    /// Review status.
    Status,
    /// Predicted-vs-reference Dice.
    Dice,
    /// Labelled volume.
    Volume,
    /// Probability of the predicted class.
    Confidence,
    /// The model's uncertainty score.
    Uncertainty,
}

/// Worklist sorting and filtering.
#[derive(Debug, Clone, PartialEq)]
pub struct WorklistView {
    /// Sort column.
    pub sort: SortKey,
    /// Reverse order.
    pub descending: bool,
    /// Status filter.
    pub status: Option<ReviewStatus>,
    /// Case id filter.
    pub text: String,
}

impl Default for WorklistView {
    fn default() -> Self {
        Self {
            sort: SortKey::Case,
            descending: false,
            status: None,
            text: String::new(),
        }
    }
}

/// Every change the UI can ask for. Applied by `MriloopApp::apply`, once per frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// What the views show (cursor, slices, zoom, windows, overlays, layout).
    View(ViewCommand),
    /// Open case `i` of the project.
    OpenCase(usize),
    /// Open the next (+1) or previous (-1) unreviewed case in worklist order.
    NextUnreviewed(i32),
    /// Open a project folder.
    OpenProject(PathBuf),
    /// Open the built-in demo (copied to the user's data folder first, by a worker).
    OpenDemo,
    /// Open loose files.
    OpenFiles {
        /// Image files.
        images: Vec<PathBuf>,
        /// Label file.
        mask: Option<PathBuf>,
    },
    /// Ask for a project folder with a file dialog.
    OpenProjectDialog,
    /// Ask for image files with a file dialog.
    OpenFilesDialog,
    /// Ask where to save the open loose files' mask (Save As).
    SaveAsDialog,
    /// Ask where to save the 3D view (this wide for its height) as PNG.
    Save3dPngDialog(f32),
    /// Save the 3D view (this wide for its height) as PNG here.
    Save3dPng(PathBuf, f32),
    /// Sort the worklist (a second click on the same key reverses it).
    SortWorklist(SortKey),
    /// Show only cases with this status (None: all).
    FilterStatus(Option<ReviewStatus>),
    /// Show only cases whose id contains this text.
    FilterText(String),
    /// Close the error dialog.
    DismissError,
    /// Close the information dialog.
    DismissInfo,
    /// Show or hide the shortcuts panel.
    ToggleHelp,
    /// Closing with unsaved edits: save them, throw them away, or stay.
    CloseAnswer(CloseAnswer),
    /// A correction (tools, masks, class, status, note, undo, save).
    Edit(EditCommand),
    /// Training, model versions, re-inference, next case, cohort.
    Train(super::training::TrainCommand),
    /// The Experiment panel.
    Experiment(super::experiment::ExperimentCommand),
    /// The time-series panel of a 4D case.
    Time(crate::session::TimeCommand),
    /// The DICOM import dialog.
    Dicom(super::dicom::DicomCommand),
    /// A message from a UI-side worker.
    Error(String),
    /// Apply this command once a case is open and loaded (start-up options such as
    /// `mriloop open --at`).
    WhenOpen(Box<Command>),
}

/// The user's answer when closing with unsaved edits of loose files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseAnswer {
    /// Save into the user's files, then close.
    Save,
    /// Close without saving (the working copy is removed).
    Discard,
    /// Do not close.
    Cancel,
}

impl MriloopApp {
    /// Apply every queued command; the one place state changes.
    pub(super) fn apply_all(&mut self) {
        if self.session.open_case().is_some() && !self.is_loading() {
            let ready = std::mem::take(&mut self.when_open);
            self.commands.extend(ready);
        }
        let cmds = std::mem::take(&mut self.commands);
        for cmd in cmds {
            self.apply(cmd);
        }
    }

    /// Give an input to the session; what changed is mirrored on the GPU once, at the frame's
    /// GPU step.
    pub(super) fn input(&mut self, input: Input) {
        let changes = self.session.apply(input);
        self.changes.merge(changes);
    }

    /// Apply one command.
    pub fn apply(&mut self, cmd: Command) {
        match cmd {
            Command::View(v) => self.input(Input::View(v)),
            Command::Edit(e) => self.input(Input::Edit(e)),
            Command::Time(t) => self.input(Input::Time(t)),
            Command::OpenCase(i) => self.open_case_at(i),
            Command::NextUnreviewed(dir) => {
                if let Some(i) = self.next_unreviewed(dir) {
                    self.open_case_at(i);
                }
            }
            Command::OpenProject(path) => self.open_project(path),
            Command::OpenDemo => self.open_demo(),
            Command::OpenFiles { images, mask } => self.open_files(images, mask),
            Command::OpenProjectDialog => self.ask(|| {
                rfd::FileDialog::new()
                    .set_title("Open an mriloop project folder")
                    .pick_folder()
                    .map(Command::OpenProject)
            }),
            Command::OpenFilesDialog => self.ask(|| {
                let files = rfd::FileDialog::new()
                    .set_title("Open images (a label file is recognised by its name)")
                    .add_filter(
                        "NIfTI, MGH, NRRD",
                        &["nii", "gz", "hdr", "img", "mgz", "mgh", "nrrd", "nhdr"],
                    )
                    .pick_files()?;
                let (masks, images): (Vec<PathBuf>, Vec<PathBuf>) =
                    files.into_iter().partition(|p| looks_like_mask(p));
                Some(Command::OpenFiles {
                    images,
                    mask: masks.into_iter().next(),
                })
            }),
            Command::SaveAsDialog => self.ask_save_as(),
            Command::Save3dPngDialog(aspect) => self.ask_save_3d_png(aspect),
            Command::Save3dPng(path, aspect) => self.save_3d_png(path, aspect),
            Command::CloseAnswer(a) => self.close_answer(a),
            Command::Train(t) => self.apply_train(t),
            Command::Experiment(e) => self.apply_experiment(e),
            Command::Dicom(d) => self.apply_dicom(d),
            other => self.apply_ui(other),
        }
    }

    /// Commands that change only what the window shows around the session.
    fn apply_ui(&mut self, cmd: Command) {
        match cmd {
            Command::SortWorklist(k) => {
                if self.worklist.sort == k {
                    self.worklist.descending = !self.worklist.descending;
                } else {
                    self.worklist.sort = k;
                    self.worklist.descending = false;
                }
            }
            Command::FilterStatus(s) => self.worklist.status = s,
            Command::FilterText(t) => self.worklist.text = t,
            Command::DismissError => self.dialogs.error = None,
            Command::DismissInfo => self.dialogs.info = None,
            Command::ToggleHelp => self.dialogs.show_help ^= true,
            Command::Error(e) => self.dialogs.error = Some(e),
            Command::WhenOpen(c) => self.when_open.push(*c),
            _ => {}
        }
    }

    /// Run `dialog` (a blocking file dialog) in a thread; its answer comes back as a command.
    pub(super) fn ask(&mut self, dialog: impl FnOnce() -> Option<Command> + Send + 'static) {
        let (tx, rx) = std::sync::mpsc::channel();
        let wake = self.wake();
        std::thread::spawn(move || {
            if let Some(cmd) = dialog() {
                let _ = tx.send(cmd);
            }
            wake();
        });
        self.answers.push(rx);
    }

    fn ask_save_as(&mut self) {
        let Some(loose) = self.session.open_case().and_then(|o| o.edits.loose.clone()) else {
            return;
        };
        self.ask(move || {
            let mut dialog = rfd::FileDialog::new()
                .set_title("Save the mask as")
                .add_filter(
                    "NIfTI, MGH, NRRD",
                    &["nii", "gz", "hdr", "img", "mgz", "mgh", "nrrd", "nhdr"],
                );
            if let Some(dir) = loose.mask_path.parent() {
                dialog = dialog.set_directory(dir);
            }
            if let Some(name) = loose.mask_path.file_name() {
                dialog = dialog.set_file_name(name.to_string_lossy());
            }
            let path = dialog.save_file()?;
            Some(Command::Edit(EditCommand::SaveAs(path)))
        });
    }

    fn close_answer(&mut self, answer: CloseAnswer) {
        self.dialogs.confirm_close = false;
        match answer {
            CloseAnswer::Cancel => return,
            CloseAnswer::Save => self.input(Input::Edit(EditCommand::Save)),
            CloseAnswer::Discard => self.input(Input::DiscardLooseEdits),
        }
        self.dialogs.close_confirmed = true;
        self.ctx.send_viewport_cmd(egui::ViewportCommand::Close);
    }

    fn open_case_at(&mut self, i: usize) {
        // The open case is already in memory (and its journal may be mid-write).
        let already_open = self.loading.is_none()
            && self
                .session
                .open_case()
                .is_some_and(|o| o.case_index == Some(i));
        if already_open {
            return;
        }
        let source = self
            .session
            .project()
            .and_then(|p| Some(CaseSource::from_project(p, p.manifest.cases.get(i)?)));
        if let Some(source) = source {
            self.start_loading(source, Some(i));
        }
    }

    fn open_project(&mut self, path: PathBuf) {
        let (tx, rx) = std::sync::mpsc::channel();
        let wake = self.wake();
        std::thread::spawn(move || {
            let result = crate::session::jobs::catch_worker("opening the project", || {
                Project::open(&path).map_err(|e| e.to_string())
            });
            let _ = tx.send(result.unwrap_or_else(|e| Err(e.to_string())));
            wake();
        });
        self.project_rx = Some(rx);
    }

    /// The demo is copied into the user's data folder (never edited where it ships), then
    /// opened.
    fn open_demo(&mut self) {
        self.ask(|| {
            let dir = crate::project::demo::user_demo_dir();
            Some(match crate::project::demo::demo_project_copy(&dir) {
                Ok(dir) => Command::OpenProject(dir),
                Err(e) => Command::Error(format!("{}: cannot copy the demo: {e}", dir.display())),
            })
        });
    }

    fn open_files(&mut self, images: Vec<PathBuf>, mask: Option<PathBuf>) {
        if images.is_empty() {
            self.dialogs.error = Some("no image file given".into());
            return;
        }
        let source =
            CaseSource::from_files(&images, mask).with_working_copy(self.session.loose_root());
        self.start_loading(source, None);
    }

    pub(super) fn start_loading(&mut self, source: CaseSource, case_index: Option<usize>) {
        let total = source.file_count();
        let wait_for = self.session.closing_signals();
        self.loading = Some(Loading {
            rx: spawn_load(source.clone(), wait_for, self.wake()),
            source,
            case_index,
            done: 0,
            total,
            file: None,
        });
    }

    /// Project case indices in worklist order (sorted and filtered).
    pub fn worklist_order(&self) -> Vec<usize> {
        let Some(project) = self.session.project() else {
            return Vec::new();
        };
        let cases = &project.manifest.cases;
        let w = &self.worklist;
        let mut order: Vec<usize> = (0..cases.len())
            .filter(|i| {
                let c = &cases[*i];
                w.status.is_none_or(|s| c.review == s)
                    && (w.text.is_empty() || c.id.contains(&w.text))
            })
            .collect();
        let key = |i: &usize| -> f64 {
            let c = &cases[*i];
            let st = self.stats.get(&c.id);
            match w.sort {
                SortKey::Case => *i as f64,
                SortKey::Status => match c.review {
                    ReviewStatus::Unreviewed => 0.0,
                    ReviewStatus::InProgress => 1.0,
                    ReviewStatus::NeedsSecondLook => 2.0,
                    ReviewStatus::Reviewed => 3.0,
                },
                SortKey::Dice => st.and_then(|s| s.dice).unwrap_or(-1.0),
                SortKey::Volume => st.and_then(|s| s.volume_mm3).unwrap_or(-1.0),
                SortKey::Uncertainty => c.uncertainty.map_or(-1.0, |u| f64::from(u.score())),
                SortKey::Confidence => c
                    .predicted_class
                    .as_ref()
                    .and_then(|p| p.iter().copied().reduce(f32::max))
                    .map_or(-1.0, f64::from),
            }
        };
        order.sort_by(|a, b| key(a).total_cmp(&key(b)).then(a.cmp(b)));
        if w.descending {
            order.reverse();
        }
        order
    }

    /// The first case to open in a project: its first unreviewed one, else its first.
    pub(super) fn first_case_of(p: &Project) -> Option<usize> {
        let cases = &p.manifest.cases;
        cases
            .iter()
            .position(|c| c.review != ReviewStatus::Reviewed)
            .or((!cases.is_empty()).then_some(0))
    }

    /// The next (`dir` > 0) or previous unreviewed case after the open one, in worklist order.
    fn next_unreviewed(&self, dir: i32) -> Option<usize> {
        let p = self.session.project()?;
        let order = self.worklist_order();
        let current = self
            .loading
            .as_ref()
            .and_then(|l| l.case_index)
            .or(self.session.open_case().and_then(|o| o.case_index));
        let pos = current.and_then(|c| order.iter().position(|i| *i == c));
        let n = order.len() as i64;
        for step in 1..=n {
            let at = match pos {
                Some(p) => (p as i64 + step * i64::from(dir.signum())).rem_euclid(n),
                None => step - 1,
            };
            let i = order[at as usize];
            if p.manifest.cases[i].review != ReviewStatus::Reviewed && Some(i) != current {
                return Some(i);
            }
        }
        None
    }
}
