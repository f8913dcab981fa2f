//! Training runs and re-inference over a project, each in a background thread that owns its
//! network and reports through a channel: what the app's training panel drives, and what
//! scripts and tests drive the same way.
//!
//! A run trains from scratch or fine-tunes an existing model version on the project's cases
//! (optionally only the reviewed ones, optionally with unsaved masks given in memory), writing
//! `models/<version>/` (fit.json, best/ and last/ checkpoints) and ending with the
//! `ModelVersion` record the caller adds to the manifest. Re-inference predicts cases with a
//! version, writing `cases/<id>/predicted_<version>.nii.gz` (+ `_prob`) atomically and sending
//! each case's record (class probabilities, uncertainty) for the caller to apply.
//!
//! Invariants: the worker threads never write the manifest (the caller owns it: one writer);
//! every event is followed by a call of the caller's `wake`; a failure ends with one `Failed`
//! event naming the file or the problem.

use super::apply::{fit_config_for, predict_case, FitOptions};
use super::data::{load_samples_with, Sample, SampleSelection};
use super::fit::{fit, split_by_case, FitConfig, FitControl, FitEvent};
use super::inference::Prediction;
use super::plan::Plan;
use super::planned::{planned_config, PlanOverrides};
use super::training::{load_checkpoint, TaskMode};
use crate::project::models::{next_version_id, utc_now};
use crate::project::{
    Case, EpochRecord, Manifest, ModelVersion, Project, ProjectError, ReviewStatus, RunOutcome,
    Uncertainty,
};
use crate::volume::{write_volume, Volume};
pub use crate::worker::WorkerError;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;

/// What a training run should do.
#[derive(Debug, Clone)]
pub struct RunRequest {
    /// Network and schedule choices (sequences, epochs, tasks, …).
    pub options: FitOptions,
    /// `cpu`, `gpu` or `auto`.
    pub backend: String,
    /// Fine-tune this model version (its network and inputs) instead of starting from scratch.
    pub fine_tune_from: Option<String>,
    /// Train only on cases marked reviewed (else every case with a reference).
    pub only_reviewed: bool,
    /// Loss weight of voxels the annotator changed from the prediction (1: none extra).
    pub changed_weight: f64,
    /// Reference masks newer than their files (the open case's unsaved corrections).
    pub masks: Vec<(String, Volume<u8>)>,
    /// Train within this many minutes from the start (epochs and steps fitted to it; the run
    /// stops on time with its best checkpoint).
    pub minutes: Option<f64>,
    /// Where the run's settings come from: the options as given, or the dataset's plan.
    pub plan: RunPlan,
    /// Train the promptable network (learning from the cases' recorded prompts too).
    pub promptable: bool,
    /// Data-parallel devices the batch is split across (1: one device).
    pub devices: usize,
    /// The precision the steps compute in (mixed precision: f16 or bf16).
    pub precision: super::precision::Precision,
}

/// Where a run's settings come from.
#[derive(Debug, Clone, Default, PartialEq)]
pub enum RunPlan {
    /// The request's options as given.
    #[default]
    Off,
    /// The dataset's plan (this one, or, when `None`, made by the worker from the project for
    /// the request's backend), with the user's `choices` winning; the request's options give the
    /// sequences, tasks, learning rate and seed.
    On {
        /// The plan, if already made.
        plan: Option<Box<Plan>>,
        /// What the user set.
        choices: PlanOverrides,
    },
}

/// What a run reports.
#[derive(Debug, Clone, PartialEq)]
pub enum RunEvent {
    /// Cases are loaded and training begins.
    Started {
        /// The version being trained.
        version: String,
        /// The device, in words.
        device: String,
        /// Training case ids.
        training_cases: Vec<String>,
        /// Validation case ids.
        validation_cases: Vec<String>,
        /// Optimisation steps planned.
        total_steps: usize,
        /// Epochs planned.
        epochs: usize,
        /// The tasks trained.
        mode: TaskMode,
        /// Label names (index = value).
        label_names: Vec<String>,
        /// What the validation cases cannot measure (a class or label none of them holds).
        validation_gaps: Vec<String>,
    },
    /// A step, a checkpoint or an epoch.
    Fit(FitEvent),
    /// The run ended (all epochs, early stop or cancel) with this version record.
    Finished(ModelVersion),
    /// The run failed or its thread panicked.
    Failed(WorkerError),
}

/// A running training run.
pub struct RunHandle {
    /// Cancel, pause, resume.
    pub control: Arc<FitControl>,
    /// Its events.
    pub events: Receiver<RunEvent>,
    thread: Option<JoinHandle<()>>,
}

impl RunHandle {
    /// Whether the worker has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Cancel, wait for the worker to end (it keeps its last checkpoint) and return the
    /// version record it ended with, if it got that far.
    pub fn cancel_and_wait(mut self) -> Option<ModelVersion> {
        self.control.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.events.try_iter().find_map(|e| match e {
            RunEvent::Finished(v) => Some(v),
            _ => None,
        })
    }
}

/// The cases a run with `only_reviewed` may train on: the reviewed ones, or all. Which of them
/// it takes depends on its tasks (a class, a reference mask: `SampleSelection::for_training`).
pub fn training_case_ids(manifest: &Manifest, only_reviewed: bool) -> Vec<String> {
    manifest
        .cases
        .iter()
        .filter(|c| !only_reviewed || c.review == ReviewStatus::Reviewed)
        .map(|c| c.id.clone())
        .collect()
}

/// The fit configuration of a request: from the project and options, or, when fine-tuning,
/// the parent version's network and inputs with the request's schedule.
pub fn run_config(
    project: &Project,
    request: &RunRequest,
) -> Result<(FitConfig, Option<Plan>), ProjectError> {
    let (mut config, plan) = base_config(project, request)?;
    if let Some(parent) = &request.fine_tune_from {
        let version = project
            .manifest
            .models
            .iter()
            .find(|m| &m.id == parent)
            .ok_or_else(|| ProjectError::Invalid {
                path: project.manifest_path(),
                problem: format!("no model version {parent} to fine-tune"),
            })?;
        let dir = project.resolve(&version.checkpoint);
        let cfg_path = dir.join("config.json");
        let parent_cfg = <super::training::TrainingConfig as burn::config::Config>::load(&cfg_path)
            .map_err(|e| ProjectError::Invalid {
                path: cfg_path.clone(),
                problem: e.to_string(),
            })?;
        let mode = config.training.mode;
        let lr = config.training.learning_rate;
        config.training = super::training::TrainingConfig {
            mode,
            learning_rate: lr,
            ..parent_cfg
        };
        config.patch = config.training.window;
        config.resume_from = Some(dir.display().to_string());
    }
    config.changed_weight = request.changed_weight;
    config.devices = request.devices.max(1);
    if request.promptable && config.training.prompt.is_none() {
        // From scratch, or an automatic version carried into a promptable network.
        config = super::prompt_train::promptable(config, Default::default());
    }
    Ok((config, plan))
}

/// The request's options as given, or the plan's configuration with the user's choices.
fn base_config(
    project: &Project,
    request: &RunRequest,
) -> Result<(FitConfig, Option<Plan>), ProjectError> {
    match &request.plan {
        RunPlan::Off => Ok((fit_config_for(project, &request.options)?, None)),
        RunPlan::On { plan, choices } => {
            let plan = match plan {
                Some(p) => (**p).clone(),
                None => super::plan::plan(
                    &super::fingerprint::Fingerprint::of(project)?,
                    super::apply::device_class(&request.backend),
                ),
            };
            let fine_tune_from = request.fine_tune_from.as_deref();
            let plan =
                match starts_a_promptable_network(project, request.promptable, fine_tune_from) {
                    true => plan.for_prompting(),
                    false => plan,
                };
            let config = planned_config(project, &request.options, choices, &plan)?;
            Ok((config, Some(plan)))
        }
    }
}

/// Whether a `promptable` run fine-tuning `fine_tune_from` (a version of `project`, or none)
/// trains a promptable network that is not one yet (from scratch, or an automatic version
/// carried into one): the plan's rule 12 then sets its steps.
pub fn starts_a_promptable_network(
    project: &Project,
    promptable: bool,
    fine_tune_from: Option<&str>,
) -> bool {
    let parent_promptable = fine_tune_from.is_some_and(|id| {
        project
            .manifest
            .models
            .iter()
            .any(|m| m.id == id && m.promptable)
    });
    promptable && !parent_promptable
}

/// Write the plan a run used as `out/plan.json`.
fn write_plan_json(out: &Path, plan: &Plan) -> Result<(), ProjectError> {
    let path = out.join("plan.json");
    let text = serde_json::to_string_pretty(plan).map_err(|e| ProjectError::Invalid {
        path: path.clone(),
        problem: e.to_string(),
    })?;
    crate::atomic::write_atomic(&path, text.as_bytes())
        .map_err(|e| ProjectError::Io { path, source: e })
}

/// Load the samples of a run and split them into training and validation by case (a single
/// case trains without validation).
pub fn run_samples(
    project: &Project,
    config: &FitConfig,
    request: &RunRequest,
) -> Result<(Vec<Sample>, Vec<Sample>), ProjectError> {
    let selection = SampleSelection {
        only: Some(training_case_ids(&project.manifest, request.only_reviewed)),
        masks: request.masks.clone(),
        mark_changed: request.changed_weight != 1.0,
        ..SampleSelection::for_training(&config.training)
    };
    let samples = load_samples_with(project, &selection)?;
    if samples.is_empty() {
        return Err(ProjectError::Invalid {
            path: project.manifest_path(),
            problem: match (request.only_reviewed, config.training.mode.case_needs()) {
                (true, needs) => {
                    format!("no reviewed case with {needs} to train on: review a case first")
                }
                (false, needs) => format!("no case with {needs} to train on"),
            },
        });
    }
    Ok(split_by_case(
        samples,
        config.validation_fraction,
        config.training.seed,
    ))
}

/// Write a run's `fit.json` and `validation.txt` into `out`.
pub fn write_run_files(out: &Path, config: &FitConfig, val: &[Sample]) -> Result<(), ProjectError> {
    std::fs::create_dir_all(out).map_err(|e| ProjectError::Io {
        path: out.to_path_buf(),
        source: e,
    })?;
    let fit_json = out.join("fit.json");
    let text = serde_json::to_string_pretty(config).map_err(|e| ProjectError::Invalid {
        path: fit_json.clone(),
        problem: e.to_string(),
    })?;
    crate::atomic::write_atomic(&fit_json, text.as_bytes()).map_err(|e| ProjectError::Io {
        path: fit_json,
        source: e,
    })?;
    let ids: Vec<&str> = val.iter().map(|s| s.case_id.as_str()).collect();
    let list = out.join("validation.txt");
    crate::atomic::write_atomic(&list, (ids.join("\n") + "\n").as_bytes()).map_err(|e| {
        ProjectError::Io {
            path: list,
            source: e,
        }
    })
}

/// Start a training run on a snapshot of the project in a worker thread; `wake` is called
/// after every event (e.g. to repaint the UI).
pub fn start_run(
    project: Project,
    request: RunRequest,
    wake: impl Fn() + Send + Sync + 'static,
) -> RunHandle {
    let clock = Arc::new(super::budget::SystemClock::start());
    start_run_on(project, request, clock, wake)
}

/// `start_run` with a time budget read on `clock`.
pub fn start_run_on(
    project: Project,
    request: RunRequest,
    clock: Arc<dyn super::budget::Clock>,
    wake: impl Fn() + Send + Sync + 'static,
) -> RunHandle {
    let control = Arc::new(FitControl::default());
    let (tx, rx) = channel();
    let ctl = control.clone();
    let thread = std::thread::Builder::new()
        .name("mriloop-train".into())
        .spawn(move || {
            let wake = Arc::new(wake);
            let result = crate::background::run_in_background(|| {
                crate::worker::catch_worker("the training run", || {
                    run(&project, &request, (&ctl, clock), &tx, wake.clone())
                })
            });
            let failure = match result {
                Ok(Ok(())) => None,
                Ok(Err(message)) => Some(WorkerError::Failed {
                    worker: "the training run".into(),
                    message,
                }),
                Err(panicked) => Some(panicked),
            };
            if let Some(e) = failure.map(super::device_failure::with_memory_advice) {
                let _ = tx.send(RunEvent::Failed(e));
            }
            wake();
        })
        .ok();
    RunHandle {
        control,
        events: rx,
        thread,
    }
}

fn run(
    project: &Project,
    request: &RunRequest,
    (control, clock): (&FitControl, Arc<dyn super::budget::Clock>),
    tx: &Sender<RunEvent>,
    wake: Arc<impl Fn() + Send + Sync + 'static>,
) -> Result<(), String> {
    let (mut config, plan) = run_config(project, request).map_err(|e| e.to_string())?;
    let (device, about) = super::apply::choose_device(&request.backend);
    super::apply::check_data_parallel(&device, config.devices)?;
    request
        .precision
        .check(&device)
        .map_err(|e| e.to_string())?;
    config.training.precision = request.precision;
    let (train, val) = run_samples(project, &config, request).map_err(|e| e.to_string())?;
    let config = match request.minutes.filter(|m| m.is_finite() && *m > 0.0) {
        Some(m) => {
            super::budget::fit_to_budget(&config, &val, &device, m * 60.0, clock, control)
                .map_err(|e| e.to_string())?
                .0
        }
        None => config,
    };
    let version = next_version_id(&project.manifest.models);
    let rel = format!("models/{version}");
    let out = project.resolve(&rel);
    write_run_files(&out, &config, &val).map_err(|e| e.to_string())?;
    if let Some(plan) = &plan {
        write_plan_json(&out, plan).map_err(|e| e.to_string())?;
    }
    let record = ModelVersion {
        id: version.clone(),
        created: utc_now(),
        parent: request.fine_tune_from.clone(),
        checkpoint: format!("{rel}/best"),
        tasks: config.training.mode.name().into(),
        sequences: config.training.sequences.clone(),
        trained_on: train.iter().map(|s| s.case_id.clone()).collect(),
        validated_on: val.iter().map(|s| s.case_id.clone()).collect(),
        epochs: Vec::new(),
        outcome: RunOutcome::Finished,
        learned_prompts: train.iter().map(|s| s.replays.len()).sum(),
        promptable: config.training.prompt.is_some(),
        added_from: None,
    };
    let _ = tx.send(RunEvent::Started {
        version: version.clone(),
        device: about,
        training_cases: record.trained_on.clone(),
        validation_cases: record.validated_on.clone(),
        total_steps: config.epochs * config.steps_per_epoch,
        epochs: config.epochs,
        mode: config.training.mode,
        label_names: config.training.label_names.clone(),
        validation_gaps: super::split::validation_gaps(
            &train,
            &val,
            &config.training.class_names,
            |v| config.training.label_name(usize::from(v)),
        ),
    });
    wake();
    let result = fit_forwarding(&config, (train, &val), &device, &out, control, tx, wake)?;
    let _ = tx.send(RunEvent::Finished(finished_record(
        record, &rel, &result, control,
    )));
    Ok(())
}

/// Fit, forwarding each of the fit's events as a `RunEvent` and waking the caller after each.
fn fit_forwarding(
    config: &FitConfig,
    (train, val): (Vec<Sample>, &[Sample]),
    device: &burn::prelude::Device,
    out: &Path,
    control: &FitControl,
    tx: &Sender<RunEvent>,
    wake: Arc<impl Fn() + Send + Sync + 'static>,
) -> Result<super::FitResult, String> {
    let (fit_tx, fit_rx) = channel::<FitEvent>();
    std::thread::scope(|scope| {
        let forward = {
            let tx = tx.clone();
            scope.spawn(move || {
                for e in fit_rx {
                    let _ = tx.send(RunEvent::Fit(e));
                    wake();
                }
            })
        };
        let r = fit(config, train, val, device, out, &fit_tx, control);
        drop(fit_tx);
        let forwarded = crate::worker::joined("forwarding training events", forward.join());
        r.map_err(|e| e.to_string())
            .and_then(|r| forwarded.map(|()| r).map_err(|e| e.to_string()))
    })
}

/// The version record of a run that ended: its checkpoint (best, else last), epochs and outcome.
fn finished_record(
    record: ModelVersion,
    rel: &str,
    result: &super::FitResult,
    control: &FitControl,
) -> ModelVersion {
    let best_exists = result.best.join("model.bpk").exists();
    ModelVersion {
        checkpoint: if best_exists {
            format!("{rel}/best")
        } else {
            format!("{rel}/last")
        },
        epochs: result
            .epochs
            .iter()
            .map(|e| EpochRecord {
                epoch: e.epoch,
                train_loss: e.train_loss,
                dice: e.validation.dice.clone(),
                class_accuracy: e.validation.class_accuracy,
                class_auc: e.validation.class_auc,
            })
            .collect(),
        outcome: if control.is_cancelled() {
            RunOutcome::Cancelled
        } else {
            RunOutcome::Finished
        },
        ..record
    }
}

/// Add a finished run's version to the manifest; with `activate`, it becomes the active one.
pub fn register_version(manifest: &mut Manifest, version: ModelVersion, activate: bool) {
    let id = version.id.clone();
    manifest.models.retain(|m| m.id != id);
    manifest.models.push(version);
    if activate {
        manifest.active_model = Some(id);
    }
}

/// One case predicted by a model version.
#[derive(Debug, Clone, PartialEq)]
pub struct CasePrediction {
    /// Case id.
    pub case_id: String,
    /// Model version.
    pub version: String,
    /// Project-relative predicted label mask.
    pub mask: String,
    /// Project-relative foreground probability map.
    pub probabilities: String,
    /// Class probabilities (in the project's class order).
    pub class_probabilities: Vec<f32>,
    /// How unsure the model is.
    pub uncertainty: Uncertainty,
}

/// Record a prediction in its case (mask, probabilities, class, version, uncertainty).
pub fn record_prediction(case: &mut Case, p: &CasePrediction, classes: usize) {
    case.predicted_mask = Some(p.mask.clone());
    case.predicted_probabilities = Some(p.probabilities.clone());
    if p.class_probabilities.len() == classes {
        case.predicted_class = Some(p.class_probabilities.clone());
    }
    case.predicted_by = Some(p.version.clone());
    case.uncertainty = Some(p.uncertainty);
}

/// The uncertainty of a prediction: the segmentation part is the mean binary entropy (in bits)
/// of the foreground probability over voxels where it exceeds 0.05 (the predicted structure and
/// its fringe); the class part is 1 − (top probability − runner-up).
pub fn uncertainty_of(foreground: &[f32], class_probabilities: &[f32]) -> Uncertainty {
    let (mut sum, mut n) = (0.0f64, 0usize);
    for p in foreground {
        let p = f64::from(p.clamp(1e-6, 1.0 - 1e-6));
        if p > 0.05 {
            sum += -(p * p.log2() + (1.0 - p) * (1.0 - p).log2());
            n += 1;
        }
    }
    let mut sorted: Vec<f32> = class_probabilities.to_vec();
    sorted.sort_by(|a, b| b.total_cmp(a));
    let margin = match sorted.as_slice() {
        [a, b, ..] => a - b,
        [a] => *a,
        [] => 1.0,
    };
    Uncertainty {
        segmentation: if n == 0 { 0.0 } else { (sum / n as f64) as f32 },
        classification: (1.0 - margin).clamp(0.0, 1.0),
    }
}

/// Predict one case with a loaded version and write its files; returns its record.
pub fn predict_and_write(
    project: &Project,
    case: &Case,
    version: &str,
    model: &super::model::MultiTaskUNet,
    config: &super::training::TrainingConfig,
    device: &burn::prelude::Device,
) -> Result<CasePrediction, ProjectError> {
    let Prediction {
        mask,
        foreground,
        class_probabilities,
    } = predict_case(project, case, model, config, device)?;
    let dir = Project::case_dir_rel(&case.id);
    let mask_rel = format!("{dir}/predicted_{version}.nii.gz");
    let prob_rel = format!("{dir}/predicted_{version}_prob.nii.gz");
    write_volume(&project.resolve(&mask_rel), &mask)?;
    write_volume(&project.resolve(&prob_rel), &foreground)?;
    let uncertainty = uncertainty_of(foreground.data(), &class_probabilities);
    Ok(CasePrediction {
        case_id: case.id.clone(),
        version: version.to_string(),
        mask: mask_rel,
        probabilities: prob_rel,
        class_probabilities,
        uncertainty,
    })
}

/// What re-inference reports.
#[derive(Debug, Clone, PartialEq)]
pub enum InferEvent {
    /// The model is loaded; this many cases follow.
    Started {
        /// Cases to predict.
        total: usize,
    },
    /// A case was predicted and its files written.
    Case(CasePrediction),
    /// A case could not be predicted (the message names the file); the others go on.
    CaseFailed {
        /// Case id.
        case_id: String,
        /// What went wrong.
        message: String,
    },
    /// All done (or cancelled).
    Finished {
        /// Cases predicted.
        done: usize,
    },
    /// The model could not be loaded, or the worker panicked.
    Failed(WorkerError),
}

/// A running re-inference.
pub struct InferHandle {
    /// Set to stop after the current case.
    pub cancel: Arc<AtomicBool>,
    /// Its events.
    pub events: Receiver<InferEvent>,
    thread: Option<JoinHandle<()>>,
}

impl InferHandle {
    /// Whether the worker has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Wait for the worker to end.
    pub fn join(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Predict `case_ids` of a project snapshot with model `version` in a worker thread.
pub fn start_reinfer(
    project: Project,
    version: ModelVersion,
    case_ids: Vec<String>,
    backend: String,
    wake: impl Fn() + Send + Sync + 'static,
) -> InferHandle {
    let cancel = Arc::new(AtomicBool::new(false));
    let (tx, rx) = channel();
    let stop = cancel.clone();
    let thread = std::thread::Builder::new()
        .name("mriloop-infer".into())
        .spawn(move || {
            let (report, wake_after) = (tx.clone(), Arc::new(wake));
            let wake = wake_after.clone();
            let panicked = crate::worker::catch_worker("the re-inference", move || {
                crate::background::run_in_background(move || {
                    let (device, _) = super::apply::choose_device(&backend);
                    let dir = project.resolve(&version.checkpoint);
                    let (config, model) = match load_checkpoint(&dir, &device) {
                        Ok(x) => x,
                        Err(e) => {
                            let _ = tx.send(InferEvent::Failed(WorkerError::Failed {
                                worker: "the re-inference".into(),
                                message: e.to_string(),
                            }));
                            wake();
                            return;
                        }
                    };
                    let _ = tx.send(InferEvent::Started {
                        total: case_ids.len(),
                    });
                    wake();
                    let mut done = 0;
                    for id in &case_ids {
                        if stop.load(Ordering::Relaxed) {
                            break;
                        }
                        let Some(case) = project.manifest.case(id) else {
                            continue;
                        };
                        let event = match predict_and_write(
                            &project,
                            case,
                            &version.id,
                            &model,
                            &config,
                            &device,
                        ) {
                            Ok(p) => {
                                done += 1;
                                InferEvent::Case(p)
                            }
                            Err(e) => InferEvent::CaseFailed {
                                case_id: id.clone(),
                                message: e.to_string(),
                            },
                        };
                        let _ = tx.send(event);
                        wake();
                    }
                    let _ = tx.send(InferEvent::Finished { done });
                    wake();
                })
            });
            if let Err(e) = panicked {
                let _ = report.send(InferEvent::Failed(e));
                wake_after();
            }
        })
        .ok();
    InferHandle {
        cancel,
        events: rx,
        thread,
    }
}

/// The cases re-inference updates by default: the unreviewed ones.
pub fn unreviewed_case_ids(manifest: &Manifest) -> Vec<String> {
    manifest
        .cases
        .iter()
        .filter(|c| c.review == ReviewStatus::Unreviewed)
        .map(|c| c.id.clone())
        .collect()
}
