//! The eframe app: the review window. Panels read state and emit `Command`s; `MriloopApp::apply`
//! is the one place that changes state, once per frame, so undo, autosave and tests see every
//! change. Loading runs in background threads (`loader`); the GPU side is reached only through
//! the paint-callback bridge (`bridge`).
//!
//! Invariants: the UI thread never reads a file or waits on a thread; a failed load leaves the
//! previous case open and shows a dialog naming the file and the problem.

mod bridge;
pub mod cohort;
pub mod curves;
pub mod dicom;
mod edit_panel;
mod editing;
pub mod experiment;
pub mod experiment_plots;
pub mod headless;
mod loader;
mod panels;
mod state;
pub mod timeseries;
pub mod training;
mod views;

pub use bridge::{SliceCallback, ViewerGpu};
pub use editing::{CaseEdits, EditCommand, Tool, ToolState, AUTOSAVE_EVERY, AUTOSAVE_IDLE};
pub use loader::{
    foreground_dice, labelled_volume_mm3, read_mask, spawn_load, spawn_stats, CaseSource,
    CaseStats, LoadMessage, LoadedCase, LoadedImage, Recovered,
};
pub use state::{
    step_along, IntensitySample, Layout, OverlayStyle, SequenceDisplay, ViewZoom, ViewerState,
    WindowPreset, WorldBox, MAX_SIDE_BY_SIDE,
};
pub use views::ViewCell;

use crate::project::{InputForm, LabelTable, Project, ReviewStatus};
use crate::render::{CaseTextures, Colormap, GridInfo, ImageTexture, Orientation};
use glam::DVec3;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, TryRecvError};

/// What to open when the app starts.
#[derive(Debug, Clone, PartialEq)]
pub enum Startup {
    /// Nothing: an empty window with File → Open.
    Empty,
    /// A project folder (or its `mriloop.json`); its first case is opened.
    Project(PathBuf),
    /// Loose NIfTI files: images (first = main) and an optional label file.
    Files {
        /// Image files.
        images: Vec<PathBuf>,
        /// Label file.
        mask: Option<PathBuf>,
    },
}

/// The built-in demo project as shipped in `assets/demo` (read-only use: tests, reference).
pub fn demo_project_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("assets/demo")
}

/// The demo project's files, built into the binary so it runs from anywhere.
const DEMO_FILES: &[(&str, &[u8])] = &[
    (
        "mriloop.json",
        include_bytes!("../../assets/demo/mriloop.json"),
    ),
    (
        "cases/phantom_000/T1.nii.gz",
        include_bytes!("../../assets/demo/cases/phantom_000/T1.nii.gz"),
    ),
    (
        "cases/phantom_000/T2.nii.gz",
        include_bytes!("../../assets/demo/cases/phantom_000/T2.nii.gz"),
    ),
    (
        "cases/phantom_000/FLAIR.nii.gz",
        include_bytes!("../../assets/demo/cases/phantom_000/FLAIR.nii.gz"),
    ),
    (
        "cases/phantom_000/Gd-T1.nii.gz",
        include_bytes!("../../assets/demo/cases/phantom_000/Gd-T1.nii.gz"),
    ),
    (
        "cases/phantom_000/DWI.nii.gz",
        include_bytes!("../../assets/demo/cases/phantom_000/DWI.nii.gz"),
    ),
    (
        "cases/phantom_000/ADC.nii.gz",
        include_bytes!("../../assets/demo/cases/phantom_000/ADC.nii.gz"),
    ),
    (
        "cases/phantom_000/reference.nii.gz",
        include_bytes!("../../assets/demo/cases/phantom_000/reference.nii.gz"),
    ),
];

/// A writable copy of the demo project in `dir` (made from the built-in files if it is not
/// there yet), so corrections to the demo never touch the shipped files.
pub fn demo_project_copy(dir: &std::path::Path) -> std::io::Result<PathBuf> {
    if dir.join(crate::project::MANIFEST_FILE).exists() {
        return Ok(dir.to_path_buf());
    }
    // Case files first, the manifest last: a half-made copy is never taken for a project.
    for (rel, bytes) in DEMO_FILES.iter().rev() {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        crate::atomic::write_atomic(&path, bytes)?;
    }
    Ok(dir.to_path_buf())
}

/// Where the user's copy of the demo lives: `$XDG_DATA_HOME/mriloop/demo`, else
/// `~/.local/share/mriloop/demo`, else a folder in the temporary directory.
pub fn user_demo_dir() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("mriloop").join("demo")
}

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

/// Every change the UI can ask for. Applied by `MriloopApp::apply`, once per frame.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Move the shared cursor (world mm).
    SetCursor(DVec3),
    /// Step a view's slice.
    StepSlice(Orientation, i32),
    /// Multiply a view's zoom.
    Zoom(Orientation, f64),
    /// Move a view's centre by mm along screen right and up.
    Pan(Orientation, [f64; 2]),
    /// Reset zoom and pan of every view and centre the cursor.
    ResetView,
    /// Set a sequence's window (intensities shown black and white).
    SetWindow {
        /// Sequence index.
        seq: usize,
        /// Low end.
        low: f32,
        /// High end.
        high: f32,
    },
    /// Apply a window preset to a sequence.
    WindowPreset(usize, WindowPreset),
    /// Set a sequence's colour map.
    SetColormap(usize, Colormap),
    /// Trilinear (true) or nearest sampling.
    SetLinear(bool),
    /// Reference overlay opacity.
    SetReferenceOpacity(f32),
    /// Reference overlay as outlines.
    SetReferenceOutline(bool),
    /// Predicted overlay opacity.
    SetPredictedOpacity(f32),
    /// Show one sequence alone.
    ShowSequence(usize),
    /// Add or remove a sequence from the side-by-side set.
    ToggleSideBySide(usize),
    /// Blend a sequence over the shown ones (None: no blend), with an opacity.
    SetBlend(Option<(usize, f32)>),
    /// Change the layout.
    SetLayout(Layout),
    /// Open case `i` of the project.
    OpenCase(usize),
    /// Open the next (+1) or previous (-1) unreviewed case in worklist order.
    NextUnreviewed(i32),
    /// Open a project folder.
    OpenProject(PathBuf),
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
    /// A correction (tools, masks, class, status, note, undo).
    Edit(EditCommand),
    /// Training, model versions, re-inference, next case, cohort.
    Train(training::TrainCommand),
    /// The Experiment panel.
    Experiment(experiment::ExperimentCommand),
    /// The time-series panel of a 4D case.
    Time(timeseries::TimeCommand),
    /// The DICOM import dialog.
    Dicom(dicom::DicomCommand),
}

/// A case being loaded.
struct Loading {
    rx: Receiver<LoadMessage>,
    source: CaseSource,
    /// Index in the project; `None` for loose files (on success the project is closed).
    case_index: Option<usize>,
    done: usize,
    total: usize,
    file: Option<PathBuf>,
}

/// The open case: its volumes on the CPU (values under the cursor, later edits) and the view.
pub struct OpenCase {
    /// The loaded volumes.
    pub loaded: LoadedCase,
    /// What the views show.
    pub viewer: ViewerState,
    /// Index in the project, if it came from one.
    pub case_index: Option<usize>,
    /// Each image's grid and the intensity range its texture was normalised by.
    pub image_grids: Vec<GridInfo>,
    /// The masks' grid.
    pub labels_grid: GridInfo,
    /// Undo, the stroke in progress, and saving.
    pub edits: CaseEdits,
    /// Live agreement of the prediction with the corrected mask (when both are on one grid).
    pub agreement: Option<crate::edit::Agreement>,
    /// Time points, summaries, time courses and seed map of a 4D case's series.
    pub time: Option<timeseries::TimeView>,
    generation: u64,
}

impl OpenCase {
    /// Whether image `index` was made in the window (a seed map), not read from the case.
    pub fn is_derived_image(&self, index: usize) -> bool {
        self.time
            .as_ref()
            .and_then(|t| t.seed.as_ref())
            .is_some_and(|s| s.image == index)
    }
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

/// The review window.
pub struct MriloopApp {
    project: Option<Project>,
    labels: LabelTable,
    open: Option<OpenCase>,
    loading: Option<Loading>,
    stats: HashMap<String, CaseStats>,
    stats_rx: Option<Receiver<CaseStats>>,
    worklist: WorklistView,
    error: Option<String>,
    commands: Vec<Command>,
    dialog_rx: Option<Receiver<Command>>,
    project_rx: Option<Receiver<Result<Project, String>>>,
    cells: Vec<ViewCell>,
    render_state: Option<egui_wgpu::RenderState>,
    ctx: egui::Context,
    tools: ToolState,
    info: Option<String>,
    notice: Option<String>,
    notices_tx: std::sync::mpsc::Sender<Result<String, String>>,
    notices_rx: Receiver<Result<String, String>>,
    closing_stores: Vec<crate::project::store::CaseStore>,
    show_help: bool,
    training: training::TrainingState,
    experiment: experiment::ExperimentState,
    dicom: dicom::DicomState,
}

impl MriloopApp {
    /// Create the app; `startup` says what to open first (in the background).
    pub fn new(cc: &eframe::CreationContext<'_>, startup: Startup) -> Self {
        let render_state = cc.wgpu_render_state.clone();
        if let Some(rs) = &render_state {
            let gpu = ViewerGpu::new(&rs.device, rs.target_format);
            rs.renderer.write().callback_resources.insert(gpu);
        }
        let (notices_tx, notices_rx) = std::sync::mpsc::channel();
        // Panels are drawn without a fill: the frame's clear colour (`clear_color`, the theme's
        // panel colour) is their background. A software rasteriser (Mesa's llvmpipe: VMs,
        // remote desktops) then draws the window in a fraction of the time, since egui's fill
        // shader over the whole window dominated each frame there.
        cc.egui_ctx
            .all_styles_mut(|s| s.visuals.panel_fill = egui::Color32::TRANSPARENT);
        let mut app = Self {
            project: None,
            labels: LabelTable::default(),
            open: None,
            loading: None,
            stats: HashMap::new(),
            stats_rx: None,
            worklist: WorklistView {
                sort: SortKey::Case,
                descending: false,
                status: None,
                text: String::new(),
            },
            error: None,
            commands: Vec::new(),
            dialog_rx: None,
            project_rx: None,
            cells: Vec::new(),
            render_state,
            ctx: cc.egui_ctx.clone(),
            tools: ToolState::default(),
            info: None,
            notice: None,
            notices_tx,
            notices_rx,
            closing_stores: Vec::new(),
            show_help: false,
            training: training::TrainingState::default(),
            experiment: experiment::ExperimentState::default(),
            dicom: dicom::DicomState::default(),
        };
        if app.render_state.is_none() {
            app.error = Some("no wgpu device: mriloop needs a GPU or Mesa's Vulkan driver".into());
        }
        match startup {
            Startup::Empty => {}
            Startup::Project(p) => app.commands.push(Command::OpenProject(p)),
            Startup::Files { images, mask } => {
                app.commands.push(Command::OpenFiles { images, mask })
            }
        }
        app
    }

    /// Queue a command (applied at the start of the next frame).
    pub fn push(&mut self, cmd: Command) {
        self.commands.push(cmd);
    }

    /// The open case, once loaded.
    pub fn open_case(&self) -> Option<&OpenCase> {
        self.open.as_ref()
    }

    /// The open project.
    pub fn project(&self) -> Option<&Project> {
        self.project.as_ref()
    }

    /// Whether a project or case is being loaded.
    pub fn is_loading(&self) -> bool {
        self.loading.is_some() || self.project_rx.is_some()
    }

    /// The error shown, if any.
    pub fn error(&self) -> Option<&str> {
        self.error.as_deref()
    }

    /// Worklist statistics computed so far, by case id.
    pub fn stats(&self) -> &HashMap<String, CaseStats> {
        &self.stats
    }

    /// The views drawn in the last frame, with their rectangles and planes.
    pub fn view_cells(&self) -> &[ViewCell] {
        &self.cells
    }

    /// The project's label table (empty for loose files).
    pub fn labels(&self) -> &LabelTable {
        &self.labels
    }

    fn wake(&self) -> impl Fn() + Send + 'static {
        let ctx = self.ctx.clone();
        move || ctx.request_repaint()
    }

    /// How many times a view's slice image was rendered on the GPU rather than drawn from its
    /// cache (by its `ViewCell::slot`).
    pub fn view_renders(&self, slot: usize) -> u64 {
        self.render_state.as_ref().map_or(0, |rs| {
            rs.renderer
                .read()
                .callback_resources
                .get::<ViewerGpu>()
                .map_or(0, |g| g.view_renders(slot))
        })
    }

    /// The information shown in a dialog (e.g. what was recovered from a journal).
    pub fn info(&self) -> Option<&str> {
        self.info.as_deref()
    }

    /// The tool settings.
    pub fn tools(&self) -> &ToolState {
        &self.tools
    }

    fn start_loading(&mut self, source: CaseSource, case_index: Option<usize>) {
        let total = source.file_count();
        let wait_for = self
            .closing_stores
            .iter()
            .map(|s| s.exit_signal())
            .collect();
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
        let Some(project) = &self.project else {
            return Vec::new();
        };
        let cases = &project.manifest.cases;
        let mut order: Vec<usize> = (0..cases.len())
            .filter(|i| {
                let c = &cases[*i];
                self.worklist.status.is_none_or(|s| c.review == s)
                    && (self.worklist.text.is_empty() || c.id.contains(&self.worklist.text))
            })
            .collect();
        let key = |i: &usize| -> f64 {
            let c = &cases[*i];
            let st = self.stats.get(&c.id);
            match self.worklist.sort {
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
        if self.worklist.descending {
            order.reverse();
        }
        order
    }

    /// Apply every queued command; the one place state changes.
    fn apply_all(&mut self) {
        let cmds = std::mem::take(&mut self.commands);
        for cmd in cmds {
            self.apply(cmd);
        }
    }

    /// Apply one command.
    pub fn apply(&mut self, cmd: Command) {
        if let Some(v) = self.open.as_mut().map(|o| &mut o.viewer) {
            let seq_ok = |s: usize| s < v.display.len();
            match &cmd {
                Command::SetCursor(p) => return v.set_cursor(*p),
                Command::StepSlice(o, n) => return v.step_slice(*o, *n),
                Command::Zoom(o, f) => return v.zoom_by(*o, *f),
                Command::Pan(o, d) => {
                    let z = v.view_zoom_mut(*o);
                    z.pan_mm[0] += d[0];
                    z.pan_mm[1] += d[1];
                    return;
                }
                Command::ResetView => {
                    v.zoom = [ViewZoom::default(); 3];
                    v.cursor_mm = v.world_box.centre_mm();
                    return;
                }
                Command::SetWindow { seq, low, high } if seq_ok(*seq) => {
                    let d = &mut v.display[*seq];
                    d.window_low = *low;
                    d.window_high = if high > low { *high } else { low + 1e-3 };
                    return;
                }
                Command::WindowPreset(seq, p) if seq_ok(*seq) => {
                    return v.display[*seq].apply_preset(*p);
                }
                Command::SetColormap(seq, c) if seq_ok(*seq) => {
                    v.display[*seq].colormap = *c;
                    return;
                }
                Command::SetLinear(b) => {
                    v.linear = *b;
                    return;
                }
                Command::SetReferenceOpacity(a) => {
                    v.overlay.reference_opacity = a.clamp(0.0, 1.0);
                    return;
                }
                Command::SetReferenceOutline(b) => {
                    v.overlay.reference_outline = *b;
                    return;
                }
                Command::SetPredictedOpacity(a) => {
                    v.overlay.predicted_opacity = a.clamp(0.0, 1.0);
                    return;
                }
                Command::ShowSequence(s) if seq_ok(*s) => {
                    v.shown = vec![*s];
                    return;
                }
                Command::ToggleSideBySide(s) => return v.toggle_side_by_side(*s),
                Command::SetBlend(b) => {
                    v.blend = b
                        .filter(|(s, _)| seq_ok(*s))
                        .map(|(s, a)| (s, a.clamp(0.0, 1.0)));
                    return;
                }
                Command::SetLayout(l) => {
                    v.layout = *l;
                    return;
                }
                _ => {}
            }
        }
        match cmd {
            Command::OpenCase(i) => {
                // The open case is already in memory (and its journal may be mid-write).
                let already_open = self.loading.is_none()
                    && self.open.as_ref().is_some_and(|o| o.case_index == Some(i));
                if already_open {
                    return;
                }
                if let Some(p) = &self.project {
                    if let Some(case) = p.manifest.cases.get(i) {
                        let source = CaseSource::from_project(p, case);
                        self.start_loading(source, Some(i));
                    }
                }
            }
            Command::NextUnreviewed(dir) => {
                if let Some(i) = self.next_unreviewed(dir) {
                    self.apply(Command::OpenCase(i));
                }
            }
            Command::OpenProject(path) => {
                let (tx, rx) = std::sync::mpsc::channel();
                let wake = self.wake();
                std::thread::spawn(move || {
                    let _ = tx.send(Project::open(&path).map_err(|e| e.to_string()));
                    wake();
                });
                self.project_rx = Some(rx);
            }
            Command::OpenFiles { images, mask } => {
                if images.is_empty() {
                    self.error = Some("no image file given".into());
                } else {
                    self.start_loading(CaseSource::from_files(&images, mask), None);
                }
            }
            Command::OpenProjectDialog => {
                let (tx, rx) = std::sync::mpsc::channel();
                let wake = self.wake();
                std::thread::spawn(move || {
                    if let Some(dir) = rfd::FileDialog::new()
                        .set_title("Open an mriloop project folder")
                        .pick_folder()
                    {
                        let _ = tx.send(Command::OpenProject(dir));
                    }
                    wake();
                });
                self.dialog_rx = Some(rx);
            }
            Command::OpenFilesDialog => {
                let (tx, rx) = std::sync::mpsc::channel();
                let wake = self.wake();
                std::thread::spawn(move || {
                    if let Some(files) = rfd::FileDialog::new()
                        .set_title("Open NIfTI images (a label file is recognised by its name)")
                        .add_filter("NIfTI", &["nii", "gz"])
                        .pick_files()
                    {
                        let (masks, images): (Vec<PathBuf>, Vec<PathBuf>) =
                            files.into_iter().partition(|p| looks_like_mask(p));
                        let _ = tx.send(Command::OpenFiles {
                            images,
                            mask: masks.into_iter().next(),
                        });
                    }
                    wake();
                });
                self.dialog_rx = Some(rx);
            }
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
            Command::DismissError => self.error = None,
            Command::DismissInfo => self.info = None,
            Command::ToggleHelp => self.show_help = !self.show_help,
            Command::Edit(e) => self.apply_edit(e),
            Command::Train(t) => self.apply_train(t),
            Command::Experiment(e) => self.apply_experiment(e),
            Command::Time(t) => self.apply_time(t),
            Command::Dicom(d) => self.apply_dicom(d),
            // Viewer commands with no case open (or naming a missing sequence) do nothing.
            _ => {}
        }
    }

    /// A project was read: show its worklist, start its statistics, open its first case.
    fn project_opened(&mut self, p: Project) {
        // The open case is saved into the project it came from before that is replaced.
        self.close_case(false);
        self.project_switched();
        self.labels = p.manifest.labels.clone();
        self.stats.clear();
        self.stats_rx = Some(spawn_stats(p.clone(), self.wake()));
        let first = self.first_case_of(&p);
        self.project = Some(p);
        if let Some(i) = first {
            self.apply(Command::OpenCase(i));
        }
    }

    fn first_case_of(&self, p: &Project) -> Option<usize> {
        let cases = &p.manifest.cases;
        cases
            .iter()
            .position(|c| c.review != ReviewStatus::Reviewed)
            .or((!cases.is_empty()).then_some(0))
    }

    /// The next (`dir` > 0) or previous unreviewed case after the open one, in worklist order.
    fn next_unreviewed(&self, dir: i32) -> Option<usize> {
        let p = self.project.as_ref()?;
        let order = self.worklist_order();
        let current = self
            .loading
            .as_ref()
            .and_then(|l| l.case_index)
            .or(self.open.as_ref().and_then(|o| o.case_index));
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

    /// Receive from background jobs (never waits).
    fn poll_jobs(&mut self) {
        if let Some(rx) = &self.project_rx {
            match rx.try_recv() {
                Ok(result) => {
                    self.project_rx = None;
                    match result {
                        Ok(p) => self.project_opened(p),
                        Err(e) => self.error = Some(e),
                    }
                }
                Err(TryRecvError::Disconnected) => {
                    self.project_rx = None;
                    self.error = Some("the thread opening the project stopped unexpectedly".into());
                }
                Err(TryRecvError::Empty) => {}
            }
        }
        if let Some(rx) = &self.dialog_rx {
            match rx.try_recv() {
                Ok(cmd) => {
                    self.dialog_rx = None;
                    self.commands.push(cmd);
                }
                Err(TryRecvError::Disconnected) => self.dialog_rx = None,
                Err(TryRecvError::Empty) => {}
            }
        }
        if let Some(rx) = &self.stats_rx {
            loop {
                match rx.try_recv() {
                    Ok(s) => {
                        self.stats.insert(s.case_id.clone(), s);
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        self.stats_rx = None;
                        break;
                    }
                }
            }
        }
        let mut finished = None;
        if let Some(l) = &mut self.loading {
            loop {
                match l.rx.try_recv() {
                    Ok(LoadMessage::Progress { done, total, file }) => {
                        l.done = done;
                        l.total = total;
                        l.file = Some(file);
                    }
                    Ok(LoadMessage::Done(case)) => {
                        finished = Some(Ok((case, l.case_index, l.source.clone())));
                        break;
                    }
                    Ok(LoadMessage::Failed(e)) => {
                        finished = Some(Err(e));
                        break;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        finished = Some(Err("the loading thread stopped unexpectedly".into()));
                        break;
                    }
                }
            }
        }
        match finished {
            Some(Ok((case, index, source))) => {
                self.loading = None;
                self.close_case(false);
                if index.is_none() {
                    self.project = None;
                    self.labels = LabelTable::default();
                    self.stats.clear();
                    self.stats_rx = None;
                }
                self.show_case(*case, index, &source);
            }
            Some(Err(e)) => {
                self.loading = None;
                self.error = Some(e);
            }
            None => {}
        }
    }

    /// Upload a loaded case to the GPU and show it.
    fn show_case(
        &mut self,
        mut loaded: LoadedCase,
        case_index: Option<usize>,
        source: &CaseSource,
    ) {
        let Some(rs) = &self.render_state else {
            self.error = Some("no wgpu device to show the case on".into());
            return;
        };
        let Some(first) = loaded.images.first() else {
            self.error = Some(format!("case {} has no image", loaded.case_id));
            return;
        };
        // A label table recovered from the journal is in force before the colours go up.
        if let (Some(rec), Some(p)) = (&loaded.recovered, self.project.as_mut()) {
            for e in &rec.edits {
                crate::project::journal::apply_project_record(&mut p.manifest, e, true);
            }
            self.labels = p.manifest.labels.clone();
        }
        let images: Vec<_> = loaded.images.iter().map(|i| &i.volume).collect();
        let textures = match CaseTextures::upload(
            &rs.device,
            &rs.queue,
            &images,
            loaded.reference.as_ref(),
            loaded.predicted.as_ref(),
            &self.overlay_colours(),
        ) {
            Ok(t) => t,
            Err(e) => {
                self.error = Some(format!("case {}: {e}", loaded.case_id));
                return;
            }
        };
        let generation = {
            let mut renderer = rs.renderer.write();
            match renderer.callback_resources.get_mut::<ViewerGpu>() {
                Some(gpu) => gpu.set_case(textures),
                None => return,
            }
        };
        let display = loaded
            .images
            .iter()
            .map(|i| {
                let cmap = if i.name.as_str().eq_ignore_ascii_case("ADC") {
                    Colormap::Diverging
                } else {
                    Colormap::Grey
                };
                SequenceDisplay::new(i.volume.data(), cmap)
            })
            .collect();
        let mut viewer = ViewerState::new(first.volume.affine(), first.volume.dims3(), display);
        // A case of the 2D form holding several slices is a stack of unrelated images: one
        // large view facing them, paged like slices, no cross-sections through the stack.
        let form_of = |index: Option<usize>| {
            let p = self.project.as_ref()?;
            Some(p.manifest.cases.get(index?)?.form)
        };
        let fixed_layout = |form: Option<InputForm>, g: &GridInfo| {
            ViewerState::single_slice_layout(&g.affine, g.dims).or_else(|| {
                (form == Some(InputForm::Slice2d)).then(|| ViewerState::stack_layout(&g.affine))
            })
        };
        let first_grid = GridInfo {
            affine: *first.volume.affine(),
            dims: first.volume.dims3(),
            value_range: (0.0, 1.0),
        };
        let fixed = fixed_layout(form_of(case_index), &first_grid);
        if let Some(l) = fixed {
            viewer.layout = l;
        }
        // Keep the view settings of the previous case where they still apply (same sequences;
        // the layout only between volumes: a single slice or a stack always gets its one view).
        let viewer = match &self.open {
            Some(prev) if prev.viewer.display.len() == viewer.display.len() => ViewerState {
                layout: match prev.image_grids.first() {
                    Some(g)
                        if fixed.is_none()
                            && fixed_layout(form_of(prev.case_index), g).is_none() =>
                    {
                        prev.viewer.layout
                    }
                    _ => viewer.layout,
                },
                shown: {
                    let kept: Vec<usize> = prev
                        .viewer
                        .shown
                        .iter()
                        .copied()
                        .filter(|s| !prev.is_derived_image(*s))
                        .collect();
                    if kept.is_empty() {
                        vec![0]
                    } else {
                        kept
                    }
                },
                blend: prev
                    .viewer
                    .blend
                    .filter(|(b, _)| !prev.is_derived_image(*b)),
                linear: prev.viewer.linear,
                overlay: prev.viewer.overlay,
                ..viewer
            },
            _ => viewer,
        };
        let image_grids: Vec<GridInfo> = loaded
            .images
            .iter()
            .map(|i| GridInfo {
                affine: *i.volume.affine(),
                dims: i.volume.dims3(),
                value_range: ImageTexture::range_of(&i.volume.data()[..i.volume.frame_len()]),
            })
            .collect();
        let labels_grid = match loaded.reference.as_ref().or(loaded.predicted.as_ref()) {
            Some(m) => GridInfo {
                affine: *m.affine(),
                dims: m.dims3(),
                value_range: (0.0, 1.0),
            },
            None => GridInfo {
                dims: [1, 1, 1],
                ..image_grids[0]
            },
        };
        let mut edits = match (&self.project, case_index) {
            (Some(p), Some(i)) => {
                let id = &loaded.case_id;
                let rel = p
                    .manifest
                    .cases
                    .get(i)
                    .and_then(|c| c.reference_mask.clone())
                    .unwrap_or_else(|| format!("{}/reference.nii.gz", Project::case_dir_rel(id)));
                let store = crate::project::store::CaseStore::open(
                    &crate::project::journal::journal_path(p, id),
                );
                CaseEdits::new(Some(store), Some(rel), None)
            }
            _ => {
                let path = source.reference.clone().or_else(|| {
                    source.sequences.first().map(|(_, p)| {
                        let name = p
                            .file_name()
                            .map(|n| n.to_string_lossy().into_owned())
                            .unwrap_or_default();
                        let stem = name.trim_end_matches(".gz").trim_end_matches(".nii");
                        p.with_file_name(format!("{stem}_mask.nii.gz"))
                    })
                });
                CaseEdits::new(None, None, path)
            }
        };
        if let Some(rec) = loaded.recovered.take() {
            let n_mask = rec
                .edits
                .iter()
                .filter(|e| matches!(e, crate::edit::Edit::Mask(_)))
                .count();
            let n_record = rec.edits.len() - n_mask;
            if let (Some(p), Some(i)) = (self.project.as_mut(), case_index) {
                if let Some(case) = p.manifest.cases.get_mut(i) {
                    for e in &rec.edits {
                        crate::project::journal::apply_record(case, e, true);
                    }
                }
            }
            let mut msg = format!(
                "Case {}: recovered {} unsaved edits from its journal ({n_mask} to the mask, \
                 {n_record} to the class, status, note or labels). They are shown now and will be saved.",
                loaded.case_id,
                rec.edits.len()
            );
            if let Some(p) = rec.problem {
                msg.push_str(&format!("\n\nThe journal's end could not be read: {p}"));
            }
            self.info = Some(msg);
            edits.dirty = true;
            edits.mask_dirty = n_mask > 0;
        }
        let agreement = match (&loaded.reference, &loaded.predicted) {
            (Some(r), Some(p)) if r.dims3() == p.dims3() => {
                crate::edit::Agreement::of(&r.data()[..r.frame_len()], &p.data()[..p.frame_len()])
            }
            _ => None,
        };
        let time = loaded
            .images
            .iter()
            .enumerate()
            .find_map(|(i, img)| Some(timeseries::TimeView::new(i, img.series.clone()?)));
        self.open = Some(OpenCase {
            loaded,
            viewer,
            case_index,
            image_grids,
            labels_grid,
            edits,
            agreement,
            time,
            generation,
        });
    }

    fn handle_keys(&mut self, ctx: &egui::Context) {
        if ctx.egui_wants_keyboard_input() {
            return;
        }
        use egui::Key;
        let classes: Vec<String> = self
            .project
            .as_ref()
            .map(|p| p.manifest.classes.clone())
            .unwrap_or_default();
        let mut out = Vec::new();
        ctx.input(|i| {
            let m = i.modifiers;
            let plain = !m.command && !m.alt && !m.shift;
            let edit = |e| Command::Edit(e);
            if m.command && i.key_pressed(Key::Z) {
                out.push(edit(if m.shift {
                    EditCommand::Redo
                } else {
                    EditCommand::Undo
                }));
            }
            if m.command && i.key_pressed(Key::Y) {
                out.push(edit(EditCommand::Redo));
            }
            if m.command && i.key_pressed(Key::S) {
                out.push(edit(EditCommand::Save));
            }
            if i.key_pressed(Key::N) && !m.command {
                out.push(Command::NextUnreviewed(if m.shift { -1 } else { 1 }));
            }
            if i.key_pressed(Key::I) && !m.command {
                out.push(Command::Train(training::TrainCommand::NextInformative));
            }
            if i.key_pressed(Key::F1) {
                out.push(Command::ToggleHelp);
            }
            if i.key_pressed(Key::Enter) {
                out.push(edit(EditCommand::ClosePolygon));
            }
            if i.key_pressed(Key::Escape) {
                out.push(edit(EditCommand::CancelPolygon));
            }
            if !plain {
                return;
            }
            let digits = [
                Key::Num1,
                Key::Num2,
                Key::Num3,
                Key::Num4,
                Key::Num5,
                Key::Num6,
                Key::Num7,
                Key::Num8,
                Key::Num9,
            ];
            for (k, key) in digits.iter().enumerate() {
                if i.key_pressed(*key) {
                    if let Some(c) = classes.get(k) {
                        out.push(edit(EditCommand::SetClass(Some(c.clone()))));
                    }
                }
            }
            for (key, tool) in [
                (Key::C, Tool::Navigate),
                (Key::B, Tool::Brush),
                (Key::E, Tool::Eraser),
                (Key::F, Tool::Fill),
                (Key::P, Tool::Polygon),
            ] {
                if i.key_pressed(key) {
                    out.push(edit(EditCommand::SetTool(tool)));
                }
            }
            let r = self.tools.radius_mm;
            if i.key_pressed(Key::Plus) || i.key_pressed(Key::Equals) {
                out.push(edit(EditCommand::SetRadius(r + 0.5)));
            }
            if i.key_pressed(Key::Minus) {
                out.push(edit(EditCommand::SetRadius(r - 0.5)));
            }
            if i.key_pressed(Key::R) {
                out.push(edit(EditCommand::SetStatus(ReviewStatus::Reviewed)));
            }
            if i.key_pressed(Key::L) {
                out.push(edit(EditCommand::SetStatus(ReviewStatus::NeedsSecondLook)));
            }
            if i.key_pressed(Key::A) {
                let o = self
                    .open
                    .as_ref()
                    .map_or(0.0, |o| o.viewer.overlay.reference_opacity);
                out.push(Command::SetReferenceOpacity(if o > 0.0 {
                    0.0
                } else {
                    0.5
                }));
            }
        });
        self.commands.extend(out);
    }

    fn poll_notices(&mut self) {
        while let Ok(n) = self.notices_rx.try_recv() {
            match n {
                Ok(msg) => self.notice = Some(msg),
                Err(e) => self.error = Some(e),
            }
        }
    }

    /// The last notice (e.g. a save), shown in the status bar.
    pub fn notice(&self) -> Option<&str> {
        self.notice.as_deref()
    }
}

/// Keyboard and mouse shortcuts, as listed in the Help panel (F1).
pub const SHORTCUTS: &[(&str, &str)] = &[
    (
        "C / B / E / F / P",
        "cursor, brush, eraser, fill, polygon tool",
    ),
    (
        "left drag",
        "move the cursor, or paint with the brush and eraser",
    ),
    ("+ / -", "brush radius ± 0.5 mm"),
    (
        "Enter / Esc",
        "fill / drop the polygon (double click also fills)",
    ),
    ("Ctrl+Z, Ctrl+Y or Ctrl+Shift+Z", "undo, redo"),
    (
        "1 – 9",
        "set the case's class (the project's class list, in order)",
    ),
    ("R / L", "mark reviewed / needs a second look"),
    ("A", "show or hide the reference overlay"),
    ("N / Shift+N", "next / previous unreviewed case"),
    ("I", "the unreviewed case the model is least sure about"),
    (
        "wheel, ↑ ↓, Page Up/Down",
        "step slices in the view under the pointer",
    ),
    ("Ctrl+wheel, middle drag", "zoom, pan"),
    ("right drag", "window (left-right) and level (up-down)"),
    ("Ctrl+S", "save now (autosave runs when idle)"),
    ("F1", "this list"),
];

/// Whether a file name says it holds labels (`seg`, `mask`, `label`).
pub fn looks_like_mask(path: &std::path::Path) -> bool {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_default();
    ["seg", "mask", "label"].iter().any(|w| name.contains(w))
}

/// The window background: the theme's panel colour (panels themselves draw no fill).
pub fn background_colour(visuals: &egui::Visuals) -> egui::Color32 {
    if visuals.dark_mode {
        egui::Visuals::dark().panel_fill
    } else {
        egui::Visuals::light().panel_fill
    }
}

impl eframe::App for MriloopApp {
    fn clear_color(&self, visuals: &egui::Visuals) -> [f32; 4] {
        background_colour(visuals).to_normalized_gamma_f32()
    }

    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let ctx = ui.ctx().clone();
        self.poll_jobs();
        self.poll_training();
        self.poll_experiment();
        self.poll_notices();
        self.poll_time(ctx.input(|i| i.time));
        self.poll_dicom();
        self.apply_all();
        self.autosave_tick();
        self.handle_keys(&ctx);
        let title = match (&self.open, &self.project) {
            (Some(o), Some(p)) => format!("mriloop — {} — {}", p.manifest.name, o.loaded.case_id),
            (Some(o), None) => format!("mriloop — {}", o.loaded.case_id),
            _ => "mriloop".to_string(),
        };
        ctx.send_viewport_cmd(egui::ViewportCommand::Title(title));
        let mut out = Vec::new();
        panels::menu_bar(ui, self, &mut out);
        panels::status_bar(ui, self);
        if self.project.is_some() {
            if self.training.show_panel {
                training::training_panel(ui, self, &mut out);
            }
            panels::worklist(ui, self, &mut out);
        }
        timeseries::time_panel(ui, self, &mut out);
        if self.training.show_cohort {
            cohort::cohort_window(&ctx, self, &mut out);
        }
        if self.experiment.show {
            experiment::experiment_window(&ctx, self, &mut out);
        }
        if self.dicom.show {
            dicom::dicom_window(&ctx, self, &mut out);
        }
        panels::side_panel(ui, self, &mut out);
        self.cells = views::central(ui, self, &mut out);
        panels::error_dialog(&ctx, self, &mut out);
        panels::info_dialog(&ctx, self, &mut out);
        if self.show_help {
            panels::help_window(&ctx, &mut out);
        }
        self.commands.extend(out);
        if self.is_loading()
            || self.dicom.busy()
            || self.training.cohort.is_running()
            || self.stats_rx.is_some()
            || !self.commands.is_empty()
            || !self.closing_stores.is_empty()
        {
            ctx.request_repaint();
        } else if self.training_busy() || self.experiment.run.is_some() {
            // Training, inference and experiments wake the window with each event; this keeps the ETA
            // ticking without redrawing every view continuously.
            ctx.request_repaint_after(std::time::Duration::from_millis(250));
        } else if self.open.as_ref().is_some_and(|o| o.edits.dirty) {
            ctx.request_repaint_after(std::time::Duration::from_millis(500));
        }
    }

    fn on_exit(&mut self) {
        self.stop_training();
        self.close_case(true);
        for mut s in self.closing_stores.drain(..) {
            s.finish();
            s.exit_signal().wait();
        }
    }
}

/// Get the process ready for the window; call first thing, before any thread is started.
/// Keeps one core for the window: rayon's global pool (loading, statistics, seed maps; training
/// has a pool of its own at background priority) gets one thread fewer than there are cores
/// (later calls leave the pool as it is). And splits a software-rendered frame finer: Mesa's
/// llvmpipe (lavapipe, the Vulkan driver of machines without a GPU) shares each frame among
/// `LP_NUM_THREADS` threads, one per core by default, so one preempted thread holds up the whole
/// frame; with several threads per core the others take up its share. Unless the user set it,
/// `LP_NUM_THREADS` becomes 4 × cores, 8 to 32 (`mriloop bench loop` on 2 cores, p99 frame time
/// while training: 29–38 ms with 2 threads, 22–25 ms with 4 or 8). Hardware GPUs ignore it.
pub fn prepare_for_window() {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(cores.saturating_sub(1).max(1))
        .thread_name(|i| format!("mriloop-compute-{i}"))
        .build_global();
    if std::env::var_os("LP_NUM_THREADS").is_none() {
        // No other thread runs yet, so nothing reads the environment while it changes.
        std::env::set_var("LP_NUM_THREADS", (4 * cores).clamp(8, 32).to_string());
    }
}

/// Open the review window (blocks until it is closed).
/// `first` commands are queued after the startup ones (e.g. start training once open).
pub fn run(startup: Startup, first: Vec<Command>) -> anyhow::Result<()> {
    prepare_for_window();
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("mriloop")
            .with_inner_size([1400.0, 900.0]),
        renderer: eframe::Renderer::Wgpu,
        ..Default::default()
    };
    eframe::run_native(
        "mriloop",
        options,
        Box::new(move |cc| {
            let mut app = MriloopApp::new(cc, startup);
            first.into_iter().for_each(|c| app.push(c));
            Ok(Box::new(app))
        }),
    )
    .map_err(|e| anyhow::anyhow!("cannot open the window: {e}"))
}
