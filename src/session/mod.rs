//! The logic tier: `Session` owns the open project and the open case (its volumes, view state,
//! masks, agreement, undo stack and journal) and is the one place they change. Every change — a
//! user command or a worker's event (a case loaded, a run finished, a re-inference result, a
//! store report, a DICOM import) — is an `Input` given to `Session::apply`, which returns the
//! `Changes` the window must mirror (mask sub-boxes to upload, images rewritten, colours,
//! messages). No egui and no wgpu here: the window reads `&Session`, emits inputs, and applies
//! the returned `Changes` to the GPU once per frame; tests and scripts drive the same tier
//! headless.
//!
//! Invariants: no mask or manifest is changed outside `apply`; a loose file (not in a project)
//! is never written except by an explicit Save — its edits are journaled into a working copy
//! under `loose_root`; a worker's failure reaches the caller as a typed `WorkerError`.

pub mod edit;
pub mod jobs;
pub mod load;
mod open;
mod persist;
pub mod prompt;
mod results;
pub mod script;
pub mod time;
pub mod view;

pub use edit::{CaseEdits, EditCommand, Tool, ToolState, AUTOSAVE_EVERY, AUTOSAVE_IDLE};
pub use jobs::{Waker, WorkerError};
pub use load::{CaseSource, LoadedCase, LoadedImage};
pub use time::{TimeCommand, TimeShown, TimeView};
pub use view::{Camera3d, Direction3d, ViewCommand, ViewerState};

use crate::edit::{Agreement, VoxelBox};
use crate::model::runs::CasePrediction;
use crate::project::store::CaseStore;
use crate::project::{LabelTable, ModelVersion, Project};
use crate::render::GridInfo;
use crate::volume::Volume;
use std::path::PathBuf;

/// One image of the open case with how it is shown: a sequence as loaded (a 4D series' shown
/// frame), or an image made in the window (a seed map).
#[derive(Debug, Clone)]
pub struct Layer {
    /// Its name (the sequence's).
    pub name: crate::project::SequenceName,
    /// Its values on the CPU: what is shown (for a 4D series, the shown frame or summary).
    pub volume: Volume<f32>,
    /// A 4D sequence's whole series and its summaries (`None` for a 3D image).
    pub series: Option<std::sync::Arc<load::LoadedSeries>>,
    /// Window, colour map and transparency.
    pub display: view::SequenceDisplay,
    /// Its grid and the intensity range its texture maps to 0..1.
    pub grid: GridInfo,
}

impl Layer {
    /// A loaded image as a layer with `display`.
    pub fn of(image: LoadedImage, display: view::SequenceDisplay) -> Self {
        let grid = GridInfo {
            affine: *image.volume.affine(),
            dims: image.volume.dims3(),
            value_range: crate::render::ImageTexture::range_of(
                &image.volume.data()[..image.volume.frame_len()],
            ),
        };
        Self {
            name: image.name,
            volume: image.volume,
            series: image.series,
            display,
            grid,
        }
    }
}

/// The open case: its layers and masks on the CPU (values under the cursor, edits) and the
/// view.
pub struct OpenCase {
    /// The case's name.
    pub case_id: String,
    /// Its images, in display order, each with its display settings and grid (at least one).
    pub layers: Vec<Layer>,
    /// The reference (corrected) mask: what the user edits.
    pub reference: Option<Volume<u8>>,
    /// The predicted mask.
    pub predicted: Option<Volume<u8>>,
    /// How many times the predicted mask was replaced since the case opened.
    pub predicted_revision: u64,
    /// What the views show.
    pub viewer: ViewerState,
    /// Index in the project, if it came from one.
    pub case_index: Option<usize>,
    /// The masks' grid.
    pub labels_grid: GridInfo,
    /// Undo, the stroke in progress, and saving.
    pub edits: CaseEdits,
    /// Live agreement of the prediction with the corrected mask (when both are on one grid).
    pub agreement: Option<Agreement>,
    /// Time points, summaries, time courses and seed map of a 4D case's series.
    pub time: Option<time::TimeView>,
}

impl OpenCase {
    /// Whether image `index` was made in the window (a seed map), not read from the case.
    pub fn is_derived_image(&self, index: usize) -> bool {
        self.time
            .as_ref()
            .and_then(|t| t.seed.as_ref())
            .is_some_and(|s| s.image == index)
    }

    /// Whether the case is loose files (not a project's case).
    pub fn is_loose(&self) -> bool {
        self.case_index.is_none()
    }
}

/// A message for the user.
#[derive(Debug, Clone, PartialEq)]
pub enum Message {
    /// Something to read and dismiss (e.g. edits recovered from a journal).
    Info(String),
    /// A passing notice (e.g. a save), for the status bar.
    Notice(String),
    /// Something went wrong: names the file or worker and the problem.
    Error(String),
}

/// Everything that can change the session: user commands and workers' events.
#[derive(Debug)]
pub enum Input {
    /// A view command (cursor, slices, zoom, windows, overlays, layout).
    View(ViewCommand),
    /// A correction (tools, masks, class, status, note, undo, save).
    Edit(EditCommand),
    /// A time-series command of a 4D case.
    Time(TimeCommand),
    /// A project was read (its first case is for the caller to load).
    ProjectOpened(Box<Project>),
    /// A case finished loading (`index`: its place in the project; `None`: loose files).
    CaseLoaded {
        /// The volumes.
        case: Box<LoadedCase>,
        /// Index in the project.
        index: Option<usize>,
        /// Where its files are.
        source: CaseSource,
    },
    /// Once per frame (seconds on any monotonic clock): autosave, playback, workers' reports.
    Tick {
        /// Now, in seconds.
        now_s: f64,
    },
    /// A training run ended with this version (`activate`: it finished and becomes active).
    RunFinished {
        /// The version.
        version: Box<ModelVersion>,
        /// Make it the active model.
        activate: bool,
    },
    /// Make a model version the active one.
    SetActiveModel(String),
    /// Re-inference predicted a case and wrote its files.
    Predicted(CasePrediction),
    /// A re-read predicted mask of the open case (from a worker).
    PredictionRead {
        /// Case id.
        case_id: String,
        /// The mask, or why it could not be read.
        mask: Result<Box<Volume<u8>>, String>,
    },
    /// Sequences were imported (DICOM) and their files written: they join case `case_id`
    /// (made if new), which is for the caller to open.
    SequencesImported {
        /// The case.
        case_id: String,
        /// Its input form.
        form: crate::project::InputForm,
        /// The files written.
        files: Vec<crate::project::SequenceFile>,
    },
    /// Save the manifest (a change made through another input, e.g. a new version).
    SaveManifest,
    /// Autosave now what an idle pause would (project: into it; loose files: working copy).
    Autosave,
    /// Close the open case: save it (project) and stop its store (`wait`: until done, at exit).
    CloseCase {
        /// Wait for the store to finish.
        wait: bool,
    },
    /// Close the project and the open case (loose files are opened next).
    CloseProject,
    /// Throw away the unsaved edits of the open loose files (their working copy).
    DiscardLooseEdits,
    /// A promptable model was read (or why not).
    PromptModel(Result<std::sync::Arc<prompt::PromptModel>, String>),
    /// The open case's channels on the promptable model's grid were read (or why not).
    PromptContext {
        /// The case.
        case_id: String,
        /// The context.
        context: Result<std::sync::Arc<crate::model::apply::PromptContext>, String>,
    },
    /// A prompt's answer: the object inside a window of the model's grid.
    PromptAnswer {
        /// The case.
        case_id: String,
        /// Which request it answers (only the newest counts).
        request: u64,
        /// The object and its record, or why it could not be predicted.
        answer: Result<Box<prompt::PromptAnswer>, String>,
    },
    /// A worker failed or panicked.
    WorkerFailed(WorkerError),
    /// A worker's message for the user.
    Report(Message),
}

/// What the window must do after an `apply`.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Changes {
    /// A new case is open: upload all its textures.
    pub case_opened: bool,
    /// Sub-boxes of the reference mask that changed (voxel index space).
    pub mask_boxes: Vec<VoxelBox>,
    /// The predicted mask was replaced.
    pub predicted: bool,
    /// Label colours or visibility changed.
    pub colours: bool,
    /// Images whose values were rewritten in place (same grid): upload their CPU values.
    pub images_written: Vec<usize>,
    /// Images replaced or appended (a derived image): upload them anew.
    pub images_set: Vec<usize>,
    /// The project was replaced or closed (worklist statistics are stale).
    pub project: bool,
    /// The manifest changed (cases, versions, predictions).
    pub manifest: bool,
    /// Messages for the user.
    pub messages: Vec<Message>,
}

impl Changes {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        *self == Changes::default()
    }

    /// Add `other`'s changes to these (several inputs in one frame, mirrored once).
    pub fn merge(&mut self, other: Changes) {
        self.case_opened |= other.case_opened;
        self.mask_boxes.extend(other.mask_boxes);
        self.predicted |= other.predicted;
        self.colours |= other.colours;
        self.images_written.extend(other.images_written);
        self.images_set.extend(other.images_set);
        self.project |= other.project;
        self.manifest |= other.manifest;
        self.messages.extend(other.messages);
    }
}

/// The logic tier (see the module header).
pub struct Session {
    project: Option<Project>,
    labels: LabelTable,
    open: Option<OpenCase>,
    tools: ToolState,
    closing_stores: Vec<CaseStore>,
    loose_root: PathBuf,
    jobs: jobs::Jobs,
    pending: Changes,
    save_notice: Option<String>,
    prompt: prompt::PromptState,
}

impl Session {
    /// An empty session; loose files' working copies go under `loose_root`; `wake` is called
    /// from a worker thread when it has a result (the window repaints; headless: no-op).
    pub fn new(loose_root: PathBuf, wake: Waker) -> Self {
        Self {
            project: None,
            labels: LabelTable::default(),
            open: None,
            tools: ToolState::default(),
            closing_stores: Vec::new(),
            loose_root,
            jobs: jobs::Jobs::new(wake),
            pending: Changes::default(),
            save_notice: None,
            prompt: prompt::PromptState::default(),
        }
    }

    /// Where the working copies of loose files go by default: `$XDG_DATA_HOME/mriloop/unsaved`,
    /// else `~/.local/share/mriloop/unsaved`, else a folder in the temporary directory.
    pub fn default_loose_root() -> PathBuf {
        crate::project::demo::user_data_dir().join("unsaved")
    }

    /// The open project.
    pub fn project(&self) -> Option<&Project> {
        self.project.as_ref()
    }

    /// The open case, once loaded.
    pub fn open_case(&self) -> Option<&OpenCase> {
        self.open.as_ref()
    }

    /// The label table (the project's; loose files start with none).
    pub fn labels(&self) -> &LabelTable {
        &self.labels
    }

    /// The active tool and its settings.
    pub fn tools(&self) -> &ToolState {
        &self.tools
    }

    /// Where loose files' working copies go.
    pub fn loose_root(&self) -> &std::path::Path {
        &self.loose_root
    }

    /// Whether workers or closing stores are still busy (the window keeps polling).
    pub fn busy(&self) -> bool {
        !self.closing_stores.is_empty()
            || self.jobs.running() > 0
            || self.prompt.busy()
            || self
                .open
                .as_ref()
                .is_some_and(|o| o.time.as_ref().is_some_and(|t| t.seed_busy()))
    }

    /// Whether the open case has edits not yet written where the user will find them: for a
    /// project case, not yet saved; for loose files, not yet saved to the user's file.
    pub fn has_unsaved_edits(&self) -> bool {
        self.open.as_ref().is_some_and(|o| o.edits.unsaved_for_user)
    }

    /// Whether the open case is loose files with edits not saved into the user's files.
    pub fn has_unsaved_loose_edits(&self) -> bool {
        self.open
            .as_ref()
            .is_some_and(|o| o.edits.loose.is_some() && o.edits.unsaved_for_user)
    }

    /// Signals of the stores still writing a closed case (a new load waits for them).
    pub fn closing_signals(&self) -> Vec<crate::project::store::ExitSignal> {
        self.closing_stores
            .iter()
            .map(|s| s.exit_signal())
            .collect()
    }

    /// Run `work` in a worker thread named `name`; the `Input` it returns is applied at a later
    /// tick. A panic inside it becomes `Input::WorkerFailed(WorkerError::Panicked)`, shown to
    /// the user as an error naming the worker.
    pub fn spawn_worker(&mut self, name: &str, work: impl FnOnce() -> Input + Send + 'static) {
        self.jobs.spawn(name, work);
    }

    /// Apply one input; returns what the window must mirror.
    pub fn apply(&mut self, input: Input) -> Changes {
        match input {
            Input::View(cmd) => self.apply_view(cmd),
            Input::Edit(cmd) => self.apply_edit(cmd),
            Input::Time(cmd) => self.apply_time(cmd),
            Input::ProjectOpened(p) => self.project_opened(*p),
            Input::CaseLoaded {
                case,
                index,
                source,
            } => self.case_loaded(*case, index, &source),
            Input::Tick { now_s } => self.tick(now_s),
            Input::RunFinished { version, activate } => self.run_finished(*version, activate),
            Input::SetActiveModel(id) => self.set_active_model(&id),
            Input::Predicted(p) => self.predicted(p),
            Input::PredictionRead { case_id, mask } => {
                self.prediction_read(&case_id, mask.map(|m| *m))
            }
            Input::SequencesImported {
                case_id,
                form,
                files,
            } => self.sequences_imported(&case_id, form, &files),
            Input::SaveManifest => self.save_manifest(),
            Input::Autosave => self.autosave(),
            Input::CloseCase { wait } => self.close_case(wait),
            Input::CloseProject => self.close_project(),
            Input::DiscardLooseEdits => self.discard_loose_edits(),
            Input::PromptModel(m) => self.prompt_model_read(m),
            Input::PromptContext { case_id, context } => self.prompt_context_read(case_id, context),
            Input::PromptAnswer {
                case_id,
                request,
                answer,
            } => self.prompt_answered(&case_id, request, answer),
            Input::WorkerFailed(e) => self.message(Message::Error(e.to_string())),
            Input::Report(m) => self.message(m),
        }
        std::mem::take(&mut self.pending)
    }

    fn message(&mut self, m: Message) {
        self.pending.messages.push(m);
    }

    fn apply_view(&mut self, cmd: ViewCommand) {
        let Some(open) = self.open.as_mut() else {
            return;
        };
        match cmd {
            ViewCommand::SetWindow { seq, .. }
            | ViewCommand::WindowPreset(seq, _)
            | ViewCommand::SetColormap(seq, _) => {
                if let Some(layer) = open.layers.get_mut(seq) {
                    layer.display.apply(&cmd);
                }
            }
            other => open.viewer.apply(other),
        }
    }

    /// Once per frame: store reports, finished jobs, autosave, playback and seed maps.
    fn tick(&mut self, now_s: f64) {
        for input in self.jobs.poll() {
            let changes = self.apply(input);
            self.pending.merge(changes);
        }
        self.poll_stores();
        self.autosave_if_idle();
        self.poll_time(now_s);
    }
}
