//! The eframe app: the review window on top of the logic tier. `Session` (`crate::session`)
//! owns the project and the open case and is the one place they change; the window's panels read
//! `&Session` plus UI-only state (worklist sorting, dialogs, panels shown) and emit `Command`s.
//! Once per frame the queued commands and the workers' events become session inputs, and one GPU
//! step (`sync`) mirrors the returned `Changes` on the GPU — the only place, with the paint
//! callbacks (`bridge`), that reaches egui-wgpu's resources.
//!
//! Invariants: the UI thread never reads or writes a file or waits on a thread; a failed load
//! leaves the previous case open and shows a dialog naming the file and the problem; an
//! untouched window asks for no repaint.

mod bridge;
pub mod cohort;
mod commands;
pub mod curves;
pub mod dicom;
mod edit_panel;
pub mod experiment;
pub mod experiment_plots;
pub mod headless;
mod keys;
mod panels;
mod poll;
mod surfaces;
mod sync;
pub mod timeseries;
pub mod training;
pub mod training_plan;
mod view3d;
mod views;
pub mod window_bench;

pub use bridge::{SliceCallback, ViewerGpu};
pub use commands::{Command, SortKey, WorklistView};
pub use view3d::View3dCell;
pub use views::ViewCell;

pub use crate::project::demo::{demo_project_copy, demo_project_dir, user_demo_dir};
pub use crate::session::edit::{
    CaseEdits, EditCommand, Tool, ToolState, AUTOSAVE_EVERY, AUTOSAVE_IDLE,
};
pub use crate::session::load::{
    foreground_dice, labelled_volume_mm3, read_mask, spawn_load, spawn_stats, CaseSource,
    CaseStats, LoadMessage, LoadedCase, LoadedImage, Recovered,
};
pub use crate::session::view::{
    step_along, IntensitySample, Layout, OverlayStyle, SequenceDisplay, ViewCommand, ViewZoom,
    ViewerState, WindowPreset, WorldBox, MAX_SIDE_BY_SIDE,
};
pub use crate::session::{OpenCase, Session};

use crate::project::{LabelTable, Project};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::mpsc::Receiver;

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

/// What the window shows besides the session: messages and dialogs.
#[derive(Default)]
struct Dialogs {
    error: Option<String>,
    info: Option<String>,
    notice: Option<String>,
    show_help: bool,
    /// Closing was asked with unsaved loose-file edits: Save / Discard / Cancel is shown.
    confirm_close: bool,
    /// The user chose to close anyway.
    close_confirmed: bool,
}

/// The review window.
pub struct MriloopApp {
    session: Session,
    loading: Option<Loading>,
    stats: HashMap<String, CaseStats>,
    stats_rx: Option<Receiver<CaseStats>>,
    worklist: WorklistView,
    dialogs: Dialogs,
    commands: Vec<Command>,
    /// Commands waiting for a case to be open.
    when_open: Vec<Command>,
    /// File dialogs and other UI-side workers still open: each answers with its own command.
    answers: Vec<Receiver<Command>>,
    project_rx: Option<Receiver<Result<Project, String>>>,
    cells: Vec<ViewCell>,
    /// The 3D view as drawn in the last frame.
    cell3d: Option<View3dCell>,
    render_state: Option<egui_wgpu::RenderState>,
    gpu_generation: u64,
    /// What the session changed this frame, mirrored on the GPU once (`sync`).
    changes: crate::session::Changes,
    ctx: egui::Context,
    title: String,
    notices_tx: std::sync::mpsc::Sender<Result<String, String>>,
    notices_rx: Receiver<Result<String, String>>,
    training: training::TrainingState,
    experiment: experiment::ExperimentState,
    dicom: dicom::DicomState,
    /// The 3D view's surfaces of the open case's reference and predicted masks.
    surfaces: surfaces::SurfaceState,
}

impl MriloopApp {
    /// Create the app; `startup` says what to open first (in the background). Loose files'
    /// working copies go to `Session::default_loose_root()`.
    pub fn new(cc: &eframe::CreationContext<'_>, startup: Startup) -> Self {
        Self::with_loose_root(cc, startup, Session::default_loose_root())
    }

    /// Create the app with loose files' working copies under `loose_root`.
    pub fn with_loose_root(
        cc: &eframe::CreationContext<'_>,
        startup: Startup,
        loose_root: PathBuf,
    ) -> Self {
        let render_state = cc.wgpu_render_state.clone();
        if let Some(rs) = &render_state {
            ViewerGpu::install(rs);
        }
        let (notices_tx, notices_rx) = std::sync::mpsc::channel();
        // Panels are drawn without a fill: the frame's clear colour (`clear_color`, the theme's
        // panel colour) is their background. A software rasteriser (Mesa's llvmpipe: VMs,
        // remote desktops) then draws the window in a fraction of the time, since egui's fill
        // shader over the whole window dominated each frame there.
        cc.egui_ctx
            .all_styles_mut(|s| s.visuals.panel_fill = egui::Color32::TRANSPARENT);
        let ctx = cc.egui_ctx.clone();
        let wake_ctx = ctx.clone();
        let session = Session::new(
            loose_root,
            std::sync::Arc::new(move || wake_ctx.request_repaint()),
        );
        let mut app = Self {
            session,
            loading: None,
            stats: HashMap::new(),
            stats_rx: None,
            worklist: WorklistView::default(),
            dialogs: Dialogs::default(),
            commands: Vec::new(),
            when_open: Vec::new(),
            answers: Vec::new(),
            project_rx: None,
            cells: Vec::new(),
            cell3d: None,
            render_state,
            gpu_generation: 0,
            changes: crate::session::Changes::default(),
            ctx,
            title: String::new(),
            notices_tx,
            notices_rx,
            training: training::TrainingState::default(),
            experiment: experiment::ExperimentState::default(),
            dicom: dicom::DicomState::default(),
            surfaces: surfaces::SurfaceState::default(),
        };
        if app.render_state.is_none() {
            app.dialogs.error =
                Some("no wgpu device: mriloop needs a GPU or Mesa's Vulkan driver".into());
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

    /// The logic tier: the project, the open case, the tools.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// The open case, once loaded.
    pub fn open_case(&self) -> Option<&OpenCase> {
        self.session.open_case()
    }

    /// The open project.
    pub fn project(&self) -> Option<&Project> {
        self.session.project()
    }

    /// The project's label table (empty for loose files).
    pub fn labels(&self) -> &LabelTable {
        self.session.labels()
    }

    /// The tool settings.
    pub fn tools(&self) -> &ToolState {
        self.session.tools()
    }

    /// The prompts of the object being segmented with the Prompt tool.
    pub fn prompt_markers(&self) -> &[crate::project::prompt_log::PromptMm] {
        self.session.prompts().markers()
    }

    /// The open case's time-series state (4D cases).
    pub fn time_view(&self) -> Option<&crate::session::TimeView> {
        self.session.time_view()
    }

    /// The time course at the cursor, for a 4D case.
    pub fn time_course_at_cursor(&self) -> Option<([usize; 3], Vec<f32>)> {
        self.session.time_course_at_cursor()
    }

    /// Whether a project or case is being loaded.
    pub fn is_loading(&self) -> bool {
        self.loading.is_some() || self.project_rx.is_some()
    }

    /// The error shown, if any.
    pub fn error(&self) -> Option<&str> {
        self.dialogs.error.as_deref()
    }

    /// The information shown in a dialog (e.g. what was recovered from a journal).
    pub fn info(&self) -> Option<&str> {
        self.dialogs.info.as_deref()
    }

    /// The last notice (e.g. a save), shown in the status bar.
    pub fn notice(&self) -> Option<&str> {
        self.dialogs.notice.as_deref()
    }

    /// Whether the window asks the user what to do with unsaved edits before closing.
    pub fn is_confirming_close(&self) -> bool {
        self.dialogs.confirm_close
    }

    /// Worklist statistics computed so far, by case id.
    pub fn stats(&self) -> &HashMap<String, CaseStats> {
        &self.stats
    }

    /// The views drawn in the last frame, with their rectangles and planes.
    pub fn view_cells(&self) -> &[ViewCell] {
        &self.cells
    }

    /// The 3D view drawn in the last frame, with its rectangle and camera.
    pub fn view3d_cell(&self) -> Option<&View3dCell> {
        self.cell3d.as_ref()
    }

    /// How many times the 3D view's image was rendered on the GPU rather than drawn from its
    /// cache.
    pub fn view3d_renders(&self) -> u64 {
        self.render_state
            .as_ref()
            .map_or(0, ViewerGpu::renders_3d_in)
    }

    /// The case generation of the GPU textures (views draw only their own case's).
    pub(crate) fn gpu_generation(&self) -> u64 {
        self.gpu_generation
    }

    fn wake(&self) -> impl Fn() + Send + 'static {
        let ctx = self.ctx.clone();
        move || ctx.request_repaint()
    }

    /// How many times a view's slice image was rendered on the GPU rather than drawn from its
    /// cache (by its `ViewCell::slot`).
    pub fn view_renders(&self, slot: usize) -> u64 {
        self.render_state
            .as_ref()
            .map_or(0, |rs| ViewerGpu::renders_in(rs, slot))
    }

    /// Whether anything is still coming that the window must poll for without an event.
    fn waiting_for_workers(&self) -> bool {
        self.is_loading()
            || self.dicom.busy()
            || self.training.cohort.is_running()
            || self.stats_rx.is_some()
            || !self.commands.is_empty()
            // Start-up commands wait for a case being loaded or just opened, not for ever (a
            // failed load leaves the window idle).
            || (!self.when_open.is_empty()
                && (self.is_loading() || self.session.open_case().is_some()))
            || !self.answers.is_empty()
            || self.session.busy()
            || self.surfaces.busy()
    }

    /// Ask for the next frame only when something will change without input: workers report
    /// (they also wake the window themselves), playback, an autosave coming due.
    fn schedule_repaint(&self, ctx: &egui::Context) {
        use std::time::Duration;
        if !self.commands.is_empty() {
            ctx.request_repaint();
        } else if self.waiting_for_workers() {
            ctx.request_repaint_after(Duration::from_millis(100));
        } else if self.training.run.is_some()
            || self.training.infer.is_some()
            || self.experiment.run.is_some()
        {
            // Training, inference and experiments wake the window with each event; this keeps
            // the ETA ticking without redrawing every view continuously.
            ctx.request_repaint_after(Duration::from_millis(250));
        }
        if let Some(at) = self.session.time_view().and_then(|t| t.next_frame_at()) {
            let now = ctx.input(|i| i.time);
            ctx.request_repaint_after(Duration::from_secs_f64((at - now).max(0.0)));
        }
        if let Some(due) = self.session.autosave_due_in() {
            ctx.request_repaint_after(due + Duration::from_millis(10));
        }
    }

    /// The window title, sent only when it changes (a viewport command asks for a repaint).
    fn update_title(&mut self, ctx: &egui::Context) {
        let unsaved = if self.session.has_unsaved_edits() {
            " •"
        } else {
            ""
        };
        let title = match (self.session.open_case(), self.session.project()) {
            (Some(o), Some(p)) => {
                format!("mriloop — {} — {}{unsaved}", p.manifest.name, o.case_id)
            }
            (Some(o), None) => format!("mriloop — {}{unsaved}", o.case_id),
            _ => "mriloop".to_string(),
        };
        if title != self.title {
            ctx.send_viewport_cmd(egui::ViewportCommand::Title(title.clone()));
            self.title = title;
        }
    }

    /// Closing with unsaved edits of loose files: keep the window and ask.
    fn guard_close(&mut self, ctx: &egui::Context) {
        let asked = ctx.input(|i| i.viewport().close_requested());
        if asked && self.session.has_unsaved_loose_edits() && !self.dialogs.close_confirmed {
            ctx.send_viewport_cmd(egui::ViewportCommand::CancelClose);
            self.dialogs.confirm_close = true;
        }
    }

    /// Draw every panel; returns the commands they emitted.
    fn draw(&mut self, ui: &mut egui::Ui, ctx: &egui::Context) {
        let mut out = Vec::new();
        panels::menu_bar(ui, self, &mut out);
        panels::status_bar(ui, self);
        if self.session.project().is_some() {
            if self.training.show_panel {
                training::training_panel(ui, self, &mut out);
            }
            panels::worklist(ui, self, &mut out);
        }
        timeseries::time_panel(ui, self, &mut out);
        if self.training.show_cohort {
            cohort::cohort_window(ctx, self, &mut out);
        }
        if self.experiment.show {
            experiment::experiment_window(ctx, self, &mut out);
        }
        if self.dicom.show {
            dicom::dicom_window(ctx, self, &mut out);
        }
        panels::side_panel(ui, self, &mut out);
        (self.cells, self.cell3d) = views::central(ui, self, &mut out);
        panels::error_dialog(ctx, self, &mut out);
        panels::info_dialog(ctx, self, &mut out);
        if self.dialogs.confirm_close {
            panels::confirm_close_dialog(ctx, &mut out);
        }
        if self.dialogs.show_help {
            panels::help_window(ctx, &mut out);
        }
        self.commands.extend(out);
    }
}

/// Keyboard and mouse shortcuts, as listed in the Help panel (F1).
pub const SHORTCUTS: &[(&str, &str)] = &[
    (
        "C / B / E / F / P / T",
        "cursor, brush, eraser, fill, polygon, prompt tool",
    ),
    (
        "click / Shift+click (prompt tool)",
        "the network segments the object in the active label / not this",
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
    ("Ctrl+wheel, middle drag", "zoom about the pointer, pan"),
    ("right drag", "window (left-right) and level (up-down)"),
    (
        "Ctrl+S",
        "save now (a project autosaves when idle; loose files only on Save)",
    ),
    ("Ctrl+Shift+S", "save the loose files' mask as another file"),
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
        let now_s = ctx.input(|i| i.time);
        self.poll_jobs();
        self.poll_training();
        self.poll_experiment();
        self.poll_notices();
        self.poll_dicom();
        self.apply_all();
        self.input(crate::session::Input::Tick { now_s });
        // The frame's one GPU step: everything the session changed, mirrored.
        let changes = std::mem::take(&mut self.changes);
        self.sync(changes);
        self.guard_close(&ctx);
        self.handle_keys(&ctx);
        self.update_title(&ctx);
        self.draw(ui, &ctx);
        self.schedule_repaint(&ctx);
    }

    fn on_exit(&mut self) {
        self.stop_training();
        let changes = self
            .session
            .apply(crate::session::Input::CloseCase { wait: true });
        for m in changes.messages {
            eprintln!("mriloop: {m:?}");
        }
        self.session.finish_stores();
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
