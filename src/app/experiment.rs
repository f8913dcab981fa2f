//! The Experiment panel: choose a plan file, run it on the open project in the background (the
//! same `experiment::run_experiment` as `mriloop experiment`), follow its progress (run, step,
//! ETA), cancel it, and read the outcome: headline figures per arm, the report's folder and
//! the plots.
//!
//! Invariants: the UI thread never waits on the experiment; a worker thread owns it and
//! reports over a channel drained once per frame in `poll_experiment`, waking the window with
//! each message. The report goes to `<project>/experiments/<plan>-<time>/`; the project's cases
//! and manifest are not touched.

use super::{Command, MriloopApp};
use crate::experiment::{revise_run_steps, ExperimentEvent, ExperimentPlan, ExperimentResult};
use crate::model::{FitControl, FitEvent, TrainEvent};
use crate::session::WorkerError;
use std::path::PathBuf;
use std::sync::mpsc::{channel, Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Instant;

/// Experiment-panel commands.
#[derive(Debug, Clone, PartialEq)]
pub enum ExperimentCommand {
    /// Show or hide the panel.
    Toggle,
    /// Ask for a plan file with a dialog.
    ChoosePlanDialog,
    /// Read this plan file (by a worker).
    LoadPlan(PathBuf),
    /// A plan file was read.
    PlanRead(PathBuf, Box<crate::experiment::ExperimentPlan>),
    /// Run the plan on the project.
    Start,
    /// Stop at the next step.
    Cancel,
}

/// What the worker sends.
enum Message {
    Event(ExperimentEvent),
    Done(Box<Result<ExperimentResult, WorkerError>>),
}

/// A running experiment, as the panel shows it.
pub struct ExperimentRun {
    rx: Receiver<Message>,
    control: Arc<FitControl>,
    started: Instant,
    /// Where the report goes.
    pub out: PathBuf,
    /// Runs in the plan.
    pub runs: usize,
    /// The current run (from 0), its arm and seed.
    pub current: Option<(usize, String, u64)>,
    /// Steps done over all runs.
    pub steps_done: usize,
    /// Steps of each run: planned, revised as runs start (a budgeted run's count is known then).
    run_steps: Vec<usize>,
    /// Seeds per arm.
    seeds: usize,
    /// The device, in words.
    pub device: String,
    /// The current run is being evaluated.
    pub evaluating: bool,
}

impl ExperimentRun {
    /// Steps of all runs (as far as known: see `run_steps`).
    pub fn steps_total(&self) -> usize {
        self.run_steps.iter().sum()
    }

    /// Seconds left at the pace so far; `None` before the first step.
    pub fn eta_s(&self) -> Option<f64> {
        (self.steps_done > 0).then(|| {
            let per = self.started.elapsed().as_secs_f64() / self.steps_done as f64;
            per * self.steps_total().saturating_sub(self.steps_done) as f64
        })
    }
}

/// The panel's state.
#[derive(Default)]
pub struct ExperimentState {
    /// Whether the panel is shown.
    pub show: bool,
    /// The chosen plan file and the plan read from it.
    pub plan: Option<(PathBuf, ExperimentPlan)>,
    /// The running experiment.
    pub run: Option<ExperimentRun>,
    /// The last finished experiment and its report folder.
    pub result: Option<(ExperimentResult, PathBuf)>,
    /// What happened last, in words.
    pub status: String,
}

impl MriloopApp {
    /// The Experiment panel's state.
    pub fn experiment(&self) -> &ExperimentState {
        &self.experiment
    }

    /// Apply an Experiment-panel command.
    pub(super) fn apply_experiment(&mut self, cmd: ExperimentCommand) {
        match cmd {
            ExperimentCommand::Toggle => self.experiment.show ^= true,
            ExperimentCommand::ChoosePlanDialog => self.ask(|| {
                let path = rfd::FileDialog::new()
                    .set_title("Choose an experiment plan")
                    .add_filter("plan (JSON)", &["json"])
                    .pick_file()?;
                Some(Command::Experiment(ExperimentCommand::LoadPlan(path)))
            }),
            // The plan is read by a worker; it comes back as `PlanRead`.
            ExperimentCommand::LoadPlan(path) => self.ask(move || {
                Some(match ExperimentPlan::load(&path) {
                    Ok(plan) => {
                        Command::Experiment(ExperimentCommand::PlanRead(path, Box::new(plan)))
                    }
                    Err(e) => Command::Error(e.to_string()),
                })
            }),
            ExperimentCommand::PlanRead(path, plan) => {
                self.experiment.status = format!("plan {} read", path.display());
                self.experiment.plan = Some((path, *plan));
            }
            ExperimentCommand::Start => self.start_experiment(),
            ExperimentCommand::Cancel => {
                if let Some(run) = &self.experiment.run {
                    run.control.cancel();
                    self.experiment.status = "cancelling at the next step…".into();
                }
            }
        }
    }

    fn start_experiment(&mut self) {
        if self.experiment.run.is_some() {
            return;
        }
        if self.training_busy() {
            self.dialogs.error = Some(
                "a training run or prediction is going on; start the experiment when it ends"
                    .into(),
            );
            return;
        }
        let (Some(project), Some((path, plan))) = (self.session.project(), &self.experiment.plan)
        else {
            self.dialogs.error = Some("open a project and choose a plan first".into());
            return;
        };
        let out = report_dir(project, path);
        let (run_steps, seeds) = (plan.run_steps(), plan.seeds.len());
        let (tx, rx) = channel();
        let control = Arc::new(FitControl::default());
        let (project, plan, dir, ctl) =
            (project.clone(), plan.clone(), out.clone(), control.clone());
        let wake = self.wake();
        let spawned = std::thread::Builder::new()
            .name("mriloop-experiment".into())
            .spawn(move || {
                let (etx, erx) = channel();
                let result = std::thread::scope(|scope| {
                    scope.spawn(|| {
                        for e in erx {
                            let _ = tx.send(Message::Event(e));
                            wake();
                        }
                    });
                    let r = crate::background::run_in_background(|| {
                        crate::worker::catch_worker("the experiment", || {
                            crate::experiment::run_experiment(&project, &plan, &dir, &etx, &ctl)
                        })
                    });
                    drop(etx);
                    r
                });
                let done = experiment_outcome(result, &plan.name, &dir);
                let _ = tx.send(Message::Done(Box::new(done)));
                wake();
            });
        match spawned {
            Ok(_) => {
                self.experiment.status = format!("running; the report goes to {}", out.display());
                self.experiment.run = Some(ExperimentRun {
                    rx,
                    control,
                    started: Instant::now(),
                    out,
                    runs: 0,
                    current: None,
                    steps_done: 0,
                    run_steps,
                    seeds,
                    device: String::new(),
                    evaluating: false,
                });
            }
            Err(e) => {
                self.dialogs.error = Some(format!("could not start the experiment thread: {e}"))
            }
        }
    }

    /// Drain the running experiment's messages (once per frame).
    pub(super) fn poll_experiment(&mut self) {
        let Some(run) = self.experiment.run.as_mut() else {
            return;
        };
        let mut done = None;
        loop {
            match run.rx.try_recv() {
                Ok(Message::Event(e)) => match e {
                    ExperimentEvent::Started { runs, device, .. } => {
                        run.runs = runs;
                        run.device = device;
                    }
                    ExperimentEvent::RunStarted {
                        index,
                        arm,
                        seed,
                        steps,
                    } => {
                        run.current = Some((index, arm, seed));
                        run.evaluating = false;
                        revise_run_steps(&mut run.run_steps, index, steps, run.seeds);
                    }
                    ExperimentEvent::Fit(FitEvent::Train(TrainEvent::Step { .. })) => {
                        run.steps_done += 1;
                    }
                    ExperimentEvent::Evaluating { .. } => run.evaluating = true,
                    _ => {}
                },
                Ok(Message::Done(r)) => {
                    done = Some(*r);
                    break;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    done = Some(Err(WorkerError::Panicked {
                        worker: "the experiment".into(),
                        message: "its thread ended without a result".into(),
                    }));
                    break;
                }
            }
        }
        if let Some(r) = done {
            let out = run.out.clone();
            self.experiment.run = None;
            match r {
                Ok(result) => {
                    self.experiment.status = format!("done: {}", out.join("report.md").display());
                    self.experiment.result = Some((result, out));
                }
                Err(e) => {
                    self.experiment.status = format!("stopped: {e}");
                    if !matches!(e, WorkerError::Cancelled { .. }) {
                        self.dialogs.error = Some(e.to_string());
                    }
                }
            }
        }
    }
}

/// An experiment's outcome: its result with the report and plots written, or why not (a
/// cancel, a failure, a panic), typed.
fn experiment_outcome(
    result: Result<Result<ExperimentResult, crate::experiment::ExperimentError>, WorkerError>,
    plan: &str,
    dir: &std::path::Path,
) -> Result<ExperimentResult, WorkerError> {
    let failed = |message: String| WorkerError::Failed {
        worker: "the experiment".into(),
        message,
    };
    let r = match result? {
        Ok(r) => r,
        Err(crate::experiment::ExperimentError::Cancelled) => {
            return Err(WorkerError::Cancelled {
                worker: "the experiment".into(),
            })
        }
        Err(e) => return Err(failed(e.to_string())),
    };
    let command = format!("Experiment panel: plan {plan}");
    crate::plot::write_report_with_plots(&r, dir, &command).map_err(|e| failed(e.to_string()))?;
    Ok(r)
}

/// The folder an experiment's report goes to: `<project>/experiments/<plan>-<time>/`.
fn report_dir(project: &crate::project::Project, plan_path: &std::path::Path) -> PathBuf {
    let stem = plan_path
        .file_stem()
        .map_or("experiment".into(), |s| s.to_string_lossy().into_owned());
    let stamp: String = crate::project::models::utc_now()
        .chars()
        .filter(char::is_ascii_digit)
        .collect();
    project
        .root()
        .join("experiments")
        .join(format!("{stem}-{stamp}"))
}

/// The Experiment window.
pub fn experiment_window(ctx: &egui::Context, app: &MriloopApp, out: &mut Vec<Command>) {
    let s = app.experiment();
    let mut open = true;
    egui::Window::new("Experiment: arms x seeds on held-out cases")
        .open(&mut open)
        .default_width(760.0)
        .show(ctx, |ui| {
            ui.horizontal(|ui| {
                if ui.button("Choose plan…").clicked() {
                    out.push(Command::Experiment(ExperimentCommand::ChoosePlanDialog));
                }
                match &s.plan {
                    Some((path, _)) => ui.label(path.display().to_string()),
                    None => ui.label("no plan chosen (a JSON file: seeds, test split, base, arms)"),
                };
            });
            if let Some((_, plan)) = &s.plan {
                plan_view(ui, plan);
            }
            ui.horizontal(|ui| {
                let can_start = s.plan.is_some() && s.run.is_none();
                if ui
                    .add_enabled(can_start, egui::Button::new("Start experiment"))
                    .clicked()
                {
                    out.push(Command::Experiment(ExperimentCommand::Start));
                }
                if ui
                    .add_enabled(s.run.is_some(), egui::Button::new("Cancel"))
                    .clicked()
                {
                    out.push(Command::Experiment(ExperimentCommand::Cancel));
                }
            });
            if let Some(run) = &s.run {
                run_progress(ui, run);
            }
            if !s.status.is_empty() {
                ui.label(&s.status);
            }
            if let Some((result, _)) = &s.result {
                result_view(ui, result);
            }
        });
    if !open {
        out.push(Command::Experiment(ExperimentCommand::Toggle));
    }
}

/// The chosen plan: name, description, each arm's settings over the base, and the run count.
fn plan_view(ui: &mut egui::Ui, plan: &ExperimentPlan) {
    ui.strong(&plan.name);
    if !plan.description.is_empty() {
        ui.label(&plan.description);
    }
    egui::Grid::new("experiment arms")
        .striped(true)
        .show(ui, |ui| {
            ui.strong("arm");
            ui.strong("settings over the base");
            ui.end_row();
            for (i, arm) in plan.arms.iter().enumerate() {
                ui.label(&arm.name);
                ui.label(serde_json::to_string(&plan.settings(i)).unwrap_or_default());
                ui.end_row();
            }
        });
    ui.label(format!(
        "{} arms x {} seeds = {} runs, backend {}",
        plan.arms.len(),
        plan.seeds.len(),
        plan.arms.len() * plan.seeds.len(),
        plan.backend
    ));
}

/// Progress of the running experiment: run, arm, seed, step, ETA and device.
fn run_progress(ui: &mut egui::Ui, run: &ExperimentRun) {
    let fraction = run.steps_done as f32 / run.steps_total().max(1) as f32;
    let what = match &run.current {
        Some((i, arm, seed)) => format!(
            "run {}/{}: {arm}, seed {seed}{}",
            i + 1,
            run.runs,
            if run.evaluating { " (evaluating)" } else { "" }
        ),
        None => "preparing".into(),
    };
    let eta = run
        .eta_s()
        .map_or(String::new(), |e| format!(", about {:.0} s left", e));
    ui.add(egui::ProgressBar::new(fraction).text(format!(
        "{what}; step {}/{}{eta}",
        run.steps_done,
        run.steps_total()
    )));
    if !run.device.is_empty() {
        ui.label(format!("on {}", run.device));
    }
}

/// Headline figures per arm and the plots of a finished experiment.
fn result_view(ui: &mut egui::Ui, result: &ExperimentResult) {
    ui.separator();
    ui.label(format!(
        "{} test cases: {}",
        result.test_cases.len(),
        result.test_cases.join(", ")
    ));
    egui::Grid::new("experiment headline")
        .striped(true)
        .show(ui, |ui| {
            ui.strong("arm");
            ui.strong("mean over seeds");
            ui.end_row();
            for arm in &result.plan.arms {
                ui.label(&arm.name);
                let figures: Vec<String> = crate::experiment::report::headline(result, &arm.name)
                    .iter()
                    .map(|(n, v)| format!("{n} {v:.3}"))
                    .collect();
                ui.label(figures.join(", "));
                ui.end_row();
            }
        });
    let plot = |ui: &mut egui::Ui, id: &str, draw: &dyn Fn(&mut egui::Ui)| {
        egui::CollapsingHeader::new(id).show(ui, |ui| {
            ui.allocate_ui(egui::vec2(ui.available_width(), 260.0), |ui| draw(ui));
        });
    };
    plot(ui, "Training curves", &|ui| {
        super::experiment_plots::show_curves(ui, result)
    });
    plot(ui, "Per-case Dice", &|ui| {
        super::experiment_plots::show_dice_boxes(ui, result)
    });
    plot(ui, "ROC", &|ui| {
        super::experiment_plots::show_roc(ui, result)
    });
}
