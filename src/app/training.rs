//! The training loop inside the app: the training panel's settings, the background run (a
//! worker thread that owns the network and reports over a channel), live curves, pause /
//! resume / cancel, model versions (register, activate, roll back), re-inference of the
//! unreviewed cases with the new version, and choosing the next case by the model's
//! uncertainty.
//!
//! Invariants: the UI thread never waits on training or inference; it drains their channels
//! once per frame in `poll_training`. The manifest changes only in the session: a finished
//! run and each re-inference result are session inputs. A run trains on a snapshot of the project taken when it
//! starts, with the open case's in-memory mask, so a correction is used at once.

use super::curves::Curves;
use super::training_plan::{plan_form, PlanPanel};
use super::{Command, MriloopApp};
use crate::model::planned::PlanOverrides;
use crate::model::runs::{
    register_version, start_reinfer, start_run, unreviewed_case_ids, InferEvent, InferHandle,
    RunEvent, RunHandle, RunPlan, RunRequest,
};
use crate::model::{FitEvent, FitOptions, Precision, TaskMode, TrainEvent};
use crate::project::{ReviewStatus, RunOutcome};
use crate::session::{Input, WorkerError};
use std::path::PathBuf;
use std::sync::mpsc::TryRecvError;
use std::time::{Duration, Instant};

/// What the training panel lets the user choose.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainSettings {
    /// Fine-tune the active model version (else train from scratch).
    pub fine_tune: bool,
    /// The run's numbers the user set (epochs, steps, patch, batch, class crop, width); the
    /// dataset's plan decides the others.
    pub choices: PlanOverrides,
    /// Input sequences (empty: the project's first two).
    pub sequences: Vec<String>,
    /// Tasks.
    pub mode: TaskMode,
    /// `auto`, `cpu`, `gpu` (wgpu) or, in a build with the `cuda` feature, `cuda`.
    pub backend: String,
    /// Train only on reviewed cases.
    pub only_reviewed: bool,
    /// Loss weight of voxels the annotator changed from the prediction (1: off).
    pub changed_weight: f64,
    /// Predict the unreviewed cases with the new version when the run finishes.
    pub reinfer_after: bool,
    /// Train within this many minutes (epochs and steps fitted to it; `None`: as set).
    pub minutes: Option<f64>,
    /// Train the promptable network (the Prompt tool's), learning from recorded prompts.
    pub promptable: bool,
    /// Data-parallel devices (GPUs 0..n; on the CPU, replicas on its one device).
    pub devices: usize,
    /// The precision the steps compute in (f16/bf16: mixed precision, for GPUs).
    pub precision: Precision,
}

impl Default for TrainSettings {
    fn default() -> Self {
        Self {
            fine_tune: true,
            choices: PlanOverrides::default(),
            sequences: Vec::new(),
            mode: TaskMode::Joint,
            backend: "auto".into(),
            only_reviewed: true,
            changed_weight: 3.0,
            reinfer_after: true,
            minutes: None,
            promptable: false,
            devices: 1,
            precision: Precision::F32,
        }
    }
}

/// Training-panel commands.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainCommand {
    /// Replace the settings.
    Settings(TrainSettings),
    /// Start a run with the settings.
    Start,
    /// Make the dataset's plan again (the cases changed).
    Replan,
    /// Start a run as soon as a project and its first case are open.
    StartWhenOpen,
    /// Pause (true) or resume (false) the run.
    Pause(bool),
    /// Cancel the run (its last checkpoint is kept as a cancelled version).
    Cancel,
    /// Predict the unreviewed cases with the active version.
    Reinfer,
    /// Make a version the active one (roll back or forward) and re-predict the unreviewed cases.
    SetActiveModel(String),
    /// Open the unreviewed case the model is least sure about.
    NextInformative,
    /// Show or hide the training panel.
    TogglePanel,
    /// Show or hide the cohort view.
    ToggleCohort,
    /// Ask where to write the cohort CSV.
    ExportCohortDialog,
    /// Write the cohort table as CSV.
    ExportCohort(PathBuf),
}

/// A run in progress.
pub struct ActiveRun {
    /// The worker.
    pub handle: RunHandle,
    /// The folder of the project it trains on (the user may open another meanwhile).
    pub project_root: PathBuf,
    /// Version being trained (once started).
    pub version: Option<String>,
    /// Device in words.
    pub device: String,
    /// When it was started.
    pub started: Instant,
    /// Time spent paused.
    pub paused_for: Duration,
    /// Since when it is paused.
    pub paused_at: Option<Instant>,
    /// Steps planned.
    pub total_steps: usize,
    /// Last step done.
    pub step: usize,
    /// When the first step finished (ETA is measured from there: loading is not training).
    pub first_step_at: Option<Instant>,
    /// Epochs finished.
    pub epoch: usize,
    /// Epochs planned.
    pub epochs: usize,
    /// Label names of the run.
    pub label_names: Vec<String>,
    /// When a run with a time budget ends (it is paced to end then).
    pub deadline: Option<Instant>,
    /// Failures on burn's device threads before it started (`model::device_failure`): one
    /// after it means the run waits forever, so it is reported failed.
    pub device_failures_at_start: u64,
}

impl ActiveRun {
    /// Estimated time left: to the deadline of a run with a time budget, else from the pace
    /// of the steps so far (pauses excluded).
    pub fn eta(&self) -> Option<Duration> {
        if let Some(d) = self.deadline {
            return Some(d.saturating_duration_since(Instant::now()));
        }
        let first = self.first_step_at?;
        let paused = self.paused_for + self.paused_at.map_or(Duration::ZERO, |p| p.elapsed());
        let spent = first.elapsed().saturating_sub(paused);
        let done = self.step.saturating_sub(1);
        (done > 0).then(|| spent.mul_f64((self.total_steps - self.step) as f64 / done as f64))
    }
}

/// Re-inference in progress.
pub struct ActiveInfer {
    /// The worker.
    pub handle: InferHandle,
    /// With which version.
    pub version: String,
    /// Cases to do.
    pub total: usize,
    /// Cases done.
    pub done: usize,
}

/// The training side of the app.
#[derive(Default)]
pub struct TrainingState {
    /// Panel settings.
    pub settings: TrainSettings,
    /// The run in progress.
    pub run: Option<ActiveRun>,
    /// Curves of the current (or last) run.
    pub curves: Curves,
    /// Last status line.
    pub status: String,
    /// Re-inference in progress.
    pub infer: Option<ActiveInfer>,
    /// Whether the training panel is shown.
    pub show_panel: bool,
    /// Whether the cohort view is shown.
    pub show_cohort: bool,
    /// Cohort table being computed or computed.
    pub cohort: super::cohort::CohortState,
    /// Start a run once the project is open.
    pub start_when_open: bool,
    /// The dataset's plan the panel shows.
    pub plan: PlanPanel,
}

impl MriloopApp {
    /// The training side (panel state, run, curves).
    pub fn training(&self) -> &TrainingState {
        &self.training
    }

    /// Whether a training run or re-inference is going on (the UI keeps repainting then).
    pub(super) fn training_busy(&self) -> bool {
        self.training.run.is_some() || self.training.infer.is_some()
    }

    /// Apply a training-panel command.
    pub(super) fn apply_train(&mut self, cmd: TrainCommand) {
        match cmd {
            TrainCommand::Settings(s) => self.training.settings = s,
            TrainCommand::Start => self.start_training(),
            TrainCommand::Replan => self.training.plan.reset(),
            TrainCommand::StartWhenOpen => self.training.start_when_open = true,
            TrainCommand::Pause(p) => self.pause_run(p),
            TrainCommand::Cancel => {
                if let Some(run) = &self.training.run {
                    run.handle.control.cancel();
                    self.training.status = "cancelling: keeping the last checkpoint…".into();
                }
            }
            TrainCommand::Reinfer => {
                if let Some(v) = self
                    .session
                    .project()
                    .and_then(|p| p.manifest.active_model.clone())
                {
                    self.start_reinfer_with(&v);
                }
            }
            TrainCommand::SetActiveModel(id) => {
                self.input(Input::SetActiveModel(id.clone()));
                let active = self
                    .session
                    .project()
                    .is_some_and(|p| p.manifest.active_model.as_deref() == Some(id.as_str()));
                if active {
                    self.start_reinfer_with(&id);
                }
            }
            TrainCommand::NextInformative => {
                if let Some(i) = self.most_informative() {
                    self.commands.push(Command::OpenCase(i));
                }
            }
            TrainCommand::TogglePanel => self.training.show_panel ^= true,
            TrainCommand::ToggleCohort => self.toggle_cohort(),
            TrainCommand::ExportCohortDialog => self.ask(|| {
                let path = rfd::FileDialog::new()
                    .add_filter("CSV", &["csv"])
                    .set_file_name("cohort.csv")
                    .save_file()?;
                Some(Command::Train(TrainCommand::ExportCohort(path)))
            }),
            TrainCommand::ExportCohort(path) => self.export_cohort(path),
        }
    }

    /// Pause (true) or resume (false) the run in progress, keeping count of the time paused.
    fn pause_run(&mut self, p: bool) {
        if let Some(run) = self.training.run.as_mut() {
            run.handle.control.set_paused(p);
            match (p, run.paused_at) {
                (true, None) => run.paused_at = Some(Instant::now()),
                (false, Some(at)) => {
                    run.paused_for += at.elapsed();
                    run.paused_at = None;
                }
                _ => {}
            }
            self.training.status = if p { "paused" } else { "resumed" }.into();
        }
    }

    /// Show or hide the cohort view; showing it starts computing the table afresh.
    fn toggle_cohort(&mut self) {
        self.training.show_cohort ^= true;
        if self.training.show_cohort {
            if let Some(p) = self.session.project() {
                self.training.cohort =
                    super::cohort::CohortState::start(p.clone(), Box::new(self.wake()));
            }
        }
    }

    /// Write the cohort table as CSV to `path` on a worker; the outcome comes back as a notice.
    fn export_cohort(&mut self, path: PathBuf) {
        // Written by a worker: the table's text is made here, the file there.
        let csv = self.training.cohort.csv();
        let tx = self.notices_tx.clone();
        let wake = self.wake();
        std::thread::spawn(move || {
            let r = crate::atomic::write_atomic(&path, csv.as_bytes())
                .map(|()| format!("wrote {}", path.display()))
                .map_err(|e| format!("{}: {e}", path.display()));
            let _ = tx.send(r);
            wake();
        });
    }

    /// The unreviewed case (not the open one) with the highest uncertainty score.
    pub fn most_informative(&self) -> Option<usize> {
        let p = self.session.project()?;
        let current = self.session.open_case().and_then(|o| o.case_index);
        p.manifest
            .cases
            .iter()
            .enumerate()
            .filter(|(i, c)| c.review == ReviewStatus::Unreviewed && Some(*i) != current)
            .max_by(|a, b| {
                let s = |c: &crate::project::Case| c.uncertainty.map_or(-1.0, |u| u.score());
                s(a.1).total_cmp(&s(b.1)).then(b.0.cmp(&a.0))
            })
            .map(|(i, _)| i)
    }

    /// The plan a run with settings `s` fine-tuning `fine_tune_from` trains by: the panel's, for
    /// the run's backend, made a promptable run's when it starts a promptable network.
    fn run_plan(
        &self,
        project: &crate::project::Project,
        s: &TrainSettings,
        fine_tune_from: Option<&str>,
    ) -> Option<crate::model::plan::Plan> {
        let starts_promptable =
            crate::model::runs::starts_a_promptable_network(project, s.promptable, fine_tune_from);
        self.training
            .plan
            .ready()
            .filter(|_| self.training.plan.backend == s.backend)
            .map(|p| match starts_promptable {
                true => p.clone().for_prompting(),
                false => p.clone(),
            })
    }

    fn start_training(&mut self) {
        if self.training.run.is_some() {
            return;
        }
        let Some(project) = self.session.project().cloned() else {
            self.dialogs.error = Some("open a project to train on its cases".into());
            return;
        };
        let s = self.training.settings.clone();
        let fine_tune_from = if s.fine_tune {
            project.manifest.active_model.clone()
        } else {
            None
        };
        // The open case's mask as it is now, saved or not.
        let masks = self
            .session
            .open_case()
            .and_then(|o| {
                let id = project.manifest.cases.get(o.case_index?)?.id.clone();
                Some((id, o.reference.clone()?))
            })
            .into_iter()
            .collect();
        let plan = self.run_plan(&project, &s, fine_tune_from.as_deref());
        let plan = plan.as_ref();
        let (total_steps, epochs) = plan.map_or((0, 0), |p| {
            let e = s.choices.epochs(p);
            (e * s.choices.steps_per_epoch(p), e)
        });
        let request = RunRequest {
            options: fit_options(&s, fine_tune_from.is_some()),
            plan: RunPlan::On {
                plan: plan.map(|p| Box::new(p.clone())),
                choices: s.choices.clone(),
            },
            backend: s.backend.clone(),
            fine_tune_from: fine_tune_from.clone(),
            only_reviewed: s.only_reviewed,
            changed_weight: s.changed_weight,
            masks,
            minutes: s.minutes,
            promptable: s.promptable,
            devices: s.devices,
            precision: s.precision,
        };
        let wake = self.wake();
        let project_root = project.root().to_path_buf();
        let handle = start_run(project, request, wake);
        self.training.curves = Curves::default();
        self.training.status = match fine_tune_from {
            Some(v) => format!("fine-tuning {v}: loading cases…"),
            None => "training from scratch: loading cases…".into(),
        };
        self.training.run = Some(ActiveRun {
            handle,
            project_root,
            version: None,
            device: String::new(),
            started: Instant::now(),
            paused_for: Duration::ZERO,
            paused_at: None,
            total_steps,
            step: 0,
            first_step_at: None,
            epoch: 0,
            epochs,
            label_names: Vec::new(),
            device_failures_at_start: crate::model::device_failure::failures(),
            deadline: s
                .minutes
                .filter(|m| m.is_finite() && *m > 0.0)
                .map(|m| Instant::now() + Duration::from_secs_f64(m * 60.0)),
        });
    }

    fn start_reinfer_with(&mut self, version: &str) {
        let Some(project) = self.session.project().cloned() else {
            return;
        };
        let Some(v) = project.manifest.models.iter().find(|m| m.id == version) else {
            return;
        };
        if let Some(old) = self.training.infer.take() {
            old.handle
                .cancel
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let ids = unreviewed_case_ids(&project.manifest);
        let total = ids.len();
        let handle = start_reinfer(
            project.clone(),
            v.clone(),
            ids,
            self.training.settings.backend.clone(),
            self.wake(),
        );
        self.training.status = format!("predicting {total} unreviewed cases with {version}…");
        self.training.infer = Some(ActiveInfer {
            handle,
            version: version.to_string(),
            total,
            done: 0,
        });
    }

    /// Drain the training and inference channels (never waits).
    pub(super) fn poll_training(&mut self) {
        self.training.cohort.poll();
        self.poll_plan();
        let open = self.session.open_case().is_some() && self.session.project().is_some();
        if self.training.start_when_open && open {
            self.training.start_when_open = false;
            self.start_training();
        }
        let finished = self.drain_run_events();
        self.finish_run(finished);
        self.poll_infer();
    }

    /// Take the plan's worker result; make the plan when the panel is shown without one for
    /// the chosen backend.
    fn poll_plan(&mut self) {
        self.training.plan.poll();
        let backend = self.training.settings.backend.clone();
        if self.training.show_panel && self.training.plan.wanted(&backend) {
            if let Some(project) = self.session.project().cloned() {
                let wake = self.wake();
                self.training.plan.start(project, &backend, wake);
            }
        }
    }

    /// Take the run's pending events (never waits): progress and curves are updated here; the
    /// run's end, if it came, is returned.
    fn drain_run_events(&mut self) -> Option<Result<crate::project::ModelVersion, WorkerError>> {
        let mut finished = None;
        if let Some(run) = self.training.run.as_mut() {
            loop {
                match run.handle.events.try_recv() {
                    Ok(RunEvent::Started {
                        version,
                        device,
                        training_cases,
                        validation_cases,
                        total_steps,
                        epochs,
                        label_names,
                        validation_gaps,
                        ..
                    }) => {
                        self.training.status = format!(
                            "training {version} on {device}: {} cases, {} held out for validation",
                            training_cases.len(),
                            validation_cases.len()
                        );
                        for gap in validation_gaps {
                            self.training.status.push_str(&format!("\nwarning: {gap}"));
                        }
                        run.version = Some(version);
                        run.device = device;
                        run.total_steps = total_steps;
                        run.epochs = epochs;
                        run.label_names = label_names;
                    }
                    Ok(RunEvent::Fit(FitEvent::Train(TrainEvent::Step { step, loss }))) => {
                        self.training.curves.push_step(step, &loss);
                        run.step = step;
                        if run.first_step_at.is_none() {
                            run.first_step_at = Some(Instant::now());
                        }
                    }
                    Ok(RunEvent::Fit(FitEvent::Epoch(e))) => {
                        let names = run.label_names.clone();
                        self.training
                            .curves
                            .push_epoch(run.step, &e.validation, |l| {
                                names.get(l).cloned().unwrap_or_else(|| format!("label{l}"))
                            });
                        run.epoch = e.epoch;
                    }
                    Ok(RunEvent::Fit(_)) => {}
                    Ok(RunEvent::Finished(v)) => {
                        finished = Some(Ok(v));
                        break;
                    }
                    Ok(RunEvent::Failed(e)) => {
                        finished = Some(Err(e));
                        break;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        finished = Some(Err(WorkerError::Panicked {
                            worker: "the training run".into(),
                            message: "its thread ended without a result".into(),
                        }));
                        break;
                    }
                }
            }
            if finished.is_none() {
                finished = device_failed(run.device_failures_at_start).map(Err);
            }
        }
        finished
    }

    /// Handle the run's end: record the version (in its own project when another one was
    /// opened meanwhile), activate it and re-predict, or report the failure.
    fn finish_run(&mut self, finished: Option<Result<crate::project::ModelVersion, WorkerError>>) {
        let elsewhere = self.training.run.as_ref().and_then(|r| {
            let here = self.session.project().map(|p| p.root().to_path_buf());
            (here.as_ref() != Some(&r.project_root)).then(|| r.project_root.clone())
        });
        match (finished, elsewhere) {
            (Some(Ok(version)), Some(root)) => {
                // Another project was opened meanwhile: record the version in its own project.
                self.training.run = None;
                self.training.status = format!("{} finished (in {})", version.id, root.display());
                register_elsewhere(root, version, self.notices_tx.clone());
            }
            (Some(Ok(version)), None) => {
                self.training.run = None;
                let id = version.id.clone();
                let done = version.outcome == RunOutcome::Finished;
                let promptable = version.promptable;
                self.training.status = match (done, promptable) {
                    (true, false) => format!("{id} finished and is now the active model"),
                    (true, true) => format!(
                        "{id} (promptable, learned from {} recorded prompts) finished: the \
                         Prompt tool uses it",
                        version.learned_prompts
                    ),
                    _ => format!("{id} cancelled; its last checkpoint is kept (not active)"),
                };
                self.input(Input::RunFinished {
                    version: Box::new(version),
                    activate: done && !promptable,
                });
                if done && !promptable && self.training.settings.reinfer_after {
                    self.start_reinfer_with(&id);
                }
            }
            (Some(Err(e)), _) => {
                self.training.run = None;
                self.training.status = "training failed".into();
                self.dialogs.error = Some(format!("Training failed: {e}"));
            }
            (None, _) => {}
        }
    }

    fn poll_infer(&mut self) {
        let mut predicted = Vec::new();
        let mut end = None;
        if let Some(inf) = self.training.infer.as_mut() {
            loop {
                match inf.handle.events.try_recv() {
                    Ok(InferEvent::Started { total }) => inf.total = total,
                    Ok(InferEvent::Case(p)) => {
                        inf.done += 1;
                        predicted.push(p);
                    }
                    Ok(InferEvent::CaseFailed { case_id, message }) => {
                        self.notices_tx
                            .send(Err(format!("case {case_id}: {message}")))
                            .ok();
                    }
                    Ok(InferEvent::Finished { done }) => {
                        end = Some(Ok(format!(
                            "predicted {done} unreviewed cases with {}",
                            inf.version
                        )));
                        break;
                    }
                    Ok(InferEvent::Failed(e)) => {
                        end = Some(Err(e));
                        break;
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        end = Some(Err(WorkerError::Panicked {
                            worker: "the re-inference".into(),
                            message: "its thread ended without a result".into(),
                        }));
                        break;
                    }
                }
            }
        }
        // Each prediction goes into the project; the open case's is shown at once.
        for pred in predicted {
            self.input(Input::Predicted(pred));
        }
        match end {
            Some(Ok(msg)) => {
                self.training.infer = None;
                self.training.status = msg;
                self.restart_stats();
            }
            Some(Err(e)) => {
                self.training.infer = None;
                self.dialogs.error = Some(format!("Prediction failed: {e}"));
            }
            None => {}
        }
    }

    /// Stop background training and inference (on exit): cancel, wait for the run to keep its
    /// last checkpoint.
    pub(super) fn stop_training(&mut self) {
        if let Some(inf) = self.training.infer.take() {
            inf.handle
                .cancel
                .store(true, std::sync::atomic::Ordering::Relaxed);
            inf.handle.join();
        }
        if let Some(run) = self.training.run.take() {
            let root = run.project_root.clone();
            let Some(version) = run.handle.cancel_and_wait() else {
                return;
            };
            let here = self.session.project().is_some_and(|p| p.root() == root);
            if !here {
                let (tx, _rx) = std::sync::mpsc::channel();
                register_elsewhere(root, version, tx);
                return;
            }
            self.input(Input::RunFinished {
                version: Box::new(version),
                activate: false,
            });
            // At exit: the manifest is written now (a case's store saves it when it closes).
            let has_store = self
                .session
                .open_case()
                .is_some_and(|o| o.edits.store.is_some() && !o.is_loose());
            if let (false, Some(p)) = (has_store, self.session.project()) {
                if let Err(e) = p.save() {
                    eprintln!("mriloop: {e}");
                }
            }
        }
    }

    /// Forget re-inference of the previous project (a new one was opened).
    pub(super) fn training_project_switched(&mut self, project: &crate::project::Project) {
        // A project whose reference masks nobody has reviewed here (an imported dataset, cases
        // added with their ground truth) trains on them all; one with reviewed cases, on those.
        self.training.settings.only_reviewed = project
            .manifest
            .cases
            .iter()
            .any(|c| c.review == ReviewStatus::Reviewed);
        if let Some(inf) = self.training.infer.take() {
            inf.handle
                .cancel
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
        self.training.cohort = super::cohort::CohortState::default();
        self.training.show_cohort = false;
        self.training.plan.reset();
    }
}

/// The fitting options of a run with settings `s` (a smaller learning rate when fine-tuning);
/// its numbers come from the plan and the user's choices (`RunPlan::On`).
fn fit_options(s: &TrainSettings, fine_tune: bool) -> FitOptions {
    FitOptions {
        sequences: s.sequences.clone(),
        mode: s.mode.name().into(),
        learning_rate: if fine_tune { 5e-4 } else { 2e-3 },
        ..FitOptions::default()
    }
}

/// Record a finished run's version in the project at `root` on disk (not the open one).
fn register_elsewhere(
    root: PathBuf,
    version: crate::project::ModelVersion,
    notices: std::sync::mpsc::Sender<Result<String, String>>,
) {
    std::thread::spawn(move || {
        let result = crate::project::Project::open(&root).and_then(|mut p| {
            register_version(&mut p.manifest, version, false);
            p.save()
        });
        if let Err(e) = result {
            let _ = notices.send(Err(e.to_string()));
        }
    });
}

/// The training panel: settings, start / pause / cancel, progress with epoch and ETA, live
/// curves, model versions.
pub fn training_panel(ui: &mut egui::Ui, app: &MriloopApp, out: &mut Vec<Command>) {
    let Some(project) = app.project() else {
        return;
    };
    let t = app.training();
    let mut s = t.settings.clone();
    egui::Panel::bottom("training")
        .resizable(true)
        .default_size(300.0)
        .show(ui, |ui| {
            ui.horizontal(|ui| {
                ui.heading("Training");
                ui.label(&t.status);
            });
            ui.horizontal_top(|ui| {
                ui.vertical(|ui| {
                    ui.set_width(330.0);
                    ui.add_enabled_ui(t.run.is_none(), |ui| settings_form(ui, project, &mut s));
                    run_buttons(ui, project, t, out);
                    progress_bars(ui, t);
                    versions_table(ui, project, out);
                });
                ui.separator();
                // The dataset's plan in a column of its own, editable like the settings.
                ui.vertical(|ui| {
                    ui.set_width(300.0);
                    ui.add_enabled_ui(t.run.is_none(), |ui| {
                        let active = project.manifest.active_model.as_deref();
                        let promptable = crate::model::runs::starts_a_promptable_network(
                            project,
                            s.promptable,
                            active.filter(|_| s.fine_tune),
                        );
                        plan_form(ui, &t.plan, &mut s.choices, promptable, out);
                    });
                });
                if s != t.settings {
                    push_train(out, TrainCommand::Settings(s.clone()));
                }
                ui.separator();
                ui.vertical(|ui| super::curves::show(ui, &t.curves));
            });
        });
}

/// Emit a training-panel command.
fn push_train(out: &mut Vec<Command>, c: TrainCommand) {
    out.push(Command::Train(c));
}

/// The run's settings (disabled while a run is going on), edited in `s`.
fn settings_form(ui: &mut egui::Ui, project: &crate::project::Project, s: &mut TrainSettings) {
    start_from_row(ui, project, s);
    ui.horizontal(|ui| {
        ui.label("tasks");
        for (m, name) in [
            (TaskMode::Joint, "joint"),
            (TaskMode::SegmentationOnly, "seg only"),
            (TaskMode::ClassificationOnly, "class only"),
        ] {
            ui.radio_value(&mut s.mode, m, name);
        }
        if s.mode == TaskMode::Joint && !project.manifest.has_classified_case() {
            ui.weak("(no case has a class: the segmentation only)");
        }
    });
    sequences_row(ui, project, s);
    ui.horizontal(|ui| {
        ui.label("backend");
        // burn's CUDA backend only where this build has it (`--features cuda`).
        let cuda = cfg!(feature = "cuda").then_some("cuda");
        for b in ["auto", "cpu", "gpu"].into_iter().chain(cuda) {
            ui.radio_value(&mut s.backend, b.to_string(), b);
        }
        ui.label("devices");
        ui.add(egui::DragValue::new(&mut s.devices).range(1..=16))
            .on_hover_text(
                "data-parallel training: each batch split across this many GPUs (on the CPU, \
                 replicas on its one device), their gradients summed",
            );
    });
    ui.horizontal(|ui| {
        ui.label("precision");
        for p in [Precision::F32, Precision::F16, Precision::Bf16] {
            ui.radio_value(&mut s.precision, p, p.name()).on_hover_text(
                "f16 / bf16: mixed precision — convolutions in half precision on f32 weights \
                 (for GPUs; slower than f32 on the CPU); refused where the device lacks the type",
            );
        }
    });
    let reviewed = project
        .manifest
        .cases
        .iter()
        .filter(|c| c.review == ReviewStatus::Reviewed)
        .count();
    ui.checkbox(
        &mut s.only_reviewed,
        format!("only reviewed cases ({reviewed})"),
    )
    .on_hover_text(
        "ticked when the project opens if any case is reviewed; else every case with a \
         reference mask trains (an imported dataset's ground truth)",
    );
    ui.horizontal(|ui| {
        ui.label("weight of corrected voxels");
        ui.add(egui::Slider::new(&mut s.changed_weight, 1.0..=10.0));
    });
    ui.checkbox(&mut s.reinfer_after, "predict unreviewed cases when done");
    ui.checkbox(
        &mut s.promptable,
        "promptable network (for the Prompt tool; learns from the recorded prompts)",
    )
    .on_hover_text(
        "guidance channels for clicks, boxes, scribbles and the mask to refine; a simulated \
         user clicks at its errors, and the prompts recorded on the training cases are replayed",
    );
    budget_row(ui, s);
}

/// A time budget: the run's epochs and steps are then fitted to it on this device.
fn budget_row(ui: &mut egui::Ui, s: &mut TrainSettings) {
    ui.horizontal(|ui| {
        let mut on = s.minutes.is_some();
        if ui
            .checkbox(&mut on, "within")
            .on_hover_text("time a few steps here and fit epochs and steps to the budget")
            .changed()
        {
            s.minutes = on.then_some(30.0);
        }
        let mut minutes = s.minutes.unwrap_or(30.0);
        let field = egui::DragValue::new(&mut minutes)
            .range(0.5..=1440.0)
            .speed(0.5);
        if ui.add_enabled(on, field).changed() {
            s.minutes = Some(minutes);
        }
        ui.label("minutes");
    });
}

/// From scratch or fine-tuning the active version (offered only when there is one).
fn start_from_row(ui: &mut egui::Ui, project: &crate::project::Project, s: &mut TrainSettings) {
    let active = project.manifest.active_model.clone();
    ui.horizontal(|ui| {
        let scratch = !(s.fine_tune && active.is_some());
        if ui.radio(scratch, "from scratch").clicked() {
            s.fine_tune = false;
        }
        ui.add_enabled(
            active.is_some(),
            egui::RadioButton::new(
                s.fine_tune && active.is_some(),
                format!(
                    "fine-tune {}",
                    active.as_deref().unwrap_or("(no model yet)")
                ),
            ),
        )
        .clicked()
        .then(|| s.fine_tune = true);
    });
}

/// The input sequences, one checkbox each; at least one stays ticked, in the project's order.
fn sequences_row(ui: &mut egui::Ui, project: &crate::project::Project, s: &mut TrainSettings) {
    ui.horizontal_wrapped(|ui| {
        ui.label("sequences");
        // None chosen means the project's first two: shown ticked.
        if s.sequences.is_empty() {
            s.sequences = project
                .manifest
                .sequences
                .iter()
                .take(2)
                .map(|n| n.to_string())
                .collect();
        }
        for name in &project.manifest.sequences {
            let n = name.to_string();
            let mut on = s.sequences.contains(&n);
            if ui.checkbox(&mut on, n.as_str()).changed() {
                let mut chosen = s.sequences.clone();
                if on {
                    chosen.push(n);
                } else if chosen.len() > 1 {
                    chosen.retain(|x| *x != n);
                }
                // Channel order is the project's sequence order.
                s.sequences = project
                    .manifest
                    .sequences
                    .iter()
                    .map(|x| x.to_string())
                    .filter(|x| chosen.contains(x))
                    .collect();
            }
        }
    });
}

/// Start training / Predict unreviewed when idle; Pause or Resume and Cancel during a run.
fn run_buttons(
    ui: &mut egui::Ui,
    project: &crate::project::Project,
    t: &TrainingState,
    out: &mut Vec<Command>,
) {
    ui.horizontal(|ui| match &t.run {
        None => {
            if ui.button("Start training").clicked() {
                push_train(out, TrainCommand::Start);
            }
            if ui
                .add_enabled(
                    project.manifest.active_model.is_some() && t.infer.is_none(),
                    egui::Button::new("Predict unreviewed"),
                )
                .clicked()
            {
                push_train(out, TrainCommand::Reinfer);
            }
        }
        Some(run) => {
            if run.paused_at.is_some() {
                if ui.button("Resume").clicked() {
                    push_train(out, TrainCommand::Pause(false));
                }
            } else if ui.button("Pause").clicked() {
                push_train(out, TrainCommand::Pause(true));
            }
            if ui.button("Cancel").clicked() {
                push_train(out, TrainCommand::Cancel);
            }
        }
    });
}

/// Progress of the run (epoch, step, ETA) and of re-inference, when they are going on.
fn progress_bars(ui: &mut egui::Ui, t: &TrainingState) {
    if let Some(run) = &t.run {
        let eta = run.eta().map_or("…".into(), |d| {
            format!("{}:{:02}", d.as_secs() / 60, d.as_secs() % 60)
        });
        let epoch = format!("epoch {}/{}", (run.epoch + 1).min(run.epochs), run.epochs);
        // A run with a time budget is paced by time: its bar is the time used.
        let (frac, steps) = match run.deadline {
            Some(end) => {
                let span = end.saturating_duration_since(run.started).as_secs_f32();
                let used = run.started.elapsed().as_secs_f32();
                (used / span.max(1e-3), format!("step {}", run.step))
            }
            None => (
                run.step as f32 / run.total_steps.max(1) as f32,
                format!("step {}/{}", run.step, run.total_steps),
            ),
        };
        ui.add(
            egui::ProgressBar::new(frac.min(1.0)).text(format!("{epoch} · {steps} · ETA {eta}")),
        );
        if let Some(note) = first_steps_note(&run.device, run.step) {
            ui.weak(note);
        }
    }
    if let Some(inf) = &t.infer {
        ui.add(
            egui::ProgressBar::new(inf.done as f32 / inf.total.max(1) as f32).text(format!(
                "predicting with {}: {}/{}",
                inf.version, inf.done, inf.total
            )),
        );
    }
}

/// What the panel says while a run on `device` (in words, as `choose_device` names it) waits
/// for its first step: on a GPU the kernels are compiled and tuned first, which takes minutes
/// the first time on a machine (measured on a software Vulkan device: 5 min 37 s, then 18 s
/// with the caches warm), so the user knows it has not hung.
fn first_steps_note(device: &str, step: usize) -> Option<&'static str> {
    (step == 0 && device.starts_with("GPU")).then_some(
        "compiling and tuning the GPU kernels: minutes on this machine's first GPU run, \
         seconds later (they are cached)",
    )
}

/// The model versions: outcome, parent, best validation figures; the active one marked, any
/// other made active with a click.
fn versions_table(ui: &mut egui::Ui, project: &crate::project::Project, out: &mut Vec<Command>) {
    if project.manifest.models.is_empty() {
        ui.label("No model version yet.");
        return;
    }
    ui.label("Model versions");
    egui::ScrollArea::vertical()
        .id_salt("versions")
        .max_height(120.0)
        .show(ui, |ui| {
            egui::Grid::new("versions grid")
                .striped(true)
                .show(ui, |ui| {
                    for m in project.manifest.models.iter().rev() {
                        let active =
                            project.manifest.active_model.as_deref() == Some(m.id.as_str());
                        if ui
                            .selectable_label(active, &m.id)
                            .on_hover_text("make this the active model and re-predict")
                            .clicked()
                            && !active
                        {
                            out.push(Command::Train(TrainCommand::SetActiveModel(m.id.clone())));
                        }
                        ui.label(match m.outcome {
                            RunOutcome::Finished => "finished",
                            RunOutcome::Cancelled => "cancelled",
                        });
                        ui.label(
                            m.parent
                                .as_deref()
                                .map_or("scratch".into(), |p| format!("from {p}")),
                        );
                        ui.label(format!("{} cases", m.trained_on.len()));
                        let best = m.best_epoch().map_or("—".into(), |e| {
                            let d: Vec<f64> = e.dice.iter().flatten().copied().collect();
                            let dice = if d.is_empty() {
                                "—".into()
                            } else {
                                format!("{:.3}", d.iter().sum::<f64>() / d.len() as f64)
                            };
                            format!(
                                "Dice {dice} · AUC {}",
                                e.class_auc.map_or("—".into(), |a| format!("{a:.2}"))
                            )
                        });
                        ui.label(best);
                        ui.end_row();
                    }
                });
        });
}

/// The training run's failure if burn's device threads failed since `count`
/// (`model::device_failure`): the run's thread waits for them forever and sends nothing more.
fn device_failed(count: u64) -> Option<WorkerError> {
    let failure = crate::model::device_failure::failure_since(count)?;
    Some(WorkerError::Failed {
        worker: "the training run".into(),
        message: format!(
            "the GPU backend failed ({failure}) and the run cannot go on; train on the CPU, or \
             with smaller patches or batches"
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::first_steps_note;

    #[test]
    fn a_gpu_run_says_why_its_first_step_waits_and_a_cpu_run_says_nothing() {
        assert!(first_steps_note("GPU: NVIDIA H200 (burn wgpu backend)", 0).is_some());
        assert!(first_steps_note("GPU (burn wgpu backend)", 0).is_some());
        assert_eq!(
            first_steps_note("GPU (burn wgpu backend)", 1),
            None,
            "it has stepped"
        );
        assert_eq!(first_steps_note("CPU (burn flex backend)", 0), None);
        assert_eq!(first_steps_note("", 0), None, "the device is not known yet");
    }
}
